//! The command line, with eCapture's flag names, and the validated settings
//! derived from it. Each flag is defined once here; `--help` comes from it.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Args, Parser, Subcommand};

use crate::probe::BtfMode;
use crate::sink::remote::Destination;

fn parse_destination(text: &str) -> Result<Destination, String> {
    Destination::parse(text).map_err(|err| err.to_string())
}

#[derive(Debug, Parser)]
#[command(
    name = "ecapture",
    version,
    about = "Capture SSL/TLS plaintext with eBPF: no CA certificate, no change to the program",
    after_help = "Run `ecapture MODULE --help` for a module's flags. Needs root (CAP_BPF+CAP_PERFMON or CAP_SYS_ADMIN)."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub module: ModuleCommand,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Only capture this process (thread group id), not the processes it starts (ecapture names those that map the same library); 0 captures every process.
    #[arg(short = 'p', long, global = true, default_value_t = 0)]
    pub pid: u32,
    /// Only capture processes running as this user id.
    #[arg(short = 'u', long, global = true)]
    pub uid: Option<u32>,
    /// BTF mode: 0 = auto (CO-RE when /sys/kernel/btf/vmlinux exists), 1 = CO-RE, 2 = non-CO-RE.
    #[arg(short = 'b', long, global = true, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub btf: u8,
    /// Print payloads as hexdumps, even when they are printable.
    #[arg(long, global = true)]
    pub hex: bool,
    /// Print each record as one JSON object per line (fields in the README), then the summary.
    #[arg(long, global = true)]
    pub json: bool,
    /// Show at most this many bytes of each payload in text mode; 0 shows all.
    #[arg(short = 't', long, global = true, default_value_t = 0)]
    pub tsize: usize,
    /// Also send logs, and events unless --eventaddr is given, to a file, tcp://HOST:PORT or ws://HOST:PORT/PATH.
    #[arg(short = 'l', long, global = true, value_name = "ADDR", value_parser = parse_destination)]
    pub logaddr: Option<Destination>,
    /// Also send events to a file, tcp://HOST:PORT or ws://HOST:PORT/PATH (as text, or JSON lines with --json).
    #[arg(long, global = true, value_name = "ADDR", value_parser = parse_destination)]
    pub eventaddr: Option<Destination>,
    /// Serve logs and events to eCaptureQ clients: a WebSocket server streaming eCapture's LogEntry Protobuf messages.
    #[arg(long, global = true, value_name = "ws://HOST:PORT/")]
    pub ecaptureq: Option<String>,
    /// Ring buffer size in KiB per CPU [default: 4096, and at least 16 MiB in all].
    #[arg(long, global = true, value_name = "KIB")]
    pub mapsize: Option<u32>,
    /// Log debug details (hook placement, discovery decisions).
    #[arg(short = 'd', long, global = true)]
    pub debug: bool,
}

#[derive(Debug, Subcommand)]
pub enum ModuleCommand {
    /// OpenSSL and BoringSSL: libssl.so.*, or programs linking them statically.
    #[command(visible_alias = "openssl")]
    Tls(TlsArgs),
    /// GnuTLS: libgnutls.so.30 (wget, git's libcurl-gnutls, apt, Emacs); text, keylog, pcap.
    #[command(visible_alias = "gnu")]
    Gnutls(GnutlsArgs),
    /// NSS: libssl3.so over NSPR (Firefox, Thunderbird, NSS's tools); text, keylog, pcap.
    #[command(visible_alias = "nspr")]
    Nss(NssArgs),
    /// Go's crypto/tls, in Go programs (stripped or not); text, keylog, pcap.
    #[command(visible_alias = "tlsgo")]
    Gotls(GotlsArgs),
    /// Every command typed in interactive bash shells, with its exit status.
    Bash(BashArgs),
    /// Every command typed in interactive zsh shells, with its exit status.
    Zsh(ZshArgs),
    /// Every command MariaDB or MySQL servers run: queries whole, with their errors and durations.
    Mysqld(MysqldArgs),
    /// Every query PostgreSQL backends run, simple or extended (parse/bind/execute), with errors and durations.
    Postgres(PostgresArgs),
}

#[derive(Debug, Args)]
pub struct PostgresArgs {
    /// The server to hook (default: the newest /usr/lib/postgresql/*/bin/postgres).
    #[arg(short = 'm', long, value_name = "PATH")]
    pub postgres: Option<PathBuf>,
    /// Accepted for eCapture's sake: ecapture reads the protocol messages instead of one function.
    #[arg(short = 'f', long, value_name = "NAME")]
    pub funcname: Option<String>,
}

