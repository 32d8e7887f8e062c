//! Connection tracking: groups events by TLS session, keeps each session's
//! protocol state, and names its sockets when the kernel could not.

use std::collections::HashMap;

use crate::event::{DataEvent, Direction, EventMeta, SocketPair};
use crate::procnet;
use crate::proto::http1::{Http1Session, Parsed};
use crate::sink::{Payload, Record};

struct Session {
    /// The latest event's metadata; records completed at the end carry it.
    meta: EventMeta,
    http: Http1Session,
}

#[derive(Default)]
pub struct ConnTracker {
    sessions: HashMap<(u32, u64), Session>,
}

impl ConnTracker {
    /// Feeds one call's bytes to its session and returns what they completed.
    pub fn on_event(&mut self, mut event: DataEvent) -> Vec<Record> {
        let key = (event.meta.pid, event.meta.conn_id);
        let mut out = Vec::new();
        // The library reuses a freed session object for a new connection:
        // a different fd or socket means the old one has ended.
        if let Some(old) = self.sessions.get(&key)
            && (old.meta.fd != event.meta.fd
                || (event.meta.sockets.is_some() && old.meta.sockets != event.meta.sockets))
        {
            let old = self.sessions.remove(&key).expect("present");
            out.extend(finish(old));
        }
        let session = self.sessions.entry(key).or_insert_with(|| Session {
            meta: EventMeta {
                sockets: event
                    .meta
                    .sockets
                    .or_else(|| sockets_from_procfs(event.meta.pid, event.meta.fd)),
                ..event.meta.clone()
            },
            http: Http1Session::default(),
        });
        event.meta.sockets = event.meta.sockets.or(session.meta.sockets);
        session.meta = event.meta.clone();
        let direction = match event.meta.direction {
            Direction::Egress => 0,
            Direction::Ingress => 1,
        };
        let parsed = session.http.push(direction, std::mem::take(&mut event.data));
        out.extend(parsed.into_iter().map(|p| record(&event.meta, p)));
        out
    }

    /// Capture is ending: every session gives up what it buffered.
    pub fn finish_all(&mut self) -> Vec<Record> {
        self.sessions.drain().flat_map(|(_, session)| finish(session)).collect()
    }
}

fn finish(mut session: Session) -> Vec<Record> {
    session
        .http
        .finish()
        .into_iter()
        .map(|p| record(&session.meta, p))
        .collect()
}

fn record(meta: &EventMeta, parsed: Parsed) -> Record {
    let payload = match parsed {
        Parsed::Http(message) => Payload::Http(message),
        Parsed::Raw(bytes) => Payload::Raw(bytes),
    };
    Record {
        meta: meta.clone(),
        payload,
    }
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

    #[test]
    fn procfs_names_our_own_tcp_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let pair = sockets_from_procfs(std::process::id(), client.as_raw_fd()).unwrap();
        assert_eq!(pair.remote, listener.local_addr().unwrap());
        assert_eq!(pair.local, client.local_addr().unwrap());
        assert!(sockets_from_procfs(std::process::id(), -1).is_none());
    }

    fn event(fd: i32, direction: Direction, data: &[u8]) -> DataEvent {
        DataEvent {
            meta: EventMeta {
                timestamp: SystemTime::UNIX_EPOCH,
                pid: 1,
                tid: 1,
                uid: 0,
                comm: "t".into(),
                fd,
                conn_id: 0xabc,
                direction,
                sockets: None,
            },
            data: data.to_vec(),
        }
    }

    #[test]
    fn reused_session_object_on_a_new_fd_starts_a_new_session() {
        let mut tracker = ConnTracker::default();
        assert!(
            tracker
                .on_event(event(
                    -1,
                    Direction::Egress,
                    b"POST / HTTP/1.1\r\nContent-Length: 9\r\n\r\nabc"
                ))
                .is_empty()
        );
        // A new fd: the partial request of the old session is flushed raw.
        let flushed = tracker.on_event(event(-2, Direction::Egress, b"GET / HTTP/1.1\r\n\r\n"));
        assert_eq!(flushed.len(), 2);
        assert!(matches!(&flushed[0].payload, Payload::Raw(raw) if raw.ends_with(b"abc")));
        assert!(matches!(&flushed[1].payload, Payload::Http(_)));
    }
}
