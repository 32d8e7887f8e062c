//! The MySQL/MariaDB client/server protocol on a connection a TLS module
//! captures: each packet a side sends, shown as one line. The connection is
//! taken for MySQL when its first bytes are a HandshakeResponse41, which a
//! client sends first inside TLS (the server's greeting and the client's
//! SSLRequest went before it, in the clear); that side is the client.
//!
//! Packets stream: a payload is kept up to KEPT_PAYLOAD bytes and the rest
//! is skipped and counted. The server's packets are read by what the client
//! asked: a query's result set (column count, definitions, rows), a
//! prepared statement's definitions, or an OK/ERR.

use super::{Messages, Parsed, Protocol, SHOWN_VALUES, lossy as text, show_value};

const KEPT_PAYLOAD: usize = 64 * 1024;
/// A payload this long continues in the next packet.
const MAX_PAYLOAD: usize = 0xff_ffff;

// Capability flags.
const CLIENT_CONNECT_WITH_DB: u32 = 0x8;
const CLIENT_PROTOCOL_41: u32 = 0x200;
const CLIENT_SECURE_CONNECTION: u32 = 0x8000;
const CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA: u32 = 0x20_0000;
const CLIENT_DEPRECATE_EOF: u32 = 0x100_0000;

// Commands.
const COM_QUIT: u8 = 0x01;
const COM_INIT_DB: u8 = 0x02;
const COM_QUERY: u8 = 0x03;
const COM_PING: u8 = 0x0e;
const COM_STMT_PREPARE: u8 = 0x16;
const COM_STMT_EXECUTE: u8 = 0x17;
const COM_STMT_CLOSE: u8 = 0x19;
const COM_STMT_RESET: u8 = 0x1a;

/// Whether `bytes` begin with a HandshakeResponse41: a packet of the
/// handshake's sequence whose payload starts with capabilities that speak
/// protocol 4.1, a maximum packet size, a character set and 23 reserved
/// bytes, zero but for the last four, where MariaDB puts its own
/// capabilities.
pub fn is_handshake_response(bytes: &[u8]) -> bool {
    let Some(payload) = bytes.get(4..HANDSHAKE_PREFIX) else {
        return false;
    };
    let length = usize::from(bytes[0]) | usize::from(bytes[1]) << 8 | usize::from(bytes[2]) << 16;
    let capabilities = u32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]]);
    (32..=MAX_PAYLOAD).contains(&length)
        && matches!(bytes[3], 1 | 2)
        && capabilities & CLIENT_PROTOCOL_41 != 0
        && payload[9..28].iter().all(|&b| b == 0)
}

/// Bytes a HandshakeResponse41 needs to be told from anything else.
const HANDSHAKE_PREFIX: usize = 36;

/// Whether `held` followed by `more` is still too short to tell, yet could
/// begin a HandshakeResponse41: a server reads the packet's header and its
/// payload in two calls.
pub fn may_be_handshake_response(held: &[u8], more: &[u8]) -> bool {
    let total = held.len() + more.len();
    let byte = |at: usize| held.get(at).or_else(|| more.get(at - held.len())).copied();
    total < HANDSHAKE_PREFIX && byte(3).is_none_or(|sequence| matches!(sequence, 1 | 2))
}

/// What the server's next packets are, by what the client asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    /// An OK or ERR, or a result set's column count.
    Result {
        binary_rows: bool,
    },
    /// Column definitions still to come, then the rows.
    Columns {
        left: u64,
        binary_rows: bool,
    },
    /// The EOF after the definitions (without CLIENT_DEPRECATE_EOF), then what follows.
    Eof {
        then_rows: Option<bool>,
    },
    Rows {
        binary: bool,
    },
    /// A prepared statement's OK, then its definitions.
    Prepared,
    Definitions {
        left: u64,
        eofs: u8,
    },
}

#[derive(Default)]
struct Stream {
    header: Vec<u8>,
    remaining: usize,
    length: usize,
    in_payload: bool,
    payload: Vec<u8>,
    /// The packet continues the previous one (which was MAX_PAYLOAD long).
    continued: bool,
}

/// Both directions of one connection.
pub struct MysqlSession {
    streams: [Stream; 2],
    client: usize,
    /// The client's HandshakeResponse is still to come.
    handshake: bool,
    capabilities: u32,
    reply: Reply,
    /// Column names of the result set under way.
    columns: Vec<String>,
    rows: u64,
}

