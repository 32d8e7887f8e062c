//! `--json`: every line ecapture prints is a JSON object, with the fields of
//! what it captured.

use std::process::Command;

use serde_json::Value;

use crate::support::*;

/// curl against the Python server: the request and the response as JSON
/// objects naming the process, the socket and the parsed message; the
/// summary last.
#[test]
fn json_lines_carry_the_parsed_exchange_and_end_with_the_summary() {
    if !e2e_enabled() {
        return;
    }
    let (_server, port) = start_https_server();
    let capture = Capture::start(&["tls", "--json"]);
    let path = format!("/{}", marker("json"));
    let body = run_peer(
        "curl",
        Command::new("curl")
            .args(["-sk", "--http1.1"])
            .arg(format!("https://127.0.0.1:{port}{path}")),
    );
    assert_eq!(body, format!("response-body-for {path}\n"));
    let out = capture.stop();
    assert!(out.status.success(), "{}", out.stderr);
    let lines: Vec<Value> = out
        .stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line}")))
        .collect();
    let curl = |direction: &str| {
        lines
            .iter()
            .find(|line| {
                line["comm"] == "curl"
                    && line["direction"] == direction
                    && line["type"] == "http"
                    && (line["http"]["path"] == path.as_str() || line["body"] == body.as_str())
            })
            .unwrap_or_else(|| panic!("no {direction} message of curl in {}", out.stdout))
    };
    let request = curl("sent");
    assert_eq!(request["module"], "tls");
    assert_eq!(request["http"]["method"], "GET");
    assert_eq!(request["http"]["version"], "HTTP/1.1");
    assert_eq!(request["remote"], format!("127.0.0.1:{port}"));
    assert!(request["fd"].as_i64().is_some_and(|fd| fd >= 0), "{request}");
    let host = request["http"]["headers"]
        .as_array()
        .and_then(|headers| headers.iter().find(|pair| pair[0] == "Host"))
        .unwrap_or_else(|| panic!("{request}"));
    assert_eq!(host[1], format!("127.0.0.1:{port}"));
    let response = curl("received");
    assert_eq!(response["http"]["status"], 200);
    assert_eq!(response["pid"], request["pid"]);
    assert_eq!(response["local"], request["local"]);
    let summary = lines.last().unwrap();
    assert_eq!(summary["type"], "summary", "{summary}");
    assert!(
        summary["events"].as_u64().is_some_and(|events| events >= 2),
        "{summary}"
    );
    assert_eq!(summary["lost_records"], 0);
}