#[derive(Debug, Args)]
pub struct MysqldArgs {
    /// The server to hook (default: /usr/sbin/mariadbd, else mysqld on the path).
    #[arg(short = 'm', long, value_name = "PATH")]
    pub mysqld: Option<PathBuf>,
    /// The address of the function to hook instead of dispatch_command (hex with 0x, or decimal).
    #[arg(long, value_name = "ADDR", value_parser = parse_address)]
    pub offset: Option<u64>,
    /// The function to hook instead of dispatch_command (its symbol, as the binary names it).
    #[arg(short = 'f', long, value_name = "NAME")]
    pub funcname: Option<String>,
}

fn parse_address(text: &str) -> Result<u64, String> {
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|_| format!("{text:?} is not an address; write it as 0x1234 or 4660"))
}

#[derive(Debug, Args)]
pub struct BashArgs {
    /// The bash to hook (default: $SHELL when it is bash, else /bin/bash).
    #[arg(long, value_name = "PATH")]
    pub bash: Option<PathBuf>,
    /// The libreadline bash reads lines with (default: bash's own, else the one it links).
    #[arg(long, value_name = "PATH")]
    pub readlineso: Option<PathBuf>,
    #[command(flatten)]
    pub status: StatusArgs,
}

#[derive(Debug, Args)]
pub struct ZshArgs {
    /// The zsh to hook (default: $SHELL when it is zsh, else /bin/zsh).
    #[arg(long, value_name = "PATH")]
    pub zsh: Option<PathBuf>,
    #[command(flatten)]
    pub status: StatusArgs,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Only show commands that exited with this status; 128 shows all.
    #[arg(short = 'e', long, default_value_t = ALL_STATUSES, value_name = "N")]
    pub errnumber: i32,
}

/// eCapture's `-e` value for "every command".
const ALL_STATUSES: i32 = 128;

#[derive(Debug, Args)]
pub struct TlsArgs {
    /// The libssl to hook, or a program with OpenSSL or BoringSSL linked in.
    #[arg(long, value_name = "PATH")]
    pub libssl: Option<PathBuf>,
    #[command(flatten)]
    pub capture: CaptureArgs,
}

#[derive(Debug, Args)]
pub struct GnutlsArgs {
    /// The libgnutls to hook (default: every libgnutls.so on the system, or the one --pid maps).
    #[arg(long, value_name = "PATH")]
    pub gnutls: Option<PathBuf>,
    #[command(flatten)]
    pub capture: CaptureArgs,
}

#[derive(Debug, Args)]
pub struct NssArgs {
    /// NSPR's libnspr4 (NSS's libssl3 beside it is hooked), or libssl3 itself
    /// (default: every libssl3.so on the system, or the one --pid maps).
    #[arg(long, value_name = "PATH")]
    pub nspr: Option<PathBuf>,
    #[command(flatten)]
    pub capture: CaptureArgs,
}

#[derive(Debug, Args)]
pub struct GotlsArgs {
    /// The Go program to hook (default: every running Go program built with
    /// crypto/tls, and those started later; or the one --pid runs).
    #[arg(short = 'e', long, value_name = "PATH")]
    pub elfpath: Option<PathBuf>,
    #[command(flatten)]
    pub capture: CaptureArgs,
}

/// The flags every TLS module takes.
#[derive(Debug, Args)]
pub struct CaptureArgs {
    /// Capture mode: text, keylog (or key), pcap (or pcapng).
    #[arg(short = 'm', long, default_value = "text")]
    pub model: String,
    /// Key log file: keylog mode writes it (default ecapture_MODULE_key.log, such as ecapture_openssl_key.log); pcap mode also writes it when given.
    #[arg(short = 'k', long, value_name = "FILE")]
    pub keylogfile: Option<PathBuf>,
    /// pcapng file for pcap mode (default save.pcapng; ecapture_gotls.pcapng for gotls); "-" streams it to stdout.
    #[arg(short = 'w', long, value_name = "FILE")]
    pub pcapfile: Option<PathBuf>,
    /// Network interface for pcap mode (default: the one on the default route).
    #[arg(short = 'i', long, value_name = "IFACE")]
    pub ifname: Option<String>,
    /// Override the detected library version, such as "openssl 3.0.13" or "boringssl".
    #[arg(long = "ssl_version", alias = "ssl-version", value_name = "VERSION")]
    pub ssl_version: Option<String>,
    /// cgroup v2 path for cgroup-scoped capture.
    #[arg(
        long = "cgroup_path",
        alias = "cgroup-path",
        default_value = "/sys/fs/cgroup",
        value_name = "PATH"
    )]
    pub cgroup_path: PathBuf,
    /// pcap filter expression for pcap mode, in tcpdump syntax.
    #[arg(trailing_var_arg = true, value_name = "FILTER")]
    pub filter: Vec<String>,
}

