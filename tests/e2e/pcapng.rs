//! `ecapture tls -m pcapng`: a file tshark decrypts on its own, with each
//! packet's process in its comment, filtered as asked, and an interface left
//! as it was found.

use std::process::Command;

use pcap_parser::pcapng::Block;

use crate::support::*;

/// `ecapture tls -m pcapng` on loopback into `output`, for one TCP port.
fn capture_port(output: &str, port: u16, extra: &[&str]) -> Capture {
    let port = port.to_string();
    let mut args = vec!["tls", "-m", "pcapng", "-i", "lo", "-w", output];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["tcp", "port", &port]);
    Capture::start(&args)
}

fn qdiscs(interface: &str) -> String {
    run_peer("tc", Command::new("tc").args(["qdisc", "show", "dev", interface]))
}

/// A TCX link (bpftool 7.1 prints its type as 11) or a clsact qdisc.
fn classifier_attached() -> bool {
    let links = run_peer("bpftool", Command::new("bpftool").args(["link", "show"]));
    links.lines().any(|l| l.contains(": tcx ") || l.contains(": type 11 ")) || qdiscs("lo").contains("clsact")
}

/// tshark's fields for the HTTP requests it can decrypt from `file` alone.
fn decrypted_requests(file: &std::path::Path) -> Vec<(String, String)> {
    let out = run_peer(
        "tshark",
        Command::new("tshark").arg("-r").arg(file).args([
            "-Y",
            "http.request",
            "-T",
            "fields",
            "-e",
            "http.request.uri",
            "-e",
            "frame.comment",
        ]),
    );
    out.lines()
        .map(|line| {
            let (uri, comment) = line.split_once('\t').unwrap_or((line, ""));
            (uri.to_string(), comment.to_string())
        })
        .collect()
}

#[test]
fn tshark_decrypts_the_file_alone_and_comments_name_the_process() {
    if !e2e_enabled() {
        return;
    }
    let (_server, port) = start_https_server();
    let (_other, other_port) = start_https_server();
    let dir = scratch_dir();
    let file = dir.path().join("capture.pcapng");
    let keylog = dir.path().join("keys.log");
    let qdiscs_before = qdiscs("lo");
    let capture = capture_port(file.to_str().unwrap(), port, &["-k", keylog.to_str().unwrap()]);
    assert!(classifier_attached(), "no TC classifier while capturing");
    let (v13, v12, other) = (
        format!("/{}", marker("pcap13")),
        format!("/{}", marker("pcap12")),
        format!("/{}", marker("other")),
    );
    run_peer(
        "curl",
        Command::new("curl").args(["-sk", "--http1.1", &format!("https://127.0.0.1:{port}{v13}")]),
    );
    run_peer(
        "curl",
        Command::new("curl").args([
            "-sk",
            "--http1.1",
            "--tls-max",
            "1.2",
            &format!("https://127.0.0.1:{port}{v12}"),
        ]),
    );
    run_peer(
        "curl",
        Command::new("curl").args(["-sk", &format!("https://127.0.0.1:{other_port}{other}")]),
    );
    let out = capture.stop();
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(qdiscs("lo"), qdiscs_before, "the interface was not restored");

    let requests = decrypted_requests(&file);
    for path in [&v13, &v12] {
        let (_, comment) = requests
            .iter()
            .find(|(uri, _)| uri == path)
            .unwrap_or_else(|| panic!("{path} not decrypted: {requests:?}"));
        assert!(
            comment.contains("comm=curl") && comment.starts_with("pid="),
            "comment {comment:?}"
        );
    }
    // The filter ran in the kernel and kept the other server's traffic out.
    assert!(out.stderr.contains("(filtered in the kernel)"), "{}", out.stderr);
    let ports = run_peer(
        "tshark",
        Command::new("tshark")
            .arg("-r")
            .arg(&file)
            .args(["-T", "fields", "-e", "tcp.srcport", "-e", "tcp.dstport"]),
    );
    assert!(!ports.is_empty());
    assert!(
        ports.lines().all(|l| l.split('\t').any(|p| p == port.to_string())),
        "other traffic in the file:\n{ports}"
    );
    assert!(!requests.iter().any(|(uri, _)| uri == &other));
    // -k writes the key log too.
    assert!(std::fs::read_to_string(&keylog).unwrap().contains("CLIENT_RANDOM "));

    // An independent parser agrees on the structure: secrets before packets.
    let bytes = std::fs::read(&file).unwrap();
    let (rest, parsed) = pcap_parser::parse_pcapng(&bytes).expect("valid pcapng");
    assert!(rest.is_empty());
    let blocks = &parsed.sections[0].blocks;
    assert!(matches!(blocks[0], Block::SectionHeader(_)) && matches!(blocks[1], Block::InterfaceDescription(_)));
    let first_secrets = blocks
        .iter()
        .position(|b| matches!(b, Block::DecryptionSecrets(_)))
        .expect("a DSB");
    let first_packet = blocks
        .iter()
        .position(|b| matches!(b, Block::EnhancedPacket(_)))
        .expect("packets");
    assert!(
        first_secrets < first_packet,
        "secrets must precede the packets they decrypt"
    );
}

