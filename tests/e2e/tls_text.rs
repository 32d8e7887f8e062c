//! `ecapture tls` in text mode: plaintext of real peers, asserted byte for byte.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;

const SYSTEM_LIBSSL: &str = "/usr/lib/x86_64-linux-gnu/libssl.so.3";

#[test]
fn curl_request_and_gzip_chunked_response_are_whole_messages() {
    if !e2e_enabled() {
        return;
    }
    let (_server, port) = start_https_server();
    let capture = Capture::start(&["tls"]);
    let path = format!("/{}/gzip-chunked", marker("curl"));
    let url = format!("https://127.0.0.1:{port}{path}");
    let body = run_peer(
        "curl",
        Command::new("curl").args(["-sk", "--http1.1", "--compressed", &url]),
    );
    assert_eq!(body, format!("response-body-for {path}\n"));
    let out = capture.stop();
    assert!(out.status.success(), "{}", out.stderr);

    let request = find_record(
        &out.stdout,
        &["Comm:curl", "Sent", "HTTP request", &format!("GET {path} HTTP/1.1\r\n")],
    );
    assert!(
        request.contains(&format!("to 127.0.0.1:{port} (local 127.0.0.1:")),
        "{request}"
    );
    assert!(request.contains("\r\nUser-Agent: curl/"), "{request}");
    let response = find_record(
        &out.stdout,
        &["Comm:curl", "Received", "HTTP response", "HTTP/1.1 200 OK\r\n"],
    );
    assert!(response.contains(&format!("from 127.0.0.1:{port}")), "{response}");
    assert!(response.contains("[body: chunked; gzip: "), "{response}");
    assert!(
        response.contains(&format!("response-body-for {path}\n")),
        "decoded body missing:\n{response}"
    );
    // The Python server's side of the same exchange, through SSL_read_ex/SSL_write_ex.
    find_record(
        &out.stdout,
        &["Comm:python3", "Received", &format!("GET {path} HTTP/1.1\r\n")],
    );
    assert!(out.stderr.contains("0 records lost"), "{}", out.stderr);
    // curl brings its own BIO: its handshake asked for the syscall
    // tracepoints, in time to name the socket of its first request.
    assert!(out.stderr.contains("(0 syscall tracepoints, more if"), "{}", out.stderr);
    assert!(
        out.stderr.contains("a session's BIO is not a socket") && out.stderr.contains("(8 syscall tracepoints)"),
        "{}",
        out.stderr
    );
}

/// The local port in a record's header ("... (local 127.0.0.1:PORT):"),
/// or the remote one ("from 127.0.0.1:PORT").
fn header_port(record: &str, before: &str) -> u16 {
    let header = record.lines().next().unwrap_or_default();
    u16::try_from(number_after(header, before)).expect("a port")
}

#[test]
fn socket_bios_name_each_connection_without_syscall_tracepoints() {
    if !e2e_enabled() {
        return;
    }
    let client = build_tls_client("tls_dynamic", &["-lssl", "-lcrypto"]);
    let (_server, port) = spawn_s_server(&["-www"]);
    let capture = Capture::start(&["tls"]);
    // Three connections one after the other, each session object made after
    // the last was freed: the allocator hands back the same session object
    // and BIO, and the kernel the same fd number, yet each connection must
    // be named as itself.
    let path = format!("/{}", marker("socket-bio"));
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    run_peer(
        "tls_client 3x",
        Command::new(&client).args(["127.0.0.1", &port.to_string(), &request, "3x"]),
    );
    let out = capture.stop();
    assert!(out.stderr.contains("(0 syscall tracepoints, more if"), "{}", out.stderr);
    assert!(!out.stderr.contains("named from system calls"), "{}", out.stderr);
    let ports = |needles: &[&str], before: &str| -> Vec<u16> {
        let mut ports: Vec<u16> = records(&out.stdout)
            .into_iter()
            .filter(|record| needles.iter().all(|n| record.contains(n)))
            .map(|record| header_port(record, before))
            .collect();
        ports.sort_unstable();
        ports
    };
    let request_line = format!("GET {path} HTTP/1.1\r\n");
    let client_ports = ports(&["Comm:tls_dynamic", "Sent", &request_line], "(local 127.0.0.1:");
    let server_saw = ports(&["Comm:openssl", "Received", &request_line], "from 127.0.0.1:");
    assert_eq!(client_ports.len(), 3, "{}", truncate(&out.stdout));
    assert_eq!(client_ports, server_saw, "{}", truncate(&out.stdout));
    let mut distinct = client_ports.clone();
    distinct.dedup();
    assert_eq!(distinct, client_ports, "{}", truncate(&out.stdout));
}

