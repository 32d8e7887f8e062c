//! `ecapture gotls`: Go programs' plaintext with their sockets, in programs
//! built with symbols, stripped and as PIE, found running or as they start.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;

/// Go clients of each build, running before ecapture starts: each request
/// and response is captured whole, with the socket read from the
/// connection.
#[test]
fn go_clients_requests_and_responses_with_their_sockets() {
    if !e2e_enabled() {
        return;
    }
    let (_server, port) = start_https_server();
    let dir = scratch_dir();
    let mut clients = Vec::new();
    for (index, (name, _)) in GO_CLIENT_BUILDS.iter().enumerate() {
        let path = format!("/{}", marker(name));
        let url = format!("https://127.0.0.1:{port}{path}");
        clients.push((
            name,
            path,
            spawn_go_client(go_client(index), &url, "1.3", &dir.path().join("keys")),
        ));
    }
    let capture = Capture::start(&["gotls"]);
    let mut expected = Vec::new();
    for (name, path, client) in clients {
        run_go_client(client);
        expected.push((name, path));
    }
    let out = capture.stop();
    assert!(out.status.success(), "{}", out.stderr);
    // Each probe sits on an instruction the kernel emulates: Write on its
    // stack check's branch, Read's plaintext at its copy, and where the
    // legacy programs cannot read Read's receiver there, Read's stack check.
    let probes = if std::env::var_os("ECAPTURE_LEGACY_BPF").is_some() {
        3
    } else {
        2
    };
    let hooked: Vec<_> = out.stderr.lines().filter(|line| line.contains("hooking ")).collect();
    assert_eq!(hooked.len(), GO_CLIENT_BUILDS.len(), "{}", out.stderr);
    for line in hooked {
        assert!(
            line.matches(": emulated;").count() == probes
                && line.contains("crypto/tls.(*Conn).Read at ")
                && line.contains("(call at +")
                && !line.contains("single-stepped"),
            "{line}"
        );
    }
    for (name, path) in expected {
        let comm = format!("Comm:{name}");
        let request = find_record(&out.stdout, &[&comm, "Sent", &format!("GET {path} HTTP/1.1\r\n")]);
        assert!(
            request.contains(&format!("to 127.0.0.1:{port} (local 127.0.0.1:")),
            "{request}"
        );
        let response = find_record(
            &out.stdout,
            &[&comm, "Received", &format!("response-body-for {path}\n")],
        );
        assert!(response.contains(&format!("from 127.0.0.1:{port}")), "{response}");
    }
}

/// Go's net/http server of each build, with curl as its client: what it
/// reads and writes, with the socket.
#[test]
fn go_servers_requests_and_responses_with_their_sockets() {
    if !e2e_enabled() {
        return;
    }
    let (cert, key) = certificate();
    let capture = Capture::start(&["gotls"]);
    let mut served = Vec::new();
    for (name, flags) in GO_CLIENT_BUILDS {
        let server_name = name.replace("client", "server");
        let binary = build_go_peer(&server_name, "go_https_server.go", flags);
        let port = free_port();
        let dir = scratch_dir();
        let log = dir.path().join("server.out");
        let mut server = Guard::spawn(
            "go server",
            Command::new(&binary)
                .arg(port.to_string())
                .arg(cert)
                .arg(key)
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(&log).unwrap()),
        );
        server.wait_for_output(&log, "listening");
        assert!(
            capture.wait_for_log(
                &format!("which pid {} ({server_name}) started", server.pid()),
                READY_TIMEOUT
            ),
            "{server_name} was not hooked at its exec"
        );
        let path = format!("/{}", marker(&server_name));
        let body = run_peer(
            "curl",
            Command::new("curl")
                .args(["-sk", "--http1.1"])
                .arg(format!("https://127.0.0.1:{port}{path}")),
        );
        assert_eq!(body, format!("go-server-body-for {path}\n"));
        served.push((server_name, path, port));
    }
    let out = capture.stop();
    assert!(out.status.success(), "{}", out.stderr);
    for (server_name, path, port) in served {
        let comm = format!("Comm:{server_name}");
        let request = find_record(&out.stdout, &[&comm, "Received", &format!("GET {path} HTTP/1.1\r\n")]);
        assert!(request.contains(&format!("(local 127.0.0.1:{port})")), "{request}");
        let response = find_record(&out.stdout, &[&comm, "Sent", &format!("go-server-body-for {path}\n")]);
        assert!(response.contains(&format!("(local 127.0.0.1:{port})")), "{response}");
    }
}

