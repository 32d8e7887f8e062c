//! Loading the BPF objects built from `bpf/`, attaching them, and reading what
//! they report. Everything past `load` works on the generic libbpf-rs
//! `Object`, so every module shares the attach and ring-buffer code.

use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, anyhow, bail};
use libbpf_rs::skel::Skel;
use libbpf_rs::{Link, MapCore, MapFlags, Object, OpenObject, UprobeMultiOpts, UprobeOpts};

pub mod kernel_filter;
#[cfg(test)]
mod legacy_objects;
pub mod packets;
pub mod readiness;
mod uprobe_multi;

/// The C types every module shares (`bpf/shared_types.bpf.c`). Generated
/// for an object without programs, whose empty loops clippy flags.
#[allow(clippy::never_loop, clippy::match_single_binding)]
mod shared_types {
    include!(concat!(env!("OUT_DIR"), "/shared_types.skel.rs"));
}

/// What every capture object is told before its programs run.
use shared_types::types::capture_settings as RawCaptureSettings;
/// The record header, generated from `bpf/include/tls_event.h`; the
/// payload follows it.
pub use shared_types::types::data_event_header as RawDataHeader;
/// A handshake of a TLS library the module does not capture.
pub use shared_types::types::foreign_tls_event as RawForeignTls;
/// A secret as a library hands it to its key log hook.
pub use shared_types::types::keylog_line_event as RawKeylogLine;
/// The session secrets record, generated from `bpf/include/tls_keys.h`.
pub use shared_types::types::master_secret_event as RawMasterSecret;
/// A piece of a database command, its error or its end, from `bpf/include/query_event.h`.
pub use shared_types::types::query_event as RawQueryEvent;
/// A line a shell read, or the end of a command, from `bpf/include/shell_event.h`.
pub use shared_types::types::shell_event as RawShellEvent;
/// Where a shell keeps its last exit status, relative to the probe that reads it.
pub use shared_types::types::shell_settings as RawShellSettings;

// SAFETY: C structs of integers and byte arrays; any bit pattern is valid.
unsafe impl plain::Plain for RawDataHeader {}
unsafe impl plain::Plain for RawMasterSecret {}
unsafe impl plain::Plain for RawForeignTls {}
unsafe impl plain::Plain for RawCaptureSettings {}
unsafe impl plain::Plain for RawKeylogLine {}
unsafe impl plain::Plain for RawShellEvent {}
unsafe impl plain::Plain for RawQueryEvent {}
unsafe impl plain::Plain for RawShellSettings {}

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

/// Which build of the programs suits the kernel (see
/// `bpf/include/kernel_compat.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generation {
    /// Ring buffers (Linux 5.8), bpf_loop callbacks (5.13), read-only settings.
    Current,
    /// Perf event arrays, unrolled loops, settings in maps: Linux 4.18 and later.
    Legacy,
}

/// Set (to anything but 0) to load the legacy programs on any kernel, so that
/// the tests run them here too.
pub const FORCE_LEGACY_ENV: &str = "ECAPTURE_LEGACY_BPF";

impl Generation {
    /// The generation for this kernel, probed once: the modules choose
    /// their hooks by it before the capture loads its objects.
    pub fn choose() -> Generation {
        static CHOSEN: OnceLock<Generation> = OnceLock::new();
        *CHOSEN.get_or_init(Generation::probe)
    }

    fn probe() -> Generation {
        if std::env::var_os(FORCE_LEGACY_ENV).is_some_and(|value| !value.is_empty() && value != "0") {
            return Generation::Legacy;
        }
        // SAFETY: libbpf loads tiny probe objects; null opts are allowed.
        let (ring_buffers, callbacks) = unsafe {
            (
                libbpf_sys::libbpf_probe_bpf_map_type(libbpf_sys::BPF_MAP_TYPE_RINGBUF, std::ptr::null()) == 1,
                libbpf_sys::libbpf_probe_bpf_helper(
                    libbpf_sys::BPF_PROG_TYPE_KPROBE,
                    libbpf_sys::BPF_FUNC_for_each_map_elem,
                    std::ptr::null(),
                ) == 1,
            )
        };
        if ring_buffers && callbacks {
            Generation::Current
        } else {
            Generation::Legacy
        }
    }
}

