//! Connection tracking: groups events by TLS session, keeps each session's
//! protocol state, and names its sockets when the kernel could not.

use foldhash::HashMap;
use std::time::{Duration, Instant, SystemTime};

use crate::event::{BufferPool, DataEvent, Direction, EventMeta, SocketPair};
use crate::procnet;
use crate::proto::{Parsed, SessionParser};
use crate::sink::Record;

/// How long the records of a session whose socket is unknown wait for it.
/// A program with its own BIO has its socket named only once the syscall
/// tracepoints are attached, which its first request can beat; its next
/// call (the response) then brings the fd, for the held records too.
const UNNAMED_HOLD: Duration = Duration::from_millis(250);
/// ...or until the records waiting hold this much memory, whichever comes
/// first. Counted with each record's own size: a fast exchange of small
/// records is mostly that.
const UNNAMED_HOLD_BYTES: usize = 4 << 20;
/// A message part in progress waits at most this long before it is shown.
const PART_HOLD: Duration = Duration::from_millis(200);
/// Sessions idle this long between messages are forgotten (a later call
/// starts them again), so that hours of short connections keep memory flat.
const IDLE_AT_REST: Duration = Duration::from_secs(30);
/// Sessions idle this long are ended whatever their state.
const IDLE_ANYWAY: Duration = Duration::from_secs(600);
/// How often sessions are swept for the limits above.
const SWEEP_INTERVAL: Duration = Duration::from_millis(100);

struct Session {
    /// The latest event's metadata; records completed at the end carry it.
    meta: EventMeta,
    /// Its protocol's parser, chosen by its first bytes.
    parser: SessionParser,
    /// Records completed while the socket was unknown, the memory they hold,
    /// and since when.
    unnamed: Vec<Record>,
    unnamed_bytes: usize,
    unnamed_since: Option<Instant>,
}

#[derive(Default)]
pub struct ConnTracker {
    sessions: HashMap<(u32, u64), Session>,
    /// The parser's output, reused from event to event.
    parsed: Vec<Parsed>,
    /// Sessions holding records back; none most of the time.
    holding: usize,
    last_sweep: Option<Instant>,
}

impl ConnTracker {
    /// Feeds one call's bytes to its session; appends to `out` what they completed.
    pub fn on_event(&mut self, event: DataEvent<'_>, pool: &mut BufferPool, out: &mut Vec<Record>) {
        let DataEvent { mut meta, data } = event;
        let key = (meta.pid, meta.conn_id);
        // The library reuses a freed session object for a new connection:
        // a different fd or socket means the old one has ended. An fd first
        // unknown (-1: its BIO was not a socket, and the syscall tracepoints
        // were not yet there to see it) and then learned is the same session.
        if let Some(old) = self.sessions.get(&key)
            && ((old.meta.fd >= 0 && old.meta.fd != meta.fd)
                || (old.meta.sockets.is_some() && meta.sockets.is_some() && old.meta.sockets != meta.sockets))
        {
            let old = self.sessions.remove(&key).expect("present");
            self.finish(old, pool, out);
        }
        // A new session starts with its socket unknown, like one whose fd
        // is yet to be learned: both are named once, from the first fd seen.
        let session = self.sessions.entry(key).or_insert_with(|| Session {
            meta: EventMeta {
                fd: -1,
                sockets: None,
                ..meta
            },
            parser: SessionParser::default(),
            unnamed: Vec::new(),
            unnamed_bytes: 0,
            unnamed_since: None,
        });
        if session.meta.fd < 0 && meta.fd >= 0 && session.meta.sockets.is_none() {
            session.meta.sockets = meta.sockets.or_else(|| sockets_from_procfs(meta.pid, meta.fd));
        }
        meta.sockets = meta.sockets.or(session.meta.sockets);
        session.meta = meta;
        let direction = match meta.direction {
            Direction::Egress => 0,
            Direction::Ingress => 1,
        };
        session
            .parser
            .push(direction, data, meta.timestamp, pool, &mut self.parsed);
        let completed = self.parsed.drain(..).map(|p| record(meta, p));
        if meta.fd < 0 {
            for record in completed {
                session.unnamed_bytes += record.payload.held_bytes();
                session.unnamed.push(record);
            }
            if !session.unnamed.is_empty() && session.unnamed_since.is_none() {
                session.unnamed_since = Some(Instant::now());
                self.holding += 1;
            }
            if session.unnamed_bytes >= UNNAMED_HOLD_BYTES {
                self.holding -= usize::from(session.release_unnamed(out));
            }
            return;
        }
        if session.unnamed_since.take().is_some() {
            self.holding -= 1;
            session.unnamed_bytes = 0;
            out.extend(session.unnamed.drain(..).map(|held| Record {
                meta: EventMeta {
                    fd: meta.fd,
                    sockets: meta.sockets,
                    ..held.meta
                },
                ..held
            }));
        }
        out.extend(completed);
    }

