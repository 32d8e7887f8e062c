//! Logs go to stderr (events own stdout); with -l/--logaddr, to a file or
//! over the network as well.

use std::fs::File;
use std::io::IsTerminal;
use std::sync::Arc;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::writer::MakeWriterExt;

use crate::sink::remote::{Remote, RemoteWriter};

/// Where logs go besides stderr.
pub enum LogCopy {
    File(Arc<File>),
    Remote(Arc<Remote>),
}

/// Each log line as one message.
struct RemoteLines(Arc<Remote>);

impl<'a> MakeWriter<'a> for RemoteLines {
    type Writer = RemoteWriter;

    fn make_writer(&'a self) -> RemoteWriter {
        self.0.writer()
    }
}

pub fn init(debug: bool, copy: Option<LogCopy>) {
    let level = if debug {
        tracing::Level::DEBUG
    } else {
        tracing::Level::INFO
    };
    let builder = tracing_subscriber::fmt().with_target(false).with_max_level(level);
    match copy {
        Some(LogCopy::File(file)) => builder
            .with_writer(std::io::stderr.and(file).with_max_level(level))
            .with_ansi(false)
            .init(),
        Some(LogCopy::Remote(remote)) => builder
            .with_writer(std::io::stderr.and(RemoteLines(remote)).with_max_level(level))
            .with_ansi(false)
            .init(),
        None => builder.with_writer(std::io::stderr).with_ansi(colour_wanted()).init(),
    }
}

/// Colour only on a terminal, and never when NO_COLOR is set (no-color.org):
/// escapes in a log file or a pipe are noise to whoever reads it.
fn colour_wanted() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty())
}
