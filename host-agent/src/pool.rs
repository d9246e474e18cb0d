//! The pool region on the host: one memory file, mapped read-write by the
//! agent only, attached read-only to every guest.
//!
//! Layout and field writers: [`vmdedup_protocol::pool`]. This module only owns
//! the mapping and writes into it; what goes where is the page store's choice.
//!
//! A pool file is never truncated: [`PoolMemory::create`] unlinks an existing
//! file first, so a VM that still maps the old one keeps its bytes. A pool
//! that never served anything is taken over in place
//! ([`PoolMemory::adopt_unused`]): VMs booted before the agent started map
//! that file, and nothing in it can be in use. A pool a previous agent served
//! from is taken over in place too, untouched ([`PoolMemory::adopt_served`]):
//! the new agent rebuilds its state from the frame tables in it, so guests
//! keep their maps.
//!
//! Either take-over adopts only a file that [`crate::hostfile`] accepts (a
//! regular file, no symlink, the agent's, one link, the configured size)
//! and whose header is a pool of the configured geometry; anything else is
//! an error and the file is left alone. New pool files are made by
//! [`crate::hostfile`] too: mode 0600, or 0660 with a configured owner or
//! group.
//!
//! A pool file may be larger than what its filesystem can hold (a 1 GiB pool
//! on Docker's 64 MiB `/dev/shm`): a store into a page of a shared mapping
//! that tmpfs cannot back kills the process with SIGBUS. So no byte of the
//! pool is written before its memory is reserved with `fallocate`
//! ([`PoolMemory::reserve_frame`], [`PoolMemory::reserve_range`]): in
//! [`RESERVE_CHUNK`] steps as the allocator grows into the pool (not the
//! whole pool up front: host memory is measured by the file's allocated
//! blocks), and frame by frame where holes were punched. A reservation that
//! fails (ENOSPC) is a full pool to the caller.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use crate::hostfile::{FileAccess, HostFileError};
use vmdedup_protocol::pool::{
    header_off, PoolError, PoolGeometry, TableHeader, FRAME_SIZE, POOL_HEADER_SIZE, TABLE_ALIGN,
    TABLE_HEADER_SIZE, TABLE_MAGIC,
};

