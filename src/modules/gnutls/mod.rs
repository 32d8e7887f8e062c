//! GnuTLS (libgnutls.so.30): wget, git's libcurl-gnutls, apt, Emacs.

mod keylog;
mod object;

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow, bail};
use tracing::{debug, info, warn};

use super::{Hook, HookTarget, Module, Tracepoints};
use crate::cli::{Config, Mode};
use crate::probe::{Flavor, LoadedProbes, ProbeSettings};
use crate::target::elf::ElfImage;
use crate::target::libpath;

/// The calls that carry application data, with their entry programs in
/// `bpf/gnutls.bpf.c`; the `2` and `_seq` variants take the same first
/// arguments.
const DATA_FUNCTIONS: &[(&str, &str)] = &[
    ("gnutls_record_send", "gnutls_send_enter"),
    ("gnutls_record_send2", "gnutls_send_enter"),
    ("gnutls_record_recv", "gnutls_recv_enter"),
    ("gnutls_record_recv_seq", "gnutls_recv_enter"),
];
const DATA_RETURN: &str = "gnutls_call_return";

pub struct GnuTls;

/// What a GnuTLS object is told: for the modes that read secrets, where a
/// session keeps its client random, and what its resumed sessions are read
/// from. Its sockets are named from the syscalls GnuTLS makes inside each
/// call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GnuTlsObject {
    pub client_random: Option<u32>,
    pub resumed: Option<ResumedFields>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumedFields {
    pub master_secret: u32,
    pub version_entry: u32,
    pub version_id: u32,
}

impl fmt::Display for GnuTlsObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.client_random {
            Some(offset) => write!(f, "; client random at session+{offset:#x}"),
            None => f.write_str("; sockets named from system calls"),
        }
    }
}

impl Module for GnuTls {
    type Layouts = GnuTlsObject;

    fn name(&self) -> &'static str {
        "gnutls"
    }

    fn discover(&self, config: &Config) -> Result<Vec<HookTarget<GnuTlsObject>>> {
        if let Some(pid) = config.pid {
            libpath::ensure_process_exists(pid)?;
        }
        match (&config.library, config.pid) {
            (Some(path), _) => Ok(vec![
                hook_target(path, config.mode).map_err(|err| anyhow!("--gnutls: {err:#}"))?,
            ]),
            (None, Some(pid)) => Ok(vec![hook_target(&library_mapped_by(pid)?, config.mode)?]),
            (None, None) => system_targets(config.mode),
        }
    }

    fn load(&self, flavor: Flavor, settings: &ProbeSettings, layouts: &GnuTlsObject) -> Result<LoadedProbes> {
        object::load(flavor, settings, layouts)
    }

    fn tracepoints(&self, mode: Mode, _: &GnuTlsObject) -> Tracepoints {
        match mode {
            Mode::Text => Tracepoints::FromStart,
            Mode::Keylog | Mode::Pcap => Tracepoints::None,
        }
    }

    fn inspect_library(&self, library: &Path, config: &Config) -> Option<Result<Vec<HookTarget<GnuTlsObject>>>> {
        is_gnutls(library).then(|| hook_target(library, config.mode).map(|target| vec![target]))
    }
}

fn hook_target(path: &Path, mode: Mode) -> Result<HookTarget<GnuTlsObject>> {
    inspect(&ElfImage::open(path)?, mode)
}

