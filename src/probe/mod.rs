//! Loading the BPF objects built from `bpf/`, attaching them, and reading what
//! they report. Everything past `load` works on the generic libbpf-rs
//! `Object`, so every module shares the attach and ring-buffer code.

use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, anyhow, bail};
use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, Object, OpenObject, UprobeMultiOpts, UprobeOpts};

use crate::modules::openssl::layout::OpensslLayout;
use crate::modules::openssl::socket_bio::SocketBioLayout;

pub mod kernel_filter;
pub mod packets;
mod uprobe_multi;

#[cfg(bpf_core)]
mod openssl_core {
    include!(concat!(env!("OUT_DIR"), "/openssl_core.skel.rs"));
}
#[cfg(bpf_nocore)]
mod openssl_nocore {
    include!(concat!(env!("OUT_DIR"), "/openssl_nocore.skel.rs"));
}

/// The record header, generated from `bpf/include/tls_event.h`; the
/// payload follows it.
#[cfg(bpf_core)]
pub use openssl_core::types::data_event_header as RawDataHeader;
#[cfg(all(bpf_nocore, not(bpf_core)))]
pub use openssl_nocore::types::data_event_header as RawDataHeader;

/// The session secrets record, generated from `bpf/include/tls_keys.h`.
#[cfg(bpf_core)]
pub use openssl_core::types::master_secret_event as RawMasterSecret;
#[cfg(all(bpf_nocore, not(bpf_core)))]
pub use openssl_nocore::types::master_secret_event as RawMasterSecret;

/// A handshake of a TLS library the tls module does not capture.
#[cfg(bpf_core)]
pub use openssl_core::types::foreign_tls_event as RawForeignTls;
#[cfg(all(bpf_nocore, not(bpf_core)))]
pub use openssl_nocore::types::foreign_tls_event as RawForeignTls;

// SAFETY: C structs of integers and byte arrays; any bit pattern is valid.
unsafe impl plain::Plain for RawDataHeader {}
unsafe impl plain::Plain for RawMasterSecret {}
unsafe impl plain::Plain for RawForeignTls {}

pub const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

/// `-b/--btf`: how the BPF objects meet the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BtfMode {
    Auto,
    Core,
    NoCore,
}

/// Which build of a BPF object to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// Reads kernel structs through CO-RE: knows each socket's addresses.
    Core,
    /// Reads no kernel memory: loads without BTF; addresses come from procfs.
    NoCore,
}

impl Flavor {
    pub fn choose(mode: BtfMode) -> Result<Flavor> {
        let wanted = match mode {
            BtfMode::Core => Flavor::Core,
            BtfMode::NoCore => Flavor::NoCore,
            BtfMode::Auto if Path::new(KERNEL_BTF).exists() && cfg!(bpf_core) => Flavor::Core,
            BtfMode::Auto => Flavor::NoCore,
        };
        let built = match wanted {
            Flavor::Core => cfg!(bpf_core),
            Flavor::NoCore => cfg!(bpf_nocore),
        };
        if !built {
            bail!("this ecapture was built without {wanted:?} BPF objects; rebuild with `make` or pass --btf 0");
        }
        if wanted == Flavor::Core && !Path::new(KERNEL_BTF).exists() {
            bail!("--btf 1 needs kernel BTF at {KERNEL_BTF}, which this kernel lacks; use --btf 2");
        }
        Ok(wanted)
    }
}

/// Settings written into a BPF object before it loads.
#[derive(Debug, Clone)]
pub struct ProbeSettings {
    /// Where the library keeps session secrets; None when keys are not read.
    pub key_layout: Option<OpensslLayout>,
    /// Where a socket BIO keeps its fd; None leaves naming sockets to the
    /// syscall tracepoints.
    pub socket_bio: Option<SocketBioLayout>,
    pub target_pid: Option<u32>,
    pub target_uid: Option<u32>,
    pub ring_buffer_bytes: u32,
    pub wakeup_bytes: u64,
}