/// Errors creating a pool.
#[derive(Debug, thiserror::Error)]
pub enum PoolMemoryError {
    /// Creating, sizing or mapping the memory file failed.
    #[error("pool {what}: {cause}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        cause: io::Error,
    },
    /// The geometry is impossible.
    #[error("pool geometry: {0}")]
    Geometry(PoolError),
    /// The size is not usable.
    #[error("pool size {0} must be a power of two of at least 64 KiB (ivshmem BARs are)")]
    BadSize(u64),
    /// An existing pool file is not one the agent may adopt.
    #[error(transparent)]
    Refused(#[from] HostFileError),
    /// An existing pool file does not hold a pool of the configured geometry.
    #[error("pool {path}: {reason}: refusing to adopt it; remove it if no VM maps it")]
    NotAPool {
        /// The pool file.
        path: PathBuf,
        /// What its header says instead.
        reason: String,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> PoolMemoryError {
    let what = what.into();
    move |cause| PoolMemoryError::Io { what, cause }
}

/// Where the pool lives.
#[derive(Clone, Debug)]
pub enum PoolBacking {
    /// A file (normally under `/dev/shm`, or on hugetlbfs). An existing file
    /// is unlinked first, never truncated.
    File {
        /// The file path QEMU's `memory-backend-file` will name.
        path: PathBuf,
        /// Who besides the agent may open it (mode 0600 or 0660).
        access: FileAccess,
    },
    /// An anonymous memfd (tests, or QEMU started with an inherited fd).
    Memfd,
}

/// How to build a pool.
#[derive(Clone, Debug)]
pub struct PoolSpec {
    /// Where it lives.
    pub backing: PoolBacking,
    /// Region size in bytes: a power of two.
    pub size: u64,
    /// Bytes reserved for frame tables (rounded up to pages); 0 picks 1/32 of
    /// the region.
    pub table_area: u64,
    /// Pool generation; must differ from every earlier pool's.
    pub generation: u64,
}

/// The pool's mapping, shared by its [`PoolMemory`] and the
/// [`FrameAccess`] handles made from it; unmapped when the last one goes.
///
/// # Invariants
/// `ptr..ptr+len` is a live `MAP_SHARED` read-write mapping for the lifetime
/// of the value.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the value only owns the address range; who may write which part
// of it, and when, is the contract of `PoolMemory` and `FrameAccess`.
unsafe impl Send for Mapping {}
// SAFETY: as for `Send`: `&Mapping` gives no access to the memory by itself.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping this value owns; every reference into
        // it borrows a `PoolMemory` or `FrameAccess`, which hold an `Arc` of
        // this value, so none outlives it.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// How much of the pool file's memory is reserved at once as the allocator
/// grows into the pool (a huge page, so hugetlbfs reserves whole pages too).
pub const RESERVE_CHUNK: u64 = 2 << 20;

/// A chunk this agent never reserved: reserve it whole.
const CHUNK_UNRESERVED: u8 = 0;
/// A chunk whose every byte is backed: nothing to do.
const CHUNK_RESERVED: u8 = 1;
/// A chunk that may have holes (punched, or a pool taken over): reserve
/// exactly what is about to be written.
const CHUNK_PARTIAL: u8 = 2;

/// What of the pool file is backed by memory, shared by a [`PoolMemory`] and
/// its [`FrameAccess`] handles.
///
/// # Invariants
/// A chunk marked [`CHUNK_RESERVED`] has no hole: every hole punch marks its
/// chunk [`CHUNK_PARTIAL`] before the punched frame can be allocated again,
/// and a whole-chunk reservation marks the chunk reserved only if nobody
/// marked it partial meanwhile (compare-exchange from unreserved).
struct Reservation {
    chunks: Box<[AtomicU8]>,
    region_size: u64,
    /// False once `fallocate` said the filesystem cannot reserve (then
    /// writes go ahead unreserved, as before; logged once).
    supported: AtomicBool,
    /// Reservations the filesystem refused (ENOSPC and friends).
    failures: AtomicU64,
    path: Option<PathBuf>,
}

impl Reservation {
    fn new(region_size: u64, path: Option<PathBuf>, initial: u8) -> Self {
        let n = region_size.div_ceil(RESERVE_CHUNK) as usize;
        Reservation {
            chunks: (0..n).map(|_| AtomicU8::new(initial)).collect(),
            region_size,
            supported: AtomicBool::new(true),
            failures: AtomicU64::new(0),
            path,
        }
    }

    /// Backs `offset..offset+len` of `file` with memory (see
    /// [`PoolMemory::reserve_range`]).
    fn reserve(&self, file: &File, offset: u64, len: u64) -> Result<(), io::Error> {
        let end = offset.saturating_add(len).min(self.region_size);
        if offset >= end || !self.supported.load(Ordering::Relaxed) {
            return Ok(());
        }
        let mut chunk = offset / RESERVE_CHUNK;
        while chunk * RESERVE_CHUNK < end {
            let Some(state) = self.chunks.get(chunk as usize) else {
                break;
            };
            let c_start = chunk * RESERVE_CHUNK;
            let c_end = (c_start + RESERVE_CHUNK).min(self.region_size);
            match state.load(Ordering::Acquire) {
                CHUNK_RESERVED => {}
                CHUNK_UNRESERVED => {
                    self.fallocate(file, c_start, c_end - c_start)?;
                    let _ = state.compare_exchange(
                        CHUNK_UNRESERVED,
                        CHUNK_RESERVED,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    );
                }
                _ => {
                    let (a, b) = (offset.max(c_start), end.min(c_end));
                    self.fallocate(file, a, b - a)?;
                }
            }
            chunk += 1;
        }
        Ok(())
    }

    fn fallocate(&self, file: &File, offset: u64, len: u64) -> Result<(), io::Error> {
        // SAFETY: fallocate(2) mode 0 on our own file, inside its size; it
        // only allocates blocks and never changes bytes or the size.
        let r = unsafe {
            libc::fallocate(
                file.as_raw_fd(),
                0,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => {
                if self.supported.swap(false, Ordering::Relaxed) {
                    tracing::warn!(
                        pool = %self.path.as_deref().unwrap_or(Path::new("(memfd)")).display(),
                        "the pool's filesystem cannot reserve memory (no fallocate): a full filesystem would kill the agent with SIGBUS; use tmpfs or hugetlbfs"
                    );
                }
                Ok(())
            }
            Some(libc::EINTR) => self.fallocate(file, offset, len),
            _ => {
                if self.failures.fetch_add(1, Ordering::Relaxed) == 0 {
                    let free = free_bytes(file).map_or("unknown".to_string(), |b| b.to_string());
                    tracing::warn!(
                        pool = %self.path.as_deref().unwrap_or(Path::new("(memfd)")).display(),
                        pool_size = self.region_size,
                        offset,
                        len,
                        filesystem_free_bytes = %free,
                        error = %e,
                        "the pool's filesystem has no room for more of the pool: treated as a full pool (logged once; make the filesystem larger or pool_size/budget smaller)"
                    );
                }
                Err(e)
            }
        }
    }

    /// Called after a hole was punched at `offset`.
    fn holed(&self, offset: u64) {
        if let Some(c) = self.chunks.get((offset / RESERVE_CHUNK) as usize) {
            c.store(CHUNK_PARTIAL, Ordering::Release);
        }
    }
}

/// Free bytes on the filesystem of `file`.
fn free_bytes(file: &File) -> Option<u64> {
    // SAFETY: an all-zero statvfs is a valid value to be overwritten.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and a valid out-pointer.
    let r = unsafe { libc::fstatvfs(file.as_raw_fd(), &mut st) };
    (r == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

/// The mapped pool.
///
/// # Invariants
/// `map` is a live `MAP_SHARED` read-write mapping of `file`,
/// `map.len == geometry.region_size`, and only this process writes to it
/// (guests map it read-only, no other host process writes it). In this
/// process it is written through `&mut self`, except for frames that the page
/// store reserved for one writer, which are written (and holes punched in
/// them) through a [`FrameAccess`] while no table references them and the
/// store reads them not.
pub struct PoolMemory {
    map: Arc<Mapping>,
    geometry: PoolGeometry,
    file: Arc<File>,
    path: Option<PathBuf>,
    punch_holes: bool,
    reservation: Arc<Reservation>,
}

// SAFETY: the mapping is shared only with `FrameAccess` handles, whose
// writers write frames nobody else reads or writes (see their contract);
// everything else is written through `&mut self`.
unsafe impl Send for PoolMemory {}
// SAFETY: see `Send`: every method that writes takes `&mut self`.
unsafe impl Sync for PoolMemory {}

/// A handle on the pool's frames that outlives a borrow of the pool: the
/// page store hands one out so that frames are written, compared and
/// discarded without its lock held. Every access is `unsafe`: the caller
/// promises the page store's reservation of that frame (see each method).
#[derive(Clone)]
pub struct FrameAccess {
    map: Arc<Mapping>,
    file: Arc<File>,
    geometry: PoolGeometry,
    punch_holes: bool,
    reservation: Arc<Reservation>,
}

impl std::fmt::Debug for FrameAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameAccess")
            .field("frames", &self.geometry.frame_count)
            .finish_non_exhaustive()
    }
}

impl FrameAccess {
    /// Whether both handles are of the same mapping.
    pub fn same_pool(&self, other: &FrameAccess) -> bool {
        Arc::ptr_eq(&self.map, &other.map)
    }

    /// The address of frame `frame`, or `None` if there is no such frame.
    fn frame_ptr(&self, frame: u32) -> Option<*mut u8> {
        let off = self.geometry.frame_offset(frame).ok()?;
        if off + FRAME_SIZE > self.map.len as u64 {
            return None;
        }
        // SAFETY: the offset was checked to lie, with a whole frame, inside
        // the live mapping.
        Some(unsafe { self.map.ptr.as_ptr().add(off as usize) })
    }

    /// Whether frame `frame` holds exactly `page` (a whole frame).
    ///
    /// # Safety
    /// Nobody writes the frame or punches a hole in it meanwhile: the page
    /// store keeps it referenced for the call.
    pub unsafe fn frame_equals(&self, frame: u32, page: &[u8]) -> bool {
        let Some(p) = self.frame_ptr(frame) else {
            return false;
        };
        // SAFETY: `p` starts a whole frame in the live mapping (`frame_ptr`),
        // which by the caller's promise nobody writes during this borrow.
        let have = unsafe { std::slice::from_raw_parts(p, FRAME_SIZE as usize) };
        have == page
    }

    /// Writes a whole frame; a short `data` is padded with zeros.
    ///
    /// # Safety
    /// The caller alone owns the frame: the page store reserved it for this
    /// writer, no table references it and nothing else reads or writes it
    /// until the store is told the write is done.
    pub unsafe fn write_frame(&self, frame: u32, data: &[u8]) {
        let Some(p) = self.frame_ptr(frame) else {
            return;
        };
        let n = data.len().min(FRAME_SIZE as usize);
        // SAFETY: `p..p+FRAME_SIZE` is in the live mapping (`frame_ptr`) and,
        // by the caller's promise, no other reference covers it.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), p, n);
            std::ptr::write_bytes(p.add(n), 0, FRAME_SIZE as usize - n);
        }
    }

    /// Returns the memory of a free frame to the OS (a no-op on hugetlbfs,
    /// whose pages are bigger than a frame); the frame reads back as zeros.
    ///
    /// # Safety
    /// As for [`write_frame`](Self::write_frame): the frame is free and
    /// reserved for this call; nobody reads or writes it meanwhile.
    pub unsafe fn discard_frame(&self, frame: u32) {
        if !self.punch_holes {
            return;
        }
        let Ok(off) = self.geometry.frame_offset(frame) else {
            return;
        };
        // Marked before the punch: the frame must be reserved again before
        // it is written, whatever happens to the punch.
        self.reservation.holed(off);
        // SAFETY: punching a hole in our own file over a frame nobody uses
        // (the caller's promise); the mapping stays valid and reads back
        // zeros. A failure is not fatal: the frame keeps its memory.
        let _ = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off as libc::off_t,
                FRAME_SIZE as libc::off_t,
            )
        };
    }
}

