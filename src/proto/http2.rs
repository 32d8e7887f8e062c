//! HTTP/2 (RFC 9113): frames read from both directions of a connection as
//! their bytes arrive, header blocks decoded (HPACK, one table per
//! direction), and each stream's request and response reassembled into
//! messages shown like HTTP/1's. gRPC bodies are cut into their
//! length-prefixed messages.
//!
//! A capture that starts mid-connection finds the frame boundaries at the
//! start of a read or write that begins with plausible frames, and shows
//! the header fields its HPACK tables can decode. Bytes that cannot be
//! followed are shown raw, and the frames after them are looked for again.
//! DATA streams into its message; other frames are kept up to a bound; what
//! a connection's messages hold (header fields and bodies) stays under
//! PART_BYTES, whatever the number of streams.

use std::time::SystemTime;

use super::Parsed;
use super::hpack::{HeaderBlock, HeaderDecoder};
use super::http1::{BODY_STEP, Inflater, PART_BYTES};

/// The client's first bytes.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_LEN: usize = 9;
/// SETTINGS_MAX_FRAME_SIZE until a peer raises it.
const DEFAULT_MAX_FRAME: usize = 16 * 1024;
/// A header block (HEADERS or PUSH_PROMISE and its CONTINUATIONs) larger
/// than this is not decoded.
const MAX_BLOCK: usize = 64 * 1024;
/// Bytes kept of a frame that is neither DATA nor a header block: the few
/// its fields take.
const KEPT_CONTROL_BYTES: usize = 8;
/// Messages followed at once; a new one past this sends the oldest out.
const MAX_MESSAGES: usize = 128;
/// Bytes shown of one gRPC message.
const SHOWN_GRPC_BYTES: usize = 64 * 1024;
const GRPC_PREFIX_LEN: usize = 5;

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const PRIORITY: u8 = 2;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PUSH_PROMISE: u8 = 5;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const WINDOW_UPDATE: u8 = 8;
const CONTINUATION: u8 = 9;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY_FLAG: u8 = 0x20;

/// Whether a connection's first bytes are HTTP/2: the client's preface,
/// or (a server's first bytes, or a capture started mid-connection) frames
/// as only HTTP/2 lays them out.
pub fn is_http2(first: &[u8]) -> bool {
    (first.len() >= 3 && (first.starts_with(PREFACE) || PREFACE.starts_with(first))) || are_frames(first)
}

/// Whether `bytes` begin with a whole frame header, and every frame header
/// they hold is one a peer could send before changing its settings.
fn are_frames(bytes: &[u8]) -> bool {
    let mut at = 0;
    while let Some(header) = bytes.get(at..at + FRAME_HEADER_LEN) {
        let header = FrameHeader::parse(header);
        if !header.is_valid(true) {
            return false;
        }
        at += FRAME_HEADER_LEN + header.length;
    }
    at > 0
}

#[derive(Debug, Clone, Copy)]
struct FrameHeader {
    length: usize,
    kind: u8,
    flags: u8,
    stream: u32,
    reserved: bool,
}

impl FrameHeader {
    fn parse(bytes: &[u8]) -> FrameHeader {
        let stream = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
        FrameHeader {
            length: usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]),
            kind: bytes[3],
            flags: bytes[4],
            stream: stream & 0x7fff_ffff,
            reserved: stream >> 31 != 0,
        }
    }

    /// Whether the frame keeps the rules of its type. `strict`, for telling
    /// HTTP/2 from other bytes, also refuses what a peer may send but
    /// rarely does: unknown types and flags, frames past the default size.
    fn is_valid(&self, strict: bool) -> bool {
        let on_stream = self.stream != 0;
        let (rules, flags) = match self.kind {
            DATA => (on_stream, END_STREAM | PADDED),
            HEADERS => (on_stream, END_STREAM | END_HEADERS | PADDED | PRIORITY_FLAG),
            PRIORITY => (on_stream && self.length == 5, 0),
            RST_STREAM => (on_stream && self.length == 4, 0),
            SETTINGS => (
                !on_stream && self.length.is_multiple_of(6) && (self.flags & ACK == 0 || self.length == 0),
                ACK,
            ),
            PUSH_PROMISE => (on_stream && self.length >= 4, END_HEADERS | PADDED),
            PING => (!on_stream && self.length == 8, ACK),
            GOAWAY => (!on_stream && self.length >= 8, 0),
            WINDOW_UPDATE => (self.length == 4, 0),
            CONTINUATION => (on_stream, END_HEADERS),
            _ => (!strict, 0xff),
        };
        rules && (!strict || (!self.reserved && self.length <= DEFAULT_MAX_FRAME && self.flags & !flags == 0))
    }
}

/// What a message is, from its pseudo-header fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Request {
        method: String,
        path: String,
    },
    Response {
        status: u16,
    },
    /// Its headers were not seen: sent before the capture began.
    Unknown,
}

/// One gRPC message of a body.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GrpcMessage {
    pub compressed: bool,
    /// As its prefix says.
    pub length: u32,
    /// Its first SHOWN_GRPC_BYTES.
    pub data: Vec<u8>,
}

