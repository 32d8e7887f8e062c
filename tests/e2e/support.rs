//! Running the real ecapture binary and real TLS peers, with every wait
//! bounded and every process stopped, pass or fail.

use std::fs::File;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(20);
pub const PEER_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether this test can run here. Under ECAPTURE_E2E=required (CI) a test
/// that cannot run fails instead of skipping.
pub fn e2e_enabled() -> bool {
    let reason = if unsafe { libc::geteuid() } != 0 {
        Some("not running as root")
    } else if !Path::new("/sys/kernel/btf").exists() && !Path::new("/sys/fs/bpf").exists() {
        Some("no BPF support visible")
    } else {
        None
    };
    match (reason, std::env::var("ECAPTURE_E2E").as_deref()) {
        (None, _) => true,
        (Some(reason), Ok("required")) => panic!("end-to-end test cannot run ({reason}) but ECAPTURE_E2E=required"),
        (Some(reason), _) => {
            eprintln!("skipped: {reason}; set ECAPTURE_E2E=required to make this a failure");
            false
        }
    }
}

pub fn ecapture_bin() -> &'static str {
    env!("CARGO_BIN_EXE_ecapture")
}

pub fn scratch_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("ecapture-e2e")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
}

/// A scratch directory in memory (/dev/shm), for output that must not wait
/// on a disk: on a machine still writing back a build, direct writes of a
/// fast capture stall for tens of milliseconds, and the kernel's buffers
/// overflow meanwhile. Where /dev/shm is missing, the disk it is.
pub fn memory_scratch_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("ecapture-e2e")
        .tempdir_in("/dev/shm")
        .unwrap_or_else(|_| scratch_dir())
}

