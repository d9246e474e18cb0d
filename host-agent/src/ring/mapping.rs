//! A shared mapping of a ring region, reached only through bounds-checked
//! volatile and atomic accessors.
//!
//! The other side (a guest) can write any byte at any time, so nothing here
//! hands out a reference to plain data in the mapping: entries are copied out
//! with volatile loads and validated afterwards, and the only references made
//! are `&AtomicU32` to index and flag words, which are accessed atomically by
//! both sides anyway.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::AtomicU32;

use super::RingError;

/// A `MAP_SHARED` read-write mapping of a region file or memfd.
///
/// # Invariants
/// `ptr` is the start of a live mapping of `len` bytes (page aligned, `len > 0`)
/// created by this type and unmapped only in `Drop`.
#[derive(Debug)]
pub struct SharedMapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; every access through this type
// is volatile or atomic, so using it from several threads is no different from
// another process writing it concurrently, which the accessors already allow.
unsafe impl Send for SharedMapping {}
// SAFETY: as above; no method takes `&mut self` to shared bytes.
unsafe impl Sync for SharedMapping {}

fn last_os_error(what: &'static str) -> RingError {
    RingError::Os {
        what,
        cause: std::io::Error::last_os_error(),
    }
}

impl SharedMapping {
    /// Maps `len` bytes of `fd` from offset 0, shared and read-write.
    pub fn map_fd(fd: BorrowedFd<'_>, len: usize) -> Result<SharedMapping, RingError> {
        if len == 0 {
            return Err(RingError::BadSize(0));
        }
        // SAFETY: a fresh mapping chosen by the kernel (addr NULL) aliases no Rust
        // object; the fd is valid for the duration of the call (borrowed).
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(last_os_error("mmap"));
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or(RingError::BadSize(len as u64))?;
        // INVARIANT: a successful mmap of `len > 0` bytes.
        Ok(SharedMapping { ptr, len })
    }

    /// Opens a region file (e.g. under `/dev/shm`) and maps all of it. A
    /// symlink is not followed (the agent checks its region files before it
    /// maps them, see [`crate::hostfile`]).
    pub fn open(path: &Path) -> Result<SharedMapping, RingError> {
        use std::os::unix::fs::OpenOptionsExt;
        let f = File::options()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(|source| RingError::Os {
                what: "open region file",
                cause: source,
            })?;
        let len = f
            .metadata()
            .map_err(|source| RingError::Os {
                what: "stat region file",
                cause: source,
            })?
            .len();
        let len = usize::try_from(len).map_err(|_| RingError::BadSize(len))?;
        Self::map_fd(f.as_fd(), len)
    }

