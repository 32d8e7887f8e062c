//! Programs whose TLS writes into memory BIOs and moves the ciphertext
//! itself (node, Python's asyncio): their events name the socket all the same.

use std::process::Command;

use crate::support::*;

const NODE: &str = "/usr/bin/node";

/// Where node's OpenSSL is: the system's libssl, or linked into node.
fn node_capture_args() -> Vec<&'static str> {
    let libraries = run_peer("ldd", Command::new("ldd").arg(NODE));
    if libraries.contains("libssl") {
        vec!["tls"]
    } else {
        vec!["tls", "--libssl", NODE]
    }
}

/// GETs each of `paths` from node's https server on `port` over one
/// keep-alive connection; returns the bodies.
fn node_client_get(port: u16, paths: &[String]) -> String {
    run_peer(
        "node client",
        Command::new(NODE)
            .arg(peer_script("node_https_client.js"))
            .arg(port.to_string())
            .args(paths),
    )
}

/// The record holding all of `needles`, checked to name its socket.
fn assert_named<'a>(stdout: &'a str, needles: &[&str], addresses: &str) -> &'a str {
    let record = find_record(stdout, needles);
    assert!(!record.contains("FD:-1"), "no socket:\n{record}");
    assert!(record.contains(addresses), "not {addresses}:\n{record}");
    record
}

#[test]
fn node_client_and_server_events_name_their_sockets() {
    if !e2e_enabled() {
        return;
    }
    let (_server, port) = start_script_server(NODE, "node_https_server.js");
    let capture = Capture::start(&node_capture_args());
    let paths: Vec<String> = (0..3).map(|i| format!("/{}", marker(&format!("node{i}")))).collect();
    let bodies = node_client_get(port, &paths);
    let out = capture.stop();
    assert!(out.status.success(), "{}", out.stderr);
    for path in &paths {
        assert!(bodies.contains(&format!("node-says {path}\n")), "{bodies}");
        let to_server = format!("to 127.0.0.1:{port} (local 127.0.0.1:");
        let at_server = format!("(local 127.0.0.1:{port})");
        assert_named(
            &out.stdout,
            &["Comm:node", "Sent", "HTTP request", &format!("GET {path} HTTP/1.1\r\n")],
            &to_server,
        );
        assert_named(
            &out.stdout,
            &[
                "Comm:node",
                "Received",
                "HTTP request",
                &format!("GET {path} HTTP/1.1\r\n"),
            ],
            &at_server,
        );
        assert_named(
            &out.stdout,
            &["Comm:node", "Sent", "HTTP response", &format!("node-says {path}\n")],
            &at_server,
        );
        assert_named(
            &out.stdout,
            &["Comm:node", "Received", "HTTP response", &format!("node-says {path}\n")],
            &format!("from 127.0.0.1:{port} (local 127.0.0.1:"),
        );
    }
}

#[test]
fn python_asyncio_client_events_name_their_socket() {
    if !e2e_enabled() {
        return;
    }
    let (_server, port) = start_https_server();
    let capture = Capture::start(&["tls"]);
    let paths: Vec<String> = (0..3).map(|i| format!("/{}", marker(&format!("asyncio{i}")))).collect();
    let statuses = run_peer(
        "asyncio client",
        Command::new("/usr/bin/python3")
            .arg(peer_script("asyncio_client.py"))
            .arg(port.to_string())
            .args(&paths),
    );
    assert_eq!(
        statuses.lines().filter(|line| *line == "HTTP/1.1 200 OK").count(),
        3,
        "{statuses}"
    );
    let out = capture.stop();
    assert!(out.status.success(), "{}", out.stderr);
    for path in &paths {
        assert_named(
            &out.stdout,
            &[
                "Comm:python3",
                "Sent",
                "HTTP request",
                &format!("GET {path} HTTP/1.1\r\n"),
            ],
            &format!("to 127.0.0.1:{port} (local 127.0.0.1:"),
        );
        assert_named(
            &out.stdout,
            &[
                "Comm:python3",
                "Received",
                "HTTP response",
                &format!("response-body-for {path}\n"),
            ],
            &format!("from 127.0.0.1:{port} (local 127.0.0.1:"),
        );
    }
}

/// A program with OpenSSL linked in, started after ecapture without
/// --libssl, is found at its exec and hooked.
#[test]
fn node_started_after_ecapture_is_found_and_hooked() {
    if !e2e_enabled() {
        return;
    }
    let capture = Capture::start(&["tls"]);
    let (server, port) = start_script_server(NODE, "node_https_server.js");
    // Hooking takes reading the program (node's is 100 MB): what the
    // program does before that is not captured.
    let hooked = format!("which pid {} (node) started", server.pid());
    if node_capture_args().contains(&"--libssl") {
        assert!(capture.wait_for_log(&hooked, PEER_TIMEOUT), "never {hooked}");
    }
    let path = format!("/{}", marker("node-later"));
    node_client_get(port, std::slice::from_ref(&path));
    let out = capture.stop();
    assert!(out.status.success(), "{}", out.stderr);
    assert_named(
        &out.stdout,
        &[
            "Comm:node",
            "Received",
            "HTTP request",
            &format!("GET {path} HTTP/1.1\r\n"),
        ],
        &format!("(local 127.0.0.1:{port})"),
    );
    assert_named(
        &out.stdout,
        &["Comm:node", "Received", "HTTP response", &format!("node-says {path}\n")],
        &format!("from 127.0.0.1:{port} (local 127.0.0.1:"),
    );
}
