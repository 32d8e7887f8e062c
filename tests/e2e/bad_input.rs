//! Inputs ecapture must refuse: one clear line, a non-zero exit, nothing attached.

use std::process::Command;

use crate::support::*;

/// Runs ecapture expecting a refusal that names `expected`.
fn refused(command: &mut Command, expected: &str) {
    let before = loaded_bpf_programs();
    let out = run_ecapture_with(command);
    assert!(!out.status.success(), "accepted: {}", out.stderr);
    let errors: Vec<&str> = out.stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "want one error line, got:\n{}", out.stderr);
    assert!(
        errors[0].contains(expected),
        "{:?} does not say {expected:?}",
        errors[0]
    );
    assert!(out.stdout.is_empty(), "{}", out.stdout);
    assert_eq!(loaded_bpf_programs(), before, "programs left attached");
}

fn ecapture(args: &[&str]) -> Command {
    let mut command = Command::new(ecapture_bin());
    command.args(args);
    command
}

#[test]
fn missing_libssl() {
    if e2e_enabled() {
        refused(
            &mut ecapture(&["tls", "--libssl", "/nonexistent/libssl.so.3"]),
            "cannot read /nonexistent/libssl.so.3",
        );
    }
}

#[test]
fn non_elf_libssl() {
    if e2e_enabled() {
        refused(
            &mut ecapture(&["tls", "--libssl", "/etc/passwd"]),
            "/etc/passwd is not an ELF file",
        );
    }
}

#[test]
fn libssl_without_ssl() {
    if e2e_enabled() {
        refused(
            &mut ecapture(&["tls", "--libssl", "/bin/ls"]),
            "has no SSL_write/SSL_read",
        );
    }
}

#[test]
fn unknown_model() {
    if e2e_enabled() {
        refused(&mut ecapture(&["tls", "-m", "bogus"]), "unknown mode \"bogus\"");
    }
}

#[test]
fn bad_pcap_filter() {
    if e2e_enabled() {
        refused(
            &mut ecapture(&[
                "tls",
                "-m",
                "pcap",
                "-i",
                "lo",
                "-w",
                "/dev/null",
                "tcp",
                "port",
                "banana",
            ]),
            "bad pcap filter",
        );
    }
}

#[test]
fn unknown_interface() {
    if e2e_enabled() {
        refused(
            &mut ecapture(&["tls", "-m", "pcap", "-i", "nosuchif0", "-w", "/dev/null"]),
            "no network interface named",
        );
    }
}

#[test]
fn pid_that_does_not_exist() {
    if e2e_enabled() {
        refused(
            &mut ecapture(&["tls", "--pid", "999999999"]),
            "no process with pid 999999999",
        );
    }
}

#[test]
fn no_privileges() {
    if e2e_enabled() {
        let mut command = Command::new("setpriv");
        command.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            ecapture_bin(),
            "tls",
        ]);
        refused(&mut command, "run it as root");
    }
}

#[test]
fn bpf_unavailable_in_a_user_namespace() {
    if e2e_enabled() {
        // Capabilities inside a new user namespace look complete, but the
        // kernel refuses BPF there: the load step must say so.
        let mut command = Command::new("unshare");
        command.args(["--user", "--map-root-user", ecapture_bin(), "tls"]);
        refused(&mut command, "refused to load BPF programs");
    }
}

#[test]
fn gnutls_path_that_is_missing_not_elf_or_not_gnutls() {
    if e2e_enabled() {
        refused(
            &mut ecapture(&["gnutls", "--gnutls", "/nonexistent/libgnutls.so.30"]),
            "cannot read /nonexistent/libgnutls.so.30",
        );
        refused(
            &mut ecapture(&["gnutls", "--gnutls", "/etc/passwd"]),
            "/etc/passwd is not an ELF file",
        );
        refused(
            &mut ecapture(&["gnutls", "--gnutls", "/usr/lib/x86_64-linux-gnu/libssl.so.3"]),
            "has no gnutls_record_send/gnutls_record_recv: it is not GnuTLS",
        );
    }
}

