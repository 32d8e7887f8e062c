//! `--json`: every line ecapture prints is a JSON object, with the fields of
//! what it captured.

use std::process::Command;

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
    let lines = json_lines(&out.stdout);
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

/// Keylog mode with `--json`: each line of the key log file is also a JSON
/// object naming the process that derived it.
#[test]
fn json_lines_carry_the_key_log_lines() {
    if !e2e_enabled() {
        return;
    }
    let (_server, port) = start_https_server();
    let dir = scratch_dir();
    let keys = dir.path().join("keys.log");
    let capture = Capture::start(&["tls", "-m", "keylog", "-k", keys.to_str().unwrap(), "--json"]);
    run_peer(
        "curl",
        Command::new("curl")
            .args(["-sk", "--http1.1"])
            .arg(format!("https://127.0.0.1:{port}/{}", marker("json-keys"))),
    );
    let out = capture.stop();
    assert!(out.status.success(), "{}", out.stderr);
    let file = std::fs::read_to_string(&keys).unwrap();
    assert!(!file.is_empty(), "{}", out.stderr);
    let lines = json_lines(&out.stdout);
    let printed: Vec<String> = lines
        .iter()
        .filter(|line| line["type"] == "keylog")
        // Both ends derive the same secrets: whichever reports first is named.
        .inspect(|line| {
            assert!(
                (line["comm"] == "curl" || line["comm"] == "python3") && line["module"] == "tls",
                "{line}"
            )
        })
        .map(|line| {
            let field = |name: &str| line[name].as_str().unwrap_or_default().to_string();
            format!("{} {} {}", field("label"), field("client_random"), field("secret"))
        })
        .collect();
    assert_eq!(printed, file.lines().collect::<Vec<_>>());
    assert_eq!(lines.last().unwrap()["type"], "summary");
}
