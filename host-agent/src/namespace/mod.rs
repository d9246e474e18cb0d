//! Namespaces: named, immutable host trees that guests hint paths into, and
//! the resolver that keeps every lookup strictly beneath a namespace root.
//!
//! A hint path is guest input. It is checked structurally first
//! ([`check_rel_path`]), then opened with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV)` relative to
//! the root's directory fd; on kernels without `openat2` an equivalent walk
//! opens one component at a time with `O_NOFOLLOW` and refuses symlinks and
//! mount crossings. Only regular files are served; they are opened
//! `O_NONBLOCK | O_NOCTTY` so that a FIFO or a terminal can never stall or
//! grab the agent, and the opened file is checked to be the one inspected.
//! A warm-up's tree walk ([`Namespace::list_files`]) opens its start and
//! every directory it descends into through the same lookup, and never
//! follows an entry that is not a regular file or a directory.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use vmdedup_protocol::control::MissReason;

pub mod fingerprint;

pub use fingerprint::Fingerprint;

/// Longest hint path the resolver accepts, in bytes.
pub const MAX_REL_PATH: usize = 4096;
/// Longest path component, in bytes.
pub const MAX_COMPONENT: usize = 255;
/// Name of the default trust domain.
pub const DEFAULT_DOMAIN: &str = "default";

/// Why a path was not resolved to a regular file.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// Structurally invalid: empty, absolute, NUL, `.`/`..`/empty components, too long.
    #[error("invalid path: {0}")]
    BadPath(&'static str),
    /// A symlink on the way (refused: symlinks are resolved by the guest).
    #[error("symlink in path")]
    Symlink,
    /// The lookup would leave the namespace (mount crossing, magic link, escape).
    #[error("path leaves the namespace")]
    Escape,
    /// No such file.
    #[error("not found")]
    NotFound,
    /// Not a regular file.
    #[error("not a regular file")]
    NotRegular,
    /// Another OS error.
    #[error("{0}")]
    Io(io::Error),
}

impl ResolveError {
    /// The miss a guest is told.
    pub fn miss_reason(&self) -> MissReason {
        match self {
            ResolveError::BadPath(_) | ResolveError::Symlink | ResolveError::Escape => {
                MissReason::BadPath
            }
            ResolveError::NotFound => MissReason::NotFound,
            ResolveError::NotRegular => MissReason::NotRegular,
            ResolveError::Io(_) => MissReason::IoError,
        }
    }
}

/// Errors setting up a namespace.
#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    /// The name is empty, too long or has characters other than `[A-Za-z0-9._-]`.
    #[error("invalid namespace name {0:?}")]
    BadName(String),
    /// The root directory cannot be opened.
    #[error("namespace {name}: {dir}: {cause}")]
    Root {
        /// Namespace.
        name: String,
        /// Its directory.
        dir: PathBuf,
        /// Why.
        cause: io::Error,
    },
}

/// Checks a namespace-relative path before any lookup: 1..=[`MAX_REL_PATH`]
/// bytes, relative, no NUL, no empty, `.` or `..` component, components of
/// at most [`MAX_COMPONENT`] bytes.
pub fn check_rel_path(path: &[u8]) -> Result<(), ResolveError> {
    if path.is_empty() {
        return Err(ResolveError::BadPath("empty"));
    }
    if path.len() > MAX_REL_PATH {
        return Err(ResolveError::BadPath("too long"));
    }
    if path[0] == b'/' {
        return Err(ResolveError::BadPath("absolute"));
    }
    if path.contains(&0) {
        return Err(ResolveError::BadPath("NUL byte"));
    }
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" => return Err(ResolveError::BadPath("empty component")),
            b"." | b".." => return Err(ResolveError::BadPath("dot component")),
            c if c.len() > MAX_COMPONENT => {
                return Err(ResolveError::BadPath("component too long"))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Checks a namespace or VM name: 1..=64 bytes of `[A-Za-z0-9._-]`, not `.`/`..`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// What the host knows about a file version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HostIdentity {
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, ns since the epoch.
    pub mtime_ns: i64,
    /// Content fingerprint of the bytes loaded into the pool (`None` until
    /// a loader has read them).
    pub fingerprint: Option<Fingerprint>,
}

/// What the guest says about its copy (from the hint).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestIdentity {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, ns since the epoch.
    pub mtime_ns: i64,
    /// Content fingerprint from the guest's lower image, if it has one.
    pub fingerprint: Option<Fingerprint>,
}

