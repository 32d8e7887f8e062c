//! HTTP/2 decoded: curl's concurrent streams to node's HTTP/2 server, a
//! connection whose capture began after its first request, and gRPC calls.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::support::*;

const NODE: &str = "/usr/bin/node";

/// curl over HTTP/2 (ALPN h2) to `port`, each URL path on one connection
/// at once (-Z multiplexes them on one connection).
fn curl_h2(port: u16, paths: &[&str], extra: &[&str]) -> String {
    run_peer(
        "curl --http2",
        Command::new("curl")
            .args(["-sSk", "--http2", "-Z"])
            .args(extra)
            .args(paths.iter().map(|path| format!("https://127.0.0.1:{port}{path}"))),
    )
}

/// The record of the response on the stream of `request` (a record of a
/// client sending it to `port`), on the same connection.
fn response_to<'a>(stdout: &'a str, request: &str, port: u16) -> &'a str {
    let stream = number_after(request, "on stream ");
    let local = number_after(request, "(local 127.0.0.1:");
    find_record(
        stdout,
        &[
            "Received",
            &format!("HTTP/2 response on stream {stream} from 127.0.0.1:{port} (local 127.0.0.1:{local})"),
        ],
    )
}

#[test]
fn concurrent_streams_are_decoded_and_kept_apart() {
    if !e2e_enabled() {
        return;
    }
    let (_server, port) = start_script_server(NODE, "node_h2_server.js");
    let capture = Capture::start(&["tls"]);
    let paths: Vec<String> = (0..3)
        .map(|i| format!("/{}", marker(&format!("h2stream{i}"))))
        .collect();
    let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
    let bodies = curl_h2(port, &paths, &[]);
    let gzip_path = format!("/gzip/{}", marker("h2gzip"));
    curl_h2(port, &[&gzip_path], &["-o", "/dev/null"]);
    let post_path = format!("/{}", marker("h2post"));
    let posted = "q".repeat(100_000);
    let answer = curl_h2(port, &[&post_path], &["--data-binary", &posted]);
    let out = capture.stop();
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(answer, format!("node-h2 {post_path} got 100000 bytes\n"));
    let mut connections = Vec::new();
    for path in &paths {
        assert!(bodies.contains(&format!("node-h2 {path}\n")), "{bodies}");
        let request = find_record(
            &out.stdout,
            &[
                "Comm:curl",
                "Sent",
                "HTTP/2 request on stream",
                &format!("\n:path: {path}\n"),
            ],
        );
        assert!(
            request.contains("\n:method: GET\n") && request.contains("\nuser-agent: curl/"),
            "{request}"
        );
        let response = response_to(&out.stdout, request, port);
        assert!(response.contains("\n:status: 200\n"), "{response}");
        assert!(response.ends_with(&format!("\n\nnode-h2 {path}\n\n")), "{response}");
        connections.push(number_after(request, "(local 127.0.0.1:"));
    }
    connections.dedup();
    assert_eq!(connections.len(), 1, "the three requests did not share a connection");
    let gzipped = find_record(
        &out.stdout,
        &["Received", "HTTP/2 response", &format!("node-h2 {gzip_path}\n")],
    );
    assert!(
        gzipped.contains("\ncontent-encoding: gzip\n") && gzipped.contains("\n[gzip: "),
        "{gzipped}"
    );
    assert_eq!(gzipped.matches(&format!("node-h2 {gzip_path}\n")).count(), 50);
    let post = find_record(
        &out.stdout,
        &["Sent", "HTTP/2 request", &format!(":path: {post_path}\n")],
    );
    assert!(
        post.contains("\n:method: POST\n") && post.contains(&format!("\n\n{posted}")),
        "{}",
        truncate(post)
    );
    assert!(number_after(post, "Sent ") > 100_000, "{}", truncate(post));
    find_record(&out.stdout, &["Received", "HTTP/2 response", "got 100000 bytes"]);
}

#[test]
fn json_lines_carry_the_stream_and_its_fields() {
    if !e2e_enabled() {
        return;
    }
    let (_server, port) = start_script_server(NODE, "node_h2_server.js");
    let capture = Capture::start(&["tls", "--json"]);
    let path = format!("/{}", marker("h2json"));
    curl_h2(port, &[&path], &[]);
    let out = capture.stop();
    assert!(out.status.success(), "{}", out.stderr);
    let objects = json_lines(&out.stdout);
    let http2 = |kind: &str| {
        objects
            .iter()
            .find(|o| o["http"]["version"] == "HTTP/2" && o["http"]["kind"] == kind && o["comm"] == "curl")
            .unwrap_or_else(|| panic!("no HTTP/2 {kind} in {}", out.stdout))
    };
    let request = http2("request");
    assert_eq!(
        (request["type"].as_str(), request["direction"].as_str()),
        (Some("http"), Some("sent"))
    );
    assert_eq!(request["http"]["method"], "GET");
    assert_eq!(request["http"]["path"], path.as_str());
    assert_eq!(request["http"]["headers"][0], serde_json::json!([":method", "GET"]));
    let stream = &request["http"]["stream"];
    assert!(stream.as_u64().is_some_and(|s| s % 2 == 1), "{request}");
    let response = http2("response");
    assert_eq!(&response["http"]["stream"], stream);
    assert_eq!(response["http"]["status"], 200);
    assert_eq!(response["body"], format!("node-h2 {path}\n"));
    assert_eq!(response["remote"], format!("127.0.0.1:{port}"));
}

