//! `ecapture tls -m pcapng`: a file tshark decrypts on its own, with each
//! packet's process in its comment, filtered as asked, and an interface left
//! as it was found.

use std::process::Command;

use pcap_parser::pcapng::Block;

use crate::support::*;

/// `ecapture tls -m pcapng` on loopback into `output`, for one TCP port.
fn capture_port(output: &str, port: u16, extra: &[&str]) -> Capture {
    capture_port_with("tls", output, port, extra)
}

/// `capture_port` with the module `module`.
fn capture_port_with(module: &str, output: &str, port: u16, extra: &[&str]) -> Capture {
    let port = port.to_string();
    let mut args = vec![module, "-m", "pcapng", "-i", "lo", "-w", output];
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
    assert!(out.stderr.contains("(NoCore BPF"), "{}", out.stderr);
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

/// Two network namespaces linked by a pair of tun devices (a layer-3 link
/// with no Ethernet header, as WireGuard's), removed with everything in
/// them when dropped.
struct TunLink {
    namespaces: [String; 2],
    devices: [String; 2],
    wire: Option<Guard>,
}

impl TunLink {
    const ADDRESSES: [&str; 2] = ["198.51.100.1", "198.51.100.2"];

    fn new() -> TunLink {
        let tag = std::process::id();
        let namespaces = [format!("ectun-a-{tag}"), format!("ectun-b-{tag}")];
        let devices = [format!("ectuna{tag}"), format!("ectunb{tag}")];
        let ip = |args: &[&str]| {
            run_peer("ip", Command::new("ip").args(args));
        };
        // Made first, so that the namespaces go whatever fails below.
        let mut link = TunLink {
            namespaces,
            devices,
            wire: None,
        };
        for namespace in &link.namespaces {
            ip(&["netns", "add", namespace]);
        }
        let dir = scratch_dir();
        let log = dir.path().join("wire.out");
        let wire = link.wire.insert(Guard::spawn(
            "tun_wire.py",
            Command::new("ip")
                .args(["netns", "exec", &link.namespaces[0], "/usr/bin/python3"])
                .arg(peer_script("tun_wire.py"))
                .args(&link.devices)
                .stdout(std::fs::File::create(&log).unwrap()),
        ));
        wire.wait_for_output(&log, "ready");
        let [a, b] = &link.namespaces;
        ip(&["-n", a, "link", "set", &link.devices[1], "netns", b]);
        for (index, namespace) in link.namespaces.iter().enumerate() {
            let (local, peer, device) = (Self::ADDRESSES[index], Self::ADDRESSES[1 - index], &link.devices[index]);
            ip(&["-n", namespace, "addr", "add", local, "peer", peer, "dev", device]);
            ip(&["-n", namespace, "link", "set", device, "up"]);
            ip(&["-n", namespace, "link", "set", "lo", "up"]);
        }
        link
    }

    /// `command` run inside namespace `index`.
    fn exec(&self, index: usize, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.namespaces[index], program]);
        command
    }
}

impl Drop for TunLink {
    fn drop(&mut self) {
        drop(self.wire.take());
        for namespace in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", namespace]).status();
        }
    }
}

#[test]
fn a_layer3_interface_is_captured_as_raw_ip_and_decrypted() {
    if !e2e_enabled() {
        return;
    }
    let link = TunLink::new();
    let (cert, key) = certificate();
    let port = free_port().to_string();
    let _server = Guard::spawn(
        "openssl s_server",
        link.exec(0, "openssl")
            .args(["s_server", "-www", "-accept", &port, "-cert"])
            .arg(cert)
            .arg("-key")
            .arg(key)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    );
    let dir = scratch_dir();
    let output = dir.path().join("tun.pcapng");
    let device = &link.devices[0];
    // Packets on this link are the server's: its namespace is the capture's.
    let capture = Capture::start_in_netns(
        &link.namespaces[0],
        &[
            "tls",
            "-m",
            "pcapng",
            "-i",
            device,
            "-w",
            output.to_str().unwrap(),
            "tcp",
            "port",
            &port,
        ],
    );
    let path = format!("/{}", marker("tun"));
    let url = format!("https://{}:{port}{path}", TunLink::ADDRESSES[0]);
    // The server may still be starting: curl retries refused connections.
    run_peer(
        "curl",
        link.exec(1, "curl")
            .args([
                "-sk",
                "--http1.1",
                "--retry",
                "20",
                "--retry-connrefused",
                "--retry-delay",
                "1",
                "-o",
                "/dev/null",
            ])
            .arg(&url),
    );
    let out = capture.stop();
    assert!(out.status.success(), "{}", out.stderr);
    let link_type = run_peer(
        "tshark",
        Command::new("tshark")
            .arg("-r")
            .arg(&output)
            .args(["-c", "1", "-T", "fields", "-e", "frame.protocols"]),
    );
    assert!(link_type.starts_with("raw:ip:tcp"), "{link_type}");
    let requests = decrypted_requests(&output);
    assert!(
        requests
            .iter()
            .any(|(uri, comment)| *uri == path && comment.contains("comm=openssl")),
        "{requests:?}\n{}",
        out.stderr
    );
}

