//! HTTP/1.x: follows each direction of a connection as its bytes arrive and
//! cuts them into messages. A message that completes within PART_BYTES is
//! handed out whole; a larger one (or one still arriving after HOLD_TIME, see
//! `release_parts`) goes out in parts, the head with the first. Chunked
//! framing and gzip/deflate are decoded as the body streams, so what is held
//! stays bounded by the part size whatever the message, and each byte is
//! looked at a fixed number of times. Every length and offset comes from the
//! peer: sums are checked, and what cannot be followed is shown raw.

use std::collections::VecDeque;
use std::io::Write;
use std::mem::MaybeUninit;
use std::time::SystemTime;

use flate2::write::{DeflateDecoder, MultiGzDecoder, ZlibDecoder};

use crate::event::{BufferPool, EventData};

/// Headers larger than this are not HTTP we can show as one message.
const MAX_HEAD_LEN: usize = 64 * 1024;
/// A chunk-size line, extensions included.
const MAX_CHUNK_LINE: usize = 4 * 1024;
const MAX_TRAILERS: usize = 64 * 1024;
/// A message in progress is handed out once this many of its bytes, as
/// sent or as decoded, wait.
pub const PART_BYTES: usize = 256 * 1024;
/// Body bytes taken per step, between checks of the part's size: bounds
/// what one step of decoding can add.
pub(super) const BODY_STEP: usize = 16 * 1024;
/// Compressed bytes handed to the inflater at a time (at most about 1 MiB
/// once inflated, whatever the input).
const INFLATE_SLICE: usize = 1024;
/// A body that inflates past BOMB_FLOOR to more than BOMB_RATIO times its
/// compressed size is a compression bomb: decoding stops there.
const BOMB_FLOOR: u64 = 1 << 20;
const BOMB_RATIO: u64 = 100;
const MAX_HEADERS: usize = 128;
/// Requests remembered while they wait for their response (for HEAD).
const MAX_UNANSWERED: usize = 1024;
const METHODS: &[&str] = &[
    "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartLine {
    Request { method: &'static str },
    Response { status: u16 },
}

/// A message, or part of one: the bytes it took on the wire, and its body
/// decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpPart {
    pub start: StartLine,
    /// The direction (0 or 1) it was sent in.
    pub direction: usize,
    /// The part exactly as sent: the buffer it arrived in, not a copy.
    wire: Vec<u8>,
    /// The head's length, in a message's first part; 0 in the others.
    head_len: usize,
    /// The body after removing chunked framing or content encoding, when
    /// either was there to remove.
    decoded: Option<Vec<u8>>,
    /// How the body was transformed, or why it is incomplete.
    pub notes: Vec<String>,
    /// 1 for the part that carries the head.
    pub number: u32,
    /// Whether the message ends with this part.
    pub last: bool,
}

impl HttpPart {
    /// The start line and headers exactly as sent, up to the blank line;
    /// empty after the first part.
    pub fn head(&self) -> &[u8] {
        &self.wire[..self.head_len]
    }

    /// This part's body, without chunked framing and content encoding.
    pub fn body(&self) -> &[u8] {
        self.decoded.as_deref().unwrap_or(&self.wire[self.head_len..])
    }

    /// Whether this is a whole message.
    pub fn is_whole(&self) -> bool {
        self.number == 1 && self.last
    }

    /// Bytes the part took on the wire.
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

    /// The buffers the part arrived and was decoded in, for reuse.
    pub fn recycle(self, pool: &mut BufferPool) {
        pool.recycle(self.wire);
        if let Some(decoded) = self.decoded {
            pool.recycle(decoded);
        }
    }
}

pub use super::Parsed;

/// Both directions of one connection.
pub struct Http1Session {
    streams: [Stream; 2],
    /// For each request still unanswered: was it HEAD (whose response has no body)?
    unanswered: VecDeque<bool>,
}

impl Default for Http1Session {
    fn default() -> Http1Session {
        let toward = |direction| Stream {
            direction,
            ..Stream::default()
        };
        Http1Session {
            streams: [toward(0), toward(1)],
            unanswered: VecDeque::new(),
        }
    }
}

impl Http1Session {
    /// Feeds one direction's (0 or 1) bytes, which arrived at `time`; appends
    /// to `out` what they complete. Bytes continuing a message are copied
    /// once, from where they are into the message; buffers come from and go
    /// back to `pool`.
    pub fn push(
        &mut self,
        direction: usize,
        data: EventData<'_>,
        time: SystemTime,
        pool: &mut BufferPool,
        out: &mut Vec<Parsed>,
    ) {
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
        stream.since.get_or_insert(time);
        stream.parse(&mut self.unanswered, pool, out);
    }