/// A BPF object of one module, loaded into the kernel. Dropping it detaches
/// every probe and frees every map.
pub struct LoadedProbes {
    skel: Box<dyn Skel<'static>>,
    links: Vec<Link>,
    /// Probes the links hold (a uprobe_multi link holds several).
    probes: usize,
    /// Whether the uprobe programs were loaded for uprobe_multi links.
    multi: bool,
    /// Uprobes to attach together, one uprobe_multi link per group.
    pending: Vec<PendingUprobes>,
}

/// The offsets one program goes on in one binary, as entry or return probes.
struct PendingUprobes {
    program: String,
    binary: PathBuf,
    retprobe: bool,
    pid: i32,
    offsets: Vec<usize>,
}

/// Opens a generated skeleton, lets `$configure` fill its read-only data
/// and map sizes (with the open skeleton bound to `$open`), and loads it.
/// A macro because each skeleton is its own set of types.
macro_rules! load_skeleton {
    ($module:ident :: $builder:ident, |$open:ident| $configure:block) => {{
        // libbpf-rs skeletons borrow their storage; the storage must outlive
        // the loaded object, which lives for the whole capture.
        let storage: &'static mut MaybeUninit<OpenObject> = Box::leak(Box::new(MaybeUninit::uninit()));
        let mut $open = $module::$builder::default().open(storage).map_err(explain_bpf_error)?;
        $configure
        let loaded = $open.load().map_err(explain_bpf_error)?;
        Box::new(loaded) as Box<dyn Skel<'static>>
    }};
}
pub(crate) use load_skeleton;

/// Writes the TLS capture settings into an open openssl skeleton.
macro_rules! configure_openssl {
    ($open:ident, $settings:expr) => {{
        let settings: &ProbeSettings = $settings;
        let rodata = $open
            .maps
            .rodata_data
            .as_deref_mut()
            .ok_or_else(|| anyhow!("BPF object has no .rodata"))?;
        rodata.target_pid = settings.target_pid.unwrap_or(0);
        rodata.target_uid = settings.target_uid.unwrap_or(0);
        rodata.filter_by_uid = settings.target_uid.is_some();
        rodata.wakeup_bytes = settings.wakeup_bytes;
        rodata.have_bpf_loop = kernel_has_bpf_loop();
        if let Some(layout) = &settings.key_layout {
            write_layout_fields!(&mut rodata.layout, layout);
        }
        if let Some(socket_bio) = &settings.socket_bio {
            rodata.ssl_rbio_offset = socket_bio.ssl_rbio;
            rodata.ssl_type_tagged = socket_bio.ssl_type_tagged;
            rodata.bio_method_offset = socket_bio.bio_method;
            rodata.bio_num_offset = socket_bio.bio_num;
        }
        $open.maps.events.set_max_entries(settings.ring_buffer_bytes)?;
        if uprobe_multi::supported() {
            uprobe_multi::prepare($open.open_object_mut());
        }
    }};
}

/// The layout as the BPF side reads it. Every skeleton generates its own copy
/// of `struct openssl_layout`, so this takes the fields one by one.
macro_rules! write_layout_fields {
    ($target:expr, $layout:expr) => {{
        let (target, layout) = ($target, $layout);
        const ABSENT: u32 = u32::MAX;
        let tls13 = layout.tls13.unwrap_or(crate::modules::openssl::layout::Tls13Offsets {
            handshake_secret: 0,
            handshake_traffic_hash: 0,
            client_app_traffic_secret: 0,
            server_app_traffic_secret: 0,
            exporter_master_secret: 0,
        });
        let hs = layout
            .handshake_object
            .unwrap_or(crate::modules::openssl::layout::HandshakeObjectOffsets {
                s3_handshake: ABSENT,
                s3_write_traffic_secret: 0,
                s3_exporter_secret: 0,
                hash_len: 0,
                client_handshake_secret: 0,
                server_handshake_secret: 0,
                client_traffic_secret_0: 0,
                server_traffic_secret_0: 0,
            });
        target.ssl_type = layout.ssl_type.unwrap_or(ABSENT);
        target.version = layout.version;
        target.session = layout.session;
        target.session_in_s3 = u32::from(layout.session_in_s3);
        target.session_version = layout.session_version.unwrap_or(ABSENT);
        target.s3_pointer = layout.s3_pointer.unwrap_or(ABSENT);
        target.client_random = layout.client_random;
        target.session_master_key = layout.session_master_key;
        target.session_cipher = layout.session_cipher;
        target.session_cipher_id = layout.session_cipher_id.unwrap_or(ABSENT);
        target.cipher_id = layout.cipher_id;
        target.s3_handshake = hs.s3_handshake;
        target.s3_write_traffic_secret = hs.s3_write_traffic_secret;
        target.s3_exporter_secret = hs.s3_exporter_secret;
        target.hs_hash_len = hs.hash_len;
        target.hs_client_handshake_secret = hs.client_handshake_secret;
        target.hs_server_handshake_secret = hs.server_handshake_secret;
        target.hs_client_traffic_secret_0 = hs.client_traffic_secret_0;
        target.hs_server_traffic_secret_0 = hs.server_traffic_secret_0;
        target.handshake_secret = tls13.handshake_secret;
        target.handshake_traffic_hash = tls13.handshake_traffic_hash;
        target.client_app_traffic_secret = tls13.client_app_traffic_secret;
        target.server_app_traffic_secret = tls13.server_app_traffic_secret;
        target.exporter_master_secret = tls13.exporter_master_secret;
    }};
}