/// What the user asked the TLS module to produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Text,
    Keylog,
    Pcap,
}

impl Mode {
    pub fn parse(model: &str) -> Result<Mode> {
        match model {
            "text" => Ok(Mode::Text),
            "keylog" | "key" => Ok(Mode::Keylog),
            "pcap" | "pcapng" => Ok(Mode::Pcap),
            other => bail!("unknown mode {other:?} for -m/--model; choose text, keylog (key) or pcap (pcapng)"),
        }
    }
}

/// Which module captures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleKind {
    Tls,
    GnuTls,
    Nss,
    GoTls,
    Bash,
    Zsh,
    Mysqld,
    Postgres,
}

impl ModuleKind {
    /// The module's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            ModuleKind::Tls => "tls",
            ModuleKind::GnuTls => "gnutls",
            ModuleKind::Nss => "nss",
            ModuleKind::GoTls => "gotls",
            ModuleKind::Bash => "bash",
            ModuleKind::Zsh => "zsh",
            ModuleKind::Mysqld => "mysqld",
            ModuleKind::Postgres => "postgres",
        }
    }
}

/// Validated settings for one capture.
#[derive(Debug, Clone)]
pub struct Config {
    pub module: ModuleKind,
    pub pid: Option<u32>,
    pub uid: Option<u32>,
    pub btf: BtfMode,
    pub hex: bool,
    pub json: bool,
    pub truncate: Option<usize>,
    /// Where logs go besides stderr (and events, without `event_destination`).
    pub log_destination: Option<Destination>,
    /// Where events go besides stdout.
    pub event_destination: Option<Destination>,
    /// The eCaptureQ server's address, when one is served.
    pub ecaptureq: Option<String>,
    pub ring_buffer_bytes: u32,
    pub debug: bool,
    /// The library (or program) to hook, when named.
    pub library: Option<PathBuf>,
    pub mode: Mode,
    /// Where key log lines go, if anywhere.
    pub keylog_file: Option<PathBuf>,
    pub pcap_file: PathBuf,
    pub interface: Option<String>,
    /// pcap-filter expression for the packets of pcap mode.
    pub filter: Option<String>,
    /// A version that overrides what is read from the library.
    pub ssl_version: Option<String>,
    /// bash's libreadline, when named.
    pub readline: Option<PathBuf>,
    /// `-e N` of the shell modules: only commands that exited with N.
    pub shell_status: Option<i32>,
    /// The address (`--offset`) or name (`--funcname`) of the function a
    /// database module hooks, instead of the one it finds.
    pub offset: Option<u64>,
    pub function: Option<String>,
}

