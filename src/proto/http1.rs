//! HTTP/1.x: reassembles the bytes of one direction of a connection into
//! whole requests and responses, with chunked and gzip/deflate bodies decoded.

use std::collections::VecDeque;
use std::io::Read;
use std::mem::MaybeUninit;

use flate2::read::{DeflateDecoder, MultiGzDecoder, ZlibDecoder};

use crate::event::{BufferPool, EventData};

/// Headers larger than this are not HTTP we can show as one message.
const MAX_HEAD_LEN: usize = 64 * 1024;
/// Never inflate a body past this, whatever it claims.
const MAX_DECODED_BODY: u64 = 64 * 1024 * 1024;
const MAX_HEADERS: usize = 128;
const METHODS: &[&str] = &[
    "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartLine {
    Request { method: &'static str },
    Response { status: u16 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpMessage {
    pub start: StartLine,
    /// The message exactly as sent: the buffer it arrived in, not a copy.
    wire: Vec<u8>,
    head_len: usize,
    /// The body after removing chunked framing or content encoding, when
    /// either was there to remove.
    decoded: Option<Vec<u8>>,
    /// How the body was transformed, or why it is incomplete.
    pub notes: Vec<String>,
}

impl HttpMessage {
    /// The start line and headers exactly as sent, up to the blank line.
    pub fn head(&self) -> &[u8] {
        &self.wire[..self.head_len]
    }

    /// The body, without chunked framing and content encoding.
    pub fn body(&self) -> &[u8] {
        self.decoded.as_deref().unwrap_or(&self.wire[self.head_len..])
    }

    /// Bytes the message took on the wire.
    pub fn wire_len(&self) -> usize {
        self.wire.len()
    }

    /// A request's target, as sent: the start line's second word.
    #[cfg(test)]
    pub fn path(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { .. } => std::str::from_utf8(self.head()).ok()?.split(' ').nth(1),
            StartLine::Response { .. } => None,
        }
    }

    /// The buffer the message arrived in, for reuse.
    pub fn into_wire(self) -> Vec<u8> {
        self.wire
    }
}

/// What a stream yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Http(HttpMessage),
    /// Bytes that are not HTTP/1, as they arrived.
    Raw(Vec<u8>),
}

enum Step {
    /// With the size of the whole message, when the head tells it.
    NeedMore(Option<usize>),
    NotHttp,
    Complete(Found),
}

/// A message at the start of a buffer, before it is cut out of it.
struct Found {
    start: StartLine,
    head_len: usize,
    wire_len: usize,
    decoded: Option<Vec<u8>>,
    notes: Vec<String>,
}

impl Found {
    /// Cuts the message out of `buf`. The usual case, a buffer that holds
    /// exactly one message, hands the buffer over whole.
    fn take_from(self, buf: &mut Vec<u8>) -> HttpMessage {
        let rest = if self.wire_len < buf.len() {
            buf.split_off(self.wire_len)
        } else {
            Vec::new()
        };
        HttpMessage {
            start: self.start,
            wire: std::mem::replace(buf, rest),
            head_len: self.head_len,
            decoded: self.decoded,
            notes: self.notes,
        }
    }
}

/// Buffers are sized up front for messages up to this large, rather than
/// grown (and copied) as their parts arrive.
const MAX_RESERVED_MESSAGE: usize = 64 * 1024 * 1024;

enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
    /// A Content-Length that is not a number this machine can count to.
    Invalid,
}

/// Both directions of one connection.
#[derive(Default)]
pub struct Http1Session {
    streams: [Stream; 2],
    /// For each request still unanswered: was it HEAD (whose response has no body)?
    head_requests: VecDeque<bool>,
}

#[derive(Default)]
struct Stream {
    buf: Vec<u8>,
    /// Set once the stream proved not to be HTTP/1 (or switched protocols).
    raw: bool,
}

