//! From the database probes' records to queries: the pieces of each
//! command's text, joined per server thread, with the error the server sent
//! and the command's end (`bpf/include/query_event.h`).

use std::collections::HashMap;
use std::mem::offset_of;
use std::time::{Duration, SystemTime};

use crate::audit::{Activity, Assembler, DatabaseQuery, QueryOutcome, TextRecord};
use crate::event::{Comm, monotonic_epoch};
use crate::probe::RawQueryEvent;

// Values of `enum query_event_kind`.
const QUERY_TEXT: u16 = 1;
const QUERY_ERROR: u16 = 2;
const QUERY_DONE: u16 = 3;

/// Threads with a command under way; past this, the one idle longest is
/// written out as it stands.
const MAX_THREADS: usize = 16384;
/// Text kept for one command; the rest is counted as missing.
const MAX_TEXT_BYTES: usize = 4 << 20;

/// How a command shows: its name ("query", "execute"...) and its text.
pub struct Shown {
    pub kind: String,
    pub text: Vec<u8>,
}

/// Who a server process serves, as far as it can be told from outside.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Session {
    pub user: Option<String>,
    pub database: Option<String>,
    pub client: Option<String>,
}

/// What a module knows of its server's commands.
pub trait Dialect: Send {
    /// How command number `command` of process `pid` shows, from its text as
    /// captured; `failed` when the server sent an error for it. None hides
    /// it (a protocol's bookkeeping).
    fn present(&mut self, pid: u32, command: u32, text: Vec<u8>, failed: bool) -> Option<Shown>;
    /// The outcome an error record tells: its code, SQLSTATE, and text.
    fn error(&self, code: i32, sqlstate: String, text: &[u8]) -> QueryOutcome {
        QueryOutcome::Error {
            code: Some(code),
            sqlstate,
            message: String::from_utf8_lossy(text).into_owned(),
        }
    }
    /// Who process `pid` serves, when the probes could not read it.
    fn session(&mut self, _pid: u32) -> Session {
        Session::default()
    }
}

/// Who ran a command, from its first record.
struct Origin {
    pid: u32,
    uid: u32,
    comm: Comm,
    connection: Option<u64>,
    user: Option<String>,
    client: Option<String>,
    command: u32,
    total_length: u32,
}

impl Origin {
    fn of(header: &RawQueryEvent) -> Origin {
        Origin {
            pid: header.pid,
            uid: header.uid,
            comm: Comm::from_kernel(&header.comm),
            connection: (header.connection != 0).then_some(header.connection),
            user: c_string(&header.user),
            client: c_string(&header.client),
            command: header.command,
            total_length: header.total_length,
        }
    }
}

struct PendingQuery {
    origin: Origin,
    first_ns: u64,
    text: Vec<u8>,
    /// The next piece expected; a gap means a record was lost.
    next_chunk: u32,
    missing: bool,
    error: Option<QueryOutcome>,
}

pub struct QueryAssembler<D> {
    dialect: D,
    epoch: SystemTime,
    threads: HashMap<u32, PendingQuery>,
}

type Record<'a> = TextRecord<'a, RawQueryEvent>;

/// A NUL-terminated C string from a record, None when empty.
fn c_string(bytes: &[i8]) -> Option<String> {
    let bytes: Vec<u8> = bytes.iter().map(|&b| b as u8).take_while(|&b| b != 0).collect();
    (!bytes.is_empty()).then(|| String::from_utf8_lossy(&bytes).into_owned())
}

impl PendingQuery {
    fn new(header: &RawQueryEvent) -> PendingQuery {
        PendingQuery {
            origin: Origin::of(header),
            first_ns: header.timestamp_ns,
            text: Vec::new(),
            next_chunk: 0,
            missing: false,
            error: None,
        }
    }
}

