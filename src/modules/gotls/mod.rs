//! Go's crypto/tls, linked into every Go program that uses it: Kubernetes
//! components, Docker, Terraform, cloud CLIs and agents. Found in the
//! program itself, by symbol or, in stripped programs, through the
//! runtime's function table.

mod object;

use std::collections::HashMap;
use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Result, anyhow, bail};
use tracing::{debug, info, warn};

use super::{Hook, HookTarget, Module, Tracepoints};
use crate::cli::{Config, Mode};
use crate::probe::{Flavor, LoadedProbes, ProbeSettings};
use crate::target::elf::{ElfImage, FunctionSymbol};
use crate::target::foreign;
use crate::target::golang::{self, GoVersion};
use crate::target::libpath;
use crate::target::{aarch64, disasm};

/// Every secret crypto/tls derives goes through it, with its label.
const KEY_LOG_FUNCTION: &str = "crypto/tls.(*Config).writeKeyLog";
const WRITE_FUNCTION: &str = "crypto/tls.(*Conn).Write";
const READ_FUNCTION: &str = "crypto/tls.(*Conn).Read";
/// The first method of a *net.TCPConn as a net.Conn (methods in name order).
const TCP_CONN_CLOSE: &str = "net.(*TCPConn).Close";

/// The Go programs seen, by file identity: where each has
/// net.(*TCPConn).Close, and the page its first segment starts at.
#[derive(Default)]
pub struct GoTls {
    programs: Mutex<HashMap<(u64, u64), Option<TcpConnClose>>>,
}

