//! ecapture: SSL/TLS plaintext capture with eBPF uprobes (the command line).

use std::fs::File;
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use tracing::{info, warn};

use ecapture::cli::{Cli, Mode};
use ecapture::sink::Sink;
use ecapture::sink::json::JsonSink;
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
    let log_file = match &config.log_file {
        Some(path) => {
            Some(Arc::new(File::create(path).with_context(|| {
                format!("cannot create --logaddr file {}", path.display())
            })?))
        }
        None => None,
    };
    logging::init(config.debug, log_file.clone());
    preflight::check()?;

    // Only text mode prints records; pcap mode may stream its file to stdout.
    let prints = config.mode == Mode::Text;
    let mut stdout_sink =
        (prints && !config.json).then(|| TextSink::new(sink::stdout_writer(), config.hex, config.truncate));
    // JSON lines show key log lines too.
    let mut json_sink = (config.json && matches!(config.mode, Mode::Text | Mode::Keylog))
        .then(|| JsonSink::new(sink::stdout_writer(), config.module.name(), config.truncate));
    let mut file_sink = log_file.map(|file| TextSink::new(SharedFile(file), config.hex, config.truncate));
    let sinks: Vec<&mut dyn Sink> = [
        stdout_sink.as_mut().map(|sink| sink as &mut dyn Sink),
        json_sink.as_mut().map(|sink| sink as &mut dyn Sink),
        file_sink.as_mut().map(|sink| sink as &mut dyn Sink),
    ]
    .into_iter()
    .flatten()
    .collect();
    let summary = modules::run_capture(&config, sinks)?;
    // Finishes writing the output before the summary says what was written.
    drop(stdout_sink);
    if let Some(mut json) = json_sink.take() {
        json.write_summary(&summary).context("writing the summary to stdout")?;
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
