//! Human-readable output: a header line per record, then the payload as text
//! when it is printable and as a hexdump otherwise.

use foldhash::HashMap;
use std::io::{self, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use super::{Payload, Record, Sink};
use crate::audit::{Activity, DatabaseQuery, QueryOutcome, ShellCommand};
use crate::event::{Comm, Direction, SocketPair};
use crate::proto::http1::StartLine;
use crate::proto::http2::{Http2Part, Kind};

pub struct TextSink<W: Write> {
    out: W,
    force_hex: bool,
    truncate: Option<usize>,
    /// Reused between records so that rendering does not allocate each time.
    scratch: Vec<u8>,
    repeated: Repeated,
}

impl<W: Write> TextSink<W> {
    pub fn new(out: W, force_hex: bool, truncate: Option<usize>) -> Self {
        TextSink {
            out,
            force_hex,
            truncate,
            scratch: Vec::new(),
            repeated: Repeated::default(),
        }
    }
}

/// The parts of a header line that repeat from record to record, formatted
/// once: the time to the second, and each connection's addresses. With small
/// records, formatting headers was a quarter of ecapture's time.
#[derive(Default)]
struct Repeated {
    clock: UtcClock,
    addresses: HashMap<(SocketPair, Direction), Vec<u8>>,
}

/// Connections whose addresses are kept formatted; past that the table starts over.
const FORMATTED_CONNECTIONS: usize = 4096;

/// Writes times as UTC with microseconds, like "2026-11-25T13:45:06.123456Z",
/// the date and time to the second formatted once per second.
#[derive(Default)]
pub struct UtcClock {
    second: Option<(u64, Vec<u8>)>,
}

impl UtcClock {
    fn write(&mut self, out: &mut Vec<u8>, time: SystemTime) {
        let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = since.as_secs();
        if self.second.as_ref().is_none_or(|(cached, _)| *cached != secs) {
            let (days, rem) = (secs / 86_400, secs % 86_400);
            let (year, month, day) = civil_from_days(days as i64);
            let mut text = Vec::new();
            let _ = write!(
                text,
                "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
                rem / 3600,
                rem / 60 % 60,
                rem % 60
            );
            self.second = Some((secs, text));
        }
        if let Some((_, text)) = &self.second {
            out.extend_from_slice(text);
        }
        let micros = since.subsec_micros();
        out.push(b'.');
        for place in [100_000, 10_000, 1_000, 100, 10, 1] {
            out.push(b'0' + (micros / place % 10) as u8);
        }
        out.push(b'Z');
    }

    pub fn format(&mut self, time: SystemTime) -> String {
        let mut text = Vec::with_capacity(27);
        self.write(&mut text, time);
        String::from_utf8(text).expect("ASCII")
    }
}

impl Repeated {
    /// "TIME PID:pid Comm:comm", how every header line starts.
    fn write_process(&mut self, out: &mut Vec<u8>, time: SystemTime, pid: u32, comm: &Comm) {
        self.clock.write(out, time);
        out.extend_from_slice(b" PID:");
        push_integer(out, pid);
        out.extend_from_slice(b" Comm:");
        out.extend_from_slice(comm.as_bytes());
    }

    /// " to REMOTE (local LOCAL)" or " from REMOTE (local LOCAL)".
    fn write_addresses(&mut self, out: &mut Vec<u8>, pair: SocketPair, direction: Direction) {
        if self.addresses.len() >= FORMATTED_CONNECTIONS {
            self.addresses.clear();
        }
        let text = self.addresses.entry((pair, direction)).or_insert_with(|| {
            let preposition = match direction {
                Direction::Egress => "to",
                Direction::Ingress => "from",
            };
            format!(" {preposition} {} (local {})", pair.remote, pair.local).into_bytes()
        });
        out.extend_from_slice(text);
    }
}

/// Appends a decimal integer without core::fmt.
fn push_integer(out: &mut Vec<u8>, value: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

impl<W: Write> Sink for TextSink<W> {
    fn emit(&mut self, record: &Record) -> io::Result<()> {
        write_record(
            &mut self.out,
            &mut self.scratch,
            &mut self.repeated,
            record,
            self.force_hex,
            self.truncate,
        )
    }

    fn activity(&mut self, activity: &Activity) -> io::Result<()> {
        match activity {
            Activity::Command(command) => self.write_command(command),
            Activity::Query(query) => self.write_query(query),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

impl<W: Write> TextSink<W> {
    /// "TIME PID:… Comm:… UID:… command, exit status N after T:" then the
    /// lines as typed.
    fn write_command(&mut self, command: &ShellCommand) -> io::Result<()> {
        let scratch = &mut self.scratch;
        scratch.clear();
        self.repeated
            .write_process(scratch, command.time, command.pid, &command.comm);
        scratch.extend_from_slice(b" UID:");
        push_integer(scratch, command.uid);
        match command.status {
            Some(status) => {
                scratch.extend_from_slice(b" command, exit status ");
                push_integer(scratch, status);
                let _ = write!(scratch, " after {}", Elapsed(command.duration));
            }
            None => scratch.extend_from_slice(b" command, still running or interrupted"),
        }
        scratch.extend_from_slice(b":\n");
        let missing = command
            .missing
            .then_some("[part of this command's input could not be captured]");
        self.write_text(&command.line, missing)
    }

    /// "TIME PID:… Comm:… TID:… UID:… query on connection N by USER from
    /// CLIENT in DB, OK after T:" then its text.
    fn write_query(&mut self, query: &DatabaseQuery) -> io::Result<()> {
        let scratch = &mut self.scratch;
        scratch.clear();
        self.repeated.write_process(scratch, query.time, query.pid, &query.comm);
        scratch.extend_from_slice(b" TID:");
        push_integer(scratch, query.tid);
        scratch.extend_from_slice(b" UID:");
        push_integer(scratch, query.uid);
        scratch.push(b' ');
        scratch.extend_from_slice(query.kind.as_bytes());
        if let Some(connection) = query.connection {
            scratch.extend_from_slice(b" on connection ");
            push_integer(scratch, connection);
        }
        for (preposition, value) in [
            (" by ", &query.user),
            (" from ", &query.client),
            (" in ", &query.database),
        ] {
            if let Some(value) = value {
                scratch.extend_from_slice(preposition.as_bytes());
                scratch.extend_from_slice(value.as_bytes());
            }
        }
        let elapsed = Elapsed(query.duration);
        let _ = match &query.outcome {
            QueryOutcome::Ok => write!(scratch, ", OK after {elapsed}"),
            QueryOutcome::Error {
                code: Some(code),
                sqlstate,
                message,
            } => write!(scratch, ", ERROR {code} ({sqlstate}): {message}, after {elapsed}"),
            QueryOutcome::Error {
                code: None,
                sqlstate,
                message,
            } => write!(scratch, ", ERROR {sqlstate}: {message}, after {elapsed}"),
            QueryOutcome::Unknown => write!(scratch, ", still running or its end was lost"),
        };
        scratch.extend_from_slice(b":\n");
        let missing =
            (query.missing > 0).then(|| format!("[{} more bytes of its text could not be captured]", query.missing));
        self.write_text(&query.text, missing.as_deref())
    }

    /// Ends the header in `scratch` with `text` (printable, or as a
    /// hexdump), a note on what `-t` left out, and `missing`, then writes it all.
    fn write_text(&mut self, text: &[u8], missing: Option<&str>) -> io::Result<()> {
        let scratch = &mut self.scratch;
        write_shown(scratch, text, self.force_hex, self.truncate);
        if let Some(note) = missing {
            scratch.push(b'\n');
            scratch.extend_from_slice(note.as_bytes());
        }
        if scratch.last() != Some(&b'\n') {
            scratch.push(b'\n');
        }
        scratch.push(b'\n');
        self.out.write_all(scratch)
    }
}

/// A duration as people read it: "850 us", "12.3 ms", "4.02 s".
struct Elapsed(std::time::Duration);

impl std::fmt::Display for Elapsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let micros = self.0.as_micros();
        match micros {
            0..1_000 => write!(f, "{micros} us"),
            1_000..1_000_000 => write!(f, "{:.1} ms", micros as f64 / 1e3),
            _ => write!(f, "{:.2} s", micros as f64 / 1e6),
        }
    }
}

/// `bytes` as shown: printable text as it is, anything else as a hexdump;
/// cut at `truncate`, saying so.
fn write_shown(scratch: &mut Vec<u8>, bytes: &[u8], force_hex: bool, truncate: Option<usize>) {
    let shown = &bytes[..truncate.map_or(bytes.len(), |n| n.min(bytes.len()))];
    if !force_hex && is_printable(shown) {
        scratch.extend_from_slice(shown);
    } else {
        hexdump(scratch, shown);
    }
    if shown.len() < bytes.len() {
        let _ = write!(scratch, "\n[{} more bytes not shown]", bytes.len() - shown.len());
    }
}

/// An HTTP/2 message: its header fields one per line as HTTP/1 shows
/// them, the body, each gRPC message, the trailers.
pub(crate) fn write_http2(scratch: &mut Vec<u8>, part: &Http2Part, force_hex: bool, truncate: Option<usize>) {
    let fields = |scratch: &mut Vec<u8>, fields: &[(String, String)]| {
        for (name, value) in fields {
            let _ = writeln!(scratch, "{name}: {value}");
        }
    };
    fields(scratch, &part.headers);
    if !part.notes.is_empty() {
        let _ = writeln!(scratch, "[{}]", part.notes.join("; "));
    }
    if !part.headers.is_empty() || !part.notes.is_empty() {
        scratch.push(b'\n');
    }
    write_shown(scratch, &part.body, force_hex, truncate);
    for message in &part.grpc {
        if scratch.last().is_some_and(|&last| last != b'\n') {
            scratch.push(b'\n');
        }
        let compressed = if message.compressed { ", compressed" } else { "" };
        let _ = writeln!(scratch, "[gRPC message: {} bytes{compressed}]", message.length);
        write_shown(scratch, &message.data, force_hex, truncate);
        let cut = message.length as usize - message.data.len().min(message.length as usize);
        if cut > 0 {
            let _ = write!(scratch, "\n[{cut} more bytes not kept]");
        }
    }
    if !part.trailers.is_empty() {
        if scratch.last().is_some_and(|&last| last != b'\n') {
            scratch.push(b'\n');
        }
        scratch.extend_from_slice(b"[trailers]\n");
        fields(scratch, &part.trailers);
    }
}

/// Writes `record` to `out`: the header line, then the payload. Printable
/// payloads go straight from the record to `out`; the rest of the text is
/// built in `scratch`, so nothing is allocated per record.
fn write_record(
    out: &mut impl Write,
    scratch: &mut Vec<u8>,
    repeated: &mut Repeated,
    record: &Record,
    force_hex: bool,
    truncate: Option<usize>,
) -> io::Result<()> {
    scratch.clear();
    let meta = &record.meta;
    let verb = match meta.direction {
        Direction::Egress => "Sent",
        Direction::Ingress => "Received",
    };
    let kind = match &record.payload {
        Payload::Http(part) => match &part.start {
            StartLine::Request { .. } => "HTTP request",
            StartLine::Response { .. } => "HTTP response",
        },
        Payload::Http2(part) => match part.kind {
            Kind::Request { .. } => "HTTP/2 request",
            Kind::Response { .. } => "HTTP/2 response",
            Kind::Unknown => "HTTP/2 message",
        },
        Payload::Messages(messages) => messages.protocol.messages(),
        Payload::Raw(_) => "data",
    };
    repeated.write_process(scratch, meta.timestamp, meta.pid, &meta.comm);
    scratch.extend_from_slice(b" TID:");
    push_integer(scratch, meta.tid);
    scratch.extend_from_slice(b" UID:");
    push_integer(scratch, meta.uid);
    scratch.extend_from_slice(b" FD:");
    push_integer(scratch, meta.fd);
    scratch.push(b' ');
    scratch.extend_from_slice(verb.as_bytes());
    scratch.push(b' ');
    push_integer(scratch, record.payload.wire_len());
    scratch.extend_from_slice(b" bytes ");
    scratch.extend_from_slice(kind.as_bytes());
    if let Payload::Http2(part) = &record.payload {
        scratch.extend_from_slice(b" on stream ");
        push_integer(scratch, part.stream);
    }
    let part = match &record.payload {
        Payload::Http(part) if !part.is_whole() => Some((part.number, part.last)),
        Payload::Http2(part) if !part.is_whole() => Some((part.number, part.last)),
        _ => None,
    };
    if let Some((number, last)) = part {
        scratch.extend_from_slice(b" (part ");
        push_integer(scratch, number);
        if last {
            scratch.extend_from_slice(b", end");
        }
        scratch.push(b')');
    }
    if let Some(pair) = meta.sockets {
        repeated.write_addresses(scratch, pair, meta.direction);
    }
    scratch.extend_from_slice(b":\n");
    let joined;
    let bytes = match &record.payload {
        Payload::Http(part) => {
            scratch.extend_from_slice(part.head());
            if !part.notes.is_empty() {
                let _ = writeln!(scratch, "[body: {}]", part.notes.join("; "));
            }
            part.body()
        }
        Payload::Messages(messages) => {
            joined = messages.text();
            joined.as_bytes()
        }
        Payload::Raw(bytes) => bytes,
        Payload::Http2(part) => {
            write_http2(scratch, part, force_hex, truncate);
            &[]
        }
    };
    let shown = &bytes[..truncate.map_or(bytes.len(), |n| n.min(bytes.len()))];
    let mut last = scratch.last().copied();
    if !force_hex && is_printable(shown) {
        out.write_all(scratch)?;
        out.write_all(shown)?;
        scratch.clear();
        last = shown.last().copied().or(last);
    } else {
        hexdump(scratch, shown);
    }
    if shown.len() < bytes.len() {
        let _ = write!(scratch, "\n[{} more bytes not shown]", bytes.len() - shown.len());
    }
    if scratch.last().copied().or(last) != Some(b'\n') {
        scratch.push(b'\n');
    }
    scratch.push(b'\n');
    out.write_all(scratch)
}

/// UTF-8 text without control characters other than line breaks and tabs.
/// Every payload shown goes through this, as fast as the CPU allows, and
/// ASCII (most of what is shown) skips the UTF-8 validation.
fn is_printable(bytes: &[u8]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { is_printable_avx2(bytes) };
    }
    is_printable_portable(bytes)
}

fn is_control(byte: u8) -> bool {
    (byte < 0x20 && !matches!(byte, b'\n' | b'\r' | b'\t')) || byte == 0x7f
}

/// Payloads are checked in blocks of this many bytes, so that binary data
/// is told early.
const CHECKED_BLOCK: usize = 512;

/// Non-short-circuiting folds over fixed blocks compile to SIMD compares;
/// `any` stops at each byte and stays scalar (4x slower).
fn is_printable_portable(bytes: &[u8]) -> bool {
    let mut blocks = bytes.chunks_exact(CHECKED_BLOCK);
    let mut high_bits = 0;
    for block in &mut blocks {
        let (has_control, ored) = block
            .iter()
            .fold((false, 0u8), |(found, ored), &b| (found | is_control(b), ored | b));
        if has_control {
            return false;
        }
        high_bits |= ored;
    }
    for &b in blocks.remainder() {
        if is_control(b) {
            return false;
        }
        high_bits |= b;
    }
    high_bits < 0x80 || std::str::from_utf8(bytes).is_ok()
}

/// Each byte's two nibbles pick an entry of two 16-byte tables, whose AND is
/// non-zero only for a control character: two shuffles per 32 bytes where
/// the compiler's compares against each range took five. Twice as fast on
/// 1 MiB bodies, where this check was a quarter of the reader's CPU.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn is_printable_avx2(bytes: &[u8]) -> bool {
    use std::arch::x86_64::*;

    // Bit 0: with high nibble 0, anything but tab, LF and CR; bit 1: with
    // high nibble 1, everything; bit 2: 0x7f.
    const BY_LOW_NIBBLE: [u8; 16] = [3, 3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 3, 3, 2, 3, 7];
    const BY_HIGH_NIBBLE: [u8; 16] = [1, 2, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0];
    const VECTOR: usize = 32;
    // SAFETY: each table is 16 bytes, read unaligned.
    let table = |entries: &[u8; 16]| _mm256_broadcastsi128_si256(unsafe { _mm_loadu_si128(entries.as_ptr().cast()) });
    let (by_low, by_high) = (table(&BY_LOW_NIBBLE), table(&BY_HIGH_NIBBLE));
    let nibble = _mm256_set1_epi8(0x0f);
    let mut control = _mm256_setzero_si256();
    let mut high_bits = _mm256_setzero_si256();
    let mut vectors = bytes.chunks_exact(VECTOR);
    for (index, vector) in vectors.by_ref().enumerate() {
        // SAFETY: the chunk is 32 bytes, read unaligned.
        let x = unsafe { _mm256_loadu_si256(vector.as_ptr().cast()) };
        let low = _mm256_shuffle_epi8(by_low, _mm256_and_si256(x, nibble));
        let high = _mm256_shuffle_epi8(by_high, _mm256_and_si256(_mm256_srli_epi16::<4>(x), nibble));
        control = _mm256_or_si256(control, _mm256_and_si256(low, high));
        high_bits = _mm256_or_si256(high_bits, x);
        if (index + 1) % (CHECKED_BLOCK / VECTOR) == 0 && _mm256_testz_si256(control, control) == 0 {
            return false;
        }
    }
    let tail = vectors.remainder();
    if _mm256_testz_si256(control, control) == 0 || tail.iter().any(|&b| is_control(b)) {
        return false;
    }
    (_mm256_movemask_epi8(high_bits) == 0 && tail.is_ascii()) || std::str::from_utf8(bytes).is_ok()
}

/// Offset, 16 bytes in hex, and the same bytes as ASCII.
fn hexdump(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (line, row) in bytes.chunks(16).enumerate() {
        let _ = write!(out, "{:08x}  ", line * 16);
        for i in 0..16 {
            match row.get(i) {
                Some(&b) => out.extend_from_slice(&[HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)], b' ']),
                None => out.extend_from_slice(b"   "),
            }
            if i == 7 {
                out.push(b' ');
            }
        }
        out.extend_from_slice(b" |");
        out.extend(
            row.iter()
                .map(|&b| if b.is_ascii_graphic() || b == b' ' { b } else { b'.' }),
        );
        out.extend_from_slice(b"|\n");
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::event::EventMeta;
    use crate::proto::http2::GrpcMessage;

    /// curl's write at 2025-11-25T13:45:06.123456Z on a named connection.
    pub fn meta() -> EventMeta {
        EventMeta {
            timestamp: UNIX_EPOCH + std::time::Duration::from_micros(1_764_078_306_123_456),
            pid: 10,
            tid: 11,
            uid: 0,
            comm: "curl".into(),
            fd: 5,
            conn_id: 1,
            direction: Direction::Egress,
            sockets: Some(SocketPair {
                local: "127.0.0.1:40000".parse().unwrap(),
                remote: "127.0.0.1:8443".parse().unwrap(),
            }),
        }
    }

    fn rendered(payload: Payload, hex: bool, truncate: Option<usize>) -> String {
        let (mut out, mut scratch) = (Vec::new(), Vec::new());
        let record = Record { meta: meta(), payload };
        write_record(&mut out, &mut scratch, &mut Repeated::default(), &record, hex, truncate).unwrap();
        String::from_utf8(out).unwrap()
    }

    /// The last part of a gRPC response: a text message, a compressed
    /// binary one, the status.
    pub fn grpc_response() -> Payload {
        let fields = |pairs: &[(&str, &str)]| pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
        Payload::Http2(Http2Part {
            stream: 3,
            direction: 0,
            kind: Kind::Response { status: 200 },
            headers: fields(&[(":status", "200"), ("content-type", "application/grpc")]),
            trailers: fields(&[("grpc-status", "0")]),
            body: Vec::new(),
            grpc: vec![
                GrpcMessage {
                    compressed: false,
                    length: 5,
                    data: b"hello".to_vec(),
                },
                GrpcMessage {
                    compressed: true,
                    length: 3,
                    data: vec![0xff, 0x00, 0x01],
                },
            ],
            notes: Vec::new(),
            number: 1,
            last: true,
            wire_len: 60,
        })
    }

    #[test]
    fn http2_messages_show_their_fields_grpc_messages_and_trailers() {
        let text = rendered(grpc_response(), false, None);
        let (header, rest) = text.split_once('\n').unwrap();
        assert!(
            header.ends_with("Sent 60 bytes HTTP/2 response on stream 3 to 127.0.0.1:8443 (local 127.0.0.1:40000):")
        );
        let binary = format!("00000000  ff 00 01 {}  |...|\n", " ".repeat(13 * 3));
        assert_eq!(
            rest,
            format!(
                ":status: 200\ncontent-type: application/grpc\n\n[gRPC message: 5 bytes]\nhello\n\
                 [gRPC message: 3 bytes, compressed]\n{binary}[trailers]\ngrpc-status: 0\n\n"
            )
        );
    }

    #[test]
    fn header_line_names_process_and_connection() {
        let text = rendered(Payload::Raw(b"hello".to_vec()), false, None);
        assert_eq!(
            text,
            "2025-11-25T13:45:06.123456Z PID:10 Comm:curl TID:11 UID:0 FD:5 Sent 5 bytes data to 127.0.0.1:8443 (local 127.0.0.1:40000):\nhello\n\n"
        );
    }

    #[test]
    fn every_byte_value_is_judged_alike_at_every_position() {
        for length in [1, 31, 32, 33, 511, 512, 513, 1100] {
            for position in [0, length / 2, length - 1] {
                for byte in 0..=u8::MAX {
                    let mut payload = vec![b'a'; length];
                    payload[position] = byte;
                    let shown_raw = matches!(byte, b'\t' | b'\n' | b'\r' | 0x20..=0x7e)
                        || (byte >= 0x80 && std::str::from_utf8(&payload).is_ok());
                    assert_eq!(
                        is_printable(&payload),
                        shown_raw,
                        "{byte:#04x} at {position} of {length}"
                    );
                    assert_eq!(
                        is_printable_portable(&payload),
                        shown_raw,
                        "{byte:#04x} at {position} of {length}"
                    );
                }
            }
        }
        let two_byte_utf8 = "é".repeat(300);
        assert!(is_printable(two_byte_utf8.as_bytes()));
        assert!(
            !is_printable(&two_byte_utf8.as_bytes()[1..]),
            "a cut character is not text"
        );
    }

    #[test]
    fn binary_is_hexdumped_and_truncation_is_said() {
        let text = rendered(Payload::Raw(vec![0, 1, 2, b'A']), false, None);
        assert!(text.contains("00000000  00 01 02 41"), "{text}");
        assert!(text.contains("|...A|"), "{text}");
        let hex = rendered(Payload::Raw(b"hello".to_vec()), true, None);
        assert!(hex.contains("68 65 6c 6c 6f"), "{hex}");
        let utf8 = rendered(Payload::Raw("héllo wörld\r\n".as_bytes().to_vec()), false, None);
        assert!(utf8.contains("héllo wörld\r\n"), "{utf8}");
        let escape = rendered(Payload::Raw(b"a\x1b[31mred".to_vec()), false, None);
        assert!(
            escape.contains("|a.[31mred|"),
            "terminal escapes are never printed raw: {escape}"
        );
        let mut long = vec![b'a'; 200];
        assert!(rendered(Payload::Raw(long.clone()), false, None).contains(&"a".repeat(200)));
        long[130] = 0x07;
        let bell = rendered(Payload::Raw(long), false, None);
        assert!(
            bell.contains("00000080  61 61 07 61"),
            "a control byte deep in a payload: {bell}"
        );
        let cut = rendered(Payload::Raw(b"hello world".to_vec()), false, Some(5));
        assert!(cut.contains("hello\n[6 more bytes not shown]"), "{cut}");
    }
}
