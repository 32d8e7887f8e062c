//! One wait for every source of records: the ring buffers' epoll descriptor
//! and each perf buffer's, gathered in one epoll set, so that whichever has
//! records wakes the reader.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use anyhow::{Result, bail};

pub struct Readiness {
    epoll: OwnedFd,
}

impl Readiness {
    pub fn new(sources: &[RawFd]) -> Result<Readiness> {
        // SAFETY: plain system call; the descriptor is owned below.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            bail!("creating an epoll set: {}", std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and nothing else owns it.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        for &source in sources {
            let mut event = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: source as u64,
            };
            // SAFETY: both descriptors are open; the event is read during the call.
            if unsafe { libc::epoll_ctl(fd, libc::EPOLL_CTL_ADD, source, &mut event) } != 0 {
                bail!("watching descriptor {source}: {}", std::io::Error::last_os_error());
            }
        }
        Ok(Readiness { epoll })
    }

    /// Returns once a source has records, or after `timeout`; a signal ends
    /// the wait early too.
    pub fn wait(&self, timeout: Duration) -> Result<()> {
        let mut ready = [libc::epoll_event { events: 0, u64: 0 }; 8];
        let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: `ready` has room for the count passed.
        let count = unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), ready.as_mut_ptr(), ready.len() as i32, millis) };
        if count < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                bail!("waiting for records: {err}");
            }
        }
        Ok(())
    }
}
