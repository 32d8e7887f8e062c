//! Protocol parsers: turn a connection's byte streams into messages. A
//! connection's protocol is chosen by its first bytes.

pub mod http1;
pub mod postgres;
pub mod postgres_messages;

use std::time::SystemTime;

use crate::event::{BufferPool, EventData};
use http1::{Http1Session, HttpPart};
use postgres::PostgresSession;

/// What a stream yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Http(HttpPart),
    /// PostgreSQL messages, one line each.
    Postgres(postgres::Messages),
    /// Bytes that are no protocol we parse, as they arrived.
    Raw(Vec<u8>),
}

/// The parser of one connection. Most are HTTP/1's, the larger variant:
/// boxing it would cost each of them an allocation to save others' bytes.
#[allow(clippy::large_enum_variant)]
pub enum SessionParser {
    Http1(Http1Session),
    Postgres(PostgresSession),
}

impl SessionParser {
    /// The parser for a connection whose first bytes, in `direction`, are `first`.
    pub fn for_first_bytes(direction: usize, first: &[u8]) -> SessionParser {
        if postgres::is_startup(first) {
            SessionParser::Postgres(PostgresSession::new(direction))
        } else {
            SessionParser::Http1(Http1Session::default())
        }
    }

    /// Feeds one direction's (0 or 1) bytes, which arrived at `time`;
    /// appends to `out` what they complete.
    pub fn push(
        &mut self,
        direction: usize,
        data: EventData<'_>,
        time: SystemTime,
        pool: &mut BufferPool,
        out: &mut Vec<Parsed>,
    ) {
        match self {
            SessionParser::Http1(session) => session.push(direction, data, time, pool, out),
            SessionParser::Postgres(session) => {
                session.push(direction, data.as_slice(), out);
                data.release(pool);
            }
        }
    }

    /// Hands out the parts of messages in progress that began at or before `cutoff`.
    pub fn release_parts(&mut self, cutoff: SystemTime, pool: &mut BufferPool, out: &mut Vec<Parsed>) {
        if let SessionParser::Http1(session) = self {
            session.release_parts(cutoff, pool, out);
        }
    }

    /// Whether no message is under way.
    pub fn at_rest(&self) -> bool {
        match self {
            SessionParser::Http1(session) => session.at_rest(),
            SessionParser::Postgres(session) => session.at_rest(),
        }
    }

    /// The connection has ended: what is held goes out.
    pub fn finish(&mut self, pool: &mut BufferPool, out: &mut Vec<Parsed>) {
        if let SessionParser::Http1(session) = self {
            session.finish(pool, out);
        }
    }
}
