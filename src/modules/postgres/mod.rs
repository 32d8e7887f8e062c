//! PostgreSQL servers: every message a client sends that runs something, as
//! the backend reads it (`bpf/postgres.bpf.c`): simple queries, and the
//! extended protocol's executes shown with the statement they run and its
//! parameters, each with the error the backend sent back and its duration.

mod object;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use tracing::info;

use super::Hook;
use super::query_events::{Dialect, QueryAssembler, Session, Shown};
use crate::audit::{Assembler, AuditModule, QueryOutcome};
use crate::cli::Config;
use crate::probe::{Flavor, LoadedProbes, ProbeSettings};
use crate::target::elf::ElfImage;
use crate::target::libpath;

use crate::proto::postgres_messages::{self as messages, Message};

pub struct Postgres;

/// The functions probed, with their programs: (name, entry, return).
const PROBES: &[(&str, Option<&str>, Option<&str>)] = &[
    ("pq_getbyte", None, Some("postgres_getbyte_return")),
    (
        "pq_getmessage",
        Some("postgres_getmessage_enter"),
        Some("postgres_getmessage_return"),
    ),
    ("ReadyForQuery", Some("postgres_ready_enter"), None),
    ("pq_endmessage", Some("postgres_endmessage_enter"), None),
];

impl AuditModule for Postgres {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn start(&self, config: &Config, flavor: Flavor, settings: &ProbeSettings) -> Result<LoadedProbes> {
        if let Some(pid) = config.pid {
            libpath::ensure_process_exists(pid)?;
        }
        if let Some(function) = &config.function {
            info!(
                "-f/--funcname {function} is not needed: ecapture reads the protocol messages every backend reads, whatever runs them"
            );
        }
        let server = match &config.library {
            Some(path) => path.clone(),
            None => newest_server()?,
        };
        if !server.exists() {
            bail!(
                "{}: no such file; give -m/--postgres the path of the postgres server",
                server.display()
            );
        }
        let image = ElfImage::open(&server).with_context(|| format!("--postgres {}", server.display()))?;
        let mut probes = object::load(flavor, settings)?;
        let mut hooked = Vec::new();
        for &(name, entry, exit) in PROBES {
            let function = image.function(name).ok_or_else(|| {
                anyhow!(
                    "{} is not a PostgreSQL server: it has no {name} function; give -m/--postgres the path of postgres",
                    server.display()
                )
            })?;
            if let Some(program) = entry {
                let hook = Hook::new(&image, function.clone(), program, None);
                probes.attach_uprobe(program, &server, hook.symbol.file_offset, false, config.pid)?;
                hooked.push(hook.to_string());
            }
            // A return probe goes on the first instruction, where the return
            // address is on top of the stack.
            if let Some(program) = exit {
                probes.attach_uprobe(program, &server, function.file_offset, true, config.pid)?;
                if entry.is_none() {
                    hooked.push(format!("{name} at {:#x} (its return)", function.address));
                }
            }
        }
        probes.attach_pending_uprobes()?;
        info!("hooking {}: {}", server.display(), hooked.join(", "));
        Ok(probes)
    }

    fn assembler(&self, _config: &Config) -> Box<dyn Assembler> {
        assembler()
    }
}

/// What makes queries of this module's records.
pub fn assembler() -> Box<dyn Assembler> {
    Box::new(QueryAssembler::new(Backends::default()))
}

/// The newest `/usr/lib/postgresql/VERSION/bin/postgres`.
fn newest_server() -> Result<PathBuf> {
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.split('.').next()?.parse().ok()?;
            let server = entry.path().join("bin/postgres");
            server.exists().then_some((version, server))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, server)| server).ok_or_else(|| {
        anyhow!("no PostgreSQL server in /usr/lib/postgresql/*/bin/postgres; give -m/--postgres its path")
    })
}

/// Backends with statements and portals remembered; past this, the table
/// starts over (a backend's next execute may then show without its text).
const MAX_BACKENDS: usize = 4096;
/// A backend's session (its user, database and client) stays for its life;
/// its title is read again after this, in case its pid now names another.
const SESSION_REREAD: Duration = Duration::from_secs(1);
/// Statements or portals remembered per backend.
const MAX_NAMES: usize = 1024;

