//! MariaDB and MySQL servers: every command a client sends, as the server's
//! `dispatch_command` runs it (`bpf/mysqld.bpf.c`), with the error the
//! server sent back and how long it took.

mod object;

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use tracing::{info, warn};

use super::Hook;
use super::query_events::{Dialect, QueryAssembler, Shown};
use crate::audit::{Assembler, AuditModule};
use crate::cli::Config;
use crate::probe::{Flavor, LoadedProbes, ProbeSettings};
use crate::target::disasm;
use crate::target::elf::{ElfImage, FunctionSymbol};
use crate::target::libpath;

use object::RawMysqldSettings;

pub struct Mysqld;

/// How a server's `dispatch_command` takes the command, by its C++ name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signature {
    /// `dispatch_command(enum_server_command, THD *, char *packet, uint length, ...)`:
    /// MariaDB 10.x (and MySQL 5.6).
    Packet,
    /// `dispatch_command(THD *, const COM_DATA *, enum_server_command)`: MySQL 5.7 and 8.0.
    ComData,
}

const SIGNATURES: &[(&str, Signature, &str)] = &[
    (
        "_Z16dispatch_command19enum_server_commandP3THDPcjb",
        Signature::Packet,
        "MariaDB 10.x",
    ),
    (
        "_Z16dispatch_command19enum_server_commandP3THDPcj",
        Signature::Packet,
        "MySQL 5.6",
    ),
    (
        "_Z16dispatch_commandP3THDPK8COM_DATA19enum_server_command",
        Signature::ComData,
        "MySQL 5.7/8.0",
    ),
];

/// Where each server sends an error packet: the function, and whether it
/// takes the THD before the error number. MariaDB's `net_send_error` is
/// inlined into its callers; every error packet goes through
/// `net_send_error_packet`.
const ERROR_FUNCTIONS: &[(&str, bool)] = &[
    ("_ZN8Protocol21net_send_error_packetEP3THDjPKcS3_", true),
    ("_ZN8Protocol14net_send_errorEP3THDjPKcS3_", true),
    ("_ZN16Protocol_classic10send_errorEjPKcS1_", false),
];

impl AuditModule for Mysqld {
    fn name(&self) -> &'static str {
        "mysqld"
    }

    fn start(&self, config: &Config, flavor: Flavor, settings: &ProbeSettings) -> Result<LoadedProbes> {
        if let Some(pid) = config.pid {
            libpath::ensure_process_exists(pid)?;
        }
        let server = match &config.library {
            Some(path) => path.clone(),
            None => default_server()?,
        };
        if !server.exists() {
            bail!(
                "{}: no such file; give -m/--mysqld the path of mariadbd or mysqld",
                server.display()
            );
        }
        let image = ElfImage::open(&server).with_context(|| format!("--mysqld {}", server.display()))?;
        let (dispatch, signature, flavour) = dispatch_command(&image, config)?;
        let identity = Identity::of(&image);
        let error = ERROR_FUNCTIONS
            .iter()
            .find_map(|&(name, takes_thd)| Some((image.function(name)?, takes_thd)));
        let mysqld = RawMysqldSettings {
            thread_id: identity.thread_id.unwrap_or(0),
            security_context: identity.security_context.unwrap_or(0),
            user: identity.user,
            client_ip: identity.client_ip,
            client_host: identity.client_host,
            com_data: u8::from(signature == Signature::ComData),
            error_takes_thd: u8::from(error.as_ref().is_some_and(|(_, takes_thd)| *takes_thd)),
            ..Default::default()
        };
        let mut probes = object::load(flavor, settings, &mysqld)?;
        let entry = Hook::new(&image, dispatch.clone(), "mysqld_dispatch_enter", None);
        probes.attach_uprobe(
            "mysqld_dispatch_enter",
            &server,
            entry.symbol.file_offset,
            false,
            config.pid,
        )?;
        // A return probe goes on the first instruction, where the return
        // address is on top of the stack.
        probes.attach_uprobe(
            "mysqld_dispatch_return",
            &server,
            dispatch.file_offset,
            true,
            config.pid,
        )?;
        let error_hook = error.map(|(function, _)| Hook::new(&image, function, "mysqld_error_enter", None));
        match &error_hook {
            Some(hook) => {
                probes.attach_uprobe(hook.entry_program, &server, hook.symbol.file_offset, false, config.pid)?
            }
            None => warn!(
                "{} has no error packet function ecapture knows: queries are shown without their errors",
                server.display()
            ),
        }
        probes.attach_pending_uprobes()?;
        info!(
            "hooking {} ({flavour} signature): {}{}{}",
            server.display(),
            entry,
            error_hook.map(|hook| format!(", {hook}")).unwrap_or_default(),
            identity.describe()
        );
        Ok(probes)
    }

    fn assembler(&self, _config: &Config) -> Box<dyn Assembler> {
        assembler()
    }
}

/// What makes queries of this module's records.
pub fn assembler() -> Box<dyn Assembler> {
    Box::new(QueryAssembler::new(MysqlCommands))
}