/// A message, or a part of one too large or slow to hold whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Http2Part {
    pub stream: u32,
    /// The direction (0 or 1) it was sent in.
    pub direction: usize,
    pub kind: Kind,
    /// Header fields, pseudo-headers first, as sent; in the first part only.
    pub headers: Vec<(String, String)>,
    /// Trailer fields, in the last part.
    pub trailers: Vec<(String, String)>,
    /// The body of this part, content encoding removed; empty for gRPC.
    pub body: Vec<u8>,
    /// gRPC messages completed in this part.
    pub grpc: Vec<GrpcMessage>,
    pub notes: Vec<String>,
    /// 1 for the part with the headers.
    pub number: u32,
    pub last: bool,
    /// Bytes of the frames that carried this part.
    pub wire_len: usize,
}

impl Http2Part {
    pub fn is_whole(&self) -> bool {
        self.number == 1 && self.last
    }

    /// The memory its fields, body and gRPC messages hold.
    pub fn held_bytes(&self) -> usize {
        fields_len(&self.headers)
            + fields_len(&self.trailers)
            + self.body.capacity()
            + self.grpc.iter().map(|message| message.data.capacity()).sum::<usize>()
    }
}

/// Both directions of one connection.
#[derive(Default)]
pub struct Http2Session {
    readers: [Reader; 2],
    streams: Streams,
}

impl Http2Session {
    /// Feeds one direction's (0 or 1) bytes, which arrived at `time`;
    /// appends to `out` what they complete.
    pub fn push(&mut self, direction: usize, bytes: &[u8], time: SystemTime, out: &mut Vec<Parsed>) {
        let reader = &mut self.readers[direction];
        let mut context = Context {
            direction,
            time,
            streams: &mut self.streams,
            out,
        };
        reader.read(bytes, &mut context);
    }

    /// Hands out the parts of messages whose oldest unshown content arrived
    /// at or before `cutoff`.
    pub fn release_parts(&mut self, cutoff: SystemTime, out: &mut Vec<Parsed>) {
        let streams = &mut self.streams;
        let mut at = 0;
        while at < streams.messages.len() {
            let message = &streams.messages[at];
            if message.has_news() && message.since.is_some_and(|since| since <= cutoff) {
                streams.emit(at, false, out);
            }
            at += 1;
        }
    }

    /// Whether nothing is held.
    pub fn at_rest(&self) -> bool {
        self.streams.messages.is_empty() && self.readers.iter().all(Reader::between_frames)
    }

    /// The connection ended: the messages in progress go out as they are.
    pub fn finish(&mut self, out: &mut Vec<Parsed>) {
        while !self.streams.messages.is_empty() {
            self.streams.messages[0]
                .notes
                .push("incomplete: the capture of the connection ended before the stream did".into());
            self.streams.emit(0, true, out);
        }
    }
}

/// What frames act on.
struct Context<'a> {
    direction: usize,
    time: SystemTime,
    streams: &'a mut Streams,
    out: &'a mut Vec<Parsed>,
}

/// One direction's frames.
#[derive(Default)]
struct Reader {
    state: ReadState,
    header: [u8; FRAME_HEADER_LEN],
    header_len: usize,
    /// The payload kept of the frame being read (not DATA's).
    kept: Vec<u8>,
    /// The header block whose CONTINUATION frames are awaited.
    block: Option<OpenBlock>,
    hpack: HeaderDecoder,
}

#[derive(Default)]
enum ReadState {
    /// Before the direction's first bytes: the preface, or frames. Fewer
    /// bytes than a frame header are taken for the start of one.
    #[default]
    Start,
    /// After bytes that could not be followed: a read or write that starts
    /// with frames starts them again.
    Unsynced,
    /// This many bytes of the preface were read.
    Preface(usize),
    Header,
    Payload(FrameInProgress),
}

/// The frame whose payload is being read.
struct FrameInProgress {
    header: FrameHeader,
    read: usize,
    /// DATA's padding, once its first byte told.
    padding: Option<usize>,
}

struct OpenBlock {
    /// The stream the block's message is on (the promised one for PUSH_PROMISE).
    stream: u32,
    end_stream: bool,
    pushed: bool,
    fragments: Vec<u8>,
    too_large: bool,
    wire_len: usize,
}

impl Reader {
    fn between_frames(&self) -> bool {
        self.block.is_none()
            && match self.state {
                ReadState::Start | ReadState::Unsynced => true,
                ReadState::Header => self.header_len == 0,
                ReadState::Preface(_) | ReadState::Payload(_) => false,
            }
    }