/// Names a backend gave (statements, portals), with what they stand for.
type Named<V> = HashMap<u32, HashMap<Vec<u8>, V>>;

/// A portal: the statement it binds, and the parameters bound.
type Portal = (Vec<u8>, Vec<messages::Parameter>);

/// What each backend's extended protocol set up: statements by name (from
/// Parse), portals by name (from Bind).
#[derive(Default)]
struct Backends {
    /// Backends that failed an extended-protocol message: they read and
    /// skip what follows until a Sync, so it is not shown.
    skipping: HashSet<u32>,
    statements: Named<Vec<u8>>,
    portals: Named<Portal>,
    /// Each backend's session, and when its title was read.
    sessions: HashMap<u32, (Session, Instant)>,
}

impl Backends {
    fn remember<V>(table: &mut Named<V>, pid: u32, name: Vec<u8>, value: V) {
        if table.len() >= MAX_BACKENDS && !table.contains_key(&pid) {
            table.clear();
        }
        let names = table.entry(pid).or_default();
        if names.len() >= MAX_NAMES && !names.contains_key(&name) {
            names.clear();
        }
        names.insert(name, value);
    }

    /// A bound statement's text with its parameters, for display.
    fn statement_text(&self, pid: u32, statement: &[u8], parameters: &[messages::Parameter]) -> Vec<u8> {
        let mut text = self
            .statements
            .get(&pid)
            .and_then(|names| names.get(statement))
            .cloned()
            .unwrap_or_else(|| {
                format!(
                    "[statement {:?}, prepared before the capture]",
                    String::from_utf8_lossy(statement)
                )
                .into_bytes()
            });
        if !parameters.is_empty() {
            text.extend_from_slice(format!("\n[parameters: {}]", messages::describe_parameters(parameters)).as_bytes());
        }
        text
    }
}

impl Dialect for Backends {
    fn present(&mut self, pid: u32, command: u32, text: Vec<u8>, failed: bool) -> Option<Shown> {
        let kind = u8::try_from(command).ok()?;
        if kind == b'S' {
            self.skipping.remove(&pid);
        }
        if self.skipping.contains(&pid) && matches!(kind, b'P' | b'B' | b'E' | b'F') {
            return None;
        }
        if failed && kind != b'Q' {
            if self.skipping.len() >= MAX_BACKENDS {
                self.skipping.clear();
            }
            self.skipping.insert(pid);
        }
        let shown = |kind: &str, text: Vec<u8>| {
            Some(Shown {
                kind: kind.to_string(),
                text,
            })
        };
        match messages::parse(kind, &text) {
            Some(Message::Query { text }) => shown("query", text),
            // Shown with the execute that runs it, unless it failed.
            Some(Message::Parse { text, .. }) if failed => shown("parse", text),
            Some(Message::Parse { statement, text }) => {
                Self::remember(&mut self.statements, pid, statement, text);
                None
            }
            Some(Message::Bind {
                portal,
                statement,
                parameters,
            }) => {
                let text = self.statement_text(pid, &statement, &parameters);
                Self::remember(&mut self.portals, pid, portal, (statement, parameters));
                if failed { shown("bind", text) } else { None }
            }
            Some(Message::Execute { portal }) => {
                let bound = self.portals.get(&pid).and_then(|portals| portals.get(&portal)).cloned();
                let text = match bound {
                    Some((statement, parameters)) => self.statement_text(pid, &statement, &parameters),
                    None => format!(
                        "[portal {:?}, bound before the capture]",
                        String::from_utf8_lossy(&portal)
                    )
                    .into_bytes(),
                };
                shown("execute", text)
            }
            None if kind == b'F' => shown("function call", text),
            None => None,
        }
    }

    fn error(&self, _code: i32, _sqlstate: String, text: &[u8]) -> QueryOutcome {
        let (sqlstate, message) = messages::error_fields(text);
        QueryOutcome::Error {
            code: None,
            sqlstate,
            message,
        }
    }

