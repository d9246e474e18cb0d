//! `eventfd` doorbells.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use super::RingError;

/// A non-blocking, close-on-exec `eventfd`: a doorbell a guest (or a test's
/// fake guest) rings and a poller waits on.
#[derive(Debug)]
pub struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    /// Creates a non-blocking eventfd with counter 0.
    pub fn new() -> Result<EventFd, RingError> {
        // SAFETY: eventfd has no memory-safety preconditions.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(RingError::Os {
                what: "eventfd",
                cause: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: `fd` was just created and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(EventFd { fd })
    }

    /// Wraps an eventfd inherited from another process.
    pub fn from_owned(fd: OwnedFd) -> EventFd {
        EventFd { fd }
    }

    /// Another handle to the same eventfd.
    pub fn try_clone(&self) -> Result<EventFd, RingError> {
        let fd = self.fd.try_clone().map_err(|source| RingError::Os {
            what: "dup eventfd",
            cause: source,
        })?;
        Ok(EventFd { fd })
    }

    /// Adds one to the counter (rings the doorbell).
    pub fn notify(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live local; a full counter (EAGAIN)
        // means a wake-up is pending anyway, so the result can be ignored.
        unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Reads and resets the counter; returns how many times it was rung since
    /// the last drain (0 if never).
    pub fn drain(&self) -> u64 {
        let mut v: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live local.
        let r = unsafe { libc::read(self.fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
        if r == 8 {
            v
        } else {
            0
        }
    }

    /// Blocks until the counter is non-zero (or `timeout_ms` passes, -1 for
    /// never), then drains it. Returns the drained count.
    pub fn wait(&self, timeout_ms: i32) -> u64 {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        loop {
            let v = self.drain();
            if v > 0 {
                return v;
            }
            // SAFETY: one valid pollfd.
            let r = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
            if r == 0 {
                return 0;
            }
            if r < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                return 0;
            }
        }
    }

    /// The raw fd (for handing it to QEMU or a child process).
    pub fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
