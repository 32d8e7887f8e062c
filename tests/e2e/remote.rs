//! `--logaddr` and `--eventaddr` over the network: receivers written here
//! (a TCP socket, a WebSocket server) get the logs and events, and one that
//! goes away and comes back gets what is captured after it returns.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::support::*;

/// Accepts one connection within PEER_TIMEOUT.
fn accept(listener: &TcpListener) -> TcpStream {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + PEER_TIMEOUT;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).unwrap();
                return stream;
            }
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "ecapture did not connect");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(err) => panic!("accepting: {err}"),
        }
    }
}

/// Reads `stream` until what it sent holds `needle`, within `timeout`.
fn read_until(stream: &mut TcpStream, received: &mut String, needle: &str, timeout: Duration) -> bool {
    stream.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let deadline = Instant::now() + timeout;
    let mut buffer = [0u8; 65536];
    while !received.contains(needle) && Instant::now() < deadline {
        match stream.read(&mut buffer) {
            Ok(0) => return false,
            Ok(n) => received.push_str(&String::from_utf8_lossy(&buffer[..n])),
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(err) => panic!("reading: {err}"),
        }
    }
    received.contains(needle)
}

fn curl_get(port: u16, path: &str) {
    run_peer(
        "curl",
        Command::new("curl")
            .args(["-sk", "-o", "/dev/null"])
            .arg(format!("https://127.0.0.1:{port}{path}"))
            .stdin(Stdio::null()),
    );
}

#[test]
fn logs_and_events_reach_a_tcp_receiver_that_goes_away_and_comes_back() {
    if !e2e_enabled() {
        return;
    }
    let (_server, port) = start_https_server();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("tcp://{}", listener.local_addr().unwrap());
    let capture = Capture::start(&["tls", "-l", &address]);
    let mut first = accept(&listener);
    let mut received = String::new();
    assert!(
        read_until(&mut first, &mut received, "ready: module tls", PEER_TIMEOUT),
        "the log came: {received}"
    );
    let before = format!("/{}", marker("before"));
    curl_get(port, &before);
    assert!(
        read_until(
            &mut first,
            &mut received,
            &format!("GET {before} HTTP/1.1"),
            PEER_TIMEOUT
        ),
        "the request came: {received}"
    );
    // The receiver goes away; ecapture reconnects once it is back, and
    // what it captures then arrives.
    drop(first);
    let after = format!("/{}", marker("after"));
    let (connected, connection) = mpsc::channel();
    let acceptor = listener.try_clone().unwrap();
    std::thread::spawn(move || connected.send(accept(&acceptor)));
    let deadline = Instant::now() + PEER_TIMEOUT;
    let mut second = loop {
        curl_get(port, &after);
        if let Ok(stream) = connection.recv_timeout(Duration::from_millis(300)) {
            break stream;
        }
        assert!(Instant::now() < deadline, "ecapture did not come back");
    };
    let mut again = String::new();
    let mut arrived = false;
    while !arrived && Instant::now() < deadline {
        curl_get(port, &after);
        arrived = read_until(
            &mut second,
            &mut again,
            &format!("GET {after} HTTP/1.1"),
            Duration::from_secs(1),
        );
    }
    assert!(arrived, "a request after the reconnection came: {again}");
    let out = capture.stop();
    assert!(out.status.success(), "{}", out.stderr);
    assert!(out.stderr.contains("; reconnecting"), "{}", out.stderr);
    // The stop's log lines come over the connection too.
    assert!(
        read_until(&mut second, &mut again, "INFO stopped: ", PEER_TIMEOUT),
        "{again}"
    );
}