    /// Hands out the parts of messages in progress whose first bytes
    /// arrived at or before `cutoff`, so that a slow body shows up as it
    /// comes rather than when it ends.
    pub fn release_parts(&mut self, cutoff: SystemTime, pool: &mut BufferPool, out: &mut Vec<Parsed>) {
        for stream in &mut self.streams {
            if stream.message.is_some() && stream.since.is_some_and(|since| since <= cutoff) {
                stream.emit_part(false, pool, out);
            }
        }
    }

    /// Whether nothing is held: no message in progress, no bytes waiting.
    pub fn at_rest(&self) -> bool {
        self.streams
            .iter()
            .all(|stream| stream.message.is_none() && stream.buf.is_empty())
    }

    /// The connection ended: what is buffered is all there will be.
    pub fn finish(&mut self, pool: &mut BufferPool, out: &mut Vec<Parsed>) {
        for stream in &mut self.streams {
            stream.finish(pool, out);
        }
    }
}

#[derive(Default)]
struct Stream {
    /// Which of the connection's directions (0 or 1) this is.
    direction: usize,
    /// Wire bytes not handed out yet: the part in progress, then bytes not
    /// parsed yet.
    buf: Vec<u8>,
    /// Bytes at the start of `buf` that belong to the part in progress.
    used: usize,
    /// How far the search for the end of a head or a line has got, so that
    /// no byte is searched twice (bytes before `used` are never searched).
    scanned: usize,
    /// The message whose head has been parsed, until it ends.
    message: Option<Message>,
    /// When the oldest bytes in `buf` arrived.
    since: Option<SystemTime>,
    /// Set once the stream proved not to be HTTP/1 (or switched protocols).
    raw: bool,
}

struct Message {
    start: StartLine,
    /// The head's length in `buf`, while the first part is in progress.
    head_len: usize,
    body: Body,
    shown: Shown,
    part: u32,
}

/// What the part in progress shows besides its wire bytes.
struct Shown {
    /// The body of the part in progress, when it differs from the wire.
    decoded: Option<Vec<u8>>,
    inflater: Option<Box<Inflater>>,
    notes: Vec<String>,
}

enum Body {
    Length(u64),
    Chunked(Chunk),
    UntilClose,
}

enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    /// Trailer bytes seen so far.
    Trailers(usize),
}

enum Head {
    NeedMore,
    NotHttp,
    Parsed(Message),
}

enum Progress {
    /// Took some bytes; there may be more to take.
    Stepped,
    NeedMore,
    Complete,
    /// The framing cannot be followed, for this reason.
    Malformed(&'static str),
}

impl Stream {
    fn parse(&mut self, unanswered: &mut VecDeque<bool>, pool: &mut BufferPool, out: &mut Vec<Parsed>) {
        loop {
            if self.raw {
                if !self.buf.is_empty() {
                    out.push(Parsed::Raw(std::mem::take(&mut self.buf)));
                }
                self.since = None;
                return;
            }
            if self.message.is_none() {
                if self.buf.is_empty() {
                    return;
                }
                match self.parse_head(unanswered, pool) {
                    Head::NeedMore => return,
                    Head::NotHttp => self.raw = true,
                    Head::Parsed(message) => self.message = Some(message),
                }
                continue;
            }
            match self.advance_body() {
                Progress::Stepped => self.emit_if_large(pool, out),
                Progress::NeedMore => {
                    self.emit_if_large(pool, out);
                    self.reserve_for_part();
                    return;
                }
                Progress::Complete => self.emit_part(true, pool, out),
                Progress::Malformed(why) => {
                    let message = self.message.as_mut().expect("in a body");
                    message
                        .shown
                        .notes
                        .push(format!("{why}; the rest of this direction is shown raw"));
                    self.emit_part(true, pool, out);
                    self.raw = true;
                }
            }
        }
    }

