//! OpenSSL and BoringSSL, as shared libraries or linked into a program.

pub mod layout;
mod object;
pub mod socket_bio;
pub mod version;

use std::collections::HashSet;
use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow, bail};
use tracing::{debug, info, warn};

use self::layout::OpensslLayout;
use self::socket_bio::SocketBioLayout;
use self::version::SslLibrary;
use super::{Hook, HookTarget, Module, Tracepoints};
use crate::cli::{Config, Mode};
use crate::probe::{Flavor, LoadedProbes, ProbeSettings};
use crate::target::disasm;
use crate::target::elf::{ElfImage, FunctionSymbol};
use crate::target::foreign;
use crate::target::libpath::{self, MappedFile};

/// Exported functions that move application data, with their entry programs
/// in `bpf/openssl.bpf.c`. CPython calls the `_ex` pair.
const DATA_FUNCTIONS: &[(&str, &str)] = &[
    ("SSL_write", "ssl_write_enter"),
    ("SSL_read", "ssl_read_enter"),
    ("SSL_write_ex", "ssl_write_ex_enter"),
    ("SSL_read_ex", "ssl_read_ex_enter"),
];
const DATA_RETURN: &str = "ssl_call_return";

pub struct OpenSsl;

/// What an OpenSSL object is told: where the library keeps session secrets
/// (keylog and pcapng modes) and where a socket BIO keeps its fd (text mode;
/// None leaves naming sockets to the syscall tracepoints).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpensslObject {
    pub key_layout: Option<OpensslLayout>,
    pub socket_bio: Option<SocketBioLayout>,
}

impl fmt::Display for OpensslObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.socket_bio {
            Some(socket_bio) => write!(f, "; {socket_bio}"),
            None => Ok(()),
        }
    }
}

impl Module for OpenSsl {
    type Layouts = OpensslObject;

    fn name(&self) -> &'static str {
        "tls"
    }

    fn discover(&self, config: &Config) -> Result<Vec<HookTarget<OpensslObject>>> {
        if let Some(pid) = config.pid {
            libpath::ensure_process_exists(pid)?;
        }
        match (&config.library, config.pid) {
            (Some(path), _) => Ok(vec![
                hook_target(path, config).map_err(|err| anyhow!("--libssl: {err:#}"))?,
            ]),
            (None, Some(pid)) => {
                let library = library_mapped_by(pid)?;
                note_children_mapping(pid, &library);
                Ok(vec![hook_target(&library, config)?])
            }
            (None, None) => system_targets(config),
        }
    }

    fn load(&self, flavor: Flavor, settings: &ProbeSettings, layouts: &OpensslObject) -> Result<LoadedProbes> {
        object::load(flavor, settings, layouts)
    }

    /// In text mode, sockets are read from their BIOs where the accessors
    /// tell how, and the tracepoints wait for a session whose BIO is not a
    /// socket; BoringSSL's TLS 1.3 secrets are read as its handshake writes
    /// to its socket.
    fn tracepoints(&self, mode: Mode, layouts: &OpensslObject) -> Tracepoints {
        match mode {
            Mode::Text if layouts.socket_bio.is_some() => Tracepoints::OnDemand,
            Mode::Text => Tracepoints::FromStart,
            _ if layouts
                .key_layout
                .is_some_and(|layout| layout.handshake_object.is_some()) =>
            {
                Tracepoints::Prefixed("boringssl_")
            }
            _ => Tracepoints::None,
        }
    }

    fn inspect_library(&self, library: &Path, config: &Config) -> Option<Result<Vec<HookTarget<OpensslObject>>>> {
        super::file_name(library)?
            .starts_with("libssl.so.")
            .then(|| hook_target(library, config).map(|target| vec![target]))
    }

    /// Hooks the handshakes of the TLS this module does not capture (GnuTLS,
    /// NSS, Go's crypto/tls), so that a process using one is named, and
    /// names the Java processes talking now. Each program sits at its
    /// function's first instruction, once per handshake, whatever that costs.
    fn watch(&self, probes: &mut LoadedProbes, config: &Config) -> Result<()> {
        for sentinel in foreign::sentinels(config.pid) {
            probes.attach_uprobe(
                sentinel.program,
                &sentinel.binary,
                sentinel.file_offset,
                false,
                config.pid,
            )?;
            debug!(binary = %sentinel.binary.display(), function = sentinel.function, "watching for TLS this module does not capture");
        }
        probes.attach_pending_uprobes()?;
        foreign::report_java(config.pid);
        Ok(())
    }

    /// A program with OpenSSL or BoringSSL linked in (node); those that use
    /// the system's libssl are hooked there already.
    fn inspect_program(&self, executable: &Path, config: &Config) -> Option<HookTarget<OpensslObject>> {
        let image = ElfImage::open(executable).ok()?;
        if !is_tls_library(&image) {
            return None;
        }
        inspect(&image, config.mode, config.ssl_version.as_deref())
            .map_err(|err| warn!("{} has OpenSSL linked in, but: {err:#}", executable.display()))
            .ok()
    }
}

