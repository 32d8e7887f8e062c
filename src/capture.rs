//! One capture from start to exit: discover, load, attach, then move records
//! from the ring buffer through reassembly, connection tracking and parsing
//! to the sinks until SIGINT or SIGTERM.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use libbpf_rs::RingBufferBuilder;
use tracing::{debug, info, warn};

use crate::cli::Config;
use crate::conn::ConnTracker;
use crate::event::{Reassembler, RecordDecoder};
use crate::modules::Module;
use crate::probe::{self, Flavor, ProbeSettings};
use crate::sink::Sink;

/// How long records may wait in the ring buffer when no wakeup came.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Wake the reader early once this share of the ring buffer is in use.
const WAKEUP_FRACTION: u64 = 8;
const LOST_CHECK_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub struct Summary {
    pub events: u64,
    pub bytes: u64,
    pub lost_records: u64,
    pub broken_calls: u64,
}

/// Everything that happens to a record after the kernel hands it over.
struct Pipeline<'s> {
    decoder: RecordDecoder,
    reassembler: Reassembler,
    tracker: ConnTracker,
    sinks: Vec<&'s mut dyn Sink>,
    summary: Summary,
}

impl Pipeline<'_> {
    fn on_record(&mut self, record: &[u8]) {
        let Some(chunk) = self.decoder.decode(record) else {
            warn!(len = record.len(), "dropping a malformed ring buffer record");
            return;
        };
        let Some(event) = self.reassembler.push(chunk) else {
            return;
        };
        self.summary.events += 1;
        self.summary.bytes += event.data.len() as u64;
        for record in self.tracker.on_event(event) {
            self.emit(&record);
        }
    }

    fn emit(&mut self, record: &crate::sink::Record) {
        for sink in &mut self.sinks {
            if let Err(err) = sink.emit(record) {
                warn!("writing output failed: {err}");
            }
        }
    }

    /// Hands buffered output over, so that events show up live.
    fn flush(&mut self) {
        for sink in &mut self.sinks {
            if let Err(err) = sink.flush() {
                warn!("writing output failed: {err}");
            }
        }
    }

    fn finish(&mut self) {
        for record in self.tracker.finish_all() {
            self.emit(&record);
        }
        self.flush();
        self.summary.broken_calls = self.reassembler.broken_calls;
    }
}

pub fn run(module: &dyn Module, config: &Config, sinks: Vec<&mut dyn Sink>) -> Result<Summary> {
    let started = Instant::now();
    let targets = module.discover(config)?;
    probe::ensure_tracefs()?;
    let flavor = Flavor::choose(config.btf)?;
    let settings = ProbeSettings {
        target_pid: config.pid,
        target_uid: config.uid,
        ring_buffer_bytes: config.ring_buffer_bytes,
        wakeup_bytes: u64::from(config.ring_buffer_bytes) / WAKEUP_FRACTION,
    };
    let mut probes = module.load(flavor, &settings)?;
    for target in &targets {
        for hook in &target.hooks {
            let offset = hook.symbol.file_offset;
            probes.attach_uprobe(hook.entry_program, &target.binary, offset, false, config.pid)?;
            probes.attach_uprobe(hook.return_program, &target.binary, offset, true, config.pid)?;
            debug!(symbol = %hook.symbol.name, offset = format_args!("{offset:#x}"), binary = %target.binary.display(), "hooked");
        }
        info!("hooking {target}");
    }
    let tracepoints = probes.attach_syscall_tracepoints()?;

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop)).context("installing signal handlers")?;
    }

    let pipeline = RefCell::new(Pipeline {
        decoder: RecordDecoder::new(),
        reassembler: Reassembler::default(),
        tracker: ConnTracker::default(),
        sinks,
        summary: Summary::default(),
    });
    let events_map = probes.map("events")?;
    let mut builder = RingBufferBuilder::new();
    builder.add(&events_map, |record| {
        pipeline.borrow_mut().on_record(record);
        0
    })?;
    let ring = builder.build()?;

    info!(
        "ready: module {} ({flavor:?} BPF), {} probes attached ({} syscall tracepoints) in {} ms; press Ctrl-C to stop",
        module.name(),
        probes.attached(),
        tracepoints,
        started.elapsed().as_millis()
    );

    let mut lost_reported = 0;
    let mut last_lost_check = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        // Wakeups are batched in the kernel, so drain on every timeout too.
        if let Err(err) = ring.poll(POLL_INTERVAL)
            && err.kind() != libbpf_rs::ErrorKind::Interrupted
        {
            return Err(err).context("reading the ring buffer");
        }
        ring.consume()?;
        pipeline.borrow_mut().flush();
        if last_lost_check.elapsed() >= LOST_CHECK_INTERVAL {
            last_lost_check = Instant::now();
            let lost = probes.lost_records()?;
            if lost > lost_reported {
                warn!(
                    "{} records lost so far: the ring buffer was full (raise --mapsize)",
                    lost
                );
                lost_reported = lost;
            }
        }
    }

    // Detach first so that nothing new arrives, then drain what is left.
    probes.detach();
    ring.consume()?;
    let lost = probes.lost_records()?;
    drop(ring);
    let mut pipeline = pipeline.into_inner();
    pipeline.finish();
    pipeline.summary.lost_records = lost;
    Ok(pipeline.summary)
}
