//! Interactive bash and zsh: every command line typed, whole, with the exit
//! status of the command it ran (`bpf/shell.bpf.c`).
//!
//! A line comes from the return of the shell's line editor (readline;
//! zsh's zleentry). A command is done when the shell next asks for one
//! (bash's read_command; zleentry reading a new command line): the lines
//! read since then were one command, and the shell's status variable holds
//! how it ended. The probe that reads that variable finds it from its own
//! address, both being in the shell's executable.

mod commands;
mod object;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use tracing::info;

use super::Hook;
use crate::audit::{Assembler, AuditModule};
use crate::cli::Config;
use crate::probe::{Flavor, LoadedProbes, ProbeSettings, RawShellSettings};
use crate::target::elf::{ElfImage, FunctionSymbol};
use crate::target::libpath;

pub use commands::CommandAssembler;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shell {
    Bash,
    Zsh,
}

/// What each shell is probed at.
struct ShellFunctions {
    /// Where the shell asks for its next command; the probe there reads the
    /// status variable.
    next_command: (&'static str, &'static str),
    /// The exit function, whose first argument is the shell's exit status.
    exit: &'static str,
    status_variable: &'static str,
}

impl Shell {
    fn functions(self) -> ShellFunctions {
        match self {
            Shell::Bash => ShellFunctions {
                next_command: ("read_command", "bash_read_command_enter"),
                exit: "exit_shell",
                status_variable: "last_command_exit_value",
            },
            Shell::Zsh => ShellFunctions {
                next_command: ("zleentry", "zsh_zleentry_enter"),
                exit: "zexit",
                status_variable: "lastval",
            },
        }
    }

    fn program_name(self) -> &'static str {
        match self {
            Shell::Bash => "bash",
            Shell::Zsh => "zsh",
        }
    }

    /// The shell named on the command line, else `$SHELL` when it is this
    /// shell, else the usual path.
    fn binary(self, named: Option<&Path>) -> PathBuf {
        if let Some(path) = named {
            return path.to_path_buf();
        }
        std::env::var_os("SHELL")
            .map(PathBuf::from)
            .filter(|path| super::file_name(path) == Some(self.program_name()))
            .unwrap_or_else(|| PathBuf::from(format!("/bin/{}", self.program_name())))
    }

    fn flag(self) -> &'static str {
        match self {
            Shell::Bash => "--bash",
            Shell::Zsh => "--zsh",
        }
    }
}

impl AuditModule for Shell {
    fn name(&self) -> &'static str {
        self.program_name()
    }

    fn start(&self, config: &Config, flavor: Flavor, settings: &ProbeSettings) -> Result<LoadedProbes> {
        if let Some(pid) = config.pid {
            libpath::ensure_process_exists(pid)?;
        }
        let shell = self.binary(config.library.as_deref());
        let image = open_program(&shell, self.flag())?;
        let functions = self.functions();
        let function = |name: &str| {
            image.function(name).ok_or_else(|| {
                anyhow!(
                    "{} is not {}: it has no {name} function; give {} the path of {}",
                    shell.display(),
                    self.program_name(),
                    self.flag(),
                    self.program_name()
                )
            })
        };
        let (next_name, next_program) = functions.next_command;
        let next_command = Hook::new(&image, function(next_name)?, next_program, None);
        let exit = Hook::new(&image, function(functions.exit)?, "shell_exit_enter", None);
        let status = image.variable(functions.status_variable).ok_or_else(|| {
            anyhow!(
                "{} has no {} variable, where {} keeps exit statuses: this build is not supported",
                shell.display(),
                functions.status_variable,
                self.program_name()
            )
        })?;
        let probe = next_command.symbol.address;
        let shell_settings = RawShellSettings {
            status_from_probe: i64::try_from(i128::from(status) - i128::from(probe))
                .context("the status variable is too far from the probe")?,
            probe_address_rest: probe % 16,
        };
        let mut probes = object::load(flavor, settings, &shell_settings)?;
        let (line_file, line_function, line_program) = match self {
            Shell::Bash => {
                let (file, readline) = readline(&image, config.readline.as_deref())?;
                (file, readline, "bash_readline_return")
            }
            // zleentry returns the line it read; its entry probe saw which read it was.
            Shell::Zsh => (shell.clone(), function("zleentry")?, "zsh_zleentry_return"),
        };
        for hook in [&next_command, &exit] {
            probes.attach_uprobe(hook.entry_program, &shell, hook.symbol.file_offset, false, config.pid)?;
        }
        // A return probe goes on the function's first instruction, where the
        // return address is on top of the stack.
        probes.attach_uprobe(line_program, &line_file, line_function.file_offset, true, config.pid)?;
        probes.attach_pending_uprobes()?;
        info!(
            "hooking {}: {next_command}, {exit}; lines from {} in {}",
            shell.display(),
            line_function.name,
            line_file.display()
        );
        Ok(probes)
    }

    fn assembler(&self, config: &Config) -> Box<dyn Assembler> {
        Box::new(CommandAssembler::new(*self, config.shell_status))
    }
}

/// The program at `path`, with a one-line error that names `flag`.
fn open_program(path: &Path, flag: &str) -> Result<ElfImage> {
    if !path.exists() {
        bail!("{}: no such file; give {flag} the path of the shell", path.display());
    }
    ElfImage::open(path).with_context(|| format!("{flag} {}", path.display()))
}

/// bash's readline: the one named, else its own (Debian's bash has it
/// built in), else the libreadline it links.
fn readline(bash: &ElfImage, named: Option<&Path>) -> Result<(PathBuf, FunctionSymbol)> {
    let from = |path: &Path| -> Result<(PathBuf, FunctionSymbol)> {
        let image = open_program(path, "--readlineso")?;
        let readline = image.function("readline").ok_or_else(|| {
            anyhow!(
                "{} has no readline function; give --readlineso libreadline's path",
                path.display()
            )
        })?;
        Ok((path.to_path_buf(), readline))
    };
    if let Some(path) = named {
        return from(path);
    }
    if let Some(readline) = bash.function("readline") {
        return Ok((bash.path().to_path_buf(), readline));
    }
    let linked = bash
        .needed_libraries()
        .into_iter()
        .find(|name| name.starts_with("libreadline.so"))
        .ok_or_else(|| {
            anyhow!(
                "{} has no readline and links no libreadline; give --readlineso the library it reads lines with",
                bash.path().display()
            )
        })?;
    let found = libpath::find_system_libraries(|name| name == linked);
    match found.first() {
        Some(path) => from(path),
        None => {
            bail!("{linked}, which bash links, is not installed where the loader looks; give --readlineso its path")
        }
    }
}
