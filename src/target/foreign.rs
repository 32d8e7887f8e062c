//! Programs whose TLS the tls module does not capture: GnuTLS and NSS users,
//! Go programs (their own crypto/tls) and Java (JSSE, inside the JVM).
//! ecapture says so once per process, and which module would capture it,
//! rather than capture nothing in silence.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use object::Object;
use object::read::ReadCache;
use tracing::{debug, info};

use super::elf::ElfImage;
use super::libpath::{self, process_ids, process_name};

/// A library a handshake probe reported; the numbers are `enum
/// foreign_library` of `bpf/openssl.bpf.c`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForeignTls {
    GnuTls = 1,
    Nss = 2,
    Go = 3,
}

impl ForeignTls {
    pub fn from_raw(library: u32) -> Option<ForeignTls> {
        [ForeignTls::GnuTls, ForeignTls::Nss, ForeignTls::Go]
            .into_iter()
            .find(|known| *known as u32 == library)
    }

    /// The TLS it does, and what captures it.
    fn describe(self) -> (&'static str, &'static str) {
        match self {
            ForeignTls::GnuTls => ("GnuTLS", "run `ecapture gnutls` for it"),
            ForeignTls::Nss => ("NSS", "run `ecapture nss` for it"),
            ForeignTls::Go => ("Go's crypto/tls", "run `ecapture gotls` for it"),
        }
    }

    /// Says that `pid` did a handshake through this library.
    pub fn report(self, pid: u32, comm: &str) {
        self.report_as(pid, comm, "does TLS through");
    }

    fn report_as(self, pid: u32, comm: &str, relation: &str) {
        let (library, instead) = self.describe();
        info!("pid {pid} ({comm}) {relation} {library}, which the tls module does not capture; {instead}");
    }
}

/// A function each call of which is a handshake of a library we do not
/// capture, for an entry probe (at the function's first instruction, which
/// its symbol places) that reports the process once.
#[derive(Debug)]
pub struct Sentinel {
    pub binary: PathBuf,
    pub function: &'static str,
    pub file_offset: u64,
    pub program: &'static str,
}

/// Where every Go handshake goes: the first from Go 1.17, the second before
/// (later, it is a wrapper the linker may drop).
const GO_HANDSHAKES: [&str; 2] = ["crypto/tls.(*Conn).handshakeContext", "crypto/tls.(*Conn).Handshake"];
/// Named in every Go binary that carries crypto/tls, stripped or not (in
/// .gopclntab).
const GO_TLS_CONN: &[u8] = b"crypto/tls.(*Conn).";

/// The handshakes to watch: GnuTLS and NSS on the system, and the Go
/// programs running now (all of them, or `pid`) that carry crypto/tls.
pub fn sentinels(pid: Option<u32>) -> Vec<Sentinel> {
    let libraries: [(&str, &'static str, &'static str); 2] = [
        ("libgnutls.so.", "gnutls_handshake", "gnutls_handshake_seen"),
        ("libssl3.so", "SSL_ImportFD", "nss_import_fd_seen"),
    ];
    let mut found = Vec::new();
    for (prefix, function, program) in libraries {
        for library in libpath::find_system_libraries(|name| name.starts_with(prefix)) {
            found.extend(sentinel(&library, function, program));
        }
    }
    for image in running_go_programs(pid) {
        match GO_HANDSHAKES
            .iter()
            .find_map(|function| sentinel_in(&image, function, "go_tls_handshake_seen"))
        {
            Some(found_one) => found.push(found_one),
            // Stripped: its functions are named only in .gopclntab.
            None => report_stripped_go(image.path(), pid),
        }
    }
    found
}

fn sentinel(binary: &Path, function: &'static str, program: &'static str) -> Option<Sentinel> {
    sentinel_in(&ElfImage::open(binary).ok()?, function, program)
}

fn sentinel_in(image: &ElfImage, function: &'static str, program: &'static str) -> Option<Sentinel> {
    let symbol = image.function(function)?;
    Some(Sentinel {
        binary: image.path().to_path_buf(),
        function,
        file_offset: symbol.file_offset,
        program,
    })
}

/// The distinct executables of running processes that are Go programs
/// carrying crypto/tls, opened through `/proc/PID/exe`.
pub fn running_go_programs(pid: Option<u32>) -> Vec<ElfImage> {
    let mut seen = HashSet::new();
    let mut found = Vec::new();
    for pid in process_ids(pid).into_iter() {
        let exe = PathBuf::from(format!("/proc/{pid}/exe"));
        let Ok(metadata) = std::fs::metadata(&exe) else {
            continue;
        };
        if !seen.insert((metadata.dev(), metadata.ino())) || !is_go_program(&exe) {
            continue;
        }
        match ElfImage::open(&exe) {
            Ok(image) if image.contains(GO_TLS_CONN) => found.push(image),
            _ => debug!(binary = %exe.display(), "a Go program without crypto/tls"),
        }
    }
    found
}

/// Whether the ELF file has Go's build information, read from its headers
/// alone.
pub fn is_go_program(path: &Path) -> bool {
    let Ok(file) = File::open(path) else { return false };
    let cache = ReadCache::new(file);
    object::File::parse(&cache).is_ok_and(|elf| elf.section_by_name(".go.buildinfo").is_some())
}

/// A stripped Go program can be watched only once its functions are found in
/// .gopclntab (the gotls module's work): say at once which processes run it.
fn report_stripped_go(binary: &Path, pid: Option<u32>) {
    let Ok(target) = std::fs::metadata(binary) else { return };
    for pid in process_ids(pid).into_iter() {
        let same = std::fs::metadata(format!("/proc/{pid}/exe"))
            .is_ok_and(|exe| (exe.dev(), exe.ino()) == (target.dev(), target.ino()));
        if same {
            ForeignTls::Go.report_as(pid, &process_name(pid), "is a Go program built with");
        }
    }
}

/// Java processes talking TCP now: JSSE runs inside the JVM, where no
/// module of ecapture reaches.
pub fn report_java(pid: Option<u32>) {
    for pid in process_ids(pid) {
        let runs_java = libpath::mapped_files(pid).is_ok_and(|files| {
            files
                .iter()
                .any(|file| file.path_in_process.file_name().is_some_and(|name| name == "libjvm.so"))
        });
        if runs_java && crate::procnet::holds_tcp_connection(pid) {
            info!(
                "pid {pid} ({}) runs Java, whose TLS (JSSE) works inside the JVM: no ecapture module captures it yet",
                process_name(pid)
            );
        }
    }
}