fn is_tls_library(image: &ElfImage) -> bool {
    image.function("SSL_write").is_some() && image.function("SSL_read").is_some()
}

/// Reads `path` and lists the hooks the configured mode needs there.
pub fn hook_target(path: &Path, config: &Config) -> Result<HookTarget<OpensslObject>> {
    inspect(&ElfImage::open(path)?, config.mode, config.ssl_version.as_deref())
}

/// What to hook in `image`, and with which layouts, for `mode`. The file
/// may be anything (a hostile or truncated --libssl): what cannot be read
/// is an error.
pub fn inspect(image: &ElfImage, mode: Mode, ssl_version: Option<&str>) -> Result<HookTarget<OpensslObject>> {
    let path = image.path();
    if !is_tls_library(image) {
        bail!(
            "{} has no SSL_write/SSL_read: it is neither OpenSSL nor BoringSSL, nor a program linking them statically",
            path.display()
        );
    }
    let library = match ssl_version {
        Some(forced) => version::parse_override(forced)?,
        None => version::detect(image),
    };
    debug!(path = %path.display(), %library, "found TLS library");
    let (hooks, key_layout, socket_bio) = match mode {
        Mode::Text => {
            let socket_bio = SocketBioLayout::derive(image);
            // Sockets are read from their BIOs; a session whose BIO is not
            // a socket is found at its handshake, in time to attach the
            // syscall tracepoints before its data flows.
            let handshake = socket_bio.and(image.function("SSL_do_handshake"));
            let hooks = data_functions(image)
                .into_iter()
                .map(|(symbol, entry_program)| Hook::new(image, symbol, entry_program, Some(DATA_RETURN)))
                .chain(handshake.map(|symbol| Hook::new(image, symbol, "handshake_socket_check", None)));
            (hooks.collect(), None, socket_bio)
        }
        Mode::Keylog | Mode::Pcap => {
            let selection = select_key_layout(&library, image, ssl_version)?;
            let handshake = image
                .function("SSL_do_handshake")
                .ok_or_else(|| anyhow!("{} has no SSL_do_handshake to learn session keys from", path.display()))?;
            // The handshake is watched to its return. Reads, writes and
            // SSL_shutdown are only looked at on entry, where a session that
            // completed its handshake inside one of them (or before ecapture
            // started) is keyed: no uretprobe on the data path.
            let later_calls = data_functions(image)
                .into_iter()
                .map(|(symbol, _)| symbol)
                .chain(image.function("SSL_shutdown"));
            let hooks = std::iter::once(Hook::new(image, handshake, "handshake_enter", Some("handshake_return")))
                .chain(later_calls.map(|symbol| Hook::new(image, symbol, "keys_at_call", None)));
            (hooks.collect(), Some(*selection.layout), None)
        }
    };
    Ok(HookTarget {
        binary: path.to_path_buf(),
        description: library.to_string(),
        hooks,
        layouts: OpensslObject { key_layout, socket_bio },
    })
}