/// Settings written into a BPF object before its programs run.
#[derive(Debug, Clone)]
pub struct ProbeSettings {
    pub generation: Generation,
    pub target_pid: Option<u32>,
    pub target_uid: Option<u32>,
    pub ring_buffer_bytes: u32,
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
    generation: Generation,
}

/// The offsets one program goes on in one binary, as entry or return probes.
struct PendingUprobes {
    program: String,
    binary: PathBuf,
    retprobe: bool,
    pid: i32,
    offsets: Vec<usize>,
    cookies: Vec<u64>,
}

/// Opens a generated skeleton, lets `$configure` fill its read-only data
/// and map sizes (with the open skeleton bound to `$open`), and loads it.
/// A macro because each skeleton is its own set of types.
macro_rules! load_skeleton {
    ($module:ident :: $builder:ident, |$open:ident| $configure:block) => {{
        // libbpf-rs skeletons borrow their storage; the storage must outlive
        // the loaded object, which lives for the whole capture.
        let storage: &'static mut std::mem::MaybeUninit<libbpf_rs::OpenObject> =
            Box::leak(Box::new(std::mem::MaybeUninit::uninit()));
        // Legacy objects are configured after load, through their maps.
        #[allow(unused_mut)]
        let mut $open = $module::$builder::default()
            .open(storage)
            .map_err($crate::probe::explain_bpf_error)?;
        $configure
        let loaded = $open.load().map_err($crate::probe::explain_bpf_error)?;
        Box::new(loaded) as Box<dyn libbpf_rs::skel::Skel<'static>>
    }};
}
pub(crate) use load_skeleton;

/// Includes the four builds of the BPF object `bpf/$name.bpf.c` (CO-RE or
/// not, for current kernels or legacy ones) as the modules `skel_core`,
/// `skel_nocore`, `skel_core_legacy` and `skel_nocore_legacy`.
macro_rules! include_skeletons {
    ($name:literal) => {
        #[cfg(bpf_core)]
        mod skel_core {
            include!(concat!(env!("OUT_DIR"), "/", $name, "_core.skel.rs"));
        }
        #[cfg(bpf_nocore)]
        mod skel_nocore {
            include!(concat!(env!("OUT_DIR"), "/", $name, "_nocore.skel.rs"));
        }
        #[cfg(bpf_core)]
        mod skel_core_legacy {
            include!(concat!(env!("OUT_DIR"), "/", $name, "_core_legacy.skel.rs"));
        }
        #[cfg(bpf_nocore)]
        mod skel_nocore_legacy {
            include!(concat!(env!("OUT_DIR"), "/", $name, "_nocore_legacy.skel.rs"));
        }
    };
}
pub(crate) use include_skeletons;

/// Loads the build of an object (modules from `include_skeletons!`, with
/// their builders) that suits `$flavor` and `$generation`. `$configure`
/// fills a current build's read-only data; legacy builds are configured
/// after load, through their maps.
macro_rules! load_build {
    ($flavor:expr, $generation:expr, [$core:ident, $nocore:ident, $core_legacy:ident, $nocore_legacy:ident],
     |$open:ident| $configure:block) => {
        match ($flavor, $generation) {
            #[cfg(bpf_core)]
            ($crate::probe::Flavor::Core, $crate::probe::Generation::Current) => {
                $crate::probe::load_skeleton!(skel_core::$core, |$open| $configure)
            }
            #[cfg(bpf_nocore)]
            ($crate::probe::Flavor::NoCore, $crate::probe::Generation::Current) => {
                $crate::probe::load_skeleton!(skel_nocore::$nocore, |$open| $configure)
            }
            #[cfg(bpf_core)]
            ($crate::probe::Flavor::Core, $crate::probe::Generation::Legacy) => {
                $crate::probe::load_skeleton!(skel_core_legacy::$core_legacy, |$open| {})
            }
            #[cfg(bpf_nocore)]
            ($crate::probe::Flavor::NoCore, $crate::probe::Generation::Legacy) => {
                $crate::probe::load_skeleton!(skel_nocore_legacy::$nocore_legacy, |$open| {})
            }
            #[allow(unreachable_patterns)]
            (flavor, _) => anyhow::bail!("{flavor:?} BPF objects are not built in"),
        }
    };
}
pub(crate) use load_build;