impl MysqlSession {
    /// A session whose first bytes came in `client`'s direction.
    pub fn new(client: usize) -> MysqlSession {
        MysqlSession {
            streams: [Stream::default(), Stream::default()],
            client: client & 1,
            handshake: true,
            capabilities: 0,
            reply: Reply::Result { binary_rows: false },
            columns: Vec::new(),
            rows: 0,
        }
    }

    /// Feeds one direction's bytes; appends the packets they complete.
    pub fn push(&mut self, direction: usize, mut bytes: &[u8], out: &mut Vec<Parsed>) {
        let direction = direction & 1;
        let wire_len = bytes.len();
        let mut lines = Vec::new();
        while !bytes.is_empty() {
            let stream = &mut self.streams[direction];
            if !stream.in_payload {
                let take = (4 - stream.header.len()).min(bytes.len());
                stream.header.extend_from_slice(&bytes[..take]);
                bytes = &bytes[take..];
                if stream.header.len() < 4 {
                    break;
                }
                let header = &stream.header;
                stream.length = usize::from(header[0]) | usize::from(header[1]) << 8 | usize::from(header[2]) << 16;
                stream.remaining = stream.length;
                stream.header.clear();
                stream.in_payload = true;
                stream.payload.clear();
            }
            let take = stream.remaining.min(bytes.len());
            let keep = take.min(KEPT_PAYLOAD.saturating_sub(stream.payload.len()));
            stream.payload.extend_from_slice(&bytes[..keep]);
            stream.remaining -= take;
            bytes = &bytes[take..];
            if stream.remaining == 0 {
                stream.in_payload = false;
                let payload = std::mem::take(&mut stream.payload);
                let (length, continued) = (stream.length, stream.continued);
                stream.continued = length == MAX_PAYLOAD;
                let mut line = if continued {
                    Some(format!("(continued, {length} bytes)"))
                } else if direction == self.client {
                    self.client_packet(&payload)
                } else {
                    self.server_packet(&payload)
                };
                if let Some(line) = line.as_mut()
                    && length > payload.len()
                {
                    line.push_str(&format!(" [first {} of {length} bytes]", payload.len()));
                }
                lines.extend(line);
                let stream = &mut self.streams[direction];
                stream.payload = payload;
                stream.payload.clear();
            }
        }
        if !lines.is_empty() {
            out.push(Parsed::Messages(Messages {
                protocol: Protocol::Mysql,
                lines,
                wire_len,
            }));
        }
    }

    /// Whether no packet is under way in either direction.
    pub fn at_rest(&self) -> bool {
        self.streams
            .iter()
            .all(|stream| stream.header.is_empty() && !stream.in_payload)
    }

    fn client_packet(&mut self, payload: &[u8]) -> Option<String> {
        if self.handshake {
            self.handshake = false;
            return Some(self.handshake_response(payload));
        }
        let (&command, rest) = payload.split_first()?;
        self.columns.clear();
        self.rows = 0;
        self.reply = Reply::Result { binary_rows: false };
        let statement = || u32_at(rest, 0).map_or("?".into(), |id| id.to_string());
        Some(match command {
            COM_QUERY => format!("Query: {}", text(rest)),
            COM_STMT_PREPARE => {
                self.reply = Reply::Prepared;
                format!("Prepare: {}", text(rest))
            }
            COM_STMT_EXECUTE => {
                self.reply = Reply::Result { binary_rows: true };
                format!("Execute statement {}", statement())
            }
            COM_STMT_CLOSE => format!("Close statement {}", statement()),
            COM_STMT_RESET => format!("Reset statement {}", statement()),
            COM_INIT_DB => format!("Use database {}", text(rest)),
            COM_PING => "Ping".into(),
            COM_QUIT => "Quit".into(),
            other => format!("Command {other:#04x} ({} bytes)", payload.len()),
        })
    }

