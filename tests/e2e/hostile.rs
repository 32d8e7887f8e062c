//! Traffic is hostile: whatever a traced peer sends, ecapture keeps
//! capturing.

use std::process::{Command, Stdio};

use crate::support::*;

/// Runs a client that may fail (the server's framing is broken on purpose),
/// bounded in time.
fn run_failing_peer(name: &str, command: &mut Command) {
    command.stdout(Stdio::null()).stderr(Stdio::null()).stdin(Stdio::null());
    Guard::spawn(name, command).wait(PEER_TIMEOUT);
}

#[test]
fn hostile_framings_neither_stop_the_capture_nor_the_next_exchange() {
    if !e2e_enabled() {
        return;
    }
    let (_server, port) = start_https_server();
    let capture = Capture::start(&["tls"]);
    for framing in ["chunk-overflow", "length-overflow", "truncated-gzip", "gzip-bomb"] {
        let url = format!("https://127.0.0.1:{port}/hostile/{framing}");
        run_failing_peer(
            "curl",
            Command::new("curl").args(["-sk", "--http1.1", "-m", "10", &url]),
        );
    }
    let path = format!("/{}/after", marker("hostile"));
    let body = run_peer(
        "curl",
        Command::new("curl").args(["-sk", "--http1.1", &format!("https://127.0.0.1:{port}{path}")]),
    );
    assert_eq!(body, format!("response-body-for {path}\n"));
    let expected = format!("response-body-for {path}\n");
    let seen = capture.wait_for_output(&expected, PEER_TIMEOUT);
    let out = capture.stop();
    assert!(
        seen && out.status.success(),
        "{}\n{}",
        out.stderr,
        truncate(&out.stdout)
    );
    // A chunk size that fits in 64 bits is a body that never came whole;
    // a Content-Length that does not is not HTTP: both are shown.
    // (Printed whole at exit, or, once 200 ms passed, its head and "abc" in
    // a first part and the note in the last.)
    find_record(
        &out.stdout,
        &[
            "Comm:curl",
            "Received",
            "HTTP response",
            "chunked\r\n\r\n[body: chunked",
            "\nabc",
        ],
    );
    assert!(
        out.stdout
            .contains("incomplete: the connection ended inside the chunked body]")
    );
    find_record(
        &out.stdout,
        &[
            "Comm:curl",
            "Received",
            "bytes data",
            "Content-Length: 99999999999999999999999",
        ],
    );
    // A gzip stream cut short is shown as far as it decodes, and said to be;
    // a bomb stops inflating past 1 MiB at over 100:1, and says so.
    find_record(
        &out.stdout,
        &[
            "Comm:curl",
            "Received",
            "HTTP response",
            "ends early]\ntruncated gzip body truncated gzip body",
        ],
    );
    let bomb = find_record(
        &out.stdout,
        &["Comm:curl", "Received", "HTTP response", "a compression bomb?"],
    );
    // About 2 MiB inflated, as a hexdump (zeros are not text): not 256 MiB.
    assert!(bomb.len() < 16 << 20, "{} bytes printed for the bomb", bomb.len());
    find_record(&out.stdout, &["Comm:curl", "HTTP response", &expected]);
    assert!(
        !out.stderr.contains("panicked") && !out.stderr.contains("bug"),
        "{}",
        out.stderr
    );
}

/// `ecapture tls | head -n 3`, and pcap mode's `-w - | head -c 100`: once
/// the reader has what it wanted and exits, ecapture stops by itself.
#[test]
fn ecapture_stops_when_the_reader_of_its_output_goes_away() {
    if !e2e_enabled() {
        return;
    }
    let (_server, port) = start_https_server();
    let url = format!("https://127.0.0.1:{port}/{}", marker("piped"));
    let curl = || {
        run_peer("curl", Command::new("curl").args(["-sk", "--http1.1", &url]));
    };
    let pcap_args = ["tls", "-m", "pcap", "-i", "lo", "-w", "-"];
    let text_args = ["tls"];
    for (args, reader, wanted) in [(&text_args[..], ["-n", "3"], 3), (&pcap_args[..], ["-c", "100"], 100)] {
        let mut piped = PipedCapture::start(args, Command::new("head").args(reader));
        let (status, stderr) = piped.run_until_exit(curl);
        assert!(status.success(), "{args:?}: {status}\n{stderr}");
        assert!(
            stderr.contains("the output's reader has gone (broken pipe): stopping") && stderr.contains("stopped: "),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("WARN"), "{args:?}: {stderr}");
        assert!(!stderr.contains('\u{1b}'), "colour escapes in a file: {stderr}");
        piped.reader.wait(PEER_TIMEOUT);
        let read = std::fs::read(&piped.reader_output).unwrap();
        let got = if wanted == 3 {
            read.split(|&b| b == b'\n').count() - 1
        } else {
            read.len()
        };
        assert_eq!(got, wanted, "{args:?}");
    }
}