/// A fork-per-connection server: the parent accepts, the child does the
/// TLS. The server's packets name the child, the process using the socket.
#[test]
fn packets_of_a_forked_server_name_the_child_that_serves() {
    if !e2e_enabled() {
        return;
    }
    let (server, port) = start_python_server("forking_server.py");
    let dir = scratch_dir();
    let output = dir.path().join("forked.pcapng");
    let capture = capture_port(output.to_str().unwrap(), port, &[]);
    let reply = run_peer(
        "curl",
        Command::new("curl")
            .args(["-sk", "--http1.1"])
            .arg(format!("https://127.0.0.1:{port}/")),
    );
    let child: u32 = reply.trim().strip_prefix("served-by ").unwrap().parse().unwrap();
    assert_ne!(child, server.pid());
    let out = capture.stop();
    assert!(out.status.success(), "{}", out.stderr);
    let responses = run_peer(
        "tshark",
        Command::new("tshark").arg("-r").arg(&output).args([
            "-Y",
            "http.response",
            "-T",
            "fields",
            "-e",
            "frame.comment",
        ]),
    );
    assert_eq!(responses.trim(), format!("pid={child} comm=python3"), "{}", out.stderr);
    // The SYN and SYN-ACK leave before connect() and accept() return, that
    // is, before their owners are known: they are named when written.
    let handshake = run_peer(
        "tshark",
        Command::new("tshark").arg("-r").arg(&output).args([
            "-Y",
            "tcp.flags.syn == 1",
            "-T",
            "fields",
            "-e",
            "frame.comment",
        ]),
    );
    let comments: Vec<&str> = handshake.lines().collect();
    assert_eq!(comments.len(), 2, "{handshake}");
    assert!(comments[0].ends_with("comm=curl"), "{handshake}");
    assert!(comments[1].starts_with("pid="), "{handshake}");
}

/// Stops a pcapng capture into `file` and has tshark decrypt each of
/// `paths` from the file alone, its packets commented with `comm`.
fn stop_and_decrypt_alone(capture: Capture, file: &std::path::Path, paths: &[&str], comm: &str) {
    let out = capture.stop();
    assert!(out.status.success(), "{}", out.stderr);
    let requests = decrypted_requests(file);
    for path in paths {
        let (_, comment) = requests
            .iter()
            .find(|(uri, _)| uri == path)
            .unwrap_or_else(|| panic!("{path} not decrypted: {requests:?}\n{}", out.stderr));
        assert!(comment.contains(&format!("comm={comm}")), "{comment}");
    }
}

/// `ecapture gnutls -m pcapng`: tshark decrypts gnutls-cli's request from the
/// file alone, its packets named after gnutls-cli.
#[test]
fn gnutls_sessions_are_decrypted_from_the_file_alone() {
    if !e2e_enabled() {
        return;
    }
    let (_server, port) = start_https_server();
    let dir = scratch_dir();
    let file = dir.path().join("gnutls.pcapng");
    let capture = capture_port_with("gnutls", file.to_str().unwrap(), port, &[]);
    let path = format!("/{}", marker("gnutls-pcapng"));
    gnutls_cli_get(port, &path, "TLS1.3");
    stop_and_decrypt_alone(capture, &file, &[&path], "gnutls-cli");
}

/// `ecapture nss -m pcapng`: tshark decrypts the NSS client's TLS 1.3 and 1.2
/// requests from the file alone, with the secrets read in softoken.
#[test]
fn nss_sessions_are_decrypted_from_the_file_alone() {
    if !e2e_enabled() {
        return;
    }
    let (_server, port) = start_selfserv();
    let dir = scratch_dir();
    let file = dir.path().join("nss.pcapng");
    let nspr_file = dir.path().join("read-through-nspr.txt");
    std::fs::write(&nspr_file, "contents").unwrap();
    let capture = capture_port_with("nss", file.to_str().unwrap(), port, &[]);
    let (v13, v12) = (
        format!("/{}", marker("nss-pcapng13")),
        format!("/{}", marker("nss-pcapng12")),
    );
    nss_client_get(port, &v13, "read", "tls1.3", &nspr_file);
    nss_client_get(port, &v12, "send", "tls1.2", &nspr_file);
    stop_and_decrypt_alone(capture, &file, &[&v13, &v12], "nss_client");
}

/// `ecapture gotls -m pcapng`: tshark decrypts a stripped Go client's request
/// from the file alone, its packets named after the client.
#[test]
fn go_sessions_are_decrypted_from_the_file_alone() {
    if !e2e_enabled() {
        return;
    }
    let (_server, port) = start_https_server();
    let dir = scratch_dir();
    let file = dir.path().join("go.pcapng");
    let path = format!("/{}", marker("go-pcapng"));
    let client = spawn_go_client(
        go_client(1),
        &format!("https://127.0.0.1:{port}{path}"),
        "1.3",
        &dir.path().join("go.keys"),
    );
    let capture = capture_port_with("gotls", file.to_str().unwrap(), port, &[]);
    run_go_client(client);
    stop_and_decrypt_alone(capture, &file, &[&path], "go_client_strip");
}
