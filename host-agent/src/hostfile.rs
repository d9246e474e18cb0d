//! The files the agent shares with QEMU and with clients: pools, ring
//! regions, guest sockets and the control socket, and the lock files that
//! keep a second agent off them. Every such file is created or adopted here.
//!
//! - Created files are mode 0600, owned by the agent's user; with a
//!   configured owner and/or group ([`FileAccess`]) they are 0660 and
//!   chowned to them, so that a QEMU running as another user (libvirt-qemu)
//!   can open them. A new file is made with `O_CREAT|O_EXCL|O_NOFOLLOW` at a
//!   mode no wider than its final one, and chowned and chmodded through its
//!   descriptor, so no path lookup is followed and it is never more open than
//!   it ends up. A socket is bound under a umask that gives it its final
//!   mode at once.
//! - An existing pool or ring region is adopted only if it is a regular file
//!   (not a symlink: it is opened with `O_NOFOLLOW`), owned by the agent's
//!   user (or the configured owner), with one link and the expected size;
//!   the pool and ring code then check the magic in its header. Anything
//!   else is refused with an error that names the file, what is wrong and
//!   what to do, and the file is left as it is.
//! - One agent per set of paths: [`AgentLock`] takes an exclusive `flock`
//!   on a lock file beside each path the agent owns before it touches any
//!   of them, and writes its pid there for the error a second agent prints.
//!
//! A file in a directory that every user may write and that is not sticky
//! is refused too: anyone could rename another file over it.

use std::ffi::{CString, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::config::AgentConfig;

/// Why a host file was not created, adopted or locked.
#[derive(Debug, thiserror::Error)]
pub enum HostFileError {
    /// The path is a symbolic link.
    #[error("{what} {path} is a symlink: refusing to adopt it; remove it")]
    Symlink {
        /// What the file is for ("pool", "ring region").
        what: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// The path is a directory, a device, a FIFO or a socket.
    #[error("{what} {path} is a {kind}, not a regular file: refusing to adopt it; remove it")]
    NotRegular {
        /// What the file is for.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// What it is instead.
        kind: &'static str,
    },
    /// Another user owns the file.
    #[error(
        "{what} {path} is owned by uid {uid}, not by the agent's user (uid {euid}): \
         refusing to adopt it; remove it"
    )]
    Owner {
        /// What the file is for.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Its owner.
        uid: u32,
        /// The agent's effective uid.
        euid: u32,
    },
    /// The file has other names (hard links).
    #[error(
        "{what} {path} has {nlink} links: refusing to adopt it (another name could be \
         changed behind the agent's back); remove every link to it"
    )]
    Links {
        /// What the file is for.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Its link count.
        nlink: u64,
    },
    /// The file does not have the size the configuration gives.
    #[error(
        "{what} {path} is {len} bytes, not {expected}: refusing to adopt it; remove it if \
         no VM maps it, or configure a size of {len}"
    )]
    Size {
        /// What the file is for.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Its size.
        len: u64,
        /// The configured size.
        expected: u64,
    },
    /// The directory of the file may be written by every user and is not
    /// sticky.
    #[error(
        "{what} {path}: its directory {dir} is writable by every user and not sticky, so \
         anyone could replace the file; use another directory (or chmod +t it)"
    )]
    OpenDirectory {
        /// What the file is for.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Its directory.
        dir: PathBuf,
    },
    /// A new file could not be made because something is in the way.
    #[error("{what} {path} appeared while it was being created: refusing to use it; remove it")]
    Exists {
        /// What the file is for.
        what: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// Another agent holds the lock.
    #[error(
        "another vmdedup agent{} serves {served}: stop it first (lock {lock})",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    Locked {
        /// The path the lock keeps.
        served: PathBuf,
        /// The lock file.
        lock: PathBuf,
        /// The pid written in the lock file, if it reads as one.
        pid: Option<u32>,
    },
    /// A configured user does not exist.
    #[error("file_owner {0:?}: no such user")]
    UnknownUser(String),
    /// A configured group does not exist.
    #[error("{key} {name:?}: no such group")]
    UnknownGroup {
        /// The configuration key.
        key: &'static str,
        /// The name.
        name: String,
    },
    /// A system call failed.
    #[error("{what} {path}: {op}: {cause}")]
    Io {
        /// What the file is for.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The OS error.
        cause: io::Error,
    },
}