    fn read(&mut self, bytes: &[u8], context: &mut Context<'_>) {
        if matches!(self.state, ReadState::Start) && !bytes.is_empty() {
            self.state = if bytes.starts_with(PREFACE) || PREFACE.starts_with(bytes) {
                ReadState::Preface(0)
            } else if bytes.len() < FRAME_HEADER_LEN {
                ReadState::Header
            } else {
                // The other direction told HTTP/2; this one's first read may
                // still begin inside a frame, in a capture started midway.
                ReadState::Unsynced
            };
        }
        if matches!(self.state, ReadState::Unsynced) {
            if are_frames(bytes) {
                self.state = ReadState::Header;
                self.header_len = 0;
            } else {
                context.out.push(Parsed::Raw(bytes.to_vec()));
                return;
            }
        }
        let mut at = 0;
        while at < bytes.len() {
            let rest = &bytes[at..];
            let taken = match &mut self.state {
                ReadState::Start | ReadState::Unsynced => {
                    context.out.push(Parsed::Raw(rest.to_vec()));
                    return;
                }
                ReadState::Preface(matched) => {
                    let n = rest.len().min(PREFACE.len() - *matched);
                    if rest[..n] != PREFACE[*matched..*matched + n] {
                        self.lose_sync();
                        continue;
                    }
                    *matched += n;
                    if *matched == PREFACE.len() {
                        self.state = ReadState::Header;
                    }
                    n
                }
                ReadState::Header => {
                    let n = rest.len().min(FRAME_HEADER_LEN - self.header_len);
                    self.header[self.header_len..self.header_len + n].copy_from_slice(&rest[..n]);
                    self.header_len += n;
                    if self.header_len == FRAME_HEADER_LEN {
                        self.header_len = 0;
                        self.start_frame(FrameHeader::parse(&self.header), context);
                    }
                    n
                }
                ReadState::Payload(payload) => {
                    let n = rest.len().min(payload.header.length - payload.read);
                    if payload.header.kind == DATA {
                        data_bytes(payload, &rest[..n], context);
                    } else {
                        let room = kept_limit(payload.header.kind).saturating_sub(self.kept.len());
                        self.kept.extend_from_slice(&rest[..n.min(room)]);
                        payload.read += n;
                    }
                    if payload.read == payload.header.length {
                        self.end_frame(context);
                    }
                    n
                }
            };
            at += taken;
        }
    }

    /// A frame header was read.
    fn start_frame(&mut self, header: FrameHeader, context: &mut Context<'_>) {
        // A header block's CONTINUATION frames follow it, and nothing else does.
        if !header.is_valid(false) || (header.kind == CONTINUATION) != self.block.is_some() {
            self.lose_sync();
            context.out.push(Parsed::Raw(self.header[..FRAME_HEADER_LEN].to_vec()));
            return;
        }
        if header.kind == DATA {
            context
                .streams
                .data_frame(context.direction, header.stream, context.time);
        }
        self.kept.clear();
        self.state = ReadState::Payload(FrameInProgress {
            header,
            read: 0,
            padding: None,
        });
        if header.length == 0 {
            self.end_frame(context);
        }
    }

    /// The frame being read ended.
    fn end_frame(&mut self, context: &mut Context<'_>) {
        let ReadState::Payload(payload) = std::mem::replace(&mut self.state, ReadState::Header) else {
            return;
        };
        let header = payload.header;
        let wire_len = FRAME_HEADER_LEN + header.length;
        match header.kind {
            DATA => {
                // Padding, and the pad length byte, went to no body.
                let content = header.length.saturating_sub(payload.padding.map_or(0, |pad| pad + 1));
                let overhead = wire_len - content;
                context.streams.data_end(
                    context.direction,
                    header.stream,
                    overhead,
                    header.flags & END_STREAM != 0,
                    context.out,
                );
            }
            HEADERS | PUSH_PROMISE => {
                let Some((fragment, promised)) = block_fragment(&header, &self.kept) else {
                    self.lose_sync();
                    return;
                };
                let fragment = fragment.to_vec();
                let pushed = header.kind == PUSH_PROMISE;
                self.block = Some(OpenBlock {
                    stream: if pushed { promised } else { header.stream },
                    end_stream: !pushed && header.flags & END_STREAM != 0,
                    pushed,
                    too_large: header.length > MAX_BLOCK,
                    fragments: fragment,
                    wire_len,
                });
                if header.flags & END_HEADERS != 0 {
                    self.end_block(context);
                }
            }
            CONTINUATION => {
                let block = self.block.as_mut().expect("checked when the frame started");
                block.wire_len += wire_len;
                if block.fragments.len() + self.kept.len() > MAX_BLOCK || header.length > self.kept.len() {
                    block.too_large = true;
                } else {
                    block.fragments.extend_from_slice(&self.kept);
                }
                if header.flags & END_HEADERS != 0 {
                    self.end_block(context);
                }
            }
            RST_STREAM => {
                let code = u32::from_be_bytes(self.kept[..4].try_into().expect("RST_STREAM has 4 bytes"));
                context.streams.reset(header.stream, code, context.out);
            }
            // Settings, pings, window updates and priorities are the
            // connection's business, not its messages'.
            _ => {}
        }
    }

    /// A header block is complete.
    fn end_block(&mut self, context: &mut Context<'_>) {
        let block = self.block.take().expect("a block is open");
        let decoded = if block.too_large {
            // Its insertions into the table are lost with it.
            self.hpack.forget();
            HeaderBlock {
                error: Some("the header block is too large to decode"),
                ..HeaderBlock::default()
            }
        } else {
            self.hpack.decode(&block.fragments)
        };
        context.streams.headers(
            context.direction,
            block.stream,
            decoded,
            block.end_stream || block.pushed,
            block.pushed,
            block.wire_len,
            context.time,
            context.out,
        );
    }

    /// Bytes that break the framing: what follows is looked for again at
    /// the next read or write, and header blocks sent meanwhile are lost.
    fn lose_sync(&mut self) {
        self.state = ReadState::Unsynced;
        self.header_len = 0;
        self.block = None;
        self.kept = Vec::new();
        self.hpack.forget();
    }
}