/// Writes the capture settings into an open current-kernel TLS skeleton,
/// whose read-only data holds them (legacy objects get them in
/// `LoadedProbes::new`).
macro_rules! configure_capture {
    ($open:ident, $settings:expr) => {{
        let settings: &$crate::probe::ProbeSettings = $settings;
        let rodata = $open
            .maps
            .rodata_data
            .as_deref_mut()
            .ok_or_else(|| anyhow::anyhow!("BPF object has no .rodata"))?;
        $crate::probe::copy_c_struct(&settings.raw_capture_settings(), &mut rodata.capture_settings);
        $open.maps.events.set_max_entries(settings.ring_buffer_bytes)?;
        $crate::probe::prepare_uprobes($open.open_object_mut());
    }};
}
pub(crate) use configure_capture;

/// Loads a TLS module's object with its own settings: each `name` is a C
/// struct the object declares with DECLARE_SETTINGS, filled from `value`
/// (read-only data in current objects, a settings map in legacy ones).
macro_rules! load_module_object {
    ($flavor:expr, $settings:expr, [$($builder:ident),*], {$($name:ident: $value:expr),* $(,)?}) => {{
        let settings: &$crate::probe::ProbeSettings = $settings;
        let skel = $crate::probe::load_build!($flavor, settings.generation, [$($builder),*], |open| {
            $crate::probe::configure_capture!(open, settings);
            let rodata = open
                .maps
                .rodata_data
                .as_deref_mut()
                .ok_or_else(|| anyhow::anyhow!("BPF object has no .rodata"))?;
            $($crate::probe::copy_c_struct($value, &mut rodata.$name);)*
            // An object may have no settings of its own.
            let _ = rodata;
        });
        let probes = $crate::probe::LoadedProbes::new(skel, settings)?;
        if settings.generation == $crate::probe::Generation::Legacy {
            $($crate::probe::write_settings_map(probes.object(), stringify!($name), $value)?;)*
        }
        Ok(probes)
    }};
}
pub(crate) use load_module_object;

/// Loads the uprobe programs for uprobe_multi links where the kernel has
/// them; programs named `*_by_cookie` only where it has attachment cookies.
pub(crate) fn prepare_uprobes(object: &mut OpenObject) {
    if uprobe_multi::supported() {
        uprobe_multi::prepare(object);
    }
    if !kernel_has_attach_cookies() {
        for mut program in object.progs_mut() {
            if program.name().to_string_lossy().ends_with(COOKIE_PROGRAM_SUFFIX) {
                program.set_autoload(false);
            }
        }
    }
}

/// The name's ending of programs that read their attachment's cookie.
pub const COOKIE_PROGRAM_SUFFIX: &str = "_by_cookie";

/// Whether uprobes can be given cookies here: the programs of the current
/// generation are loaded, and the kernel has attachment cookies.
pub fn uprobe_cookies() -> bool {
    Generation::choose() == Generation::Current && kernel_has_attach_cookies()
}

/// Whether uprobe programs may read their attachment's cookie (Linux 5.15
/// and later), probed once.
fn kernel_has_attach_cookies() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    // SAFETY: libbpf loads a tiny probe program; a null opts is allowed.
    *HAS.get_or_init(|| unsafe {
        libbpf_sys::libbpf_probe_bpf_helper(
            libbpf_sys::BPF_PROG_TYPE_KPROBE,
            libbpf_sys::BPF_FUNC_get_attach_cookie,
            std::ptr::null(),
        ) == 1
    })
}

