//! The PostgreSQL frontend/backend protocol on a connection a TLS module
//! captures (libpq's `sslmode=require`, JDBC, psycopg): each message a side
//! sends, shown as one line. The connection is taken for PostgreSQL when its
//! first bytes are a StartupMessage of protocol 3.0, which the client sends
//! first inside TLS; that side is the frontend.
//!
//! Messages stream: a body is kept up to KEPT_BODY bytes and the rest is
//! skipped and counted, so a DataRow of any size costs bounded memory; a
//! length the protocol cannot have ends parsing for that direction, whose
//! bytes are shown raw from there.

use super::postgres_messages::{self as messages, Message};
use super::{Messages, Parsed, Protocol, SHOWN_VALUES, lossy as text, show_value};

/// Body bytes kept of one message; the rest is counted, not held.
const KEPT_BODY: usize = 64 * 1024;
/// PostgreSQL refuses messages past 1 GiB.
const MAX_MESSAGE: usize = 1 << 30;
/// Protocol 3.0, as a StartupMessage carries it.
const PROTOCOL_3: [u8; 4] = [0, 3, 0, 0];

/// Whether `bytes` begin with a StartupMessage: a length, then protocol 3.0.
pub fn is_startup(bytes: &[u8]) -> bool {
    match bytes {
        [a, b, c, d, version @ ..] if version.starts_with(&PROTOCOL_3) => {
            let length = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
            (8..=10_000).contains(&length)
        }
        _ => false,
    }
}

#[derive(Default)]
struct Stream {
    /// The type byte and length of the message under way, as they arrive.
    header: Vec<u8>,
    /// The message's type; None for the StartupMessage, which has none.
    kind: Option<u8>,
    /// Body bytes still to come.
    remaining: usize,
    length: usize,
    body: Vec<u8>,
    /// Expecting the StartupMessage, which has no type byte.
    startup: bool,
    /// A message's body is under way (its header is read).
    in_body: bool,
    /// Parsing gave up: the rest is shown as it comes.
    raw: bool,
}

/// Both directions of one connection.
pub struct PostgresSession {
    streams: [Stream; 2],
    /// The client's direction.
    frontend: usize,
}

impl PostgresSession {
    /// A session whose first bytes came in `frontend`'s direction.
    pub fn new(frontend: usize) -> PostgresSession {
        let mut streams = [Stream::default(), Stream::default()];
        streams[frontend & 1].startup = true;
        PostgresSession {
            streams,
            frontend: frontend & 1,
        }
    }

    /// Feeds one direction's bytes; appends the messages they complete.
    pub fn push(&mut self, direction: usize, mut bytes: &[u8], out: &mut Vec<Parsed>) {
        let direction = direction & 1;
        let frontend = direction == self.frontend;
        let stream = &mut self.streams[direction];
        let wire_len = bytes.len();
        let mut lines = Vec::new();
        while !bytes.is_empty() && !stream.raw {
            if !stream.in_body {
                let wanted = stream.header_len() - stream.header.len();
                let take = wanted.min(bytes.len());
                stream.header.extend_from_slice(&bytes[..take]);
                bytes = &bytes[take..];
                if stream.header.len() < stream.header_len() {
                    break;
                }
                if let Err(reason) = stream.begin() {
                    lines.push(format!("[{reason}; the rest of this direction is shown raw]"));
                    stream.raw = true;
                    break;
                }
            }
            let take = stream.remaining.min(bytes.len());
            let keep = take.min(KEPT_BODY.saturating_sub(stream.body.len()));
            stream.body.extend_from_slice(&bytes[..keep]);
            stream.remaining -= take;
            bytes = &bytes[take..];
            if stream.remaining == 0 {
                lines.push(stream.finish(frontend));
            }
        }
        if !lines.is_empty() {
            out.push(Parsed::Messages(Messages {
                protocol: Protocol::Postgres,
                lines,
                wire_len,
            }));
        }
        if stream.raw && !bytes.is_empty() {
            out.push(Parsed::Raw(bytes.to_vec()));
        }
    }

    /// Whether no message is under way in either direction.
    pub fn at_rest(&self) -> bool {
        self.streams
            .iter()
            .all(|stream| stream.header.is_empty() && !stream.in_body)
    }
}

impl Stream {
    /// The header's length: a type byte (but for the StartupMessage) and a length.
    fn header_len(&self) -> usize {
        if self.startup { 4 } else { 5 }
    }

    /// Reads the header in; an error says why it cannot be a message.
    fn begin(&mut self) -> Result<(), String> {
        let (kind, length) = match self.header.as_slice() {
            [a, b, c, d] => (None, u32::from_be_bytes([*a, *b, *c, *d])),
            [kind, a, b, c, d] => (Some(*kind), u32::from_be_bytes([*a, *b, *c, *d])),
            _ => return Err("a message header was cut".into()),
        };
        self.header.clear();
        let length = length as usize;
        if !(4..=MAX_MESSAGE).contains(&length) {
            return Err(format!(
                "a message length of {length} bytes, which PostgreSQL never sends"
            ));
        }
        self.kind = kind;
        self.in_body = true;
        self.length = length - 4;
        self.remaining = length - 4;
        self.body.clear();
        Ok(())
    }