impl<D: Dialect> QueryAssembler<D> {
    pub fn new(dialect: D) -> QueryAssembler<D> {
        QueryAssembler {
            dialect,
            epoch: monotonic_epoch(),
            threads: HashMap::new(),
        }
    }

    fn pending(&mut self, header: &RawQueryEvent, out: &mut Vec<Activity>) -> &mut PendingQuery {
        if !self.threads.contains_key(&header.tid) && self.threads.len() >= MAX_THREADS {
            let idlest = self.threads.iter().min_by_key(|(_, q)| q.first_ns).map(|(&tid, _)| tid);
            if let Some(tid) = idlest
                && let Some(query) = self.threads.remove(&tid)
            {
                self.write(tid, query, None, out);
            }
        }
        self.threads
            .entry(header.tid)
            .or_insert_with(|| PendingQuery::new(header))
    }

    fn on_text(&mut self, record: &Record<'_>, out: &mut Vec<Activity>) {
        let header = &record.header;
        let pending = self.pending(header, out);
        if u32::from(header.chunk) != pending.next_chunk {
            pending.missing = true;
        }
        pending.next_chunk = u32::from(header.chunk) + 1;
        let room = MAX_TEXT_BYTES.saturating_sub(pending.text.len());
        if record.text.len() > room {
            pending.missing = true;
        }
        pending
            .text
            .extend_from_slice(&record.text[..record.text.len().min(room)]);
    }

    fn on_error(&mut self, record: &Record<'_>, out: &mut Vec<Activity>) {
        let header = &record.header;
        let sqlstate = c_string(&header.sqlstate).unwrap_or_default();
        let error = self.dialect.error(header.code, sqlstate, record.text);
        let pending = self.pending(header, out);
        // The first error is the one the client got.
        pending.error.get_or_insert(error);
    }

    /// Writes the command of thread `tid` out; `done` is its end record, if any.
    fn write(&mut self, tid: u32, query: PendingQuery, done: Option<&RawQueryEvent>, out: &mut Vec<Activity>) {
        // Only the end record says who ran the command.
        let origin = done.map_or(query.origin, Origin::of);
        let total = u64::from(origin.total_length);
        let captured = query.text.len() as u64;
        // The server said how long the text is; else a gap in the pieces tells.
        let missing = if total > 0 {
            total.saturating_sub(captured)
        } else {
            u64::from(query.missing)
        };
        let started_ns = done.map_or(query.first_ns, |done| {
            done.timestamp_ns.saturating_sub(done.duration_ns)
        });
        let outcome = match (query.error, done) {
            (Some(error), _) => error,
            (None, Some(_)) => QueryOutcome::Ok,
            (None, None) => QueryOutcome::Unknown,
        };
        let failed = matches!(outcome, QueryOutcome::Error { .. });
        let Some(shown) = self.dialect.present(origin.pid, origin.command, query.text, failed) else {
            return;
        };
        let session = match (&origin.user, &origin.client) {
            (Some(_), Some(_)) => Session::default(),
            _ => self.dialect.session(origin.pid),
        };
        out.push(Activity::Query(DatabaseQuery {
            time: self.epoch + Duration::from_nanos(started_ns),
            pid: origin.pid,
            tid,
            uid: origin.uid,
            comm: origin.comm,
            connection: origin.connection,
            user: origin.user.or(session.user),
            client: origin.client.or(session.client),
            database: session.database,
            kind: shown.kind,
            text: shown.text,
            missing,
            outcome,
            duration: Duration::from_nanos(done.map_or(0, |done| done.duration_ns)),
        }));
    }
}

impl<D: Dialect> Assembler for QueryAssembler<D> {
    fn on_record(&mut self, bytes: &[u8], out: &mut Vec<Activity>) {
        let Some(record) = Record::parse(bytes, offset_of!(RawQueryEvent, text), |header| {
            usize::from(header.length)
        }) else {
            return;
        };
        match record.header.kind {
            QUERY_TEXT => self.on_text(&record, out),
            QUERY_ERROR => self.on_error(&record, out),
            QUERY_DONE => {
                let header = record.header;
                let query = self
                    .threads
                    .remove(&header.tid)
                    .unwrap_or_else(|| PendingQuery::new(&header));
                self.write(header.tid, query, Some(&header), out);
            }
            _ => {}
        }
    }