#[test]
fn python_urllib_client_is_captured_through_the_ex_functions() {
    if !e2e_enabled() {
        return;
    }
    let (_server, port) = start_https_server();
    let capture = Capture::start(&["tls"]);
    let path = format!("/{}", marker("urllib"));
    let client = peer_script("https_client.py");
    let mut command = Command::new("/usr/bin/python3");
    command.arg(&client).arg(format!("https://127.0.0.1:{port}{path}"));
    let body = run_peer("https_client.py", &mut command);
    assert_eq!(body, format!("response-body-for {path}\n"));
    let out = capture.stop();
    let request = find_record(
        &out.stdout,
        &["Comm:python3", "Sent", &format!("GET {path} HTTP/1.1\r\n")],
    );
    assert!(request.contains("User-Agent: Python-urllib/"), "{request}");
    let response = find_record(
        &out.stdout,
        &[
            "Received",
            "HTTP/1.1 200 OK\r\n",
            &format!("response-body-for {path}\n"),
        ],
    );
    assert!(response.contains("Content-Length: "), "{response}");
}

/// `openssl s_server` answering `openssl s_client`, each sending a line.
fn openssl_exchange(client_says: &str, server_says: &str) -> (u32, u32) {
    let (mut server, port) = spawn_s_server(&["-quiet", "-naccept", "1"]);
    let mut client = spawn_s_client(port);
    let replies = Lines::of(client.child.stdout.take().unwrap());
    writeln!(client.child.stdin.as_mut().unwrap(), "{client_says}").unwrap();
    writeln!(server.child.stdin.as_mut().unwrap(), "{server_says}").unwrap();
    assert_eq!(replies.next(), server_says);
    let pids = (server.pid(), client.pid());
    drop(client.child.stdin.take());
    client.wait(PEER_TIMEOUT);
    drop(server);
    pids
}

#[test]
fn openssl_s_client_and_s_server_both_ends() {
    if !e2e_enabled() {
        return;
    }
    let capture = Capture::start(&["tls"]);
    let (client_says, server_says) = (marker("from-s_client"), marker("from-s_server"));
    let (server_pid, client_pid) = openssl_exchange(&client_says, &server_says);
    assert!(capture.wait_for_output(&server_says, Duration::from_secs(5)));
    let out = capture.stop();
    let client = format!("PID:{client_pid} Comm:openssl");
    let server = format!("PID:{server_pid} Comm:openssl");
    let sent = find_record(&out.stdout, &[&client, "Sent", &format!("{client_says}\n")]);
    assert!(sent.contains("bytes data to 127.0.0.1:"), "{sent}");
    find_record(&out.stdout, &[&server, "Received", &format!("{client_says}\n")]);
    find_record(&out.stdout, &[&server, "Sent", &format!("{server_says}\n")]);
    find_record(&out.stdout, &[&client, "Received", &format!("{server_says}\n")]);
}

#[test]
fn openssl_linked_statically_into_a_program() {
    if !e2e_enabled() {
        return;
    }
    let binary = static_openssl_client();
    let (_server, port) = start_https_server();
    let capture = Capture::start(&["tls", "--libssl", binary.to_str().unwrap()]);
    let path = format!("/{}", marker("static"));
    tls_client_get(&binary, port, &path, &[]);
    let out = capture.stop();
    assert!(
        out.stderr.contains("OpenSSL 3."),
        "version detected from the executable: {}",
        out.stderr
    );
    find_record(
        &out.stdout,
        &["Comm:tls_static", "Sent", &format!("GET {path} HTTP/1.1\r\n")],
    );
    // Only the executable was hooked: the Python server's libssl was not.
    assert!(!out.stdout.contains("Comm:python3"), "{}", truncate(&out.stdout));
}

