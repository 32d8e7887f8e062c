//! One capture from start to exit: discover, load, attach, then move records
//! from the ring buffer through reassembly, connection tracking and parsing
//! to the sinks until SIGINT or SIGTERM.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::fmt;
use std::fs::File;
use std::io::Write;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use libbpf_rs::{AsRawLibbpf, MapCore, PerfBuffer, PerfBufferBuilder, RingBuffer, RingBufferBuilder};
use tracing::{debug, info, warn};

use crate::cli::{Config, Mode};
use crate::conn::ConnTracker;
use crate::event::{BufferPool, Comm, Reassembler, RecordDecoder};
use crate::keys::SessionSecrets;
use crate::modules::{self, HookTarget, Module, Tracepoints};
use crate::new_code::{Finding, Request, Seen, file_identity, inspect_reported};
use crate::probe::kernel_filter;
use crate::probe::packets::{self, LinkLayer, OwnerLookup, PacketProbes, ProcOwners, RawPacketMeta};
use crate::probe::readiness::{Pace, Readiness};
use crate::probe::{
    self, Flavor, Generation, LoadedProbes, Lost, ProbeSettings, RawForeignTls, RawKeylogLine, RawMasterSecret,
    SharedWord,
};
use crate::procnet;
use crate::sink::keylog::KeylogWriter;
use crate::sink::pcapng::PacketFile;
use crate::sink::{self, Record, Sink};
use crate::target::elf::ElfImage;
use crate::target::foreign::ForeignTls;
use crate::target::libpath;

/// How long records may wait in the ring buffer when no wakeup came.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(50);
const LOST_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Records the reader takes from each ring per round. A consume that ran
/// for as long as records came held the round's other work back 50-70 ms
/// at 380,000 records/s: the processes to look at, the programs to hook,
/// and the sockets a Go program asked for, whose records went unnamed.
const RING_BATCH: usize = 4096;

#[derive(Debug, Default, serde::Serialize)]
pub struct Summary {
    pub events: u64,
    pub bytes: u64,
    pub lost_records: u64,
    /// The payload bytes of those records.
    pub lost_bytes: u64,
    pub broken_calls: u64,
    /// Sessions whose keys were written.
    pub sessions: u64,
    pub packets: u64,
    pub lost_packets: u64,
    /// Panics caught in handling a record: bugs, reported and survived.
    pub internal_errors: u64,
}

/// Everything that happens to a record after the kernel hands it over.
struct Pipeline<'s> {
    decoder: RecordDecoder,
    reassembler: Reassembler,
    /// Buffers for payloads, reused from event to event.
    buffers: BufferPool,
    tracker: ConnTracker,
    sinks: Vec<&'s mut dyn Sink>,
    keylog: Option<KeylogWriter>,
    packets: Option<PacketFile<Box<dyn Write>>>,
    keyed_sessions: RecentSet<[u8; 32]>,
    /// Key log lines written, for libraries that report secrets one by one.
    keylog_lines_written: RecentSet<String>,
    /// Packet owners from /proc, where the kernel cannot name them.
    proc_owners: Option<ProcOwners>,
    /// The kernel's connection owners, for packets that left before theirs
    /// was known.
    owner_lookup: Option<OwnerLookup>,
    /// Records completed by the latest event, reused from event to event.
    records: Vec<Record>,
    summary: Summary,
    output_failures: OutputFailures,
}

/// Failed writes of output, reported at most once a second: a full disk
/// fails every record, hundreds of thousands a second.
#[derive(Default)]
pub(crate) struct OutputFailures {
    unreported: u64,
    last_report: Option<Instant>,
    /// The reader of a pipe we write to has gone (`ecapture | head`, a
    /// tshark that closed): the capture stops, as tcpdump does.
    pub(crate) reader_gone: bool,
}

impl OutputFailures {
    pub(crate) fn record(&mut self, err: &std::io::Error) {
        if err.kind() == std::io::ErrorKind::BrokenPipe || self.reader_gone {
            self.reader_gone = true;
            return;
        }
        self.unreported += 1;
        if self.last_report.is_some_and(|at| at.elapsed() < LOST_CHECK_INTERVAL) {
            return;
        }
        warn!("writing output failed: {err} ({} failed writes)", self.unreported);
        self.unreported = 0;
        self.last_report = Some(Instant::now());
    }
}

/// The latest few thousand of something seen (both ends of a connection
/// report its secrets within moments of each other), in bounded memory
/// however many sessions a capture sees.
struct RecentSet<T> {
    members: HashSet<T>,
    order: std::collections::VecDeque<T>,
}

impl<T> Default for RecentSet<T> {
    fn default() -> Self {
        RecentSet {
            members: HashSet::new(),
            order: std::collections::VecDeque::new(),
        }
    }
}

impl<T: Clone + Eq + std::hash::Hash> RecentSet<T> {
    const CAPACITY: usize = 4096;

    fn contains(&self, item: &T) -> bool {
        self.members.contains(item)
    }

    /// Whether `item` is new; the oldest goes once the set is full.
    fn insert(&mut self, item: &T) -> bool {
        if !self.members.insert(item.clone()) {
            return false;
        }
        self.order.push_back(item.clone());
        if self.order.len() > Self::CAPACITY
            && let Some(oldest) = self.order.pop_front()
        {
            self.members.remove(&oldest);
        }
        true
    }
}