impl std::fmt::Debug for PoolMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolMemory")
            .field("geometry", &self.geometry)
            .field("path", &self.path)
            .finish()
    }
}

const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;

impl PoolMemory {
    /// Creates the memory file, maps it and writes the pool header.
    pub fn create(spec: &PoolSpec) -> Result<Self, PoolMemoryError> {
        if spec.size < 64 * 1024 || !spec.size.is_power_of_two() || spec.size > isize::MAX as u64 {
            return Err(PoolMemoryError::BadSize(spec.size));
        }
        let table_area = if spec.table_area == 0 {
            (spec.size / 32).max(FRAME_SIZE)
        } else {
            spec.table_area
        };
        let geometry = PoolGeometry::plan(spec.size, table_area, spec.generation)
            .map_err(PoolMemoryError::Geometry)?;
        let (file, path) = match &spec.backing {
            PoolBacking::File { path, access } => {
                (Self::create_file(path, access)?, Some(path.clone()))
            }
            PoolBacking::Memfd => (Self::create_memfd()?, None),
        };
        file.set_len(spec.size).map_err(io_err("set size"))?;
        let mut pool = Self::map(file, path, spec.size, geometry, CHUNK_UNRESERVED)?;
        pool.reserve_range(0, FRAME_SIZE)
            .map_err(io_err("reserve memory for the header"))?;
        let header = geometry.header().to_le_bytes();
        pool.write(0, &header);
        Ok(pool)
    }

