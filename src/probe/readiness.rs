//! One wait for every source of records: the ring buffers' epoll descriptor
//! and each perf buffer's, gathered in one epoll set, so that whichever
//! announces records (the rings) or holds them (the perf buffers) wakes the
//! reader; and an eventfd other threads wake it through.
//! Also how long the reader sleeps, and what should wake it early.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    /// `announced` sources end a wait only when they announce new records
    /// (the ring buffers, whose programs send a wakeup when the reader asks
    /// for one), so that the reader can sleep on a timer while records
    /// arrive; `level` sources end it whenever they hold records.
    pub fn new(announced: &[RawFd], level: &[RawFd]) -> Result<Readiness> {
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
        let edge = announced.iter().map(|fd| (*fd, libc::EPOLLET as u32));
        let level = level.iter().chain([&event_fd]).map(|fd| (*fd, 0));
        for (source, trigger) in edge.chain(level) {
            let mut event = libc::epoll_event {
                events: libc::EPOLLIN as u32 | trigger,
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

/// How long the reader sleeps between rounds, and how many bytes waiting in
/// the ring buffers should end the sleep early.
///
/// A wakeup from the programs is an interrupt raised on the traced CPU, which
/// under a hypervisor is a VM exit: at 2 GB/s, one per eighth of the ring
/// cost a Go ping-pong 5% of its throughput. So once records arrive steadily,
/// the reader wakes itself on a timer, set to when it expects an eighth of
/// the ring to be waiting, and asks the programs for a wakeup only at twice
/// that (at most half the ring), in case the flow quickens. While records
/// trickle in, it sleeps the poll interval and asks to be woken at an eighth,
/// so that a burst is met with most of the ring still free.
#[derive(Debug)]
pub struct Pace {
    ring_bytes: u64,
    poll_interval: Duration,
    /// Bytes per second the rings filled at during the last sleep.
    filling: f64,
    asleep: Option<(Instant, u64)>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sleep {
    pub timeout: Duration,
    /// Waiting bytes at which the programs wake the reader; never 0.
    pub wake_bytes: u32,
}

/// A sleep shorter than this would be a busy loop; the wait counts in milliseconds.
const SHORTEST_SLEEP: Duration = Duration::from_millis(1);

impl Pace {
    pub fn new(ring_bytes: u32, poll_interval: Duration) -> Pace {
        Pace {
            ring_bytes: u64::from(ring_bytes),
            poll_interval,
            filling: 0.0,
            asleep: None,
        }
    }

    /// The bytes whose wait the reader does not sleep through.
    pub fn batch_bytes(&self) -> u64 {
        (self.ring_bytes / 8).max(1)
    }

    /// Bytes per second the rings filled at during the last sleep.
    pub fn filling(&self) -> f64 {
        self.filling
    }

    pub fn next_sleep(&self) -> Sleep {
        let batch = self.batch_bytes();
        let clamp = |bytes: u64| u32::try_from(bytes.max(1)).unwrap_or(u32::MAX);
        // Nothing arriving (a rate of 0) gives infinity, which no Duration holds.
        let until_batch = Duration::try_from_secs_f64(batch as f64 / self.filling)
            .unwrap_or(Duration::MAX)
            .max(SHORTEST_SLEEP);
        if until_batch >= self.poll_interval {
            return Sleep {
                timeout: self.poll_interval,
                wake_bytes: clamp(batch),
            };
        }
        // Twice what should wait at the timeout: a flow that doubles wakes the
        // reader, and a flow underestimated (a burst that began mid-sleep,
        // whose bytes were spread over the whole sleep) still finds most of
        // the ring free.
        let expected = (self.filling * until_batch.as_secs_f64()) as u64;
        Sleep {
            timeout: until_batch,
            wake_bytes: clamp(expected.max(batch).saturating_mul(2).min(self.ring_bytes / 2)),
        }
    }

    /// The reader goes to sleep with `waiting` bytes left in the rings.
    pub fn sleeping(&mut self, waiting: u64, now: Instant) {
        self.asleep = Some((now, waiting));
    }

    /// The reader woke with `waiting` bytes in the rings.
    pub fn woke(&mut self, waiting: u64, now: Instant) {
        if let Some((since, before)) = self.asleep.take() {
            let slept = now.saturating_duration_since(since).as_secs_f64();
            if slept > 0.0 {
                self.filling = waiting.saturating_sub(before) as f64 / slept;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_waker_ends_the_wait_from_another_thread() {
        let readiness = Readiness::new(&[], &[]).unwrap();
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

    const RING: u32 = 8 << 20;
    const POLL: Duration = Duration::from_millis(50);

    fn paced_after(waiting_before: u64, waiting_after: u64, slept: Duration) -> Sleep {
        let mut pace = Pace::new(RING, POLL);
        let began = Instant::now();
        pace.sleeping(waiting_before, began);
        pace.woke(waiting_after, began + slept);
        pace.next_sleep()
    }

    #[test]
    fn a_quiet_ring_is_polled_and_a_burst_wakes_the_reader_with_most_of_it_free() {
        let fresh = Pace::new(RING, POLL).next_sleep();
        let trickle = paced_after(0, 4096, Duration::from_millis(50));
        let idle = paced_after(4096, 0, Duration::from_millis(50));
        for sleep in [fresh, trickle, idle] {
            assert_eq!(
                sleep,
                Sleep {
                    timeout: POLL,
                    wake_bytes: RING / 8
                }
            );
        }
    }

    #[test]
    fn a_steady_flow_wakes_the_reader_on_its_own_timer_when_an_eighth_waits() {
        // 1 MiB in 2 ms: an eighth of the ring (1 MiB) every 2 ms.
        let sleep = paced_after(0, 1 << 20, Duration::from_millis(2));
        assert_eq!(sleep.timeout, Duration::from_millis(2));
        // The programs wake it only if the flow doubles.
        assert_eq!(sleep.wake_bytes, RING / 4);
    }

    #[test]
    fn a_burst_that_began_mid_sleep_still_leaves_most_of_the_ring_free() {
        // The programs woke the reader at an eighth, 40 ms into its sleep; the
        // burst may have begun a millisecond before.
        let sleep = paced_after(0, 1 << 20, Duration::from_millis(40));
        assert!(sleep.timeout > Duration::from_millis(30));
        assert_eq!(sleep.wake_bytes, RING / 4);
    }

    #[test]
    fn a_flood_sleeps_no_less_than_the_wait_can_count() {
        // 2 MiB a millisecond: the shortest sleep lets 2 MiB wait, and the
        // programs may wake the reader at 4.
        let sleep = paced_after(0, 2 << 20, Duration::from_millis(1));
        assert_eq!(
            sleep,
            Sleep {
                timeout: SHORTEST_SLEEP,
                wake_bytes: RING / 2
            }
        );
        let faster = paced_after(0, 8 << 20, Duration::from_millis(1));
        assert_eq!(faster.wake_bytes, RING / 2, "never past half the ring");
    }

    #[test]
    fn a_tiny_ring_still_asks_for_a_wakeup() {
        let sleep = Pace::new(1, POLL).next_sleep();
        assert_eq!(sleep.wake_bytes, 1, "0 would tell the programs the reader is awake");
    }
}
