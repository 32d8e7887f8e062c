//! Fuzz targets: each parser and decoder that takes bytes from outside
//! ecapture, driven with arbitrary input. `make fuzz` runs them under
//! libFuzzer (fuzz/); the unit tests replay the checked-in corpus of each,
//! crashes found so far included, on the stable toolchain.

use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::audit::{Activity, Assembler};
use crate::cli::Mode;
use crate::conn::ConnTracker;
use crate::event::{BufferPool, Direction, EventData, EventMeta, Reassembler, RecordDecoder};
use crate::modules::nss::{methods, secrets};
use crate::modules::shell::{CommandAssembler, Shell};
use crate::modules::{gnutls, gotls, mysqld, openssl, postgres};
use crate::probe::kernel_filter::{self, ClassicInstruction};
use crate::proto::http1::{Http1Session, Parsed};
use crate::sink::json::JsonSink;
use crate::sink::text::TextSink;
use crate::sink::{Record, Sink};
use crate::target::elf::ElfImage;

/// A fuzz target: any bytes in, no panic out.
pub type Target = fn(&[u8]);

/// The targets, by the name of their corpus directory under fuzz/corpus.
pub const TARGETS: &[(&str, Target)] = &[
    ("http1", http1),
    ("records", records),
    ("pcap_filter", pcap_filter),
    ("elf", elf),
    ("audit", audit),
    ("postgres", postgres_stream),
    ("mysql", mysql_stream),
    ("http2", http2_stream),
    ("hpack", hpack_blocks),
];

const SHOWN_BYTES: usize = 64 * 1024;

/// Both directions of a connection as a peer could send them: each step's
/// first byte picks the direction (bit 0), whether parts held back are
/// released first (bit 1), and how many of the following bytes go in.
/// Whatever comes out is rendered as text.
pub fn http1(data: &[u8]) {
    let mut session = Http1Session::default();
    let mut pool = BufferPool::default();
    let mut parsed = Vec::new();
    // Shown in part, as with -t: hexdumps of inflated megabytes would be
    // most of each run, and the cut is one more path to cover.
    let mut text = TextSink::new(std::io::sink(), false, Some(SHOWN_BYTES));
    let mut time = SystemTime::UNIX_EPOCH;
    let mut rest = data;
    while let Some((&control, after)) = rest.split_first() {
        let take = (usize::from(control >> 2) * 7 + 1).min(after.len());
        let (piece, next) = after.split_at(take);
        rest = next;
        time += Duration::from_millis(50);
        if control & 2 != 0 {
            session.release_parts(time - Duration::from_millis(100), &mut pool, &mut parsed);
        }
        session.push(
            usize::from(control & 1),
            EventData::Record(piece),
            time,
            &mut pool,
            &mut parsed,
        );
        render(&mut text, &mut parsed, &mut pool);
    }
    session.finish(&mut pool, &mut parsed);
    render(&mut text, &mut parsed, &mut pool);
}

fn render(text: &mut TextSink<std::io::Sink>, parsed: &mut Vec<Parsed>, pool: &mut BufferPool) {
    for payload in parsed.drain(..) {
        let record = Record {
            meta: EventMeta {
                timestamp: SystemTime::UNIX_EPOCH,
                pid: 1,
                tid: 1,
                uid: 0,
                comm: "fuzz".into(),
                fd: 3,
                conn_id: 1,
                direction: Direction::Egress,
                sockets: None,
            },
            payload,
        };
        let _ = text.emit(&record);
        record.payload.recycle(pool);
    }
}

/// Both directions of a PostgreSQL connection as its peers could send
/// them, rendered as text (see `two_directions`); the first step is taken
/// for the frontend's, as its StartupMessage would be.
pub fn postgres_stream(data: &[u8]) {
    let mut session = crate::proto::postgres::PostgresSession::new(0);
    two_directions(data, |direction, piece, out| session.push(direction, piece, out));
}

/// Both directions of a MySQL connection, as `postgres_stream`.
pub fn mysql_stream(data: &[u8]) {
    let mut session = crate::proto::mysql::MysqlSession::new(0);
    two_directions(data, |direction, piece, out| session.push(direction, piece, out));
}

/// Both directions of an HTTP/2 connection, as `postgres_stream`; steps
/// whose length is a multiple of 7 also release the parts held.
pub fn http2_stream(data: &[u8]) {
    let mut session = crate::proto::http2::Http2Session::default();
    let later = SystemTime::UNIX_EPOCH + Duration::from_secs(1);
    two_directions(data, |direction, piece, out| {
        session.push(direction, piece, SystemTime::UNIX_EPOCH, out);
        if piece.len() % 7 == 0 {
            session.release_parts(later, out);
        }
    });
}

/// Header blocks, each prefixed by its length (one byte), through one
/// HPACK decoder.
pub fn hpack_blocks(data: &[u8]) {
    let mut decoder = crate::proto::hpack::HeaderDecoder::default();
    let mut rest = data;
    while let Some((&length, after)) = rest.split_first() {
        let (block, next) = after.split_at(usize::from(length).min(after.len()));
        rest = next;
        let decoded = decoder.decode(block);
        let _ = decoded.notes();
    }
}