impl Http1Session {
    /// Feeds one direction's (0 or 1) bytes; appends to `out` what they
    /// complete. Bytes continuing a message are copied once, from where they
    /// are into the message; buffers come from and go back to `pool`.
    pub fn push(&mut self, direction: usize, data: EventData<'_>, pool: &mut BufferPool, out: &mut Vec<Parsed>) {
        let stream = &mut self.streams[direction];
        if stream.raw {
            out.push(Parsed::Raw(data.into_vec(pool)));
            return;
        }
        if stream.buf.is_empty() {
            stream.buf = data.into_vec(pool);
        } else {
            stream.buf.extend_from_slice(data.as_slice());
            data.release(pool);
        }
        while !stream.buf.is_empty() {
            match parse_message(&stream.buf, &mut self.head_requests, false) {
                Step::NeedMore(whole) => {
                    if let Some(whole) = whole.filter(|&n| n <= MAX_RESERVED_MESSAGE) {
                        stream.buf.reserve(whole.saturating_sub(stream.buf.len()));
                    }
                    break;
                }
                Step::NotHttp => {
                    stream.raw = true;
                    out.push(Parsed::Raw(std::mem::take(&mut stream.buf)));
                }
                Step::Complete(found) => {
                    let message = found.take_from(&mut stream.buf);
                    if matches!(message.start, StartLine::Response { status: 101 }) {
                        stream.raw = true;
                    }
                    out.push(Parsed::Http(message));
                }
            }
        }
    }

    /// The connection ended: what is buffered is all there will be.
    pub fn finish(&mut self, out: &mut Vec<Parsed>) {
        for stream in &mut self.streams {
            if stream.buf.is_empty() {
                continue;
            }
            let mut buf = std::mem::take(&mut stream.buf);
            match parse_message(&buf, &mut self.head_requests, true) {
                Step::Complete(found) => out.push(Parsed::Http(found.take_from(&mut buf))),
                _ => out.push(Parsed::Raw(buf)),
            }
        }
    }
}

fn parse_message(buf: &[u8], head_requests: &mut VecDeque<bool>, at_eof: bool) -> Step {
    // Left uninitialized: zeroing 128 headers (4 KiB) for every message was
    // a tenth of the reader's CPU on small requests and responses.
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let parser = httparse::ParserConfig::default();
    let (start, head_len, framing, encoding) = if buf.starts_with(b"HTTP/") || b"HTTP/".starts_with(buf) {
        let mut response = httparse::Response::new(&mut []);
        let head_len = match parser.parse_response_with_uninit_headers(&mut response, buf, &mut headers) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD_LEN => return Step::NeedMore(None),
            _ => return Step::NotHttp,
        };
        let status = response.code.unwrap_or(0);
        let interim = (100..200).contains(&status) && status != 101;
        let answers_head = !interim && head_requests.front().copied().unwrap_or(false);
        let bodiless = interim || status == 101 || status == 204 || status == 304 || answers_head;
        let framing = if bodiless {
            Framing::Length(0)
        } else {
            body_framing(response.headers, Framing::UntilClose)
        };
        (
            StartLine::Response { status },
            head_len,
            framing,
            content_encoding(response.headers),
        )
    } else {
        if !looks_like_request(buf) {
            return Step::NotHttp;
        }
        let mut request = httparse::Request::new(&mut []);
        let head_len = match parser.parse_request_with_uninit_headers(&mut request, buf, &mut headers) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD_LEN => return Step::NeedMore(None),
            _ => return Step::NotHttp,
        };
        // looks_like_request admitted only these methods.
        let method = request.method.unwrap_or_default();
        let method = METHODS
            .iter()
            .copied()
            .find(|known| *known == method)
            .unwrap_or_default();
        (
            StartLine::Request { method },
            head_len,
            body_framing(request.headers, Framing::Length(0)),
            content_encoding(request.headers),
        )
    };

    let body_bytes = &buf[head_len..];
    let (dechunked, body_len, mut notes) = match framing {
        Framing::Length(n) if body_bytes.len() >= n => (None, n, Vec::new()),
        Framing::Length(n) => return Step::NeedMore(Some(head_len.saturating_add(n))),
        Framing::Chunked => match dechunk(body_bytes) {
            Dechunked::Complete(body, used) => (Some(body), used, vec!["chunked".to_string()]),
            Dechunked::NeedMore => return Step::NeedMore(None),
            Dechunked::Malformed => return Step::NotHttp,
        },
        Framing::Invalid => return Step::NotHttp,
        Framing::UntilClose if at_eof => (None, body_bytes.len(), Vec::new()),
        Framing::UntilClose => return Step::NeedMore(None),
    };
    let wire_body = dechunked.as_deref().unwrap_or(&body_bytes[..body_len]);
    let decoded = match encoding.as_deref() {
        Some(name @ ("gzip" | "x-gzip" | "deflate")) => match inflate(name, wire_body) {
            Some(decoded) => {
                notes.push(format!("{name}: {} -> {} bytes", wire_body.len(), decoded.len()));
                Some(decoded)
            }
            None => {
                notes.push(format!("{name} body could not be decoded; shown as sent"));
                dechunked
            }
        },
        _ => dechunked,
    };
    // The request queue changes only once a message is complete.
    match &start {
        StartLine::Request { method } => head_requests.push_back(*method == "HEAD"),
        StartLine::Response { status } if !(100..200).contains(status) || *status == 101 => {
            head_requests.pop_front();
        }
        StartLine::Response { .. } => {}
    }
    Step::Complete(Found {
        start,
        head_len,
        wire_len: head_len + body_len,
        decoded,
        notes,
    })
}