/// Runs one ring buffer callback's work on the pipeline. A panic must not
/// reach libbpf's C caller, where it cannot unwind and aborts ecapture: it
/// is caught here, counted and reported, and the capture goes on with the
/// next record.
fn guarded(pipeline: &RefCell<Pipeline<'_>>, handle: impl FnOnce(&mut Pipeline<'_>)) {
    let caught = std::panic::catch_unwind(AssertUnwindSafe(|| handle(&mut pipeline.borrow_mut())));
    if caught.is_err() {
        let mut pipeline = pipeline.borrow_mut();
        pipeline.summary.internal_errors += 1;
        warn!(
            "a bug in ecapture was caught while handling a record (its details are above); that record is lost, and the capture goes on ({} so far)",
            pipeline.summary.internal_errors
        );
    }
}

impl<'s> Pipeline<'s> {
    fn new(
        sinks: Vec<&'s mut dyn Sink>,
        keylog: Option<KeylogWriter>,
        packets: Option<PacketFile<Box<dyn Write>>>,
        proc_owners: Option<ProcOwners>,
        owner_lookup: Option<OwnerLookup>,
    ) -> Self {
        Pipeline {
            decoder: RecordDecoder::default(),
            reassembler: Reassembler::default(),
            buffers: BufferPool::default(),
            tracker: ConnTracker::default(),
            sinks,
            keylog,
            packets,
            keyed_sessions: RecentSet::default(),
            keylog_lines_written: RecentSet::default(),
            proc_owners,
            owner_lookup,
            records: Vec::new(),
            summary: Summary::default(),
            output_failures: OutputFailures::default(),
        }
    }

    fn on_record(&mut self, record: &[u8]) {
        let Some(chunk) = self.decoder.decode(record) else {
            warn!(len = record.len(), "dropping a malformed ring buffer record");
            return;
        };
        let Some(event) = self.reassembler.push(chunk, &mut self.buffers) else {
            return;
        };
        self.summary.events += 1;
        self.summary.bytes += event.data.as_slice().len() as u64;
        self.emit_tracked(|tracker, buffers, out| tracker.on_event(event, buffers, out));
    }

    /// Writes out the records `track` has the connection tracker give up,
    /// and gives their raw buffers back for the next events.
    fn emit_tracked(&mut self, track: impl FnOnce(&mut ConnTracker, &mut BufferPool, &mut Vec<Record>)) {
        let mut records = std::mem::take(&mut self.records);
        track(&mut self.tracker, &mut self.buffers, &mut records);
        for record in records.drain(..) {
            self.emit(&record);
            record.payload.recycle(&mut self.buffers);
        }
        self.records = records;
    }

    /// A session's secrets: to the key log file and into the pcapng file.
    fn on_secrets(&mut self, record: &[u8]) {
        // Perf samples are only 4-byte aligned: copy the record out.
        let mut raw = RawMasterSecret::default();
        if plain::copy_from_bytes(&mut raw, record).is_err() {
            warn!(len = record.len(), "dropping a malformed secrets record");
            return;
        }
        let secrets = SessionSecrets::from_raw(&raw);
        // Both ends of a connection share its client random and its secrets.
        if self.keyed_sessions.contains(&secrets.client_random) {
            return;
        }
        let lines = match secrets.keylog_lines() {
            Ok(lines) => lines,
            Err(why) => {
                warn!("no keys for a session of pid {} {}: {why}", secrets.pid, secrets.comm);
                return;
            }
        };
        self.keyed_sessions.insert(&secrets.client_random);
        self.write_keylog_lines(&lines, secrets.pid, &secrets.comm.to_string());
        self.summary.sessions += 1;
        let random = hex::encode(&secrets.client_random[..8]);
        info!(
            "keys of session {random}... (pid {} {}) written",
            secrets.pid, secrets.comm
        );
    }

    /// One secret as the library handed it to its key log hook: a line of
    /// the key log, once however many ends of the connection report it.
    fn on_keylog_line(&mut self, record: &[u8]) {
        let mut raw = RawKeylogLine::default();
        if plain::copy_from_bytes(&mut raw, record).is_err() {
            warn!(len = record.len(), "dropping a malformed key log record");
            return;
        }
        let label_len = raw.label.iter().position(|&c| c == 0).unwrap_or(raw.label.len());
        let mut label: String = raw.label[..label_len].iter().map(|&c| c as u8 as char).collect();
        if label.is_empty() && raw.label_address != 0 {
            label = label_in_process(raw.pid, raw.label_address, raw.label_len).unwrap_or_default();
        }
        let secret_len = (raw.secret_len as usize).min(raw.secret.len());
        if label.is_empty()
            || !label
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        {
            warn!("dropping a key log record with the label {label:?}");
            return;
        }
        let line = format!(
            "{label} {} {}\n",
            hex::encode(raw.client_random),
            hex::encode(&raw.secret[..secret_len])
        );
        if !self.keylog_lines_written.insert(&line) {
            return;
        }
        self.write_keylog_lines(&line, raw.pid, &Comm::from_kernel(&raw.comm).to_string());
        if self.keyed_sessions.insert(&raw.client_random) {
            self.summary.sessions += 1;
            let random = hex::encode(&raw.client_random[..8]);
            info!(
                "keys of session {random}... (pid {} {}) written",
                raw.pid,
                Comm::from_kernel(&raw.comm)
            );
        }
    }

    fn write_keylog_lines(&mut self, lines: &str, pid: u32, comm: &str) {
        if let Some(keylog) = self.keylog.as_mut()
            && let Err(err) = keylog.write(lines)
        {
            warn!("writing the key log failed: {err}");
        }
        for sink in &mut self.sinks {
            if let Err(err) = sink.secrets(pid, comm, lines) {
                self.output_failures.record(&err);
            }
        }
        if let Some(packets) = self.packets.as_mut()
            && let Err(err) = packets.write_secrets(lines)
        {
            self.output_failures.record(&err);
        }
    }