    /// Parses the head at the start of `buf` once its blank line is there.
    fn parse_head(&mut self, unanswered: &mut VecDeque<bool>, pool: &mut BufferPool) -> Head {
        let buf = &self.buf;
        let is_response = buf.starts_with(b"HTTP/") || b"HTTP/".starts_with(buf);
        if !is_response && !looks_like_request(buf) {
            return Head::NotHttp;
        }
        // Re-parsing a head at every byte of a slow sender would take time
        // quadratic in its length: look for its end in the new bytes only.
        if !ends_head(&buf[self.scanned.saturating_sub(3)..]) {
            self.scanned = buf.len();
            return if buf.len() > MAX_HEAD_LEN {
                Head::NotHttp
            } else {
                Head::NeedMore
            };
        }
        // Left uninitialized: zeroing 128 headers (4 KiB) for every message was
        // a tenth of the reader's CPU on small requests and responses.
        let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let parser = httparse::ParserConfig::default();
        let (start, head_len, framing, encoding) = if is_response {
            let mut response = httparse::Response::new(&mut []);
            let Ok(httparse::Status::Complete(head_len)) =
                parser.parse_response_with_uninit_headers(&mut response, buf, &mut headers)
            else {
                return Head::NotHttp;
            };
            let status = response.code.unwrap_or(0);
            let interim = (100..200).contains(&status) && status != 101;
            let answers_head = !interim && unanswered.front().copied().unwrap_or(false);
            if !interim {
                unanswered.pop_front();
            }
            let bodiless = interim || status == 101 || status == 204 || status == 304 || answers_head;
            let framing = if bodiless {
                Framing::Body(Body::Length(0))
            } else {
                body_framing(response.headers, Body::UntilClose)
            };
            (
                StartLine::Response { status },
                head_len,
                framing,
                content_encoding(response.headers),
            )
        } else {
            let mut request = httparse::Request::new(&mut []);
            let Ok(httparse::Status::Complete(head_len)) =
                parser.parse_request_with_uninit_headers(&mut request, buf, &mut headers)
            else {
                return Head::NotHttp;
            };
            // looks_like_request admitted only these methods.
            let method = request.method.unwrap_or_default();
            let method = METHODS
                .iter()
                .copied()
                .find(|known| *known == method)
                .unwrap_or_default();
            if unanswered.len() == MAX_UNANSWERED {
                unanswered.pop_front();
            }
            unanswered.push_back(method == "HEAD");
            (
                StartLine::Request { method },
                head_len,
                body_framing(request.headers, Body::Length(0)),
                content_encoding(request.headers),
            )
        };
        let Framing::Body(body) = framing else {
            return Head::NotHttp;
        };
        if head_len > MAX_HEAD_LEN {
            return Head::NotHttp;
        }
        let mut notes = Vec::new();
        let chunked = matches!(body, Body::Chunked(_));
        if chunked {
            notes.push("chunked".to_string());
        }
        let inflater = encoding.and_then(Inflater::for_encoding).map(Box::new);
        let decoded = (chunked || inflater.is_some()).then(|| pool.take());
        self.used = head_len;
        self.scanned = head_len;
        Head::Parsed(Message {
            start,
            head_len,
            body,
            shown: Shown {
                decoded,
                inflater,
                notes,
            },
            part: 1,
        })
    }

    /// Takes the body bytes that have arrived, a step at a time.
    fn advance_body(&mut self) -> Progress {
        let Stream {
            buf,
            used,
            scanned,
            message,
            ..
        } = self;
        let message = message.as_mut().expect("in a body");
        let available = buf.len() - *used;
        let mut take = |remaining: u64, used: &mut usize| -> usize {
            let n = available
                .min(BODY_STEP)
                .min(usize::try_from(remaining).unwrap_or(usize::MAX));
            message.shown.take_body(&buf[*used..*used + n]);
            *used += n;
            n
        };
        match &mut message.body {
            Body::Length(0) => Progress::Complete,
            Body::Length(_) | Body::UntilClose | Body::Chunked(Chunk::Data(_)) if available == 0 => Progress::NeedMore,
            Body::Length(remaining) => {
                *remaining -= take(*remaining, used) as u64;
                Progress::Stepped
            }
            Body::UntilClose => {
                take(u64::MAX, used);
                Progress::Stepped
            }
            Body::Chunked(chunk) => match chunk {
                Chunk::Data(remaining) => {
                    *remaining -= take(*remaining, used) as u64;
                    if *remaining == 0 {
                        *chunk = Chunk::DataEnd;
                    }
                    Progress::Stepped
                }
                Chunk::Size => match next_line(buf, used, scanned, MAX_CHUNK_LINE) {
                    Line::NeedMore => Progress::NeedMore,
                    Line::TooLong => Progress::Malformed("a chunk-size line runs on"),
                    Line::Complete(line) => match chunk_size(line) {
                        None => Progress::Malformed("a chunk size is not a number"),
                        Some(0) => {
                            *chunk = Chunk::Trailers(0);
                            Progress::Stepped
                        }
                        Some(size) => {
                            *chunk = Chunk::Data(size);
                            Progress::Stepped
                        }
                    },
                },
                Chunk::DataEnd => match &buf[*used..] {
                    [b'\r', b'\n', ..] | [b'\n', ..] => {
                        *used += if buf[*used] == b'\n' { 1 } else { 2 };
                        *scanned = *used;
                        *chunk = Chunk::Size;
                        Progress::Stepped
                    }
                    [] | [b'\r'] => Progress::NeedMore,
                    _ => Progress::Malformed("a chunk runs past its size"),
                },
                Chunk::Trailers(seen) => {
                    let room = MAX_TRAILERS - *seen;
                    match next_line(buf, used, scanned, room) {
                        Line::NeedMore => Progress::NeedMore,
                        Line::TooLong => Progress::Malformed("trailers run on"),
                        Line::Complete([]) => Progress::Complete,
                        Line::Complete(line) => {
                            *seen += line.len();
                            Progress::Stepped
                        }
                    }
                }
            },
        }
    }

