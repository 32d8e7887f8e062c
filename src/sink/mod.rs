//! Where records go. Every output (text now; JSON and network later) is a
//! rendering of the same `Record`.

pub mod keylog;
pub mod pcapng;
pub mod text;

use std::io;

use crate::event::EventMeta;
use crate::proto::http1::HttpMessage;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    Http(HttpMessage),
    /// Bytes of one call that are not a protocol we parse.
    Raw(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub meta: EventMeta,
    pub payload: Payload,
}

pub trait Sink {
    fn emit(&mut self, record: &Record) -> io::Result<()>;
    fn flush(&mut self) -> io::Result<()>;
}