/// A unique marker for this test run, so that assertions never match traffic
/// from elsewhere on the machine.
pub fn marker(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{name}-{}-{nanos:09}", std::process::id())
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A child process killed when dropped, so that a failing test leaves nothing running.
pub struct Guard {
    pub child: Child,
    name: String,
}

impl Guard {
    pub fn spawn(name: &str, command: &mut Command) -> Guard {
        let child = command.spawn().unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Guard {
            child,
            name: name.to_string(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits, within PEER_TIMEOUT, until the file `log` (where the process
    /// writes) contains `needle`; fails if the process ends first.
    pub fn wait_for_output(&mut self, log: &Path, needle: &str) {
        let deadline = Instant::now() + PEER_TIMEOUT;
        while !read_lossy(log).contains(needle) {
            assert!(
                self.child.try_wait().unwrap().is_none(),
                "{} exited before printing {needle:?}",
                self.name
            );
            assert!(Instant::now() < deadline, "{} did not print {needle:?}", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to end by itself, within `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not finish within {timeout:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs a command to completion within PEER_TIMEOUT and returns its stdout.
pub fn run_peer(name: &str, command: &mut Command) -> String {
    run_within(name, command, PEER_TIMEOUT)
}

/// Runs a command to completion within `timeout` and returns its stdout.
pub fn run_within(name: &str, command: &mut Command, timeout: Duration) -> String {
    let dir = scratch_dir();
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    command
        .stdout(File::create(&out_path).unwrap())
        .stderr(File::create(&err_path).unwrap())
        .stdin(Stdio::null());
    let mut guard = Guard::spawn(name, command);
    let status = guard.wait(timeout);
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    assert!(status.success(), "{name} failed ({status}): {stderr}");
    stdout
}

/// What a finished capture printed.
pub struct CaptureOutput {
    pub stdout: String,
    /// stdout byte for byte, for binary output such as `-w -`.
    pub raw_stdout: Vec<u8>,
    pub stderr: String,
    pub status: ExitStatus,
}

/// Whether the file at `path` holds `needle` within `timeout`.
fn file_comes_to_hold(path: &Path, needle: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if read_lossy(path).contains(needle) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A running `ecapture` with its output going to files (a pipe could fill
/// up and stall it).
pub struct Capture {
    guard: Guard,
    _dir: tempfile::TempDir,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
}

impl Capture {
    /// Starts `ecapture ARGS` and waits for its ready line.
    pub fn start(args: &[&str]) -> Capture {
        let dir = scratch_dir();
        let stdout_path = dir.path().join("stdout");
        let mut command = Command::new(ecapture_bin());
        Capture::start_in(command.args(args), dir, stdout_path)
    }

    /// Starts `ecapture ARGS` with its stdout in the file `stdout_path`.
    pub fn start_with_stdout(args: &[&str], stdout_path: PathBuf) -> Capture {
        let mut command = Command::new(ecapture_bin());
        Capture::start_in(command.args(args), scratch_dir(), stdout_path)
    }

    /// Starts `ecapture ARGS` inside network namespace `netns` (`ip netns
    /// exec` becomes ecapture, so signals reach it).
    pub fn start_in_netns(netns: &str, args: &[&str]) -> Capture {
        let dir = scratch_dir();
        let stdout_path = dir.path().join("stdout");
        let mut command = Command::new("ip");
        command.args(["netns", "exec", netns]).arg(ecapture_bin()).args(args);
        Capture::start_in(&mut command, dir, stdout_path)
    }

    /// Starts `command` with stdout in `stdout_path` and stderr in `dir`.
    fn start_in(command: &mut Command, dir: tempfile::TempDir, stdout_path: PathBuf) -> Capture {
        let stderr_path = dir.path().join("stderr");
        command
            .stdin(Stdio::null())
            .stdout(File::create(&stdout_path).unwrap())
            .stderr(File::create(&stderr_path).unwrap());
        let mut capture = Capture {
            guard: Guard::spawn("ecapture", command),
            _dir: dir,
            stdout_path,
            stderr_path,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let stderr = read_lossy(&capture.stderr_path);
            if stderr.lines().any(|line| line.contains("ready")) {
                return capture;
            }
            if let Some(status) = capture.guard.child.try_wait().unwrap() {
                panic!("ecapture exited ({status}) before it was ready:\n{stderr}");
            }
            assert!(
                Instant::now() < deadline,
                "ecapture not ready within {READY_TIMEOUT:?}:\n{stderr}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// Whether ecapture holds its stdout file open with O_DIRECT.
    pub fn writes_stdout_directly(&self) -> bool {
        let fds = std::fs::read_dir(format!("/proc/{}/fd", self.pid())).unwrap();
        fds.flatten().any(|fd| {
            let names_stdout = std::fs::read_link(fd.path()).is_ok_and(|target| target == self.stdout_path);
            let info = std::fs::read_to_string(format!(
                "/proc/{}/fdinfo/{}",
                self.pid(),
                fd.file_name().to_string_lossy()
            ))
            .unwrap_or_default();
            let flags = info
                .lines()
                .find_map(|line| line.strip_prefix("flags:"))
                .and_then(|octal| i32::from_str_radix(octal.trim(), 8).ok())
                .unwrap_or(0);
            names_stdout && flags & libc::O_DIRECT != 0
        })
    }

    /// Waits until stdout contains `needle` (events are flushed live).
    pub fn wait_for_output(&self, needle: &str, timeout: Duration) -> bool {
        file_comes_to_hold(&self.stdout_path, needle, timeout)
    }

    /// Waits until the log (stderr) contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        file_comes_to_hold(&self.stderr_path, needle, timeout)
    }

    /// Sends SIGINT and collects the output once ecapture has exited.
    pub fn stop(self) -> CaptureOutput {
        self.stop_with(libc::SIGINT)
    }

    pub fn stop_with(mut self, signal: i32) -> CaptureOutput {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.pid() as i32, signal) };
        let status = self.guard.wait(EXIT_TIMEOUT);
        // A pipe (a FIFO at that path) is the test's to read.
        let is_file = std::fs::metadata(&self.stdout_path).is_ok_and(|metadata| metadata.is_file());
        let raw_stdout = match is_file {
            true => std::fs::read(&self.stdout_path).unwrap_or_default(),
            false => Vec::new(),
        };
        CaptureOutput {
            stdout: String::from_utf8_lossy(&raw_stdout).into_owned(),
            raw_stdout,
            stderr: read_lossy(&self.stderr_path),
            status,
        }
    }
}

/// A test that fails mid-capture still stops ecapture the way a user would,
/// so that it detaches everything; SIGKILL only if it does not exit in time.
impl Drop for Capture {
    fn drop(&mut self) {
        if let Ok(None) = self.guard.child.try_wait() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(self.pid() as i32, libc::SIGINT) };
            let deadline = Instant::now() + EXIT_TIMEOUT;
            while Instant::now() < deadline && matches!(self.guard.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn read_lossy(path: &Path) -> String {
    let mut bytes = Vec::new();
    if let Ok(mut file) = File::open(path) {
        let _ = file.read_to_end(&mut bytes);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Runs ecapture to completion (for inputs it must refuse).
pub fn run_ecapture_with(command: &mut Command) -> CaptureOutput {
    let output = command.stdin(Stdio::null()).output().unwrap();
    CaptureOutput {
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        raw_stdout: output.stdout,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        status: output.status,
    }
}

/// A self-signed certificate for localhost, made once per test binary.
pub fn certificate() -> &'static (PathBuf, PathBuf) {
    static CERT: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    CERT.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e-cert");
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        run_peer(
            "openssl req",
            Command::new("openssl")
                .args([
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=localhost",
                ])
                .args(["-keyout".as_ref(), key.as_os_str(), "-out".as_ref(), cert.as_os_str()]),
        );
        (cert, key)
    })
}

pub fn peer_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers").join(name)
}

/// The Python HTTPS server, listening once this returns.
pub fn start_https_server() -> (Guard, u16) {
    start_python_server("https_server.py")
}

/// A Python server of tests/peers taking PORT CERT KEY, on a fresh port,
/// listening once this returns.
pub fn start_python_server(script: &str) -> (Guard, u16) {
    start_script_server("/usr/bin/python3", script)
}

/// A server script of tests/peers run by `interpreter`, taking PORT CERT
/// KEY, on a fresh port; it prints "listening" once it accepts.
pub fn start_script_server(interpreter: &str, script: &str) -> (Guard, u16) {
    let (cert, key) = certificate();
    let port = free_port();
    let dir = scratch_dir();
    let log = dir.path().join("server.out");
    let mut server = Guard::spawn(
        script,
        Command::new(interpreter)
            .arg(peer_script(script))
            .arg(port.to_string())
            .args([cert, key])
            .stdin(Stdio::null())
            .stdout(File::create(&log).unwrap())
            .stderr(Stdio::null()),
    );
    server.wait_for_output(&log, "listening");
    (server, port)
}

/// Loaded BPF programs on the machine, for checking that nothing is left.
/// The number of BPF programs loaded, once it has held still: the kernel
/// frees the programs of a process that has exited a little later, so a count
/// taken just after another test (or the unit tests) could still change.
pub fn loaded_bpf_programs() -> usize {
    const SETTLED_READS: usize = 3;
    const SETTLE_LIMIT: Duration = Duration::from_secs(5);
    let deadline = Instant::now() + SETTLE_LIMIT;
    let mut last = count_bpf_programs();
    let mut unchanged = 1;
    while unchanged < SETTLED_READS && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        let now = count_bpf_programs();
        unchanged = if now == last { unchanged + 1 } else { 1 };
        last = now;
    }
    last
}

fn count_bpf_programs() -> usize {
    let out = Command::new("bpftool")
        .args(["prog", "list"])
        .output()
        .expect("bpftool runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|line| {
            line.split(':')
                .next()
                .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
        })
        .count()
}

/// Builds tests/peers/tls_client.c with the given compiler arguments, once.
pub fn build_tls_client(name: &str, link_args: &[&str]) -> PathBuf {
    build_c_peer(name, &peer_script("tls_client.c"), link_args)
}

/// Builds the C program `source` as `name` in the test target directory.
pub fn build_c_peer(name: &str, source: &Path, link_args: &[&str]) -> PathBuf {
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    run_peer(
        "cc",
        Command::new("cc")
            .arg("-O1")
            .arg("-o")
            .arg(&out)
            .arg(source)
            .args(link_args),
    );
    out
}

/// Builds a Go program of tests/peers with Debian's golang and `flags`
/// (`-ldflags=-s -w` strips it).
pub fn build_go_peer(name: &str, source: &str, flags: &[&str]) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let out = dir.join(name);
    run_peer(
        "go build",
        Command::new("go")
            .args(["build", "-o"])
            .arg(&out)
            .args(flags)
            .arg(peer_script(source))
            .env("GO111MODULE", "off")
            .env("GOCACHE", dir.join("go-cache"))
            .env("HOME", &dir),
    );
    out
}

/// How tests/peers/go_https_client.go is built: with symbols, stripped, PIE.
pub const GO_CLIENT_BUILDS: [(&str, &[&str]); 3] = [
    ("go_client_syms", &[]),
    ("go_client_strip", &["-ldflags=-s -w"]),
    ("go_client_pie", &["-buildmode=pie"]),
];

/// The Go client built as `GO_CLIENT_BUILDS[index]`, once per test binary
/// (named to fit in a comm).
pub fn go_client(index: usize) -> &'static Path {
    static CLIENTS: [OnceLock<PathBuf>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    CLIENTS[index].get_or_init(|| {
        let (name, flags) = GO_CLIENT_BUILDS[index];
        build_go_peer(name, "go_https_client.go", flags)
    })
}

/// Starts a Go client that GETs `url` once a line arrives on its stdin, over
/// TLS `version` at most ("1.3", "1.2"), with crypto/tls's own key log
/// appended to `keylog`.
pub fn spawn_go_client(binary: &Path, url: &str, version: &str, keylog: &Path) -> (Guard, std::process::ChildStdin) {
    let mut client = Guard::spawn(
        "go client",
        Command::new(binary)
            .arg(url)
            .env("GO_TLS_MAX", version)
            .env("GO_KEYLOG", keylog)
            .stdin(Stdio::piped())
            .stdout(Stdio::null()),
    );
    let stdin = client.child.stdin.take().unwrap();
    (client, stdin)
}

/// Writes `line` to `stdin` after a second and a half, on a thread, and
/// hands `stdin` back: for a program that must be waited for by ecapture
/// before it loads its TLS library.
pub fn send_line_later(
    mut stdin: std::process::ChildStdin,
    line: &'static [u8],
) -> std::thread::JoinHandle<std::process::ChildStdin> {
    use std::io::Write;
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        stdin.write_all(line).unwrap();
        stdin
    })
}

/// Lets a client from `spawn_go_client` make its request, and waits for it
/// to end well.
pub fn run_go_client((mut client, mut stdin): (Guard, std::process::ChildStdin)) {
    use std::io::Write;
    stdin.write_all(b"go\n").unwrap();
    drop(stdin);
    assert!(client.wait(PEER_TIMEOUT).success(), "the Go client failed");
}

/// GnuTLS's own server, answering HTTP with a status page, on a fresh port,
/// listening once this returns.
pub fn start_gnutls_serv() -> (Guard, u16) {
    let (cert, key) = certificate();
    let port = free_port();
    let dir = scratch_dir();
    let log = dir.path().join("gnutls-serv.out");
    let mut server = Guard::spawn(
        "gnutls-serv",
        Command::new("gnutls-serv")
            .args(["--http", "-p", &port.to_string(), "--x509certfile"])
            .arg(cert)
            .arg("--x509keyfile")
            .arg(key)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // Where it says it listens.
            .stderr(File::create(&log).unwrap()),
    );
    server.wait_for_output(&log, "HTTP Server listening on IPv4");
    (server, port)
}

/// GETs `path` from 127.0.0.1:`port` with gnutls-cli, TLS `version` only
/// ("TLS1.3", "TLS1.2"), checks that a 200 came back, and returns what it
/// printed.
pub fn gnutls_cli_get(port: u16, path: &str, version: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\nConnection: close\\r\\n\\r\\n");
    // Stdin stays open a moment: gnutls-cli ends with it. It exits 1 when
    // the server closes without a TLS close_notify, as Python's does: the
    // answer is what counts.
    let printed = run_peer(
        "gnutls-cli",
        Command::new("sh").arg("-c").arg(format!(
            "(printf '{request}'; sleep 1) | gnutls-cli --insecure --priority NORMAL:-VERS-ALL:+VERS-{version} -p {port} 127.0.0.1 2>/dev/null; true"
        )),
    );
    assert!(
        printed.contains("HTTP/1.1 200 OK"),
        "gnutls-cli got no answer:\n{printed}"
    );
    printed
}

/// tests/peers/nss_client.c, built once against Debian's NSS.
pub fn nss_client() -> &'static Path {
    static CLIENT: OnceLock<PathBuf> = OnceLock::new();
    CLIENT.get_or_init(|| {
        let flags = run_peer(
            "pkg-config",
            Command::new("pkg-config").args(["--cflags", "--libs", "nss"]),
        );
        let flags: Vec<&str> = flags.split_whitespace().collect();
        build_c_peer("nss_client", &peer_script("nss_client.c"), &flags)
    })
}

/// Runs nss_client: GETs `path` from 127.0.0.1:`port` through PR_Write and
/// PR_Read (`io` "read") or PR_Send and PR_Recv ("send"), over `version`
/// ("tls1.3", "tls1.2"), after reading and copying `file` through NSPR.
/// Returns the answer, checked to be a 200.
pub fn nss_client_get(port: u16, path: &str, io: &str, version: &str, file: &Path) -> String {
    let answer = run_peer(
        "nss_client",
        Command::new(nss_client())
            .args([&port.to_string(), path, io, version])
            .arg(file)
            .stdin(Stdio::null()),
    );
    // s_server -www says "200 ok".
    assert!(
        answer.starts_with("HTTP/1.") && answer.lines().next().is_some_and(|status| status.contains(" 200 ")),
        "nss_client got no answer:\n{answer}"
    );
    answer
}

/// NSS's own server, selfserv, on a fresh port with a certificate database
/// made once; it answers a GET with the request echoed. Listening once this
/// returns.
pub fn start_selfserv() -> (Guard, u16) {
    static DATABASE: OnceLock<PathBuf> = OnceLock::new();
    let database = DATABASE.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e-nssdb");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let db = format!("sql:{}", dir.display());
        run_peer(
            "certutil",
            Command::new("certutil").args(["-N", "-d", &db, "--empty-password"]),
        );
        let noise = dir.join("noise");
        std::fs::write(&noise, marker("noise")).unwrap();
        run_peer(
            "certutil",
            Command::new("certutil")
                .args([
                    "-S",
                    "-s",
                    "CN=localhost",
                    "-n",
                    "server",
                    "-x",
                    "-t",
                    "CT,,",
                    "-d",
                    &db,
                ])
                .args(["-k", "ec", "-q", "nistp256", "-8", "localhost,127.0.0.1", "-z"])
                .arg(&noise),
        );
        dir
    });
    let port = free_port();
    let server = Guard::spawn(
        "selfserv",
        Command::new("selfserv")
            .args(["-d", &format!("sql:{}", database.display())])
            .args([
                "-n",
                "server",
                "-e",
                "server",
                "-V",
                "tls1.2:tls1.3",
                "-p",
                &port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_until_listening(port, "selfserv");
    (server, port)
}

/// The records (header line and payload) ecapture printed, split apart at
/// each header line.
pub fn records(stdout: &str) -> Vec<&str> {
    let mut starts: Vec<usize> = Vec::new();
    let mut offset = 0;
    for line in stdout.split_inclusive('\n') {
        if is_header_line(line) {
            starts.push(offset);
        }
        offset += line.len();
    }
    starts.push(stdout.len());
    starts.windows(2).map(|w| &stdout[w[0]..w[1]]).collect()
}

/// Whether `line` starts a record: "2026-11-25T14:13:33.292610Z PID:...".
pub fn is_header_line(line: &str) -> bool {
    line.len() > 30 && line.as_bytes()[4] == b'-' && line.as_bytes()[10] == b'T' && line.contains(" PID:")
}

/// The one record whose text contains every needle; fails listing what was seen.
pub fn find_record<'a>(stdout: &'a str, needles: &[&str]) -> &'a str {
    records(stdout)
        .into_iter()
        .find(|record| needles.iter().all(|n| record.contains(n)))
        .unwrap_or_else(|| panic!("no record contains all of {needles:?}; got:\n{}", truncate(stdout)))
}

/// Each line of `text` as JSON, failing at the first that is not.
pub fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line}")))
        .collect()
}

