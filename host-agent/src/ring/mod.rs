//! The host side of the exitless shared-memory ring.
//!
//! A guest writes hints into the submission ring of its *ring region*; poller
//! threads here read them, ask a [`Handler`] for the answer and write it to the
//! completion ring. Host-to-guest events (revocations, notices) go through the
//! event ring. The layout and the protocol are defined in
//! [`vmdedup_protocol::abi`] and [`vmdedup_protocol::spsc`], which the guest
//! module compiles too.
//!
//! # Threat model
//! Every byte of a ring region is written by an untrusted guest. The host
//! - reaches the region only through [`SharedMapping`]'s bounds-checked
//!   volatile/atomic accessors, never through a reference to plain data;
//! - keeps its own copy of the layout and never reads offsets back;
//! - loads each foreign index once per round and checks it against the
//!   capacity, ignoring (and counting) a ring whose indices are corrupt;
//! - copies an entry out before it validates it, answers a malformed entry
//!   with an error status and counts it, and never panics on any bytes;
//! - serves at most a fixed batch per ring per round, round-robin, so a
//!   flooding guest cannot starve the other rings of its poller.
//!
//! # Use
//! ```no_run
//! use vmdedup_host_agent::ring::*;
//! use vmdedup_protocol::abi::AnswerStatus;
//! # fn main() -> Result<(), RingError> {
//! let map = SharedMapping::open(std::path::Path::new("/dev/shm/vm1.ring"))?;
//! let ring = HostRing::create(map, RingConfig::new(RingId(1), 42))?;
//! let pool = PollerPool::start(PollerConfig::default(), |_vm: RingId, _h: &Hint<'_>| {
//!     Answer::Miss(AnswerStatus::NotFound)
//! })?;
//! let handle = pool.add_ring(ring);
//! // give handle.shared().doorbell to whatever delivers the guest's doorbell
//! # Ok(()) }
//! ```

pub(crate) mod epoll;
pub mod eventfd;
#[cfg(any(test, feature = "test-utils"))]
pub mod guest;
pub mod handler;
pub mod host;
pub mod mapping;
pub mod poller;
pub mod stats;
mod words;

pub use eventfd::EventFd;
#[cfg(any(test, feature = "test-utils"))]
pub use guest::GuestRing;
pub use handler::{Answer, Handler, Hint, RingId};
pub use host::{init_ring_file, HostRing, RingConfig, RingShared};
pub use mapping::SharedMapping;
pub use poller::{PollSet, PollerConfig, PollerPool, RingHandle};
pub use stats::{PollerState, PollerStats, RingStats, RingStatsSnapshot};

use vmdedup_protocol::abi::{LayoutError, PrefixError};

/// Errors of ring setup. (Bad guest input is never an error: it is answered
/// and counted.)
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    /// A system call failed.
    #[error("{what}: {cause}")]
    Os {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        cause: std::io::Error,
    },
    /// The region is too small or not mappable.
    #[error("ring region size {0} is not usable")]
    BadSize(u64),
    /// The requested or found layout is invalid.
    #[error("ring layout refused: {0}")]
    Layout(LayoutError),
    /// The region prefix is invalid (guest side attach).
    #[error("ring region prefix refused: {0}")]
    Prefix(PrefixError),
    /// The indices found at attach are inconsistent.
    #[error("ring indices are inconsistent")]
    Corrupt,
}