    /// At most every SWEEP_INTERVAL: gives up the records that waited
    /// UNNAMED_HOLD for their socket and the message parts that waited
    /// PART_HOLD, and forgets idle sessions.
    pub fn sweep(&mut self, pool: &mut BufferPool, out: &mut Vec<Record>) {
        if self.last_sweep.is_some_and(|at| at.elapsed() < SWEEP_INTERVAL) {
            return;
        }
        self.last_sweep = Some(Instant::now());
        let now = SystemTime::now();
        let part_cutoff = now - PART_HOLD;
        let mut idle = Vec::new();
        for (key, session) in &mut self.sessions {
            if session
                .unnamed_since
                .is_some_and(|since| since.elapsed() >= UNNAMED_HOLD)
            {
                self.holding -= usize::from(session.release_unnamed(out));
            }
            session.parser.release_parts(part_cutoff, pool, &mut self.parsed);
            out.extend(self.parsed.drain(..).map(|p| record(session.meta, p)));
            let quiet = now.duration_since(session.meta.timestamp).unwrap_or_default();
            if quiet >= IDLE_ANYWAY || (quiet >= IDLE_AT_REST && session.parser.at_rest() && session.unnamed.is_empty())
            {
                idle.push(*key);
            }
        }
        for key in idle {
            let session = self.sessions.remove(&key).expect("present");
            self.finish(session, pool, out);
        }
    }

    /// Sessions being tracked.
    #[cfg(test)]
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Capture is ending: every session gives up what it buffered.
    pub fn finish_all(&mut self, pool: &mut BufferPool, out: &mut Vec<Record>) {
        for (_, session) in std::mem::take(&mut self.sessions) {
            self.finish(session, pool, out);
        }
    }

    fn finish(&mut self, mut session: Session, pool: &mut BufferPool, out: &mut Vec<Record>) {
        self.holding -= usize::from(session.release_unnamed(out));
        session.parser.finish(pool, &mut self.parsed);
        out.extend(self.parsed.drain(..).map(|p| record(session.meta, p)));
    }
}

impl Session {
    /// Gives up the records held while the socket was unknown; says whether
    /// there were any.
    fn release_unnamed(&mut self, out: &mut Vec<Record>) -> bool {
        out.append(&mut self.unnamed);
        self.unnamed_bytes = 0;
        self.unnamed_since.take().is_some()
    }
}

/// A record of what the parser made. An HTTP message goes the way it was
/// sent, which need not be the way of the latest call: a part released by
/// time or at the connection's end, another stream's on HTTP/2.
fn record(mut meta: EventMeta, payload: Parsed) -> Record {
    if let Some(direction) = payload.direction() {
        meta.direction = if direction == 0 {
            Direction::Egress
        } else {
            Direction::Ingress
        };
    }
    Record { meta, payload }
}