#[derive(Debug, Clone, Copy)]
struct TcpConnClose {
    address: u64,
    first_page: u64,
}

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
        if let Some(pid) = config.pid {
            libpath::ensure_process_exists(pid)?;
        }
        match (&config.library, config.pid) {
            (Some(path), _) => Ok(vec![
                self.inspect(&ElfImage::open(path)?, config.mode)
                    .map_err(|err| anyhow!("--elfpath: {err:#}"))?,
            ]),
            (None, Some(pid)) => {
                let executable = PathBuf::from(format!("/proc/{pid}/exe"));
                Ok(vec![
                    self.inspect(&ElfImage::open(&executable)?, config.mode)
                        .map_err(|err| anyhow!("pid {pid}: {err:#}"))?,
                ])
            }
            (None, None) => Ok(self.running_targets(config.mode)),
        }
    }

    fn load(&self, flavor: Flavor, settings: &ProbeSettings, _: &GoTlsObject) -> Result<LoadedProbes> {
        object::load(flavor, settings)
    }

    /// Sockets are read from the connection, not from syscalls.
    fn tracepoints(&self, _: Mode, _: &GoTlsObject) -> Tracepoints {
        Tracepoints::None
    }

    /// Go programs started later are hooked as they start, even when none
    /// runs now.
    fn layouts_without_targets(&self) -> Option<GoTlsObject> {
        Some(GoTlsObject)
    }

    /// In text mode, says where each running process of a hooked program
    /// has net.(*TCPConn).Close, so that its connections' sockets are read.
    fn watch(&self, probes: &mut LoadedProbes, config: &Config) -> Result<()> {
        if config.mode == Mode::Text {
            for pid in libpath::process_ids(config.pid) {
                self.process_reported(probes, pid);
            }
        }
        Ok(())
    }

    fn process_reported(&self, probes: &LoadedProbes, pid: u32) {
        let Ok(metadata) = std::fs::metadata(format!("/proc/{pid}/exe")) else {
            return;
        };
        let known = self
            .programs
            .lock()
            .map(|programs| programs.get(&(metadata.dev(), metadata.ino())).copied());
        let Ok(Some(Some(close))) = known else { return };
        let Some(load_address) = libpath::executable_load_address(pid) else {
            return;
        };
        let address = load_address.wrapping_sub(close.first_page).wrapping_add(close.address);
        if let Err(err) = probes.map("tcp_conn_close").and_then(|map| {
            use libbpf_rs::MapCore;
            map.update(&pid.to_ne_bytes(), &address.to_ne_bytes(), libbpf_rs::MapFlags::ANY)
                .map_err(anyhow::Error::from)
        }) {
            debug!("pid {pid}: its sockets stay unnamed: {err:#}");
        }
    }

    fn inspect_program(&self, executable: &Path, config: &Config) -> Option<HookTarget<GoTlsObject>> {
        if !foreign::is_go_program(executable) {
            return None;
        }
        let image = ElfImage::open(executable).ok()?;
        self.inspect(&image, config.mode)
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

impl GoTls {
    /// What to hook in a Go program for `mode`; `image` may be anything.
    pub fn inspect(&self, image: &ElfImage, mode: Mode) -> Result<HookTarget<GoTlsObject>> {
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
        let function = |name: &str| {
            golang::function(image, name)
                .ok_or_else(|| anyhow!("{path} is a Go program ({version}) without crypto/tls"))
        };
        let hooks = match mode {
            Mode::Keylog | Mode::Pcap => vec![Hook::at_start(function(KEY_LOG_FUNCTION)?, "gotls_keylog_enter", None)],
            Mode::Text => {
                let read = function(READ_FUNCTION)?;
                let returns = return_instructions(image, &read);
                if returns.is_empty() {
                    bail!("{path}: no return instruction found in {READ_FUNCTION}");
                }
                let mut hooks = vec![
                    Hook::at_start(function(WRITE_FUNCTION)?, "gotls_write_enter", None),
                    Hook::at_start(read, "gotls_read_enter", None),
                ];
                hooks.extend(
                    returns
                        .into_iter()
                        .map(|ret| Hook::at_start(ret, "gotls_read_return", None)),
                );
                self.remember(image);
                hooks
            }
        };
        Ok(HookTarget {
            binary: image.path().to_path_buf(),
            description: format!("Go {version}"),
            hooks,
            layouts: GoTlsObject,
        })
    }

    /// Notes where `image` has net.(*TCPConn).Close, if anywhere.
    fn remember(&self, image: &ElfImage) {
        let Ok(metadata) = std::fs::metadata(image.path()) else {
            return;
        };
        let close = golang::function(image, TCP_CONN_CLOSE).and_then(|close| {
            Some(TcpConnClose {
                address: close.address,
                first_page: image.first_load_page()?,
            })
        });
        if close.is_none() {
            warn!(
                "{}: no {TCP_CONN_CLOSE}: its connections' sockets will be unknown",
                image.path().display()
            );
        }
        if let Ok(mut programs) = self.programs.lock() {
            programs.insert((metadata.dev(), metadata.ino()), close);
        }
    }

    /// The running Go programs built with crypto/tls, once each.
    fn running_targets(&self, mode: Mode) -> Vec<HookTarget<GoTlsObject>> {
        let targets: Vec<_> = foreign::running_go_programs(None)
            .iter()
            .filter_map(|image| {
                self.inspect(image, mode)
                    .inspect_err(|err| info!("skipping {}: {err:#}", image.path().display()))
                    .ok()
            })
            .collect();
        if targets.is_empty() {
            info!("no Go program with crypto/tls runs now; those started from now on are hooked as they start");
        }
        targets
    }
}

/// Each return instruction of `function`, as a place for an entry probe.
fn return_instructions(image: &ElfImage, function: &FunctionSymbol) -> Vec<FunctionSymbol> {
    let end = function.address + function.size;
    let addresses = match image.architecture() {
        Some(::object::Architecture::Aarch64) => aarch64::return_instructions(image, function.address, end),
        _ => disasm::decode(image, function.address, end)
            .iter()
            .filter(|instruction| instruction.mnemonic() == iced_x86::Mnemonic::Ret)
            .map(|instruction| instruction.ip())
            .collect(),
    };
    addresses
        .into_iter()
        .filter_map(|address| {
            Some(FunctionSymbol {
                name: format!("{} return", function.name),
                address,
                size: 0,
                file_offset: image.file_offset_of(address)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_go_command_has_its_key_log_function_hooked() {
        let go = ElfImage::open(Path::new("/usr/lib/go-1.19/bin/go")).unwrap();
        let target = GoTls::default().inspect(&go, Mode::Keylog).unwrap();
        assert!(target.description.starts_with("Go go1.19"), "{}", target.description);
        let [hook] = &target.hooks[..] else {
            panic!("{:?}", target.hooks)
        };
        assert_eq!(hook.symbol.name, KEY_LOG_FUNCTION);
        assert_eq!(hook.return_program, None, "never a uretprobe on Go code");
    }

    #[test]
    fn text_mode_probes_write_read_and_each_return_of_read() {
        let go = ElfImage::open(Path::new("/usr/lib/go-1.19/bin/go")).unwrap();
        let target = GoTls::default().inspect(&go, Mode::Text).unwrap();
        let programs: Vec<_> = target.hooks.iter().map(|hook| hook.entry_program).collect();
        assert_eq!(programs[..2], ["gotls_write_enter", "gotls_read_enter"]);
        assert!(programs[2..].iter().all(|program| *program == "gotls_read_return") && programs.len() > 2);
        assert!(
            target.hooks.iter().all(|hook| hook.return_program.is_none()),
            "never a uretprobe on Go code"
        );
        let read = golang::function(&go, READ_FUNCTION).unwrap();
        for ret in &target.hooks[2..] {
            assert!(ret.symbol.address > read.address && ret.symbol.address < read.address + read.size);
            assert_eq!(
                go.code_between(ret.symbol.address, ret.symbol.address + 1),
                Some(&[0xc3u8][..])
            );
        }
    }

    #[test]
    fn other_programs_are_refused() {
        let err = GoTls::default()
            .inspect(&ElfImage::open(Path::new("/usr/bin/openssl")).unwrap(), Mode::Keylog)
            .unwrap_err();
        assert!(err.to_string().contains("not a Go program"), "{err}");
    }
}
