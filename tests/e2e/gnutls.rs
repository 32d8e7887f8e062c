//! `ecapture gnutls` in text mode: GnuTLS programs (wget, gnutls-cli,
//! gnutls-serv) captured whole, with their sockets.

use std::process::{Command, Stdio};

use crate::support::*;

#[test]
fn wget_request_and_response_are_captured() {
    if !e2e_enabled() {
        return;
    }
    let (_server, port) = start_https_server();
    let capture = Capture::start(&["gnutls"]);
    let path = format!("/{}", marker("wget"));
    run_peer(
        "wget",
        Command::new("wget")
            .args(["-q", "-O", "-", "--no-check-certificate"])
            .arg(format!("https://127.0.0.1:{port}{path}"))
            .stdin(Stdio::null()),
    );
    let out = capture.stop();
    assert!(out.status.success(), "{}", out.stderr);
    assert!(out.stderr.contains("ready: module gnutls"), "{}", out.stderr);
    let request = find_record(
        &out.stdout,
        &["Comm:wget", "Sent", "HTTP request", &format!("GET {path} HTTP/1.1\r\n")],
    );
    assert!(
        request.contains(&format!("to 127.0.0.1:{port} (local 127.0.0.1:")),
        "{request}"
    );
    assert!(request.contains("User-Agent: Wget/"), "{request}");
    let response = find_record(
        &out.stdout,
        &[
            "Comm:wget",
            "Received",
            "HTTP response",
            &format!("response-body-for {path}\n"),
        ],
    );
    assert!(response.contains(&format!("from 127.0.0.1:{port}")), "{response}");
    // The Python server is OpenSSL's: not this module's.
    assert!(!out.stdout.contains("Comm:python3"), "{}", out.stdout);
}

#[test]
fn gnutls_cli_and_gnutls_serv_both_ends() {
    if !e2e_enabled() {
        return;
    }
    let (_server, port) = start_gnutls_serv();
    let capture = Capture::start(&["gnutls"]);
    let path = format!("/{}", marker("gnutls-cli"));
    let script = format!("(printf 'GET {path} HTTP/1.0\\r\\n\\r\\n'; sleep 1)");
    let page = run_peer(
        "gnutls-cli",
        Command::new("sh").arg("-c").arg(format!(
            "{script} | gnutls-cli --insecure -p {port} 127.0.0.1 2>/dev/null"
        )),
    );
    assert!(page.contains("HTTP/1.0 200 OK"), "{page}");
    let out = capture.stop();
    assert!(out.status.success(), "{}", out.stderr);
    let request = format!("GET {path} HTTP/1.0\r\n");
    let sent = find_record(&out.stdout, &["Comm:gnutls-cli", "Sent", &request]);
    assert!(
        sent.contains(&format!("to 127.0.0.1:{port} (local 127.0.0.1:")),
        "{sent}"
    );
    let received = find_record(&out.stdout, &["Comm:gnutls-serv", "Received", &request]);
    assert!(received.contains(&format!("(local 127.0.0.1:{port})")), "{received}");
    let answer = find_record(&out.stdout, &["Comm:gnutls-serv", "Sent", "HTTP/1.0 200 OK"]);
    assert!(answer.contains(&format!("(local 127.0.0.1:{port})")), "{answer}");
    find_record(&out.stdout, &["Comm:gnutls-cli", "Received", "HTTP/1.0 200 OK"]);
}
