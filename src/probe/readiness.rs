//! One wait for every source of records: the ring buffers' epoll descriptor
//! and each perf buffer's, gathered in one epoll set, so that whichever has
//! records wakes the reader; and an eventfd other threads wake it through.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};

pub struct Readiness {
    epoll: OwnedFd,
    waker: Waker,
}

/// Ends the reader's wait from another thread: the inspector, once it has
/// work for the reader (a program to hook, a process to note), which would
/// otherwise wait for the next records or the poll's timeout.
#[derive(Clone)]
pub struct Waker(Arc<OwnedFd>);

impl Waker {
    pub fn wake(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to an open eventfd. A
        // full counter (never, at one write per finding) only fails the write.
        unsafe { libc::write(self.0.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }
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
        // SAFETY: plain system call; the descriptor is owned below.
        let event_fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if event_fd < 0 {
            bail!("creating an eventfd: {}", std::io::Error::last_os_error());
        }
        // SAFETY: `event_fd` was just created and nothing else owns it.
        let waker = Waker(Arc::new(unsafe { OwnedFd::from_raw_fd(event_fd) }));
        for source in sources.iter().copied().chain([event_fd]) {
            let mut event = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: source as u64,
            };
            // SAFETY: both descriptors are open; the event is read during the call.
            if unsafe { libc::epoll_ctl(fd, libc::EPOLL_CTL_ADD, source, &mut event) } != 0 {
                bail!("watching descriptor {source}: {}", std::io::Error::last_os_error());
            }
        }
        Ok(Readiness { epoll, waker })
    }

    pub fn waker(&self) -> Waker {
        self.waker.clone()
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
        let woken = ready
            .iter()
            .take(count.max(0) as usize)
            .any(|event| event.u64 == self.waker.0.as_raw_fd() as u64);
        if woken {
            let mut count = [0u8; 8];
            // SAFETY: reads at most 8 bytes into a live buffer; resets the
            // counter so that the next wait sleeps.
            unsafe { libc::read(self.waker.0.as_raw_fd(), count.as_mut_ptr().cast(), count.len()) };
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_waker_ends_the_wait_from_another_thread() {
        let readiness = Readiness::new(&[]).unwrap();
        let waker = readiness.waker();
        let started = Instant::now();
        let waking = std::thread::spawn(move || waker.wake());
        readiness.wait(Duration::from_secs(60)).unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the wait ran to its timeout"
        );
        waking.join().unwrap();
        // The wake is taken: the next wait sleeps its timeout out.
        let mut count = [0u8; 8];
        // SAFETY: a read of at most 8 bytes into a live buffer.
        let read = unsafe { libc::read(readiness.waker.0.as_raw_fd(), count.as_mut_ptr().cast(), count.len()) };
        assert_eq!(read, -1, "the counter was left set");
    }
}
