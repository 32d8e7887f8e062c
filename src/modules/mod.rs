//! Capture modules. A module is a BPF object (under `bpf/`), the discovery of
//! what to hook, and the events its probes send. The rest of the pipeline
//! (connections, protocol parsers, sinks) is shared.

pub mod openssl;

use std::fmt;
use std::path::PathBuf;

use anyhow::Result;

use crate::cli::{Config, ModuleCommand};
use crate::modules::openssl::layout::OpensslLayout;
use crate::modules::openssl::socket_bio::SocketBioLayout;
use crate::probe::{Flavor, LoadedProbes, ProbeSettings};
use crate::target::disasm::{self, ProbeSite};
use crate::target::elf::{ElfImage, FunctionSymbol};

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
        }
    }
}

/// One file to place hooks in.
#[derive(Debug, Clone)]
pub struct HookTarget {
    /// Path we open and attach to (through /proc/PID/root for another mount namespace).
    pub binary: PathBuf,
    /// What the file is, for the user: library and version.
    pub description: String,
    pub hooks: Vec<Hook>,
    /// Where session secrets live, for modes that read them.
    pub key_layout: Option<OpensslLayout>,
    /// Where a socket BIO keeps its fd, for the modes that name sockets.
    pub socket_bio: Option<SocketBioLayout>,
}

impl fmt::Display for HookTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self
            .hooks
            .iter()
            .map(|h| match &h.site {
                Some(site) => format!("{} at {:#x} ({site})", h.symbol.name, h.symbol.address),
                None => format!("{} at {:#x}", h.symbol.name, h.symbol.address),
            })
            .collect();
        write!(
            f,
            "{} ({}): {}",
            self.binary.display(),
            self.description,
            names.join(", ")
        )?;
        match &self.socket_bio {
            Some(socket_bio) => write!(f, "; {socket_bio}"),
            None => Ok(()),
        }
    }
}

pub trait Module {
    fn name(&self) -> &'static str;
    /// Finds the files to hook; errors name the missing or wrong input.
    fn discover(&self, config: &Config) -> Result<Vec<HookTarget>>;
    /// Loads this module's BPF object with the filters applied.
    fn load(&self, flavor: Flavor, settings: &ProbeSettings) -> Result<LoadedProbes>;
}

pub fn module_for(command: &ModuleCommand) -> Box<dyn Module> {
    match command {
        ModuleCommand::Tls(_) => Box::new(openssl::OpenSsl),
    }
}