    /// Takes over an existing pool file in place if it has the geometry `spec`
    /// asks for and has never served anything: no frame used, no frame table
    /// in its table area (a pool `vmdedup region init` made, which VMs may
    /// already map). Its generation is kept, so VMs that read its header at
    /// boot accept the tables written into it from now on. Returns `None` when
    /// the file is absent (then [`PoolMemory::create`] makes a new one) or
    /// served already (a pool that served may still be mapped by guest
    /// processes, so it is never rewritten in place: see
    /// [`PoolMemory::adopt_served`]). A file that is not such a pool, or
    /// that [`FileAccess::open_existing`] refuses, is an error.
    pub fn adopt_unused(spec: &PoolSpec) -> Result<Option<Self>, PoolMemoryError> {
        let Some((file, path, found)) = Self::open_existing(spec)? else {
            return Ok(None);
        };
        let pool = Self::map(file, Some(path), spec.size, found, CHUNK_PARTIAL)?;
        pool.reserve_range(0, FRAME_SIZE)
            .map_err(io_err("reserve memory for the header"))?;
        if pool.read_u64(header_off::FRAMES_USED as u64) != 0 {
            return Ok(None);
        }
        if table_slots(&found).any(|off| pool.read_u64(off) == TABLE_MAGIC) {
            return Ok(None);
        }
        Ok(Some(pool))
    }

    /// Takes over, in place, a pool file a previous agent served from (it died
    /// or restarted; VMs still map this very file, some of them perhaps
    /// paused). Nothing in it is written: its generation, its frame tables
    /// and its frames stay as they are, so every map a guest holds stays
    /// valid. The caller rebuilds its state from the tables
    /// ([`PageStore::adopt`](crate::store::PageStore::adopt)). Returns `None`
    /// when the file is absent; a file that is not a pool of this geometry,
    /// or that [`FileAccess::open_existing`] refuses, is an error.
    pub fn adopt_served(spec: &PoolSpec) -> Result<Option<Self>, PoolMemoryError> {
        let Some((file, path, found)) = Self::open_existing(spec)? else {
            return Ok(None);
        };
        let pool = Self::map(file, Some(path), spec.size, found, CHUNK_PARTIAL)?;
        pool.reserve_range(0, FRAME_SIZE)
            .map_err(io_err("reserve memory for the header"))?;
        Ok(Some(pool))
    }

