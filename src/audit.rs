//! The audit modules' capture: shells' commands and databases' queries. Their
//! probes report whole events, not byte streams, so records skip reassembly
//! and connection tracking: each module's assembler turns them into
//! activities, which go straight to the sinks.

use std::cell::{Cell, RefCell};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use libbpf_rs::{PerfBuffer, RingBuffer, RingBufferBuilder};
use tracing::{info, warn};

use crate::capture::{OutputFailures, POLL_INTERVAL, Summary, perf_channel, perf_pages, stop_on_signals};
use crate::cli::Config;
use crate::event::Comm;
use crate::probe::{self, Flavor, Generation, LoadedProbes, ProbeSettings};
use crate::sink::Sink;

/// A command an interactive shell ran: the lines typed for it, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellCommand {
    /// When its first line was read.
    pub time: SystemTime,
    pub pid: u32,
    pub uid: u32,
    pub comm: Comm,
    /// The lines as typed, joined by line breaks.
    pub line: Vec<u8>,
    /// Bytes of the input that could not be captured (a line past the
    /// probes' bound, or records the kernel could not deliver).
    pub missing: bool,
    /// Its exit status; None when the shell went away without saying.
    pub status: Option<i32>,
    /// From its last line read until the shell asked for the next command.
    pub duration: Duration,
}

/// A command a database server ran for a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseQuery {
    /// When the server started it.
    pub time: SystemTime,
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub comm: Comm,
    /// The server's id of the session (MariaDB's thread id).
    pub connection: Option<u64>,
    pub user: Option<String>,
    /// The client's address, as the server has it.
    pub client: Option<String>,
    pub database: Option<String>,
    /// What the client asked for: "query", "prepare", "execute"...
    pub kind: String,
    /// Its text (a query's SQL), whole; binary arguments as sent.
    pub text: Vec<u8>,
    /// Bytes of the text that could not be captured.
    pub missing: u64,
    pub outcome: QueryOutcome,
    pub duration: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryOutcome {
    Ok,
    /// The error the server sent back: its number where the server has
    /// one (MySQL's), its SQLSTATE and message.
    Error {
        code: Option<i32>,
        sqlstate: String,
        message: String,
    },
    /// Still running when the capture ended, or its end was lost.
    Unknown,
}

/// What an audit module saw happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Activity {
    Command(ShellCommand),
    Query(DatabaseQuery),
}

/// A record's fixed part, copied out to be read aligned, and the text after it.
pub struct TextRecord<'a, T> {
    pub header: T,
    pub text: &'a [u8],
}

impl<'a, T: plain::Plain + Default> TextRecord<'a, T> {
    /// The text is `length` bytes at `text_at`, as the fixed part says.
    /// None when the record is shorter than either.
    pub fn parse(bytes: &'a [u8], text_at: usize, length: impl Fn(&T) -> usize) -> Option<TextRecord<'a, T>> {
        let mut header = T::default();
        // SAFETY: a C struct of integers and byte arrays; any bit pattern is valid.
        let fields = unsafe { plain::as_mut_bytes(&mut header) };
        fields.get_mut(..text_at)?.copy_from_slice(bytes.get(..text_at)?);
        let text = bytes.get(text_at..)?.get(..length(&header))?;
        Some(TextRecord { header, text })
    }
}

/// Turns one module's records into activities.
pub trait Assembler {
    /// Takes one record from the kernel; finished activities go to `out`.
    fn on_record(&mut self, record: &[u8], out: &mut Vec<Activity>);
    /// The capture ends: what is still under way goes out as it stands.
    fn finish(&mut self, out: &mut Vec<Activity>);
}

/// What `assembler` makes of `records`, the capture ending after them.
#[cfg(test)]
pub fn assemble(mut assembler: impl Assembler, records: &[Vec<u8>]) -> Vec<Activity> {
    let mut out = Vec::new();
    for bytes in records {
        assembler.on_record(bytes, &mut out);
    }
    assembler.finish(&mut out);
    out
}

pub trait AuditModule {
    fn name(&self) -> &'static str;
    /// Finds what to hook (errors name the missing or wrong input), loads
    /// the module's BPF object and attaches it.
    fn start(&self, config: &Config, flavor: Flavor, settings: &ProbeSettings) -> Result<LoadedProbes>;
    fn assembler(&self, config: &Config) -> Box<dyn Assembler>;
}

/// The one channel an audit object reports through.
enum Channel<'cb> {
    Ring(RingBuffer<'cb>),
    Perf(PerfBuffer<'cb>),
}

impl Channel<'_> {
    /// Waits up to `timeout` for records and hands them over; a signal
    /// ends the wait early.
    fn poll(&self, timeout: Duration) -> Result<()> {
        let polled = match self {
            Channel::Ring(ring) => ring.poll(timeout),
            Channel::Perf(perf) => perf.poll(timeout),
        };
        match polled {
            Err(err) if err.kind() == libbpf_rs::ErrorKind::Interrupted => Ok(()),
            other => Ok(other?),
        }
    }

    fn consume(&self) -> Result<()> {
        match self {
            Channel::Ring(ring) => ring.consume()?,
            Channel::Perf(perf) => perf.consume()?,
        }
        Ok(())
    }
}

/// Writes activities to every sink.
struct Output<'s> {
    sinks: Vec<&'s mut dyn Sink>,
    failures: OutputFailures,
    summary: Summary,
}