    /// A packet sample: its header, then its bytes.
    fn on_packet(&mut self, sample: &[u8]) {
        let Some(packets) = self.packets.as_mut() else { return };
        let header_len = std::mem::size_of::<RawPacketMeta>();
        // perf hands samples over at 4-byte alignment: copy the header out.
        let mut meta = RawPacketMeta::default();
        if plain::copy_from_bytes(&mut meta, sample).is_err() {
            warn!(len = sample.len(), "dropping a malformed packet sample");
            return;
        }
        let Some(data) = sample.get(header_len..header_len + meta.captured_len as usize) else {
            warn!(len = sample.len(), "dropping a truncated packet sample");
            return;
        };
        let comment = if meta.pid != 0 {
            Some(format!("pid={} comm={}", meta.pid, Comm::from_kernel(&meta.comm)))
        } else {
            self.proc_owners
                .as_mut()
                .and_then(|owners| owners.owner(&meta))
                .map(|(pid, comm)| format!("pid={pid} comm={comm}"))
        };
        let time = self.decoder.wall_clock(meta.timestamp_ns);
        packets.push(time, data, meta.len, comment, packets::flow_bytes(&meta));
    }

    fn emit(&mut self, record: &Record) {
        for sink in &mut self.sinks {
            if let Err(err) = sink.emit(record) {
                self.output_failures.record(&err);
            }
        }
    }

    /// Hands buffered output over, so that events show up live; with
    /// `everything`, packets still held back are written too.
    fn flush(&mut self, everything: bool) {
        self.emit_tracked(ConnTracker::sweep);
        for sink in &mut self.sinks {
            if let Err(err) = sink.flush() {
                self.output_failures.record(&err);
            }
        }
        let owners = self.owner_lookup.as_ref();
        let mut name_flow = |flow: &[u8]| owners?.comment(flow);
        if let Some(packets) = self.packets.as_mut()
            && let Err(err) = packets.release(everything, &mut name_flow)
        {
            self.output_failures.record(&err);
        }
    }

    fn finish(&mut self) {
        self.emit_tracked(ConnTracker::finish_all);
        self.flush(true);
        self.summary.packets = self.packets.as_ref().map_or(0, |p| p.packets_written);
        self.summary.broken_calls = self.reassembler.broken_calls;
    }
}