fn io_err(
    what: &'static str,
    path: &Path,
    op: &'static str,
) -> impl FnOnce(io::Error) -> HostFileError {
    let path = path.to_path_buf();
    move |source| HostFileError::Io {
        what,
        path,
        op,
        cause: source,
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Who may open the agent's shared files besides the agent's own user.
///
/// The default is nobody: mode 0600. With an owner and/or a group, files
/// are 0660 and chowned to them (the agent keeps access as root, or as
/// their owner).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileAccess {
    /// The user files are chowned to.
    pub owner: Option<u32>,
    /// The group files are chowned to.
    pub group: Option<u32>,
    /// The group may read, not write (pools: QEMU attaches them
    /// `readonly=on`, so a QEMU of one domain that is compromised cannot
    /// write another domain's pool).
    pub group_read_only: bool,
}

impl FileAccess {
    /// Only the agent's user: mode 0600.
    pub const PRIVATE: FileAccess = FileAccess {
        owner: None,
        group: None,
        group_read_only: false,
    };

    /// This access with the group reading only (mode 0640 instead of 0660):
    /// what pools get.
    pub fn read_only_group(self) -> FileAccess {
        FileAccess {
            group_read_only: true,
            ..self
        }
    }

    /// The access the configuration's `file_owner` and `file_group` give
    /// to pools, ring regions and guest sockets. A name that is a number is
    /// taken as the id.
    pub fn from_config(cfg: &AgentConfig) -> Result<FileAccess, HostFileError> {
        Ok(FileAccess {
            owner: cfg.file_owner.as_deref().map(user_id).transpose()?,
            group: cfg
                .file_group
                .as_deref()
                .map(|g| group_id("file_group", g))
                .transpose()?,
            group_read_only: false,
        })
    }

    /// The access of the control socket: the agent's user and, with
    /// `control_group`, that group (mode 0660).
    pub fn control(cfg: &AgentConfig) -> Result<FileAccess, HostFileError> {
        Ok(FileAccess {
            owner: None,
            group: cfg
                .control_group
                .as_deref()
                .map(|g| group_id("control_group", g))
                .transpose()?,
            group_read_only: false,
        })
    }

    /// The permission bits of a file made with this access.
    pub fn mode(&self) -> u32 {
        match (
            self.owner.is_some() || self.group.is_some(),
            self.group_read_only,
        ) {
            (false, _) => 0o600,
            (true, false) => 0o660,
            (true, true) => 0o640,
        }
    }

    /// Whether `uid` may own a file the agent adopts: the agent's own user
    /// or the configured owner.
    fn may_own(&self, uid: u32) -> bool {
        uid == euid() || self.owner == Some(uid)
    }

    /// Gives an open file this access: owner and group, then the mode.
    fn apply(&self, f: &File, what: &'static str, path: &Path) -> Result<(), HostFileError> {
        if self.owner.is_some() || self.group.is_some() {
            let uid = self.owner.map_or(u32::MAX, |u| u); // (uid_t)-1: unchanged
            let gid = self.group.map_or(u32::MAX, |g| g);
            // SAFETY: fchown on a descriptor this function borrows; no memory
            // is passed.
            if unsafe { libc::fchown(f.as_raw_fd(), uid, gid) } != 0 {
                return Err(io_err(what, path, "fchown")(io::Error::last_os_error()));
            }
        }
        // SAFETY: fchmod on a descriptor this function borrows.
        if unsafe { libc::fchmod(f.as_raw_fd(), self.mode()) } != 0 {
            return Err(io_err(what, path, "fchmod")(io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Creates a new, empty file at `path`, read-write, with this access.
    /// Fails if anything (a file, a symlink) is there already: the caller
    /// unlinks an old file first if it means to replace it.
    pub fn create_new(&self, path: &Path, what: &'static str) -> Result<File, HostFileError> {
        check_directory(what, path)?;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => HostFileError::Exists {
                    what,
                    path: path.to_path_buf(),
                },
                _ => io_err(what, path, "create")(e),
            })?;
        self.apply(&f, what, path)?;
        Ok(f)
    }

    /// Opens the existing pool or ring region at `path` read-write for the
    /// agent to adopt, after checking it (see the module doc): `None` if
    /// nothing is there. With `expected_len` its size must be that. Nothing
    /// about the file is changed: once the caller has checked its header
    /// too, [`FileAccess::adopted`] gives it this access.
    pub fn open_existing(
        &self,
        path: &Path,
        what: &'static str,
        expected_len: Option<u64>,
    ) -> Result<Option<File>, HostFileError> {
        // Refuse what is not a regular file before opening it: opening a
        // device or a FIFO can have effects of its own.
        match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(what, path, "stat")(e)),
            Ok(m) => check_type(what, path, &m.file_type())?,
        }
        check_directory(what, path)?;
        let f = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(HostFileError::Symlink {
                    what,
                    path: path.to_path_buf(),
                })
            }
            Err(e) => return Err(io_err(what, path, "open")(e)),
        };
        self.check_adoptable(&f, path, what, expected_len)?;
        Ok(Some(f))
    }

    /// Gives a file the caller adopts (after [`FileAccess::open_existing`]
    /// and its own header checks) this access, so that a file an older agent
    /// left wider is narrowed and a changed owner or group applies.
    pub fn adopted(&self, f: &File, path: &Path, what: &'static str) -> Result<(), HostFileError> {
        self.apply(f, what, path)
    }

    /// The checks of an open file before it is adopted: a regular file,
    /// owned by the agent's user (or the configured owner), one link, and
    /// `expected_len` bytes if given.
    pub fn check_adoptable(
        &self,
        f: &File,
        path: &Path,
        what: &'static str,
        expected_len: Option<u64>,
    ) -> Result<(), HostFileError> {
        let m = f.metadata().map_err(io_err(what, path, "fstat"))?;
        check_type(what, path, &m.file_type())?;
        if !self.may_own(m.uid()) {
            return Err(HostFileError::Owner {
                what,
                path: path.to_path_buf(),
                uid: m.uid(),
                euid: euid(),
            });
        }
        if m.nlink() != 1 {
            return Err(HostFileError::Links {
                what,
                path: path.to_path_buf(),
                nlink: m.nlink(),
            });
        }
        if let Some(expected) = expected_len {
            if m.len() != expected {
                return Err(HostFileError::Size {
                    what,
                    path: path.to_path_buf(),
                    len: m.len(),
                    expected,
                });
            }
        }
        Ok(())
    }

    /// Binds a Unix stream socket at `path` with this access: mode 0600
    /// (0660 with an owner or group), chowned to them. A stale socket file
    /// is replaced; anything else at `path` is an error and left alone.
    ///
    /// The socket file gets its mode from the umask, which is set for the
    /// `bind` only: the process's other threads create no files while the
    /// agent binds its sockets (it does so at start), and should one do so
    /// it would only get a narrower mode.
    pub fn bind_socket(
        &self,
        path: &Path,
        what: &'static str,
    ) -> Result<std::os::unix::net::UnixListener, HostFileError> {
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => {
                std::fs::remove_file(path).map_err(io_err(what, path, "remove stale socket"))?
            }
            Ok(m) => {
                return Err(HostFileError::NotRegular {
                    what,
                    path: path.to_path_buf(),
                    kind: kind_name(&m.file_type()),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(what, path, "stat")(e)),
        }
        check_directory(what, path)?;
        let mask = 0o777 & !self.mode();
        // SAFETY: umask has no preconditions; the old mask is put back below.
        let old = unsafe { libc::umask(mask as libc::mode_t) };
        let bound = std::os::unix::net::UnixListener::bind(path);
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        let l = bound.map_err(io_err(what, path, "bind"))?;
        if self.owner.is_some() || self.group.is_some() {
            std::os::unix::fs::lchown(path, self.owner, self.group)
                .map_err(io_err(what, path, "chown"))?;
        }
        Ok(l)
    }
}