impl HostIdentity {
    /// Whether the guest's copy is this version: same size, the same mtime
    /// at `granularity_ns` (1 = exact; 1_000_000_000 for file systems that
    /// keep seconds only), and, when the guest sent a fingerprint, the same
    /// content fingerprint. Size and mtime alone collide on reproducible
    /// builds, which pin every mtime; with `require_fingerprint` a guest
    /// copy without a fingerprint never matches.
    pub fn matches(
        &self,
        g: &GuestIdentity,
        granularity_ns: u64,
        require_fingerprint: bool,
    ) -> bool {
        let gran = granularity_ns.clamp(1, i64::MAX as u64) as i64;
        let content = match g.fingerprint {
            Some(fp) => self.fingerprint == Some(fp),
            None => !require_fingerprint,
        };
        content
            && self.size == g.size
            && self.mtime_ns.div_euclid(gran) == g.mtime_ns.div_euclid(gran)
    }

    // time_t and the nsec field are i64 on 64-bit targets only.
    #[allow(clippy::unnecessary_cast)]
    fn from_stat(st: &libc::stat) -> Self {
        HostIdentity {
            dev: st.st_dev,
            ino: st.st_ino,
            size: st.st_size as u64,
            mtime_ns: (st.st_mtime as i64)
                .saturating_mul(1_000_000_000)
                .saturating_add(st.st_mtime_nsec as i64),
            fingerprint: None,
        }
    }
}

/// An opened regular file inside a namespace.
#[derive(Debug)]
pub struct ResolvedFile {
    /// Open for reading.
    pub file: File,
    /// Its identity at open time.
    pub identity: HostIdentity,
}

/// How a namespace resolves paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResolveMode {
    /// `openat2` with resolve flags, falling back to [`ResolveMode::Walk`] on `ENOSYS`.
    Openat2,
    /// Component by component with `O_NOFOLLOW`.
    Walk,
}

/// Settings of one namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceConfig {
    /// Name (what the CLI and control messages use).
    pub name: String,
    /// Id (what hints carry: `namespace_id`).
    pub id: u32,
    /// Host directory.
    pub dir: PathBuf,
    /// Trust domains whose VMs may use it (`*`: every VM).
    pub domains: Vec<String>,
    /// mtime comparison granularity in ns (1: exact).
    pub mtime_granularity_ns: u64,
    /// Hints without a content fingerprint are misses (for trees whose
    /// mtimes say nothing, e.g. reproducible builds).
    pub require_fingerprint: bool,
    /// Load the whole tree into the pool when the service starts, before
    /// the agent serves anyone, so that every answer for it is a hit and a
    /// first open says nothing about what other VMs opened.
    pub warm_at_start: bool,
    /// A VM's first hint for each file version is answered "loading" even
    /// when the file is in the pool already (its next one hits), so that
    /// whether a first open hits says nothing about other VMs.
    pub always_loading: bool,
}

/// An open namespace.
#[derive(Debug)]
pub struct Namespace {
    cfg: NamespaceConfig,
    root: OwnedFd,
    /// The root's device: what "the same filesystem" compares where the
    /// kernel reports no mount id.
    root_dev: u64,
    /// The root's mount id (`statx` `STATX_MNT_ID`, Linux 5.8): nothing on
    /// another mount is part of the namespace.
    root_mnt: Option<u64>,
    mode: ResolveMode,
    no_openat2: AtomicBool,
}

#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