/// A *tls.Conn over a Unix socket: its net.Conn is no *net.TCPConn, so the
/// records say the socket is unknown rather than read one from its fields.
#[test]
fn a_go_server_on_a_unix_socket_has_its_socket_unknown() {
    if !e2e_enabled() {
        return;
    }
    let (cert, key) = certificate();
    let binary = build_go_peer("go_https_server", "go_https_server.go", &[]);
    let dir = scratch_dir();
    let socket = dir.path().join("https.sock");
    let log = dir.path().join("server.out");
    let mut server = Guard::spawn(
        "go server",
        Command::new(&binary)
            .arg(&socket)
            .arg(cert)
            .arg(key)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap()),
    );
    server.wait_for_output(&log, "listening");
    let capture = Capture::start(&["gotls", "--pid", &server.pid().to_string()]);
    let path = format!("/{}", marker("unix"));
    let body = run_peer(
        "curl",
        Command::new("curl")
            .args(["-sk", "--http1.1", "--unix-socket"])
            .arg(&socket)
            .arg(format!("https://localhost{path}")),
    );
    assert_eq!(body, format!("go-server-body-for {path}\n"));
    let out = capture.stop();
    assert!(out.status.success(), "{}", out.stderr);
    let request = find_record(&out.stdout, &["Received", &format!("GET {path} HTTP/1.1\r\n")]);
    let response = find_record(&out.stdout, &["Sent", &format!("go-server-body-for {path}\n")]);
    for record in [request, response] {
        assert!(record.contains(" FD:-1 ") && !record.contains("127.0.0.1"), "{record}");
    }
}

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

/// A Go program started after ecapture with --elfpath: its probes know
/// where its sockets are read from, or where the kernel has no uprobe
/// cookies, it asks at its first TLS call, and its records wait for the
/// answer, up to 4 MiB. The benchmark's ping-pong writes 64-byte records
/// at hundreds of thousands a second, which fill that in tens of
/// milliseconds: the answer must come sooner, whatever the flood.
#[test]
fn a_flooding_go_program_started_later_has_every_record_named() {
    if !e2e_enabled() {
        return;
    }
    let pingpong = build_go_peer("go_pingpong", "../../bench/go_pingpong.go", &[]);
    let (cert, key) = certificate();
    let dir = memory_scratch_dir();
    let capture = Capture::start_with_stdout(
        &["gotls", "--elfpath", pingpong.to_str().unwrap()],
        dir.path().join("out"),
    );
    // Started at once after the ready line, the flood did not show the
    // delay here; a second later, it showed it in every run.
    std::thread::sleep(Duration::from_secs(1));
    // Both goroutines on one CPU, as the benchmark runs it: its fastest.
    let printed = run_within(
        "go_pingpong",
        Command::new("taskset")
            .args(["-c", "0"])
            .arg(&pingpong)
            .arg(cert)
            .arg(key)
            .args(["64", "1"]),
        PEER_TIMEOUT,
    );
    let out = capture.stop();
    assert!(out.status.success(), "{}", out.stderr);
    let records = out.stdout.matches(" 64 bytes data").count() as u64;
    // More than the tracker holds: 20,000 records of 64 bytes are about its 4 MiB.
    assert!(records >= 20_000, "{printed}: {records} records");
    let unnamed = out.stdout.matches(" FD:-1 ").count();
    assert_eq!(unnamed, 0, "{unnamed} of {records} records without their socket");
}

const LOAD_REQUESTS: usize = 2_000;
const LOAD_GOROUTINES: usize = 16;
/// Enough depths of a fresh goroutine's stack that some write finds it
/// full in (*tls.Conn).Write's own stack check.
const WRITE_DEPTHS: usize = 600;

/// No harm: 2,000 requests from 16 goroutines over keep-alive connections
/// through a traced Go client, then writes from goroutines whose stacks
/// must grow at Write's entry. The client gets every answer right, and
/// every request is captured exactly once.
#[test]
fn a_loaded_go_client_is_unharmed_and_every_request_is_captured_once() {
    if !e2e_enabled() {
        return;
    }
    let (_server, port) = start_https_server();
    let client = build_go_peer("go_load_client", "go_load_client.go", &[]);
    let capture = Capture::start(&["gotls", "--elfpath", client.to_str().unwrap()]);
    let base = format!("/{}", marker("load"));
    let printed = run_within(
        "go_load_client",
        Command::new(&client).args([
            format!("https://127.0.0.1:{port}{base}"),
            LOAD_REQUESTS.to_string(),
            LOAD_GOROUTINES.to_string(),
            WRITE_DEPTHS.to_string(),
        ]),
        PEER_TIMEOUT * 2,
    );
    let reused: usize = printed
        .split(", ")
        .nth(1)
        .and_then(|part| part.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("{printed}"));
    assert!(reused >= LOAD_REQUESTS - LOAD_GOROUTINES * 4, "{printed}");
    let out = capture.stop();
    assert!(
        out.status.success() && out.stderr.contains(" 0 records lost,"),
        "{}",
        out.stderr
    );
    // Started after ecapture with --elfpath, which watches no exec: the
    // program's first calls ask for what names its sockets.
    let first = find_record(&out.stdout, &["Sent", &format!("GET {base}/0 HTTP/1.1\r\n")]);
    assert!(
        first.contains(&format!("to 127.0.0.1:{port} (local 127.0.0.1:")),
        "{first}"
    );
    let paths = (0..LOAD_REQUESTS)
        .map(|i| format!("{base}/{i}"))
        .chain((0..WRITE_DEPTHS).map(|depth| format!("{base}/deep/{depth}")));
    for path in paths {
        let sent = out.stdout.matches(&format!("GET {path} HTTP/1.1\r\n")).count();
        let received = out.stdout.matches(&format!("response-body-for {path}\n")).count();
        assert_eq!((sent, received), (1, 1), "{path} sent and received");
    }
}