/// How much of a frame of type `kind` is kept.
fn kept_limit(kind: u8) -> usize {
    match kind {
        HEADERS | PUSH_PROMISE | CONTINUATION => MAX_BLOCK,
        _ => KEPT_CONTROL_BYTES,
    }
}

/// A HEADERS or PUSH_PROMISE frame's block fragment, without padding and
/// priority, and the promised stream; None if the padding runs past the frame.
fn block_fragment<'a>(header: &FrameHeader, kept: &'a [u8]) -> Option<(&'a [u8], u32)> {
    let mut start = 0;
    let mut padding = 0;
    if header.flags & PADDED != 0 {
        padding = usize::from(*kept.first()?);
        start = 1;
    }
    let mut promised = 0;
    if header.kind == PUSH_PROMISE {
        let id = kept.get(start..start + 4)?;
        promised = u32::from_be_bytes(id.try_into().ok()?) & 0x7fff_ffff;
        start += 4;
    } else if header.flags & PRIORITY_FLAG != 0 {
        start += 5;
    }
    let end = header.length.checked_sub(padding)?;
    if start > end {
        return None;
    }
    // A block too large to keep is cut; it is not decoded.
    Some((kept.get(start..end.min(kept.len()))?, promised))
}

/// DATA payload bytes: the pad length, content, padding.
fn data_bytes(payload: &mut FrameInProgress, mut bytes: &[u8], context: &mut Context<'_>) {
    let header = &payload.header;
    if header.flags & PADDED != 0 && payload.padding.is_none() && !bytes.is_empty() {
        payload.padding = Some(usize::from(bytes[0]));
        payload.read += 1;
        bytes = &bytes[1..];
    }
    let content_end = header.length.saturating_sub(payload.padding.unwrap_or(0));
    let content = content_end.saturating_sub(payload.read).min(bytes.len());
    context.streams.data(
        context.direction,
        header.stream,
        &bytes[..content],
        context.time,
        context.out,
    );
    payload.read += bytes.len();
}

/// The messages in progress.
#[derive(Default)]
struct Streams {
    messages: Vec<Message>,
    /// What the messages hold, the sum of their `held`.
    held: usize,
}

struct Message {
    stream: u32,
    direction: usize,
    kind: Kind,
    /// Header fields not handed out yet.
    headers: Vec<(String, String)>,
    headers_seen: bool,
    trailers: Vec<(String, String)>,
    body: Vec<u8>,
    inflater: Option<Box<Inflater>>,
    grpc: Option<GrpcReader>,
    grpc_done: Vec<GrpcMessage>,
    notes: Vec<String>,
    wire_len: usize,
    part: u32,
    /// When the oldest content not handed out arrived.
    since: Option<SystemTime>,
    /// Bytes of header fields, body and gRPC messages it holds, counted as
    /// they come: counting them again at every frame would cost a peer's
    /// one-byte frames a pass over every message's fields.
    held: usize,
}

impl Message {
    fn new(stream: u32, direction: usize) -> Message {
        Message {
            stream,
            direction,
            kind: Kind::Unknown,
            headers: Vec::new(),
            headers_seen: false,
            trailers: Vec::new(),
            body: Vec::new(),
            inflater: None,
            grpc: None,
            grpc_done: Vec::new(),
            notes: Vec::new(),
            wire_len: 0,
            part: 1,
            since: None,
            held: 0,
        }
    }

    /// Whether it holds something not handed out yet.
    fn has_news(&self) -> bool {
        !(self.headers.is_empty() && self.body.is_empty() && self.grpc_done.is_empty() && self.notes.is_empty())
    }

    /// What `held` counts, counted again.
    #[cfg(test)]
    fn counted(&self) -> usize {
        fields_len(&self.headers)
            + fields_len(&self.trailers)
            + self.body.len()
            + self
                .grpc_done
                .iter()
                .map(|message| message.data.len() + std::mem::size_of::<GrpcMessage>())
                .sum::<usize>()
            + self.grpc.as_ref().map_or(0, |grpc| grpc.current.data.len())
    }

    /// Body bytes, decoded as its headers say; returns how much more it holds.
    fn take_body(&mut self, bytes: &[u8]) -> usize {
        let (body, messages) = (self.body.len(), self.grpc_done.len());
        let mut kept = 0;
        if let Some(grpc) = &mut self.grpc {
            kept = grpc.take(bytes, &mut self.grpc_done);
        } else if let Some(inflater) = &mut self.inflater {
            if let Some(note) = inflater.inflate(bytes, &mut self.body) {
                self.notes.push(note);
            }
        } else {
            self.body.extend_from_slice(bytes);
        }
        let added = kept + (self.body.len() - body) + (self.grpc_done.len() - messages) * size_of::<GrpcMessage>();
        self.held += added;
        added
    }
}

impl Streams {
    /// The message on `stream` in `direction`, begun if there is none.
    fn message(&mut self, direction: usize, stream: u32, time: SystemTime, out: &mut Vec<Parsed>) -> usize {
        if let Some(at) = self.find(direction, stream) {
            return at;
        }
        if self.messages.len() == MAX_MESSAGES {
            self.messages[0].notes.push(format!(
                "no longer followed: more than {MAX_MESSAGES} streams in progress"
            ));
            self.emit(0, true, out);
        }
        self.messages.push(Message::new(stream, direction));
        let at = self.messages.len() - 1;
        self.messages[at].since = Some(time);
        at
    }

