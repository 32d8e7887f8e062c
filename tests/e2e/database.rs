//! `ecapture mysqld` and `ecapture postgres`: throwaway servers started by
//! the tests (their own data directory and socket), queried through their
//! own clients; every command shown whole, with its outcome.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// A MariaDB server of its own, on a Unix socket only; killed and its data
/// removed when dropped.
struct MariaDb {
    _server: Guard,
    socket: PathBuf,
    /// The loopback port it serves TLS on, when asked to.
    tls_port: Option<u16>,
    _dir: tempfile::TempDir,
}

const MARIADBD: &str = "/usr/sbin/mariadbd";

impl MariaDb {
    /// Listens on its socket; with `tls`, on a loopback port with TLS too.
    fn start(tls: bool) -> MariaDb {
        assert!(
            Path::new(MARIADBD).exists(),
            "{MARIADBD} is missing: scripts/install-deps.sh test installs it"
        );
        let dir = scratch_dir();
        let data = dir.path().join("data");
        run_peer(
            "mariadb-install-db",
            Command::new("mariadb-install-db")
                .args([
                    "--no-defaults",
                    "--auth-root-authentication-method=normal",
                    "--user=root",
                ])
                .args(["--skip-test-db"])
                .arg(format!("--datadir={}", data.display()))
                .stdout(Stdio::null()),
        );
        let socket = dir.path().join("socket");
        let mut command = Command::new(MARIADBD);
        command
            .args(["--no-defaults", "--user=root"])
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--pid-file={}", dir.path().join("pid").display()))
            .arg(format!("--log-error={}", dir.path().join("error.log").display()));
        let tls_port = tls.then(free_port);
        match tls_port {
            Some(port) => {
                let (cert, key) = certificate();
                command
                    .args(["--bind-address=127.0.0.1", &format!("--port={port}")])
                    .arg(format!("--ssl-cert={}", cert.display()))
                    .arg(format!("--ssl-key={}", key.display()));
            }
            None => {
                command.arg("--skip-networking");
            }
        }
        let server = Guard::spawn("mariadbd", command.stdout(Stdio::null()).stderr(Stdio::null()));
        let deadline = Instant::now() + PEER_TIMEOUT;
        while !socket.exists() {
            assert!(Instant::now() < deadline, "mariadbd did not open its socket");
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Some(port) = tls_port {
            wait_until_listening(port, "mariadbd");
        }
        MariaDb {
            _server: server,
            socket,
            tls_port,
            _dir: dir,
        }
    }

    /// Runs `sql` through the mariadb client, past errors; returns what it
    /// printed, errors included.
    fn client(&self, sql: &str) -> String {
        pipe_through(
            "mariadb",
            Command::new("mariadb")
                .args(["--no-defaults", "-u", "root", "--force"])
                .arg(format!("--socket={}", self.socket.display())),
            sql,
        )
    }
}

/// Runs `command` with `input` on its stdin, within PEER_TIMEOUT; returns
/// its stdout and stderr.
fn pipe_through(name: &str, command: &mut Command, input: &str) -> String {
    let mut child = Guard::spawn(
        name,
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let mut stdin = child.child.stdin.take().unwrap();
    std::io::Write::write_all(&mut stdin, input.as_bytes()).unwrap();
    drop(stdin);
    let streams = [
        Lines::of(child.child.stdout.take().unwrap()),
        Lines::of(child.child.stderr.take().unwrap()),
    ];
    child.wait(PEER_TIMEOUT);
    streams
        .iter()
        .flat_map(|lines| lines.rest())
        .map(|line| line + "\n")
        .collect()
}

/// The record of the command whose header has every one of `header` and
/// whose text is `text`.
fn query_record<'a>(stdout: &'a str, header: &[&str], text: &str) -> &'a str {
    let body = format!(":\n{text}\n\n");
    let mut needles = header.to_vec();
    needles.push(&body);
    find_record(stdout, &needles)
}