/// A request starts with a known method and a space, or a prefix of that.
fn looks_like_request(buf: &[u8]) -> bool {
    METHODS.iter().any(|method| {
        let method = method.as_bytes();
        let shared = buf.len().min(method.len());
        buf[..shared] == method[..shared] && buf.get(method.len()).is_none_or(|&next| next == b' ')
    })
}

fn header_value<'a>(headers: &'a [httparse::Header<'a>], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .map(str::trim)
}

fn content_encoding(headers: &[httparse::Header<'_>]) -> Option<String> {
    header_value(headers, "content-encoding").map(str::to_ascii_lowercase)
}

fn body_framing(headers: &[httparse::Header<'_>], otherwise: Framing) -> Framing {
    if header_value(headers, "transfer-encoding").is_some_and(|te| te.to_ascii_lowercase().contains("chunked")) {
        return Framing::Chunked;
    }
    match header_value(headers, "content-length").map(str::parse) {
        Some(Ok(n)) => Framing::Length(n),
        Some(Err(_)) => Framing::Invalid,
        None => otherwise,
    }
}

/// A chunked body's framing, as far as it has arrived.
#[derive(Debug, PartialEq, Eq)]
pub enum Dechunked {
    /// The body and the bytes it used, trailers included.
    Complete(Vec<u8>, usize),
    /// The final chunk and its trailers have not all arrived.
    NeedMore,
    /// A chunk size that is not hex or does not fit in memory: not a body
    /// any reader could follow.
    Malformed,
}

/// Decodes a chunked body. Every size and offset comes from the peer, so
/// each sum is checked.
pub fn dechunk(wire: &[u8]) -> Dechunked {
    let mut body = Vec::new();
    let mut pos = 0;
    loop {
        let Some(line_len) = find_crlf(&wire[pos..]) else {
            return Dechunked::NeedMore;
        };
        let line_end = pos + line_len;
        let Some(size) = chunk_size(&wire[pos..line_end]) else {
            return Dechunked::Malformed;
        };
        pos = line_end + 2;
        if size == 0 {
            // Trailers end with an empty line.
            loop {
                let Some(len) = find_crlf(&wire[pos..]) else {
                    return Dechunked::NeedMore;
                };
                pos += len + 2;
                if len == 0 {
                    return Dechunked::Complete(body, pos);
                }
            }
        }
        let Some(chunk_end) = pos.checked_add(size).filter(|end| end.checked_add(2).is_some()) else {
            return Dechunked::Malformed;
        };
        if wire.len() < chunk_end + 2 {
            return Dechunked::NeedMore;
        }
        body.extend_from_slice(&wire[pos..chunk_end]);
        pos = chunk_end + 2;
    }
}

/// A chunk-size line's size, without its extensions; None if it is not hex.
fn chunk_size(line: &[u8]) -> Option<usize> {
    let size_hex = std::str::from_utf8(line).ok()?.split(';').next()?.trim();
    usize::from_str_radix(size_hex, 16).ok()
}

fn find_crlf(data: &[u8]) -> Option<usize> {
    memchr::memmem::find(data, b"\r\n")
}

fn inflate(encoding: &str, data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let read = |reader: &mut dyn Read, out: &mut Vec<u8>| reader.take(MAX_DECODED_BODY).read_to_end(out).is_ok();
    let ok = match encoding {
        "deflate" => {
            // Servers send either zlib-wrapped or bare deflate under this name.
            read(&mut ZlibDecoder::new(data), &mut out) || {
                out.clear();
                read(&mut DeflateDecoder::new(data), &mut out)
            }
        }
        _ => read(&mut MultiGzDecoder::new(data), &mut out),
    };
    ok.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parser with its output collected, as the tests read it.
    trait Collected {
        fn push_all(&mut self, direction: usize, data: &[u8]) -> Vec<Parsed>;
        fn finish_all(&mut self) -> Vec<Parsed>;
    }

    impl Collected for Http1Session {
        fn push_all(&mut self, direction: usize, data: &[u8]) -> Vec<Parsed> {
            let mut out = Vec::new();
            self.push(direction, EventData::Record(data), &mut BufferPool::default(), &mut out);
            out
        }

        fn finish_all(&mut self) -> Vec<Parsed> {
            let mut out = Vec::new();
            self.finish(&mut out);
            out
        }
    }
    use flate2::Compression;
    use flate2::write::GzEncoder;
    use std::io::Write;

    fn messages(out: Vec<Parsed>) -> Vec<HttpMessage> {
        out.into_iter()
            .map(|p| match p {
                Parsed::Http(m) => m,
                Parsed::Raw(raw) => panic!("unexpected raw {:?}", String::from_utf8_lossy(&raw)),
            })
            .collect()
    }

    #[test]
    fn request_split_across_many_writes_is_one_message() {
        let wire = b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world";
        let mut session = Http1Session::default();
        let mut all = Vec::new();
        for piece in wire.chunks(3) {
            all.extend(session.push_all(0, piece));
        }
        let got = messages(all);
        assert_eq!(got.len(), 1);
        assert!(matches!(got[0].start, StartLine::Request { method: "POST", .. }));
        assert_eq!(got[0].path(), Some("/upload"));
        assert_eq!(got[0].body(), b"hello world");
        assert_eq!(got[0].wire_len(), wire.len());
    }

    #[test]
    fn pipelined_requests_in_one_write_are_separate_messages() {
        let wire = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\nGET /c HT";
        let mut session = Http1Session::default();
        let got = messages(session.push_all(0, wire));
        let paths: Vec<_> = got.iter().map(|m| m.path().unwrap()).collect();
        assert_eq!(paths, ["/a", "/b"]);
        assert_eq!(got[1].head(), b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n");
        let rest = messages(session.push_all(0, b"TP/1.1\r\n\r\n"));
        assert_eq!(rest.len(), 1);
    }

    #[test]
    fn large_body_in_many_reads_is_whole_and_in_order() {
        let body: Vec<u8> = (0..1 << 20).map(|i: u32| b'a' + (i % 26) as u8).collect();
        let mut wire = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        let head_len = wire.len();
        wire.extend_from_slice(&body);
        let mut session = Http1Session::default();
        session.push_all(0, b"GET / HTTP/1.1\r\n\r\n");
        let mut all = Vec::new();
        for piece in wire.chunks(16 * 1024) {
            all.extend(session.push_all(1, piece));
        }
        let got = messages(all);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].head(), &wire[..head_len]);
        assert!(got[0].body() == body, "the body differs");
        assert_eq!(got[0].wire_len(), wire.len());
    }

    #[test]
    fn chunked_gzip_response_is_decoded() {
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        gz.write_all(b"the decoded body").unwrap();
        let compressed = gz.finish().unwrap();
        let (first, second) = compressed.split_at(5);
        let mut wire = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for part in [first, second] {
            wire.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
            wire.extend_from_slice(part);
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b"0\r\n\r\n");
        let mut session = Http1Session::default();
        let (head, tail) = wire.split_at(wire.len() - 4);
        assert!(session.push_all(1, head).is_empty(), "incomplete until the last chunk");
        let got = messages(session.push_all(1, tail));
        assert_eq!(got[0].body(), b"the decoded body");
        assert!(got[0].notes.iter().any(|n| n == "chunked"));
        assert!(got[0].notes.iter().any(|n| n.starts_with("gzip")));
    }

    #[test]
    fn dechunk_handles_extensions_and_trailers() {
        assert_eq!(
            dechunk(b"4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT"),
            Dechunked::Complete(b"Wikipedia".to_vec(), 44)
        );
        assert_eq!(dechunk(b"4\r\nWiki\r\n0\r\n"), Dechunked::NeedMore);
        assert_eq!(dechunk(b"zz\r\nWiki\r\n"), Dechunked::Malformed);
    }

    #[test]
    fn response_to_head_has_no_body_and_eof_framed_body_ends_at_finish() {
        let mut session = Http1Session::default();
        messages(session.push_all(0, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.0\r\n\r\n"));
        let head_reply = messages(session.push_all(1, b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n"));
        assert_eq!(head_reply.len(), 1);
        assert!(head_reply[0].body().is_empty());
        assert!(session.push_all(1, b"HTTP/1.0 200 OK\r\n\r\nuntil close").is_empty());
        let rest = messages(session.finish_all());
        assert_eq!(rest[0].body(), b"until close");
    }

    #[test]
    fn non_http_is_raw_from_the_start() {
        let mut session = Http1Session::default();
        assert_eq!(
            session.push_all(0, b"\x16\x03\x01binary"),
            vec![Parsed::Raw(b"\x16\x03\x01binary".to_vec())]
        );
        assert_eq!(
            session.push_all(0, b"GET / HTTP/1.1\r\n\r\n"),
            vec![Parsed::Raw(b"GET / HTTP/1.1\r\n\r\n".to_vec())]
        );
        let mut text = Http1Session::default();
        assert!(matches!(
            text.push_all(0, b"hello there\n").as_slice(),
            [Parsed::Raw(_)]
        ));
    }

    #[test]
    fn incomplete_message_is_shown_raw_at_finish() {
        let mut session = Http1Session::default();
        assert!(
            session
                .push_all(0, b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
                .is_empty()
        );
        assert!(matches!(session.finish_all().as_slice(), [Parsed::Raw(raw)] if raw.ends_with(b"abc")));
    }

    /// Sizes chosen by a hostile peer: a chunk size whose sum with the
    /// offset wraps (this aborted ecapture), one past usize, and a
    /// Content-Length past u64. Each is shown raw, and the stream goes on.
    #[test]
    fn hostile_framing_is_shown_raw() {
        for (head, body) in [
            ("Transfer-Encoding: chunked", "fffffffffffffffe\r\nabc\r\n"),
            ("Transfer-Encoding: chunked", "ffffffffffffffff0\r\nabc\r\n"),
            ("Content-Length: 99999999999999999999999", "abc"),
            ("Content-Length: -1", "abc"),
        ] {
            let mut session = Http1Session::default();
            session.push_all(0, b"GET / HTTP/1.1\r\n\r\n");
            let wire = format!("HTTP/1.1 200 OK\r\n{head}\r\n\r\n{body}");
            let out = session.push_all(1, wire.as_bytes());
            assert!(
                matches!(out.as_slice(), [Parsed::Raw(raw)] if raw == wire.as_bytes()),
                "{head}: {out:?}"
            );
        }
    }

    #[test]
    fn request_starts_are_told_from_other_bytes() {
        for prefix in [&b"GET / HTTP/1.1"[..], b"GE", b"POST ", b""] {
            assert!(looks_like_request(prefix), "{prefix:?}");
        }
        for other in [&b"GETX / HTTP/1.1"[..], b"\x16\x03\x01", b"get / HTTP/1.1"] {
            assert!(!looks_like_request(other), "{other:?}");
        }
    }
}