#[test]
fn a_connection_captured_midway_shows_what_decodes() {
    if !e2e_enabled() {
        return;
    }
    let (_server, port) = start_script_server(NODE, "node_h2_server.js");
    let dir = scratch_dir();
    let log = dir.path().join("client.out");
    let paths: Vec<String> = (0..3).map(|i| format!("/{}", marker(&format!("h2late{i}")))).collect();
    let mut client = Guard::spawn(
        "node h2 client",
        Command::new(NODE)
            .arg(peer_script("node_h2_client.js"))
            .arg(port.to_string())
            .arg("/before-the-capture")
            .args(&paths)
            .stdin(Stdio::piped())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null()),
    );
    client.wait_for_output(&log, "ready");
    let pid = client.pid().to_string();
    let capture = Capture::start(&["tls", "--libssl", NODE, "--pid", &pid]);
    let mut stdin = client.child.stdin.take().unwrap();
    stdin.write_all(b"go\n").unwrap();
    drop(stdin);
    assert!(client.wait(PEER_TIMEOUT).success(), "the node client failed");
    let out = capture.stop();
    assert!(out.status.success(), "{}", out.stderr);
    let bodies = std::fs::read_to_string(&log).unwrap();
    for path in &paths {
        assert!(bodies.contains(&format!("node-h2 {path}\n")), "{bodies}");
        let request = find_record(
            &out.stdout,
            &["Sent", "HTTP/2 request on stream", &format!(":path: {path}\n")],
        );
        // The first request put :authority and x-client in the table.
        assert!(
            request.contains("refer to HPACK table entries sent before the capture began"),
            "{request}"
        );
        assert!(!request.contains("\n:authority:"), "{request}");
        let stream = number_after(request, "on stream ");
        assert!(stream > 1, "{request}");
        let response = find_record(
            &out.stdout,
            &["Received", &format!("HTTP/2 response on stream {stream} ")],
        );
        assert!(response.ends_with(&format!("\n\nnode-h2 {path}\n\n")), "{response}");
    }
    assert!(!out.stdout.contains("/before-the-capture"), "{}", out.stdout);
}

#[test]
fn grpc_calls_show_each_message_and_the_status() {
    if !e2e_enabled() {
        return;
    }
    let (_server, port) = start_python_server("grpc_echo.py");
    let capture = Capture::start(&["tls"]);
    let messages = [marker("grpc-one"), marker("grpc-two")];
    let (cert, _) = certificate();
    let answers = run_peer(
        "grpc client",
        Command::new("/usr/bin/python3")
            .arg(peer_script("grpc_echo.py"))
            .args(["client", &port.to_string()])
            .arg(cert)
            .args(&messages),
    );
    let out = capture.stop();
    assert!(out.status.success(), "{}", out.stderr);
    for message in &messages {
        assert!(answers.contains(&format!("echo: {message}\n")), "{answers}");
        let call = find_record(
            &out.stdout,
            &["Sent", "HTTP/2 request on stream", &format!("\n{message}\n")],
        );
        assert!(
            call.contains("\n:path: /echo.Echo/Say\n") && call.contains("\ncontent-type: application/grpc\n"),
            "{call}"
        );
        assert!(
            call.contains(&format!("[gRPC message: {} bytes]\n{message}\n", message.len())),
            "{call}"
        );
        let answer = response_to(&out.stdout, call, port);
        let echoed = format!("echo: {message}");
        assert!(
            answer.ends_with(&format!(
                "[gRPC message: {} bytes]\n{echoed}\n[trailers]\ngrpc-status: 0\n\n",
                echoed.len()
            )),
            "{answer}"
        );
    }
}

#[test]
fn a_go_client_speaking_http2_is_decoded() {
    if !e2e_enabled() {
        return;
    }
    let (_server, port) = start_script_server(NODE, "node_h2_server.js");
    let binary = go_client(0);
    let path = format!("/{}", marker("h2go"));
    let mut client = Guard::spawn(
        "go client",
        Command::new(binary)
            .arg(format!("https://127.0.0.1:{port}{path}"))
            .env("GO_HTTP2", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::null()),
    );
    let stdin = client.child.stdin.take().unwrap();
    let capture = Capture::start(&["gotls", "--elfpath", binary.to_str().unwrap()]);
    run_go_client((client, stdin));
    let out = capture.stop();
    assert!(out.status.success(), "{}", out.stderr);
    let request = find_record(
        &out.stdout,
        &["Sent", "HTTP/2 request on stream 1 ", &format!("\n:path: {path}\n")],
    );
    assert!(request.contains("\nuser-agent: Go-http-client/2.0\n"), "{request}");
    let response = find_record(&out.stdout, &["Received", "HTTP/2 response on stream 1 "]);
    assert!(response.ends_with(&format!("\n\nnode-h2 {path}\n\n")), "{response}");
}