/// Names the TCP connection behind `fd` from /proc, for kernels where the
/// probes cannot read sockets (no BTF). Once per session, never per event.
pub fn sockets_from_procfs(pid: u32, fd: i32) -> Option<SocketPair> {
    let inode = procnet::socket_inode(pid, fd)?;
    procnet::tcp_sockets(pid)
        .into_iter()
        .find_map(|(found, pair)| (found == inode).then_some(pair))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;
    use std::time::SystemTime;

    use crate::event::EventData;
    use crate::proto::http1::StartLine;

    #[test]
    fn procfs_names_our_own_tcp_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let pair = sockets_from_procfs(std::process::id(), client.as_raw_fd()).unwrap();
        assert_eq!(pair.remote, listener.local_addr().unwrap());
        assert_eq!(pair.local, client.local_addr().unwrap());
        assert!(sockets_from_procfs(std::process::id(), -1).is_none());
    }

    fn event(fd: i32, direction: Direction, data: &[u8]) -> DataEvent<'_> {
        DataEvent {
            meta: EventMeta {
                timestamp: SystemTime::now(),
                pid: 1,
                tid: 1,
                uid: 0,
                comm: "t".into(),
                fd,
                conn_id: 0xabc,
                direction,
                sockets: None,
            },
            data: EventData::Record(data),
        }
    }

    #[test]
    fn reused_session_object_on_a_new_fd_starts_a_new_session() {
        let mut tracker = ConnTracker::default();
        let mut flushed = Vec::new();
        tracker.on_event(
            event(3, Direction::Egress, b"POST / HTTP/1.1\r\nContent-Length: 9\r\n\r\nabc"),
            &mut BufferPool::default(),
            &mut flushed,
        );
        assert!(flushed.is_empty());
        // A new fd: the partial request of the old session is flushed, said to be incomplete.
        tracker.on_event(
            event(4, Direction::Egress, b"GET / HTTP/1.1\r\n\r\n"),
            &mut BufferPool::default(),
            &mut flushed,
        );
        assert_eq!(flushed.len(), 2);
        assert!(
            matches!(&flushed[0].payload, Parsed::Http(part) if part.body() == b"abc" && part.notes[0].starts_with("incomplete"))
        );
        assert!(matches!(&flushed[1].payload, Parsed::Http(_)));
    }

    #[test]
    fn a_message_flushed_after_a_call_the_other_way_keeps_its_direction() {
        let mut tracker = ConnTracker::default();
        let mut flushed = Vec::new();
        let mut pool = BufferPool::default();
        tracker.on_event(
            event(3, Direction::Egress, b"GET /a HTTP/1.1\r\n\r\n"),
            &mut pool,
            &mut flushed,
        );
        let response = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc";
        tracker.on_event(event(3, Direction::Ingress, response), &mut pool, &mut flushed);
        tracker.on_event(
            event(3, Direction::Egress, b"GET /b HTTP/1.1\r\n\r\n"),
            &mut pool,
            &mut flushed,
        );
        // A new fd ends the session, after a call that went out.
        tracker.on_event(
            event(4, Direction::Egress, b"GET /c HTTP/1.1\r\n\r\n"),
            &mut pool,
            &mut flushed,
        );
        let directions: Vec<_> = flushed
            .iter()
            .map(|record| match &record.payload {
                Parsed::Http(part) => (part.start, record.meta.direction),
                other => panic!("{other:?}"),
            })
            .collect();
        let get = StartLine::Request { method: "GET" };
        let ok = StartLine::Response { status: 200 };
        assert_eq!(
            directions,
            [
                (get, Direction::Egress),
                (get, Direction::Egress),
                (ok, Direction::Ingress),
                (get, Direction::Egress)
            ]
        );
    }

    #[test]
    fn an_fd_learned_midway_continues_the_session_and_names_what_waited() {
        let mut tracker = ConnTracker::default();
        let mut flushed = Vec::new();
        let mut pool = BufferPool::default();
        tracker.on_event(
            event(
                -1,
                Direction::Egress,
                b"GET / HTTP/1.1\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 6\r\n\r\nabc",
            ),
            &mut pool,
            &mut flushed,
        );
        assert!(flushed.is_empty());
        tracker.on_event(event(7, Direction::Egress, b"def"), &mut pool, &mut flushed);
        assert_eq!(flushed.len(), 2);
        assert!(
            flushed
                .iter()
                .all(|r| matches!(&r.payload, Parsed::Http(_)) && r.meta.fd == 7)
        );
    }

    #[test]
    fn small_records_waiting_for_their_socket_count_their_own_size() {
        let mut tracker = ConnTracker::default();
        let mut flushed = Vec::new();
        let mut pool = BufferPool::default();
        let mut fed = 0;
        while flushed.is_empty() {
            tracker.on_event(event(-1, Direction::Egress, &[b'x'; 64]), &mut pool, &mut flushed);
            fed += 1;
            assert!(fed * 64 < UNNAMED_HOLD_BYTES, "never released");
        }
        assert_eq!(flushed.len(), fed);
        // Each held record costs its bytes and its Record; counted by their
        // payload alone, 65,536 of them were held, four times as much memory.
        assert!(fed * (64 + std::mem::size_of::<Record>()) >= UNNAMED_HOLD_BYTES);
        assert!(fed * 2 * 64 < UNNAMED_HOLD_BYTES, "{fed} records held");
    }

    #[test]
    fn idle_sessions_are_forgotten_and_busy_ones_kept() {
        let mut tracker = ConnTracker::default();
        let mut flushed = Vec::new();
        let mut pool = BufferPool::default();
        let mut idle = event(3, Direction::Egress, b"GET / HTTP/1.1\r\n\r\n");
        idle.meta.timestamp = SystemTime::now() - IDLE_AT_REST;
        tracker.on_event(idle, &mut pool, &mut flushed);
        let mut busy = event(4, Direction::Egress, b"GET / HTTP/1.1\r\n\r\n");
        busy.meta.conn_id = 0xdef;
        busy.meta.timestamp = SystemTime::now();
        tracker.on_event(busy, &mut pool, &mut flushed);
        let mut waiting = event(5, Direction::Egress, b"POST / HTTP/1.1\r\nContent-Length: 9\r\n\r\n");
        waiting.meta.conn_id = 0x123;
        waiting.meta.timestamp = SystemTime::now() - IDLE_AT_REST;
        tracker.on_event(waiting, &mut pool, &mut flushed);
        assert_eq!(tracker.sessions(), 3);
        tracker.sweep(&mut pool, &mut flushed);
        // The idle session between messages goes; the one inside a message stays.
        assert_eq!(tracker.sessions(), 2);
    }

    #[test]
    fn records_whose_socket_stays_unknown_are_released_after_a_while() {
        let mut tracker = ConnTracker::default();
        let mut flushed = Vec::new();
        tracker.on_event(
            event(-1, Direction::Egress, b"GET / HTTP/1.1\r\n\r\n"),
            &mut BufferPool::default(),
            &mut flushed,
        );
        let mut pool = BufferPool::default();
        tracker.sweep(&mut pool, &mut flushed);
        assert!(flushed.is_empty());
        std::thread::sleep(UNNAMED_HOLD);
        tracker.sweep(&mut pool, &mut flushed);
        assert_eq!(flushed.len(), 1);
        assert_eq!(flushed[0].meta.fd, -1);
    }
}
