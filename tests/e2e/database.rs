//! `ecapture mysqld` and `ecapture postgres`: throwaway servers started by
//! the tests (their own data directory and socket), queried through their
//! own clients; every command shown whole, with its outcome.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// A MariaDB server of its own, on a Unix socket only; killed and its data
/// removed when dropped.
struct MariaDb {
    _server: Guard,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

const MARIADBD: &str = "/usr/sbin/mariadbd";

impl MariaDb {
    fn start() -> MariaDb {
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
        let server = Guard::spawn(
            "mariadbd",
            Command::new(MARIADBD)
                .args(["--no-defaults", "--skip-networking", "--user=root"])
                .arg(format!("--datadir={}", data.display()))
                .arg(format!("--socket={}", socket.display()))
                .arg(format!("--pid-file={}", dir.path().join("pid").display()))
                .arg(format!("--log-error={}", dir.path().join("error.log").display()))
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        let deadline = Instant::now() + PEER_TIMEOUT;
        while !socket.exists() {
            assert!(Instant::now() < deadline, "mariadbd did not open its socket");
            std::thread::sleep(Duration::from_millis(50));
        }
        MariaDb {
            _server: server,
            socket,
            _dir: dir,
        }
    }

    /// Runs `sql` through the mariadb client, past errors; returns what it
    /// printed, errors included.
    fn client(&self, sql: &str) -> String {
        let mut client = Guard::spawn(
            "mariadb",
            Command::new("mariadb")
                .args(["--no-defaults", "-u", "root", "--force"])
                .arg(format!("--socket={}", self.socket.display()))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        );
        let mut stdin = client.child.stdin.take().unwrap();
        std::io::Write::write_all(&mut stdin, sql.as_bytes()).unwrap();
        drop(stdin);
        client.wait(PEER_TIMEOUT);
        let mut printed = String::new();
        for stream in [
            client
                .child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read>),
            client
                .child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read>),
        ]
        .into_iter()
        .flatten()
        {
            let mut stream = stream;
            std::io::Read::read_to_string(&mut stream, &mut printed).unwrap();
        }
        printed
    }
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
    let server = MariaDb::start();
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
    let server = MariaDb::start();
    let capture = Capture::start(&["--json", "mysqld"]);
    let tag = marker("mysqld-json");
    let failing = format!("SELECT * FROM nowhere.`{tag}`");
    server.client(&format!("SELECT 1 AS `{tag}`; {failing}"));
    let out = capture.stop();
    let objects: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line}")))
        .collect();
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
