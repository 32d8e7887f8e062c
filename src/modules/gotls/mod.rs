//! Go's crypto/tls, linked into every Go program that uses it: Kubernetes
//! components, Docker, Terraform, cloud CLIs and agents. Found in the
//! program itself, by symbol or, in stripped programs, through the
//! runtime's function table.

mod object;

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow, bail};
use tracing::{debug, info, warn};

use super::{Hook, HookTarget, Module, Tracepoints};
use crate::cli::{Config, Mode};
use crate::probe::{Flavor, LoadedProbes, ProbeSettings};
use crate::target::elf::ElfImage;
use crate::target::foreign;
use crate::target::golang::{self, GoVersion};
use crate::target::libpath;

/// Every secret crypto/tls derives goes through it, with its label.
const KEY_LOG_FUNCTION: &str = "crypto/tls.(*Config).writeKeyLog";

pub struct GoTls;

/// Nothing differs between Go programs that the object must be told: the
/// register ABI is fixed for the versions read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoTlsObject;

impl fmt::Display for GoTlsObject {
    fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
        Ok(())
    }
}

impl Module for GoTls {
    type Layouts = GoTlsObject;

    fn name(&self) -> &'static str {
        "gotls"
    }

    fn discover(&self, config: &Config) -> Result<Vec<HookTarget<GoTlsObject>>> {
        if config.mode == Mode::Text {
            bail!(
                "gotls captures Go programs' secrets so far: use -m keylog (a key log file) or -m pcapng (packets with their keys); text mode is to come"
            );
        }
        if let Some(pid) = config.pid {
            libpath::ensure_process_exists(pid)?;
        }
        match (&config.library, config.pid) {
            (Some(path), _) => Ok(vec![
                inspect(&ElfImage::open(path)?).map_err(|err| anyhow!("--elfpath: {err:#}"))?,
            ]),
            (None, Some(pid)) => {
                let executable = PathBuf::from(format!("/proc/{pid}/exe"));
                Ok(vec![
                    inspect(&ElfImage::open(&executable)?).map_err(|err| anyhow!("pid {pid}: {err:#}"))?,
                ])
            }
            (None, None) => Ok(running_targets()),
        }
    }

    fn load(&self, flavor: Flavor, settings: &ProbeSettings, _: &GoTlsObject) -> Result<LoadedProbes> {
        object::load(flavor, settings)
    }

    fn tracepoints(&self, _: Mode, _: &GoTlsObject) -> Tracepoints {
        Tracepoints::None
    }

    /// Go programs started later are hooked as they start, even when none
    /// runs now.
    fn layouts_without_targets(&self) -> Option<GoTlsObject> {
        Some(GoTlsObject)
    }

    fn inspect_program(&self, executable: &Path, _config: &Config) -> Option<HookTarget<GoTlsObject>> {
        if !foreign::is_go_program(executable) {
            return None;
        }
        let image = ElfImage::open(executable).ok()?;
        inspect(&image)
            .inspect_err(|err| debug!("{}: {err:#}", executable.display()))
            .ok()
    }

    fn inspect_library(&self, _: &Path, _: &Config) -> Option<Result<Vec<HookTarget<GoTlsObject>>>> {
        None
    }
}

/// The oldest Go that passes arguments in registers, on this architecture.
fn register_abi_since(image: &ElfImage) -> GoVersion {
    let minor = match image.architecture() {
        Some(::object::Architecture::Aarch64) => 18,
        _ => 17,
    };
    GoVersion { major: 1, minor }
}

/// What to hook in a Go program; `image` may be anything.
pub fn inspect(image: &ElfImage) -> Result<HookTarget<GoTlsObject>> {
    let path = image.path().display();
    if !matches!(
        image.architecture(),
        Some(::object::Architecture::X86_64 | ::object::Architecture::Aarch64)
    ) {
        bail!("{path}: Go programs are read on x86_64 and aarch64 only");
    }
    let version = golang::version_string(image)?;
    match golang::parse_version(&version) {
        Some(parsed) if parsed < register_abi_since(image) => bail!(
            "{path} is built with {version}, which passes arguments on the stack; gotls reads {} and later",
            register_abi_since(image)
        ),
        Some(_) => {}
        None => warn!("{path}: Go version {version:?} is not a release; reading it as a current one"),
    }
    let key_log = golang::function(image, KEY_LOG_FUNCTION)
        .ok_or_else(|| anyhow!("{path} is a Go program ({version}) without crypto/tls"))?;
    Ok(HookTarget {
        binary: image.path().to_path_buf(),
        description: format!("Go {version}"),
        hooks: vec![Hook::at_start(key_log, "gotls_keylog_enter", None)],
        layouts: GoTlsObject,
    })
}

/// The running Go programs built with crypto/tls, once each.
fn running_targets() -> Vec<HookTarget<GoTlsObject>> {
    let targets: Vec<_> = foreign::running_go_programs(None)
        .iter()
        .filter_map(|image| {
            inspect(image)
                .inspect_err(|err| info!("skipping {}: {err:#}", image.path().display()))
                .ok()
        })
        .collect();
    if targets.is_empty() {
        info!("no Go program with crypto/tls runs now; those started from now on are hooked as they start");
    }
    targets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_go_command_has_its_key_log_function_hooked() {
        let target = inspect(&ElfImage::open(Path::new("/usr/lib/go-1.19/bin/go")).unwrap()).unwrap();
        assert!(target.description.starts_with("Go go1.19"), "{}", target.description);
        let [hook] = &target.hooks[..] else {
            panic!("{:?}", target.hooks)
        };
        assert_eq!(hook.symbol.name, KEY_LOG_FUNCTION);
        assert_eq!(hook.return_program, None, "never a uretprobe on Go code");
    }

    #[test]
    fn other_programs_are_refused() {
        let err = inspect(&ElfImage::open(Path::new("/usr/bin/openssl")).unwrap()).unwrap_err();
        assert!(err.to_string().contains("not a Go program"), "{err}");
    }
}