    /// The message just completed, as one line; the stream is ready for the next.
    fn finish(&mut self, frontend: bool) -> String {
        self.in_body = false;
        let body = std::mem::take(&mut self.body);
        let mut line = match self.kind.take() {
            None => {
                self.startup = false;
                startup(&body)
            }
            Some(kind) if frontend => frontend_message(kind, &body),
            Some(kind) => backend_message(kind, &body),
        };
        if self.length > body.len() {
            line.push_str(&format!(" [first {} of {} bytes]", body.len(), self.length));
        }
        self.length = 0;
        self.header.clear();
        self.body = body;
        self.body.clear();
        line
    }
}

/// NUL-terminated strings, up to the empty one that ends a list.
fn strings(body: &[u8]) -> impl Iterator<Item = &[u8]> {
    body.split(|&b| b == 0).take_while(|s| !s.is_empty())
}

fn startup(body: &[u8]) -> String {
    let parameters = body.get(4..).unwrap_or_default();
    let pairs: Vec<String> = strings(parameters)
        .collect::<Vec<_>>()
        .chunks(2)
        .map(|pair| format!("{}={}", text(pair[0]), pair.get(1).map(|v| text(v)).unwrap_or_default()))
        .collect();
    format!("StartupMessage {}", pairs.join(" "))
}

fn frontend_message(kind: u8, body: &[u8]) -> String {
    match messages::parse(kind, body) {
        Some(Message::Query { text: query }) => format!("Query: {}", text(&query)),
        Some(Message::Parse { statement, text: query }) => {
            format!("Parse {:?}: {}", text(&statement), text(&query))
        }
        Some(Message::Bind {
            portal,
            statement,
            parameters,
        }) => format!(
            "Bind {:?} to {:?}: {}",
            text(&portal),
            text(&statement),
            messages::describe_parameters(&parameters)
        ),
        Some(Message::Execute { portal }) => format!("Execute {:?}", text(&portal)),
        None => match kind {
            b'S' => "Sync".into(),
            b'H' => "Flush".into(),
            b'X' => "Terminate".into(),
            b'D' => format!("Describe {}", describe_target(body)),
            b'C' => format!("Close {}", describe_target(body)),
            b'p' => format!("Password/SASL message ({} bytes)", body.len()),
            b'd' => format!("CopyData ({} bytes)", body.len()),
            b'c' => "CopyDone".into(),
            b'f' => format!("CopyFail: {}", text(strings(body).next().unwrap_or_default())),
            b'F' => format!("FunctionCall ({} bytes)", body.len()),
            other => format!("message {:?} ({} bytes)", char::from(other), body.len()),
        },
    }
}

/// Describe's and Close's target: 'S'tatement or 'P'ortal, and its name.
fn describe_target(body: &[u8]) -> String {
    match body.split_first() {
        Some((b'S', name)) => format!("statement {:?}", text(strings(name).next().unwrap_or_default())),
        Some((b'P', name)) => format!("portal {:?}", text(strings(name).next().unwrap_or_default())),
        _ => "?".into(),
    }
}