    /// Opens the existing pool file of `spec` read-write, if there is one,
    /// after [`FileAccess::open_existing`]'s checks (which include the size),
    /// and checks that its header is a pool of the geometry `spec` plans
    /// (whatever its generation). `None` if it is absent.
    fn open_existing(
        spec: &PoolSpec,
    ) -> Result<Option<(File, PathBuf, PoolGeometry)>, PoolMemoryError> {
        let PoolBacking::File { path, access } = &spec.backing else {
            return Ok(None);
        };
        let Some(file) = access.open_existing(path, "pool", Some(spec.size))? else {
            return Ok(None);
        };
        let mut head = [0u8; POOL_HEADER_SIZE];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut head, 0)
            .map_err(io_err(format!("read the header of {}", path.display())))?;
        let found = PoolGeometry::from_header_bytes(&head, spec.size).map_err(|e| {
            PoolMemoryError::NotAPool {
                path: path.clone(),
                reason: format!("no valid vmdedup pool header ({e})"),
            }
        })?;
        let table_area = if spec.table_area == 0 {
            (spec.size / 32).max(FRAME_SIZE)
        } else {
            spec.table_area
        };
        match PoolGeometry::plan(spec.size, table_area, found.generation) {
            Ok(g) if g == found => {
                access.adopted(&file, path, "pool")?;
                Ok(Some((file, path.clone(), found)))
            }
            _ => Err(PoolMemoryError::NotAPool {
                path: path.clone(),
                reason: format!(
                    "its header describes {} frames from offset {} and a table area of {} bytes, not this configuration's layout",
                    found.frame_count, found.frame_area_offset, found.table_area_size
                ),
            }),
        }
    }

    /// Maps `file` (`size` bytes) read-write and shared; every reservation
    /// chunk starts in state `chunks` (unreserved for a new file, partial
    /// for one taken over, whose holes are not known).
    fn map(
        file: File,
        path: Option<PathBuf>,
        size: u64,
        geometry: PoolGeometry,
        chunks: u8,
    ) -> Result<Self, PoolMemoryError> {
        let punch_holes = !is_hugetlbfs(&file);
        // SAFETY: a fresh shared mapping of a file we own, of exactly its size;
        // nothing else in this process refers to that address range.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io_err("mmap")(io::Error::last_os_error()));
        }
        let ptr = NonNull::new(p.cast::<u8>())
            .ok_or_else(|| io_err("mmap")(io::Error::other("null mapping")))?;
        // INVARIANT: mapped above with len == region_size, owned by this value.
        Ok(PoolMemory {
            map: Arc::new(Mapping {
                ptr,
                len: size as usize,
            }),
            geometry,
            file: Arc::new(file),
            reservation: Arc::new(Reservation::new(size, path.clone(), chunks)),
            path,
            punch_holes,
        })
    }

    /// Makes a new pool file at `path` (an old one is unlinked first, never
    /// truncated: a VM may still map it).
    fn create_file(path: &Path, access: &FileAccess) -> Result<File, PoolMemoryError> {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(format!("unlink old {}", path.display()))(e)),
        }
        Ok(access.create_new(path, "pool")?)
    }

    fn create_memfd() -> Result<File, PoolMemoryError> {
        let name =
            CString::new("vmdedup-pool").map_err(|e| io_err("memfd")(io::Error::other(e)))?;
        // SAFETY: `name` is a valid NUL-terminated string; the flags are valid.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io_err("memfd_create")(io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
        Ok(unsafe { File::from_raw_fd(fd) })
    }

    /// The geometry written in the header.
    pub fn geometry(&self) -> &PoolGeometry {
        &self.geometry
    }

    /// The pool file's path, if it has one.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The memory file (e.g. to hand a memfd to QEMU).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// A handle that writes, compares and discards frames without a borrow
    /// of `self` (see [`FrameAccess`]).
    pub fn frame_access(&self) -> FrameAccess {
        FrameAccess {
            map: Arc::clone(&self.map),
            file: Arc::clone(&self.file),
            geometry: self.geometry,
            punch_holes: self.punch_holes,
            reservation: Arc::clone(&self.reservation),
        }
    }

    /// Backs `offset..offset+len` of the pool file with memory before it is
    /// written, so that the write cannot fault (SIGBUS on a full tmpfs): the
    /// chunks of [`RESERVE_CHUNK`] bytes it touches are reserved whole the
    /// first time, and exactly the range where holes may be. An error (the
    /// filesystem is full) means the range must not be written; the caller
    /// treats the pool as full. On a filesystem without `fallocate` this
    /// does nothing (logged once).
    pub fn reserve_range(&self, offset: u64, len: u64) -> Result<(), io::Error> {
        self.reservation.reserve(&self.file, offset, len)
    }

    /// [`reserve_range`](Self::reserve_range) for frame `frame`.
    pub fn reserve_frame(&self, frame: u32) -> Result<(), io::Error> {
        let off = self
            .geometry
            .frame_offset(frame)
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        self.reserve_range(off, FRAME_SIZE)
    }

    /// How many reservations the filesystem refused so far.
    pub fn reserve_failures(&self) -> u64 {
        self.reservation.failures.load(Ordering::Relaxed)
    }

    /// The whole region, read-only (for tests and fake guests, which read
    /// the header and published tables and frames; a loader may meanwhile
    /// write a frame no table references, as a guest's view would see).
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: by the invariant the mapping is live for `self`'s lifetime
        // and written through `&mut self`, which this borrow excludes, or in
        // reserved frames that no table references, which a reader of
        // published data does not look at.
        unsafe { std::slice::from_raw_parts(self.map.ptr.as_ptr(), self.map.len) }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let end = offset.checked_add(data.len() as u64);
        assert!(
            end.is_some_and(|e| e <= self.map.len as u64),
            "pool write out of range"
        );
        // SAFETY: the range was checked to lie in the mapping; `&mut self`
        // excludes any other reference into it on the host side.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.map.ptr.as_ptr().add(offset as usize),
                data.len(),
            )
        }
    }

    /// Writes raw bytes anywhere in the region (tests that corrupt a pool).
    #[cfg(test)]
    pub(crate) fn write_for_test(&mut self, offset: u64, data: &[u8]) {
        self.write(offset, data);
    }

    fn store_u64(&self, offset: u64, value: u64, order: Ordering) {
        assert!(
            offset.is_multiple_of(8) && offset + 8 <= self.map.len as u64,
            "pool atomic store out of range"
        );
        // SAFETY: the address is in the mapping and 8-aligned (the mapping is
        // page-aligned); the location is only accessed atomically or by
        // guests' reads, and lives as long as `self`.
        let a = unsafe {
            AtomicU64::from_ptr(self.map.ptr.as_ptr().add(offset as usize).cast::<u64>())
        };
        a.store(value, order);
    }

    /// The bytes of frame `frame`. Panics on a frame number the store never
    /// allocated (a bug, not guest input).
    pub fn frame(&self, frame: u32) -> &[u8] {
        let off = self
            .geometry
            .frame_offset(frame)
            .expect("frame number from the store");
        assert!(
            off + FRAME_SIZE <= self.map.len as u64,
            "frame out of range"
        );
        // SAFETY: a whole frame inside the live mapping; it is written only
        // through `&mut self` (excluded by this borrow) or, while reserved,
        // through a `FrameAccess`; the store reads no reserved frame.
        unsafe {
            std::slice::from_raw_parts(self.map.ptr.as_ptr().add(off as usize), FRAME_SIZE as usize)
        }
    }

    /// Writes a whole frame; a short `data` is padded with zeros.
    pub fn write_frame(&mut self, frame: u32, data: &[u8]) {
        let off = self
            .geometry
            .frame_offset(frame)
            .expect("frame number from the store");
        let n = data.len().min(FRAME_SIZE as usize);
        self.write(off, &data[..n]);
        if n < FRAME_SIZE as usize {
            self.write(off + n as u64, &[0u8; FRAME_SIZE as usize][n..]);
        }
    }

    /// Returns the memory of a frame that is free again to the OS (a no-op on
    /// hugetlbfs, whose pages are bigger than a frame).
    pub fn discard_frame(&mut self, frame: u32) {
        if !self.punch_holes {
            return;
        }
        let Ok(off) = self.geometry.frame_offset(frame) else {
            return;
        };
        self.reservation.holed(off);
        // SAFETY: punching a hole in our own file over a frame no table
        // references; the mapping stays valid and reads back zeros.
        let r = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off as libc::off_t,
                FRAME_SIZE as libc::off_t,
            )
        };
        if r != 0 {
            // Not fatal: the frame keeps its memory until it is reused.
            self.punch_holes = false;
        }
    }

    /// Writes a complete frame table at `offset` and publishes it: header with
    /// magic 0 and frame numbers first, then the magic with release ordering.
    pub fn publish_table(&mut self, offset: u64, mut header: TableHeader, frames: &[u32]) {
        assert!(
            offset.is_multiple_of(TABLE_ALIGN),
            "table offset misaligned"
        );
        let mut sum = header.checksum_start();
        let mut bytes = Vec::with_capacity(frames.len() * 4);
        for f in frames {
            sum.update_u32(*f);
            bytes.extend_from_slice(&f.to_le_bytes());
        }
        header.checksum = sum.finish();
        header.magic = 0;
        self.write(offset, &header.to_le_bytes());
        self.write(offset + TABLE_HEADER_SIZE as u64, &bytes);
        self.store_u64(offset, TABLE_MAGIC, Ordering::Release);
    }

    /// Marks the table at `offset` dead (magic 0) and bumps the revocation epoch.
    pub fn revoke_table(&mut self, offset: u64) {
        self.store_u64(offset, 0, Ordering::Release);
        let epoch = self
            .read_u64(header_off::REVOCATION_EPOCH as u64)
            .wrapping_add(1);
        self.store_u64(
            header_off::REVOCATION_EPOCH as u64,
            epoch,
            Ordering::Relaxed,
        );
    }

    /// Publishes the informational `frames_used` counter.
    pub fn set_frames_used(&mut self, n: u64) {
        self.store_u64(header_off::FRAMES_USED as u64, n, Ordering::Relaxed);
    }

    fn read_u64(&self, offset: u64) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&self.bytes()[offset as usize..offset as usize + 8]);
        u64::from_le_bytes(a)
    }

    /// The header bytes as a guest would copy them.
    pub fn header_bytes(&self) -> [u8; POOL_HEADER_SIZE] {
        let mut b = [0u8; POOL_HEADER_SIZE];
        b.copy_from_slice(&self.bytes()[..POOL_HEADER_SIZE]);
        b
    }
}

