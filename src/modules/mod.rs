//! Capture modules. A module is a BPF object (under `bpf/`), the discovery of
//! what to hook, and the events its probes send. The rest of the pipeline
//! (connections, protocol parsers, sinks) is shared, and knows no module.
//! Adding one: its `.bpf.c`, its folder here, and a line in `run_capture`.
//! The audit modules (shells, databases) report commands and queries
//! instead, through `crate::audit`.

pub mod gnutls;
pub mod gotls;
pub mod mysqld;
pub mod nss;
pub mod openssl;
pub mod postgres;
mod query_events;
pub mod shell;

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::audit;
use crate::capture::{self, Summary};
use crate::cli::{Config, Mode, ModuleKind};
use crate::probe::{Flavor, LoadedProbes, ProbeSettings};
use crate::sink::Sink;
use crate::target::disasm::{self, ProbeSite};
use crate::target::elf::{ElfImage, FunctionSymbol};

/// Runs the capture of the module the command line names.
pub fn run_capture(config: &Config, sinks: Vec<&mut dyn Sink>) -> Result<Summary> {
    if let Some(version) = config
        .ssl_version
        .as_deref()
        .filter(|_| config.module != ModuleKind::Tls)
    {
        tracing::info!(
            "--ssl_version {version} is not needed: this module finds what it hooks in the library's code, whatever its version"
        );
    }
    match config.module {
        ModuleKind::Tls => capture::run(&openssl::OpenSsl, config, sinks),
        ModuleKind::GnuTls => capture::run(&gnutls::GnuTls, config, sinks),
        ModuleKind::Nss => capture::run(&nss::Nss, config, sinks),
        ModuleKind::GoTls => capture::run(&gotls::GoTls::default(), config, sinks),
        ModuleKind::Bash => audit::run(&shell::Shell::Bash, config, sinks),
        ModuleKind::Zsh => audit::run(&shell::Shell::Zsh, config, sinks),
        ModuleKind::Mysqld => audit::run(&mysqld::Mysqld, config, sinks),
        ModuleKind::Postgres => audit::run(&postgres::Postgres, config, sinks),
    }
}

/// A function to probe: an entry program on its first instruction, and
/// possibly a return program that fires when it returns.
#[derive(Debug, Clone)]
pub struct Hook {
    pub symbol: FunctionSymbol,
    /// The instruction the entry probe replaces, and what it costs.
    pub site: Option<ProbeSite>,
    pub entry_program: &'static str,
    /// None where the entry alone sees all it needs, sparing a uretprobe.
    pub return_program: Option<&'static str>,
    /// What the entry program reads through bpf_get_attach_cookie.
    pub cookie: u64,
}

impl Hook {
    /// A hook on `symbol`, its entry probe moved to the site `disasm` picks
    /// (past leading tests and branches, onto an instruction the kernel
    /// emulates, when there is one).
    pub fn new(
        image: &ElfImage,
        symbol: FunctionSymbol,
        entry_program: &'static str,
        return_program: Option<&'static str>,
    ) -> Hook {
        let site = disasm::probe_site(image, &symbol);
        let offset = site.as_ref().map_or(0, |site| site.offset);
        Hook {
            symbol: FunctionSymbol {
                address: symbol.address + offset,
                file_offset: symbol.file_offset + offset,
                ..symbol
            },
            site,
            entry_program,
            return_program,
            cookie: 0,
        }
    }
}

impl Hook {
    /// A hook on the instruction at `address` in `function`, an instruction
    /// boundary the caller found by decoding from the function's start.
    pub fn at_instruction(
        image: &ElfImage,
        function: &FunctionSymbol,
        address: u64,
        entry_program: &'static str,
    ) -> Option<Hook> {
        let offset = address.checked_sub(function.address)?;
        Some(Hook {
            symbol: FunctionSymbol {
                name: function.name.clone(),
                address,
                size: function.size.saturating_sub(offset),
                file_offset: image.file_offset_of(address)?,
            },
            site: disasm::site_at(image, address, offset),
            entry_program,
            return_program: None,
            cookie: 0,
        })
    }