/// Whether uprobe programs may call bpf_loop (Linux 5.17 and later).
fn kernel_has_bpf_loop() -> bool {
    // SAFETY: libbpf loads a tiny probe program; a null opts is allowed.
    unsafe {
        libbpf_sys::libbpf_probe_bpf_helper(
            libbpf_sys::BPF_PROG_TYPE_KPROBE,
            libbpf_sys::BPF_FUNC_loop,
            std::ptr::null(),
        ) == 1
    }
}

/// Turns libbpf's errno into a line that says what to do.
pub(crate) fn explain_bpf_error(err: libbpf_rs::Error) -> anyhow::Error {
    match err.kind() {
        libbpf_rs::ErrorKind::PermissionDenied => anyhow!(
            "the kernel refused to load BPF programs ({err}); run as root on the host, outside user namespaces, \
             and check kernel.unprivileged_bpf_disabled and lockdown"
        ),
        libbpf_rs::ErrorKind::Unsupported => {
            anyhow!("this kernel cannot run ecapture's BPF programs ({err}); Linux 5.8 or later is needed")
        }
        libbpf_rs::ErrorKind::InvalidInput if crate::preflight::kernel_version() < (5, 8) => {
            anyhow!("this kernel lacks the BPF ring buffer ecapture uses ({err}); Linux 5.8 or later is needed")
        }
        _ => anyhow!("loading BPF programs failed: {err}"),
    }
}

impl LoadedProbes {
    /// Loads the OpenSSL/BoringSSL capture object.
    pub fn load_openssl(flavor: Flavor, settings: &ProbeSettings) -> Result<LoadedProbes> {
        let skel = match flavor {
            #[cfg(bpf_core)]
            Flavor::Core => {
                load_skeleton!(openssl_core::OpensslCoreSkelBuilder, |open| {
                    configure_openssl!(open, settings)
                })
            }
            #[cfg(bpf_nocore)]
            Flavor::NoCore => {
                load_skeleton!(openssl_nocore::OpensslNocoreSkelBuilder, |open| {
                    configure_openssl!(open, settings)
                })
            }
            #[allow(unreachable_patterns)]
            _ => bail!("{flavor:?} BPF objects are not built in"),
        };
        Ok(LoadedProbes {
            skel,
            links: Vec::new(),
            probes: 0,
            multi: uprobe_multi::supported(),
            pending: Vec::new(),
        })
    }

    pub fn object(&self) -> &Object {
        self.skel.object()
    }