    fn find(&self, direction: usize, stream: u32) -> Option<usize> {
        self.messages
            .iter()
            .position(|message| message.stream == stream && message.direction == direction)
    }

    /// A header block on `stream`: a message's headers, or its trailers.
    #[allow(clippy::too_many_arguments)]
    fn headers(
        &mut self,
        direction: usize,
        stream: u32,
        block: HeaderBlock,
        end_stream: bool,
        pushed: bool,
        wire_len: usize,
        time: SystemTime,
        out: &mut Vec<Parsed>,
    ) {
        let at = self.message(direction, stream, time, out);
        let message = &mut self.messages[at];
        message.wire_len += wire_len;
        message.since.get_or_insert(time);
        message.notes.extend(block.notes());
        if pushed {
            message.notes.push("promised by the server (PUSH_PROMISE)".into());
        }
        let added = fields_len(&block.fields);
        message.held += added;
        self.held += added;
        if message.headers_seen || !message.body.is_empty() || !message.grpc_done.is_empty() {
            message.trailers.extend(block.fields);
        } else {
            message.headers_seen = true;
            message.kind = kind(&block);
            let value = |name: &str| block.value(name).map(str::to_ascii_lowercase);
            if value("content-type").is_some_and(|v| v.starts_with("application/grpc")) {
                message.grpc = Some(GrpcReader::default());
            } else if let Some(encoding) = value("content-encoding") {
                message.inflater = Inflater::for_encoding(encoding).map(Box::new);
            }
            message.headers = block.fields;
        }
        // An informational response (1xx) precedes the stream's final one.
        let interim = matches!(message.kind, Kind::Response { status } if (100..200).contains(&status));
        if end_stream || interim {
            self.emit(at, true, out);
        } else {
            self.bound_held(at, out);
        }
    }

    /// When the messages hold PART_BYTES, message `at` (the one that just
    /// grew) hands out what it holds.
    fn bound_held(&mut self, at: usize, out: &mut Vec<Parsed>) {
        if self.held >= PART_BYTES {
            self.emit(at, false, out);
        }
    }

    /// A DATA frame's header: its message counts from its first byte.
    fn data_frame(&mut self, direction: usize, stream: u32, time: SystemTime) {
        if let Some(at) = self.find(direction, stream) {
            self.messages[at].since.get_or_insert(time);
        }
    }

    /// DATA content on `stream`.
    fn data(&mut self, direction: usize, stream: u32, bytes: &[u8], time: SystemTime, out: &mut Vec<Parsed>) {
        if bytes.is_empty() {
            return;
        }
        let at = self.message(direction, stream, time, out);
        for step in bytes.chunks(BODY_STEP) {
            let message = &mut self.messages[at];
            message.since.get_or_insert(time);
            message.wire_len += step.len();
            self.held += message.take_body(step);
            self.bound_held(at, out);
        }
    }

    /// A DATA frame ended: its framing counts, and it may end the stream.
    fn data_end(&mut self, direction: usize, stream: u32, overhead: usize, end_stream: bool, out: &mut Vec<Parsed>) {
        let Some(at) = self.find(direction, stream) else {
            return;
        };
        self.messages[at].wire_len += overhead;
        if end_stream {
            self.emit(at, true, out);
        }
    }

    /// RST_STREAM: both of the stream's messages end.
    fn reset(&mut self, stream: u32, code: u32, out: &mut Vec<Parsed>) {
        while let Some(at) = self.messages.iter().position(|message| message.stream == stream) {
            self.messages[at]
                .notes
                .push(format!("the stream was reset ({})", error_name(code)));
            self.emit(at, true, out);
        }
    }

    /// Hands out what message `at` holds: its end when `last`.
    fn emit(&mut self, at: usize, last: bool, out: &mut Vec<Parsed>) {
        let message = &mut self.messages[at];
        if last {
            if let Some(inflater) = message.inflater.take() {
                let note = inflater.finish(&mut message.body);
                message.notes.push(note);
            }
            if let Some(note) = message
                .grpc
                .as_mut()
                .and_then(|grpc| grpc.finish(&mut message.grpc_done))
            {
                message.notes.push(note);
            }
        }
        let part = Http2Part {
            stream: message.stream,
            direction: message.direction,
            kind: message.kind.clone(),
            headers: std::mem::take(&mut message.headers),
            trailers: std::mem::take(&mut message.trailers),
            body: std::mem::take(&mut message.body),
            grpc: std::mem::take(&mut message.grpc_done),
            notes: std::mem::take(&mut message.notes),
            number: message.part,
            last,
            wire_len: std::mem::take(&mut message.wire_len),
        };
        message.part += 1;
        message.since = None;
        // A gRPC message under way stays.
        let kept = message.grpc.as_ref().map_or(0, |grpc| grpc.current.data.len());
        self.held -= message.held - kept;
        message.held = kept;
        if last {
            self.held -= kept;
            self.messages.remove(at);
        }
        out.push(Parsed::Http2(part));
    }
}

