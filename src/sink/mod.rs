//! Where records go. Every output (text, JSON lines; network later) is a
//! rendering of the same `Record`.

pub mod direct_file;
pub mod ecaptureq;
pub mod json;
pub mod keylog;
pub mod pcapng;
pub mod remote;
pub mod text;

use std::fs::File;
use std::io::{self, BufWriter, Write};

use self::direct_file::DirectFile;

use crate::audit::Activity;
use crate::event::EventMeta;

/// What a record carries: what a connection's parser made of its bytes.
pub use crate::proto::Parsed as Payload;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub meta: EventMeta,
    pub payload: Payload,
}

pub trait Sink {
    fn emit(&mut self, record: &Record) -> io::Result<()>;
    /// A command or query an audit module saw.
    fn activity(&mut self, activity: &Activity) -> io::Result<()>;
    /// Key log lines (`LABEL CLIENT_RANDOM SECRET`, each ending in a line
    /// break) that process `pid` (`comm`) derived; the key log file has
    /// them already, and only some outputs show them too.
    fn secrets(&mut self, _pid: u32, _comm: &str, _lines: &str) -> io::Result<()> {
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()>;
}

/// Standard output for records: direct I/O when it is a file of its own,
/// otherwise (a terminal, a pipe) through a large buffer.
pub fn stdout_writer() -> Box<dyn Write> {
    match DirectFile::for_stdout() {
        Some(file) => Box::new(file),
        None => Box::new(BufWriter::with_capacity(OUTPUT_BUFFER_BYTES, io::stdout().lock())),
    }
}

/// An output file, written with direct I/O where its filesystem allows.
pub fn file_writer(file: File) -> Box<dyn Write> {
    match DirectFile::over(file) {
        Ok(file) => Box::new(file),
        Err(file) => Box::new(BufWriter::with_capacity(OUTPUT_BUFFER_BYTES, file)),
    }
}

/// Written in pieces this large, the kernel no longer zeroes each new
/// page-cache folio before copying into it.
const OUTPUT_BUFFER_BYTES: usize = 1 << 20;