/// Copies `source` into `target`, the same C struct as generated into
/// another skeleton (each skeleton has its own copy of every type).
pub(crate) fn copy_c_struct<S: plain::Plain, T: Copy>(source: &S, target: &mut T) {
    assert_eq!(size_of::<S>(), size_of::<T>(), "the C structs differ");
    // SAFETY: both are the same C struct of integers and byte arrays, of the
    // size checked above; any bit pattern is valid for either.
    unsafe {
        std::ptr::copy_nonoverlapping(
            (source as *const S).cast::<u8>(),
            (target as *mut T).cast::<u8>(),
            size_of::<S>(),
        );
    }
}

/// Fills a legacy object's settings map with `settings`.
pub(crate) fn write_settings_map<S: plain::Plain>(object: &Object, name: &str, settings: &S) -> Result<()> {
    // SAFETY: a plain C struct, viewed as its bytes.
    let bytes = unsafe { plain::as_bytes(settings) };
    map_named(object, name)?
        .update(&0u32.to_ne_bytes(), bytes, MapFlags::ANY)
        .with_context(|| format!("writing the settings map {name}"))
}

impl ProbeSettings {
    pub(crate) fn raw_capture_settings(&self) -> RawCaptureSettings {
        RawCaptureSettings {
            target_pid: self.target_pid.unwrap_or(0),
            target_uid: self.target_uid.unwrap_or(0),
            filter_by_uid: u8::from(self.target_uid.is_some()),
            have_bpf_loop: u8::from(self.generation == Generation::Current && kernel_has_bpf_loop()),
            have_attach_cookies: u8::from(self.generation == Generation::Current && kernel_has_attach_cookies()),
            ..Default::default()
        }
    }
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
            anyhow!("this kernel cannot run ecapture's BPF programs ({err}); Linux 4.18 or later is needed")
        }
        _ => anyhow!("loading BPF programs failed: {err}"),
    }
}

impl LoadedProbes {
    /// Takes a loaded capture object (one that includes
    /// `bpf/include/traced_process.h`); a legacy one gets its settings now.
    pub fn new(skel: Box<dyn Skel<'static>>, settings: &ProbeSettings) -> Result<LoadedProbes> {
        let generation = settings.generation;
        if generation == Generation::Legacy {
            let object = skel.object();
            write_settings_map(object, "capture_settings", &settings.raw_capture_settings())?;
        }
        // A TLS call's records past the first program's go out in tail calls.
        if generation == Generation::Legacy
            && let Ok(continuation) = program_named(skel.object(), "emit_more_chunks")
        {
            let object = skel.object();
            map_named(object, "chunk_continuation")?
                .update(
                    &0u32.to_ne_bytes(),
                    &continuation.as_fd().as_raw_fd().to_ne_bytes(),
                    MapFlags::ANY,
                )
                .context("setting up the tail calls that send large calls' records")?;
        }
        Ok(LoadedProbes {
            skel,
            links: Vec::new(),
            probes: 0,
            multi: generation == Generation::Current && uprobe_multi::supported(),
            pending: Vec::new(),
            generation,
        })
    }

    pub fn generation(&self) -> Generation {
        self.generation
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
        self.attach_uprobe_with_cookie(program, binary, file_offset, retprobe, pid, 0)
    }