impl Cli {
    pub fn into_config(self) -> Result<Config> {
        let global = self.global;
        let mut readline = None;
        let mut shell_status = None;
        let mut offset = None;
        let mut function = None;
        let (module, capture, library, keylog_name) = match self.module {
            ModuleCommand::Tls(args) => (
                ModuleKind::Tls,
                Some(args.capture),
                args.libssl,
                "ecapture_openssl_key.log",
            ),
            ModuleCommand::Gnutls(args) => (
                ModuleKind::GnuTls,
                Some(args.capture),
                args.gnutls,
                "ecapture_gnutls_key.log",
            ),
            ModuleCommand::Nss(args) => (ModuleKind::Nss, Some(args.capture), args.nspr, "ecapture_nss_key.log"),
            ModuleCommand::Gotls(args) => (
                ModuleKind::GoTls,
                Some(args.capture),
                args.elfpath,
                "ecapture_gotls_key.log",
            ),
            ModuleCommand::Bash(args) => {
                readline = args.readlineso;
                shell_status = args.status.only();
                (ModuleKind::Bash, None, args.bash, "")
            }
            ModuleCommand::Zsh(args) => {
                shell_status = args.status.only();
                (ModuleKind::Zsh, None, args.zsh, "")
            }
            ModuleCommand::Mysqld(args) => {
                offset = args.offset;
                function = args.funcname;
                (ModuleKind::Mysqld, None, args.mysqld, "")
            }
            ModuleCommand::Postgres(args) => {
                function = args.funcname;
                (ModuleKind::Postgres, None, args.postgres, "")
            }
        };
        let (mode, keylog_file, pcap_file, interface, filter, ssl_version) = match capture {
            Some(capture) => {
                let mode = Mode::parse(&capture.model)?;
                if mode != Mode::Pcap && !capture.filter.is_empty() {
                    bail!(
                        "a pcap filter expression ({}) only applies to -m pcap",
                        capture.filter.join(" ")
                    );
                }
                (
                    mode,
                    match mode {
                        Mode::Keylog => Some(capture.keylogfile.unwrap_or_else(|| PathBuf::from(keylog_name))),
                        _ => capture.keylogfile,
                    },
                    capture.pcapfile.unwrap_or_else(|| {
                        PathBuf::from(match module {
                            ModuleKind::GoTls => "ecapture_gotls.pcapng",
                            _ => "save.pcapng",
                        })
                    }),
                    capture.ifname,
                    (!capture.filter.is_empty()).then(|| capture.filter.join(" ")),
                    capture.ssl_version,
                )
            }
            // Commands and queries are shown as text.
            None => (Mode::Text, None, PathBuf::new(), None, None, None),
        };
        Ok(Config {
            module,
            pid: (global.pid != 0).then_some(global.pid),
            uid: global.uid,
            btf: match global.btf {
                1 => BtfMode::Core,
                2 => BtfMode::NoCore,
                _ => BtfMode::Auto,
            },
            hex: global.hex,
            json: global.json,
            truncate: (global.tsize != 0).then_some(global.tsize),
            log_destination: global.logaddr,
            event_destination: global.eventaddr,
            ecaptureq: global.ecaptureq,
            ring_buffer_bytes: ring_buffer_bytes(global.mapsize)?,
            debug: global.debug,
            library,
            mode,
            keylog_file,
            pcap_file,
            interface,
            filter,
            ssl_version,
            readline,
            shell_status,
            offset,
            function,
        })
    }
}

impl StatusArgs {
    fn only(&self) -> Option<i32> {
        (self.errnumber != ALL_STATUSES).then_some(self.errnumber)
    }
}

/// The ring buffer's size per CPU when --mapsize is not given (eCapture's).
const DEFAULT_KIB_PER_CPU: u32 = 4096;
/// ...and the least it is in all then. One CPU's flow alone can fill the
/// ring, whatever the count of CPUs, while the reader is held off: on the
/// development VM (2 CPUs, 8 MiB), a 2.3 GB/s Go ping-pong lost records
/// whenever the reader's CPU went to a kernel thread (the host's memory
/// reclaim, unpreempted for 4-8 ms) or to the host; with 16 MiB it lost none.
const DEFAULT_LEAST_BYTES: u64 = 16 << 20;
/// The largest ring buffer: the default stops there on machines of over 256 CPUs.
const MOST_BYTES: u64 = 1 << 30;