    /// HandshakeResponse41: capabilities, max packet, charset, filler, then
    /// the user name, the auth response and, if asked, the database.
    fn handshake_response(&mut self, payload: &[u8]) -> String {
        self.capabilities = u32_at(payload, 0).unwrap_or(0);
        let rest = payload.get(32..).unwrap_or_default();
        let (user, rest) = c_string(rest);
        let auth_length = if self.capabilities & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA != 0 {
            lenenc(rest)
        } else if self.capabilities & CLIENT_SECURE_CONNECTION != 0 {
            rest.first().map(|&n| (u64::from(n), 1))
        } else {
            Some((c_string(rest).0.len() as u64 + 1, 0))
        };
        let database = match auth_length {
            Some((length, width)) if self.capabilities & CLIENT_CONNECT_WITH_DB != 0 => usize::try_from(length)
                .ok()
                .and_then(|length| rest.get(width + length..))
                .map(|after| c_string(after).0),
            _ => None,
        };
        match database {
            Some(database) => format!("HandshakeResponse user={} database={}", text(user), text(database)),
            None => format!("HandshakeResponse user={}", text(user)),
        }
    }

    fn deprecate_eof(&self) -> bool {
        self.capabilities & CLIENT_DEPRECATE_EOF != 0
    }

    fn server_packet(&mut self, payload: &[u8]) -> Option<String> {
        let first = *payload.first()?;
        // An ERR ends whatever was under way.
        if first == 0xff {
            self.reply = Reply::Result { binary_rows: false };
            return Some(error(payload));
        }
        let is_eof = first == 0xfe && payload.len() < 9;
        match self.reply {
            Reply::Columns { left, binary_rows } => {
                self.columns.push(column_name(payload));
                if left > 1 {
                    self.reply = Reply::Columns {
                        left: left - 1,
                        binary_rows,
                    };
                    return None;
                }
                self.reply = if self.deprecate_eof() {
                    Reply::Rows { binary: binary_rows }
                } else {
                    Reply::Eof {
                        then_rows: Some(binary_rows),
                    }
                };
                Some(format!("Columns: {}", self.columns.join(", ")))
            }
            Reply::Eof { then_rows } => {
                self.reply = match then_rows {
                    Some(binary) => Reply::Rows { binary },
                    None => Reply::Result { binary_rows: false },
                };
                (!is_eof).then(|| self.server_packet_again(payload))
            }
            Reply::Rows { binary } => {
                // The end of the rows: an EOF, or an OK marked 0xfe.
                if first == 0xfe && payload.len() < MAX_PAYLOAD {
                    self.reply = Reply::Result { binary_rows: false };
                    return Some(format!("End of rows ({} rows)", self.rows));
                }
                self.rows += 1;
                Some(if binary {
                    format!("Row (binary, {} bytes)", payload.len())
                } else {
                    row(payload)
                })
            }
            Reply::Prepared if first == 0x00 => {
                let statement = u32_at(payload, 1).unwrap_or(0);
                let columns = u64::from(u16_at(payload, 5).unwrap_or(0));
                let parameters = u64::from(u16_at(payload, 7).unwrap_or(0));
                let eofs = if self.deprecate_eof() {
                    0
                } else {
                    u8::from(columns > 0) + u8::from(parameters > 0)
                };
                self.reply = if columns + parameters + u64::from(eofs) > 0 {
                    Reply::Definitions {
                        left: columns + parameters,
                        eofs,
                    }
                } else {
                    Reply::Result { binary_rows: false }
                };
                Some(format!(
                    "Prepared statement {statement}: {parameters} parameters, {columns} columns"
                ))
            }
            Reply::Definitions { left, eofs } => {
                let (left, eofs) = if is_eof {
                    (left, eofs.saturating_sub(1))
                } else {
                    (left.saturating_sub(1), eofs)
                };
                self.reply = if left + u64::from(eofs) > 0 {
                    Reply::Definitions { left, eofs }
                } else {
                    Reply::Result { binary_rows: false }
                };
                (!is_eof).then(|| format!("Definition: {}", column_name(payload)))
            }
            Reply::Result { .. } | Reply::Prepared => Some(self.result(payload)),
        }
    }

    /// A packet read again after its expected EOF turned out to be something else.
    fn server_packet_again(&mut self, payload: &[u8]) -> String {
        self.server_packet(payload).unwrap_or_default()
    }