pub fn run<M: Module + Sync>(module: &M, config: &Config, sinks: Vec<&mut dyn Sink>) -> Result<Summary>
where
    M::Layouts: Send,
{
    let started = Instant::now();
    let targets = module.discover(config)?;
    probe::ensure_tracefs()?;
    let flavor = Flavor::choose(config.btf)?;
    let generation = Generation::choose();
    let keylog = match &config.keylog_file {
        Some(path) => Some(
            KeylogWriter::create(path).with_context(|| format!("cannot open the key log file {}", path.display()))?,
        ),
        None => None,
    };
    let (mut packet_probes, packets) = match config.mode {
        Mode::Pcap => {
            let (probes, file) = start_packet_capture(config, flavor, generation)?;
            (Some(probes), Some(file))
        }
        _ => (None, None),
    };
    let mut tls = load_tls_objects(module, config, flavor, generation, &targets)?;

    let stop = stop_on_signals()?;

    // Only the CO-RE build names connections in the kernel.
    let proc_owners = (config.mode == Mode::Pcap && flavor == Flavor::NoCore).then(ProcOwners::default);
    let owner_lookup = match (&packet_probes, flavor) {
        (Some(probes), Flavor::Core) => Some(probes.owner_lookup()?),
        _ => None,
    };
    let pipeline = RefCell::new(Pipeline::new(sinks, keylog, packets, proc_owners, owner_lookup));
    // Every object has its data and wakeups; secrets and foreign handshakes
    // only where its module reports them.
    type Channels<'o> = (
        libbpf_rs::Map<'o>,
        libbpf_rs::Map<'o>,
        Option<libbpf_rs::Map<'o>>,
        Option<libbpf_rs::Map<'o>>,
        Option<libbpf_rs::Map<'o>>,
        libbpf_rs::Map<'o>,
    );
    let maps: Vec<Channels<'_>> = tls
        .objects
        .iter()
        .map(|probes| {
            Ok((
                probes.map("events")?,
                probes.map("reader_wakeups")?,
                probes.map("key_events").ok(),
                probes.map("foreign_tls").ok(),
                probes.map("keylog_lines").ok(),
                probes.map("execs")?,
            ))
        })
        .collect::<Result<_>>()?;
    let lost_packets = Cell::new(0u64);
    let on_data = |record: &[u8]| guarded(&pipeline, |pipeline| pipeline.on_record(record));
    let time_order = RefCell::new(TimeOrder::default());
    let queue_data = |record: &[u8]| time_order.borrow_mut().push(record);
    let on_secrets = |record: &[u8]| guarded(&pipeline, |pipeline| pipeline.on_secrets(record));
    let on_keylog_line = |record: &[u8]| guarded(&pipeline, |pipeline| pipeline.on_keylog_line(record));
    // Processes that started, looked at between reads.
    let new_processes = RefCell::new(Vec::new());
    let queue_exec = |record: &[u8]| {
        if let Some(pid) = record.get(..4).and_then(|bytes| bytes.try_into().ok()) {
            new_processes.borrow_mut().push(u32::from_ne_bytes(pid));
        }
    };
    // A block, so that the builder's borrows of the callbacks end with it.
    let (ring, mut perf_buffers) = {
        let mut builder = RingBufferBuilder::new();
        let mut rings = 0;
        let mut perf_buffers = Vec::new();
        for (probes, (events, reader_wakeups, key_events, foreign_tls, keylog_lines, execs)) in
            tls.objects.iter().zip(&maps)
        {
            match probes.generation() {
                Generation::Current => {
                    builder.add(events, |record| {
                        on_data(record);
                        0
                    })?;
                    // Only wakes the reader, which then consumes the other rings
                    // and attaches what was asked for.
                    builder.add(reader_wakeups, |_| 0)?;
                    if let Some(key_events) = key_events {
                        builder.add(key_events, |record| {
                            on_secrets(record);
                            0
                        })?;
                    }
                    if let Some(foreign_tls) = foreign_tls {
                        builder.add(foreign_tls, |record| {
                            report_foreign_tls(record);
                            0
                        })?;
                    }
                    if let Some(keylog_lines) = keylog_lines {
                        builder.add(keylog_lines, |record| {
                            on_keylog_line(record);
                            0
                        })?;
                    }
                    builder.add(execs, |record| {
                        queue_exec(record);
                        0
                    })?;
                    rings += 1;
                }
                Generation::Legacy => {
                    // The programs count what the perf buffers had no room for.
                    let data_pages = perf_pages(config.ring_buffer_bytes);
                    perf_buffers.push(perf_channel(events, data_pages, queue_data)?);
                    perf_buffers.push(perf_channel(reader_wakeups, 1, |_| ())?);
                    if let Some(key_events) = key_events {
                        perf_buffers.push(perf_channel(key_events, 16, on_secrets)?);
                    }
                    if let Some(foreign_tls) = foreign_tls {
                        perf_buffers.push(perf_channel(foreign_tls, 1, report_foreign_tls)?);
                    }
                    if let Some(keylog_lines) = keylog_lines {
                        perf_buffers.push(perf_channel(keylog_lines, 16, on_keylog_line)?);
                    }
                    perf_buffers.push(perf_channel(execs, 4, queue_exec)?);
                }
            }
        }
        let ring = if rings > 0 { Some(builder.build()?) } else { None };
        (ring, perf_buffers)
    };
    drop(maps);
    if let Some(probes) = &packet_probes {
        perf_buffers.push(probes.perf_buffer(
            |_cpu, sample| guarded(&pipeline, |pipeline| pipeline.on_packet(sample)),
            |_cpu, count| lost_packets.set(lost_packets.get() + count),
        )?);
    }
    let announced: Vec<_> = ring.iter().map(RingBuffer::epoll_fd).collect();
    let level: Vec<_> = perf_buffers.iter().map(PerfBuffer::epoll_fd).collect();
    let readiness = Readiness::new(&announced, &level)?;
    // Bounded in rounds; whole in the last drain.
    let consume_all = |per_ring: usize| -> Result<()> {
        if let Some(ring) = &ring {
            consume_rings(ring, per_ring)?;
        }
        for perf in &perf_buffers {
            perf.consume()?;
        }
        if !time_order.borrow().records.is_empty() {
            time_order.borrow_mut().seal();
            for perf in &perf_buffers {
                perf.consume()?;
            }
            time_order.borrow_mut().release(false, on_data);
        }
        Ok(())
    };

    let attached = tls.objects.iter().map(LoadedProbes::attached).sum::<usize>()
        + packet_probes.as_ref().map_or(0, PacketProbes::attached);
    let on_demand = if tls.on_demand.is_empty() {
        ""
    } else {
        ", more if a session's BIO is not a socket"
    };
    let programs = match generation {
        Generation::Current => "",
        Generation::Legacy => ", programs for kernels before 5.13",
    };
    info!(
        "ready: module {} in {:?} mode ({flavor:?} BPF{programs}), {attached} probes attached ({} syscall tracepoints{on_demand}) in {} ms; press Ctrl-C to stop",
        module.name(),
        config.mode,
        tls.tracepoints,
        started.elapsed().as_millis()
    );

    let mut pace = Pace::new(config.ring_buffer_bytes, POLL_INTERVAL);
    let wake_words: Vec<SharedWord> = tls
        .objects
        .iter()
        .map(LoadedProbes::reader_wake_word)
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .flatten()
        .collect();
    // What processes bring in is looked at beside the reader, which keeps
    // draining the buffers meanwhile.
    let seen = std::mem::take(&mut tls.seen);
    std::thread::scope(|scope| -> Result<()> {
        let (requests, inspector_requests) = mpsc::channel();
        let (inspector_findings, findings) = mpsc::channel();
        let waker = readiness.waker();
        std::thread::Builder::new()
            .name("inspector".into())
            .spawn_scoped(scope, move || {
                inspect_reported(module, config, seen, &inspector_requests, &inspector_findings, &waker)
            })
            .context("starting the thread that inspects new programs")?;
        let mut lost_reported = Lost::default();
        let mut last_lost_check = Instant::now();
        // The longest the reader went without sleeping since the last check,
        // and since when it is awake: what it did while records were lost.
        let mut longest_awake = Duration::ZERO;
        let mut awake_since = Instant::now();
        while !stop.load(Ordering::Relaxed) && !pipeline.borrow().output_failures.reader_gone {
            // Records committed while the word was 0 announced nothing: with a
            // batch of those waiting the reader must not sleep, or a ring they
            // filled (which takes no record, hence sends no wakeup) would stay
            // full until the timeout. Below that, the timeout or the next
            // records will wake it.
            let sleep = pace.next_sleep();
            wake_words.iter().for_each(|word| word.store(sleep.wake_bytes));
            let waiting = ring.as_ref().map_or(0, waiting_bytes);
            if waiting < pace.batch_bytes() {
                let fell_asleep = Instant::now();
                longest_awake = longest_awake.max(fell_asleep.saturating_duration_since(awake_since));
                pace.sleeping(waiting, fell_asleep);
                let polled = readiness.wait(sleep.timeout);
                awake_since = Instant::now();
                pace.woke(ring.as_ref().map_or(0, waiting_bytes), awake_since);
                polled.context("reading events from the kernel")?;
            }
            wake_words.iter().for_each(|word| word.store(0));
            consume_all(RING_BATCH).context("reading events from the kernel")?;
            pipeline.borrow_mut().flush(false);
            tls.attach_wanted_tracepoints(&mut || {
                if let Err(err) = consume_all(RING_BATCH) {
                    warn!("reading events from the kernel: {err:#}");
                }
            });
            let mut started = std::mem::take(&mut *new_processes.borrow_mut());
            // A program loading its modules reports itself once per dlopen: look
            // at each process once per round, not once per report.
            started.sort_unstable();
            started.dedup();
            for pid in started {
                // Only fails once the inspector has stopped, and it stops only
                // when this loop hangs up.
                let _ = requests.send(Request::Look(pid));
            }
            while let Ok(finding) = findings.try_recv() {
                tls.apply(module, config, finding, &requests);
            }
            if last_lost_check.elapsed() >= LOST_CHECK_INTERVAL {
                last_lost_check = Instant::now();
                let awake = std::mem::take(&mut longest_awake).max(awake_since.elapsed());
                let lost = total_lost(&tls.objects)?;
                if lost.records > lost_reported.records {
                    warn!(
                        "{} records ({} payload bytes) lost so far: {}",
                        lost.records,
                        lost.bytes,
                        why_records_were_lost(awake, config.ring_buffer_bytes, pace.filling())
                    );
                    lost_reported = lost;
                }
            }
        }
        // Hanging up ends the inspector, which the scope waits for.
        drop(requests);
        Ok(())
    })?;

    if pipeline.borrow().output_failures.reader_gone {
        info!("the output's reader has gone (broken pipe): stopping");
    }
    // Detach first so that nothing new arrives, then drain what is left.
    for probes in &mut tls.objects {
        probes.detach();
    }
    consume_all(usize::MAX)?;
    time_order.borrow_mut().release(true, on_data);
    let lost = total_lost(&tls.objects)?;
    drop((readiness, ring, perf_buffers));
    if let Some(probes) = packet_probes.as_mut() {
        probes.detach();
    }
    let mut pipeline = pipeline.into_inner();
    pipeline.finish();
    pipeline.summary.lost_records = lost.records;
    pipeline.summary.lost_bytes = lost.bytes;
    pipeline.summary.lost_packets = lost_packets.get();
    Ok(pipeline.summary)
}

