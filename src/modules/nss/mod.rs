//! NSS (libssl3 over NSPR's libnspr4, secrets in softoken): Firefox,
//! Thunderbird, NSS's own tools, curl and others built on it.

pub mod methods;
mod object;
pub mod secrets;

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow, bail};
use tracing::{debug, info, warn};

use super::{Hook, HookTarget, Module, Tracepoints};
use crate::cli::{Config, Mode};
use crate::probe::{Flavor, LoadedProbes, ProbeSettings};
use crate::target::elf::ElfImage;
use crate::target::libpath;

use methods::DescriptorPath;

const LIBSSL3: &str = "libssl3.so";
const SOFTOKEN: &str = "libsoftokn3.so";
const DATA_RETURN: &str = "nss_call_return";

pub struct Nss;

/// What an NSS object is told: how a socket's layers reach its descriptor,
/// and, for the modes that read secrets, where libssl3 keeps a socket's
/// client random and a key's softoken handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NssObject {
    pub descriptor: DescriptorPath,
    pub secrets: Option<SecretFields>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecretFields {
    pub client_random: u32,
    pub key_handle: u32,
}

impl fmt::Display for NssObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "; descriptor at layer+{:#x}+{:#x}",
            self.descriptor.secret, self.descriptor.osfd
        )?;
        if let Some(secrets) = self.secrets {
            write!(
                f,
                "; client random at ss+{:#x}, key handle at key+{:#x}",
                secrets.client_random, secrets.key_handle
            )?;
        }
        Ok(())
    }
}

impl Module for Nss {
    type Layouts = NssObject;

    fn name(&self) -> &'static str {
        "nss"
    }

    fn discover(&self, config: &Config) -> Result<Vec<HookTarget<NssObject>>> {
        if let Some(pid) = config.pid {
            libpath::ensure_process_exists(pid)?;
        }
        match (&config.library, config.pid) {
            (Some(path), _) => {
                let libssl3 = libssl3_for(path).map_err(|err| anyhow!("--nspr: {err:#}"))?;
                hook_targets(&libssl3, config.mode).map_err(|err| anyhow!("--nspr: {err:#}"))
            }
            (None, Some(pid)) => hook_targets(&library_mapped_by(pid)?, config.mode),
            (None, None) => system_targets(config.mode),
        }
    }

    fn load(&self, flavor: Flavor, settings: &ProbeSettings, layouts: &NssObject) -> Result<LoadedProbes> {
        object::load(flavor, settings, layouts)
    }

    fn tracepoints(&self, mode: Mode, _: &NssObject) -> Tracepoints {
        match mode {
            Mode::Text => Tracepoints::OnDemand,
            Mode::Keylog | Mode::Pcap => Tracepoints::None,
        }
    }

    fn inspect_library(&self, library: &Path, config: &Config) -> Option<Result<Vec<HookTarget<NssObject>>>> {
        (super::file_name(library)? == LIBSSL3).then(|| hook_targets(library, config.mode))
    }
}

/// The libssl3 that `--nspr` names: libssl3 itself, or the one beside the
/// libnspr4 given (eCapture's flag names NSPR).
fn libssl3_for(path: &Path) -> Result<PathBuf> {
    let image = ElfImage::open(path)?;
    if image.function("SSL_ImportFD").is_some() {
        return Ok(path.to_path_buf());
    }
    if image.function("PR_Write").is_none() {
        bail!("{} is neither NSPR's libnspr4 nor NSS's libssl3", path.display());
    }
    let beside = path.with_file_name(LIBSSL3);
    if !beside.exists() {
        bail!(
            "{} has no {LIBSSL3} beside it; name NSS's libssl3 itself",
            path.display()
        );
    }
    Ok(beside)
}

