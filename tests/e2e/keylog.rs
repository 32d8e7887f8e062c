//! `ecapture tls -m keylog`: tshark, given only the key log ecapture wrote,
//! decrypts an independent capture (dumpcap) of the same traffic.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;

/// dumpcap on loopback for one port, stopped and flushed on `finish`.
struct PacketCapture {
    guard: Guard,
    file: PathBuf,
    port: u16,
}

impl PacketCapture {
    fn start(dir: &Path, port: u16) -> PacketCapture {
        let file = dir.join("traffic.pcapng");
        let guard = Guard::spawn(
            "dumpcap",
            Command::new("dumpcap")
                .args(["-q", "-i", "lo", "-f", &format!("tcp port {port}"), "-w"])
                .arg(&file)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        // The file's header may be written before packets are captured, and
        // a handshake missed at the start cannot be decrypted: connect until
        // dumpcap has written a packet of this port (it flushes on a timer).
        let size = || std::fs::metadata(&file).map_or(0, |meta| meta.len());
        let deadline = std::time::Instant::now() + PEER_TIMEOUT;
        while size() == 0 {
            assert!(std::time::Instant::now() < deadline, "dumpcap did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        let header = size();
        while size() <= header {
            assert!(std::time::Instant::now() < deadline, "dumpcap captured nothing");
            drop(std::net::TcpStream::connect(("127.0.0.1", port)));
            std::thread::sleep(Duration::from_millis(100));
        }
        PacketCapture { guard, file, port }
    }

    fn finish(mut self) -> PathBuf {
        // Packets dumpcap has not read from the kernel when it is stopped are
        // lost: once a connection made now is in the file, so is all before it.
        let size = || std::fs::metadata(&self.file).map_or(0, |meta| meta.len());
        let before = size();
        let deadline = std::time::Instant::now() + PEER_TIMEOUT;
        while size() <= before {
            assert!(std::time::Instant::now() < deadline, "dumpcap wrote nothing more");
            drop(std::net::TcpStream::connect(("127.0.0.1", self.port)));
            std::thread::sleep(Duration::from_millis(100));
        }
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.guard.pid() as i32, libc::SIGINT) };
        self.guard.wait(PEER_TIMEOUT);
        self.file.clone()
    }
}

/// The HTTP request URIs tshark can read in `pcap` with `keylog` (and only it).
fn decrypted_uris(pcap: &Path, keylog: &Path) -> Vec<String> {
    let out = run_peer(
        "tshark",
        Command::new("tshark")
            .arg("-r")
            .arg(pcap)
            .arg("-o")
            .arg(format!("tls.keylog_file:{}", keylog.display()))
            .args(["-Y", "http.request", "-T", "fields", "-e", "http.request.uri"]),
    );
    out.lines().map(str::to_string).collect()
}

/// The client randoms of the ClientHellos in `pcap`: when decryption fails,
/// they tell a capture that missed a handshake from keys that are wrong.
fn client_hello_randoms(pcap: &Path) -> String {
    run_peer(
        "tshark",
        Command::new("tshark").arg("-r").arg(pcap).args([
            "-Y",
            "tls.handshake.type == 1",
            "-T",
            "fields",
            "-e",
            "tls.handshake.random",
        ]),
    )
}

/// Runs `traffic` under `ecapture tls -m keylog EXTRA...` and a packet capture,
/// then returns (key log text, URIs tshark decrypts, the captured ClientHello
/// randoms).
fn keylog_run(port: u16, extra: &[&str], traffic: impl FnOnce()) -> (String, Vec<String>, String) {
    keylog_run_with("tls", port, extra, traffic)
}

/// `keylog_run` with the module `module`.
fn keylog_run_with(module: &str, port: u16, extra: &[&str], traffic: impl FnOnce()) -> (String, Vec<String>, String) {
    let dir = scratch_dir();
    let keylog = dir.path().join("keys.log");
    let packets = PacketCapture::start(dir.path(), port);
    let mut args = vec![module, "-m", "keylog", "-k", keylog.to_str().unwrap()];
    args.extend_from_slice(extra);
    let capture = Capture::start(&args);
    traffic();
    let out = capture.stop();
    assert!(out.status.success(), "{}", out.stderr);
    // The system's OpenSSL is newer than the layout tables, and its accessors
    // confirm the layout: nothing to warn about.
    if !extra.contains(&"--libssl") {
        assert!(!out.stderr.contains("WARN"), "{}", out.stderr);
    }
    let pcap = packets.finish();
    let mode = std::fs::metadata(&keylog)
        .expect("key log written")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the key log holds secrets");
    let text = std::fs::read_to_string(&keylog).unwrap();
    // Without keys tshark sees no HTTP at all: the assertion below can fail.
    assert!(decrypted_uris(&pcap, Path::new("/dev/null")).is_empty());
    (text, decrypted_uris(&pcap, &keylog), client_hello_randoms(&pcap))
}

/// tshark decrypted the TLS 1.3 request `v13` and the TLS 1.2 request `v12`,
/// and the key log holds one session of each.
fn assert_tls13_and_tls12_decrypted(keys: &str, uris: &[String], hellos: &str, v13: &str, v12: &str) {
    assert!(
        uris.iter().any(|uri| uri == v13) && uris.iter().any(|uri| uri == v12),
        "tshark decrypted {uris:?}\nkeys:\n{keys}\nClientHello randoms captured:\n{hellos}"
    );
    assert_one_tls13_and_one_tls12_session(keys);
}

/// All five TLS 1.3 labels and the TLS 1.2 one, once each.
fn assert_one_tls13_and_one_tls12_session(keys: &str) {
    for label in [
        "CLIENT_HANDSHAKE_TRAFFIC_SECRET",
        "SERVER_HANDSHAKE_TRAFFIC_SECRET",
        "CLIENT_TRAFFIC_SECRET_0",
        "SERVER_TRAFFIC_SECRET_0",
        "EXPORTER_SECRET",
        "CLIENT_RANDOM",
    ] {
        assert_eq!(
            keys.lines().filter(|l| l.starts_with(&format!("{label} "))).count(),
            1,
            "{label}:\n{keys}"
        );
    }
}

fn curl(port: u16, path: &str, extra: &[&str]) {
    run_peer(
        "curl",
        Command::new("curl")
            .args(["-sk", "--http1.1"])
            .args(extra)
            .arg(format!("https://127.0.0.1:{port}{path}")),
    );
}

#[test]
fn client_side_keys_tls13_and_tls12() {
    if !e2e_enabled() {
        return;
    }
    let (_server, port) = start_https_server();
    let (v13, v12) = (format!("/{}", marker("tls13")), format!("/{}", marker("tls12")));
    // The server runs as root, curl as nobody: -u keeps only the client's keys.
    let (keys, uris, hellos) = keylog_run(port, &["-u", "65534"], || {
        let as_nobody = [
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "curl",
            "-sk",
            "--http1.1",
        ];
        for (path, version) in [(&v13, "--tlsv1.3"), (&v12, "--tls-max")] {
            let mut command = Command::new("setpriv");
            command.args(as_nobody).arg(version);
            if version == "--tls-max" {
                command.arg("1.2");
            }
            run_peer("curl", command.arg(format!("https://127.0.0.1:{port}{path}")));
        }
    });
    assert_tls13_and_tls12_decrypted(&keys, &uris, &hellos, &v13, &v12);
}

#[test]
fn server_side_keys_from_a_python_server() {
    if !e2e_enabled() {
        return;
    }
    let (server, port) = start_https_server();
    let path = format!("/{}", marker("server-keys"));
    let pid = server.pid().to_string();
    let (keys, uris, _) = keylog_run(port, &["--pid", &pid], || curl(port, &path, &[]));
    assert_eq!(uris, [path], "{keys}");
}

#[test]
fn openssl_s_server_keys_tls12() {
    if !e2e_enabled() {
        return;
    }
    // -www answers a GET with a status page.
    let (mut server, port) = spawn_s_server(&["-www", "-tls1_2"]);
    let path = format!("/{}", marker("s_server"));
    let pid = server.pid().to_string();
    let (keys, uris, _) = keylog_run(port, &["--pid", &pid], || curl(port, &path, &[]));
    assert!(keys.starts_with("CLIENT_RANDOM "), "{keys}");
    assert_eq!(uris, [path]);
    drop(server.child.stdin.take());
}

#[test]
fn statically_linked_client_keys() {
    if !e2e_enabled() {
        return;
    }
    let binary = static_openssl_client();
    let (_server, port) = start_https_server();
    let path = format!("/{}", marker("static-keys"));
    let (keys, uris, _) = keylog_run(port, &["--libssl", binary.to_str().unwrap()], || {
        tls_client_get(&binary, port, &path, &[])
    });
    assert_eq!(uris, [path], "{keys}");
}

/// A tls_client build makes one TLS 1.3 and one TLS 1.2 request with
/// ecapture hooking `libssl`; tshark must decrypt both with the key log.
fn tls_client_keys_tls13_and_tls12(binary: &Path, libssl: &str) {
    let (_server, port) = start_https_server();
    let (v13, v12) = (format!("/{}", marker("tls13")), format!("/{}", marker("tls12")));
    let (keys, uris, hellos) = keylog_run(port, &["--libssl", libssl], || {
        tls_client_get(binary, port, &v13, &[]);
        tls_client_get(binary, port, &v12, &["1.2"]);
    });
    assert_tls13_and_tls12_decrypted(&keys, &uris, &hellos, &v13, &v12);
}

#[test]
fn boringssl_client_keys_tls13_and_tls12() {
    // BoringSSL's handshake secrets are taken as held, not derived.
    if e2e_enabled() {
        tls_client_keys_tls13_and_tls12(&boringssl_client(), BORINGSSL_LIBSSL);
    }
}

#[test]
fn openssl_3_5_client_keys_tls13_and_tls12() {
    if e2e_enabled() {
        let binary = openssl35_client();
        tls_client_keys_tls13_and_tls12(&binary, binary.to_str().unwrap());
    }
}

/// gnutls-cli's secrets, TLS 1.3 and 1.2, from `ecapture gnutls`: every one
/// goes through GnuTLS's key log call, found in the stripped library.
#[test]
fn gnutls_client_keys_tls13_and_tls12() {
    if !e2e_enabled() {
        return;
    }
    let (_server, port) = start_https_server();
    let (v13, v12) = (format!("/{}", marker("gnutls13")), format!("/{}", marker("gnutls12")));
    let (keys, uris, hellos) = keylog_run_with("gnutls", port, &[], || {
        gnutls_cli_get(port, &v13, "TLS1.3");
        gnutls_cli_get(port, &v12, "TLS1.2");
    });
    assert_tls13_and_tls12_decrypted(&keys, &uris, &hellos, &v13, &v12);
}

/// gnutls-serv's secrets, TLS 1.3 and 1.2, from `ecapture gnutls --pid`: the
/// server side of the same key log call (curl, on OpenSSL, is the client).
#[test]
fn gnutls_server_keys_tls13_and_tls12() {
    if !e2e_enabled() {
        return;
    }
    let (server, port) = start_gnutls_serv();
    let pid = server.pid().to_string();
    let (v13, v12) = (
        format!("/{}", marker("gnutls-serv13")),
        format!("/{}", marker("gnutls-serv12")),
    );
    let (keys, uris, hellos) = keylog_run_with("gnutls", port, &["--pid", &pid], || {
        curl(port, &v13, &["--tlsv1.3"]);
        curl(port, &v12, &["--tls-max", "1.2"]);
    });
    assert_tls13_and_tls12_decrypted(&keys, &uris, &hellos, &v13, &v12);
}

/// The NSS client's secrets, TLS 1.3 and 1.2, read in softoken: the very
/// lines the OpenSSL server at the other end logs itself, and tshark
/// decrypts with them. (Debian's NSS cannot write a key log of its own.)
#[test]
fn nss_client_keys_match_the_openssl_server_s() {
    if !e2e_enabled() {
        return;
    }
    let dir = scratch_dir();
    let server_keys = dir.path().join("s_server.keys");
    let (_server, port) = spawn_s_server(&["-www", "-keylogfile", server_keys.to_str().unwrap()]);
    let nspr_file = dir.path().join("read-through-nspr.txt");
    std::fs::write(&nspr_file, "contents").unwrap();
    let (v13, v12) = (format!("/{}", marker("nss13")), format!("/{}", marker("nss12")));
    let (keys, uris, hellos) = keylog_run_with("nss", port, &[], || {
        nss_client_get(port, &v13, "read", "tls1.3", &nspr_file);
        nss_client_get(port, &v12, "send", "tls1.2", &nspr_file);
    });
    assert_tls13_and_tls12_decrypted(&keys, &uris, &hellos, &v13, &v12);
    let theirs = std::fs::read_to_string(&server_keys).unwrap();
    assert_eq!(key_lines(&keys), key_lines(&theirs));
}

/// selfserv's secrets, TLS 1.3 and 1.2, from `ecapture nss --pid`, with curl
/// (OpenSSL) as the client.
#[test]
fn selfserv_keys_tls13_and_tls12() {
    if !e2e_enabled() {
        return;
    }
    let (server, port) = start_selfserv();
    let pid = server.pid().to_string();
    let (v13, v12) = (
        format!("/{}", marker("selfserv13")),
        format!("/{}", marker("selfserv12")),
    );
    let (keys, uris, hellos) = keylog_run_with("nss", port, &["--pid", &pid], || {
        curl(port, &v13, &["--tlsv1.3"]);
        curl(port, &v12, &["--tls-max", "1.2"]);
    });
    assert_tls13_and_tls12_decrypted(&keys, &uris, &hellos, &v13, &v12);
}

/// The lines of an OpenSSL key log file, comments left out.
fn key_lines(text: &str) -> std::collections::BTreeSet<&str> {
    text.lines().filter(|line| !line.starts_with('#')).collect()
}

/// A resumed TLS 1.2 session derives no secret: gnutls-cli's is read when
/// its handshake completes. Both sessions' lines equal the ones s_server
/// logs at the other end, and tshark decrypts the request sent on the
/// resumed one.
#[test]
fn gnutls_resumed_tls12_session_is_keyed() {
    if !e2e_enabled() {
        return;
    }
    let dir = scratch_dir();
    let server_keys = dir.path().join("s_server.keys");
    let (_server, port) = spawn_s_server(&["-www", "-keylogfile", server_keys.to_str().unwrap()]);
    let path = format!("/{}", marker("gnutls-resumed"));
    let (keys, uris, hellos) = keylog_run_with("gnutls", port, &[], || {
        let printed = run_peer(
            "gnutls-cli",
            Command::new("sh").arg("-c").arg(format!(
                "(printf 'GET {path} HTTP/1.0\\r\\n\\r\\n'; sleep 1) | gnutls-cli --insecure --resume \
                 --priority NORMAL:-VERS-ALL:+VERS-TLS1.2 -p {port} 127.0.0.1 2>/dev/null; true"
            )),
        );
        assert!(printed.contains("This is a resumed session"), "{printed}");
    });
    assert!(
        uris.contains(&path),
        "tshark decrypted {uris:?}\nkeys:\n{keys}\nClientHellos:\n{hellos}"
    );
    let theirs = std::fs::read_to_string(&server_keys).unwrap();
    assert_eq!(key_lines(&keys), key_lines(&theirs));
    assert_eq!(key_lines(&keys).len(), 2, "{keys}");
}

/// A resumed TLS 1.2 session's master secret is unwrapped from NSS's session
/// cache, not derived: selfserv's, from `ecapture nss --pid`, with the lines
/// s_client logs at the other end, and tshark decrypts the resumed request.
#[test]
fn selfserv_resumed_tls12_session_is_keyed() {
    if !e2e_enabled() {
        return;
    }
    let (server, port) = start_selfserv();
    let pid = server.pid().to_string();
    let dir = scratch_dir();
    let (session, client_keys) = (dir.path().join("session.pem"), dir.path().join("s_client.keys"));
    let path = format!("/{}", marker("selfserv-resumed"));
    let (keys, uris, hellos) = keylog_run_with("nss", port, &["--pid", &pid], || {
        for (session_flag, expected) in [("-sess_out", "New, TLSv1.2"), ("-sess_in", "Reused, TLSv1.2")] {
            let printed = run_peer(
                "openssl s_client",
                Command::new("sh").arg("-c").arg(format!(
                    "(printf 'GET {path} HTTP/1.0\\r\\n\\r\\n'; sleep 1) | openssl s_client -connect 127.0.0.1:{port} \
                     -tls1_2 {session_flag} {} -keylogfile {} 2>/dev/null; true",
                    session.display(),
                    client_keys.display()
                )),
            );
            assert!(printed.contains(expected), "{printed}");
        }
    });
    assert!(
        uris.iter().filter(|uri| **uri == path).count() == 2,
        "tshark decrypted {uris:?}\nkeys:\n{keys}\nClientHellos:\n{hellos}"
    );
    let theirs = std::fs::read_to_string(&client_keys).unwrap();
    assert_eq!(key_lines(&keys), key_lines(&theirs));
    assert_eq!(key_lines(&keys).len(), 2, "{keys}");
}

/// Go clients built with symbols, stripped and as PIE, each over TLS 1.3 and
/// 1.2, running before ecapture starts: ecapture's key log equals the one
/// crypto/tls writes itself, and tshark decrypts every request with it.
#[test]
fn go_clients_keys_match_their_own_key_log() {
    if !e2e_enabled() {
        return;
    }
    let (_server, port) = start_https_server();
    let dir = scratch_dir();
    let go_keys = dir.path().join("go.keys");
    let mut paths = Vec::new();
    let mut clients = Vec::new();
    for (index, (name, _)) in GO_CLIENT_BUILDS.iter().enumerate() {
        for version in ["1.3", "1.2"] {
            let path = format!("/{}", marker(&format!("{name}-{version}")));
            let url = format!("https://127.0.0.1:{port}{path}");
            clients.push(spawn_go_client(go_client(index), &url, version, &go_keys));
            paths.push(path);
        }
    }
    let (keys, uris, hellos) = keylog_run_with("gotls", port, &[], || clients.into_iter().for_each(run_go_client));
    for path in &paths {
        assert!(
            uris.contains(path),
            "{path} not decrypted: {uris:?}\nkeys:\n{keys}\nClientHellos:\n{hellos}"
        );
    }
    let theirs = std::fs::read_to_string(&go_keys).unwrap();
    assert_eq!(key_lines(&keys), key_lines(&theirs));
}
