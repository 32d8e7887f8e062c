//! `ecapture bash` and `ecapture zsh`: interactive shells driven through a
//! pseudo-terminal (tests/peers/pty_shell.py), each command captured whole
//! with its exit status.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::support::*;

/// What a session types: a command, one that exits 3, a loop over two
/// lines, a line over 4 KiB whose marker is at its end, then `exit 5`.
struct Session {
    echo: String,
    failing: String,
    loop_lines: String,
    long: String,
}

impl Session {
    fn new(shell: &str) -> Session {
        let tag = marker(shell);
        Session {
            echo: format!("echo {tag}-echo"),
            failing: format!("sh -c 'exit 3' # {tag}-fails"),
            loop_lines: format!("for i in 1 2; do\necho {tag}-loop-$i; done"),
            long: format!("echo {} {tag}-long | wc -c", "x".repeat(5000)),
        }
    }

    fn input(&self) -> String {
        format!(
            "{}\n{}\n{}\n{}\nexit 5\n",
            self.echo, self.failing, self.loop_lines, self.long
        )
    }
}

fn shell_path(shell: &str) -> String {
    let path = format!("/usr/bin/{shell}");
    assert!(
        std::path::Path::new(&path).exists(),
        "{path} is missing: scripts/install-deps.sh test installs it"
    );
    path
}

/// Starts the pty driver on `shell`; returns it, with the shell's pid, once
/// the shell has prompted.
fn start_shell(shell: &str) -> (Guard, u32) {
    let mut driver = Guard::spawn(
        "pty_shell.py",
        Command::new("python3")
            .arg(peer_script("pty_shell.py"))
            .arg(shell_path(shell))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit()),
    );
    let lines = Lines::of(driver.child.stdout.take().unwrap());
    let started = lines.next();
    let pid = started
        .strip_prefix("started ")
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("{started}"));
    (driver, pid)
}

/// Types `input` and waits for the shell to exit with `status`.
fn type_and_exit(mut driver: Guard, input: &str, status: i32) {
    let mut stdin = driver.child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).unwrap();
    drop(stdin);
    let exit = driver.wait(PEER_TIMEOUT);
    assert_eq!(exit.code(), Some(status), "the shell's exit");
}

/// The record of the command whose text is `line`, with its status and
/// shell; fails listing what was captured.
fn command_record<'a>(stdout: &'a str, shell: &str, line: &str, status: i32) -> &'a str {
    let header = format!("Comm:{shell} UID:0 command, exit status {status} after ");
    let record = find_record(stdout, &[&header, &format!(":\n{line}\n\n")]);
    assert!(record.ends_with(&format!(":\n{line}\n\n")), "{record}");
    record
}

fn assert_whole_session(stdout: &str, shell: &str, session: &Session) {
    command_record(stdout, shell, &session.echo, 0);
    command_record(stdout, shell, &session.failing, 3);
    command_record(stdout, shell, &session.loop_lines, 0);
    command_record(stdout, shell, &session.long, 0);
    command_record(stdout, shell, "exit 5", 5);
    let commands = records(stdout).into_iter().filter(|record| !record.contains(WARM_UP));
    assert_eq!(commands.count(), 5, "one record per command:\n{}", truncate(stdout));
}

/// The line a shell already at its prompt when ecapture starts reads first:
/// that read began before the probes were there, so its line is not seen.
const WARM_UP: &str = ": the line under way when ecapture started";

/// Runs `ecapture ARGS` while a session is typed into `shell`, which starts
/// after ecapture is ready, or before it with a first line that is not
/// expected back. Returns the output and the shell's pid; the shell's
/// records are all in the kernel's buffers once it has exited, and
/// stopping ecapture drains them.
fn capture_session(args: &[&str], shell: &str, session: &Session, started_before: bool) -> (CaptureOutput, u32) {
    let (capture, (driver, pid), input) = if started_before {
        let shell_process = start_shell(shell);
        let capture = Capture::start(args);
        (capture, shell_process, format!("{WARM_UP}\n{}", session.input()))
    } else {
        let capture = Capture::start(args);
        (capture, start_shell(shell), session.input())
    };
    type_and_exit(driver, &input, 5);
    let out = capture.stop();
    assert!(out.status.success(), "{}", out.stderr);
    assert!(out.stderr.contains(&format!("ready: module {shell}")), "{}", out.stderr);
    (out, pid)
}

#[test]
fn bash_commands_are_captured_whole_with_their_status() {
    if !e2e_enabled() {
        return;
    }
    // A shell that was running before ecapture started is covered too.
    let session = Session::new("bash");
    let (out, _) = capture_session(&["bash", "--bash", &shell_path("bash")], "bash", &session, true);
    assert_whole_session(&out.stdout, "bash", &session);
}

#[test]
fn zsh_commands_are_captured_whole_with_their_status() {
    if !e2e_enabled() {
        return;
    }
    let session = Session::new("zsh");
    let (out, _) = capture_session(&["zsh", "--zsh", &shell_path("zsh")], "zsh", &session, false);
    assert_whole_session(&out.stdout, "zsh", &session);
}

#[test]
fn errnumber_keeps_only_the_commands_that_exited_with_it() {
    if !e2e_enabled() {
        return;
    }
    for shell in ["bash", "zsh"] {
        let session = Session::new(shell);
        let (out, _) = capture_session(&[shell, "-e", "3"], shell, &session, false);
        command_record(&out.stdout, shell, &session.failing, 3);
        assert_eq!(records(&out.stdout).len(), 1, "{shell}:\n{}", out.stdout);
    }
}

#[test]
fn json_lines_carry_each_command_and_its_status() {
    if !e2e_enabled() {
        return;
    }
    let session = Session::new("json");
    let (out, shell_pid) = capture_session(&["--json", "bash"], "bash", &session, false);
    let objects = json_lines(&out.stdout);
    let commands: Vec<(String, i64)> = objects
        .iter()
        .filter(|object| object["type"] == "command")
        .map(|object| {
            assert_eq!(object["module"], "bash");
            assert_eq!(object["comm"], "bash");
            assert_eq!(object["uid"], 0);
            assert_eq!(object["missing"], false);
            assert!(object["duration_us"].is_u64(), "{object}");
            assert_eq!(object["pid"], shell_pid);
            (
                object["line"].as_str().unwrap().to_string(),
                object["status"].as_i64().unwrap(),
            )
        })
        .collect();
    let expected: Vec<(String, i64)> = [
        (session.echo.clone(), 0),
        (session.failing.clone(), 3),
        (session.loop_lines.clone(), 0),
        (session.long.clone(), 0),
        ("exit 5".to_string(), 5),
    ]
    .into();
    assert_eq!(commands, expected);
    let summary = objects.last().unwrap();
    assert_eq!(
        (summary["type"].as_str(), summary["events"].as_u64()),
        (Some("summary"), Some(5))
    );
}