/// The user id of `name` (or `name` itself if it is a number).
pub fn user_id(name: &str) -> Result<u32, HostFileError> {
    if let Ok(n) = name.parse::<u32>() {
        return Ok(n);
    }
    let unknown = || HostFileError::UnknownUser(name.to_string());
    let c = CString::new(name).map_err(|_| unknown())?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: an all-zero passwd is a valid value to be overwritten.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: `c` is NUL-terminated, `pw`, `buf` and `out` are valid for
    // writes of their sizes for the call; the result is read at once.
    let r = unsafe {
        libc::getpwnam_r(
            c.as_ptr(),
            &mut pw,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut out,
        )
    };
    if r != 0 || out.is_null() {
        return Err(unknown());
    }
    Ok(pw.pw_uid)
}

/// The group id of `name` (or `name` itself if it is a number), for
/// configuration key `key`.
pub fn group_id(key: &'static str, name: &str) -> Result<u32, HostFileError> {
    if let Ok(n) = name.parse::<u32>() {
        return Ok(n);
    }
    let unknown = || HostFileError::UnknownGroup {
        key,
        name: name.to_string(),
    };
    let c = CString::new(name).map_err(|_| unknown())?;
    let mut buf = vec![0u8; 64 * 1024];
    // SAFETY: an all-zero group is a valid value to be overwritten.
    let mut gr: libc::group = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::group = std::ptr::null_mut();
    // SAFETY: `c` is NUL-terminated, `gr`, `buf` and `out` are valid for
    // writes of their sizes for the call; the result is read at once.
    let r = unsafe {
        libc::getgrnam_r(
            c.as_ptr(),
            &mut gr,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut out,
        )
    };
    if r != 0 || out.is_null() {
        return Err(unknown());
    }
    Ok(gr.gr_gid)
}