fn fstat(fd: RawFd) -> io::Result<libc::stat> {
    // SAFETY: an all-zero stat is a valid value to be overwritten.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is an open descriptor owned by the caller; `st` is a valid out-pointer.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// The mount id of what `name` names relative to `dirfd` (`None`: `dirfd`
/// itself), without following a final symlink, with its file type; the
/// mount id is `None` where the kernel does not report one (before 5.8).
fn statx_mount(
    dirfd: RawFd,
    name: Option<&std::ffi::CStr>,
) -> io::Result<(libc::mode_t, Option<u64>)> {
    // SAFETY: an all-zero statx is a valid value to be overwritten.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    let (path, flags) = match name {
        Some(n) => (n.as_ptr(), libc::AT_SYMLINK_NOFOLLOW),
        None => (
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        ),
    };
    // SAFETY: `dirfd` is an open descriptor owned by the caller, `path` is
    // NUL-terminated and outlives the call, `stx` is a valid out-pointer.
    let r = unsafe {
        libc::statx(
            dirfd,
            path,
            flags,
            libc::STATX_TYPE | libc::STATX_MNT_ID,
            &mut stx,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    let mnt = (stx.stx_mask & libc::STATX_MNT_ID != 0).then_some(stx.stx_mnt_id);
    Ok((libc::mode_t::from(stx.stx_mode) & libc::S_IFMT, mnt))
}

fn owned(fd: libc::c_int) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by a successful open and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn openat(dir: RawFd, name: &CString, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: `name` is NUL-terminated; `dir` is an open descriptor.
    owned(unsafe { libc::openat(dir, name.as_ptr(), flags | libc::O_CLOEXEC) })
}

fn openat2(dir: RawFd, path: &CString, flags: libc::c_int, resolve: u64) -> io::Result<OwnedFd> {
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve,
    };
    // SAFETY: `path` is NUL-terminated, `how` is a valid open_how of the size passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir,
            path.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    owned(r as libc::c_int)
}

const RESOLVE: u64 = libc::RESOLVE_BENEATH
    | libc::RESOLVE_NO_MAGICLINKS
    | libc::RESOLVE_NO_SYMLINKS
    | libc::RESOLVE_NO_XDEV;
const READ_FLAGS: libc::c_int =
    libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY;
const DIR_FLAGS: libc::c_int =
    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_NONBLOCK;

fn map_open_err(e: io::Error) -> ResolveError {
    match e.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENOTDIR) => ResolveError::NotFound,
        Some(libc::ELOOP) => ResolveError::Symlink,
        Some(libc::EXDEV) => ResolveError::Escape,
        Some(libc::ENAMETOOLONG) => ResolveError::BadPath("too long"),
        Some(libc::ENXIO) | Some(libc::ENODEV) => ResolveError::NotRegular,
        _ => ResolveError::Io(e),
    }
}

impl Namespace {
    /// Opens the namespace root.
    pub fn open(cfg: NamespaceConfig) -> Result<Self, NamespaceError> {
        Self::open_with(cfg, ResolveMode::Openat2)
    }