/// The number right after the first `word` in `text`.
pub fn number_after(text: &str, word: &str) -> u64 {
    let at = text.find(word).unwrap_or_else(|| panic!("no {word:?} in:\n{text}")) + word.len();
    let digits: String = text[at..].chars().take_while(char::is_ascii_digit).collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no number after {word:?} in:\n{text}"))
}

pub fn truncate(text: &str) -> &str {
    &text[..text.len().min(6000)]
}

/// tests/peers/tls_client.c linked statically against the system OpenSSL.
pub fn static_openssl_client() -> PathBuf {
    let lib = "/usr/lib/x86_64-linux-gnu";
    build_tls_client(
        "tls_static",
        &[&format!("{lib}/libssl.a"), &format!("{lib}/libcrypto.a"), "-lpthread"],
    )
}

/// Building OpenSSL's libraries takes about 80 s on two CPUs.
const OPENSSL_BUILD_TIMEOUT: Duration = Duration::from_secs(900);

/// tests/peers/tls_client.c linked statically against OpenSSL 3.5, which
/// Debian 12 does not ship: built once, from the sources the openssl-src
/// crate carries, into the test target directory.
pub fn openssl35_client() -> PathBuf {
    static CLIENT: OnceLock<PathBuf> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("openssl-3.5");
            if !dir.join("libssl.a").exists() {
                let _ = std::fs::remove_dir_all(&dir);
                run_peer(
                    "cp",
                    Command::new("cp").arg("-r").arg(openssl_src::source_dir()).arg(&dir),
                );
                let configure = [
                    "no-shared",
                    "no-module",
                    "no-legacy",
                    "no-tests",
                    "no-docs",
                    "no-apps",
                    "no-comp",
                    "no-zlib",
                ];
                run_within(
                    "openssl Configure",
                    Command::new("./Configure").args(configure).current_dir(&dir),
                    OPENSSL_BUILD_TIMEOUT,
                );
                let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
                run_within(
                    "make build_libs",
                    Command::new("make")
                        .arg(format!("-j{jobs}"))
                        .arg("build_libs")
                        .current_dir(&dir),
                    OPENSSL_BUILD_TIMEOUT,
                );
            }
            let lib = |name: &str| dir.join(name).to_str().unwrap().to_string();
            build_tls_client(
                "tls_openssl35",
                &[
                    &format!("-I{}", lib("include")),
                    &lib("libssl.a"),
                    &lib("libcrypto.a"),
                    "-lpthread",
                ],
            )
        })
        .clone()
}