    /// Creates an anonymous memory file (`memfd_create`) of `len` bytes and maps
    /// it. The fd is returned so that it can be passed to another process
    /// (close-on-exec is set; clear it in the child's `pre_exec`).
    pub fn memfd(name: &str, len: usize) -> Result<(SharedMapping, OwnedFd), RingError> {
        let cname = std::ffi::CString::new(name).map_err(|_| RingError::BadSize(len as u64))?;
        // SAFETY: `cname` is a valid NUL-terminated string for the call.
        let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(last_os_error("memfd_create"));
        }
        // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let f = File::from(fd);
        f.set_len(len as u64).map_err(|source| RingError::Os {
            what: "ftruncate memfd",
            cause: source,
        })?;
        let map = Self::map_fd(f.as_fd(), len)?;
        Ok((map, OwnedFd::from(f)))
    }

    /// Length of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never: construction refuses it).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    fn check(&self, off: usize, len: usize, align: usize) -> bool {
        off.is_multiple_of(align) && off.checked_add(len).is_some_and(|end| end <= self.len)
    }

    /// The `u32` word at byte offset `off` as an atomic, or `None` if it is out
    /// of bounds or not 4-byte aligned.
    #[inline]
    pub fn word(&self, off: usize) -> Option<&AtomicU32> {
        if !self.check(off, 4, 4) {
            return None;
        }
        // SAFETY: `off + 4 <= len` and `off` is 4-aligned (the mapping is page
        // aligned), so the pointer is valid and aligned for an AtomicU32 for as
        // long as `self` (the mapping) lives, which bounds the returned lifetime.
        // All accesses to that word by either side are atomic.
        Some(unsafe { AtomicU32::from_ptr(self.ptr.as_ptr().add(off).cast::<u32>()) })
    }

    /// Copies `out.len()` little-endian 8-byte words from byte offset `off`
    /// (8-aligned) with volatile loads. Returns `false`, reading nothing, if
    /// out of bounds.
    pub fn read_words(&self, off: usize, out: &mut [u64]) -> bool {
        let Some(bytes) = out.len().checked_mul(8) else {
            return false;
        };
        if !self.check(off, bytes, 8) {
            return false;
        }
        // SAFETY: in bounds and 8-aligned by the check above.
        let src = unsafe { self.ptr.as_ptr().add(off).cast::<u64>() };
        for (i, w) in out.iter_mut().enumerate() {
            // SAFETY: `i < out.len()`, so the word lies within the checked range.
            *w = u64::from_le(unsafe { std::ptr::read_volatile(src.add(i)) });
        }
        true
    }

    /// Writes little-endian 8-byte words at byte offset `off` (8-aligned) with
    /// volatile stores. Returns `false`, writing nothing, if out of bounds.
    pub fn write_words(&self, off: usize, src: &[u64]) -> bool {
        let Some(bytes) = src.len().checked_mul(8) else {
            return false;
        };
        if !self.check(off, bytes, 8) {
            return false;
        }
        // SAFETY: in bounds and 8-aligned by the check above.
        let dst = unsafe { self.ptr.as_ptr().add(off).cast::<u64>() };
        for (i, w) in src.iter().enumerate() {
            // SAFETY: `i < src.len()`, so the word lies within the checked range.
            unsafe { std::ptr::write_volatile(dst.add(i), w.to_le()) };
        }
        true
    }

    /// Copies `out.len()` bytes from byte offset `off` with volatile loads
    /// (words while aligned, then bytes). Returns `false` if out of bounds.
    pub fn read_bytes(&self, off: usize, out: &mut [u8]) -> bool {
        if !self.check(off, out.len(), 1) {
            return false;
        }
        let base = self.ptr.as_ptr();
        let mut i = 0;
        if off.is_multiple_of(8) {
            while i + 8 <= out.len() {
                // SAFETY: `off + i + 8 <= off + out.len() <= len`, 8-aligned.
                let w = unsafe { std::ptr::read_volatile(base.add(off + i).cast::<u64>()) };
                if let Some(d) = out.get_mut(i..i + 8) {
                    d.copy_from_slice(&w.to_ne_bytes());
                }
                i += 8;
            }
        }
        while let Some(d) = out.get_mut(i) {
            // SAFETY: `off + i < off + out.len() <= len`.
            *d = unsafe { std::ptr::read_volatile(base.add(off + i)) };
            i += 1;
        }
        true
    }

    /// Writes `src` at byte offset `off` with volatile stores. Returns `false`,
    /// writing nothing, if out of bounds.
    pub fn write_bytes(&self, off: usize, src: &[u8]) -> bool {
        if !self.check(off, src.len(), 1) {
            return false;
        }
        let base = self.ptr.as_ptr();
        let mut i = 0;
        if off.is_multiple_of(8) {
            while let Some(s) = src.get(i..i + 8) {
                let mut a = [0u8; 8];
                a.copy_from_slice(s);
                // SAFETY: `off + i + 8 <= off + src.len() <= len`, 8-aligned.
                unsafe {
                    std::ptr::write_volatile(base.add(off + i).cast::<u64>(), u64::from_ne_bytes(a))
                };
                i += 8;
            }
        }
        while let Some(&b) = src.get(i) {
            // SAFETY: `off + i < off + src.len() <= len`.
            unsafe { std::ptr::write_volatile(base.add(off + i), b) };
            i += 1;
        }
        true
    }

    /// Zeroes `len` bytes at `off` with volatile stores. Returns `false` if out
    /// of bounds.
    pub fn zero(&self, off: usize, len: usize) -> bool {
        if !self.check(off, len, 1) {
            return false;
        }
        for i in 0..len {
            // SAFETY: `off + i < off + len <= self.len`.
            unsafe { std::ptr::write_volatile(self.ptr.as_ptr().add(off + i), 0u8) };
        }
        true
    }
}

impl vmdedup_protocol::guest::SharedRegion for SharedMapping {
    type Word = AtomicU32;

    #[inline]
    fn size(&self) -> usize {
        self.len
    }

    #[inline]
    fn read_bytes(&self, off: usize, out: &mut [u8]) -> bool {
        SharedMapping::read_bytes(self, off, out)
    }

    #[inline]
    fn write_bytes(&self, off: usize, data: &[u8]) -> bool {
        SharedMapping::write_bytes(self, off, data)
    }

    #[inline]
    fn word(&self, off: usize) -> Option<&AtomicU32> {
        SharedMapping::word(self, off)
    }
}

impl Drop for SharedMapping {
    fn drop(&mut self) {
        // SAFETY: by the type invariant this is our live mapping of `len` bytes;
        // references handed out borrow `self`, so none outlives this call.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Clears close-on-exec on `fd`, for handing it to a child process. Meant to
/// be called in `Command::pre_exec` (it is async-signal-safe).
pub fn clear_cloexec(fd: i32) -> std::io::Result<()> {
    // SAFETY: fcntl on an integer fd has no memory-safety preconditions.
    let r = unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}