fn fields_len(fields: &[(String, String)]) -> usize {
    fields.iter().map(|(name, value)| name.len() + value.len()).sum()
}

fn kind(block: &HeaderBlock) -> Kind {
    if let Some(method) = block.value(":method") {
        Kind::Request {
            method: method.to_string(),
            path: block.value(":path").unwrap_or_default().to_string(),
        }
    } else if let Some(status) = block.value(":status") {
        Kind::Response {
            status: status.parse().unwrap_or(0),
        }
    } else {
        Kind::Unknown
    }
}

/// RFC 9113 7's error codes.
fn error_name(code: u32) -> String {
    const NAMES: [&str; 14] = [
        "NO_ERROR",
        "PROTOCOL_ERROR",
        "INTERNAL_ERROR",
        "FLOW_CONTROL_ERROR",
        "SETTINGS_TIMEOUT",
        "STREAM_CLOSED",
        "FRAME_SIZE_ERROR",
        "REFUSED_STREAM",
        "CANCEL",
        "COMPRESSION_ERROR",
        "CONNECT_ERROR",
        "ENHANCE_YOUR_CALM",
        "INADEQUATE_SECURITY",
        "HTTP_1_1_REQUIRED",
    ];
    match NAMES.get(code as usize) {
        Some(name) => (*name).to_string(),
        None => format!("error 0x{code:x}"),
    }
}

/// Cuts a gRPC body into its messages: a compressed flag, a 4-byte length,
/// the message.
#[derive(Default)]
struct GrpcReader {
    prefix: [u8; GRPC_PREFIX_LEN],
    prefix_len: usize,
    /// Bytes of the current message still to come.
    remaining: usize,
    current: GrpcMessage,
}

impl GrpcReader {
    /// Takes body bytes; returns how many of them it keeps.
    fn take(&mut self, mut bytes: &[u8], done: &mut Vec<GrpcMessage>) -> usize {
        let mut kept = 0;
        while !bytes.is_empty() {
            if self.prefix_len < GRPC_PREFIX_LEN {
                let n = bytes.len().min(GRPC_PREFIX_LEN - self.prefix_len);
                self.prefix[self.prefix_len..self.prefix_len + n].copy_from_slice(&bytes[..n]);
                self.prefix_len += n;
                bytes = &bytes[n..];
                if self.prefix_len < GRPC_PREFIX_LEN {
                    return kept;
                }
                let length = u32::from_be_bytes(self.prefix[1..].try_into().expect("4 bytes"));
                self.current = GrpcMessage {
                    compressed: self.prefix[0] & 1 != 0,
                    length,
                    data: Vec::new(),
                };
                self.remaining = length as usize;
            }
            let n = bytes.len().min(self.remaining);
            let room = SHOWN_GRPC_BYTES.saturating_sub(self.current.data.len());
            self.current.data.extend_from_slice(&bytes[..n.min(room)]);
            kept += n.min(room);
            self.remaining -= n;
            bytes = &bytes[n..];
            if self.remaining == 0 {
                done.push(std::mem::take(&mut self.current));
                self.prefix_len = 0;
            }
        }
        kept
    }

    /// The body ended; a message cut short goes out with a note.
    fn finish(&mut self, done: &mut Vec<GrpcMessage>) -> Option<String> {
        if self.prefix_len == 0 {
            return None;
        }
        let note = if self.prefix_len < GRPC_PREFIX_LEN {
            "the body ends inside a gRPC message's prefix".to_string()
        } else {
            done.push(std::mem::take(&mut self.current));
            format!("the last gRPC message ends {} bytes short", self.remaining)
        };
        self.prefix_len = 0;
        Some(note)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loona_hpack::Encoder;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let length = payload.len().to_be_bytes();
        let mut frame = length[length.len() - 3..].to_vec();
        frame.extend_from_slice(&[kind, flags]);
        frame.extend_from_slice(&stream.to_be_bytes());
        frame.extend_from_slice(payload);
        frame
    }