/// Android's BoringSSL as Debian ships it.
pub const BORINGSSL_LIBSSL: &str = "/usr/lib/x86_64-linux-gnu/android/libssl.so.0";

/// tests/peers/tls_client.c linked against BoringSSL.
pub fn boringssl_client() -> PathBuf {
    let dir = Path::new(BORINGSSL_LIBSSL).parent().unwrap().display().to_string();
    build_tls_client(
        "tls_boringssl",
        &[
            "-I/usr/include/android",
            &format!("-Wl,-rpath,{dir}"),
            BORINGSSL_LIBSSL,
            &format!("{dir}/libcrypto.so.0"),
        ],
    )
}

/// Sends a GET for `path` with a tls_client build and checks the reply;
/// `options` go after the request (["1.2"] caps the protocol at TLS 1.2).
pub fn tls_client_get(binary: &Path, port: u16, path: &str, options: &[&str]) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let reply = run_peer(
        "tls_client",
        Command::new(binary)
            .args(["127.0.0.1", &port.to_string(), &request])
            .args(options),
    );
    assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
}

/// `openssl s_server` on a fresh port with our certificate, its stdin piped
/// (it sends what arrives there, and stops at its end). Returns once it listens.
pub fn spawn_s_server(options: &[&str]) -> (Guard, u16) {
    let (cert, key) = certificate();
    let port = free_port();
    let server = Guard::spawn(
        "openssl s_server",
        Command::new("openssl")
            .arg("s_server")
            .args(options)
            .args(["-accept", &port.to_string()])
            .arg("-cert")
            .arg(cert)
            .arg("-key")
            .arg(key)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_until_listening(port, "s_server");
    (server, port)
}

/// Waits until something listens on 127.0.0.1:`port`, watching the socket
/// table: probing with a connection would use up a server's -naccept.
pub fn wait_until_listening(port: u16, what: &str) {
    let listening = |port: u16| {
        let port_hex = format!(":{port:04X} ");
        ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|table| {
            std::fs::read_to_string(table).unwrap_or_default().lines().any(|l| {
                let fields: Vec<&str> = l.split_whitespace().collect();
                fields
                    .get(1)
                    .is_some_and(|local| format!("{local} ").ends_with(&port_hex))
                    && fields.get(3) == Some(&"0A")
            })
        })
    };
    let deadline = Instant::now() + PEER_TIMEOUT;
    while !listening(port) {
        assert!(Instant::now() < deadline, "{what} did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Lines a child prints, read on a thread so that every wait is bounded.
pub struct Lines(std::sync::mpsc::Receiver<String>);

impl Lines {
    pub fn of(output: impl Read + Send + 'static) -> Lines {
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            std::io::BufRead::lines(std::io::BufReader::new(output))
                .map_while(Result::ok)
                .try_for_each(|line| sender.send(line))
        });
        Lines(receiver)
    }

    /// Every line until the output ends, within PEER_TIMEOUT.
    pub fn rest(&self) -> Vec<String> {
        let deadline = std::time::Instant::now() + PEER_TIMEOUT;
        let mut lines = Vec::new();
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.0.recv_timeout(left) {
                Ok(line) => lines.push(line),
                Err(_) => break,
            }
        }
        lines
    }

    pub fn next(&self) -> String {
        self.0
            .recv_timeout(PEER_TIMEOUT)
            .expect("the peer printed a line in time")
    }
}