    fn program(&self, name: &str) -> Result<libbpf_rs::ProgramMut<'_>> {
        self.object()
            .progs_mut()
            .find(|prog| prog.name() == name)
            .ok_or_else(|| anyhow!("BPF program {name} is missing from the object"))
    }

    /// Attaches `program` at `file_offset` of `binary`, as an entry or return
    /// probe, for one process or all of them. With uprobe_multi links the
    /// probe is attached by `attach_pending_uprobes`, with the others of its
    /// program.
    pub fn attach_uprobe(
        &mut self,
        program: &str,
        binary: &Path,
        file_offset: u64,
        retprobe: bool,
        pid: Option<u32>,
    ) -> Result<()> {
        let pid = pid.map_or(-1, |pid| pid as i32);
        let opts = UprobeOpts {
            retprobe,
            ..Default::default()
        };
        let offset = usize::try_from(file_offset)?;
        if self.multi {
            let same = |group: &&mut PendingUprobes| {
                group.program == program && group.binary == binary && group.retprobe == retprobe && group.pid == pid
            };
            match self.pending.iter_mut().find(same) {
                Some(group) => group.offsets.push(offset),
                None => self.pending.push(PendingUprobes {
                    program: program.to_string(),
                    binary: binary.to_path_buf(),
                    retprobe,
                    pid,
                    offsets: vec![offset],
                }),
            }
            return Ok(());
        }
        let link = self
            .program(program)?
            .attach_uprobe_with_opts(pid, binary, offset, opts)
            .with_context(|| format!("attaching {program} to {}+{file_offset:#x}", binary.display()))?;
        self.links.push(link);
        self.probes += 1;
        Ok(())
    }

    /// Attaches what `attach_uprobe` grouped: one link per program, binary
    /// and kind of probe.
    pub fn attach_pending_uprobes(&mut self) -> Result<()> {
        for group in std::mem::take(&mut self.pending) {
            let opts = UprobeMultiOpts {
                offsets: group.offsets.clone(),
                retprobe: group.retprobe,
                ..Default::default()
            };
            let link = self
                .program(&group.program)?
                .attach_uprobe_multi_with_opts(group.pid, &group.binary, "", opts)
                .with_context(|| {
                    format!(
                        "attaching {} to {} at {:#x?}",
                        group.program,
                        group.binary.display(),
                        group.offsets
                    )
                })?;
            self.links.push(link);
            self.probes += group.offsets.len();
        }
        Ok(())
    }

    /// Attaches `program` where its section name says.
    pub fn attach_program(&mut self, program: &str) -> Result<()> {
        let link = self
            .program(program)?
            .attach()
            .with_context(|| format!("attaching {program}"))?;
        self.links.push(link);
        self.probes += 1;
        Ok(())
    }

    /// Attaches every program named `{prefix}sys_enter_NAME` to the syscall
    /// tracepoint sys_enter_NAME.
    pub fn attach_syscall_tracepoints(&mut self, prefix: &str) -> Result<usize> {
        let names: Vec<(String, String)> = self
            .object()
            .progs()
            .filter_map(|prog| {
                let name = prog.name().to_str()?;
                let tracepoint = name.strip_prefix(prefix).filter(|t| t.starts_with("sys_enter_"))?;
                Some((name.to_string(), tracepoint.to_string()))
            })
            .collect();
        for (name, tracepoint) in &names {
            let link = self
                .program(name)?
                .attach_tracepoint(libbpf_rs::TracepointCategory::Syscalls, tracepoint)
                .with_context(|| format!("attaching {name} to tracepoint syscalls:{tracepoint}"))?;
            self.links.push(link);
            self.probes += 1;
        }
        Ok(names.len())
    }

    pub fn attached(&self) -> usize {
        self.probes
    }

    pub fn map(&self, name: &str) -> Result<libbpf_rs::Map<'_>> {
        map_named(self.object(), name)
    }

    /// Records the kernel could not put in the ring buffer, summed over CPUs.
    pub fn lost(&self) -> Result<Lost> {
        let values = self
            .map("lost_records")?
            .lookup_percpu(&0u32.to_ne_bytes(), MapFlags::ANY)?;
        let word = |bytes: &[u8], at: usize| {
            bytes
                .get(at..at + 8)
                .and_then(|word| word.try_into().ok())
                .map_or(0, u64::from_ne_bytes)
        };
        Ok(values
            .unwrap_or_default()
            .iter()
            .fold(Lost::default(), |sum, cpu| Lost {
                records: sum.records + word(cpu, 0),
                bytes: sum.bytes + word(cpu, 8),
            }))
    }

    /// The word that tells the programs whether the reader sleeps.
    pub fn reader_sleep_flag(&self) -> Result<SharedWord> {
        SharedWord::map(&self.map("reader_asleep")?)
    }

    /// The word the programs set when a session's socket cannot be read
    /// from its BIO, asking for the syscall tracepoints.
    pub fn syscall_sockets_wanted(&self) -> Result<SharedWord> {
        SharedWord::map(&self.map("syscall_sockets_wanted")?)
    }

    /// Detaches every probe now, before the maps go away with the object.
    pub fn detach(&mut self) {
        release_together(std::mem::take(&mut self.links));
    }
}