#[test]
fn boringssl_client_text() {
    if !e2e_enabled() {
        return;
    }
    let binary = boringssl_client();
    let (_server, port) = start_https_server();
    let capture = Capture::start(&["tls", "--libssl", BORINGSSL_LIBSSL]);
    let path = format!("/{}", marker("boringssl"));
    tls_client_get(&binary, port, &path, &[]);
    let out = capture.stop();
    assert!(out.stderr.contains("BoringSSL"), "{}", out.stderr);
    let request = find_record(
        &out.stdout,
        &["Comm:tls_boringssl", "Sent", &format!("GET {path} HTTP/1.1\r\n")],
    );
    assert!(request.contains(&format!("to 127.0.0.1:{port}")), "{request}");
    find_record(&out.stdout, &["Comm:tls_boringssl", "Received", "HTTP/1.1 200 OK\r\n"]);
}

/// POSTs `size` bytes ending in `end` with the Python client, and checks
/// that the server received them all.
fn upload(port: u16, path: &str, size: usize, end: &str) {
    let reply = run_peer(
        "https_client.py",
        Command::new("/usr/bin/python3")
            .arg(peer_script("https_client.py"))
            .arg(format!("https://127.0.0.1:{port}{path}"))
            .args(["--post-bytes", &size.to_string(), "--marker", end]),
    );
    assert_eq!(reply, format!("received {size} bytes\n"));
}

#[test]
fn two_mebibyte_request_body_arrives_complete() {
    if !e2e_enabled() {
        return;
    }
    const SIZE: usize = 2 * 1024 * 1024;
    let (_server, port) = start_https_server();
    let capture = Capture::start(&["tls", "--libssl", SYSTEM_LIBSSL]);
    // Output files bypass the page cache; the body below must survive that.
    assert!(capture.writes_stdout_directly(), "stdout is not written with O_DIRECT");
    let end = marker("END-OF-BODY");
    let path = format!("/{}", marker("upload"));
    upload(port, &path, SIZE, &end);
    let out = capture.stop();
    let client = peer_script("https_client.py");
    // The body the client built, byte for byte.
    let expected = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(format!(
            "import sys, importlib.util as u; s=u.spec_from_file_location('c', {client:?}); m=u.module_from_spec(s); \
             s.loader.exec_module(m); sys.stdout.buffer.write(m.pattern({SIZE}, {end:?}))"
        ))
        .output()
        .unwrap()
        .stdout;
    assert_eq!(expected.len(), SIZE);
    let expected = String::from_utf8(expected).unwrap();
    // Printed in parts as it streams; the record separators between parts
    // are line breaks, which the comparison leaves out.
    let lines_joined = |text: &str| text.replace('\n', "");
    let expected = lines_joined(&expected);
    let request = joined_message(
        &out.stdout,
        &["Comm:python3", "Sent", &format!("POST {path} HTTP/1.1\r\n")],
    );
    assert!(
        request.contains(&format!("Content-Length: {SIZE}\r\n")),
        "{}",
        truncate(&request)
    );
    assert!(
        lines_joined(&request).contains(&expected),
        "the captured body is not the 2 MiB that was sent"
    );
    let server_side = joined_message(&out.stdout, &["Received", &format!("POST {path} HTTP/1.1\r\n")]);
    assert!(
        lines_joined(&server_side).contains(&expected),
        "the server's read side is incomplete"
    );
    assert!(
        out.stderr.contains(" 0 records lost,") && out.stderr.contains(" 0 calls incomplete"),
        "{}",
        out.stderr
    );
}