/// `/usr/sbin/mariadbd`, else `mysqld` or `mariadbd` on the path.
fn default_server() -> Result<PathBuf> {
    let mariadbd = PathBuf::from("/usr/sbin/mariadbd");
    if mariadbd.exists() {
        return Ok(mariadbd);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/mysql/bin")])
        .flat_map(|dir| [dir.join("mysqld"), dir.join("mariadbd")])
        .find(|candidate| candidate.exists())
        .ok_or_else(|| anyhow!("no mariadbd or mysqld found (/usr/sbin/mariadbd, $PATH); give -m/--mysqld its path"))
}

/// The function to probe and how it takes its arguments: `--offset` or
/// `--funcname` when given, else the binary's `dispatch_command`.
fn dispatch_command(image: &ElfImage, config: &Config) -> Result<(FunctionSymbol, Signature, &'static str)> {
    let known = SIGNATURES
        .iter()
        .find_map(|&(name, signature, flavour)| Some((image.function(name)?, signature, flavour)));
    let path = image.path().display();
    let function = match (config.offset, config.function.as_deref()) {
        (Some(address), _) => {
            let starts = image.function_starts().unwrap_or_default();
            if starts.binary_search(&address).is_err() {
                bail!("--offset {address:#x} is not the start of a function in {path}; give a function's address");
            }
            let file_offset = image
                .file_offset_of(address)
                .ok_or_else(|| anyhow!("--offset {address:#x} is not in {path}'s code"))?;
            FunctionSymbol {
                name: format!("function at {address:#x}"),
                address,
                size: 0,
                file_offset,
            }
        }
        (None, Some(name)) => image
            .function(name)
            .ok_or_else(|| anyhow!("{path} has no function {name}; give -f/--funcname a function it defines"))?,
        (None, None) => match &known {
            Some((function, _, _)) => function.clone(),
            None => bail!(
                "{path} has no dispatch_command of a known signature (MariaDB 10.x, MySQL 5.6, 5.7 or 8.0); \
                 give -f/--funcname or --offset"
            ),
        },
    };
    // A named function takes the arguments of the binary's own dispatch_command.
    let named = config
        .function
        .as_deref()
        .and_then(|name| SIGNATURES.iter().find(|(known, ..)| *known == name));
    let (signature, flavour) = match (named, &known) {
        (Some(&(_, signature, flavour)), _) => (signature, flavour),
        (None, Some((_, signature, flavour))) => (*signature, *flavour),
        (None, None) => (Signature::Packet, "MariaDB 10.x"),
    };
    Ok((function, signature, flavour))
}

/// Where a THD keeps who the connection is, read from the plugin accessors
/// the server exports; what cannot be read is left out of the events.
struct Identity {
    thread_id: Option<u32>,
    security_context: Option<u32>,
    user: u32,
    client_ip: u32,
    client_host: u32,
}

impl Identity {
    fn of(image: &ElfImage) -> Identity {
        let thread_id = disasm::single_field(image, "thd_get_thread_id").and_then(|f| u32::try_from(f).ok());
        // Both read THD's Security_context pointer, then one of its fields.
        let through_context = |accessor: &str| -> Option<(u64, u64)> {
            let paths = disasm::field_paths(image, accessor)?;
            match paths
                .iter()
                .filter(|path| path.len() == 2)
                .collect::<Vec<_>>()
                .as_slice()
            {
                [path] => Some((path[0], path[1])),
                _ => None,
            }
        };
        let fields = [
            through_context("thd_user_name"),
            through_context("thd_client_ip"),
            through_context("thd_client_host"),
        ];
        let (security_context, [user, client_ip, client_host]) = match fields {
            [
                Some((context, user)),
                Some((ip_context, ip)),
                Some((host_context, host)),
            ] if context == ip_context && context == host_context => (
                u32::try_from(context).ok(),
                [user, ip, host].map(|f| u32::try_from(f).unwrap_or(0)),
            ),
            _ => (None, [0; 3]),
        };
        Identity {
            thread_id,
            security_context,
            user,
            client_ip,
            client_host,
        }
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(offset) = self.thread_id {
            parts.push(format!("thread id at THD+{offset:#x}"));
        }
        if let Some(offset) = self.security_context {
            parts.push(format!(
                "user and client at THD+{offset:#x} -> +{:#x}, +{:#x} (host +{:#x})",
                self.user, self.client_ip, self.client_host
            ));
        }
        if parts.is_empty() {
            "; connections unnamed (no thd_get_thread_id, thd_user_name, thd_client_ip, thd_client_host to read)"
                .to_string()
        } else {
            format!("; {}", parts.join(", "))
        }
    }
}

/// The names of `enum_server_command`, shared by MySQL and MariaDB.
struct MysqlCommands;

const COMMAND_NAMES: &[&str] = &[
    "sleep",
    "quit",
    "init_db",
    "query",
    "field_list",
    "create_db",
    "drop_db",
    "refresh",
    "shutdown",
    "statistics",
    "process_info",
    "connect",
    "process_kill",
    "debug",
    "ping",
    "time",
    "delayed_insert",
    "change_user",
    "binlog_dump",
    "table_dump",
    "connect_out",
    "register_slave",
    "prepare",
    "execute",
    "send_long_data",
    "close_statement",
    "reset_statement",
    "set_option",
    "fetch",
    "daemon",
];

impl Dialect for MysqlCommands {
    fn present(&mut self, _pid: u32, command: u32, text: Vec<u8>, _failed: bool) -> Option<Shown> {
        let kind = match (command, COMMAND_NAMES.get(command as usize)) {
            (_, Some(name)) => name.to_string(),
            (250, None) => "bulk_execute".to_string(),
            (254, None) => "multi".to_string(),
            (other, None) => format!("command {other}"),
        };
        Some(Shown { kind, text })
    }
}
