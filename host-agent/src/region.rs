//! Creating and inspecting shared region files (ring and pool regions).
//!
//! A region is a plain file (normally under `/dev/shm`) that QEMU exposes to a
//! guest as an `ivshmem-plain` device. Only its [`RegionPrefix`] is written here;
//! the ring and pool layouts behind it belong to their own modules.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use vmdedup_protocol::abi::{PrefixError, RegionKind, RegionPrefix};

/// Errors from region file handling.
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    /// The file could not be created, read or written.
    #[error("{path}: {cause}")]
    Io {
        /// The region file.
        path: String,
        /// The underlying error.
        cause: std::io::Error,
    },
    /// A lower layer's error (it names the file).
    #[error("{0}")]
    Other(String),
    /// The size is not usable for an ivshmem BAR.
    #[error("region size {0} is not a power of two of at least 4096 bytes (ivshmem BARs must be)")]
    BadSize(u64),
    /// The file does not carry a valid prefix.
    #[error("{path}: not a vmdedup region: {reason}")]
    Invalid {
        /// The region file.
        path: String,
        /// Why it was refused.
        reason: PrefixError,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RegionError + '_ {
    move |source| RegionError::Io {
        path: path.display().to_string(),
        cause: source,
    }
}

/// Creates (or re-creates) a region file of `size` bytes with a complete
/// header: a ring region with empty rings ([`crate::ring::init_ring_file`]),
/// or an empty pool ([`crate::pool::PoolMemory::create`]). Never use it on a
/// region a running VM maps: a pool file is replaced, a ring is reset.
///
/// `generation` distinguishes successive initialisations of the same file.
pub fn init(
    path: &Path,
    kind: RegionKind,
    size: u64,
    generation: u64,
) -> Result<RegionPrefix, RegionError> {
    if size < 4096 || !size.is_power_of_two() {
        return Err(RegionError::BadSize(size));
    }
    // A lower layer's error, named by the file once: most name it already.
    let other = |e: String| {
        let p = path.display().to_string();
        RegionError::Other(if e.contains(&p) {
            e
        } else {
            format!("{p}: {e}")
        })
    };
    match kind {
        RegionKind::Ring => {
            // A new file (0600, see `hostfile`): an old one is unlinked, not
            // rewritten through whatever its path leads to.
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_err(path)(e)),
                _ => {}
            }
            let f = crate::hostfile::FileAccess::PRIVATE
                .create_new(path, "ring region")
                .map_err(|e| other(e.to_string()))?;
            f.set_len(size).map_err(io_err(path))?;
            drop(f);
            crate::ring::init_ring_file(path, generation).map_err(|e| other(e.to_string()))?;
        }
        RegionKind::Pool => {
            crate::pool::PoolMemory::create(&crate::pool::PoolSpec {
                backing: crate::pool::PoolBacking::File {
                    path: path.to_path_buf(),
                    access: crate::hostfile::FileAccess::PRIVATE,
                },
                size,
                table_area: 0,
                generation,
            })
            .map_err(|e| other(e.to_string()))?;
        }
    }
    let (_, prefix) = inspect(path)?;
    Ok(prefix)
}

/// Reads and validates the prefix of an existing region file.
pub fn inspect(path: &Path) -> Result<(RegionKind, RegionPrefix), RegionError> {
    let mut f = File::open(path).map_err(io_err(path))?;
    let len = f.seek(SeekFrom::End(0)).map_err(io_err(path))?;
    f.seek(SeekFrom::Start(0)).map_err(io_err(path))?;
    let mut b = [0u8; 32];
    if len < 32 {
        return Err(RegionError::Invalid {
            path: path.display().to_string(),
            reason: PrefixError::TooSmall,
        });
    }
    f.read_exact(&mut b).map_err(io_err(path))?;
    let prefix = RegionPrefix::from_le_bytes(&b);
    let kind = prefix
        .validate(len)
        .map_err(|reason| RegionError::Invalid {
            path: path.display().to_string(),
            reason,
        })?;
    Ok((kind, prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_then_inspect_round_trips() {
        let dir = std::env::temp_dir().join(format!("vmdedup-region-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (kind, name) in [(RegionKind::Ring, "ring"), (RegionKind::Pool, "pool")] {
            let p = dir.join(name);
            let written = init(&p, kind, 1 << 20, 7).unwrap();
            let (k, read) = inspect(&p).unwrap();
            assert_eq!(k, kind);
            assert_eq!(read, written);
            assert_eq!(std::fs::metadata(&p).unwrap().len(), 1 << 20);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_sizes_and_garbage_are_refused() {
        let dir = std::env::temp_dir().join(format!("vmdedup-region-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("r");
        assert!(matches!(
            init(&p, RegionKind::Ring, 5000, 1),
            Err(RegionError::BadSize(5000))
        ));
        assert!(matches!(
            init(&p, RegionKind::Ring, 0, 1),
            Err(RegionError::BadSize(0))
        ));
        std::fs::write(&p, vec![0xA5u8; 8192]).unwrap();
        assert!(matches!(
            inspect(&p),
            Err(RegionError::Invalid {
                reason: PrefixError::UnknownMagic(_),
                ..
            })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