#[test]
fn pid_filter_keeps_one_process_and_drops_another() {
    if !e2e_enabled() {
        return;
    }
    let (_server, port) = start_https_server();
    let kept_path = format!("/{}", marker("kept"));
    let dropped_path = format!("/{}", marker("dropped"));
    let mut kept = Guard::spawn(
        "https_client.py --wait",
        Command::new("/usr/bin/python3")
            .arg(peer_script("https_client.py"))
            .arg(format!("https://127.0.0.1:{port}{kept_path}"))
            .arg("--wait")
            .stdin(Stdio::piped())
            .stdout(Stdio::null()),
    );
    // Let the interpreter map libssl before ecapture reads its maps.
    std::thread::sleep(Duration::from_millis(800));
    let capture = Capture::start(&["tls", "--pid", &kept.pid().to_string()]);
    run_peer(
        "curl",
        Command::new("curl").args(["-sk", &format!("https://127.0.0.1:{port}{dropped_path}")]),
    );
    writeln!(kept.child.stdin.as_mut().unwrap()).unwrap();
    assert!(kept.wait(PEER_TIMEOUT).success());
    assert!(capture.wait_for_output(&kept_path, Duration::from_secs(5)));
    let out = capture.stop();
    find_record(
        &out.stdout,
        &[&format!("PID:{}", kept.pid()), &format!("GET {kept_path} HTTP/1.1\r\n")],
    );
    assert!(
        !out.stdout.contains(&dropped_path),
        "another process leaked through --pid"
    );
    assert!(!out.stdout.contains("Comm:curl"));
}

#[test]
fn sigterm_detaches_every_program_and_prints_a_summary() {
    if !e2e_enabled() {
        return;
    }
    let before = loaded_bpf_programs();
    let capture = Capture::start(&["tls"]);
    assert!(loaded_bpf_programs() > before, "ecapture loaded no programs");
    let out = capture.stop_with(libc::SIGTERM);
    assert!(out.status.success(), "{}", out.stderr);
    assert!(out.stderr.contains("stopped: "), "{}", out.stderr);
    assert_eq!(loaded_bpf_programs(), before, "BPF programs left behind");
}

/// A small tmpfs mounted for one test, unmounted however the test ends.
struct SmallFilesystem(std::path::PathBuf);

impl SmallFilesystem {
    fn mount(at: std::path::PathBuf, size: &str) -> SmallFilesystem {
        std::fs::create_dir_all(&at).unwrap();
        run_peer(
            "mount",
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(&at),
        );
        SmallFilesystem(at)
    }
}

impl Drop for SmallFilesystem {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn full_output_disk_is_reported_and_the_capture_ends_cleanly() {
    if !e2e_enabled() {
        return;
    }
    let before = loaded_bpf_programs();
    let (_server, port) = start_https_server();
    let dir = scratch_dir();
    let full = SmallFilesystem::mount(dir.path().join("small"), "256k");
    let capture = Capture::start_with_stdout(&["tls", "--libssl", SYSTEM_LIBSSL], full.0.join("stdout"));
    // Uploads one after another, so that writes keep failing for a while.
    for _ in 0..12 {
        upload(port, &format!("/{}", marker("full-disk")), 4_000_000, "END");
    }
    let out = capture.stop();
    assert!(out.status.success(), "{}", out.stderr);
    let failures = out
        .stderr
        .lines()
        .filter(|l| l.contains("No space left on device"))
        .count();
    // Reported, but not once per failed write: at most once a second, plus
    // the final write at exit.
    assert!((1..=6).contains(&failures), "{failures} failure lines:\n{}", out.stderr);
    assert!(out.stderr.contains("stopped: "), "{}", out.stderr);
    assert_eq!(loaded_bpf_programs(), before, "BPF programs left behind");
}

#[test]
fn non_core_objects_name_the_connection_without_btf() {
    if !e2e_enabled() {
        return;
    }
    let (_server, port) = start_https_server();
    let capture = Capture::start(&["tls", "--btf", "2"]);
    let path = format!("/{}", marker("nocore"));
    run_peer(
        "curl",
        Command::new("curl").args(["-sk", &format!("https://127.0.0.1:{port}{path}")]),
    );
    let out = capture.stop();
    assert!(out.stderr.contains("NoCore BPF"), "{}", out.stderr);
    let request = find_record(
        &out.stdout,
        &["Comm:python3", "Received", &format!("GET {path} HTTP/1.1\r\n")],
    );
    assert!(request.contains(&format!("(local 127.0.0.1:{port})")), "{request}");
}

#[test]
fn uid_filter_keeps_one_user_and_drops_another() {
    if !e2e_enabled() {
        return;
    }
    let (_server, port) = start_https_server();
    let capture = Capture::start(&["tls", "-u", "65534"]);
    let (kept, dropped) = (format!("/{}", marker("nobody")), format!("/{}", marker("root")));
    let as_nobody = ["--reuid=65534", "--regid=65534", "--clear-groups", "curl", "-sk"];
    run_peer(
        "curl as nobody",
        Command::new("setpriv")
            .args(as_nobody)
            .arg(format!("https://127.0.0.1:{port}{kept}")),
    );
    run_peer(
        "curl as root",
        Command::new("curl").args(["-sk", &format!("https://127.0.0.1:{port}{dropped}")]),
    );
    let out = capture.stop();
    find_record(
        &out.stdout,
        &["Comm:curl", "UID:65534", &format!("GET {kept} HTTP/1.1\r\n")],
    );
    assert!(!out.stdout.contains(&dropped), "root's traffic leaked through -u");
    assert!(!out.stdout.contains("UID:0 "), "root's processes leaked through -u");
}

#[test]
fn logaddr_file_gets_events_and_logs() {
    if !e2e_enabled() {
        return;
    }
    let dir = scratch_dir();
    let log = dir.path().join("ecapture.log");
    let capture = Capture::start(&["tls", "-l", log.to_str().unwrap()]);
    let (client_says, server_says) = (marker("logged-client"), marker("logged-server"));
    openssl_exchange(&client_says, &server_says);
    assert!(capture.wait_for_output(&server_says, Duration::from_secs(5)));
    let out = capture.stop();
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("ready: "), "{logged}");
    assert!(logged.contains("stopped: "), "{logged}");
    // Log lines may follow a record in the file; its header and payload line
    // are what both outputs must share.
    let record = find_record(&logged, &["Comm:openssl", "Sent", &format!("{client_says}\n")]);
    let header_and_payload: String = record.split_inclusive('\n').take(2).collect();
    assert!(
        out.stdout.contains(&header_and_payload),
        "stdout and the log file disagree"
    );
}

