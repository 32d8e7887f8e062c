//! ecapture: SSL/TLS plaintext capture with eBPF uprobes. The binary is a
//! thin command line over these modules; the library is what the fuzz
//! targets (and their corpus replay in the unit tests) reach into.

pub mod audit;
pub mod capture;
pub mod cli;
pub mod conn;
pub mod event;
pub mod fuzzing;
pub mod keys;
pub mod logging;
pub mod modules;
pub mod new_code;
pub mod preflight;
pub mod probe;
pub mod procnet;
pub mod proto;
pub mod sink;
pub mod target;