/// A reader that keeps up finishes a round within this, bounded as rounds are.
const LONGEST_ROUND: Duration = Duration::from_millis(100);

/// Why the ring buffer of `ring_bytes` overflowed, from the longest the
/// reader went without sleeping and the rate it last saw the ring fill at (0
/// when it cannot tell): behind with its work, or away while the ring filled,
/// which only a larger ring absorbs.
fn why_records_were_lost(longest_awake: Duration, ring_bytes: u32, filling: f64) -> String {
    if longest_awake >= LONGEST_ROUND {
        return format!(
            "ecapture went {:.1} s without sleeping: its output, or its own work, is slower than the traffic",
            longest_awake.as_secs_f64()
        );
    }
    let mib = f64::from(ring_bytes) / f64::from(1u32 << 20);
    let holds = if filling > 0.0 {
        format!(
            ", {:.1} ms at the last {:.0} MB/s",
            f64::from(ring_bytes) / filling * 1e3,
            filling / 1e6
        )
    } else {
        String::new()
    };
    format!("the ring buffer ({mib:.0} MiB{holds}) filled while ecapture was asleep or off its CPU: raise --mapsize")
}

/// The flag SIGINT and SIGTERM set: the capture ends at the next round.
pub(crate) fn stop_on_signals() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop)).context("installing signal handlers")?;
    }
    Ok(stop)
}

/// A process did a TLS handshake through a library this module does not
/// capture: say so once, rather than capture nothing silently.
fn report_foreign_tls(record: &[u8]) {
    let mut event = RawForeignTls::default();
    if plain::copy_from_bytes(&mut event, record).is_err() {
        return;
    }
    if let Some(library) = ForeignTls::from_raw(event.library) {
        library.report(event.pid, &Comm::from_kernel(&event.comm).to_string());
    }
}

/// The legacy programs' records, which come through one perf buffer per CPU,
/// drained one after the other: a thread that moved from CPU 0 to CPU 1 can
/// have its later record read from CPU 1 in a drain that read CPU 0 before
/// its earlier record got there. That earlier record is committed before the
/// drain ends, so the next drain has it. So the buffers are drained twice in
/// a row, and the records of the first drain go on in time order, with those
/// of the second that sort before them; the rest wait for the next pair.
#[derive(Default)]
struct TimeOrder {
    bytes: Vec<u8>,
    /// (time, drain, start, length) of each record in `bytes`.
    records: Vec<(u64, u64, usize, usize)>,
    drain: u64,
}

impl TimeOrder {
    fn push(&mut self, record: &[u8]) {
        let mut header = probe::RawDataHeader::default();
        // A malformed record goes on first, for the decoder to report.
        let time = plain::copy_from_bytes(&mut header, record).map_or(0, |()| header.timestamp_ns);
        self.records.push((time, self.drain, self.bytes.len(), record.len()));
        self.bytes.extend_from_slice(record);
    }

    /// Ends a drain: what was pushed so far may go at the next `release`.
    fn seal(&mut self) {
        self.drain += 1;
    }