    /// Sizes the buffer for the rest of the part a Content-Length tells,
    /// rather than growing (and copying) it as the body arrives.
    fn reserve_for_part(&mut self) {
        if let Some(Message {
            body: Body::Length(remaining),
            ..
        }) = &self.message
        {
            let to_come = usize::try_from(*remaining).unwrap_or(usize::MAX);
            let part_len = self.used.saturating_add(to_come).min(PART_BYTES + BODY_STEP);
            self.buf.reserve(part_len.saturating_sub(self.buf.len()));
        }
    }

    /// A part in progress that holds PART_BYTES goes out.
    fn emit_if_large(&mut self, pool: &mut BufferPool, out: &mut Vec<Parsed>) {
        let message = self.message.as_ref().expect("in a body");
        let decoded = message.shown.decoded.as_ref().map_or(0, Vec::len);
        if self.used >= PART_BYTES || decoded >= PART_BYTES {
            self.emit_part(false, pool, out);
        }
    }

    /// Hands out the part in progress: the message's end when `last`.
    fn emit_part(&mut self, last: bool, pool: &mut BufferPool, out: &mut Vec<Parsed>) {
        let Some(message) = self.message.as_mut() else {
            return;
        };
        let shown = &mut message.shown;
        if last && let Some(inflater) = shown.inflater.take() {
            let decoded = shown.decoded.as_mut().expect("an inflater decodes into a buffer");
            shown.notes.push(inflater.finish(decoded));
        }
        let rest = if self.used < self.buf.len() {
            let mut rest = pool.take();
            rest.extend_from_slice(&self.buf[self.used..]);
            self.buf.truncate(self.used);
            rest
        } else {
            Vec::new()
        };
        self.since = (!rest.is_empty()).then_some(self.since).flatten();
        self.scanned = self.scanned.saturating_sub(self.used);
        self.used = 0;
        let part = HttpPart {
            start: message.start,
            direction: self.direction,
            wire: std::mem::replace(&mut self.buf, rest),
            head_len: std::mem::take(&mut message.head_len),
            decoded: if last {
                shown.decoded.take()
            } else {
                shown
                    .decoded
                    .as_mut()
                    .map(|decoded| std::mem::replace(decoded, pool.take()))
            },
            notes: std::mem::take(&mut shown.notes),
            number: message.part,
            last,
        };
        message.part += 1;
        if last {
            if part.start == (StartLine::Response { status: 101 }) {
                self.raw = true;
            }
            self.message = None;
            self.scanned = 0;
        }
        out.push(Parsed::Http(part));
    }

