//! A minimal epoll wrapper: what the ring pollers and the ivshmem server
//! wait on.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::RingError;

/// An epoll instance, closed when dropped.
pub(crate) struct Epoll {
    fd: OwnedFd,
}

impl AsRawFd for Epoll {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl Epoll {
    pub(crate) fn new() -> Result<Epoll, RingError> {
        // SAFETY: epoll_create1 has no memory-safety preconditions.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(RingError::Os {
                what: "epoll_create1",
                cause: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: `fd` was just created and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Epoll { fd })
    }

    pub(crate) fn add(&self, fd: RawFd, token: u64) -> Result<(), RingError> {
        self.add_flags(fd, token, libc::EPOLLIN as u32)
    }

    pub(crate) fn add_flags(&self, fd: RawFd, token: u64, events: u32) -> Result<(), RingError> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: `ev` is a valid epoll_event for the duration of the call.
        let r = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
        if r < 0 {
            return Err(RingError::Os {
                what: "epoll_ctl",
                cause: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    pub(crate) fn del(&self, fd: RawFd) {
        Epoll::del_raw(self.fd.as_raw_fd(), fd);
    }

    pub(crate) fn del_raw(epfd: RawFd, fd: RawFd) {
        // SAFETY: a NULL event is allowed for EPOLL_CTL_DEL since Linux 2.6.9.
        unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut()) };
    }

    /// Waits; returns the number of events written (0 on error or EINTR).
    pub(crate) fn wait(&self, events: &mut [libc::epoll_event], timeout_ms: i32) -> usize {
        let max = events.len().min(i32::MAX as usize) as i32;
        // SAFETY: `events` is valid for `max` entries.
        let r =
            unsafe { libc::epoll_wait(self.fd.as_raw_fd(), events.as_mut_ptr(), max, timeout_ms) };
        if r < 0 {
            0
        } else {
            r as usize
        }
    }
}