#[test]
fn mariadb_queries_are_shown_whole_with_their_errors() {
    if !e2e_enabled() {
        return;
    }
    let server = MariaDb::start(false);
    let capture = Capture::start(&["mysqld", "-m", MARIADBD]);
    let tag = marker("mysqld");
    let long = format!("SELECT LENGTH('{}') AS `{tag}-long`", "y".repeat(5000));
    let failing = format!("SELECT * FROM nowhere.`{tag}-missing`");
    let printed = server.client(&format!(
        "SELECT 6 * 7 AS `{tag}-answer`; {failing}; PREPARE stmt FROM 'SELECT ? * 2'; SET @half = 21; EXECUTE stmt USING @half; {long}"
    ));
    assert!(printed.contains("ERROR 1146 (42S02)"), "{printed}");
    assert!(printed.contains("5000"), "{printed}");
    let out = capture.stop();
    assert!(out.status.success(), "{}", out.stderr);
    assert!(out.stderr.contains("(MariaDB 10.x signature)"), "{}", out.stderr);
    let answer = query_record(
        &out.stdout,
        &[
            "Comm:mariadbd",
            " query on connection ",
            " by root from localhost, OK after ",
        ],
        &format!("SELECT 6 * 7 AS `{tag}-answer`"),
    );
    assert!(!answer.contains("could not be captured"), "{answer}");
    query_record(
        &out.stdout,
        &[&format!(
            ", ERROR 1146 (42S02): Table 'nowhere.{tag}-missing' doesn't exist, after "
        )],
        &failing,
    );
    query_record(
        &out.stdout,
        &[" query on connection ", ", OK after "],
        "PREPARE stmt FROM 'SELECT ? * 2'",
    );
    query_record(
        &out.stdout,
        &[" query on connection ", ", OK after "],
        "EXECUTE stmt USING @half",
    );
    query_record(&out.stdout, &[" query on connection ", ", OK after "], &long);
}

#[test]
fn mariadb_queries_in_json_lines() {
    if !e2e_enabled() {
        return;
    }
    let server = MariaDb::start(false);
    let capture = Capture::start(&["--json", "mysqld"]);
    let tag = marker("mysqld-json");
    let failing = format!("SELECT * FROM nowhere.`{tag}`");
    server.client(&format!("SELECT 1 AS `{tag}`; {failing}"));
    let out = capture.stop();
    let objects = json_lines(&out.stdout);
    let query = |text: &str| {
        objects
            .iter()
            .find(|object| object["type"] == "query" && object["text"] == text)
            .unwrap_or_else(|| panic!("no query {text:?} in:\n{}", out.stdout))
    };
    let ok = query(&format!("SELECT 1 AS `{tag}`"));
    assert_eq!(
        (ok["module"].as_str(), ok["command"].as_str()),
        (Some("mysqld"), Some("query"))
    );
    assert_eq!((ok["status"].as_str(), ok["user"].as_str()), (Some("ok"), Some("root")));
    assert!(ok["connection"].as_u64().is_some(), "{ok}");
    let failed = query(&failing);
    assert_eq!(failed["status"], "error");
    assert_eq!(failed["error"]["code"], 1146);
    assert_eq!(failed["error"]["sqlstate"], "42S02");
    assert_eq!(failed["connection"], ok["connection"]);
}

/// A PostgreSQL server of its own, run as the `postgres` user (it refuses
/// root); killed and its data removed when dropped.
struct PostgreSql {
    _server: Guard,
    socket_dir: PathBuf,
    /// The loopback port it serves TLS on, when asked to.
    tls_port: Option<u16>,
    _dir: tempfile::TempDir,
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// The `postgres` user's uid and gid: the server refuses to run as root.
fn postgres_user() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id").args([flag, "postgres"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("a postgres user")
    };
    (id("-u"), id("-g"))
}

impl PostgreSql {
    /// Listens on its socket; with `tls`, on a loopback port with TLS too.
    fn start(tls: bool) -> PostgreSql {
        assert!(
            Path::new(PG_BIN).join("postgres").exists(),
            "{PG_BIN}/postgres is missing: scripts/install-deps.sh test installs it"
        );
        let dir = scratch_dir();
        let chown = Command::new("chown").arg("postgres").arg(dir.path()).status().unwrap();
        assert!(chown.success(), "chown postgres {}", dir.path().display());
        let data = dir.path().join("data");
        let (uid, gid) = postgres_user();
        run_peer(
            "initdb",
            Command::new(format!("{PG_BIN}/initdb"))
                .uid(uid)
                .gid(gid)
                .args(["-A", "trust", "-U", "postgres", "-D"])
                .arg(&data)
                .stdout(Stdio::null()),
        );
        // Run as that user directly, so that the guard's kill reaches the server itself.
        let mut command = Command::new(format!("{PG_BIN}/postgres"));
        command.uid(uid).gid(gid).arg("-D").arg(&data).arg("-k").arg(dir.path());
        let tls_port = tls.then(free_port);
        match tls_port {
            Some(port) => {
                // The server reads its key only when the key is its own and private.
                let (cert, key) = certificate();
                for (from, name) in [(cert, "server.crt"), (key, "server.key")] {
                    let to = dir.path().join(name);
                    std::fs::copy(from, &to).unwrap();
                    let owned = Command::new("chown").arg("postgres").arg(&to).status().unwrap();
                    assert!(owned.success());
                    std::fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
                }
                command
                    .args(["-c", "listen_addresses=127.0.0.1", "-c", "ssl=on"])
                    .arg("-p")
                    .arg(port.to_string())
                    .arg("-c")
                    .arg(format!("ssl_cert_file={}", dir.path().join("server.crt").display()))
                    .arg("-c")
                    .arg(format!("ssl_key_file={}", dir.path().join("server.key").display()));
            }
            None => {
                command.args(["-c", "listen_addresses="]);
            }
        }
        let server = Guard::spawn("postgres", command.stdout(Stdio::null()).stderr(Stdio::null()));
        let socket = dir.path().join(format!(".s.PGSQL.{}", tls_port.unwrap_or(5432)));
        let deadline = Instant::now() + PEER_TIMEOUT;
        while !socket.exists() {
            assert!(Instant::now() < deadline, "postgres did not open its socket");
            std::thread::sleep(Duration::from_millis(50));
        }
        PostgreSql {
            _server: server,
            socket_dir: dir.path().to_path_buf(),
            tls_port,
            _dir: dir,
        }
    }
}