/// The ring buffer is shared by all CPUs and must be a power of two pages.
/// Counted are the CPUs online, where traced processes run, not the ones
/// ecapture itself may use (it may be pinned to one).
fn ring_buffer_bytes(kib_per_cpu: Option<u32>) -> Result<u32> {
    // SAFETY: sysconf has no memory effects.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as u64;
    let per_cpu = |kib: u32| u64::from(kib.max(64)) * 1024 * cpus;
    let wanted = match kib_per_cpu {
        Some(kib) => per_cpu(kib),
        None => per_cpu(DEFAULT_KIB_PER_CPU).max(DEFAULT_LEAST_BYTES),
    };
    let bytes = wanted.next_power_of_two();
    match kib_per_cpu {
        Some(kib) if bytes > MOST_BYTES => {
            bail!("--mapsize {kib} asks for a ring buffer over 1 GiB; use a smaller value")
        }
        _ => Ok(bytes.min(MOST_BYTES) as u32),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str]) -> Result<Config> {
        Cli::try_parse_from(args)?.into_config()
    }

    #[test]
    fn accepts_ecapture_flag_spellings() {
        let c = config(&[
            "ecapture",
            "tls",
            "-p",
            "42",
            "-u",
            "0",
            "--libssl",
            "/x/libssl.so.3",
            "-b",
            "2",
            "--hex",
        ])
        .unwrap();
        assert_eq!(c.pid, Some(42));
        assert_eq!(c.uid, Some(0));
        assert_eq!(c.btf, BtfMode::NoCore);
        assert!(c.hex);
        let remote = config(&[
            "ecapture",
            "bash",
            "-l",
            "log.txt",
            "--eventaddr",
            "ws://127.0.0.1:9000/e",
        ])
        .unwrap();
        assert_eq!(
            remote.log_destination,
            Some(Destination::File(PathBuf::from("log.txt")))
        );
        assert!(matches!(remote.event_destination, Some(Destination::WebSocket { .. })));
        assert!(config(&["ecapture", "bash", "--eventaddr", "tcp://nohost"]).is_err());
        assert_eq!(c.library.as_deref(), Some(std::path::Path::new("/x/libssl.so.3")));
        let alias = config(&[
            "ecapture",
            "--pid",
            "7",
            "openssl",
            "-m",
            "text",
            "--cgroup_path",
            "/sys/fs/cgroup",
        ])
        .unwrap();
        assert_eq!(alias.pid, Some(7));
    }

    #[test]
    fn each_module_has_its_flag_and_default_files() {
        let go = config(&["ecapture", "tlsgo", "-e", "/srv/agent", "-m", "pcapng"]).unwrap();
        assert_eq!(go.module, ModuleKind::GoTls);
        assert_eq!(go.library.as_deref(), Some(std::path::Path::new("/srv/agent")));
        assert_eq!(go.pcap_file, PathBuf::from("ecapture_gotls.pcapng"));
        let go_keys = config(&["ecapture", "gotls", "--elfpath", "/srv/agent", "-m", "key"]).unwrap();
        assert_eq!(go_keys.keylog_file, Some(PathBuf::from("ecapture_gotls_key.log")));
        let nss = config(&["ecapture", "nspr", "--nspr", "/x/libnspr4.so", "-m", "pcap"]).unwrap();
        assert_eq!(nss.module, ModuleKind::Nss);
        assert_eq!(nss.pcap_file, PathBuf::from("save.pcapng"));
        let gnutls = config(&["ecapture", "gnu", "-m", "keylog"]).unwrap();
        assert_eq!(gnutls.keylog_file, Some(PathBuf::from("ecapture_gnutls_key.log")));
        let bash = config(&[
            "ecapture",
            "bash",
            "--bash",
            "/bin/bash",
            "--readlineso",
            "/x/libreadline.so.8",
        ])
        .unwrap();
        assert_eq!((bash.module, bash.shell_status), (ModuleKind::Bash, None));
        assert_eq!(
            bash.readline.as_deref(),
            Some(std::path::Path::new("/x/libreadline.so.8"))
        );
        let mysqld = config(&[
            "ecapture",
            "mysqld",
            "-m",
            "/x/mariadbd",
            "--offset",
            "0x83a5d0",
            "-f",
            "f",
        ])
        .unwrap();
        assert_eq!(mysqld.library.as_deref(), Some(std::path::Path::new("/x/mariadbd")));
        assert_eq!((mysqld.offset, mysqld.function.as_deref()), (Some(0x83a5d0), Some("f")));
        assert!(config(&["ecapture", "mysqld", "--offset", "12z"]).is_err());
        let zsh = config(&["ecapture", "zsh", "-e", "3"]).unwrap();
        assert_eq!((zsh.module, zsh.shell_status), (ModuleKind::Zsh, Some(3)));
    }

    #[test]
    fn modes_and_their_flags() {
        let keylog = config(&[
            "ecapture",
            "tls",
            "-m",
            "key",
            "-k",
            "/tmp/k.log",
            "--ssl_version",
            "3.0.13",
        ])
        .unwrap();
        assert_eq!(
            (keylog.mode, keylog.ssl_version.as_deref()),
            (Mode::Keylog, Some("3.0.13"))
        );
        let pcap = config(&[
            "ecapture", "tls", "-m", "pcapng", "-w", "x.pcapng", "-i", "lo", "tcp", "port", "443",
        ])
        .unwrap();
        assert_eq!(pcap.filter.as_deref(), Some("tcp port 443"));
        assert_eq!(pcap.keylog_file, None);
        let stray = config(&["ecapture", "tls", "tcp", "port", "443"]).unwrap_err();
        assert!(stray.to_string().contains("only applies to -m pcap"), "{stray}");
        let unknown = config(&["ecapture", "tls", "-m", "bogus"]).unwrap_err();
        assert!(unknown.to_string().contains("unknown mode"), "{unknown}");
    }

    #[test]
    fn ring_buffer_size_is_a_power_of_two() {
        let bytes = ring_buffer_bytes(Some(1000)).unwrap();
        assert!(bytes.is_power_of_two());
        assert!(ring_buffer_bytes(Some(u32::MAX)).is_err());
        // The default has a floor; a size given has none.
        assert!(u64::from(ring_buffer_bytes(None).unwrap()) >= DEFAULT_LEAST_BYTES);
        assert!(u64::from(ring_buffer_bytes(Some(64)).unwrap()) < DEFAULT_LEAST_BYTES);
    }
}