    fn headers(encoder: &mut Encoder<'_>, flags: u8, stream: u32, fields: &[(&str, &str)]) -> Vec<u8> {
        let block = encoder.encode(fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
        frame(HEADERS, flags | END_HEADERS, stream, &block)
    }

    fn settings() -> Vec<u8> {
        frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100])
    }

    /// A client's GET and POST on streams 1 and 3, the server's two
    /// responses interleaved, as each direction's bytes.
    fn exchange() -> (Vec<u8>, Vec<u8>) {
        let (mut client, mut server) = (Encoder::new(), Encoder::new());
        let mut sent = PREFACE.to_vec();
        sent.extend(settings());
        let get = [
            (":method", "GET"),
            (":scheme", "https"),
            (":path", "/a"),
            (":authority", "localhost"),
            ("user-agent", "test/1"),
        ];
        sent.extend(headers(&mut client, END_STREAM, 1, &get));
        let post = [
            (":method", "POST"),
            (":scheme", "https"),
            (":path", "/b"),
            (":authority", "localhost"),
            ("user-agent", "test/1"),
        ];
        sent.extend(headers(&mut client, 0, 3, &post));
        sent.extend(frame(DATA, 0, 3, b"name="));
        sent.extend(frame(DATA, END_STREAM, 3, b"ann"));
        let mut received = settings();
        received.extend(frame(SETTINGS, ACK, 0, &[]));
        received.extend(headers(
            &mut server,
            0,
            3,
            &[(":status", "201"), ("content-type", "text/plain")],
        ));
        received.extend(headers(
            &mut server,
            0,
            1,
            &[(":status", "200"), ("content-type", "text/plain")],
        ));
        received.extend(frame(DATA, 0, 1, b"hello "));
        received.extend(frame(DATA, 0, 3, b"created"));
        received.extend(frame(DATA, END_STREAM, 1, b"world"));
        received.extend(frame(DATA, END_STREAM, 3, &[]));
        (sent, received)
    }

    fn parts(out: Vec<Parsed>) -> Vec<Http2Part> {
        out.into_iter()
            .map(|parsed| match parsed {
                Parsed::Http2(part) => part,
                other => panic!("not HTTP/2: {other:?}"),
            })
            .collect()
    }

    fn fed(session: &mut Http2Session, pieces: &[(usize, &[u8])], piece: usize) -> Vec<Parsed> {
        let mut out = Vec::new();
        for (direction, bytes) in pieces {
            for chunk in bytes.chunks(piece) {
                session.push(*direction, chunk, SystemTime::UNIX_EPOCH, &mut out);
            }
        }
        out
    }

    #[test]
    fn concurrent_streams_become_their_messages_whatever_the_pieces() {
        let (sent, received) = exchange();
        assert!(is_http2(&sent) && is_http2(&received));
        for piece in [1, 2, 7, 9, 100, usize::MAX] {
            let mut session = Http2Session::default();
            let parts = parts(fed(&mut session, &[(0, &sent), (1, &received)], piece));
            assert!(session.at_rest());
            let summary: Vec<_> = parts
                .iter()
                .map(|p| {
                    (
                        p.stream,
                        p.direction,
                        p.kind.clone(),
                        String::from_utf8_lossy(&p.body).into_owned(),
                        p.is_whole(),
                    )
                })
                .collect();
            let request = |method: &str, path: &str| Kind::Request {
                method: method.into(),
                path: path.into(),
            };
            assert_eq!(
                summary,
                [
                    (1, 0, request("GET", "/a"), String::new(), true),
                    (3, 0, request("POST", "/b"), "name=ann".into(), true),
                    (1, 1, Kind::Response { status: 200 }, "hello world".into(), true),
                    (3, 1, Kind::Response { status: 201 }, "created".into(), true),
                ],
                "in pieces of {piece}"
            );
            assert_eq!(parts[1].headers[4], ("user-agent".into(), "test/1".into()));
            assert!(parts.iter().all(|p| p.notes.is_empty()), "{parts:?}");
            // All but the preface and the settings frames.
            let wire: usize = parts.iter().map(|p| p.wire_len).sum();
            assert_eq!(wire, sent.len() + received.len() - 24 - 15 - 15 - 9);
        }
    }

    #[test]
    fn a_capture_from_mid_connection_shows_what_it_can_decode() {
        let mut client = Encoder::new();
        let fields = [
            (":method", "GET"),
            (":scheme", "https"),
            (":path", "/first"),
            ("x-session", "s1"),
        ];
        // Went by before the capture: its literals entered the table.
        headers(&mut client, END_STREAM, 1, &fields);
        let mut later = headers(
            &mut client,
            END_STREAM,
            3,
            &[(":method", "GET"), (":path", "/second"), ("x-session", "s1")],
        );
        later.extend(frame(DATA, END_STREAM, 1, b"late body"));
        assert!(is_http2(&later));
        let mut session = Http2Session::default();
        let parts = parts(fed(&mut session, &[(0, &later)], usize::MAX));
        assert_eq!(
            parts[0].kind,
            Kind::Request {
                method: "GET".into(),
                path: "/second".into()
            }
        );
        assert!(parts[0].notes[0].contains("before the capture"), "{:?}", parts[0].notes);
        assert!(!parts[0].headers.iter().any(|(name, _)| name == "x-session"));
        assert_eq!(
            (parts[1].kind.clone(), &parts[1].body[..]),
            (Kind::Unknown, &b"late body"[..])
        );
    }

    #[test]
    fn grpc_bodies_are_cut_into_messages_and_trailers_kept() {
        let mut encoder = Encoder::new();
        let mut body = vec![0, 0, 0, 0, 5];
        body.extend_from_slice(b"hello");
        body.extend_from_slice(&[1, 0, 0, 0, 3, 0xff, 0x00, 0x01]);
        let mut bytes = headers(
            &mut encoder,
            0,
            1,
            &[(":status", "200"), ("content-type", "application/grpc+proto")],
        );
        bytes.extend(frame(DATA, 0, 1, &body[..7]));
        bytes.extend(frame(DATA, 0, 1, &body[7..]));
        bytes.extend(headers(&mut encoder, END_STREAM, 1, &[("grpc-status", "0")]));
        let mut session = Http2Session::default();
        assert!(fed(&mut session, &[(1, &bytes[..bytes.len() - 20])], 3).is_empty());
        let message = &session.streams.messages[0];
        assert_eq!(
            (session.streams.held, message.held),
            (message.counted(), message.counted())
        );
        let parts = parts(fed(&mut session, &[(1, &bytes[bytes.len() - 20..])], 3));
        assert_eq!(session.streams.held, 0);
        assert_eq!(parts.len(), 1);
        let grpc: Vec<_> = parts[0]
            .grpc
            .iter()
            .map(|m| (m.compressed, m.length, m.data.clone()))
            .collect();
        assert_eq!(grpc, [(false, 5, b"hello".to_vec()), (true, 3, vec![0xff, 0, 1])]);
        assert_eq!(parts[0].trailers, [("grpc-status".to_string(), "0".to_string())]);
        assert!(parts[0].body.is_empty());
    }

    #[test]
    fn continuation_padding_and_resets_are_followed() {
        let mut encoder = Encoder::new();
        let block = encoder.encode([
            (b":method".as_slice(), b"PUT".as_slice()),
            (b":path", b"/upload"),
            (b"x-long", &[b'x'; 300]),
        ]);
        let mut padded = vec![4];
        padded.extend_from_slice(&block[..100]);
        padded.extend_from_slice(&[0; 4]);
        let mut bytes = frame(HEADERS, PADDED, 5, &padded);
        bytes.extend(frame(CONTINUATION, END_HEADERS, 5, &block[100..]));
        bytes.extend(frame(DATA, PADDED, 5, &[2, b'a', b'b', 0, 0]));
        bytes.extend(frame(RST_STREAM, 0, 5, &8u32.to_be_bytes()));
        let mut session = Http2Session::default();
        let parts = parts(fed(&mut session, &[(0, &bytes)], 5));
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].headers[2].1.len(), 300);
        assert_eq!(parts[0].body, b"ab");
        assert_eq!(parts[0].notes, ["the stream was reset (CANCEL)"]);
        assert_eq!(parts[0].wire_len, bytes.len() - 13);
    }

    #[test]
    fn bytes_that_break_the_framing_are_shown_raw_until_frames_start_again() {
        let mut encoder = Encoder::new();
        let mut session = Http2Session::default();
        let mut out = Vec::new();
        session.push(0, &settings(), SystemTime::UNIX_EPOCH, &mut out);
        session.push(0, &frame(SETTINGS, 0xff, 3, &[1]), SystemTime::UNIX_EPOCH, &mut out);
        session.push(0, b"not frames at all", SystemTime::UNIX_EPOCH, &mut out);
        let next = headers(&mut encoder, END_STREAM, 7, &[(":method", "GET"), (":path", "/")]);
        session.push(0, &next, SystemTime::UNIX_EPOCH, &mut out);
        let raw: Vec<usize> = out
            .iter()
            .filter_map(|p| {
                if let Parsed::Raw(raw) = p {
                    Some(raw.len())
                } else {
                    None
                }
            })
            .collect();
        assert_eq!(raw, [9, 1, 17]);
        assert!(matches!(out.last(), Some(Parsed::Http2(part)) if part.stream == 7));
        // A direction whose first read starts inside a frame waits for frames.
        let mut mid_frame = vec![0x17];
        mid_frame.extend(frame(DATA, END_STREAM, 9, b"after"));
        let mut out = Vec::new();
        session.push(1, &mid_frame, SystemTime::UNIX_EPOCH, &mut out);
        session.push(1, &mid_frame[1..], SystemTime::UNIX_EPOCH, &mut out);
        assert!(matches!(&out[0], Parsed::Raw(raw) if raw.len() == mid_frame.len()));
        assert!(matches!(&out[1], Parsed::Http2(part) if part.body == b"after"));
    }

    #[test]
    fn held_bodies_stay_bounded_whatever_the_streams() {
        let mut session = Http2Session::default();
        let mut out = Vec::new();
        let mut encoder = Encoder::new();
        let large = "h".repeat(3000);
        for stream in (1..2 * MAX_MESSAGES as u32).step_by(2) {
            let bytes = headers(&mut encoder, 0, stream, &[(":method", "POST"), ("x-large", &large)]);
            session.push(0, &bytes, SystemTime::UNIX_EPOCH, &mut out);
            let held: usize = session.streams.messages.iter().map(Message::counted).sum();
            assert!(held < PART_BYTES, "{held} held");
            assert_eq!(session.streams.held, held);
        }
        let chunk = vec![b'z'; 16 * 1024];
        for round in 0..40u32 {
            for stream in (1..2 * MAX_MESSAGES as u32 + 40).step_by(2) {
                let bytes = frame(DATA, 0, stream, &chunk[..(round as usize * 997) % chunk.len() + 1]);
                session.push(0, &bytes, SystemTime::UNIX_EPOCH, &mut out);
                let held: usize = session.streams.messages.iter().map(Message::counted).sum();
                assert!(held < PART_BYTES, "{held} held");
                assert_eq!(session.streams.held, held);
                assert!(session.streams.messages.len() <= MAX_MESSAGES);
            }
        }
        session.finish(&mut out);
        assert!(session.at_rest());
    }

    #[test]
    fn only_frames_or_the_preface_are_taken_for_http2() {
        assert!(is_http2(&settings()));
        assert!(is_http2(&PREFACE[..10]));
        for other in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"\x00\x00\x00\x08\x04\xd2\x16\x2f",
            b"\x16\x03\x01\x00\xa5",
            &[0; 9],
            b"PR",
        ] {
            assert!(!is_http2(other), "{other:?}");
        }
    }
}
