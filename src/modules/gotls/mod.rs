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
use crate::probe::{self, Flavor, LoadedProbes, ProbeSettings};
use crate::target::disasm;
use crate::target::elf::{ElfImage, FunctionSymbol};
use crate::target::foreign;
use crate::target::golang::{self, GoVersion};
use crate::target::libpath;

/// Every secret crypto/tls derives goes through it, with its label.
const KEY_LOG_FUNCTION: &str = "crypto/tls.(*Config).writeKeyLog";
const WRITE_FUNCTION: &str = "crypto/tls.(*Conn).Write";
const READ_FUNCTION: &str = "crypto/tls.(*Conn).Read";
/// The first method of a *net.TCPConn as a net.Conn (methods in name order).
const TCP_CONN_CLOSE: &str = "net.(*TCPConn).Close";
/// Read copies the decrypted record into its buffer with it.
const MEMMOVE: &str = "runtime.memmove";

/// Where the kernel has no uprobe cookies: the Go programs seen that have
/// net.(*TCPConn).Close, by file identity, with where it is and the page
/// their first segment starts at.
#[derive(Default)]
pub struct GoTls {
    programs: Mutex<HashMap<(u64, u64), TcpConnClose>>,
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

    /// In text mode without uprobe cookies, says where each running process
    /// of a hooked program has net.(*TCPConn).Close, so that its
    /// connections' sockets are read.
    fn watch(&self, probes: &mut LoadedProbes, config: &Config) -> Result<()> {
        if config.mode == Mode::Text && !probe::uprobe_cookies() {
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
        let Ok(Some(close)) = known else { return };
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
            Mode::Keylog | Mode::Pcap => vec![entry_hook(
                image,
                &function(KEY_LOG_FUNCTION)?,
                "gotls_keylog_enter",
                "gotls_keylog_past_stack_check",
            )?],
            Mode::Text => {
                let mut hooks = vec![entry_hook(
                    image,
                    &function(WRITE_FUNCTION)?,
                    "gotls_write_enter",
                    "gotls_write_past_stack_check",
                )?];
                hooks.extend(read_hooks(image, &function(READ_FUNCTION)?, probe::uprobe_cookies())?);
                self.name_sockets(image, &mut hooks);
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

    /// Tells the programs where `image` has net.(*TCPConn).Close, so that
    /// its connections' sockets are read: in each probe's cookie, as a
    /// distance from the probe, where the kernel has cookies. Else each
    /// process's address is written to a map, once userspace knows the
    /// process: a program started after an --elfpath capture asks on its
    /// first call, and its first records wait for the answer.
    fn name_sockets(&self, image: &ElfImage, hooks: &mut [Hook]) {
        let path = image.path().display();
        let Some(close) = golang::function(image, TCP_CONN_CLOSE).map(|close| close.address) else {
            warn!("{path}: no {TCP_CONN_CLOSE}: its connections' sockets will be unknown");
            return;
        };
        if probe::uprobe_cookies() {
            if !carry_close_distance(hooks, close) {
                warn!(
                    "{path}: {TCP_CONN_CLOSE} is over 2 GiB from crypto/tls: its connections' sockets will be unknown"
                );
            }
            return;
        }
        let (Ok(metadata), Some(first_page)) = (std::fs::metadata(image.path()), image.first_load_page()) else {
            return;
        };
        if let Ok(mut programs) = self.programs.lock() {
            programs.insert(
                (metadata.dev(), metadata.ino()),
                TcpConnClose {
                    address: close,
                    first_page,
                },
            );
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

/// Puts in the high half of each hook's cookie the distance from its
/// instruction to `close` (see bpf/gotls.bpf.c); false, leaving them as they
/// are, when one does not fit.
fn carry_close_distance(hooks: &mut [Hook], close: u64) -> bool {
    let distance = |hook: &Hook| {
        let distance = i64::try_from(close)
            .ok()?
            .checked_sub(i64::try_from(hook.symbol.address).ok()?)?;
        i32::try_from(distance).ok().filter(|distance| *distance != 0)
    };
    let Some(distances) = hooks.iter().map(distance).collect::<Option<Vec<_>>>() else {
        return false;
    };
    for (hook, distance) in hooks.iter_mut().zip(distances) {
        hook.cookie |= u64::from(distance as u32) << 32;
    }
    true
}

/// The entry probe of `function`: on the branch of its stack-bound check
/// where it has one (emulated), else on its first instruction.
fn entry_hook(
    image: &ElfImage,
    function: &FunctionSymbol,
    at_start: &'static str,
    past_check: &'static str,
) -> Result<Hook> {
    let hook = match golang::stack_check_branch(image, function) {
        Some(branch) => Hook::at_instruction(image, function, branch, past_check),
        None => Hook::at_instruction(image, function, function.address, at_start),
    };
    hook.ok_or_else(|| {
        anyhow!(
            "{}: {} is outside the program's code",
            image.path().display(),
            function.name
        )
    })
}

/// Where Read's plaintext and connection are read. Its plaintext at its one
/// call of runtime.memmove, which copies the decrypted record into the
/// caller's buffer (a call, which the kernel emulates). Its connection there
/// too when `cookies` can tell the program where Read keeps its receiver,
/// else from an entry probe that notes it. Failing a single memmove call, at
/// the entry and each return instruction, which x86-64 kernels step out of
/// line.
fn read_hooks(image: &ElfImage, read: &FunctionSymbol, cookies: bool) -> Result<Vec<Hook>> {
    let path = image.path().display();
    let entry = || entry_hook(image, read, "gotls_read_enter", "gotls_read_past_stack_check");
    let copies = golang::function(image, MEMMOVE)
        .map(|memmove| golang::calls_of(image, read, memmove.address))
        .unwrap_or_default();
    if let [copy] = copies[..] {
        let copy_hook = |program| {
            Hook::at_instruction(image, read, copy, program)
                .ok_or_else(|| anyhow!("{path}: {READ_FUNCTION}'s copy is outside the program's code"))
        };
        match golang::receiver_spill_slot(image, read).filter(|_| cookies) {
            Some(slot) => {
                return Ok(vec![Hook {
                    cookie: slot,
                    ..copy_hook("gotls_read_copy_by_cookie")?
                }]);
            }
            None if cookies => {
                debug!("{path}: {READ_FUNCTION} keeps its receiver nowhere certain: probing its entry too")
            }
            None => debug!("{path}: no uprobe cookies on this kernel: probing {READ_FUNCTION}'s entry too"),
        }
        return Ok(vec![entry()?, copy_hook("gotls_read_copy")?]);
    }
    debug!(
        "{path}: {READ_FUNCTION} calls {MEMMOVE} {} times, not once: reading at its return instructions",
        copies.len()
    );
    let returns: Vec<Hook> = disasm::return_instructions(image, read)
        .into_iter()
        .filter_map(|ret| Hook::at_instruction(image, read, ret, "gotls_read_return"))
        .collect();
    if returns.is_empty() {
        bail!("{path}: no return instruction found in {READ_FUNCTION}");
    }
    Ok([vec![entry()?], returns].concat())
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
        assert_eq!(hook.entry_program, "gotls_keylog_past_stack_check");
        assert_eq!(hook.return_program, None, "never a uretprobe on Go code");
    }

    /// Write probed on its stack-check branch and Read's plaintext at its
    /// copy, all sites the kernel emulates; Read's receiver read there from
    /// `slot` with uprobe cookies, else noted on Read's stack-check branch.
    fn assert_emulated_text_hooks(image: &ElfImage, branch: &str, copy: &str, slot: u64) {
        let target = GoTls::default().inspect(image, Mode::Text).unwrap();
        assert_eq!(target.hooks[0].entry_program, "gotls_write_past_stack_check");
        assert!(
            target.hooks.iter().all(|hook| hook.return_program.is_none()),
            "never a uretprobe on Go code"
        );
        let read = golang::function(image, READ_FUNCTION).unwrap();
        let alone = read_hooks(image, &read, true).unwrap();
        let with_entry = read_hooks(image, &read, false).unwrap();
        let programs = |hooks: &[Hook]| hooks.iter().map(|hook| hook.entry_program).collect::<Vec<_>>();
        assert_eq!(programs(&alone), ["gotls_read_copy_by_cookie"]);
        assert_eq!(alone[0].cookie, slot);
        assert_eq!(
            programs(&with_entry),
            ["gotls_read_past_stack_check", "gotls_read_copy"]
        );
        assert_eq!(with_entry[1].cookie, 0);
        let memmove = golang::function(image, MEMMOVE).unwrap();
        for (hook, function, mnemonic) in [
            (&target.hooks[0], WRITE_FUNCTION, branch),
            (&with_entry[0], READ_FUNCTION, branch),
            (&with_entry[1], READ_FUNCTION, copy),
            (&alone[0], READ_FUNCTION, copy),
        ] {
            let start = golang::function(image, function).unwrap();
            let site = hook.site.as_ref().unwrap();
            assert!(site.emulated && site.mnemonic == mnemonic, "{function}: {site}");
            assert_eq!(hook.symbol.address, start.address + site.offset);
            assert!(site.offset > 0 && site.offset < start.size, "{function}: {site}");
        }
        assert_eq!(
            golang::calls_of(image, &read, memmove.address),
            [alone[0].symbol.address]
        );
    }

    #[test]
    fn text_mode_probes_emulated_sites_on_x86_64() {
        let go = ElfImage::open(Path::new("/usr/lib/go-1.19/bin/go")).unwrap();
        assert_emulated_text_hooks(&go, "jbe", "call", 0x70);
    }

    #[test]
    fn text_mode_probes_simulated_sites_on_aarch64() {
        let dir = tempfile::tempdir().unwrap();
        let binary = dir.path().join("client_arm64");
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let built = std::process::Command::new("go")
            .args(["build", "-o"])
            .arg(&binary)
            .arg(root.join("tests/peers/go_https_client.go"))
            .env("GOARCH", "arm64")
            .env("GO111MODULE", "off")
            .env("GOCACHE", root.join("target/go-cache"))
            .env("HOME", dir.path())
            .status()
            .unwrap();
        assert!(built.success());
        let image = ElfImage::open(&binary).unwrap();
        assert_emulated_text_hooks(&image, "b.cond", "bl", 120);
    }

    #[test]
    fn read_is_probed_at_each_return_when_it_copies_otherwise() {
        let go = ElfImage::open(Path::new("/usr/lib/go-1.19/bin/go")).unwrap();
        let read = golang::function(&go, READ_FUNCTION).unwrap();
        let returns = disasm::return_instructions(&go, &read);
        assert!(!returns.is_empty());
        for ret in &returns {
            assert_eq!(go.code_between(*ret, ret + 1), Some(&[0xc3u8][..]));
        }
        // A function without a memmove call: here, Write.
        let write = golang::function(&go, WRITE_FUNCTION).unwrap();
        let hooks = read_hooks(&go, &write, true).unwrap();
        assert_eq!(hooks[0].entry_program, "gotls_read_past_stack_check");
        assert!(hooks.len() > 1);
        for hook in &hooks[1..] {
            assert_eq!(hook.entry_program, "gotls_read_return");
            let site = hook.site.as_ref().unwrap();
            assert!(site.mnemonic == "ret" && !site.emulated, "{site}");
        }
    }

    #[test]
    fn each_probe_carries_its_distance_to_the_tcp_close() {
        let go = ElfImage::open(Path::new("/usr/lib/go-1.19/bin/go")).unwrap();
        let read = golang::function(&go, READ_FUNCTION).unwrap();
        let write = golang::function(&go, WRITE_FUNCTION).unwrap();
        let close = golang::function(&go, TCP_CONN_CLOSE).unwrap().address;
        let mut hooks = read_hooks(&go, &read, true).unwrap();
        hooks.extend(read_hooks(&go, &write, true).unwrap());
        let slots: Vec<u64> = hooks.iter().map(|hook| hook.cookie).collect();
        assert!(carry_close_distance(&mut hooks, close));
        for (hook, slot) in hooks.iter().zip(slots) {
            assert_eq!(hook.cookie & 0xffff_ffff, slot, "the slot is kept");
            let distance = i64::from((hook.cookie >> 32) as u32 as i32);
            assert_eq!(hook.symbol.address.checked_add_signed(distance), Some(close));
        }
        // Out of reach, or on the probe itself: nothing is changed.
        let far = hooks[0].symbol.address + (1 << 31);
        let mut unchanged = read_hooks(&go, &read, true).unwrap();
        assert!(!carry_close_distance(&mut unchanged, far));
        let itself = unchanged[0].symbol.address;
        assert!(!carry_close_distance(&mut unchanged, itself));
        assert_eq!(unchanged[0].cookie, 0x70);
    }

    #[test]
    fn other_programs_are_refused() {
        let err = GoTls::default()
            .inspect(&ElfImage::open(Path::new("/usr/bin/openssl")).unwrap(), Mode::Keylog)
            .unwrap_err();
        assert!(err.to_string().contains("not a Go program"), "{err}");
    }
}