    /// Opens the namespace root with a chosen resolve mode (tests use both).
    pub fn open_with(cfg: NamespaceConfig, mode: ResolveMode) -> Result<Self, NamespaceError> {
        if !valid_name(&cfg.name) {
            return Err(NamespaceError::BadName(cfg.name));
        }
        let root_err = |source| NamespaceError::Root {
            name: cfg.name.clone(),
            dir: cfg.dir.clone(),
            cause: source,
        };
        let dir = CString::new(cfg.dir.as_os_str().as_encoded_bytes())
            .map_err(|_| root_err(io::Error::from_raw_os_error(libc::EINVAL)))?;
        // SAFETY: `dir` is NUL-terminated.
        let root = owned(unsafe {
            libc::open(
                dir.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        })
        .map_err(root_err)?;
        let st = fstat(root.as_raw_fd()).map_err(root_err)?;
        let (_, root_mnt) = statx_mount(root.as_raw_fd(), None).map_err(root_err)?;
        Ok(Namespace {
            cfg,
            root,
            root_dev: st.st_dev,
            root_mnt,
            mode,
            no_openat2: AtomicBool::new(false),
        })
    }

    /// Its settings.
    pub fn config(&self) -> &NamespaceConfig {
        &self.cfg
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    /// Its id.
    pub fn id(&self) -> u32 {
        self.cfg.id
    }

    /// Its host directory.
    pub fn dir(&self) -> &Path {
        &self.cfg.dir
    }

    /// Whether VMs of trust domain `domain` may use it.
    pub fn allows(&self, domain: &str) -> bool {
        self.cfg.domains.iter().any(|d| d == "*" || d == domain)
    }

    /// Whether `fd` (with its `st`) is on the root's mount: the same mount id
    /// where the kernel reports one, so that an overlayfs root, whose
    /// non-directories report the device of their layer, is one namespace;
    /// the same device otherwise.
    fn on_root_mount(&self, fd: RawFd, st: &libc::stat) -> Result<bool, ResolveError> {
        match self.root_mnt {
            Some(root) => {
                let (_, mnt) = statx_mount(fd, None).map_err(ResolveError::Io)?;
                Ok(mnt == Some(root))
            }
            None => Ok(st.st_dev == self.root_dev),
        }
    }

    /// Opens the regular file at `rel` strictly beneath the root.
    pub fn resolve(&self, rel: &[u8]) -> Result<ResolvedFile, ResolveError> {
        let o = self.open_beneath(rel, Want::File)?;
        Ok(ResolvedFile {
            file: File::from(o.fd),
            identity: HostIdentity::from_stat(&o.st),
        })
    }

    /// Opens what `rel` names strictly beneath the root, if it is what
    /// `want` allows: the one lookup of hints, warm-ups and listings.
    fn open_beneath(&self, rel: &[u8], want: Want) -> Result<Opened, ResolveError> {
        check_rel_path(rel)?;
        let c = CString::new(rel).map_err(|_| ResolveError::BadPath("NUL byte"))?;
        if self.mode == ResolveMode::Openat2 && !self.no_openat2.load(Ordering::Relaxed) {
            match self.open_openat2(&c, want) {
                Err(ResolveError::Io(e)) if e.raw_os_error() == Some(libc::ENOSYS) => {
                    self.no_openat2.store(true, Ordering::Relaxed);
                }
                other => return other,
            }
        }
        self.open_walk(rel, want)
    }

    /// Checks the `O_PATH` probe of the last component against `want` and
    /// the root's device, then opens it with `open(flags)` and checks that
    /// the same inode was opened.
    fn finish(
        &self,
        probe: OwnedFd,
        want: Want,
        open: impl FnOnce(libc::c_int) -> io::Result<OwnedFd>,
    ) -> Result<Opened, ResolveError> {
        let st = fstat(probe.as_raw_fd()).map_err(ResolveError::Io)?;
        let kind = st.st_mode & libc::S_IFMT;
        let flags = match (kind, want) {
            (libc::S_IFREG, Want::File | Want::FileOrDir) => READ_FLAGS,
            (libc::S_IFDIR, Want::Dir | Want::FileOrDir) => DIR_FLAGS,
            (libc::S_IFLNK, _) => return Err(ResolveError::Symlink),
            _ => return Err(ResolveError::NotRegular),
        };
        if !self.on_root_mount(probe.as_raw_fd(), &st)? {
            return Err(ResolveError::Escape);
        }
        let fd = open(flags).map_err(map_open_err)?;
        let st2 = fstat(fd.as_raw_fd()).map_err(ResolveError::Io)?;
        if st2.st_mode & libc::S_IFMT != kind || st2.st_dev != st.st_dev || st2.st_ino != st.st_ino
        {
            // Replaced between the check and the open: the tree is not immutable.
            return Err(ResolveError::NotRegular);
        }
        Ok(Opened { fd, st: st2 })
    }

    fn open_openat2(&self, c: &CString, want: Want) -> Result<Opened, ResolveError> {
        let root = self.root.as_raw_fd();
        let probe =
            openat2(root, c, libc::O_PATH | libc::O_NOFOLLOW, RESOLVE).map_err(map_open_err)?;
        self.finish(probe, want, |flags| openat2(root, c, flags, RESOLVE))
    }

    fn open_walk(&self, rel: &[u8], want: Want) -> Result<Opened, ResolveError> {
        let mut parts = rel.split(|&b| b == b'/').peekable();
        // SAFETY: duplicating our own open root descriptor.
        let mut dir =
            owned(unsafe { libc::fcntl(self.root.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) })
                .map_err(ResolveError::Io)?;
        while let Some(part) = parts.next() {
            let name = CString::new(part).map_err(|_| ResolveError::BadPath("NUL byte"))?;
            let probe = openat(dir.as_raw_fd(), &name, libc::O_PATH | libc::O_NOFOLLOW)
                .map_err(map_open_err)?;
            if parts.peek().is_none() {
                let parent = dir.as_raw_fd();
                return self.finish(probe, want, |flags| openat(parent, &name, flags));
            }
            let st = fstat(probe.as_raw_fd()).map_err(ResolveError::Io)?;
            match st.st_mode & libc::S_IFMT {
                libc::S_IFDIR => {}
                libc::S_IFLNK => return Err(ResolveError::Symlink),
                _ => return Err(ResolveError::NotFound),
            }
            if !self.on_root_mount(probe.as_raw_fd(), &st)? {
                return Err(ResolveError::Escape);
            }
            dir = probe;
        }
        Err(ResolveError::BadPath("empty"))
    }

    /// Lists the regular files beneath `start` (a relative directory or file;
    /// empty for the root), as namespace-relative paths, sorted. `start` is
    /// looked up as a hint path is (no symlink in any component, no mount
    /// crossing); every directory walked is opened the same way, and
    /// entries are examined without following them: symlinks, mount points
    /// and anything but regular files and directories are left out, so
    /// nothing outside the namespace is listed or counted. Each file must
    /// still be opened through [`resolve`](Self::resolve).
    pub fn list_files(&self, start: &[u8]) -> Result<Vec<Vec<u8>>, ResolveError> {
        let first = if start.is_empty() {
            let dot = CString::from(c".");
            let fd = openat(self.root.as_raw_fd(), &dot, DIR_FLAGS).map_err(map_open_err)?;
            let st = fstat(fd.as_raw_fd()).map_err(ResolveError::Io)?;
            Opened { fd, st }
        } else {
            self.open_beneath(start, Want::FileOrDir)?
        };
        let mut out = Vec::new();
        if first.st.st_mode & libc::S_IFMT == libc::S_IFREG {
            out.push(start.to_vec());
            return Ok(out);
        }
        // Directories still to list, by path: each is opened again through
        // the resolver, so that no descriptor is kept per pending directory.
        let mut pending: Vec<Vec<u8>> = Vec::new();
        let mut next = Some((first.fd, start.to_vec()));
        loop {
            let (fd, rel) = match next.take() {
                Some(d) => d,
                None => match pending.pop() {
                    None => break,
                    Some(rel) => match self.open_beneath(&rel, Want::Dir) {
                        Ok(o) => (o.fd, rel),
                        // Changed since it was listed: left out.
                        Err(_) => continue,
                    },
                },
            };
            for (name, kind, mount) in dir_entries(fd, self.root_mnt.is_some()) {
                let mut r = rel.clone();
                if !r.is_empty() {
                    r.push(b'/');
                }
                r.extend_from_slice(&name);
                let here = match (self.root_mnt, mount) {
                    (Some(root), EntryMount::Id(id)) => id == root,
                    (None, EntryMount::Dev(dev)) => dev == self.root_dev,
                    _ => false,
                };
                if !here || r.len() > MAX_REL_PATH {
                    continue;
                }
                match kind {
                    libc::S_IFREG => out.push(r),
                    libc::S_IFDIR => pending.push(r),
                    _ => {}
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

/// What a lookup beneath the root may end at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Want {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// Either.
    FileOrDir,
}

/// A regular file or directory opened for reading beneath the root.
struct Opened {
    fd: OwnedFd,
    st: libc::stat,
}

/// Where a directory entry lives: its mount id, or its device on kernels
/// that report no mount id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EntryMount {
    Id(u64),
    Dev(u64),
}

/// The entries of directory `fd` (consumed) but `.` and `..`: each name,
/// with its file type and its mount id (`by_mount_id`) or device, as
/// `statx`/`fstatat` with `AT_SYMLINK_NOFOLLOW` see them (a symlink is a
/// symlink, never what it points to). Entries that vanish meanwhile are
/// left out.
fn dir_entries(fd: OwnedFd, by_mount_id: bool) -> Vec<(Vec<u8>, libc::mode_t, EntryMount)> {
    use std::os::fd::IntoRawFd;
    let raw = fd.into_raw_fd();
    // SAFETY: `raw` is an open directory descriptor we own; on success the
    // stream owns it and `closedir` below closes it.
    let dir = unsafe { libc::fdopendir(raw) };
    if dir.is_null() {
        // SAFETY: fdopendir failed, so `raw` is still ours and closed once.
        unsafe { libc::close(raw) };
        return Vec::new();
    }
    let mut out = Vec::new();
    loop {
        // SAFETY: `dir` is a valid stream until the closedir below.
        let e = unsafe { libc::readdir(dir) };
        if e.is_null() {
            break;
        }
        // SAFETY: readdir returned a valid entry whose `d_name` is
        // NUL-terminated; it stays valid until the next readdir on `dir`,
        // and is copied out before that.
        let name = unsafe { std::ffi::CStr::from_ptr((*e).d_name.as_ptr()) };
        let bytes = name.to_bytes();
        if bytes == b"." || bytes == b".." {
            continue;
        }
        if by_mount_id {
            // SAFETY: `dir` is a valid stream until the closedir below.
            let dfd = unsafe { libc::dirfd(dir) };
            if let Ok((kind, Some(id))) = statx_mount(dfd, Some(name)) {
                out.push((bytes.to_vec(), kind, EntryMount::Id(id)));
            }
            continue;
        }
        // SAFETY: an all-zero stat is a valid value to be overwritten.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `dirfd` of a valid stream; `name` is NUL-terminated; `st`
        // is a valid out-pointer.
        let r = unsafe {
            libc::fstatat(
                libc::dirfd(dir),
                name.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if r == 0 {
            out.push((
                bytes.to_vec(),
                st.st_mode & libc::S_IFMT,
                EntryMount::Dev(st.st_dev),
            ));
        }
    }
    // SAFETY: `dir` came from fdopendir and is closed once (closing `raw`).
    unsafe { libc::closedir(dir) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structural_checks() {
        for bad in [
            &b""[..],
            b"/etc/passwd",
            b"..",
            b"a/../b",
            b"a/..",
            b"./a",
            b"a/./b",
            b"a//b",
            b"a/",
            b"a\0b",
            &[b'a'; 256][..],
        ] {
            assert!(
                check_rel_path(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(check_rel_path(&vec![b'a'; MAX_REL_PATH + 1]).is_err());
        for good in [
            &b"a"[..],
            b"usr/lib/libc.so.6",
            b"...",
            b"a..b",
            b".hidden/x",
        ] {
            assert!(check_rel_path(good).is_ok());
        }
    }

    #[test]
    fn identity_granularity() {
        let h = HostIdentity {
            dev: 1,
            ino: 2,
            size: 10,
            mtime_ns: 1_500_000_123,
            fingerprint: None,
        };
        // (guest size, guest mtime, granularity, whether it matches)
        for (size, mtime_ns, granularity, want) in [
            (10, 1_500_000_123, 1, true),
            (10, 1_500_000_124, 1, false),
            // Both in the same whole second.
            (10, 1_000_000_000, 1_000_000_000, true),
            (11, 1_500_000_123, 1, false),
            // 0 is taken as 1 ns.
            (10, 1_500_000_123, 0, true),
        ] {
            let g = GuestIdentity {
                size,
                mtime_ns,
                fingerprint: None,
            };
            assert_eq!(
                h.matches(&g, granularity, false),
                want,
                "{g:?} at {granularity} ns"
            );
        }
    }

    #[test]
    fn fingerprints_decide_when_sent() {
        let fp = fingerprint::fingerprint_of(b"one");
        let other = fingerprint::fingerprint_of(b"two");
        let h = HostIdentity {
            dev: 1,
            ino: 2,
            size: 3,
            mtime_ns: 0,
            fingerprint: Some(fp),
        };
        let g = |fingerprint| GuestIdentity {
            size: 3,
            mtime_ns: 0,
            fingerprint,
        };
        // Same size and mtime, other bytes: a miss.
        assert!(!h.matches(&g(Some(other)), 1, false));
        assert!(h.matches(&g(Some(fp)), 1, false));
        assert!(h.matches(&g(Some(fp)), 1, true));
        // No fingerprint: size and mtime decide, unless one is required.
        assert!(h.matches(&g(None), 1, false));
        assert!(!h.matches(&g(None), 1, true));
        // A host copy not fingerprinted never matches a guest's fingerprint.
        let unhashed = HostIdentity {
            fingerprint: None,
            ..h
        };
        assert!(!unhashed.matches(&g(Some(fp)), 1, false));
    }
}