    fn finish(&mut self, pool: &mut BufferPool, out: &mut Vec<Parsed>) {
        match &mut self.message {
            Some(message) => {
                // Whatever waited for more framing belongs to the body.
                self.used = self.buf.len();
                match message.body {
                    Body::UntilClose => {}
                    Body::Length(remaining) => message
                        .shown
                        .notes
                        .push(format!("incomplete: the connection ended {remaining} bytes short")),
                    Body::Chunked(_) => message
                        .shown
                        .notes
                        .push("incomplete: the connection ended inside the chunked body".to_string()),
                }
                self.emit_part(true, pool, out);
            }
            None if !self.buf.is_empty() => out.push(Parsed::Raw(std::mem::take(&mut self.buf))),
            None => {}
        }
        self.since = None;
        self.scanned = 0;
    }
}

impl Shown {
    /// Body bytes as sent (after chunked framing): decoded when they are
    /// compressed, copied when the framing was removed, left in the wire
    /// buffer otherwise.
    fn take_body(&mut self, bytes: &[u8]) {
        match (&mut self.inflater, &mut self.decoded) {
            (Some(inflater), Some(decoded)) => {
                if let Some(note) = inflater.inflate(bytes, decoded) {
                    self.notes.push(note);
                }
            }
            (None, Some(decoded)) => decoded.extend_from_slice(bytes),
            _ => {}
        }
    }
}

/// How a message's body is framed, from its headers.
enum Framing {
    Body(Body),
    /// Content-Length values that are not one number this machine can count to.
    Invalid,
}

fn body_framing(headers: &[httparse::Header<'_>], otherwise: Body) -> Framing {
    if header_value(headers, "transfer-encoding").is_some_and(|te| te.to_ascii_lowercase().contains("chunked")) {
        return Framing::Body(Body::Chunked(Chunk::Size));
    }
    let mut lengths = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
        .map(|h| {
            std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
        });
    match lengths.next() {
        None => Framing::Body(otherwise),
        // Two different lengths are how requests are smuggled past proxies.
        Some(Some(n)) if lengths.all(|other| other == Some(n)) => Framing::Body(Body::Length(n)),
        Some(_) => Framing::Invalid,
    }
}

/// A request starts with a known method and a space, or a prefix of that.
fn looks_like_request(buf: &[u8]) -> bool {
    METHODS.iter().any(|method| {
        let method = method.as_bytes();
        let shared = buf.len().min(method.len());
        buf[..shared] == method[..shared] && buf.get(method.len()).is_none_or(|&next| next == b' ')
    })
}

/// Whether `bytes` hold the blank line that ends a head (CRLF or bare LF).
fn ends_head(bytes: &[u8]) -> bool {
    memchr::memchr_iter(b'\n', bytes).any(|at| matches!(&bytes[at + 1..], [b'\n', ..] | [b'\r', b'\n', ..]))
}

enum Line<'a> {
    /// The line, without its CRLF or LF.
    Complete(&'a [u8]),
    NeedMore,
    TooLong,
}

/// The line at `used`, searching only past `scanned`; on success `used`
/// and `scanned` move past it.
fn next_line<'a>(buf: &'a [u8], used: &mut usize, scanned: &mut usize, limit: usize) -> Line<'a> {
    // Body bytes taken since the last line moved `used` past `scanned`.
    *scanned = (*scanned).max(*used);
    let Some(at) = memchr::memchr(b'\n', &buf[*scanned..]) else {
        *scanned = buf.len();
        return if buf.len() - *used > limit {
            Line::TooLong
        } else {
            Line::NeedMore
        };
    };
    let end = *scanned + at;
    if end - *used > limit {
        return Line::TooLong;
    }
    let line = &buf[*used..end];
    *used = end + 1;
    *scanned = *used;
    Line::Complete(line.strip_suffix(b"\r").unwrap_or(line))
}

/// A chunk-size line's size, without its extensions; None if it is not a
/// hex number below 2^64.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let size_hex = std::str::from_utf8(line).ok()?.split(';').next()?.trim();
    u64::from_str_radix(size_hex, 16).ok()
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

/// A body's content encoding, undone as the body streams.
pub(super) struct Inflater {
    name: &'static str,
    state: Inflate,
    compressed: u64,
    inflated: u64,
}

enum Inflate {
    /// "deflate" is zlib-wrapped or bare, told by its first two bytes.
    Undecided(Option<u8>),
    Gzip(MultiGzDecoder<Vec<u8>>),
    Zlib(ZlibDecoder<Vec<u8>>),
    Deflate(DeflateDecoder<Vec<u8>>),
    /// Could not be decoded: the rest is shown as sent.
    Failed,
    /// A compression bomb: the rest is not shown.
    Stopped,
}

impl Inflater {
    pub(super) fn for_encoding(encoding: String) -> Option<Inflater> {
        let (name, state) = match encoding.as_str() {
            "gzip" | "x-gzip" => ("gzip", Inflate::Gzip(MultiGzDecoder::new(Vec::new()))),
            "deflate" => ("deflate", Inflate::Undecided(None)),
            _ => return None,
        };
        Some(Inflater {
            name,
            state,
            compressed: 0,
            inflated: 0,
        })
    }

    /// Inflates `input` onto `out`, in slices whose output is bounded;
    /// returns a note when decoding stops.
    pub(super) fn inflate(&mut self, input: &[u8], out: &mut Vec<u8>) -> Option<String> {
        let mut note = None;
        for slice in input.chunks(INFLATE_SLICE) {
            match &mut self.state {
                Inflate::Failed => {
                    out.extend_from_slice(slice);
                    continue;
                }
                Inflate::Stopped => continue,
                Inflate::Undecided(held) => {
                    let held = *held;
                    let mut bytes = held.into_iter().chain(slice.iter().copied());
                    let (Some(cmf), Some(flg)) = (bytes.next(), bytes.next()) else {
                        self.state = Inflate::Undecided(held.or(slice.first().copied()));
                        continue;
                    };
                    self.state = if is_zlib_header(cmf, flg) {
                        Inflate::Zlib(ZlibDecoder::new(Vec::new()))
                    } else {
                        Inflate::Deflate(DeflateDecoder::new(Vec::new()))
                    };
                    if let Some(first) = held {
                        note = note.or(self.write(&[first], out));
                    }
                }
                _ => {}
            }
            note = note.or(self.write(slice, out));
        }
        note
    }

