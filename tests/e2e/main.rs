//! End-to-end tests: the real ecapture binary against real TLS clients and
//! servers. They need root and BPF; run them one at a time
//! (`--test-threads=1`), since probes see the whole machine.

mod accounting;
mod bad_input;
mod bounded;
mod database;
mod gnutls;
mod gotls;
mod hostile;
mod http2;
mod json;
mod keylog;
mod memory_bio;
mod nss;
mod pcapng;
mod remote;
mod shell;
mod support;
mod tls_text;
