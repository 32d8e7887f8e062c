//! Logs go to stderr (events own stdout); with -l/--logaddr, to a file or
//! over the network as well.

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::sync::Arc;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::writer::MakeWriterExt;

use crate::sink::ecaptureq::EcaptureQ;
use crate::sink::remote::Remote;

/// Where logs go besides stderr.
pub enum LogCopy {
    File(Arc<File>),
    Remote(Arc<Remote>),
    EcaptureQ(Arc<EcaptureQ>),
}

/// Each log line, written once it is whole, to every copy.
struct Copies(Arc<Vec<LogCopy>>);

struct CopyLine {
    line: Vec<u8>,
    copies: Arc<Vec<LogCopy>>,
}

impl<'a> MakeWriter<'a> for Copies {
    type Writer = CopyLine;

    fn make_writer(&'a self) -> CopyLine {
        CopyLine {
            line: Vec::new(),
            copies: Arc::clone(&self.0),
        }
    }
}

impl Write for CopyLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for CopyLine {
    fn drop(&mut self) {
        for copy in self.copies.iter() {
            match copy {
                // One write per line, so that lines never interleave with events.
                LogCopy::File(file) => {
                    let _ = (&**file).write_all(&self.line);
                }
                LogCopy::Remote(remote) => {
                    let mut writer = remote.writer();
                    let _ = writer.write_all(&self.line);
                }
                LogCopy::EcaptureQ(server) => server.log(&String::from_utf8_lossy(&self.line)),
            }
        }
    }
}

pub fn init(debug: bool, copies: Vec<LogCopy>) {
    let level = if debug {
        tracing::Level::DEBUG
    } else {
        tracing::Level::INFO
    };
    let builder = tracing_subscriber::fmt().with_target(false).with_max_level(level);
    if copies.is_empty() {
        builder.with_writer(std::io::stderr).with_ansi(colour_wanted()).init();
    } else {
        builder
            .with_writer(std::io::stderr.and(Copies(Arc::new(copies))).with_max_level(level))
            .with_ansi(false)
            .init();
    }
}

/// Colour only on a terminal, and never when NO_COLOR is set (no-color.org):
/// escapes in a log file or a pipe are noise to whoever reads it.
fn colour_wanted() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty())
}