    /// From the backend's process title: "postgres: [CLUSTER: ]USER DATABASE CLIENT ACTIVITY".
    fn session(&mut self, pid: u32) -> Session {
        if let Some((session, read)) = self.sessions.get(&pid)
            && read.elapsed() < SESSION_REREAD
        {
            return session.clone();
        }
        if let Some(title) = std::fs::read(format!("/proc/{pid}/cmdline"))
            .ok()
            .and_then(|cmdline| session_from_title(&String::from_utf8_lossy(&cmdline)))
        {
            if self.sessions.len() >= MAX_BACKENDS {
                self.sessions.clear();
            }
            self.sessions.insert(pid, (title, Instant::now()));
        }
        // A backend gone by now is named from what was read before.
        self.sessions
            .get(&pid)
            .map(|(session, _)| session.clone())
            .unwrap_or_default()
    }
}

fn session_from_title(title: &str) -> Option<Session> {
    let rest = title.trim_end_matches('\0').strip_prefix("postgres: ")?;
    let mut words = rest.split_whitespace().peekable();
    // The cluster's name, when it has one, ends with a colon.
    if words.peek().is_some_and(|word| word.ends_with(':')) {
        words.next();
    }
    let user = words.next()?.to_string();
    let database = words.next()?.to_string();
    let client = words.next().map(str::to_string);
    Some(Session {
        user: Some(user),
        database: Some(database),
        client,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_titles_name_the_session() {
        let named = session_from_title("postgres: 15/main: alice shop 127.0.0.1(5432) idle\0").unwrap();
        assert_eq!(
            (
                named.user.as_deref(),
                named.database.as_deref(),
                named.client.as_deref()
            ),
            (Some("alice"), Some("shop"), Some("127.0.0.1(5432)"))
        );
        let local = session_from_title("postgres: bob postgres [local] SELECT").unwrap();
        assert_eq!(local.client.as_deref(), Some("[local]"));
        assert_eq!(session_from_title("postgres: checkpointer"), None);
        assert_eq!(session_from_title("/usr/bin/python3"), None);
    }

    #[test]
    fn an_execute_shows_the_statement_its_portal_binds() {
        let mut backends = Backends::default();
        let parse = b"\0SELECT $1::int + 1\0\0\0".to_vec();
        assert!(backends.present(7, u32::from(b'P'), parse, false).is_none());
        let mut bind = b"\0\0\0\0\0\x01".to_vec();
        bind.extend(2i32.to_be_bytes());
        bind.extend(b"41\0\0");
        assert!(backends.present(7, u32::from(b'B'), bind, false).is_none());
        let execute = backends
            .present(7, u32::from(b'E'), b"\0\0\0\0\0".to_vec(), false)
            .unwrap();
        assert_eq!(execute.kind, "execute");
        assert_eq!(
            String::from_utf8(execute.text).unwrap(),
            "SELECT $1::int + 1\n[parameters: $1 = '41']"
        );
        let other = backends
            .present(8, u32::from(b'E'), b"p\0\0\0\0\0".to_vec(), false)
            .unwrap();
        assert!(
            String::from_utf8(other.text)
                .unwrap()
                .contains("bound before the capture")
        );
        assert!(backends.present(7, u32::from(b'S'), Vec::new(), false).is_none());
    }

    #[test]
    fn what_a_backend_skips_after_an_error_is_not_shown_as_run() {
        let mut backends = Backends::default();
        let failed = backends.present(7, u32::from(b'P'), b"\0SELECT nope\0\0\0".to_vec(), true);
        assert_eq!(failed.map(|shown| shown.kind).as_deref(), Some("parse"));
        assert!(
            backends
                .present(7, u32::from(b'E'), b"\0\0\0\0\0".to_vec(), false)
                .is_none()
        );
        assert!(backends.present(7, u32::from(b'S'), Vec::new(), false).is_none());
        let next = backends.present(7, u32::from(b'E'), b"\0\0\0\0\0".to_vec(), false);
        assert_eq!(next.map(|shown| shown.kind).as_deref(), Some("execute"));
    }
}