/// The files to hook for `mode`: libssl3, and for secrets also softoken.
fn hook_targets(libssl3: &Path, mode: Mode) -> Result<Vec<HookTarget<NssObject>>> {
    let image = ElfImage::open(libssl3)?;
    if image.function("SSL_ImportFD").is_none() {
        bail!("{} has no SSL_ImportFD: it is not NSS's libssl3", libssl3.display());
    }
    let companion = |prefix: &str| {
        image
            .needed_beside(prefix)
            .into_iter()
            .next()
            .ok_or_else(|| anyhow!("{}: no {prefix} found beside it", libssl3.display()))
    };
    let descriptor = methods::descriptor_path(&companion("libnspr4")?)?;
    let description = version(&image);
    match mode {
        Mode::Text => {
            let found = methods::locate(&image)?;
            info!("{}: {found}", libssl3.display());
            if !found.writev_sends {
                warn!(
                    "{}: PR_Writev does not go through the send method in this build; data written with it is not captured",
                    libssl3.display()
                );
            }
            let hooks = vec![
                Hook::new(&image, found.write, "nss_send_enter", Some(DATA_RETURN)),
                Hook::new(&image, found.send, "nss_send_enter", Some(DATA_RETURN)),
                Hook::new(&image, found.read, "nss_recv_enter", Some(DATA_RETURN)),
                Hook::new(&image, found.recv, "nss_recv_enter", Some(DATA_RETURN)),
            ];
            Ok(vec![target(
                &image,
                &description,
                hooks,
                NssObject {
                    descriptor,
                    secrets: None,
                },
            )])
        }
        Mode::Keylog | Mode::Pcap => {
            let call = secrets::key_log_call(&image, &companion("libnss3")?)?;
            info!("{}: {call}", libssl3.display());
            let softoken_path = libssl3.with_file_name(SOFTOKEN);
            let softoken =
                ElfImage::open(&softoken_path).map_err(|err| anyhow!("NSS's secrets are read in softoken: {err:#}"))?;
            let stores = secrets::softoken_stores(&softoken)?;
            info!("{}: {stores}", softoken_path.display());
            let layouts = NssObject {
                descriptor,
                secrets: Some(SecretFields {
                    client_random: call.client_random,
                    key_handle: call.key_handle,
                }),
            };
            let key_log = vec![Hook::new(&image, call.function, "nss_keylog_enter", None)];
            let derive: Vec<Hook> = vec![
                Hook::new(
                    &softoken,
                    stores.derive_key,
                    "nss_derive_enter",
                    Some("nss_derive_return"),
                ),
                Hook::new(&softoken, stores.force_attribute, "nss_attribute_enter", None),
            ];
            let unwrap = stores.unwrapping.into_iter().flat_map(|unwrapping| {
                [
                    Hook::at_start(unwrapping.unwrap_key, "nss_unwrap_enter", Some("nss_derive_return")),
                    Hook::new(&softoken, unwrapping.add_attribute, "nss_attribute_enter", None),
                ]
            });
            let derive = derive.into_iter().chain(unwrap).collect();
            Ok(vec![
                target(&softoken, &format!("{description}'s softoken"), derive, layouts),
                target(&image, &description, key_log, layouts),
            ])
        }
    }
}

/// "NSS 3.87.1", from the version string libssl3 embeds; "NSS" where that
/// is missing.
fn version(libssl3: &ElfImage) -> String {
    libssl3
        .strings_starting_with(b"Version: NSS ")
        .find_map(|text| {
            std::str::from_utf8(text.strip_prefix(b"Version: ")?)
                .ok()
                .map(str::to_string)
        })
        .filter(|version| version.len() < 32)
        .unwrap_or_else(|| "NSS".to_string())
}

fn target(image: &ElfImage, description: &str, hooks: Vec<Hook>, layouts: NssObject) -> HookTarget<NssObject> {
    HookTarget {
        binary: image.path().to_path_buf(),
        description: description.to_string(),
        hooks,
        layouts,
    }
}

/// The libssl3 the process maps; waits for it to be mapped.
fn library_mapped_by(pid: u32) -> Result<PathBuf> {
    libpath::wait_for_mapping(pid, "NSS", |files| {
        files
            .iter()
            .find(|file| file.path_in_process.file_name().is_some_and(|name| name == LIBSSL3))
            .map(|file| file.host_path.clone())
    })
}

/// Every libssl3.so on the system.
fn system_targets(mode: Mode) -> Result<Vec<HookTarget<NssObject>>> {
    let mut found = Vec::new();
    for path in libpath::find_system_libraries(|name| name == LIBSSL3) {
        match hook_targets(&path, mode) {
            Ok(targets) => found.extend(targets),
            Err(err) => debug!("skipping {}: {err:#}", path.display()),
        }
    }
    if found.is_empty() {
        bail!("no {LIBSSL3} found in ld.so.cache or the usual directories; name it with --nspr PATH");
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIR: &str = "/usr/lib/x86_64-linux-gnu";

    #[test]
    fn text_mode_hooks_the_four_methods() {
        let targets = hook_targets(&Path::new(DIR).join(LIBSSL3), Mode::Text).unwrap();
        let [target] = &targets[..] else { panic!("{targets:?}") };
        assert_eq!(target.hooks.len(), 4);
        assert_eq!(target.description, "NSS 3.87.1");
        assert!(target.hooks.iter().all(|hook| hook.return_program == Some(DATA_RETURN)));
    }

    #[test]
    fn keylog_mode_hooks_libssl3_and_softoken_with_one_layout() {
        let targets = hook_targets(&Path::new(DIR).join(LIBSSL3), Mode::Keylog).unwrap();
        let [softoken, libssl3] = &targets[..] else {
            panic!("{targets:?}")
        };
        assert!(softoken.binary.ends_with(SOFTOKEN) && libssl3.binary.ends_with(LIBSSL3));
        assert_eq!(softoken.layouts, libssl3.layouts);
    }

    #[test]
    fn nspr_leads_to_libssl3_and_others_are_refused() {
        let nspr = Path::new(DIR).join("libnspr4.so");
        assert_eq!(libssl3_for(&nspr).unwrap(), Path::new(DIR).join(LIBSSL3));
        let err = libssl3_for(&Path::new(DIR).join("libgnutls.so.30")).unwrap_err();
        assert!(
            err.to_string().contains("neither NSPR's libnspr4 nor NSS's libssl3"),
            "{err}"
        );
    }
}