    /// `attach_uprobe`, with a cookie the program reads through
    /// bpf_get_attach_cookie, where `uprobe_cookies` says they work.
    pub fn attach_uprobe_with_cookie(
        &mut self,
        program: &str,
        binary: &Path,
        file_offset: u64,
        retprobe: bool,
        pid: Option<u32>,
        cookie: u64,
    ) -> Result<()> {
        let pid = pid.map_or(-1, |pid| pid as i32);
        let opts = UprobeOpts {
            retprobe,
            cookie,
            ..Default::default()
        };
        let offset = usize::try_from(file_offset)?;
        if self.multi {
            let same = |group: &&mut PendingUprobes| {
                group.program == program && group.binary == binary && group.retprobe == retprobe && group.pid == pid
            };
            match self.pending.iter_mut().find(same) {
                Some(group) => {
                    group.offsets.push(offset);
                    group.cookies.push(cookie);
                }
                None => self.pending.push(PendingUprobes {
                    program: program.to_string(),
                    binary: binary.to_path_buf(),
                    retprobe,
                    pid,
                    offsets: vec![offset],
                    cookies: vec![cookie],
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
            // Cookies only where a program reads them: the kernel copies
            // the array for every link.
            let cookies = if group.cookies.iter().any(|&cookie| cookie != 0) {
                group.cookies.clone()
            } else {
                Vec::new()
            };
            let opts = UprobeMultiOpts {
                offsets: group.offsets.clone(),
                cookies,
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
        self.attach_syscall_tracepoints_draining(prefix, &mut || ())
    }

    /// `attach_syscall_tracepoints`, calling `between` after each: each
    /// attach takes milliseconds, and a capture already running drains its
    /// buffers meanwhile.
    pub fn attach_syscall_tracepoints_draining(&mut self, prefix: &str, between: &mut dyn FnMut()) -> Result<usize> {
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
            between();
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

    /// The word that tells the programs how many waiting bytes should wake
    /// the sleeping reader (0: it is awake); legacy objects, whose every
    /// record wakes the reader, have none.
    pub fn reader_wake_word(&self) -> Result<Option<SharedWord>> {
        match self.generation {
            Generation::Current => Ok(Some(SharedWord::map(&self.map("reader_wake_bytes")?)?)),
            Generation::Legacy => Ok(None),
        }
    }

    /// The word the programs set when a session's socket cannot be read
    /// from its BIO, asking for the syscall tracepoints.
    pub fn syscall_sockets_wanted(&self) -> Result<SharedWord> {
        let map = self.map("syscall_sockets_wanted")?;
        match self.generation {
            Generation::Current => SharedWord::map(&map),
            Generation::Legacy => Ok(SharedWord::Syscalls(libbpf_rs::MapHandle::try_from(&map)?)),
        }
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

/// A word shared with the BPF programs, such as the flag the reader sets
/// before it sleeps in poll() and clears after, so that the programs wake it
/// once per sleep instead of once per record.
pub enum SharedWord {
    /// An mmapped array map (Linux 5.5).
    Mapped { word: NonNull<AtomicU32>, len: usize },
    /// An array map read and written by system calls.
    Syscalls(libbpf_rs::MapHandle),
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
        Ok(SharedWord::Mapped { word, len })
    }

    pub fn set(&self, on: bool) {
        self.store(u32::from(on));
    }

    pub fn store(&self, value: u32) {
        match self {
            SharedWord::Mapped { word, .. } => atomic(word).store(value, Ordering::SeqCst),
            SharedWord::Syscalls(map) => {
                // A failed write leaves the word as it was: one wakeup more or less.
                let _ = map.update(&0u32.to_ne_bytes(), &value.to_ne_bytes(), MapFlags::ANY);
            }
        }
    }

    pub fn is_set(&self) -> bool {
        match self {
            SharedWord::Mapped { word, .. } => atomic(word).load(Ordering::SeqCst) != 0,
            SharedWord::Syscalls(map) => map
                .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
                .ok()
                .flatten()
                .is_some_and(|value| value.iter().any(|byte| *byte != 0)),
        }
    }
}

fn atomic(word: &NonNull<AtomicU32>) -> &AtomicU32 {
    // SAFETY: the page stays mapped while the SharedWord lives, and the
    // kernel side only ever loads and stores the aligned word.
    unsafe { word.as_ref() }
}

impl Drop for SharedWord {
    fn drop(&mut self) {
        if let SharedWord::Mapped { word, len } = self {
            // SAFETY: unmaps exactly the mapping made in `map`.
            unsafe { libc::munmap(word.as_ptr().cast(), *len) };
        }
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