    /// A hook whose entry probe stays on the function's first instruction,
    /// for a program that reads the arguments its caller left on the stack.
    pub fn at_start(symbol: FunctionSymbol, entry_program: &'static str, return_program: Option<&'static str>) -> Hook {
        Hook {
            symbol,
            site: None,
            entry_program,
            return_program,
            cookie: 0,
        }
    }
}

/// One file to place hooks in, and what the module's BPF object must be
/// told about it before it loads (`layouts`: where the library keeps
/// secrets or sockets). Targets whose layouts agree share one object.
#[derive(Debug, Clone)]
pub struct HookTarget<L> {
    /// Path we open and attach to (through /proc/PID/root for another mount namespace).
    pub binary: PathBuf,
    /// What the file is, for the user: library and version.
    pub description: String,
    pub hooks: Vec<Hook>,
    pub layouts: L,
}

/// "NAME at ADDRESS (SITE)": where the probe went, and what it costs.
impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at {:#x}", self.symbol.name, self.symbol.address)?;
        match &self.site {
            Some(site) => write!(f, " ({site})"),
            None => Ok(()),
        }
    }
}

impl<L: fmt::Display> fmt::Display for HookTarget<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.hooks.iter().map(Hook::to_string).collect();
        write!(
            f,
            "{} ({}): {}{}",
            self.binary.display(),
            self.description,
            names.join(", "),
            self.layouts
        )
    }
}

/// The syscall tracepoints an object's programs need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tracepoints {
    None,
    /// The data path's, attached once a session's transport turns out to
    /// hold no socket; the library's own state names the others.
    OnDemand,
    /// The data path's, from the start: sockets are named from syscalls.
    FromStart,
    /// The programs whose names start with this.
    Prefixed(&'static str),
}

pub trait Module {
    /// What an object is told about its targets before it loads.
    type Layouts: Clone + PartialEq + fmt::Display;

    fn name(&self) -> &'static str;
    /// Finds the files to hook; errors name the missing or wrong input.
    fn discover(&self, config: &Config) -> Result<Vec<HookTarget<Self::Layouts>>>;
    /// Loads this module's BPF object for targets with `layouts`.
    fn load(&self, flavor: Flavor, settings: &ProbeSettings, layouts: &Self::Layouts) -> Result<LoadedProbes>;
    /// The syscall tracepoints such an object needs in `mode`.
    fn tracepoints(&self, mode: Mode, layouts: &Self::Layouts) -> Tracepoints;
    /// Whatever else the module attaches once its targets are hooked.
    fn watch(&self, _probes: &mut LoadedProbes, _config: &Config) -> Result<()> {
        Ok(())
    }

    /// What to hook in the executable of a process that started during the
    /// capture, when the library is linked into it; None for most programs.
    fn inspect_program(&self, _executable: &Path, _config: &Config) -> Option<HookTarget<Self::Layouts>> {
        None
    }

    /// The layouts of an object to load when no target was found at start,
    /// for a module whose targets may all start later; None ends the
    /// capture before it starts.
    fn layouts_without_targets(&self) -> Option<Self::Layouts> {
        None
    }

    /// Told of each process the probes reported (a program started, or a
    /// library loaded), once its code is hooked.
    fn process_reported(&self, _probes: &LoadedProbes, _pid: u32) {}

    /// What to hook in `library`, a file a process mapped during the
    /// capture, when it is this module's library; None when it is not.
    fn inspect_library(&self, library: &Path, config: &Config) -> Option<Result<Vec<HookTarget<Self::Layouts>>>>;
}

/// The file name of `path`, when it is valid UTF-8.
pub fn file_name(path: &Path) -> Option<&str> {
    path.file_name()?.to_str()
}
