//! `ecapture gotls`: Go programs found as they start, with no path given.

use std::time::Duration;

use crate::support::*;

/// A stripped Go client started after ecapture is hooked at its exec, before
/// its first request; its secrets equal the ones crypto/tls logs itself.
#[test]
fn a_go_program_started_later_is_hooked() {
    if !e2e_enabled() {
        return;
    }
    let (_server, port) = start_https_server();
    let dir = scratch_dir();
    let (ours, theirs) = (dir.path().join("ecapture.keys"), dir.path().join("go.keys"));
    let capture = Capture::start(&["gotls", "-m", "keylog", "-k", ours.to_str().unwrap()]);
    let url = format!("https://127.0.0.1:{port}/{}", marker("go-later"));
    let client = spawn_go_client(go_client(1), &url, "1.3", &theirs);
    let pid = client.0.pid();
    assert!(
        capture.wait_for_log(&format!("which pid {pid} (go_client_strip) started"), READY_TIMEOUT),
        "the Go client was not hooked at its exec"
    );
    run_go_client(client);
    // Lines reach the file as the reader takes them.
    let theirs = std::fs::read_to_string(&theirs).unwrap();
    let deadline = std::time::Instant::now() + PEER_TIMEOUT;
    while std::fs::read_to_string(&ours).unwrap_or_default().lines().count() < theirs.lines().count() {
        assert!(std::time::Instant::now() < deadline, "ecapture wrote too few lines");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = capture.stop();
    assert!(out.status.success(), "{}", out.stderr);
    let mut ours: Vec<String> = std::fs::read_to_string(&ours)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let mut theirs: Vec<String> = theirs.lines().map(str::to_string).collect();
    ours.sort();
    theirs.sort();
    assert_eq!(ours, theirs);
    assert_eq!(ours.len(), 4, "TLS 1.3's traffic secrets, as Go logs them");
}