    /// Writes compressed bytes through the decoder and moves what it
    /// inflated onto `out`.
    fn write(&mut self, compressed: &[u8], out: &mut Vec<u8>) -> Option<String> {
        let (written, inflated) = match &mut self.state {
            Inflate::Gzip(d) => (d.write_all(compressed).and_then(|()| d.flush()), d.get_mut()),
            Inflate::Zlib(d) => (d.write_all(compressed).and_then(|()| d.flush()), d.get_mut()),
            Inflate::Deflate(d) => (d.write_all(compressed).and_then(|()| d.flush()), d.get_mut()),
            Inflate::Undecided(_) | Inflate::Failed | Inflate::Stopped => return None,
        };
        self.compressed += compressed.len() as u64;
        self.inflated += inflated.len() as u64;
        out.append(inflated);
        if written.is_err() {
            self.state = Inflate::Failed;
            out.extend_from_slice(compressed);
            return Some(format!(
                "{} could not be decoded past {} compressed bytes; the rest is shown as sent",
                self.name, self.compressed
            ));
        }
        if self.inflated > BOMB_FLOOR && self.inflated / BOMB_RATIO > self.compressed {
            self.state = Inflate::Stopped;
            return Some(format!(
                "{}: decoding stopped at {} bytes from {} (over {BOMB_RATIO}:1, a compression bomb?); the rest of the body is not shown",
                self.name, self.inflated, self.compressed
            ));
        }
        None
    }

    /// The body ended: says what decoding made of it.
    pub(super) fn finish(mut self, out: &mut Vec<u8>) -> String {
        let finished = match &mut self.state {
            Inflate::Gzip(d) => d.try_finish().map(|()| d.get_mut()),
            Inflate::Zlib(d) => d.try_finish().map(|()| d.get_mut()),
            Inflate::Deflate(d) => d.try_finish().map(|()| d.get_mut()),
            Inflate::Undecided(_) => return format!("{}: empty", self.name),
            Inflate::Failed | Inflate::Stopped => {
                return format!("{}: {} compressed bytes", self.name, self.compressed);
            }
        };
        match finished {
            Ok(inflated) => {
                self.inflated += inflated.len() as u64;
                out.append(inflated);
                format!("{}: {} -> {} bytes", self.name, self.compressed, self.inflated)
            }
            Err(_) => format!(
                "{}: {} -> {} bytes, but the compressed stream ends early",
                self.name, self.compressed, self.inflated
            ),
        }
    }
}