    /// Hands on, in time order, the records of sealed drains and the newer
    /// ones that precede them; `everything` hands on all.
    fn release(&mut self, everything: bool, mut each: impl FnMut(&[u8])) {
        // Stable: the records of one call share its time, in order.
        self.records.sort_by_key(|(time, _, _, _)| *time);
        let release = match everything {
            true => self.records.len(),
            false => self
                .records
                .iter()
                .rposition(|(_, drain, _, _)| *drain < self.drain)
                .map_or(0, |last| last + 1),
        };
        for (_, _, start, len) in self.records.drain(..release) {
            each(&self.bytes[start..start + len]);
        }
        // Keep the bytes of the records held back only.
        let old = std::mem::take(&mut self.bytes);
        for (_, _, start, len) in &mut self.records {
            let from = *start;
            *start = self.bytes.len();
            self.bytes.extend_from_slice(&old[from..from + *len]);
        }
    }
}

/// A key log label the probe could not read (its page not yet in the
/// process's page tables): read through /proc/PID/mem, which faults it in.
/// `len` 0 means NUL-terminated.
fn label_in_process(pid: u32, address: u64, len: u32) -> Option<String> {
    use std::os::unix::fs::FileExt;

    const LABEL_MAX: usize = 47;
    let mut buffer = [0u8; LABEL_MAX];
    let wanted = match usize::try_from(len).ok()? {
        0 => LABEL_MAX,
        len if len <= LABEL_MAX => len,
        _ => return None,
    };
    let mem = File::open(format!("/proc/{pid}/mem")).ok()?;
    let read = mem.read_at(&mut buffer[..wanted], address).ok()?;
    let label = &buffer[..read];
    let end = label.iter().position(|&b| b == 0).unwrap_or(label.len());
    Some(String::from_utf8_lossy(&label[..end]).into_owned())
}

/// A perf buffer of `pages` per CPU whose samples go to `on_sample`.
pub(crate) fn perf_channel<'cb>(
    map: &libbpf_rs::Map<'_>,
    pages: usize,
    on_sample: impl Fn(&[u8]) + 'cb,
) -> Result<PerfBuffer<'cb>> {
    PerfBufferBuilder::new(map)
        .pages(pages)
        .sample_cb(move |_cpu, sample: &[u8]| on_sample(sample))
        .build()
        .with_context(|| format!("opening the perf buffer {}", map.name().to_string_lossy()))
}

/// Per-CPU pages for the legacy programs' data: as many bytes in all as the
/// ring buffer would have (perf wants a power of two).
pub(crate) fn perf_pages(ring_buffer_bytes: u32) -> usize {
    // SAFETY: sysconf has no memory effects.
    let (cpus, page) = unsafe {
        (
            libc::sysconf(libc::_SC_NPROCESSORS_ONLN).max(1) as usize,
            libc::sysconf(libc::_SC_PAGESIZE).max(4096) as usize,
        )
    };
    (ring_buffer_bytes as usize / cpus / page).max(8).next_power_of_two()
}

/// The rings of `ring`, each a map the programs write to.
fn rings<'a>(ring: &'a RingBuffer<'_>) -> impl Iterator<Item = *mut libbpf_sys::ring> + 'a {
    let raw = ring.as_libbpf_object().as_ptr();
    (0..)
        .map(move |index| {
            // SAFETY: `raw` is a live ring_buffer; an index past its rings
            // yields null, which ends the walk.
            unsafe { libbpf_sys::ring_buffer__ring(raw, index) }
        })
        .take_while(|one| !one.is_null())
}

/// Bytes committed to any of the ring buffers and not yet consumed.
fn waiting_bytes(ring: &RingBuffer<'_>) -> u64 {
    // SAFETY: a ring returned by ring_buffer__ring lives as long as its ring_buffer.
    rings(ring)
        .map(|one| unsafe { libbpf_sys::ring__avail_data_size(one) })
        .sum()
}

/// Hands up to `per_ring` records of each ring to its callback, so that a
/// flood in one holds back neither the others nor the reader's round.
fn consume_rings(ring: &RingBuffer<'_>, per_ring: usize) -> Result<()> {
    for one in rings(ring) {
        // SAFETY: a ring returned by ring_buffer__ring lives as long as its
        // ring_buffer, whose callbacks are alive for as long as it is.
        let consumed = unsafe { libbpf_sys::ring__consume_n(one, per_ring as _) };
        if consumed < 0 {
            anyhow::bail!(
                "consuming a ring buffer: {}",
                std::io::Error::from_raw_os_error(-consumed)
            );
        }
    }
    Ok(())
}

fn total_lost(objects: &[LoadedProbes]) -> Result<Lost> {
    objects
        .iter()
        .try_fold(Lost::default(), |sum, probes| Ok(sum + probes.lost()?))
}

/// The BPF objects of a capture, with the syscall tracepoints each attached
/// at load, and the objects that attach theirs only when their probes meet a
/// session whose BIO is not a socket.
struct TlsObjects<L> {
    objects: Vec<LoadedProbes>,
    /// What each object was told at load.
    layouts: Vec<L>,
    tracepoints: usize,
    on_demand: Vec<(usize, SharedWord)>,
    /// The files hooked at start, for the inspector to take.
    seen: Seen,
}

impl<L: PartialEq + fmt::Display> TlsObjects<L> {
    /// Acts on what the inspector found; a program that could not be
    /// hooked is handed back to be tried in its next process.
    fn apply<M: Module<Layouts = L>>(
        &mut self,
        module: &M,
        config: &Config,
        finding: Finding<L>,
        requests: &Sender<Request>,
    ) {
        match finding {
            Finding::Hook {
                pid,
                target,
                brought,
                program,
            } => {
                if !self.hook_for(pid, &target, config, brought)
                    && let Some(program) = program
                {
                    let _ = requests.send(Request::Retry(program));
                }
            }
            Finding::Looked(pid) => {
                if let Some(probes) = self.objects.first() {
                    module.process_reported(probes, pid);
                }
            }
        }
    }

