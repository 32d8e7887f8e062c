//! ecapture: SSL/TLS plaintext capture with eBPF uprobes (the command line).

use std::fs::File;
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use tracing::{info, warn};

use ecapture::cli::{Cli, Mode};
use ecapture::logging::LogCopy;
use ecapture::sink::Sink;
use ecapture::sink::ecaptureq::EcaptureQ;
use ecapture::sink::json::JsonSink;
use ecapture::sink::remote::{Destination, Remote};
use ecapture::sink::text::TextSink;
use ecapture::{logging, modules, preflight, sink};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ecapture: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let config = cli.into_config()?;
    let log_remote = match &config.log_destination {
        Some(destination @ (Destination::Tcp { .. } | Destination::WebSocket { .. })) => Some(
            Remote::start(destination.clone()).with_context(|| format!("starting to send logs to {destination}"))?,
        ),
        _ => None,
    };
    let log_file = match &config.log_destination {
        Some(Destination::File(path)) => {
            Some(Arc::new(File::create(path).with_context(|| {
                format!("cannot create --logaddr file {}", path.display())
            })?))
        }
        _ => None,
    };
    let ecaptureq = config.ecaptureq.as_deref().map(EcaptureQ::start).transpose()?;
    let log_copies = [
        log_file.as_ref().map(|file| LogCopy::File(Arc::clone(file))),
        log_remote.as_ref().map(|remote| LogCopy::Remote(Arc::clone(remote))),
        ecaptureq.as_ref().map(|server| LogCopy::EcaptureQ(Arc::clone(server))),
    ];
    logging::init(config.debug, log_copies.into_iter().flatten().collect());
    preflight::check()?;

    // Only text mode prints records; pcap mode may stream its file to stdout.
    let prints = config.mode == Mode::Text;
    let mut stdout_sink =
        (prints && !config.json).then(|| TextSink::new(sink::stdout_writer(), config.hex, config.truncate));
    // JSON lines show key log lines too.
    let json_modes = matches!(config.mode, Mode::Text | Mode::Keylog);
    let mut json_sink = (config.json && json_modes)
        .then(|| JsonSink::new(sink::stdout_writer(), config.module.name(), config.truncate));
    // Events go to --eventaddr, else with the logs to --logaddr.
    let (event_remote, event_writer): (Option<Arc<Remote>>, Option<Box<dyn Write>>) = match &config.event_destination {
        Some(Destination::File(path)) => {
            let file =
                File::create(path).with_context(|| format!("cannot create --eventaddr file {}", path.display()))?;
            (None, Some(sink::file_writer(file)))
        }
        Some(destination) => {
            let remote = Remote::start(destination.clone())
                .with_context(|| format!("starting to send events to {destination}"))?;
            let writer: Box<dyn Write> = Box::new(remote.writer());
            (Some(remote), Some(writer))
        }
        None => match (&log_file, &log_remote) {
            (Some(file), _) => (None, Some(Box::new(SharedFile(Arc::clone(file))) as Box<dyn Write>)),
            (None, Some(remote)) => (None, Some(Box::new(remote.writer()) as Box<dyn Write>)),
            (None, None) => (None, None),
        },
    };
    // --json applies to --eventaddr; --logaddr's copy stays text.
    let json_copy = config.json && json_modes && config.event_destination.is_some();
    let (mut copy_text, mut copy_json) = match event_writer {
        Some(writer) if json_copy => (None, Some(JsonSink::new(writer, config.module.name(), config.truncate))),
        Some(writer) if prints => (Some(TextSink::new(writer, config.hex, config.truncate)), None),
        _ => (None, None),
    };
    let mut ecaptureq_sink = ecaptureq.as_ref().map(|server| server.sink());
    let sinks: Vec<&mut dyn Sink> = [
        ecaptureq_sink.as_mut().map(|sink| sink as &mut dyn Sink),
        stdout_sink.as_mut().map(|sink| sink as &mut dyn Sink),
        json_sink.as_mut().map(|sink| sink as &mut dyn Sink),
        copy_text.as_mut().map(|sink| sink as &mut dyn Sink),
        copy_json.as_mut().map(|sink| sink as &mut dyn Sink),
    ]
    .into_iter()
    .flatten()
    .collect();
    let summary = modules::run_capture(&config, sinks)?;
    // Finishes writing the output before the summary says what was written.
    drop(stdout_sink);
    drop(copy_text);
    for (json, output) in [(json_sink.take(), "stdout"), (copy_json.take(), "--eventaddr")] {
        if let Some(mut json) = json {
            json.write_summary(&summary)
                .with_context(|| format!("writing the summary to {output}"))?;
        }
    }
    if let Some(remote) = event_remote {
        remote.finish();
    }
    info!(
        "stopped: {} events, {} bytes captured, {} sessions keyed, {} packets written, {} records lost, {} packets lost, {} calls incomplete, {} bytes lost",
        summary.events,
        summary.bytes,
        summary.sessions,
        summary.packets,
        summary.lost_records,
        summary.lost_packets,
        summary.broken_calls,
        summary.lost_bytes
    );
    if summary.internal_errors > 0 {
        warn!(
            "{} records were lost to bugs in ecapture, caught and reported above: please report them",
            summary.internal_errors
        );
    }
    if let Some(remote) = log_remote {
        remote.finish();
    }
    if let Some(server) = ecaptureq {
        server.finish();
    }
    Ok(())
}

/// The log file, shared between the log writer and the event sink. Unbuffered:
/// each record and each log line is one write, so they never interleave.
struct SharedFile(Arc<File>);

impl Write for SharedFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        (&*self.0).write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        (&*self.0).flush()
    }
}