fn int16(bytes: &[u8], at: usize) -> Option<i16> {
    Some(i16::from_be_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn int32(bytes: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn backend_message(kind: u8, body: &[u8]) -> String {
    match kind {
        b'R' => match int32(body, 0) {
            Some(0) => "AuthenticationOk".into(),
            Some(code) => format!("Authentication request {code}"),
            None => "Authentication".into(),
        },
        b'S' => {
            let mut pair = strings(body);
            let name = text(pair.next().unwrap_or_default());
            format!("ParameterStatus {name}={}", text(pair.next().unwrap_or_default()))
        }
        b'K' => "BackendKeyData".into(),
        b'Z' => format!(
            "ReadyForQuery ({})",
            match body.first() {
                Some(b'I') => "idle",
                Some(b'T') => "in a transaction",
                Some(b'E') => "in a failed transaction",
                _ => "?",
            }
        ),
        b'T' => row_description(body),
        b'D' => data_row(body),
        b'C' => format!("CommandComplete: {}", text(strings(body).next().unwrap_or_default())),
        b'E' | b'N' => {
            let (sqlstate, message) = messages::error_fields(body);
            let name = if kind == b'E' {
                "ErrorResponse"
            } else {
                "NoticeResponse"
            };
            format!("{name} {sqlstate}: {message}")
        }
        b'1' => "ParseComplete".into(),
        b'2' => "BindComplete".into(),
        b'3' => "CloseComplete".into(),
        b'n' => "NoData".into(),
        b's' => "PortalSuspended".into(),
        b'I' => "EmptyQueryResponse".into(),
        b't' => format!("ParameterDescription ({} parameters)", int16(body, 0).unwrap_or(0)),
        b'd' => format!("CopyData ({} bytes)", body.len()),
        b'c' => "CopyDone".into(),
        b'G' | b'H' | b'W' => "Copy response".into(),
        b'A' => "NotificationResponse".into(),
        other => format!("message {:?} ({} bytes)", char::from(other), body.len()),
    }
}

/// RowDescription: the column names.
fn row_description(body: &[u8]) -> String {
    let count = int16(body, 0).unwrap_or(0).max(0) as usize;
    let mut names = Vec::new();
    let mut at = 2;
    for _ in 0..count {
        let Some(rest) = body.get(at..) else { break };
        let name_len = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        names.push(text(&rest[..name_len]));
        // The name's NUL, then table OID, column, type OID, size, modifier, format.
        at += name_len + 1 + 18;
    }
    format!("RowDescription: {}", names.join(", "))
}

/// DataRow: its values, as text where they are text.
fn data_row(body: &[u8]) -> String {
    let count = int16(body, 0).unwrap_or(0).max(0) as usize;
    let mut values = Vec::new();
    let mut at = 2;
    for index in 0..count {
        if index == SHOWN_VALUES {
            values.push(format!("... {} more", count - index));
            break;
        }
        let Some(length) = int32(body, at) else { break };
        at += 4;
        let value = match usize::try_from(length) {
            Err(_) => "NULL".to_string(),
            Ok(length) => {
                let bytes = body
                    .get(at..at.saturating_add(length))
                    .unwrap_or(body.get(at..).unwrap_or_default());
                at = at.saturating_add(length);
                show_value(bytes)
            }
        };
        values.push(value);
    }
    format!("DataRow: {}", values.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut bytes = vec![kind];
        bytes.extend(((body.len() + 4) as u32).to_be_bytes());
        bytes.extend(body);
        bytes
    }

    fn startup_message() -> Vec<u8> {
        let body = b"\0\x03\0\0user\0alice\0database\0shop\0\0";
        let mut bytes = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        bytes.extend(body);
        bytes
    }

    fn lines(session: &mut PostgresSession, direction: usize, bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        session.push(direction, bytes, &mut out);
        super::super::parsed_lines(out)
    }

    #[test]
    fn a_session_reads_as_its_messages_in_any_pieces() {
        let startup = startup_message();
        assert!(is_startup(&startup));
        assert!(!is_startup(b"GET / HTTP/1.1\r\n"));
        let mut client = startup.clone();
        client.extend(message(b'Q', b"SELECT 1 AS x\0"));
        let mut server = message(b'R', &0i32.to_be_bytes());
        let mut row = 1i16.to_be_bytes().to_vec();
        row.extend(b"x\0");
        row.extend([0u8; 18]);
        server.extend(message(b'T', &row));
        let mut data = 2i16.to_be_bytes().to_vec();
        data.extend(1i32.to_be_bytes());
        data.extend(b"1");
        data.extend((-1i32).to_be_bytes());
        server.extend(message(b'D', &data));
        server.extend(message(b'C', b"SELECT 1\0"));
        server.extend(message(b'Z', b"I"));
        for piece in [1, 3, 7, usize::MAX] {
            let mut session = PostgresSession::new(0);
            let got = super::super::lines_in_pieces(
                |direction, bytes, out| session.push(direction, bytes, out),
                &client,
                &server,
                piece,
            );
            assert_eq!(
                got,
                [
                    "StartupMessage user=alice database=shop",
                    "Query: SELECT 1 AS x",
                    "AuthenticationOk",
                    "RowDescription: x",
                    "DataRow: '1', NULL",
                    "CommandComplete: SELECT 1",
                    "ReadyForQuery (idle)"
                ],
                "pieces of {piece}"
            );
            assert!(session.at_rest());
        }
    }

    #[test]
    fn a_huge_message_streams_and_a_bad_length_goes_raw() {
        let mut session = PostgresSession::new(0);
        lines(&mut session, 0, &startup_message());
        let mut header = vec![b'D'];
        header.extend(((10 << 20) as u32 + 4).to_be_bytes());
        assert!(lines(&mut session, 1, &header).is_empty());
        let chunk = vec![0u8; 1 << 20];
        for _ in 0..9 {
            assert!(lines(&mut session, 1, &chunk).is_empty());
        }
        let last = lines(&mut session, 1, &chunk);
        assert!(
            last[0].ends_with(&format!("[first {KEPT_BODY} of {} bytes]", 10 << 20)),
            "{last:?}"
        );
        let bad = lines(&mut session, 1, b"Z\0\0\0\x01rest");
        assert!(bad[0].contains("a message length of 1 bytes"), "{bad:?}");
        assert_eq!(bad[1], "raw 4");
        assert_eq!(lines(&mut session, 1, b"more"), ["raw 4"]);
    }
}