#[test]
fn openssl_3_5_is_hooked_past_its_null_check() {
    if !e2e_enabled() {
        return;
    }
    let binary = openssl35_client();
    let (_server, port) = start_https_server();
    let capture = Capture::start(&["tls", "--libssl", binary.to_str().unwrap()]);
    let path = format!("/{}", marker("openssl35"));
    tls_client_get(&binary, port, &path, &[]);
    let out = capture.stop();
    assert!(out.stderr.contains("(OpenSSL 3.5."), "{}", out.stderr);
    // From 3.2 ssl_write_internal takes a flags argument and begins with
    // `test rdi, rdi; je`: the probes sit on the push after it.
    for callee in ["SSL_write/SSL_write_ex callee", "SSL_read/SSL_read_ex callee"] {
        let hook = out
            .stderr
            .split(", ")
            .find(|h| h.contains(callee))
            .unwrap_or_else(|| panic!("{callee} not hooked: {}", out.stderr));
        assert!(
            hook.contains("(push at +") && hook.contains(": emulated; about 0.5 us a hit in a VM)"),
            "{hook}"
        );
    }
    // 3.5's SSL objects start with a type tag; the BIO pointer follows the
    // connection's common header.
    assert!(
        out.stderr
            .contains("socket fds read from the BIO at SSL+0x50 (fd at BIO+0x38)"),
        "{}",
        out.stderr
    );
    let request = find_record(
        &out.stdout,
        &["Comm:tls_openssl35", "Sent", &format!("GET {path} HTTP/1.1\r\n")],
    );
    assert!(
        request.contains(&format!("to 127.0.0.1:{port} (local 127.0.0.1:")),
        "{request}"
    );
    find_record(&out.stdout, &["Comm:tls_openssl35", "Received", "HTTP/1.1 200 OK\r\n"]);
}