/// Offsets in the table area where a frame table may start.
fn table_slots(g: &PoolGeometry) -> impl Iterator<Item = u64> {
    let end = g.table_area_offset + g.table_area_size;
    (g.table_area_offset..end.saturating_sub(7)).step_by(TABLE_ALIGN as usize)
}

fn is_hugetlbfs(f: &File) -> bool {
    // SAFETY: an all-zero statfs is a valid value to be overwritten.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and a valid out-pointer.
    let r = unsafe { libc::fstatfs(f.as_raw_fd(), &mut st) };
    r == 0 && st.f_type as i64 == HUGETLBFS_MAGIC
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmdedup_protocol::pool::{verify_table, TableRef};

    #[test]
    fn header_and_tables_read_back_as_a_guest_checks_them() {
        let mut p = PoolMemory::create(&PoolSpec {
            backing: PoolBacking::Memfd,
            size: 1 << 20,
            table_area: 8192,
            generation: 9,
        })
        .unwrap();
        let g = PoolGeometry::from_header_bytes(&p.header_bytes(), 1 << 20).unwrap();
        assert_eq!(&g, p.geometry());
        p.write_frame(3, b"hello");
        assert_eq!(&p.frame(3)[..5], b"hello");
        assert!(p.frame(3)[5..].iter().all(|&b| b == 0));
        let off = g.table_area_offset + 64;
        let h = TableHeader {
            magic: 0,
            file_map_id: 5,
            file_size: 5,
            page_count: 1,
            flags: 0,
            pool_generation: 9,
            checksum: 0,
            reserved: [0; 2],
        };
        p.publish_table(off, h, &[3]);
        let r = TableRef {
            offset: off,
            page_count: 1,
            file_map_id: 5,
            file_size: 5,
            map_generation: 9,
        };
        let b = p.bytes();
        let hb: [u8; 64] = b[off as usize..off as usize + 64].try_into().unwrap();
        assert_eq!(
            verify_table(&g, &r, &hb, &b[off as usize + 64..off as usize + 68]),
            Ok(())
        );
        p.revoke_table(off);
        let hb: [u8; 64] = p.bytes()[off as usize..off as usize + 64]
            .try_into()
            .unwrap();
        assert_eq!(
            verify_table(
                &g,
                &r,
                &hb,
                &p.bytes()[off as usize + 64..off as usize + 68]
            ),
            Err(PoolError::TableNotLive)
        );
        p.discard_frame(3);
        assert!(p.frame(3).iter().all(|&b| b == 0));
    }

    #[test]
    fn file_pool_replaces_never_truncates() {
        let dir = std::env::temp_dir().join(format!("vmdedup-pool-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pool");
        let spec = PoolSpec {
            backing: PoolBacking::File {
                path: path.clone(),
                access: FileAccess::PRIVATE,
            },
            size: 1 << 16,
            table_area: 0,
            generation: 1,
        };
        let old = PoolMemory::create(&spec).unwrap();
        let new = PoolMemory::create(&PoolSpec {
            generation: 2,
            ..spec
        })
        .unwrap();
        // the old mapping still shows the old generation: its file was unlinked, not rewritten
        assert_eq!(
            PoolGeometry::from_header_bytes(&old.header_bytes(), 1 << 16)
                .unwrap()
                .generation,
            1
        );
        assert_eq!(
            PoolGeometry::from_header_bytes(&new.header_bytes(), 1 << 16)
                .unwrap()
                .generation,
            2
        );
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(
                &std::fs::metadata(&path).unwrap().permissions()
            ) & 0o777,
            0o600
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn file_spec(path: &Path, size: u64, generation: u64) -> PoolSpec {
        PoolSpec {
            backing: PoolBacking::File {
                path: path.to_path_buf(),
                access: FileAccess::PRIVATE,
            },
            size,
            table_area: 0,
            generation,
        }
    }

    #[test]
    fn only_a_pool_that_never_served_is_adopted_in_place() {
        let dir = std::env::temp_dir().join(format!("vmdedup-adopt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pool");
        // Absent: nothing to adopt.
        assert!(PoolMemory::adopt_unused(&file_spec(&path, 1 << 20, 5))
            .unwrap()
            .is_none());
        // A fresh pool (what `vmdedup region init` makes) is adopted, same
        // file, its generation kept.
        drop(PoolMemory::create(&file_spec(&path, 1 << 20, 41)).unwrap());
        use std::os::unix::fs::MetadataExt;
        let ino = std::fs::metadata(&path).unwrap().ino();
        let p = PoolMemory::adopt_unused(&file_spec(&path, 1 << 20, 99))
            .unwrap()
            .expect("adopted");
        assert_eq!(p.geometry().generation, 41);
        assert_eq!(
            std::fs::metadata(&path).unwrap().ino(),
            ino,
            "same file, not a new one"
        );
        drop(p);
        // Another size: refused.
        assert!(matches!(
            PoolMemory::adopt_unused(&file_spec(&path, 1 << 21, 5)),
            Err(PoolMemoryError::Refused(HostFileError::Size { .. }))
        ));
        // Once it holds a frame table, it served: never adopted.
        let mut p = PoolMemory::adopt_unused(&file_spec(&path, 1 << 20, 5))
            .unwrap()
            .unwrap();
        let off = p.geometry().table_area_offset + 128;
        let h = TableHeader {
            magic: 0,
            file_map_id: 1,
            file_size: 1,
            page_count: 1,
            flags: 0,
            pool_generation: 41,
            checksum: 0,
            reserved: [0; 2],
        };
        p.publish_table(off, h, &[0]);
        drop(p);
        assert!(PoolMemory::adopt_unused(&file_spec(&path, 1 << 20, 5))
            .unwrap()
            .is_none());
        // Frames in use (header): not adopted either.
        let mut p = PoolMemory::create(&file_spec(&path, 1 << 20, 42)).unwrap();
        p.set_frames_used(3);
        drop(p);
        assert!(PoolMemory::adopt_unused(&file_spec(&path, 1 << 20, 5))
            .unwrap()
            .is_none());
        // Garbage: refused, and left as it is.
        std::fs::write(&path, vec![0x5au8; 1 << 20]).unwrap();
        let e = PoolMemory::adopt_unused(&file_spec(&path, 1 << 20, 5)).unwrap_err();
        assert!(matches!(e, PoolMemoryError::NotAPool { .. }), "{e}");
        assert!(
            e.to_string().contains("no valid vmdedup pool header"),
            "{e}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), vec![0x5au8; 1 << 20]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_served_pool_is_taken_over_untouched() {
        let dir = std::env::temp_dir().join(format!("vmdedup-adopt-served-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pool");
        assert!(PoolMemory::adopt_served(&file_spec(&path, 1 << 20, 5))
            .unwrap()
            .is_none());
        let mut old = PoolMemory::create(&file_spec(&path, 1 << 20, 7)).unwrap();
        old.write_frame(2, b"still mapped by a guest");
        let off = old.geometry().table_area_offset + 64;
        let h = TableHeader {
            magic: 0,
            file_map_id: 3,
            file_size: 23,
            page_count: 1,
            flags: 0,
            pool_generation: 7,
            checksum: 0,
            reserved: [0; 2],
        };
        old.publish_table(off, h, &[2]);
        old.set_frames_used(1);
        drop(old);
        use std::os::unix::fs::MetadataExt;
        let ino = std::fs::metadata(&path).unwrap().ino();
        // Not unused any more.
        assert!(PoolMemory::adopt_unused(&file_spec(&path, 1 << 20, 8))
            .unwrap()
            .is_none());
        let before = std::fs::read(&path).unwrap();
        let new = PoolMemory::adopt_served(&file_spec(&path, 1 << 20, 8))
            .unwrap()
            .expect("taken over");
        assert_eq!(
            std::fs::metadata(&path).unwrap().ino(),
            ino,
            "the very file VMs map"
        );
        let g = PoolGeometry::from_header_bytes(&new.header_bytes(), 1 << 20).unwrap();
        assert_eq!(g.generation, 7, "the generation is kept");
        assert_eq!(new.read_u64(off), TABLE_MAGIC, "the table stays live");
        assert_eq!(new.bytes(), &before[..], "not one byte written");
        assert_eq!(
            &new.frame(2)[..23],
            b"still mapped by a guest",
            "frames untouched"
        );
        drop(new);
        // Another size or garbage: refused.
        assert!(PoolMemory::adopt_served(&file_spec(&path, 1 << 21, 9)).is_err());
        std::fs::write(&path, vec![0x5au8; 1 << 20]).unwrap();
        assert!(PoolMemory::adopt_served(&file_spec(&path, 1 << 20, 9)).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