    /// Attaches `target`, which process `pid` `brought` in, with the object
    /// loaded for its layouts; false when attaching failed.
    fn hook_for(&mut self, pid: u32, target: &HookTarget<L>, config: &Config, brought: &str) -> bool {
        let comm = libpath::process_name(pid);
        let Some(index) = self.layouts.iter().position(|layouts| *layouts == target.layouts) else {
            warn!(
                "pid {pid} ({comm}) {brought} {}, laid out unlike the libraries hooked: run ecapture with --pid {pid} to capture it",
                target.binary.display()
            );
            return true;
        };
        let probes = &mut self.objects[index];
        match attach_target(probes, target, config.pid).and_then(|()| probes.attach_pending_uprobes()) {
            Ok(()) => {
                info!("hooking {target}, which pid {pid} ({comm}) {brought}");
                true
            }
            Err(err) => {
                warn!("hooking pid {pid}'s {} failed: {err:#}", target.binary.display());
                false
            }
        }
    }

    /// Attaches the syscall tracepoints the probes have asked for. Failing
    /// that, the capture goes on: only those sessions' addresses are missing.
    /// Records keep coming while the tracepoints attach: `drain` reads them
    /// after each one.
    fn attach_wanted_tracepoints(&mut self, drain: &mut dyn FnMut()) {
        let objects = &mut self.objects;
        let mut attached = 0;
        self.on_demand.retain(|(index, wanted)| {
            if !wanted.is_set() {
                return true;
            }
            match objects[*index].attach_syscall_tracepoints_draining("", drain) {
                Ok(count) => attached += count,
                Err(err) => warn!(
                    "a session's BIO is not a socket, and the syscall tracepoints that would name its socket could not be attached ({err:#}): such sessions are captured without addresses"
                ),
            }
            false
        });
        if attached > 0 {
            self.tracepoints += attached;
            info!(
                "a session's BIO is not a socket (the program brings its own, as curl and node do): its socket is named from system calls now ({attached} syscall tracepoints)"
            );
        }
    }
}

/// Loads the module's BPF objects (one per layout the targets need: an
/// object's settings are fixed when it loads) and attaches every hook.
fn load_tls_objects<M: Module>(
    module: &M,
    config: &Config,
    flavor: Flavor,
    generation: Generation,
    targets: &[HookTarget<M::Layouts>],
) -> Result<TlsObjects<M::Layouts>> {
    // The targets of each object, by the layouts they share.
    type Group<'t, L> = (&'t L, Vec<&'t HookTarget<L>>);
    let mut groups: Vec<Group<'_, M::Layouts>> = Vec::new();
    for target in targets {
        match groups.iter_mut().find(|(layouts, _)| **layouts == target.layouts) {
            Some((_, members)) => members.push(target),
            None => groups.push((&target.layouts, vec![target])),
        }
    }
    let waiting = module.layouts_without_targets().filter(|_| groups.is_empty());
    if let Some(layouts) = &waiting {
        groups.push((layouts, Vec::new()));
    }
    // A target may be a program (a Go program, a static build): its
    // processes reported later are not hooked twice.
    let hooked: HashSet<_> = targets
        .iter()
        .filter_map(|target| file_identity(&target.binary))
        .collect();
    let mut loaded = TlsObjects {
        objects: Vec::new(),
        layouts: Vec::new(),
        tracepoints: 0,
        on_demand: Vec::new(),
        seen: Seen {
            programs: hooked.clone(),
            libraries: hooked,
        },
    };
    let settings = ProbeSettings {
        generation,
        target_pid: config.pid,
        target_uid: config.uid,
        ring_buffer_bytes: config.ring_buffer_bytes,
    };
    for (layouts, members) in &groups {
        let mut probes = module.load(flavor, &settings, layouts)?;
        for target in members {
            attach_target(&mut probes, target, config.pid)?;
            info!("hooking {target}");
        }
        probes.attach_pending_uprobes()?;
        match module.tracepoints(config.mode, layouts) {
            Tracepoints::OnDemand => {
                probes.attach_program("forget_closed_socket")?;
                loaded
                    .on_demand
                    .push((loaded.objects.len(), probes.syscall_sockets_wanted()?));
            }
            Tracepoints::FromStart => loaded.tracepoints += probes.attach_syscall_tracepoints("")?,
            Tracepoints::Prefixed(prefix) => loaded.tracepoints += probes.attach_syscall_tracepoints(prefix)?,
            Tracepoints::None => {}
        }
        loaded.objects.push(probes);
        loaded.layouts.push((*layouts).clone());
    }
    if let Some(first) = loaded.objects.first_mut() {
        module.watch(first, config)?;
        // Programs started later with the library linked in, and copies
        // of the library loaded later, unless one file was named.
        if config.library.is_none() {
            first.attach_program("notice_exec")?;
            watch_library_loads(first, config)?;
        }
    }
    Ok(loaded)
}