/// RFC 1950's header: method 8, a window of at most 32 KiB, a check sum.
fn is_zlib_header(cmf: u8, flg: u8) -> bool {
    cmf & 0x0f == 8 && cmf >> 4 <= 7 && (u16::from(cmf) << 8 | u16::from(flg)) % 31 == 0
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
            let time = SystemTime::UNIX_EPOCH;
            self.push(
                direction,
                EventData::Record(data),
                time,
                &mut BufferPool::default(),
                &mut out,
            );
            out
        }

        fn finish_all(&mut self) -> Vec<Parsed> {
            let mut out = Vec::new();
            self.finish(&mut BufferPool::default(), &mut out);
            out
        }
    }
    use flate2::Compression;
    use flate2::write::GzEncoder;

    fn parts(out: Vec<Parsed>) -> Vec<HttpPart> {
        out.into_iter()
            .map(|p| match p {
                Parsed::Http(m) => m,
                Parsed::Raw(raw) => panic!("unexpected raw {:?}", String::from_utf8_lossy(&raw)),
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    /// Whole messages only.
    fn messages(out: Vec<Parsed>) -> Vec<HttpPart> {
        let got = parts(out);
        assert!(got.iter().all(HttpPart::is_whole), "{got:?}");
        got
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        gz.write_all(data).unwrap();
        gz.finish().unwrap()
    }

    fn chunked(pieces: &[&[u8]]) -> Vec<u8> {
        let mut wire = Vec::new();
        for piece in pieces {
            wire.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            wire.extend_from_slice(piece);
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b"0\r\n\r\n");
        wire
    }

    /// A response's parts fed in pieces of `piece` bytes: their bodies
    /// joined, and the parts.
    fn streamed(head: &str, body: &[u8], piece: usize) -> (Vec<u8>, Vec<HttpPart>) {
        let mut session = Http1Session::default();
        session.push_all(0, b"GET / HTTP/1.1\r\n\r\n");
        let mut wire = head.as_bytes().to_vec();
        wire.extend_from_slice(body);
        let mut got = Vec::new();
        for piece in wire.chunks(piece) {
            got.extend(parts(session.push_all(1, piece)));
        }
        let joined = got.iter().flat_map(|p| p.body().iter().copied()).collect();
        (joined, got)
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
    fn large_body_streams_in_bounded_parts_whole_and_in_order() {
        let body: Vec<u8> = (0..3 << 20).map(|i: u32| b'a' + (i % 26) as u8).collect();
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
        let (joined, got) = streamed(&head, &body, 16 * 1024);
        assert!(joined == body, "the body differs");
        assert_eq!(got[0].head(), head.as_bytes());
        assert!(got.len() > 3, "{} parts", got.len());
        for (index, part) in got.iter().enumerate() {
            assert_eq!(part.number as usize, index + 1);
            assert_eq!(part.last, index == got.len() - 1);
            assert!(part.wire_len() < PART_BYTES + 16 * 1024, "{}", part.wire_len());
        }
        let wire: usize = got.iter().map(HttpPart::wire_len).sum();
        assert_eq!(wire, head.len() + body.len());
    }

    #[test]
    fn chunked_gzip_response_is_decoded() {
        let compressed = gzip(b"the decoded body");
        let (first, second) = compressed.split_at(5);
        let mut wire = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        wire.extend_from_slice(&chunked(&[first, second]));
        let mut session = Http1Session::default();
        let (head, tail) = wire.split_at(wire.len() - 4);
        assert!(session.push_all(1, head).is_empty(), "incomplete until the last chunk");
        let got = messages(session.push_all(1, tail));
        assert_eq!(got[0].body(), b"the decoded body");
        assert_eq!(got[0].notes[0], "chunked");
        assert!(got[0].notes[1].starts_with("gzip: "), "{:?}", got[0].notes);
    }

    #[test]
    fn chunked_gzip_fed_a_byte_at_a_time_is_the_same_body() {
        let body: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let compressed = gzip(&body);
        let pieces: Vec<&[u8]> = compressed.chunks(777).collect();
        let head = "HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n";
        for piece in [1, 5, 4096] {
            let (joined, got) = streamed(head, &chunked(&pieces), piece);
            assert!(joined == body, "the body differs when fed {piece} bytes at a time");
            assert!(got.last().unwrap().last);
        }
    }

    #[test]
    fn deflate_zlib_wrapped_or_bare() {
        for wrapped in [true, false] {
            let mut encoded = Vec::new();
            if wrapped {
                let mut e = flate2::write::ZlibEncoder::new(&mut encoded, Compression::default());
                e.write_all(b"deflated text").unwrap();
                e.finish().unwrap();
            } else {
                let mut e = flate2::write::DeflateEncoder::new(&mut encoded, Compression::default());
                e.write_all(b"deflated text").unwrap();
                e.finish().unwrap();
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Encoding: deflate\r\nContent-Length: {}\r\n\r\n",
                encoded.len()
            );
            let (joined, _) = streamed(&head, &encoded, 1);
            assert_eq!(joined, b"deflated text", "wrapped: {wrapped}");
        }
    }

    #[test]
    fn truncated_and_corrupt_gzip_are_said() {
        let compressed = gzip(&[b'x'; 5000]);
        let cut = &compressed[..compressed.len() - 6];
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\n\r\n",
            cut.len()
        );
        let (_, got) = streamed(&head, cut, 4096);
        assert!(
            got[0].notes.iter().any(|n| n.ends_with("ends early")),
            "{:?}",
            got[0].notes
        );

        let garbage = b"\x1f\x8bnot really gzip at all";
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\n\r\n",
            garbage.len()
        );
        let (joined, got) = streamed(&head, garbage, 4096);
        assert!(
            got[0].notes.iter().any(|n| n.contains("could not be decoded")),
            "{:?}",
            got[0].notes
        );
        assert_eq!(joined, garbage, "shown as sent");
    }

    #[test]
    fn a_gzip_bomb_is_stopped_and_said() {
        let mut gz = GzEncoder::new(Vec::new(), Compression::best());
        for _ in 0..256 {
            gz.write_all(&[0; 1 << 20]).unwrap();
        }
        let bomb = gz.finish().unwrap();
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\n\r\n",
            bomb.len()
        );
        let (joined, got) = streamed(&head, &bomb, 16 * 1024);
        assert!(joined.len() < 4 << 20, "inflated {} bytes", joined.len());
        assert!(
            got.iter()
                .flat_map(|p| &p.notes)
                .any(|n| n.contains("compression bomb")),
            "{:?}",
            got.iter().map(|p| &p.notes).collect::<Vec<_>>()
        );
        assert!(got.last().unwrap().last);
    }

    #[test]
    fn chunk_framing_edges() {
        let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        let (joined, got) = streamed(head, b"4;ext=1\r\nWiki\n5\r\npedia\r\n0\r\nX-Trailer: 1\r\n\r\n", 1);
        assert_eq!(joined, b"Wikipedia");
        assert!(got.last().unwrap().last);
        // A chunk longer than its size: what follows is shown raw.
        let mut session = Http1Session::default();
        let out = session.push_all(1, format!("{head}4\r\nWikipedia\r\n0\r\n\r\n").as_bytes());
        assert!(
            matches!(&out[0], Parsed::Http(part) if part.body() == b"Wiki" && part.notes[1].contains("past its size")),
            "{out:?}"
        );
        assert_eq!(out[1], Parsed::Raw(b"pedia\r\n0\r\n\r\n".to_vec()));
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
    fn slow_parts_are_released_after_their_time() {
        let mut session = Http1Session::default();
        let mut out = Vec::new();
        let mut pool = BufferPool::default();
        let at = |secs| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc";
        session.push(1, EventData::Record(head), at(10), &mut pool, &mut out);
        assert!(out.is_empty());
        session.release_parts(at(9), &mut pool, &mut out);
        assert!(out.is_empty(), "not yet");
        session.release_parts(at(10), &mut pool, &mut out);
        session.push(1, EventData::Record(b"defghij"), at(11), &mut pool, &mut out);
        let got = parts(out);
        assert_eq!((got[0].number, got[0].last, got[0].body()), (1, false, &b"abc"[..]));
        assert_eq!((got[1].number, got[1].last, got[1].body()), (2, true, &b"defghij"[..]));
        assert!(got[1].head().is_empty());
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
    fn incomplete_message_is_shown_at_finish_with_a_note() {
        let mut session = Http1Session::default();
        assert!(
            session
                .push_all(0, b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
                .is_empty()
        );
        let got = parts(session.finish_all());
        assert_eq!(got[0].body(), b"abc");
        assert_eq!(got[0].notes, ["incomplete: the connection ended 7 bytes short"]);
        // A head that never ended is shown raw.
        let mut session = Http1Session::default();
        assert!(session.push_all(0, b"GET / HTTP/1.1\r\nHost:").is_empty());
        assert!(matches!(session.finish_all().as_slice(), [Parsed::Raw(raw)] if raw.ends_with(b"Host:")));
    }

    /// Sizes chosen by a hostile peer: a chunk size whose sum with the
    /// offset wraps (this aborted ecapture), one past u64, and
    /// Content-Lengths past u64, negative, or two that disagree.
    #[test]
    fn hostile_framing_is_shown_raw() {
        for (head, body) in [
            ("Content-Length: 99999999999999999999999", "abc"),
            ("Content-Length: -1", "abc"),
            ("Content-Length: 3\r\nContent-Length: 4", "abc"),
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
        for size in ["fffffffffffffffe", "ffffffffffffffff0", "zz"] {
            let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
            let body = format!("{size}\r\nabc\r\n");
            let mut session = Http1Session::default();
            let mut out = session.push_all(1, format!("{head}{body}").as_bytes());
            out.extend(session.push_all(1, b"more bytes"));
            out.extend(session.finish_all());
            match size {
                // A size that fits is a body that has not all arrived.
                "fffffffffffffffe" => {
                    assert!(
                        matches!(&out[0], Parsed::Http(part) if part.body() == b"abc\r\nmore bytes"),
                        "{out:?}"
                    )
                }
                _ => {
                    assert!(
                        matches!(&out[0], Parsed::Http(part) if part.notes[1].contains("not a number")),
                        "{size}: {out:?}"
                    );
                    assert!(
                        matches!(&out[1], Parsed::Raw(raw) if raw.starts_with(b"abc")),
                        "{out:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_head_sent_a_byte_at_a_time_is_found_once_whole() {
        let wire = b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Long: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
        let mut session = Http1Session::default();
        let mut got = Vec::new();
        for byte in wire.chunks(1) {
            got.extend(session.push_all(0, byte));
        }
        assert_eq!(messages(got)[0].path(), Some("/slow"));
        // A head that never ends is not HTTP once past the limit.
        let mut session = Http1Session::default();
        session.push_all(0, b"GET / HTTP/1.1\r\n");
        let filler = vec![b'a'; MAX_HEAD_LEN];
        assert!(matches!(session.push_all(0, &filler).as_slice(), [Parsed::Raw(_)]));
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