/// Where application data passes, with the entry program that reads its
/// arguments. OpenSSL 1.1.1+ funnels SSL_write and SSL_write_ex (and BIO_f_ssl
/// users such as `openssl s_server -www`, which call neither) through one
/// internal function per direction; hooking those catches every caller, and
/// their first instruction is one the kernel emulates instead of
/// single-stepping. Elsewhere (BoringSSL, 1.0.2) the exported API is used.
fn data_functions(image: &ElfImage) -> Vec<(FunctionSymbol, &'static str)> {
    let write = disasm::shared_callee(image, "SSL_write", "SSL_write_ex");
    let read = disasm::shared_callee(image, "SSL_read", "SSL_read_ex");
    // (ssl, buf, num, size_t *len), or from 3.2 (ssl, buf, num, flags, size_t *len).
    let write_program = |callee: &disasm::SharedCallee| match callee.length_argument {
        4 => Some("ssl_write_ex_enter"),
        5 => Some("ssl_write_flags_enter"),
        _ => None,
    };
    if let (Some(write), Some(read)) = (write, read)
        && let Some(write_entry) = write_program(&write)
        && read.length_argument == 4
    {
        return vec![(write.symbol, write_entry), (read.symbol, "ssl_read_ex_enter")];
    }
    DATA_FUNCTIONS
        .iter()
        .filter_map(|&(name, entry)| Some((image.function(name)?, entry)))
        .collect()
}

/// Chooses where the secrets are, saying why; refuses when the library's own
/// accessors contradict every known layout, rather than write wrong keys.
fn select_key_layout(library: &SslLibrary, image: &ElfImage, forced: Option<&str>) -> Result<layout::Selection> {
    let in_library = |err: String| anyhow!("{}: {err}", image.path().display());
    let forced_layout = |layout: &'static layout::OpensslLayout, text: &str| layout::Selection {
        layout,
        checks: layout::check(layout, image),
        reason: format!("--ssl_version {text} forces layout {}", layout.name),
        expected: true,
    };
    let selection = match (library, forced) {
        (SslLibrary::BoringSsl, Some(text)) => match layout::boringssl_for_override(text).map_err(in_library)? {
            Some(layout) => forced_layout(layout, text),
            None => layout::select_boringssl(image).map_err(in_library)?,
        },
        (SslLibrary::BoringSsl, None) => layout::select_boringssl(image).map_err(in_library)?,
        (SslLibrary::OpenSsl(None), _) => {
            bail!(
                "the OpenSSL version of {} is unknown; name it with --ssl_version",
                image.path().display()
            )
        }
        (SslLibrary::OpenSsl(Some(version)), Some(text)) => forced_layout(layout::for_version(version).layout, text),
        (SslLibrary::OpenSsl(Some(version)), None) => layout::select(version, image).map_err(in_library)?,
    };
    for check in &selection.checks {
        if check.outcome == layout::CheckOutcome::Disagrees {
            warn!(
                "{}: layout {}: {check}; keys may be wrong",
                image.path().display(),
                selection.layout.name
            );
        }
    }
    let checks: Vec<String> = selection.checks.iter().map(ToString::to_string).collect();
    let detail = format!(
        "{}: {}; {}",
        image.path().display(),
        selection.reason,
        checks.join(", ")
    );
    if selection.expected {
        info!("{detail}");
    } else {
        warn!("{detail}");
    }
    Ok(selection)
}

/// The libssl the process maps or, failing that, the mapped file (usually
/// the executable) that has OpenSSL linked in; waits for one to be mapped.
fn library_mapped_by(pid: u32) -> Result<PathBuf> {
    // Files read once and found to hold no OpenSSL, so that waiting reads
    // each file once.
    let mut rejected: HashSet<PathBuf> = HashSet::new();
    libpath::wait_for_mapping(pid, "OpenSSL or BoringSSL", |files| {
        let is_libssl = |file: &&MappedFile| file_name(&file.path_in_process).starts_with("libssl.so");
        let libssl = files.iter().filter(is_libssl);
        let linked_in = files.iter().filter(|file| !is_libssl(file));
        let mut candidates = libssl.chain(linked_in).map(|file| &file.host_path);
        candidates
            .find(|path| {
                if rejected.contains(*path) {
                    return false;
                }
                let found = ElfImage::open(path).is_ok_and(|image| is_tls_library(&image));
                if !found {
                    rejected.insert((*path).clone());
                }
                found
            })
            .cloned()
    })
}