/// Probes the dynamic loader's hook for debuggers, `_dl_debug_state`, which
/// it calls once it has mapped libraries. The loader is the one ecapture
/// itself runs under; without one (a static build) nothing is watched.
fn watch_library_loads(probes: &mut LoadedProbes, config: &Config) -> Result<()> {
    let Some(loader) = libpath::mapped_files(std::process::id())?
        .into_iter()
        .find(|file| modules::file_name(&file.path_in_process).is_some_and(|name| name.starts_with("ld-linux")))
    else {
        debug!("no dynamic loader mapped: libraries loaded later are not watched");
        return Ok(());
    };
    let image = ElfImage::open(&loader.host_path)?;
    let Some(hook) = image.function("_dl_debug_state") else {
        warn!(
            "{} has no _dl_debug_state: libraries loaded later are not watched",
            loader.host_path.display()
        );
        return Ok(());
    };
    probes.attach_uprobe(
        "notice_library_load",
        &loader.host_path,
        hook.file_offset,
        false,
        config.pid,
    )?;
    probes.attach_pending_uprobes()
}

/// Attaches every hook of `target` (uprobe_multi links wait for
/// `attach_pending_uprobes`).
fn attach_target<L>(probes: &mut LoadedProbes, target: &HookTarget<L>, pid: Option<u32>) -> Result<()> {
    for hook in &target.hooks {
        let offset = hook.symbol.file_offset;
        probes.attach_uprobe_with_cookie(hook.entry_program, &target.binary, offset, false, pid, hook.cookie)?;
        if let Some(return_program) = hook.return_program {
            probes.attach_uprobe(return_program, &target.binary, offset, true, pid)?;
        }
        debug!(symbol = %hook.symbol.name, offset = format_args!("{offset:#x}"), binary = %target.binary.display(), "hooked");
    }
    Ok(())
}

/// Opens the pcapng output and starts capturing on the chosen interface.
fn start_packet_capture(
    config: &Config,
    flavor: Flavor,
    generation: Generation,
) -> Result<(PacketProbes, PacketFile<Box<dyn Write>>)> {
    let interface = match &config.interface {
        Some(name) => name.clone(),
        None => packets::default_route_interface()?,
    };
    let ifindex = packets::interface_index(&interface)?;
    let link = LinkLayer::of(&interface)?;
    let filter = config
        .filter
        .as_deref()
        .map(|expression| kernel_filter::compile(expression, link.filter_link_type()))
        .transpose()?;
    let out = if config.pcap_file.as_os_str() == "-" {
        sink::stdout_writer()
    } else {
        let file = File::create(&config.pcap_file)
            .with_context(|| format!("cannot create the pcapng file {}", config.pcap_file.display()))?;
        sink::file_writer(file)
    };
    let mut probes = PacketProbes::load(flavor, generation, packets::MAX_CAPTURE, link)?;
    probes.add_owners(&procnet::connection_owners())?;
    let classic = filter.as_ref().map(kernel_filter::classic_instructions);
    let loopback = link == LinkLayer::Ethernet { loopback: true };
    let in_kernel = probes.attach(ifindex, loopback, classic)?;
    let matching = match &config.filter {
        Some(expression) if in_kernel => format!(" matching {expression:?} (filtered in the kernel)"),
        Some(expression) => format!(" matching {expression:?} (filtered in userspace)"),
        None => String::new(),
    };
    let userspace_filter = if in_kernel { None } else { filter };
    let file = PacketFile::new(
        out,
        &interface,
        link.pcapng_link_type(),
        packets::MAX_CAPTURE,
        userspace_filter,
    )?;
    info!("capturing packets on {interface}{matching}");
    Ok((probes, file))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record_at(time: u64, tag: u8) -> Vec<u8> {
        let header = probe::RawDataHeader {
            timestamp_ns: time,
            ..Default::default()
        };
        // SAFETY: a plain C struct, viewed as its bytes.
        let mut bytes = unsafe { plain::as_bytes(&header) }.to_vec();
        bytes.push(tag);
        bytes
    }

    #[test]
    fn losses_are_blamed_on_a_reader_behind_or_on_one_away() {
        let behind = why_records_were_lost(Duration::from_millis(2970), 16 << 20, 2.3e9);
        assert!(
            behind.starts_with("ecapture went 3.0 s without sleeping: its output"),
            "{behind}"
        );
        let away = why_records_were_lost(Duration::from_millis(2), 16 << 20, 2.3e9);
        assert_eq!(
            away,
            "the ring buffer (16 MiB, 7.3 ms at the last 2300 MB/s) filled while ecapture was asleep or off its CPU: raise --mapsize"
        );
        // The legacy perf buffers tell no rate.
        let legacy = why_records_were_lost(Duration::ZERO, 16 << 20, 0.0);
        assert!(legacy.starts_with("the ring buffer (16 MiB) filled"), "{legacy}");
    }

    #[test]
    fn records_from_two_cpus_go_on_in_time_order_once_drained_twice() {
        let mut order = TimeOrder::default();
        let mut out = Vec::new();
        let take = |order: &mut TimeOrder, everything| {
            let mut tags = Vec::new();
            order.release(everything, |record| tags.push(*record.last().unwrap()));
            tags
        };
        // The later record of a thread is read before its earlier one.
        order.push(&record_at(20, b'b'));
        out.extend(take(&mut order, false));
        assert!(out.is_empty(), "nothing goes on before its drain is sealed");
        order.seal();
        order.push(&record_at(10, b'a'));
        order.push(&record_at(30, b'c'));
        out.extend(take(&mut order, false));
        assert_eq!(out, b"ab");
        out.extend(take(&mut order, true));
        assert_eq!(out, b"abc");
    }

    #[test]
    fn a_panic_in_handling_a_record_is_counted_and_survived() {
        let pipeline = RefCell::new(Pipeline::new(Vec::new(), None, None, None, None));
        guarded(&pipeline, |_| panic!("a bug"));
        guarded(&pipeline, |pipeline| pipeline.summary.events += 1);
        let summary = &pipeline.borrow().summary;
        assert_eq!((summary.internal_errors, summary.events), (1, 1));
    }
}