/// `openssl s_client` connected to `port`, stdin and stdout piped; it ends
/// when its stdin does.
pub fn spawn_s_client(port: u16) -> Guard {
    Guard::spawn(
        "openssl s_client",
        Command::new("openssl")
            .args([
                "s_client",
                "-quiet",
                "-no_ign_eof",
                "-connect",
                &format!("127.0.0.1:{port}"),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    )
}

/// An HTTP message as printed, its parts joined: the first record with
/// every needle, then the records of the same process, fd and direction
/// that continue it ("(part N)"), up to the one that ends it, each without
/// its header line.
pub fn joined_message(stdout: &str, needles: &[&str]) -> String {
    let all = records(stdout);
    let first = all
        .iter()
        .position(|record| needles.iter().all(|n| record.contains(n)))
        .unwrap_or_else(|| panic!("no record contains all of {needles:?}; got:\n{}", truncate(stdout)));
    let header = |record: &str| record.lines().next().unwrap_or_default().to_string();
    // PID, FD and Sent/Received name the stream.
    let stream = |record: &str| {
        let words: Vec<String> = header(record).split_whitespace().map(String::from).collect();
        [1, 5, 6].map(|i| words.get(i).cloned().unwrap_or_default())
    };
    let mut joined = all[first].to_string();
    if !header(all[first]).contains("(part 1)") {
        return joined;
    }
    for record in &all[first + 1..] {
        if stream(record) != stream(all[first]) || !header(record).contains("(part ") {
            continue;
        }
        joined.push_str(record.split_once('\n').map_or("", |(_, body)| body));
        if header(record).contains(", end)") {
            break;
        }
    }
    joined
}

/// `ecapture ARGS | READER`: the reader's stdout and ecapture's stderr go
/// to files. Both are stopped when dropped.
pub struct PipedCapture {
    pub ecapture: Guard,
    pub reader: Guard,
    pub stderr_path: PathBuf,
    pub reader_output: PathBuf,
    _dir: tempfile::TempDir,
}

impl PipedCapture {
    /// Starts both and waits for ecapture's ready line.
    pub fn start(args: &[&str], reader: &mut Command) -> PipedCapture {
        let dir = scratch_dir();
        let stderr_path = dir.path().join("stderr");
        let reader_output = dir.path().join("reader");
        let mut ecapture = Guard::spawn(
            "ecapture",
            Command::new(ecapture_bin())
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(File::create(&stderr_path).unwrap()),
        );
        let pipe = ecapture.child.stdout.take().expect("piped stdout");
        let reader = Guard::spawn(
            "reader",
            reader
                .stdin(Stdio::from(pipe))
                .stdout(File::create(&reader_output).unwrap()),
        );
        let deadline = Instant::now() + READY_TIMEOUT;
        while !read_lossy(&stderr_path).contains("ready") {
            assert!(
                ecapture.child.try_wait().unwrap().is_none(),
                "ecapture exited before it was ready:\n{}",
                read_lossy(&stderr_path)
            );
            assert!(Instant::now() < deadline, "ecapture not ready");
            std::thread::sleep(Duration::from_millis(20));
        }
        PipedCapture {
            ecapture,
            reader,
            stderr_path,
            reader_output,
            _dir: dir,
        }
    }

    /// Runs `traffic` until ecapture ends by itself, within PEER_TIMEOUT;
    /// returns its exit status and stderr.
    pub fn run_until_exit(&mut self, mut traffic: impl FnMut()) -> (ExitStatus, String) {
        let deadline = Instant::now() + PEER_TIMEOUT;
        loop {
            if let Some(status) = self.ecapture.child.try_wait().unwrap() {
                return (status, read_lossy(&self.stderr_path));
            }
            assert!(
                Instant::now() < deadline,
                "ecapture did not stop after its reader went away:\n{}",
                read_lossy(&self.stderr_path)
            );
            traffic();
        }
    }
}
