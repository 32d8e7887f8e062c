//! Protocol parsers: turn a connection's byte streams into messages. A
//! connection's protocol is chosen by its first bytes.

pub mod hpack;
pub mod http1;
pub mod http2;
mod huffman;
pub mod mysql;
pub mod postgres;
pub mod postgres_messages;

use std::time::SystemTime;

use crate::event::{BufferPool, EventData};
use http1::{Http1Session, HttpPart};
use http2::{Http2Part, Http2Session};
use mysql::MysqlSession;
use postgres::PostgresSession;

/// A protocol whose messages are shown one per line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Postgres,
    Mysql,
}

impl Protocol {
    /// Its name for people: "PostgreSQL messages".
    pub fn messages(self) -> &'static str {
        match self {
            Protocol::Postgres => "PostgreSQL messages",
            Protocol::Mysql => "MySQL packets",
        }
    }

    /// Its name in JSON lines' `type`.
    pub fn key(self) -> &'static str {
        match self {
            Protocol::Postgres => "postgres",
            Protocol::Mysql => "mysql",
        }
    }
}

/// The messages (or packets) one call carried, one line each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Messages {
    pub protocol: Protocol,
    pub lines: Vec<String>,
    /// Bytes the call took on the wire.
    pub wire_len: usize,
}

impl Messages {
    /// The lines, one under the other.
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }
}

/// Values shown of a row, and bytes of each.
const SHOWN_VALUES: usize = 64;
const SHOWN_VALUE_BYTES: usize = 256;

/// A row's value as shown: quoted text, or hex when it is not UTF-8, cut
/// at SHOWN_VALUE_BYTES.
fn show_value(bytes: &[u8]) -> String {
    let shown = &bytes[..bytes.len().min(SHOWN_VALUE_BYTES)];
    let more = if bytes.len() > shown.len() { "..." } else { "" };
    match std::str::from_utf8(shown) {
        Ok(text) => format!("'{text}'{more}"),
        Err(_) => format!("0x{}{more}", hex::encode(shown)),
    }
}

/// Bytes as text, invalid UTF-8 replaced.
fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The lines a session makes of `client`'s then `server`'s bytes, fed in
/// pieces of `piece` bytes.
#[cfg(test)]
fn lines_in_pieces(
    mut push: impl FnMut(usize, &[u8], &mut Vec<Parsed>),
    client: &[u8],
    server: &[u8],
    piece: usize,
) -> Vec<String> {
    let mut out = Vec::new();
    for (direction, bytes) in [(0, client), (1, server)] {
        for chunk in bytes.chunks(piece.min(bytes.len()).max(1)) {
            push(direction, chunk, &mut out);
        }
    }
    parsed_lines(out)
}

/// Messages' lines; raw bytes and HTTP as a word each, for tests.
#[cfg(test)]
fn parsed_lines(out: Vec<Parsed>) -> Vec<String> {
    out.into_iter()
        .flat_map(|parsed| match parsed {
            Parsed::Messages(messages) => messages.lines,
            Parsed::Raw(raw) => vec![format!("raw {}", raw.len())],
            Parsed::Http(_) | Parsed::Http2(_) => vec!["http".into()],
        })
        .collect()
}

/// What a stream yields: what each output shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// An HTTP/1 message, or a part of one too large or slow to hold whole.
    Http(HttpPart),
    /// An HTTP/2 stream's message, or a part of one.
    Http2(Http2Part),
    /// A database protocol's messages, one line each.
    Messages(Messages),
    /// Bytes of one call that are not a protocol we parse.
    Raw(Vec<u8>),
}

impl Parsed {
    /// Bytes this took on the wire.
    pub fn wire_len(&self) -> usize {
        match self {
            Parsed::Http(part) => part.wire_len(),
            Parsed::Http2(part) => part.wire_len,
            Parsed::Messages(messages) => messages.wire_len,
            Parsed::Raw(bytes) => bytes.len(),
        }
    }

    /// The direction (0 or 1) an HTTP message was sent in. The rest is
    /// handed out by the call that brought it, and goes its way.
    pub fn direction(&self) -> Option<usize> {
        match self {
            Parsed::Http(part) => Some(part.direction),
            Parsed::Http2(part) => Some(part.direction),
            Parsed::Messages(_) | Parsed::Raw(_) => None,
        }
    }

    /// The memory it holds: a raw payload's buffer may be a recycled one,
    /// larger than what it carries.
    pub fn held_bytes(&self) -> usize {
        let buffer = match self {
            Parsed::Http(part) => part.wire_len(),
            Parsed::Http2(part) => part.held_bytes(),
            Parsed::Messages(messages) => messages.lines.iter().map(String::capacity).sum(),
            Parsed::Raw(bytes) => bytes.capacity(),
        };
        buffer + std::mem::size_of::<crate::sink::Record>()
    }