/// Feeds `data` to `push` in steps: each step's first byte picks the
/// direction (bit 0) and how many of the following bytes go in.
fn two_directions(data: &[u8], mut push: impl FnMut(usize, &[u8], &mut Vec<Parsed>)) {
    let mut text = TextSink::new(std::io::sink(), false, Some(SHOWN_BYTES));
    let mut pool = BufferPool::default();
    let mut parsed = Vec::new();
    let mut rest = data;
    while let Some((&control, after)) = rest.split_first() {
        let take = (usize::from(control >> 1) * 5 + 1).min(after.len());
        let (piece, next) = after.split_at(take);
        rest = next;
        push(usize::from(control & 1), piece, &mut parsed);
        render(&mut text, &mut parsed, &mut pool);
    }
}

/// The audit modules' records as their probes could send them, each
/// prefixed by its length (two bytes), through every module's assembler
/// (the shells', MySQL's and PostgreSQL's, whose protocol messages they
/// carry) and both sinks; each record is also read as a PostgreSQL message
/// and error response.
pub fn audit(data: &[u8]) {
    let mut assemblers: [Box<dyn Assembler>; 4] = [
        Box::new(CommandAssembler::new(Shell::Bash, None)),
        Box::new(CommandAssembler::new(Shell::Zsh, Some(1))),
        mysqld::assembler(),
        postgres::assembler(),
    ];
    let mut text = TextSink::new(std::io::sink(), false, Some(SHOWN_BYTES));
    let mut json = JsonSink::new(std::io::sink(), "fuzz", None);
    let mut out = Vec::new();
    let mut rest = data;
    while let [high, low, after @ ..] = rest {
        let take = usize::from(u16::from_be_bytes([*high, *low])).min(after.len());
        let (record, next) = after.split_at(take);
        rest = next;
        if let Some((&kind, body)) = record.split_first() {
            let _ = crate::proto::postgres_messages::parse(kind, body);
        }
        let _ = crate::proto::postgres_messages::error_fields(record);
        for assembler in &mut assemblers {
            assembler.on_record(record, &mut out);
        }
        show(&mut text, &mut json, &mut out);
    }
    for assembler in &mut assemblers {
        assembler.finish(&mut out);
    }
    show(&mut text, &mut json, &mut out);
}

fn show(text: &mut TextSink<std::io::Sink>, json: &mut JsonSink<std::io::Sink>, activities: &mut Vec<Activity>) {
    for activity in activities.drain(..) {
        let _ = text.activity(&activity);
        let _ = json.activity(&activity);
    }
}

/// Ring buffer records as the kernel could hand them over, each prefixed
/// by its length (two bytes), through decoding, reassembly, connection
/// tracking and the text sink.
pub fn records(data: &[u8]) {
    let mut decoder = RecordDecoder::default();
    let mut reassembler = Reassembler::default();
    let mut tracker = ConnTracker::default();
    let mut pool = BufferPool::default();
    let mut out = Vec::new();
    let mut text = TextSink::new(std::io::sink(), false, None);
    let mut rest = data;
    while let [high, low, after @ ..] = rest {
        let take = usize::from(u16::from_be_bytes([*high, *low])).min(after.len());
        let (record, next) = after.split_at(take);
        rest = next;
        if let Some(chunk) = decoder.decode(record)
            && let Some(event) = reassembler.push(chunk, &mut pool)
        {
            tracker.on_event(event, &mut pool, &mut out);
        }
        for record in out.drain(..) {
            let _ = text.emit(&record);
            record.payload.recycle(&mut pool);
        }
    }
    tracker.finish_all(&mut pool, &mut out);
    for record in out.drain(..) {
        let _ = text.emit(&record);
    }
}

/// Classic BPF programs, eight bytes an instruction, rewritten as eBPF.
pub fn pcap_filter(data: &[u8]) {
    let filter: Vec<ClassicInstruction> = data
        .chunks_exact(8)
        .map(|i| ClassicInstruction {
            code: u16::from_le_bytes([i[0], i[1]]),
            jt: i[2],
            jf: i[3],
            k: u32::from_le_bytes([i[4], i[5], i[6], i[7]]),
        })
        .collect();
    let _ = kernel_filter::translate(&filter, -1);
}

/// A file given with --libssl, --gnutls, --nspr or --elfpath: whatever it
/// holds, inspecting it for every mode (a Go program's build info and
/// function table too), and running each of NSS's searches on it, ends in
/// hooks or an error.
pub fn elf(data: &[u8]) {
    let Ok(image) = ElfImage::from_bytes(Path::new("fuzz-input.so"), data.to_vec()) else {
        return;
    };
    for mode in [Mode::Text, Mode::Keylog] {
        let _ = openssl::inspect(&image, mode, None);
        let _ = gnutls::inspect(&image, mode);
    }
    let go = gotls::GoTls::default();
    let _ = go.inspect(&image, Mode::Text);
    let _ = go.inspect(&image, Mode::Keylog);
    let _ = methods::locate(&image);
    let _ = methods::descriptor_path(&image);
    let _ = secrets::key_log_call(&image, &image);
    let _ = secrets::softoken_stores(&image);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every input of every target's corpus, the crashes found so far
    /// among them, runs to its end.
    #[test]
    fn corpus_replays() {
        let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
        for (name, target) in TARGETS {
            let inputs: Vec<_> = std::fs::read_dir(corpus.join(name))
                .unwrap_or_else(|err| panic!("fuzz/corpus/{name}: {err}"))
                .map(|entry| entry.unwrap().path())
                .collect();
            assert!(!inputs.is_empty(), "fuzz/corpus/{name} is empty");
            for input in inputs {
                let data = std::fs::read(&input).unwrap();
                let replayed = std::panic::catch_unwind(|| target(&data));
                assert!(replayed.is_ok(), "{name}: {} panics", input.display());
            }
        }
    }
}