/// `--pid` of a server's master whose worker does the TLS: the log names
/// the worker (nginx's master makes no TLS call of its own).
#[test]
fn pid_of_a_master_names_its_workers() {
    if !e2e_enabled() {
        return;
    }
    let (cert, key) = certificate();
    let port = free_port();
    let dir = scratch_dir();
    let log = dir.path().join("server.out");
    // The master maps libssl (it imported ssl) and starts the server as its
    // child; both are in a process group of their own, ended with the test.
    struct Group(Guard);
    impl Drop for Group {
        fn drop(&mut self) {
            // SAFETY: kill(2) on the process group our child leads.
            unsafe { libc::kill(-(self.0.pid() as i32), libc::SIGKILL) };
        }
    }
    let mut master = Group(Guard::spawn(
        "master",
        Command::new("/usr/bin/python3")
            .arg("-c")
            .arg("import ssl, subprocess, sys; subprocess.run([sys.executable] + sys.argv[1:])")
            .arg(peer_script("https_server.py"))
            .arg(port.to_string())
            .args([cert, key])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .process_group(0),
    ));
    master.0.wait_for_output(&log, "listening");
    let master_pid = master.0.pid().to_string();
    let capture = Capture::start(&["tls", "--pid", &master_pid]);
    let out = capture.stop();
    assert!(out.status.success(), "{}", out.stderr);
    let hint = out
        .stderr
        .lines()
        .find(|line| line.contains(&format!("--pid {master_pid} follows that process only")))
        .unwrap_or_else(|| panic!("no hint:\n{}", out.stderr));
    assert!(hint.contains(" (python3) map "), "{hint}");
}

/// wget does its TLS through GnuTLS, which the tls module does not capture:
/// the log says so rather than nothing.
#[test]
fn a_program_on_another_tls_library_is_named() {
    if !e2e_enabled() {
        return;
    }
    let (_server, port) = start_https_server();
    let capture = Capture::start(&["tls"]);
    let mut wget = Guard::spawn(
        "wget",
        Command::new("wget")
            .args(["-q", "-O", "/dev/null", "--no-check-certificate"])
            .arg(format!("https://127.0.0.1:{port}/{}", marker("wget")))
            .stdin(Stdio::null()),
    );
    let wget_pid = wget.pid();
    assert!(wget.wait(PEER_TIMEOUT).success());
    let out = capture.stop();
    assert!(
        out.stderr.contains(&format!(
            "pid {wget_pid} (wget) does TLS through GnuTLS, which the tls module does not capture; run `ecapture gnutls` for it"
        )),
        "{}",
        out.stderr
    );
}

/// Go programs carry their own TLS: one that shakes hands while ecapture
/// runs is named with the module that would capture it, and one whose
/// symbols are stripped (so no handshake can be watched) at start.
#[test]
fn go_programs_are_named_with_the_module_that_would_capture_them() {
    if !e2e_enabled() {
        return;
    }
    let (_server, port) = start_https_server();
    let url = format!("https://127.0.0.1:{port}/{}", marker("go"));
    let with_symbols = build_go_peer("go_https_client", "go_https_client.go", &[]);
    let stripped = build_go_peer("go_tls_stripped", "go_https_client.go", &["-ldflags=-s -w"]);
    let mut client = Guard::spawn(
        "go client",
        Command::new(&with_symbols)
            .arg(&url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped()),
    );
    let mut idle = Guard::spawn(
        "stripped go client",
        Command::new(&stripped)
            .arg(&url)
            .stdin(Stdio::piped())
            .stdout(Stdio::null()),
    );
    let capture = Capture::start(&["tls"]);
    let mut go = client.child.stdin.take().unwrap();
    go.write_all(b"go\n").unwrap();
    drop(go);
    assert!(client.wait(PEER_TIMEOUT).success());
    let out = capture.stop();
    // It never got its line: it ends without a request.
    drop(idle.child.stdin.take());
    idle.wait(PEER_TIMEOUT);
    assert!(
        out.stderr.contains(&format!(
            "pid {} (go_https_client) does TLS through Go's crypto/tls, which the tls module does not capture; run `ecapture gotls",
            client.pid()
        )),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(&format!(
            "pid {} (go_tls_stripped) is a Go program built with Go's crypto/tls",
            idle.pid()
        )),
        "{}",
        out.stderr
    );
}

/// Java's TLS (JSSE) runs inside the JVM: a Java process talking TLS when
/// ecapture starts is named, with no module to capture it.
#[test]
fn java_programs_talking_tls_are_named() {
    if !e2e_enabled() {
        return;
    }
    let (_server, port) = start_https_server();
    let dir = scratch_dir();
    let log = dir.path().join("java.out");
    let mut java = Guard::spawn(
        "java",
        Command::new("java")
            .arg(peer_script("JavaTlsClient.java"))
            .arg(port.to_string())
            .stdin(Stdio::piped())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null()),
    );
    java.wait_for_output(&log, "HTTP/1.1 200 OK");
    let capture = Capture::start(&["tls"]);
    let out = capture.stop();
    drop(java.child.stdin.take());
    assert!(java.wait(PEER_TIMEOUT).success());
    assert!(
        out.stderr.contains(&format!(
            "pid {} (java) runs Java, whose TLS (JSSE) works inside the JVM: no ecapture module captures it yet",
            java.pid()
        )),
        "{}",
        out.stderr
    );
}