fn kind_name(t: &std::fs::FileType) -> &'static str {
    if t.is_dir() {
        "directory"
    } else if t.is_symlink() {
        "symlink"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_socket() {
        "socket"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_char_device() {
        "character device"
    } else {
        "regular file"
    }
}

fn check_type(what: &'static str, path: &Path, t: &std::fs::FileType) -> Result<(), HostFileError> {
    if t.is_symlink() {
        return Err(HostFileError::Symlink {
            what,
            path: path.to_path_buf(),
        });
    }
    if !t.is_file() {
        return Err(HostFileError::NotRegular {
            what,
            path: path.to_path_buf(),
            kind: kind_name(t),
        });
    }
    Ok(())
}

/// The directory `path` is in.
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Refuses a file whose directory every user may write and that is not
/// sticky (`/dev/shm` and `/tmp` are sticky: only a file's owner may
/// rename or remove it there).
fn check_directory(what: &'static str, path: &Path) -> Result<(), HostFileError> {
    let dir = parent_of(path);
    let m = std::fs::metadata(dir).map_err(io_err(what, path, "stat its directory"))?;
    let mode = m.mode();
    if mode & 0o002 != 0 && mode & 0o1000 == 0 {
        return Err(HostFileError::OpenDirectory {
            what,
            path: path.to_path_buf(),
            dir: dir.to_path_buf(),
        });
    }
    Ok(())
}

/// `path` with `suffix` appended to its last component.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = OsString::from(path.as_os_str());
    s.push(suffix);
    PathBuf::from(s)
}

/// The lock files of one agent, held (exclusive `flock`) for its lifetime.
/// Dropping it releases them; the files stay (removing a lock file another
/// agent may be opening would let two agents hold "the" lock).
#[derive(Debug)]
pub struct AgentLock {
    held: Vec<(PathBuf, File)>,
}

impl AgentLock {
    /// The lock files of the paths `cfg` names, each with the path it
    /// keeps: `<pool>.lock` (every pool's path starts with the configured
    /// one), `<ring_dir>/vmdedup.lock` and `<control_socket>.lock`.
    pub fn paths(cfg: &AgentConfig) -> Vec<(PathBuf, PathBuf)> {
        vec![
            (with_suffix(&cfg.pool, ".lock"), cfg.pool.clone()),
            (cfg.ring_dir.join("vmdedup.lock"), cfg.ring_dir.clone()),
            (
                with_suffix(&cfg.control_socket, ".lock"),
                cfg.control_socket.clone(),
            ),
        ]
    }