/// What to hook in `image` for `mode`; `image` may be anything (a hostile or
/// truncated --gnutls): what cannot be read is an error.
pub fn inspect(image: &ElfImage, mode: Mode) -> Result<HookTarget<GnuTlsObject>> {
    if image.function("gnutls_record_send").is_none() || image.function("gnutls_record_recv").is_none() {
        bail!(
            "{} has no gnutls_record_send/gnutls_record_recv: it is not GnuTLS",
            image.path().display()
        );
    }
    let (hooks, (client_random, resumed)) = match mode {
        Mode::Text => {
            let hooks = DATA_FUNCTIONS
                .iter()
                .filter_map(|&(name, entry)| Some(Hook::new(image, image.function(name)?, entry, Some(DATA_RETURN))))
                .collect();
            (hooks, (None, None))
        }
        Mode::Keylog | Mode::Pcap => {
            let site = keylog::locate(image)?;
            info!("{}: {site}", image.path().display());
            let mut hooks = vec![Hook::new(image, site.function, "gnutls_keylog_enter", None)];
            let resumed = site.resumption.map(|resumed| {
                hooks.push(Hook::new(
                    image,
                    resumed.handshake,
                    "gnutls_handshake_enter",
                    Some("gnutls_handshake_return"),
                ));
                ResumedFields {
                    master_secret: resumed.master_secret,
                    version_entry: resumed.version_entry,
                    version_id: resumed.version_id,
                }
            });
            if resumed.is_none() {
                warn!(
                    "{}: where a session keeps its master secret is not known: resumed TLS 1.2 sessions will have no keys",
                    image.path().display()
                );
            }
            (hooks, (Some(site.client_random), resumed))
        }
    };
    Ok(HookTarget {
        binary: image.path().to_path_buf(),
        description: version(image),
        hooks,
        layouts: GnuTlsObject { client_random, resumed },
    })
}

/// "GnuTLS 3.7.9", from the message the library logs when its logging is
/// enabled; "GnuTLS" where that is missing.
fn version(image: &ElfImage) -> String {
    image
        .strings_starting_with(b"Enabled GnuTLS ")
        .find_map(|text| {
            let version = text.strip_prefix(b"Enabled GnuTLS ")?.split(|&b| b == b' ').next()?;
            let version = std::str::from_utf8(version).ok()?;
            version
                .bytes()
                .all(|b| b.is_ascii_digit() || b == b'.')
                .then(|| format!("GnuTLS {version}"))
        })
        .unwrap_or_else(|| "GnuTLS".to_string())
}

fn is_gnutls(file: &Path) -> bool {
    file.file_name()
        .and_then(|name| name.to_str())
        .is_some_and(|name| name.starts_with("libgnutls.so."))
}

/// The libgnutls the process maps; waits for it to be mapped.
fn library_mapped_by(pid: u32) -> Result<PathBuf> {
    libpath::wait_for_mapping(pid, "GnuTLS", |files| {
        files
            .iter()
            .find(|file| is_gnutls(&file.path_in_process))
            .map(|file| file.host_path.clone())
    })
}

/// Every libgnutls.so.N on the system.
fn system_targets(mode: Mode) -> Result<Vec<HookTarget<GnuTlsObject>>> {
    let found: Vec<_> = libpath::find_system_libraries(|name| name.starts_with("libgnutls.so."))
        .iter()
        .filter_map(|path| match hook_target(path, mode) {
            Ok(target) => Some(target),
            Err(err) => {
                debug!("skipping {}: {err:#}", path.display());
                None
            }
        })
        .collect();
    if found.is_empty() {
        bail!("no libgnutls.so found in ld.so.cache or the usual directories; name it with --gnutls PATH");
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_gnutls_has_both_directions_hooked() {
        let target = hook_target(Path::new("/usr/lib/x86_64-linux-gnu/libgnutls.so.30"), Mode::Text).unwrap();
        let names: Vec<_> = target.hooks.iter().map(|hook| hook.symbol.name.as_str()).collect();
        assert!(
            names.contains(&"gnutls_record_send") && names.contains(&"gnutls_record_recv"),
            "{names:?}"
        );
        assert!(target.hooks.iter().all(|hook| hook.return_program == Some(DATA_RETURN)));
        assert_eq!(target.description, "GnuTLS 3.7.9");
    }

    #[test]
    fn a_library_without_gnutls_is_refused() {
        let err = hook_target(Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3"), Mode::Text).unwrap_err();
        assert!(err.to_string().contains("it is not GnuTLS"), "{err}");
    }
}