/// Asks the server to stop (a fast shutdown), so that it ends its backends
/// itself; the guard kills what is still there after EXIT_TIMEOUT.
impl Drop for PostgreSql {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self._server.pid() as i32, libc::SIGINT) };
        let deadline = Instant::now() + EXIT_TIMEOUT;
        while Instant::now() < deadline && matches!(self._server.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl PostgreSql {
    /// Runs `sql` through psql, one statement at a time, past errors.
    fn psql(&self, sql: &str) -> String {
        pipe_through(
            "psql",
            Command::new("psql")
                .arg("-h")
                .arg(&self.socket_dir)
                .args(["-U", "postgres", "-X", "-f", "-"]),
            sql,
        )
    }

    /// Runs Python code with psycopg 3 (Debian's, for the system Python),
    /// which sends statements with parameters through the extended protocol;
    /// `connection` is connected.
    fn psycopg(&self, code: &str) -> String {
        let script = format!(
            "import psycopg\nconnection = psycopg.connect(host={:?}, user='postgres', dbname='postgres', autocommit=True)\n{code}\n",
            self.socket_dir.display().to_string()
        );
        run_peer("psycopg", Command::new("/usr/bin/python3").args(["-c", &script]))
    }
}

#[test]
fn postgres_simple_and_extended_queries_are_shown_whole() {
    if !e2e_enabled() {
        return;
    }
    let server = PostgreSql::start(false);
    let capture = Capture::start(&["postgres", "-m", &format!("{PG_BIN}/postgres")]);
    let tag = marker("postgres").replace('-', "_");
    let long = format!("SELECT length('{}') AS {tag}_long", "z".repeat(5000));
    let printed = server.psql(&format!(
        "SELECT 6 * 7 AS {tag}_answer;\nSELECT * FROM {tag}_missing;\nPREPARE {tag}_stmt AS SELECT $1::int * 2;\nEXECUTE {tag}_stmt(21);\n{long};\n"
    ));
    assert!(printed.contains("5000"), "{printed}");
    let extended = server.psycopg(&format!(
        "print(connection.execute('SELECT %s::int + 1 AS {tag}_bound, %s::text', (41, \"it's\")).fetchone())\n\
         try:\n    connection.execute('SELECT * FROM {tag}_absent WHERE id = %s', (1,))\nexcept psycopg.Error as error:\n    print(error.sqlstate)"
    ));
    assert!(
        extended.contains("(42, \"it's\")") && extended.contains("42P01"),
        "{extended}"
    );
    let out = capture.stop();
    assert!(out.status.success(), "{}", out.stderr);
    let session = " by postgres from [local] in postgres, ";
    let ok = ["Comm:postgres", " query", session, "OK after "];
    query_record(&out.stdout, &ok, &format!("SELECT 6 * 7 AS {tag}_answer;"));
    query_record(
        &out.stdout,
        &[&format!(
            "ERROR 42P01: relation \"{tag}_missing\" does not exist, after "
        )],
        &format!("SELECT * FROM {tag}_missing;"),
    );
    query_record(&out.stdout, &ok, &format!("PREPARE {tag}_stmt AS SELECT $1::int * 2;"));
    query_record(&out.stdout, &ok, &format!("EXECUTE {tag}_stmt(21);"));
    query_record(&out.stdout, &ok, &format!("{long};"));
    let extended_text = format!("SELECT $1::int + 1 AS {tag}_bound, $2::text\n[parameters: $1 = ");
    let execute = find_record(&out.stdout, &[" execute", session, "OK after ", &extended_text]);
    assert!(execute.contains(", $2 = 'it''s']\n"), "{execute}");
    query_record(
        &out.stdout,
        &[
            " parse",
            &format!("ERROR 42P01: relation \"{tag}_absent\" does not exist, after "),
        ],
        &format!("SELECT * FROM {tag}_absent WHERE id = $1"),
    );
    // What the backend skipped after the failed parse was not run.
    assert_eq!(
        out.stdout.matches(&format!("{tag}_absent")).count(),
        2,
        "{}",
        out.stdout
    );
}

#[test]
fn postgres_protocol_over_tls_is_shown_as_its_messages() {
    if !e2e_enabled() {
        return;
    }
    let server = PostgreSql::start(true);
    let port = server.tls_port.unwrap();
    let capture = Capture::start(&["tls"]);
    let tag = marker("pgtls").replace('-', "_");
    let printed = pipe_through(
        "psql",
        Command::new("psql")
            .arg(format!(
                "host=127.0.0.1 port={port} user=postgres dbname=postgres sslmode=require"
            ))
            .args(["-X", "-f", "-"]),
        &format!("SELECT 6 * 7 AS {tag}_answer, NULL AS {tag}_nothing;\nSELECT * FROM {tag}_missing;\n"),
    );
    assert!(
        printed.contains("42") && printed.contains("does not exist"),
        "{printed}"
    );
    let out = capture.stop();
    assert!(out.status.success(), "{}", out.stderr);
    let query = format!("Query: SELECT 6 * 7 AS {tag}_answer, NULL AS {tag}_nothing;");
    let sent = find_record(&out.stdout, &["Comm:psql", "Sent", "PostgreSQL messages", &query]);
    assert!(sent.contains(&format!("to 127.0.0.1:{port}")), "{sent}");
    // The backend is traced too, and reads what psql sent.
    find_record(
        &out.stdout,
        &["Comm:postgres", "Received", "PostgreSQL messages", &query],
    );
    let rows = find_record(
        &out.stdout,
        &[
            "Comm:psql",
            "Received",
            &format!("RowDescription: {tag}_answer, {tag}_nothing\n"),
        ],
    );
    assert!(
        rows.contains("DataRow: '42', NULL\nCommandComplete: SELECT 1\n"),
        "{rows}"
    );
    find_record(
        &out.stdout,
        &[
            "Comm:psql",
            "Received",
            &format!("ErrorResponse 42P01: relation \"{tag}_missing\" does not exist"),
        ],
    );
    find_record(
        &out.stdout,
        &["Comm:psql", "Sent", "StartupMessage user=postgres database=postgres"],
    );
}

#[test]
fn mysql_protocol_over_tls_is_shown_as_its_packets() {
    if !e2e_enabled() {
        return;
    }
    let server = MariaDb::start(true);
    let port = server.tls_port.unwrap();
    let capture = Capture::start(&["tls"]);
    let tag = marker("mytls").replace('-', "_");
    let printed = pipe_through(
        "mariadb",
        Command::new("mariadb")
            .args(["--no-defaults", "-u", "root", "--force", "--ssl", "-h", "127.0.0.1"])
            .arg(format!("--port={port}")),
        &format!("SELECT 6 * 7 AS {tag}_answer, NULL AS {tag}_nothing;\nSELECT * FROM nowhere.{tag}_missing;\n"),
    );
    assert!(printed.contains("42") && printed.contains("ERROR 1146"), "{printed}");
    let out = capture.stop();
    assert!(out.status.success(), "{}", out.stderr);
    let query = format!("Query: SELECT 6 * 7 AS {tag}_answer, NULL AS {tag}_nothing");
    let sent = find_record(&out.stdout, &["Comm:mariadb", "Sent", "MySQL packets", &query]);
    assert!(sent.contains(&format!("to 127.0.0.1:{port}")), "{sent}");
    // The server is traced too, and reads what the client sent.
    find_record(&out.stdout, &["Comm:mariadbd", "Received", "MySQL packets", &query]);
    let rows = find_record(
        &out.stdout,
        &[
            "Comm:mariadb",
            "Received",
            &format!("Columns: {tag}_answer, {tag}_nothing\n"),
        ],
    );
    assert!(rows.contains("Row: '42', NULL\nEnd of rows (1 rows)"), "{rows}");
    find_record(
        &out.stdout,
        &[
            "Comm:mariadb",
            "Received",
            &format!("ERR 1146 (42S02): Table 'nowhere.{tag}_missing' doesn't exist"),
        ],
    );
    find_record(&out.stdout, &["Comm:mariadb", "Sent", "HandshakeResponse user=root"]);
}
