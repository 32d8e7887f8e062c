//! `ecapture nss` in text mode: an NSS client of our own (both ways NSS
//! programs move data) and NSS's selfserv, captured at both ends, and
//! nothing of the files the client reads and writes through NSPR.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::support::*;

/// A file the client reads and copies through NSPR's PR_Read and PR_Write.
fn nspr_file(dir: &tempfile::TempDir, contents: &str) -> std::path::PathBuf {
    let file = dir.path().join("profile.txt");
    std::fs::write(&file, contents).unwrap();
    file
}

/// Both clients start after ecapture: the library is hooked for every process.
#[test]
fn nss_client_and_selfserv_both_ends() {
    if !e2e_enabled() {
        return;
    }
    let (_server, port) = start_selfserv();
    let dir = scratch_dir();
    let file_marker = marker("nspr-file");
    let file = nspr_file(&dir, &file_marker);
    let capture = Capture::start(&["nss"]);
    let (read13, send12) = (format!("/{}", marker("pr-read13")), format!("/{}", marker("pr-send12")));
    nss_client_get(port, &read13, "read", "tls1.3", &file);
    nss_client_get(port, &send12, "send", "tls1.2", &file);
    let out = capture.stop();
    assert!(out.status.success(), "{}", out.stderr);
    assert!(out.stderr.contains("ready: module nss"), "{}", out.stderr);
    for path in [&read13, &send12] {
        let request = format!("GET {path} HTTP/1.0\r\n");
        let sent = find_record(&out.stdout, &["Comm:nss_client", "Sent", &request]);
        assert!(
            sent.contains(&format!("to 127.0.0.1:{port} (local 127.0.0.1:")),
            "{sent}"
        );
        let received = find_record(&out.stdout, &["Comm:selfserv", "Received", &request]);
        assert!(received.contains(&format!("(local 127.0.0.1:{port})")), "{received}");
        // selfserv answers with PR_Writev: its buffers go through the send method.
        let answer = find_record(&out.stdout, &["Comm:selfserv", "Sent", "HTTP/1.0 200 OK", &request]);
        assert!(answer.contains("to 127.0.0.1:"), "{answer}");
        let response = find_record(
            &out.stdout,
            &["Comm:nss_client", "Received", "HTTP/1.0 200 OK", &request],
        );
        assert!(response.contains(&format!("from 127.0.0.1:{port}")), "{response}");
    }
    assert!(
        !out.stdout.contains(&file_marker),
        "a file read through NSPR was captured:\n{}",
        out.stdout
    );
    assert_eq!(
        std::fs::read_to_string(file.with_extension("txt.copy")).unwrap(),
        file_marker
    );
}

/// `--pid` of a process that maps NSS only when it execs the client: ecapture
/// waits for it, then hooks it.
#[test]
fn pid_of_a_process_that_loads_nss_later_is_waited_for() {
    if !e2e_enabled() {
        return;
    }
    let (_server, port) = start_selfserv();
    let dir = scratch_dir();
    let file = nspr_file(&dir, "contents");
    let path = format!("/{}", marker("nss-late"));
    let script = format!(
        "read line; exec {} {port} {path} read tls1.3 {} wait",
        nss_client().display(),
        file.display()
    );
    let mut client = Guard::spawn(
        "sh",
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::null()),
    );
    let pid = client.pid().to_string();
    let execer = send_line_later(client.child.stdin.take().unwrap(), b"exec\n");
    let capture = Capture::start(&["nss", "--pid", &pid]);
    let mut stdin = execer.join().unwrap();
    stdin.write_all(b"request\n").unwrap();
    drop(stdin);
    assert!(client.wait(PEER_TIMEOUT).success());
    let out = capture.stop();
    assert!(
        out.stderr
            .contains(&format!("process {pid} maps no NSS yet: waiting for it to load one")),
        "{}",
        out.stderr
    );
    find_record(
        &out.stdout,
        &["Comm:nss_client", "Sent", &format!("GET {path} HTTP/1.0\r\n")],
    );
}
