//! OpenSSL and BoringSSL, as shared libraries or linked into a program.

pub mod version;

use std::path::Path;

use anyhow::{Result, bail};
use tracing::debug;

use super::{Hook, HookTarget, Module};
use crate::cli::Config;
use crate::probe::{Flavor, LoadedProbes, ProbeSettings};
use crate::target::elf::ElfImage;
use crate::target::libpath::{self, MappedFile};

/// Exported functions that move application data, with their entry programs
/// in `bpf/openssl.bpf.c`. CPython calls the `_ex` pair.
const DATA_FUNCTIONS: &[(&str, &str)] = &[
    ("SSL_write", "ssl_write_enter"),
    ("SSL_read", "ssl_read_enter"),
    ("SSL_write_ex", "ssl_write_ex_enter"),
    ("SSL_read_ex", "ssl_read_ex_enter"),
];
const RETURN_PROGRAM: &str = "ssl_call_return";

pub struct OpenSsl;

impl Module for OpenSsl {
    fn name(&self) -> &'static str {
        "tls"
    }

    fn discover(&self, config: &Config) -> Result<Vec<HookTarget>> {
        if let Some(pid) = config.pid {
            libpath::ensure_process_exists(pid)?;
        }
        match (&config.libssl, config.pid) {
            (Some(path), _) => Ok(vec![hook_target(path)?]),
            (None, Some(pid)) => targets_mapped_by(pid),
            (None, None) => system_targets(),
        }
    }

    fn load(&self, flavor: Flavor, settings: &ProbeSettings) -> Result<LoadedProbes> {
        LoadedProbes::load_openssl(flavor, settings)
    }
}

/// Reads `path` and lists the hooks it offers; fails unless it has both
/// SSL_write and SSL_read.
pub fn hook_target(path: &Path) -> Result<HookTarget> {
    let image = ElfImage::open(path).map_err(|err| anyhow::anyhow!("--libssl: {err:#}"))?;
    let hooks: Vec<Hook> = DATA_FUNCTIONS
        .iter()
        .filter_map(|&(name, entry_program)| {
            Some(Hook {
                symbol: image.function(name)?,
                entry_program,
                return_program: RETURN_PROGRAM,
            })
        })
        .collect();
    let has = |name: &str| hooks.iter().any(|hook| hook.symbol.name == name);
    if !has("SSL_write") || !has("SSL_read") {
        bail!(
            "{} has no SSL_write/SSL_read: it is neither OpenSSL nor BoringSSL, nor a program linking them statically",
            path.display()
        );
    }
    let library = version::detect(&image);
    debug!(path = %path.display(), %library, "found TLS library");
    Ok(HookTarget {
        binary: path.to_path_buf(),
        description: library.to_string(),
        hooks,
    })
}

/// The libssl the process maps or, failing that, the mapped file (usually
/// the executable) that has OpenSSL linked in.
fn targets_mapped_by(pid: u32) -> Result<Vec<HookTarget>> {
    let files = libpath::mapped_files(pid)?;
    let is_libssl = |file: &&MappedFile| file_name(&file.path_in_process).starts_with("libssl.so");
    let libssl = files
        .iter()
        .filter(is_libssl)
        .filter_map(|file| hook_target(&file.host_path).ok());
    let linked_in = files
        .iter()
        .filter(|file| !is_libssl(file))
        .filter_map(|file| hook_target(&file.host_path).ok());
    let found: Vec<HookTarget> = libssl.chain(linked_in).take(1).collect();
    if found.is_empty() {
        bail!("process {pid} maps no OpenSSL or BoringSSL; name the library or program with --libssl PATH");
    }
    Ok(found)
}

/// Every libssl.so.N the dynamic linker knows, so that any process using any
/// of them is captured.
fn system_targets() -> Result<Vec<HookTarget>> {
    let found: Vec<HookTarget> = libpath::find_system_libraries(|name| name.starts_with("libssl.so."))
        .iter()
        .filter_map(|path| hook_target(path).ok())
        .collect();
    if found.is_empty() {
        bail!("no libssl.so found in ld.so.cache or the usual directories; name it with --libssl PATH");
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

    #[test]
    fn system_discovery_finds_libssl3_with_all_four_hooks() {
        let targets = system_targets().unwrap();
        let libssl3 = targets
            .iter()
            .find(|t| t.binary.ends_with("libssl.so.3"))
            .expect("libssl.so.3 found");
        let names: Vec<_> = libssl3.hooks.iter().map(|h| h.symbol.name.as_str()).collect();
        assert_eq!(names, ["SSL_write", "SSL_read", "SSL_write_ex", "SSL_read_ex"]);
        assert!(libssl3.description.starts_with("OpenSSL 3."), "{}", libssl3.description);
    }

    #[test]
    fn boringssl_has_the_plain_pair() {
        let target = hook_target(Path::new("/usr/lib/x86_64-linux-gnu/android/libssl.so.0")).unwrap();
        assert_eq!(target.description, "BoringSSL");
        assert!(target.hooks.iter().any(|h| h.symbol.name == "SSL_write"));
    }

    #[test]
    fn a_file_without_ssl_is_refused() {
        let err = hook_target(Path::new("/bin/ls")).unwrap_err();
        assert!(err.to_string().contains("has no SSL_write/SSL_read"), "{err}");
    }
}