    /// Its buffers, for the next events.
    pub fn recycle(self, pool: &mut BufferPool) {
        match self {
            Parsed::Http(part) => part.recycle(pool),
            Parsed::Http2(_) | Parsed::Messages(_) => {}
            Parsed::Raw(bytes) => pool.recycle(bytes),
        }
    }
}

/// The parser of one connection. Most are HTTP/1's, the larger variant:
/// boxing it would cost each of them an allocation to save others' bytes.
#[allow(clippy::large_enum_variant)]
pub enum SessionParser {
    /// The first bytes, too few yet to tell a MySQL handshake from others.
    Undecided {
        direction: usize,
        first: Vec<u8>,
    },
    Http1(Http1Session),
    Http2(Http2Session),
    Postgres(PostgresSession),
    Mysql(MysqlSession),
}

/// A connection's parser, before its first bytes.
impl Default for SessionParser {
    fn default() -> SessionParser {
        SessionParser::Undecided {
            direction: 0,
            first: Vec::new(),
        }
    }
}

impl SessionParser {
    /// The parser for a connection whose first bytes, in `direction`, are `first`.
    fn for_first_bytes(direction: usize, first: &[u8]) -> SessionParser {
        if http2::is_http2(first) {
            SessionParser::Http2(Http2Session::default())
        } else if postgres::is_startup(first) {
            SessionParser::Postgres(PostgresSession::new(direction))
        } else if mysql::is_handshake_response(first) {
            SessionParser::Mysql(MysqlSession::new(direction))
        } else {
            SessionParser::Http1(Http1Session::default())
        }
    }

    /// Chooses the parser by the first bytes held, and feeds them to it.
    fn decide(&mut self, time: SystemTime, pool: &mut BufferPool, out: &mut Vec<Parsed>) {
        if let SessionParser::Undecided { direction, first } = self {
            let (direction, first) = (*direction, std::mem::take(first));
            *self = SessionParser::for_first_bytes(direction, &first);
            if !first.is_empty() {
                self.push(direction, EventData::Joined(first), time, pool, out);
            }
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
        if let SessionParser::Undecided { direction: held, first } = self {
            if first.is_empty() {
                *held = direction;
            }
            // The first direction's bytes are held until they tell; the
            // other direction speaking ends the wait.
            if first.is_empty() && !mysql::may_be_handshake_response(&[], data.as_slice()) {
                // Most connections: the first call tells, and is not copied.
                *self = SessionParser::for_first_bytes(direction, data.as_slice());
            } else if *held == direction {
                let undecided = mysql::may_be_handshake_response(first, data.as_slice());
                first.extend_from_slice(data.as_slice());
                data.release(pool);
                if !undecided {
                    self.decide(time, pool, out);
                }
                return;
            } else {
                self.decide(time, pool, out);
            }
        }
        match self {
            SessionParser::Undecided { .. } => unreachable!("decided above"),
            SessionParser::Http1(session) => session.push(direction, data, time, pool, out),
            SessionParser::Http2(session) => {
                session.push(direction, data.as_slice(), time, out);
                data.release(pool);
            }
            SessionParser::Postgres(session) => {
                session.push(direction, data.as_slice(), out);
                data.release(pool);
            }
            SessionParser::Mysql(session) => {
                session.push(direction, data.as_slice(), out);
                data.release(pool);
            }
        }
    }

    /// Hands out the parts of messages in progress that began at or before `cutoff`.
    pub fn release_parts(&mut self, cutoff: SystemTime, pool: &mut BufferPool, out: &mut Vec<Parsed>) {
        if let SessionParser::Undecided { first, .. } = self
            && !first.is_empty()
        {
            self.decide(cutoff, pool, out);
        }
        match self {
            SessionParser::Http1(session) => session.release_parts(cutoff, pool, out),
            SessionParser::Http2(session) => session.release_parts(cutoff, out),
            _ => {}
        }
    }

    /// Whether no message is under way.
    pub fn at_rest(&self) -> bool {
        match self {
            SessionParser::Undecided { first, .. } => first.is_empty(),
            SessionParser::Http1(session) => session.at_rest(),
            SessionParser::Http2(session) => session.at_rest(),
            SessionParser::Postgres(session) => session.at_rest(),
            SessionParser::Mysql(session) => session.at_rest(),
        }
    }

    /// The connection has ended: what is held goes out.
    pub fn finish(&mut self, pool: &mut BufferPool, out: &mut Vec<Parsed>) {
        self.decide(SystemTime::now(), pool, out);
        match self {
            SessionParser::Http1(session) => session.finish(pool, out),
            SessionParser::Http2(session) => session.finish(out),
            _ => {}
        }
    }
}