#[test]
fn pcapng_streams_to_stdout() {
    if !e2e_enabled() {
        return;
    }
    let (_server, port) = start_https_server();
    let capture = capture_port("-", port, &[]);
    let path = format!("/{}", marker("stdout"));
    run_peer(
        "curl",
        Command::new("curl").args(["-sk", "--http1.1", &format!("https://127.0.0.1:{port}{path}")]),
    );
    let out = capture.stop();
    let dir = scratch_dir();
    let file = dir.path().join("stdout.pcapng");
    std::fs::write(&file, &out.raw_stdout).unwrap();
    assert!(
        decrypted_requests(&file).iter().any(|(uri, _)| uri == &path),
        "{}",
        out.stderr
    );
}

#[test]
fn connections_open_before_the_capture_are_attributed_too() {
    use std::io::Write;

    if !e2e_enabled() {
        return;
    }
    let (mut server, port) = spawn_s_server(&["-quiet", "-naccept", "1"]);
    let mut client = spawn_s_client(port);
    let replies = Lines::of(client.child.stdout.take().unwrap());
    // The connection is up before ecapture starts.
    // The client speaks first: s_server reads its stdin only once a session is up.
    writeln!(client.child.stdin.as_mut().unwrap(), "hello").unwrap();
    writeln!(server.child.stdin.as_mut().unwrap(), "before").unwrap();
    assert_eq!(replies.next(), "before");

    let dir = scratch_dir();
    let file = dir.path().join("late.pcapng");
    let capture = capture_port(file.to_str().unwrap(), port, &[]);
    writeln!(server.child.stdin.as_mut().unwrap(), "after").unwrap();
    assert_eq!(replies.next(), "after");
    let out = capture.stop();
    assert!(out.status.success(), "{}", out.stderr);
    drop(client.child.stdin.take());
    drop(server.child.stdin.take());

    let comments = run_peer(
        "tshark",
        Command::new("tshark")
            .arg("-r")
            .arg(&file)
            .args(["-T", "fields", "-e", "frame.comment"]),
    );
    let server_pid = format!("pid={} comm=openssl", server.pid());
    assert!(
        comments.lines().any(|c| c == server_pid),
        "no packet names the server:\n{comments}"
    );
}

#[test]
fn without_btf_new_connections_are_named_from_proc() {
    if !e2e_enabled() {
        return;
    }
    let (_server, port) = start_https_server();
    let dir = scratch_dir();
    let file = dir.path().join("nocore.pcapng");
    let capture = capture_port(file.to_str().unwrap(), port, &["--btf", "2"]);
    let path = format!("/{}", marker("nocore"));
    run_peer(
        "curl",
        Command::new("curl").args(["-sk", "--http1.1", &format!("https://127.0.0.1:{port}{path}")]),
    );
    let out = capture.stop();
    assert!(out.stderr.contains("(NoCore BPF)"), "{}", out.stderr);
    let requests = decrypted_requests(&file);
    let (_, comment) = requests
        .iter()
        .find(|(uri, _)| uri == &path)
        .unwrap_or_else(|| panic!("{path} not decrypted: {requests:?}\n{}", out.stderr));
    assert!(
        comment.starts_with("pid=") && comment.ends_with("comm=curl"),
        "comment {comment:?}"
    );
}