    /// Takes the locks of `cfg` ([`AgentLock::paths`]); fails at once if
    /// another agent holds one. Call it before anything of `cfg`'s is
    /// created, adopted or removed.
    pub fn acquire(cfg: &AgentConfig) -> Result<AgentLock, HostFileError> {
        Self::acquire_paths(&Self::paths(cfg))
    }

    /// Takes an exclusive lock on each `(lock file, path it keeps)`; the
    /// same file named twice is locked once.
    pub fn acquire_paths(paths: &[(PathBuf, PathBuf)]) -> Result<AgentLock, HostFileError> {
        let mut held: Vec<(PathBuf, File)> = Vec::new();
        let mut ids: Vec<(u64, u64)> = Vec::new();
        for (lock, served) in paths {
            const WHAT: &str = "lock file";
            check_directory(WHAT, lock)?;
            let mut f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
                .open(lock)
                .map_err(|e| {
                    if e.raw_os_error() == Some(libc::ELOOP) {
                        HostFileError::Symlink {
                            what: WHAT,
                            path: lock.clone(),
                        }
                    } else {
                        io_err(WHAT, lock, "open")(e)
                    }
                })?;
            let m = f.metadata().map_err(io_err(WHAT, lock, "fstat"))?;
            check_type(WHAT, lock, &m.file_type())?;
            if m.uid() != euid() {
                return Err(HostFileError::Owner {
                    what: WHAT,
                    path: lock.clone(),
                    uid: m.uid(),
                    euid: euid(),
                });
            }
            if ids.contains(&(m.dev(), m.ino())) {
                continue;
            }
            if m.mode() & 0o077 != 0 {
                // SAFETY: fchmod on a descriptor owned by `f`.
                if unsafe { libc::fchmod(f.as_raw_fd(), 0o600) } != 0 {
                    return Err(io_err(WHAT, lock, "fchmod")(io::Error::last_os_error()));
                }
            }
            // SAFETY: flock on a descriptor owned by `f`; no memory passed.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                    let mut text = String::new();
                    let _ = f.read_to_string(&mut text);
                    return Err(HostFileError::Locked {
                        served: served.clone(),
                        lock: lock.clone(),
                        pid: text.trim().parse().ok(),
                    });
                }
                return Err(io_err(WHAT, lock, "flock")(e));
            }
            f.set_len(0).map_err(io_err(WHAT, lock, "truncate"))?;
            f.write_all(format!("{}\n", std::process::id()).as_bytes())
                .map_err(io_err(WHAT, lock, "write pid"))?;
            ids.push((m.dev(), m.ino()));
            held.push((lock.clone(), f));
        }
        Ok(AgentLock { held })
    }

    /// The lock files held.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.held.iter().map(|(p, _)| p.as_path())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;

    struct Dir(PathBuf);
    impl Dir {
        fn new(tag: &str) -> Dir {
            let d =
                std::env::temp_dir().join(format!("vmdedup-hostfile-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            Dir(d)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    fn is_root() -> bool {
        euid() == 0
    }

    #[test]
    fn a_new_file_is_0600_and_nothing_in_the_way_is_used() {
        let d = Dir::new("create");
        let p = d.0.join("f");
        // SAFETY: umask has no preconditions; a wide umask must not widen
        // the file.
        let old = unsafe { libc::umask(0) };
        let f = FileAccess::PRIVATE.create_new(&p, "pool");
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        drop(f.unwrap());
        assert_eq!(mode(&p), 0o600);
        let e = FileAccess::PRIVATE.create_new(&p, "pool").unwrap_err();
        assert!(matches!(e, HostFileError::Exists { .. }), "{e}");
        let link = d.0.join("link");
        std::os::unix::fs::symlink(d.0.join("target"), &link).unwrap();
        assert!(FileAccess::PRIVATE.create_new(&link, "pool").is_err());
        assert!(!d.0.join("target").exists(), "the symlink was not followed");
    }

    #[test]
    fn a_group_makes_files_0660_of_that_group() {
        if !is_root() {
            return;
        }
        let d = Dir::new("group");
        let access = FileAccess {
            owner: Some(65534),
            group: Some(1),
            group_read_only: false,
        };
        let p = d.0.join("f");
        drop(access.create_new(&p, "ring region").unwrap());
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o660, 65534, 1));
        // A pool's group reads only.
        let pool = d.0.join("pool");
        drop(access.read_only_group().create_new(&pool, "pool").unwrap());
        let m = std::fs::metadata(&pool).unwrap();
        assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o640, 65534, 1));
        // Adopted as the configured owner's.
        assert!(access
            .open_existing(&p, "ring region", Some(0))
            .unwrap()
            .is_some());
        // But not by an agent without that owner configured.
        let e = FileAccess::PRIVATE
            .open_existing(&p, "ring region", Some(0))
            .unwrap_err();
        assert!(matches!(e, HostFileError::Owner { uid: 65534, .. }), "{e}");
        let s = d.0.join("s");
        drop(access.bind_socket(&s, "guest socket").unwrap());
        let m = std::fs::symlink_metadata(&s).unwrap();
        assert_eq!((m.mode() & 0o777, m.uid(), m.gid()), (0o660, 65534, 1));
    }

    #[test]
    fn adoption_checks_each_refuse_with_their_own_error() {
        let d = Dir::new("adopt");
        let a = FileAccess::PRIVATE;
        let good = d.0.join("good");
        std::fs::write(&good, vec![7u8; 4096]).unwrap();
        assert!(a
            .open_existing(&d.0.join("absent"), "pool", Some(4096))
            .unwrap()
            .is_none());
        std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o644)).unwrap();
        let f = a.open_existing(&good, "pool", Some(4096)).unwrap().unwrap();
        assert_eq!(mode(&good), 0o644, "opening changes nothing");
        a.adopted(&f, &good, "pool").unwrap();
        assert_eq!(
            mode(&good),
            0o600,
            "an adopted file gets the configured mode"
        );

        let link = d.0.join("link");
        std::os::unix::fs::symlink(&good, &link).unwrap();
        let e = a.open_existing(&link, "pool", Some(4096)).unwrap_err();
        assert!(matches!(e, HostFileError::Symlink { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("is a symlink: refusing to adopt it; remove it"),
            "{e}"
        );

        let e = a.open_existing(&good, "pool", Some(8192)).unwrap_err();
        assert!(
            matches!(
                e,
                HostFileError::Size {
                    len: 4096,
                    expected: 8192,
                    ..
                }
            ),
            "{e}"
        );

        let hard = d.0.join("hard");
        std::fs::hard_link(&good, &hard).unwrap();
        let e = a.open_existing(&good, "pool", Some(4096)).unwrap_err();
        assert!(matches!(e, HostFileError::Links { nlink: 2, .. }), "{e}");
        std::fs::remove_file(&hard).unwrap();

        let e = a.open_existing(&d.0, "pool", None).unwrap_err();
        assert!(
            matches!(
                e,
                HostFileError::NotRegular {
                    kind: "directory",
                    ..
                }
            ),
            "{e}"
        );

        let fifo = d.0.join("fifo");
        let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path valid for the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = a.open_existing(&fifo, "ring region", None).unwrap_err();
        assert!(
            matches!(e, HostFileError::NotRegular { kind: "FIFO", .. }),
            "{e}"
        );

        if is_root() {
            std::os::unix::fs::chown(&good, Some(65534), None).unwrap();
            std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o644)).unwrap();
            let e = a.open_existing(&good, "pool", Some(4096)).unwrap_err();
            assert!(matches!(e, HostFileError::Owner { uid: 65534, .. }), "{e}");
            assert_eq!(mode(&good), 0o644, "a refused file is not touched");
        }
        assert_eq!(std::fs::read(&good).unwrap(), vec![7u8; 4096]);
    }

    #[test]
    fn a_world_writable_directory_without_sticky_bit_is_refused() {
        let d = Dir::new("opendir");
        let open = d.0.join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = FileAccess::PRIVATE
            .create_new(&open.join("f"), "pool")
            .unwrap_err();
        assert!(matches!(e, HostFileError::OpenDirectory { .. }), "{e}");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
        drop(
            FileAccess::PRIVATE
                .create_new(&open.join("f"), "pool")
                .unwrap(),
        );
    }

    #[test]
    fn a_socket_is_0600_and_only_a_stale_socket_is_replaced() {
        let d = Dir::new("sock");
        let p = d.0.join("s.sock");
        drop(
            FileAccess::PRIVATE
                .bind_socket(&p, "control socket")
                .unwrap(),
        );
        assert_eq!(mode(&p) & 0o777, 0o600);
        // The stale socket is replaced.
        drop(
            FileAccess::PRIVATE
                .bind_socket(&p, "control socket")
                .unwrap(),
        );
        let f = d.0.join("file");
        std::fs::write(&f, b"keep").unwrap();
        let e = FileAccess::PRIVATE
            .bind_socket(&f, "control socket")
            .unwrap_err();
        assert!(
            matches!(
                e,
                HostFileError::NotRegular {
                    kind: "regular file",
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(std::fs::read(&f).unwrap(), b"keep");
    }

    #[test]
    fn a_second_lock_is_refused_with_the_holders_pid() {
        let d = Dir::new("lock");
        let served = d.0.join("pool");
        let lock = with_suffix(&served, ".lock");
        let same = d.0.join("same.lock");
        std::fs::hard_link(
            {
                drop(File::create(&lock).unwrap());
                &lock
            },
            &same,
        )
        .unwrap();
        // The same file under two names is locked once.
        let held = AgentLock::acquire_paths(&[
            (lock.clone(), served.clone()),
            (same.clone(), served.clone()),
        ])
        .unwrap();
        assert_eq!(held.files().count(), 1);
        assert_eq!(mode(&lock) & 0o077, 0, "the lock file is private");
        let e = AgentLock::acquire_paths(&[(lock.clone(), served.clone())]).unwrap_err();
        let msg = e.to_string();
        assert!(
            matches!(e, HostFileError::Locked { pid: Some(p), .. } if p == std::process::id()),
            "{msg}"
        );
        assert!(
            msg.contains(&format!(
                "another vmdedup agent (pid {})",
                std::process::id()
            )),
            "{msg}"
        );
        assert!(msg.contains("stop it first"), "{msg}");
        drop(held);
        assert!(AgentLock::acquire_paths(&[(lock.clone(), served.clone())]).is_ok());
        let link = d.0.join("link.lock");
        std::os::unix::fs::symlink(&lock, &link).unwrap();
        let e = AgentLock::acquire_paths(&[(link, served)]).unwrap_err();
        assert!(matches!(e, HostFileError::Symlink { .. }), "{e}");
    }

    #[test]
    fn lock_paths_sit_beside_what_they_keep() {
        let cfg = AgentConfig {
            pool: "/dev/shm/p.pool".into(),
            ring_dir: "/dev/shm/r".into(),
            control_socket: "/run/x/c.sock".into(),
            ..AgentConfig::default()
        };
        let p: Vec<PathBuf> = AgentLock::paths(&cfg).into_iter().map(|(l, _)| l).collect();
        assert_eq!(
            p,
            [
                PathBuf::from("/dev/shm/p.pool.lock"),
                "/dev/shm/r/vmdedup.lock".into(),
                "/run/x/c.sock.lock".into()
            ]
        );
    }

    #[test]
    fn names_and_numbers_resolve() {
        assert_eq!(user_id("root").unwrap(), 0);
        assert_eq!(user_id("4242").unwrap(), 4242);
        assert!(matches!(
            user_id("no-such-user-vmdedup"),
            Err(HostFileError::UnknownUser(_))
        ));
        assert_eq!(group_id("file_group", "root").unwrap(), 0);
        let e = group_id("file_group", "no-such-group-vmdedup").unwrap_err();
        assert!(e.to_string().starts_with("file_group"), "{e}");
    }
}
