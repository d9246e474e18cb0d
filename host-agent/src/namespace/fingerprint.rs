//! Per-file content fingerprints: what makes a hit safe when size and mtime
//! are not an identity (reproducible builds pin every mtime).
//!
//! A file's fingerprint is the first [`FINGERPRINT_LEN`] bytes of the BLAKE3
//! hash of its content. The guest reads it from the
//! [`FINGERPRINT_XATTR`] attribute of its lower inode and sends it in the
//! hint; the agent computes it from the bytes it loads into the pool, so a
//! hit needs the guest's copy and the pool's copy to have the same content.
//!
//! The attribute is written when the guest's image is built, by
//! [`stamp_tree`] (`vmdedup stamp DIR`, on the staging tree before `mke2fs
//! -d DIR`, which copies extended attributes into the image) or by the
//! `debugfs` script [`stamp_tree`] prints for an image that exists already.

use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use vmdedup_protocol::abi::{fingerprint_text, FINGERPRINT_LEN, FINGERPRINT_XATTR};

pub use vmdedup_protocol::abi::Fingerprint;

/// Hashes a file's content as it streams by.
#[derive(Default)]
pub struct Fingerprinter(blake3::Hasher);

impl Fingerprinter {
    /// Adds the next bytes of the file.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The fingerprint of everything added.
    pub fn finish(&self) -> Fingerprint {
        let mut fp = [0u8; FINGERPRINT_LEN];
        fp.copy_from_slice(&self.0.finalize().as_bytes()[..FINGERPRINT_LEN]);
        fp
    }
}

/// The fingerprint of `bytes`.
pub fn fingerprint_of(bytes: &[u8]) -> Fingerprint {
    let mut f = Fingerprinter::default();
    f.update(bytes);
    f.finish()
}

/// Reads `r` to its end and returns the fingerprint of what it read.
pub fn fingerprint_reader(r: &mut impl Read) -> io::Result<Fingerprint> {
    let mut f = Fingerprinter::default();
    let mut buf = vec![0u8; 256 << 10];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok(f.finish()),
            Ok(n) => f.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// How [`stamp_tree`] records the fingerprints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StampOutput {
    /// Set the attribute on each file of the tree.
    Xattr,
    /// Print one `debugfs` command per file (`ea_set "/PATH" NAME HEX`), for
    /// `debugfs -w -f - IMAGE` on an image made from the tree.
    Debugfs,
}

/// What [`stamp_tree`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StampReport {
    /// Regular files fingerprinted.
    pub files: u64,
    /// Bytes hashed.
    pub bytes: u64,
    /// Files left without a fingerprint: unreadable, or (for
    /// [`StampOutput::Debugfs`]) a name `debugfs` cannot quote.
    pub skipped: Vec<PathBuf>,
}

/// Fingerprints every regular file beneath `dir` (symlinks are not
/// followed, other file types are left alone) and records each as `how`
/// says; [`StampOutput::Debugfs`] lines go to `out`. A file that cannot be
/// stamped is listed in the report, not an error: the guest then sends no
/// fingerprint for it, which a namespace with `require_fingerprint` answers
/// with a miss.
pub fn stamp_tree(dir: &Path, how: StampOutput, out: &mut impl Write) -> io::Result<StampReport> {
    let mut report = StampReport::default();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(dir.join(&rel))?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let rel_child = rel.join(e.file_name());
            let ty = e.file_type()?;
            if ty.is_dir() {
                stack.push(rel_child);
                continue;
            }
            if !ty.is_file() {
                continue;
            }
            let path = dir.join(&rel_child);
            let fp = match std::fs::File::open(&path).and_then(|mut f| fingerprint_reader(&mut f)) {
                Ok(fp) => fp,
                Err(_) => {
                    report.skipped.push(rel_child);
                    continue;
                }
            };
            let text = fingerprint_text(&fp);
            let done = match how {
                StampOutput::Xattr => set_xattr(&path, &text).is_ok(),
                StampOutput::Debugfs => debugfs_line(&rel_child, &text, out)?,
            };
            if done {
                report.files += 1;
                report.bytes += e.metadata().map_or(0, |m| m.len());
            } else {
                report.skipped.push(rel_child);
            }
        }
    }
    Ok(report)
}