/// What the kernel could not deliver: records, and their payload bytes
/// (a call whose length could not be read counts a record and no bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lost {
    pub records: u64,
    pub bytes: u64,
}

impl std::ops::Add for Lost {
    type Output = Lost;
    fn add(self, other: Lost) -> Lost {
        Lost {
            records: self.records + other.records,
            bytes: self.bytes + other.bytes,
        }
    }
}

/// A word shared with the BPF programs through an mmapped array map, such as
/// the flag the reader sets before it sleeps in poll() and clears after, so
/// that the programs wake it once per sleep instead of once per record.
pub struct SharedWord {
    word: NonNull<AtomicU32>,
    len: usize,
}

impl SharedWord {
    fn map(map: &libbpf_rs::Map<'_>) -> Result<SharedWord> {
        // SAFETY: sysconf has no memory effects.
        let len = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })?;
        // SAFETY: maps one page of a BPF_F_MMAPABLE array map, whose first
        // value starts the mapping; the mapping is ours until Drop.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.as_fd().as_raw_fd(),
                0,
            )
        };
        if address == libc::MAP_FAILED {
            bail!(
                "mapping {}: {}",
                map.name().to_string_lossy(),
                std::io::Error::last_os_error()
            );
        }
        let word = NonNull::new(address.cast::<AtomicU32>()).ok_or_else(|| anyhow!("mmap returned null"))?;
        Ok(SharedWord { word, len })
    }

    fn atomic(&self) -> &AtomicU32 {
        // SAFETY: the page stays mapped while self lives, and the kernel
        // side only ever loads and stores the aligned word.
        unsafe { self.word.as_ref() }
    }

    pub fn set(&self, on: bool) {
        self.atomic().store(u32::from(on), Ordering::SeqCst);
    }

    pub fn is_set(&self) -> bool {
        self.atomic().load(Ordering::SeqCst) != 0
    }
}

impl Drop for SharedWord {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`.
        unsafe { libc::munmap(self.word.as_ptr().cast(), self.len) };
    }
}

/// The map called `name` in a loaded object.
pub(crate) fn map_named<'o>(object: &'o Object, name: &str) -> Result<libbpf_rs::Map<'o>> {
    object
        .maps()
        .find(|map| map.name() == name)
        .ok_or_else(|| anyhow!("BPF map {name} is missing from the object"))
}

/// The program called `name` in a loaded object.
pub(crate) fn program_named<'o>(object: &'o Object, name: &str) -> Result<libbpf_rs::Program<'o>> {
    object
        .progs()
        .find(|prog| prog.name() == name)
        .ok_or_else(|| anyhow!("BPF program {name} is missing from the object"))
}

/// Releasing a uprobe or tracepoint link waits for the kernel's RCU grace
/// periods, 60-120 ms each on the development VM: one after the other, a
/// dozen probes took over a second to go. Released from one thread each,
/// they wait for the same grace periods together.
pub(crate) fn release_together(links: Vec<libbpf_rs::Link>) {
    std::thread::scope(|scope| {
        for link in links {
            scope.spawn(move || drop(link));
        }
    });
}

/// The kernel's tracepoint ids live in tracefs; mount it where it is missing.
pub fn ensure_tracefs() -> Result<()> {
    let candidates = [
        PathBuf::from("/sys/kernel/tracing"),
        PathBuf::from("/sys/kernel/debug/tracing"),
    ];
    if candidates.iter().any(|dir| dir.join("events").is_dir()) {
        return Ok(());
    }
    let target = c"/sys/kernel/tracing";
    // SAFETY: plain mount(2) with NUL-terminated strings and no data.
    let rc = unsafe {
        libc::mount(
            c"tracefs".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        bail!(
            "tracefs is not mounted and mounting it failed ({}); run `mount -t tracefs tracefs /sys/kernel/tracing`",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}