/// `--pid` follows that one process. A server's master often makes no TLS
/// call itself while its workers do: say so when its descendants map the
/// same library, and name them.
fn note_children_mapping(pid: u32, library: &Path) {
    let identity = |path: &Path| std::fs::metadata(path).ok().map(|meta| (meta.dev(), meta.ino()));
    let Some(wanted) = identity(library) else {
        return;
    };
    let maps_it = |child: u32| {
        libpath::mapped_files(child)
            .is_ok_and(|files| files.iter().any(|file| identity(&file.host_path) == Some(wanted)))
    };
    let children: Vec<String> = libpath::descendants(pid)
        .into_iter()
        .filter(|(child, _)| maps_it(*child))
        .map(|(child, name)| format!("{child} ({name})"))
        .collect();
    if !children.is_empty() {
        info!(
            "--pid {pid} follows that process only; its descendants {} map {} too: give one of their pids to capture it, or leave out --pid to capture them all",
            children.join(", "),
            library.display()
        );
    }
}

/// Every libssl.so.N the dynamic linker knows, so that any process using any
/// of them is captured. A library the mode cannot use is skipped, saying why.
fn system_targets(config: &Config) -> Result<Vec<HookTarget<OpensslObject>>> {
    let found: Vec<HookTarget<OpensslObject>> = libpath::find_system_libraries(|name| name.starts_with("libssl.so."))
        .iter()
        .filter_map(|path| {
            hook_target(path, config)
                .inspect_err(|err| warn!("skipping {}: {err:#}", path.display()))
                .ok()
        })
        .collect();
    if found.is_empty() {
        bail!("no usable libssl.so found in ld.so.cache or the usual directories; name it with --libssl PATH");
    }
    Ok(found)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn config(args: &[&str]) -> Config {
        let argv = ["ecapture", "tls"].iter().chain(args);
        crate::cli::Cli::try_parse_from(argv).unwrap().into_config().unwrap()
    }

    #[test]
    fn system_discovery_hooks_libssl3_internal_functions() {
        let targets = system_targets(&config(&[])).unwrap();
        let libssl3 = targets
            .iter()
            .find(|t| t.binary.ends_with("libssl.so.3"))
            .expect("libssl.so.3 found");
        let names: Vec<_> = libssl3.hooks.iter().map(|h| h.symbol.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "SSL_write/SSL_write_ex callee",
                "SSL_read/SSL_read_ex callee",
                "SSL_do_handshake"
            ]
        );
        assert!(libssl3.description.starts_with("OpenSSL 3."), "{}", libssl3.description);
        assert!(libssl3.layouts.key_layout.is_none());
        // Sockets come from the BIOs; the handshake is watched only for
        // sessions whose BIO is not a socket, on entry.
        assert!(libssl3.layouts.socket_bio.is_some());
        let handshake = libssl3.hooks.last().unwrap();
        assert_eq!(
            (handshake.entry_program, handshake.return_program),
            ("handshake_socket_check", None)
        );
    }

    #[test]
    fn keylog_mode_hooks_the_handshake_with_a_confirmed_layout() {
        let target = hook_target(
            Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3"),
            &config(&["-m", "keylog"]),
        )
        .unwrap();
        let layout = target.layouts.key_layout.expect("a layout");
        assert!(layout.name.starts_with("openssl 3.0"), "{}", layout.name);
        let handshake = target
            .hooks
            .iter()
            .find(|h| h.symbol.name == "SSL_do_handshake")
            .unwrap();
        assert_eq!(handshake.return_program, Some("handshake_return"));
        // The data path and SSL_shutdown get no uretprobe in keylog mode.
        let others: Vec<_> = target
            .hooks
            .iter()
            .filter(|h| h.symbol.name != "SSL_do_handshake")
            .collect();
        assert_eq!(others.len(), 3, "{others:?}");
        assert!(
            others
                .iter()
                .all(|h| h.entry_program == "keys_at_call" && h.return_program.is_none())
        );
    }

    #[test]
    fn boringssl_has_the_plain_pair() {
        let path = Path::new("/usr/lib/x86_64-linux-gnu/android/libssl.so.0");
        let target = hook_target(path, &config(&[])).unwrap();
        assert_eq!(target.description, "BoringSSL");
        // BoringSSL has no _ex pair here: the exported functions are hooked.
        let names: Vec<_> = target.hooks.iter().map(|h| h.symbol.name.as_str()).collect();
        assert_eq!(names, ["SSL_write", "SSL_read", "SSL_do_handshake"]);
    }

    #[test]
    fn a_file_without_ssl_is_refused() {
        let err = hook_target(Path::new("/bin/ls"), &config(&[])).unwrap_err();
        assert!(err.to_string().contains("has no SSL_write/SSL_read"), "{err}");
    }
}