    fn finish(&mut self, out: &mut Vec<Activity>) {
        let mut threads: Vec<(u32, PendingQuery)> = self.threads.drain().collect();
        threads.sort_by_key(|(tid, _)| *tid);
        for (tid, query) in threads {
            self.write(tid, query, None, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Numbers;

    impl Dialect for Numbers {
        fn present(&mut self, _pid: u32, command: u32, text: Vec<u8>, _failed: bool) -> Option<Shown> {
            Some(Shown {
                kind: format!("command {command}"),
                text,
            })
        }
    }

    fn record(tid: u32, kind: u16, chunk: u8, text: &[u8], total_length: u32) -> Vec<u8> {
        let mut header = RawQueryEvent {
            timestamp_ns: 5_000,
            duration_ns: 2_000,
            pid: 10,
            tid,
            command: 3,
            total_length,
            code: 1146,
            kind,
            length: text.len() as u16,
            chunk,
            ..Default::default()
        };
        header.sqlstate[..5].copy_from_slice(&b"42S02".map(|b| b as _));
        header.text[..text.len()].copy_from_slice(&text.iter().map(|&b| b as _).collect::<Vec<_>>());
        // SAFETY: a C struct of integers and byte arrays.
        let bytes = unsafe { plain::as_bytes(&header) };
        bytes[..offset_of!(RawQueryEvent, text) + text.len()].to_vec()
    }

    fn queries(records: &[Vec<u8>]) -> Vec<DatabaseQuery> {
        crate::audit::assemble(QueryAssembler::new(Numbers), records)
            .into_iter()
            .filter_map(|activity| match activity {
                Activity::Query(query) => Some(query),
                Activity::Command(_) => None,
            })
            .collect()
    }

    #[test]
    fn pieces_join_per_thread_and_the_error_sticks_to_its_command() {
        let got = queries(&[
            record(1, QUERY_TEXT, 0, b"SELECT 'ab", 12),
            record(2, QUERY_TEXT, 0, b"SELECT 2", 8),
            record(1, QUERY_TEXT, 1, b"c'", 12),
            record(2, QUERY_ERROR, 0, b"no such table", 0),
            record(1, QUERY_DONE, 0, b"", 12),
            record(2, QUERY_DONE, 0, b"", 8),
        ]);
        assert_eq!(got[0].text, b"SELECT 'abc'");
        assert_eq!((got[0].outcome.clone(), got[0].missing), (QueryOutcome::Ok, 0));
        assert_eq!(got[0].duration, Duration::from_nanos(2_000));
        assert_eq!(
            got[1].outcome,
            QueryOutcome::Error {
                code: Some(1146),
                sqlstate: "42S02".to_string(),
                message: "no such table".to_string()
            }
        );
    }

    #[test]
    fn what_is_missing_is_counted_and_an_unfinished_command_is_unknown() {
        let got = queries(&[
            record(1, QUERY_TEXT, 0, b"SELECT", 100),
            record(1, QUERY_DONE, 0, b"", 100),
            record(2, QUERY_TEXT, 1, b"tail", 0),
        ]);
        assert_eq!(got[0].missing, 94);
        assert_eq!((got[1].missing, got[1].outcome.clone()), (1, QueryOutcome::Unknown));
    }

    #[test]
    fn records_too_short_or_lying_about_their_length_are_dropped() {
        let mut lying = record(1, QUERY_TEXT, 0, b"abc", 0);
        lying.truncate(lying.len() - 1);
        assert!(queries(&[lying, vec![0; 7]]).is_empty());
    }
}