    /// The first packet of a reply: OK, EOF, or a result set's column count.
    fn result(&mut self, payload: &[u8]) -> String {
        let binary_rows = matches!(self.reply, Reply::Result { binary_rows: true });
        match payload.first() {
            Some(0x00) => {
                let affected = lenenc(&payload[1..]).map_or(0, |(value, _)| value);
                format!("OK ({affected} rows affected)")
            }
            Some(0xfe) if payload.len() < 9 => "EOF".into(),
            Some(0xfb) => format!("Local infile request: {}", text(&payload[1..])),
            _ => match lenenc(payload) {
                Some((columns, _)) if columns > 0 => {
                    self.columns.clear();
                    self.rows = 0;
                    self.reply = Reply::Columns {
                        left: columns,
                        binary_rows,
                    };
                    format!("Result set: {columns} columns")
                }
                _ => format!("Packet ({} bytes)", payload.len()),
            },
        }
    }
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// A NUL-terminated string and what follows it.
fn c_string(bytes: &[u8]) -> (&[u8], &[u8]) {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    (&bytes[..end], bytes.get(end + 1..).unwrap_or_default())
}

/// A length-encoded integer and the bytes it took; None for NULL (0xfb),
/// 0xff, or an integer cut short.
fn lenenc(bytes: &[u8]) -> Option<(u64, usize)> {
    let (&first, rest) = bytes.split_first()?;
    let wide = |n: usize| -> Option<(u64, usize)> {
        let mut value = [0u8; 8];
        value[..n].copy_from_slice(rest.get(..n)?);
        Some((u64::from_le_bytes(value), n + 1))
    };
    match first {
        0..=0xfa => Some((u64::from(first), 1)),
        0xfc => wide(2),
        0xfd => wide(3),
        0xfe => wide(8),
        _ => None,
    }
}

/// A length-encoded string, and what follows it.
fn lenenc_string(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (length, width) = lenenc(bytes)?;
    let end = width.checked_add(usize::try_from(length).ok()?)?;
    Some((
        bytes.get(width..end.min(bytes.len()))?,
        bytes.get(end..).unwrap_or_default(),
    ))
}

/// ColumnDefinition41: catalog, schema, table, original table, then the name.
fn column_name(payload: &[u8]) -> String {
    let mut rest = payload;
    for _ in 0..4 {
        match lenenc_string(rest) {
            Some((_, after)) => rest = after,
            None => return "?".into(),
        }
    }
    lenenc_string(rest).map_or("?".into(), |(name, _)| text(name))
}

/// A text-protocol row: length-encoded strings, 0xfb for NULL.
fn row(payload: &[u8]) -> String {
    let mut values = Vec::new();
    let mut rest = payload;
    while !rest.is_empty() {
        if values.len() == SHOWN_VALUES {
            values.push("...".into());
            break;
        }
        if rest[0] == 0xfb {
            values.push("NULL".into());
            rest = &rest[1..];
            continue;
        }
        let Some((value, after)) = lenenc_string(rest) else {
            values.push("?".into());
            break;
        };
        values.push(show_value(value));
        rest = after;
    }
    format!("Row: {}", values.join(", "))
}

/// ERR: the error code, the SQLSTATE after '#', and the message.
fn error(payload: &[u8]) -> String {
    let code = u16_at(payload, 1).unwrap_or(0);
    let rest = payload.get(3..).unwrap_or_default();
    match rest.split_first() {
        Some((b'#', after)) if after.len() >= 5 => {
            format!("ERR {code} ({}): {}", text(&after[..5]), text(&after[5..]))
        }
        _ => format!("ERR {code}: {}", text(rest)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(sequence: u8, payload: &[u8]) -> Vec<u8> {
        let length = payload.len() as u32;
        let mut bytes = length.to_le_bytes()[..3].to_vec();
        bytes.push(sequence);
        bytes.extend(payload);
        bytes
    }

    fn lenenc_str(value: &[u8]) -> Vec<u8> {
        let mut bytes = vec![value.len() as u8];
        bytes.extend(value);
        bytes
    }

    fn column(name: &[u8]) -> Vec<u8> {
        let mut payload = Vec::new();
        for part in [&b"def"[..], b"", b"", b""] {
            payload.extend(lenenc_str(part));
        }
        payload.extend(lenenc_str(name));
        payload.extend(lenenc_str(name));
        payload.extend([0x0c, 0x21, 0, 0x0a, 0, 0, 0, 0xfd, 0, 0, 0, 0, 0]);
        payload
    }

    fn handshake(capabilities: u32) -> Vec<u8> {
        let mut payload = capabilities.to_le_bytes().to_vec();
        payload.extend(0x0100_0000u32.to_le_bytes());
        payload.push(0x21);
        payload.extend([0u8; 23]);
        payload.extend(b"root\0");
        payload.push(20);
        payload.extend([7u8; 20]);
        payload.extend(b"shop\0");
        packet(2, &payload)
    }

    fn lines(session: &mut MysqlSession, direction: usize, bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        session.push(direction, bytes, &mut out);
        super::super::parsed_lines(out)
    }

    #[test]
    fn a_session_reads_as_its_packets_in_any_pieces() {
        let capabilities = CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION | CLIENT_CONNECT_WITH_DB;
        let first = handshake(capabilities);
        assert!(is_handshake_response(&first));
        assert!(!is_handshake_response(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n"));
        let mut client = first.clone();
        client.extend(packet(0, b"\x03SELECT 42 AS answer, NULL AS nothing"));
        let mut server = packet(4, b"\x00\x00\x00\x02\x00\x00\x00");
        server.extend(packet(1, b"\x02"));
        server.extend(packet(2, &column(b"answer")));
        server.extend(packet(3, &column(b"nothing")));
        server.extend(packet(4, b"\xfe\x00\x00\x02\x00"));
        server.extend(packet(5, b"\x0242\xfb"));
        server.extend(packet(6, b"\xfe\x00\x00\x02\x00"));
        for piece in [1, 2, 5, usize::MAX] {
            let mut session = MysqlSession::new(0);
            let got = super::super::lines_in_pieces(
                |direction, bytes, out| session.push(direction, bytes, out),
                &client,
                &server,
                piece,
            );
            assert_eq!(
                got,
                [
                    "HandshakeResponse user=root database=shop",
                    "Query: SELECT 42 AS answer, NULL AS nothing",
                    "OK (0 rows affected)",
                    "Result set: 2 columns",
                    "Columns: answer, nothing",
                    "Row: '42', NULL",
                    "End of rows (1 rows)"
                ],
                "pieces of {piece}"
            );
            assert!(session.at_rest());
        }
    }

    #[test]
    fn a_handshake_read_header_first_is_still_told() {
        let whole = handshake(CLIENT_PROTOCOL_41);
        assert!(may_be_handshake_response(&[], &whole[..4]));
        assert!(!may_be_handshake_response(&whole[..4], &whole[4..]));
        assert!(!may_be_handshake_response(&[], b"GET / HTTP/1.1"));
    }

    #[test]
    fn errors_prepared_statements_and_hostile_packets() {
        let mut session = MysqlSession::new(0);
        lines(&mut session, 0, &handshake(CLIENT_PROTOCOL_41 | CLIENT_DEPRECATE_EOF));
        assert_eq!(
            lines(&mut session, 0, &packet(0, b"\x03SELECT * FROM t")),
            ["Query: SELECT * FROM t"]
        );
        assert_eq!(
            lines(
                &mut session,
                1,
                &packet(1, b"\xff\x7a\x04#42S02Table 't' doesn't exist")
            ),
            ["ERR 1146 (42S02): Table 't' doesn't exist"]
        );
        lines(&mut session, 0, &packet(0, b"\x16SELECT ?"));
        let mut reply = packet(1, b"\x00\x01\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00");
        reply.extend(packet(2, &column(b"?")));
        assert_eq!(
            lines(&mut session, 1, &reply),
            ["Prepared statement 1: 1 parameters, 0 columns", "Definition: ?"]
        );
        assert_eq!(
            lines(&mut session, 0, &packet(0, b"\x17\x01\x00\x00\x00")),
            ["Execute statement 1"]
        );
        // Lengths that overrun, and garbage, cost nothing but what is shown.
        for garbage in [
            &b"\x05\x00\x00\x01\xfc\xff"[..],
            b"\x03\x00\x00\x01\xfe\xff\xff",
            b"\x01\x00\x00\x00\xfb",
        ] {
            let _ = lines(&mut session, 1, garbage);
        }
        let mut big = MysqlSession::new(0);
        let mut header = (MAX_PAYLOAD as u32).to_le_bytes()[..3].to_vec();
        header.push(0);
        assert!(lines(&mut big, 1, &header).is_empty());
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..15 {
            assert!(lines(&mut big, 1, &chunk).is_empty());
        }
        let last = lines(&mut big, 1, &chunk[..MAX_PAYLOAD - 15 * (1 << 20)]);
        assert!(
            last[0].ends_with(&format!("[first {KEPT_PAYLOAD} of {MAX_PAYLOAD} bytes]")),
            "{last:?}"
        );
    }
}