#[test]
fn json_events_reach_a_websocket_receiver_with_the_summary() {
    if !e2e_enabled() {
        return;
    }
    let (_server, port) = start_https_server();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("ws://{}/events", listener.local_addr().unwrap());
    let capture = Capture::start(&["tls", "--json", "--eventaddr", &address]);
    let path = format!("/{}", marker("websocket"));
    curl_get(port, &path);
    let stream = accept(&listener);
    stream.set_read_timeout(Some(PEER_TIMEOUT)).unwrap();
    let mut socket = tungstenite::accept(stream).unwrap();
    let mut objects: Vec<serde_json::Value> = Vec::new();
    let mut stopping = Some(capture);
    let mut out = None;
    while !objects.iter().any(|object| object["type"] == "summary") {
        let message = socket.read().expect("a message within PEER_TIMEOUT");
        if let tungstenite::Message::Text(text) = message {
            objects.extend(json_lines(&text));
        }
        // Once the request is in, stopping ecapture sends the summary.
        let request_seen = objects
            .iter()
            .any(|object| object["http"]["path"].as_str() == Some(path.as_str()));
        if request_seen && let Some(capture) = stopping.take() {
            out = Some(capture.stop());
        }
    }
    let out = out.expect("ecapture was stopped");
    assert!(out.status.success(), "{}", out.stderr);
    let request = objects
        .iter()
        .find(|object| object["http"]["path"].as_str() == Some(path.as_str()))
        .unwrap();
    assert_eq!(
        (request["type"].as_str(), request["comm"].as_str()),
        (Some("http"), Some("curl"))
    );
    let summary = objects.last().unwrap();
    assert_eq!(summary["type"], "summary");
    assert!(summary["events"].as_u64().unwrap() >= 2, "{summary}");
}

#[test]
fn an_ecaptureq_client_decodes_logs_and_events_from_the_schema() {
    if !e2e_enabled() {
        return;
    }
    // The client's classes come from the schema, by protoc.
    let generated = scratch_dir();
    run_peer(
        "protoc",
        Command::new("protoc")
            .arg(format!("--proto_path={}", peer_script("").display()))
            .arg(format!("--python_out={}", generated.path().display()))
            .arg(peer_script("ecaptureq.proto")),
    );
    let (_server, port) = start_https_server();
    let url = format!("ws://127.0.0.1:{}/", free_port());
    let capture = Capture::start(&["tls", "--ecaptureq", &url]);
    let mut client = Guard::spawn(
        "ecaptureq_client.py",
        Command::new("/usr/bin/python3")
            .arg(peer_script("ecaptureq_client.py"))
            .arg(&url)
            .arg(generated.path())
            .arg("4")
            .stdout(Stdio::piped()),
    );
    let lines = Lines::of(client.child.stdout.take().unwrap());
    assert_eq!(lines.next(), r#"{"connected": true}"#);
    let path = format!("/{}", marker("ecaptureq"));
    curl_get(port, &path);
    let entries = json_lines(&lines.rest().join(
        "
",
    ));
    client.wait(PEER_TIMEOUT);
    let out = capture.stop();
    assert!(out.status.success(), "{}", out.stderr);
    // Logs from before the client came are kept for it.
    assert!(
        entries.iter().any(|entry| entry["log_type"] == "log"
            && entry["run_log"]
                .as_str()
                .is_some_and(|log| log.contains("ready: module tls"))),
        "{entries:?}"
    );
    let request = entries
        .iter()
        .find(|entry| {
            entry["log_type"] == "event"
                && entry["payload"]
                    .as_str()
                    .is_some_and(|p| p.starts_with(&format!("GET {path} HTTP/1.1\r\n")))
        })
        .unwrap_or_else(|| panic!("no request event in {entries:?}"));
    assert_eq!(
        (request["type"].as_u64(), request["pname"].as_str()),
        (Some(1), Some("curl"))
    );
    assert_eq!(
        (request["dst_ip"].as_str(), request["dst_port"].as_u64()),
        (Some("127.0.0.1"), Some(u64::from(port)))
    );
    assert_eq!(request["src_ip"], "127.0.0.1");
    let response = entries
        .iter()
        .find(|entry| entry["log_type"] == "event" && entry["type"] == 3 && entry["src_port"] == port)
        .unwrap_or_else(|| panic!("no response event in {entries:?}"));
    assert!(
        response["payload"]
            .as_str()
            .unwrap()
            .contains(&format!("response-body-for {path}")),
        "{response}"
    );
    assert!(
        entries.iter().any(|entry| entry["log_type"] == "heartbeat"),
        "a heartbeat: {entries:?}"
    );
}
