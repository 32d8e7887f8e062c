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

use crate::cli::{Config, Mode};
use crate::conn::ConnTracker;
use crate::event::{Reassembler, RecordDecoder};
use crate::keys::SessionSecrets;
use crate::modules::openssl::layout::OpensslLayout;
use crate::modules::{HookTarget, Module};
use crate::probe::{self, Flavor, LoadedProbes, ProbeSettings, RawMasterSecret};
use crate::sink::Sink;
use crate::sink::keylog::KeylogWriter;

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
    /// Sessions whose keys went to the key log.
    pub sessions: u64,
}

/// Everything that happens to a record after the kernel hands it over.
struct Pipeline<'s> {
    decoder: RecordDecoder,
    reassembler: Reassembler,
    tracker: ConnTracker,
    sinks: Vec<&'s mut dyn Sink>,
    keylog: Option<KeylogWriter>,
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

    fn on_secrets(&mut self, record: &[u8]) {
        let Some(keylog) = self.keylog.as_mut() else { return };
        let Ok(raw) = plain::from_bytes::<RawMasterSecret>(record) else {
            warn!(len = record.len(), "dropping a malformed secrets record");
            return;
        };
        let secrets = SessionSecrets::from_raw(raw);
        match secrets.keylog_lines() {
            Ok(lines) => match keylog.write_session(&lines, &secrets) {
                Ok(true) => {
                    self.summary.sessions += 1;
                    info!(
                        "keys of session {} (pid {} {}) written",
                        hex::encode(&secrets.client_random[..8]),
                        secrets.pid,
                        secrets.comm
                    );
                }
                Ok(false) => {}
                Err(err) => warn!("writing the key log failed: {err}"),
            },
            Err(why) => warn!("no keys for a session of pid {} {}: {why}", secrets.pid, secrets.comm),
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
    let keylog = match config.mode {
        Mode::Keylog => Some(
            KeylogWriter::create(&config.keylog_file)
                .with_context(|| format!("cannot open the key log file {}", config.keylog_file.display()))?,
        ),
        _ => None,
    };

    // Targets that keep secrets in different places need separate objects,
    // since the layout is fixed when an object loads.
    let mut groups: Vec<(Option<OpensslLayout>, Vec<&HookTarget>)> = Vec::new();
    for target in &targets {
        match groups.iter_mut().find(|(layout, _)| *layout == target.key_layout) {
            Some((_, members)) => members.push(target),
            None => groups.push((target.key_layout, vec![target])),
        }
    }
    let mut objects = Vec::new();
    let mut tracepoints = 0;
    for (key_layout, members) in &groups {
        let settings = ProbeSettings {
            key_layout: *key_layout,
            target_pid: config.pid,
            target_uid: config.uid,
            ring_buffer_bytes: config.ring_buffer_bytes,
            wakeup_bytes: u64::from(config.ring_buffer_bytes) / WAKEUP_FRACTION,
        };
        let mut probes = module.load(flavor, &settings)?;
        for target in members {
            for hook in &target.hooks {
                let offset = hook.symbol.file_offset;
                probes.attach_uprobe(hook.entry_program, &target.binary, offset, false, config.pid)?;
                probes.attach_uprobe(hook.return_program, &target.binary, offset, true, config.pid)?;
                debug!(symbol = %hook.symbol.name, offset = format_args!("{offset:#x}"), binary = %target.binary.display(), "hooked");
            }
            info!("hooking {target}");
        }
        // Only the data path needs to learn sockets from syscalls.
        if config.mode == Mode::Text {
            tracepoints += probes.attach_syscall_tracepoints()?;
        }
        objects.push(probes);
    }

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop)).context("installing signal handlers")?;
    }

    let pipeline = RefCell::new(Pipeline {
        decoder: RecordDecoder::new(),
        reassembler: Reassembler::default(),
        tracker: ConnTracker::default(),
        sinks,
        keylog,
        summary: Summary::default(),
    });
    let maps: Vec<(libbpf_rs::Map<'_>, libbpf_rs::Map<'_>)> = objects
        .iter()
        .map(|probes| Ok((probes.map("events")?, probes.map("key_events")?)))
        .collect::<Result<_>>()?;
    let mut builder = RingBufferBuilder::new();
    for (events, key_events) in &maps {
        builder.add(events, |record| {
            pipeline.borrow_mut().on_record(record);
            0
        })?;
        builder.add(key_events, |record| {
            pipeline.borrow_mut().on_secrets(record);
            0
        })?;
    }
    let ring = builder.build()?;
    drop(maps);

    info!(
        "ready: module {} in {:?} mode ({flavor:?} BPF), {} probes attached ({} syscall tracepoints) in {} ms; press Ctrl-C to stop",
        module.name(),
        config.mode,
        objects.iter().map(LoadedProbes::attached).sum::<usize>(),
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
            let lost = total_lost(&objects)?;
            if lost > lost_reported {
                warn!("{lost} records lost so far: the ring buffer was full (raise --mapsize)");
                lost_reported = lost;
            }
        }
    }

    // Detach first so that nothing new arrives, then drain what is left.
    for probes in &mut objects {
        probes.detach();
    }
    ring.consume()?;
    let lost = total_lost(&objects)?;
    drop(ring);
    let mut pipeline = pipeline.into_inner();
    pipeline.finish();
    pipeline.summary.lost_records = lost;
    Ok(pipeline.summary)
}

fn total_lost(objects: &[LoadedProbes]) -> Result<u64> {
    objects.iter().map(LoadedProbes::lost_records).sum()
}
