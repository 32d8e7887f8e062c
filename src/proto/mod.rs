//! Protocol parsers: turn a connection's byte streams into messages.

pub mod http1;