/// Writes `ea_set "/REL" NAME HEX`; false for a name debugfs cannot quote
/// (a double quote, a backslash or a control character).
fn debugfs_line(rel: &Path, text: &[u8], out: &mut impl Write) -> io::Result<bool> {
    let name = rel.as_os_str().as_bytes();
    if name
        .iter()
        .any(|&c| c == b'"' || c == b'\\' || c < 0x20 || c == 0x7f)
    {
        return Ok(false);
    }
    out.write_all(b"ea_set \"/")?;
    out.write_all(name)?;
    out.write_all(b"\" ")?;
    out.write_all(FINGERPRINT_XATTR.as_bytes())?;
    out.write_all(b" ")?;
    out.write_all(text)?;
    out.write_all(b"\n")?;
    Ok(true)
}

fn set_xattr(path: &Path, value: &[u8]) -> io::Result<()> {
    let p = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let n = std::ffi::CString::new(FINGERPRINT_XATTR).expect("constant has no NUL");
    // SAFETY: `p` and `n` are NUL-terminated strings that outlive the call;
    // `value` is valid for `value.len()` bytes.
    let r = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads a file's fingerprint attribute (what the guest would send), if it
/// has a valid one.
pub fn read_xattr(path: &Path) -> Option<Fingerprint> {
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let n = std::ffi::CString::new(FINGERPRINT_XATTR).ok()?;
    let mut buf = [0u8; 64];
    // SAFETY: `p` and `n` are NUL-terminated; `buf` is writable for its length.
    let r = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    let len = usize::try_from(r).ok()?;
    vmdedup_protocol::abi::parse_fingerprint_text(buf.get(..len)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_equals_one_shot_and_content_decides() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut f = Fingerprinter::default();
        for c in data.chunks(4096) {
            f.update(c);
        }
        assert_eq!(f.finish(), fingerprint_of(&data));
        assert_eq!(
            fingerprint_reader(&mut &data[..]).unwrap(),
            fingerprint_of(&data)
        );
        let mut other = data.clone();
        other[5000] ^= 1;
        assert_ne!(fingerprint_of(&other), fingerprint_of(&data));
    }

    #[test]
    fn debugfs_lines_quote_the_path_and_skip_what_cannot_be_quoted() {
        let mut out = Vec::new();
        let text = fingerprint_text(&fingerprint_of(b"x"));
        assert!(debugfs_line(Path::new("a b/c"), &text, &mut out).unwrap());
        let line = String::from_utf8(out).unwrap();
        assert!(line.starts_with("ea_set \"/a b/c\" user.vmdedup.b3 "));
        assert!(line.ends_with('\n'));
        let mut out = Vec::new();
        assert!(!debugfs_line(Path::new("a\"b"), &text, &mut out).unwrap());
        assert!(!debugfs_line(Path::new("a\nb"), &text, &mut out).unwrap());
        assert!(out.is_empty());
    }

    #[test]
    fn stamp_tree_stamps_regular_files_only() {
        let dir = std::env::temp_dir().join(format!("vmdedup-stamp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("d/e")).unwrap();
        std::fs::write(dir.join("a"), b"one").unwrap();
        std::fs::write(dir.join("d/e/b"), b"two").unwrap();
        std::os::unix::fs::symlink("a", dir.join("l")).unwrap();
        let mut out = Vec::new();
        let r = stamp_tree(&dir, StampOutput::Debugfs, &mut out).unwrap();
        assert_eq!((r.files, r.bytes, r.skipped.len()), (2, 6, 0));
        let text = String::from_utf8(out).unwrap();
        let want_b = String::from_utf8(fingerprint_text(&fingerprint_of(b"two")).to_vec()).unwrap();
        assert!(text.contains(&format!("ea_set \"/d/e/b\" user.vmdedup.b3 {want_b}\n")));
        assert_eq!(
            text.lines().count(),
            2,
            "the symlink is not stamped: {text}"
        );
        // In place, where the file system keeps user attributes.
        let r = stamp_tree(&dir, StampOutput::Xattr, &mut Vec::new()).unwrap();
        if r.skipped.is_empty() {
            assert_eq!(r.files, 2);
            assert_eq!(read_xattr(&dir.join("a")), Some(fingerprint_of(b"one")));
            assert_eq!(read_xattr(&dir.join("d/e/b")), Some(fingerprint_of(b"two")));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