/// A Python client, `python3` as given, that imports ssl (mapping libssl)
/// after the first line on its stdin and GETs `path` after the second.
fn python_client_loading_ssl_later(port: u16, path: &str, python3: &mut Command) -> (Guard, std::process::ChildStdin) {
    let program = format!(
        "import sys\nsys.stdin.readline()\nimport ssl, urllib.request\nsys.stdin.readline()\n\
         urllib.request.urlopen('https://127.0.0.1:{port}{path}', context=ssl._create_unverified_context()).read()\n"
    );
    let mut client = Guard::spawn(
        "python3",
        python3
            .args(["-c", &program])
            .stdin(Stdio::piped())
            .stdout(Stdio::null()),
    );
    let stdin = client.child.stdin.take().unwrap();
    (client, stdin)
}

/// `--pid` of a process that has not loaded its TLS library yet waits for
/// it, then hooks it, instead of failing.
#[test]
fn pid_of_a_process_that_loads_openssl_later_is_waited_for() {
    if !e2e_enabled() {
        return;
    }
    let (_server, port) = start_https_server();
    let path = format!("/{}", marker("late"));
    let (mut client, stdin) = python_client_loading_ssl_later(port, &path, &mut Command::new("/usr/bin/python3"));
    let pid = client.pid().to_string();
    // ecapture starts waiting at once; the import comes well after.
    let importer = send_line_later(stdin, b"import\n");
    let capture = Capture::start(&["tls", "--pid", &pid]);
    let mut stdin = importer.join().unwrap();
    stdin.write_all(b"request\n").unwrap();
    drop(stdin);
    assert!(client.wait(PEER_TIMEOUT).success());
    let out = capture.stop();
    assert!(
        out.stderr.contains(&format!(
            "process {pid} maps no OpenSSL or BoringSSL yet: waiting for it to load one"
        )),
        "{}",
        out.stderr
    );
    find_record(
        &out.stdout,
        &["Comm:python3", "Sent", &format!("GET {path} HTTP/1.1\r\n")],
    );
}

/// A copy of libssl that a program loads from a directory of its own (as
/// applications bundle one) after ecapture started: found when the dynamic
/// loader has mapped it, and hooked.
#[test]
fn a_bundled_copy_of_libssl_loaded_later_is_hooked() {
    if !e2e_enabled() {
        return;
    }
    let (_server, port) = start_https_server();
    let dir = scratch_dir();
    for library in ["libssl.so.3", "libcrypto.so.3"] {
        std::fs::copy(
            Path::new("/usr/lib/x86_64-linux-gnu").join(library),
            dir.path().join(library),
        )
        .unwrap();
    }
    let path = format!("/{}", marker("bundled"));
    let (mut client, mut stdin) = python_client_loading_ssl_later(
        port,
        &path,
        Command::new("/usr/bin/python3").env("LD_LIBRARY_PATH", dir.path()),
    );
    let capture = Capture::start(&["tls"]);
    stdin.write_all(b"import\n").unwrap();
    let copy = dir.path().join("libssl.so.3");
    assert!(
        // Reached through the process's root: /proc/PID/root/...
        capture.wait_for_log(&format!("{} (OpenSSL", copy.display()), READY_TIMEOUT),
        "the copy was not hooked"
    );
    stdin.write_all(b"request\n").unwrap();
    drop(stdin);
    assert!(client.wait(PEER_TIMEOUT).success());
    let out = capture.stop();
    assert!(
        out.stderr
            .contains(&format!("which pid {} (python3) loaded", client.pid())),
        "{}",
        out.stderr
    );
    find_record(
        &out.stdout,
        &["Comm:python3", "Sent", &format!("GET {path} HTTP/1.1\r\n")],
    );
}