#[test]
fn nspr_path_that_is_missing_not_elf_or_not_nss() {
    if e2e_enabled() {
        refused(
            &mut ecapture(&["nss", "--nspr", "/nonexistent/libnspr4.so"]),
            "cannot read /nonexistent/libnspr4.so",
        );
        refused(
            &mut ecapture(&["nspr", "--nspr", "/etc/passwd"]),
            "/etc/passwd is not an ELF file",
        );
        refused(
            &mut ecapture(&["nss", "--nspr", "/usr/lib/x86_64-linux-gnu/libssl.so.3"]),
            "is neither NSPR's libnspr4 nor NSS's libssl3",
        );
    }
}

#[test]
fn gotls_refuses_programs_it_cannot_read() {
    if e2e_enabled() {
        refused(
            &mut ecapture(&["gotls", "-m", "keylog", "--elfpath", "/nonexistent/go-program"]),
            "cannot read /nonexistent/go-program",
        );
        refused(
            &mut ecapture(&["tlsgo", "-m", "keylog", "-e", "/usr/bin/openssl"]),
            "/usr/bin/openssl is not a Go program",
        );
        let hello = build_go_peer("go_hello", "go_hello.go", &[]);
        refused(
            &mut ecapture(&["gotls", "-m", "keylog", "--elfpath", hello.to_str().unwrap()]),
            "without crypto/tls",
        );
        // Debian has no Go older than 1.19: a Go client whose build info
        // says 1.16 (same length, so the file stays well formed) stands in.
        let client = std::fs::read(go_client(0)).unwrap();
        let at = go_version_offset(&client).expect("the build info names go1.19");
        let mut old = client.clone();
        old[at..at + 6].copy_from_slice(b"go1.16");
        let dir = scratch_dir();
        let path = dir.path().join("go116_client");
        std::fs::write(&path, old).unwrap();
        refused(
            &mut ecapture(&["gotls", "-m", "keylog", "--elfpath", path.to_str().unwrap()]),
            "passes arguments on the stack; gotls reads go1.17 and later",
        );
    }
}

/// Where the build info's version string ("go1.19...") starts: just after
/// its header, "\xff Go buildinf:" and 18 more bytes, and a length byte.
fn go_version_offset(program: &[u8]) -> Option<usize> {
    let header = program.windows(14).position(|window| window == b"\xff Go buildinf:")?;
    let version = header + 32 + 1;
    (program.get(version..version + 6)? == b"go1.19").then_some(version)
}

#[test]
fn shells_that_are_missing_or_not_that_shell() {
    if e2e_enabled() {
        refused(
            &mut ecapture(&["bash", "--bash", "/nonexistent/bash"]),
            "/nonexistent/bash: no such file; give --bash the path of the shell",
        );
        refused(
            &mut ecapture(&["bash", "--bash", "/bin/ls"]),
            "/bin/ls is not bash: it has no read_command function",
        );
        refused(
            &mut ecapture(&["zsh", "--zsh", "/bin/bash"]),
            "/bin/bash is not zsh: it has no zleentry function",
        );
        refused(
            &mut ecapture(&["bash", "--readlineso", "/bin/ls"]),
            "/bin/ls has no readline function; give --readlineso",
        );
    }
}

#[test]
fn database_servers_that_are_missing_or_not_that_server() {
    if e2e_enabled() {
        refused(
            &mut ecapture(&["mysqld", "-m", "/nonexistent/mariadbd"]),
            "/nonexistent/mariadbd: no such file; give -m/--mysqld the path",
        );
        refused(
            &mut ecapture(&["mysqld", "-m", "/bin/ls"]),
            "/bin/ls has no dispatch_command of a known signature",
        );
        refused(
            &mut ecapture(&["mysqld", "-f", "no_such_function"]),
            "has no function no_such_function",
        );
        refused(
            &mut ecapture(&["mysqld", "--offset", "0x3"]),
            "--offset 0x3 is not the start of a function",
        );
    }
}