impl Output<'_> {
    /// Writes `activities` and hands over what the sinks hold: a sink may
    /// keep output back until it has waited long enough.
    fn write(&mut self, activities: &mut Vec<Activity>) {
        for activity in activities.drain(..) {
            self.summary.events += 1;
            match &activity {
                Activity::Command(command) => self.summary.bytes += command.line.len() as u64,
                Activity::Query(query) => self.summary.bytes += query.text.len() as u64,
            }
            for sink in &mut self.sinks {
                if let Err(err) = sink.activity(&activity) {
                    self.failures.record(&err);
                }
            }
        }
        for sink in &mut self.sinks {
            if let Err(err) = sink.flush() {
                self.failures.record(&err);
            }
        }
    }
}

/// Runs an audit module's capture until SIGINT or SIGTERM.
pub fn run(module: &dyn AuditModule, config: &Config, sinks: Vec<&mut dyn Sink>) -> Result<Summary> {
    let started = Instant::now();
    probe::ensure_tracefs()?;
    let flavor = Flavor::choose(config.btf)?;
    let settings = ProbeSettings {
        generation: Generation::choose(),
        target_pid: config.pid,
        target_uid: config.uid,
        ring_buffer_bytes: config.ring_buffer_bytes,
    };
    let mut probes = module.start(config, flavor, &settings)?;
    let stop = stop_on_signals()?;

    let assembler = RefCell::new(module.assembler(config));
    let finished = RefCell::new(Vec::new());
    let internal_errors = Cell::new(0u64);
    // A panic must not reach libbpf's C caller, where it cannot unwind.
    let on_record = |record: &[u8]| {
        let caught = std::panic::catch_unwind(AssertUnwindSafe(|| {
            assembler.borrow_mut().on_record(record, &mut finished.borrow_mut());
        }));
        if caught.is_err() {
            internal_errors.set(internal_errors.get() + 1);
            warn!("a bug in ecapture was caught while handling a record (its details are above); the capture goes on");
        }
    };
    let events = probes.map("events")?;
    let channel = match settings.generation {
        Generation::Current => {
            let mut builder = RingBufferBuilder::new();
            builder.add(&events, |record| {
                on_record(record);
                0
            })?;
            Channel::Ring(builder.build()?)
        }
        Generation::Legacy => Channel::Perf(perf_channel(&events, perf_pages(config.ring_buffer_bytes), on_record)?),
    };
    let programs = match settings.generation {
        Generation::Current => "",
        Generation::Legacy => ", programs for kernels before 5.13",
    };
    info!(
        "ready: module {} ({flavor:?} BPF{programs}), {} probes attached in {} ms; press Ctrl-C to stop",
        module.name(),
        probes.attached(),
        started.elapsed().as_millis()
    );

    let mut output = Output {
        sinks,
        failures: OutputFailures::default(),
        summary: Summary::default(),
    };
    while !stop.load(Ordering::Relaxed) && !output.failures.reader_gone {
        channel.poll(POLL_INTERVAL).context("reading events from the kernel")?;
        output.write(&mut finished.borrow_mut());
    }
    if output.failures.reader_gone {
        info!("the output's reader has gone (broken pipe): stopping");
    }
    probes.detach();
    channel.consume().context("reading events from the kernel")?;
    drop(channel);
    assembler.borrow_mut().finish(&mut finished.borrow_mut());
    output.write(&mut finished.borrow_mut());
    let lost = probes.lost()?;
    output.summary.lost_records = lost.records;
    output.summary.lost_bytes = lost.bytes;
    output.summary.internal_errors = internal_errors.get();
    Ok(output.summary)
}
