//! The packet capture object (`bpf/packets.bpf.c`): TC classifiers on one
//! interface, and the syscall tracepoints that tell which process owns each
//! connection. Detaching restores the interface as it was found.

use std::mem::MaybeUninit;
use std::net::IpAddr;
use std::os::fd::AsFd;

use anyhow::{Context, Result, anyhow, bail};
use libbpf_rs::AsRawLibbpf;
use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{
    Link, MapCore, MapFlags, OpenObject, PerfBufferBuilder, TC_EGRESS, TC_INGRESS, TcAttachPoint, TcHook, TcHookBuilder,
};

use super::{Flavor, explain_bpf_error, load_skeleton};
use crate::event::SocketPair;

#[cfg(bpf_core)]
mod packets_core {
    include!(concat!(env!("OUT_DIR"), "/packets_core.skel.rs"));
}
#[cfg(bpf_nocore)]
mod packets_nocore {
    include!(concat!(env!("OUT_DIR"), "/packets_nocore.skel.rs"));
}

/// The header of each packet sample, generated from `bpf/include/packet_event.h`.
#[cfg(bpf_core)]
pub use packets_core::types::packet_meta as RawPacketMeta;
#[cfg(all(bpf_nocore, not(bpf_core)))]
pub use packets_nocore::types::packet_meta as RawPacketMeta;

#[cfg(bpf_core)]
use packets_core::types::{flow_key as FlowKey, flow_owner as FlowOwner};
#[cfg(all(bpf_nocore, not(bpf_core)))]
use packets_nocore::types::{flow_key as FlowKey, flow_owner as FlowOwner};

// SAFETY: C structs of integers and byte arrays; any bit pattern is valid.
unsafe impl plain::Plain for RawPacketMeta {}
unsafe impl plain::Plain for FlowKey {}
unsafe impl plain::Plain for FlowOwner {}

/// Largest packet prefix one perf sample carries.
pub const MAX_CAPTURE: u32 = 65535 - 512;
/// Our filters' handle and priority on the clsact qdisc.
const TC_HANDLE: u32 = 0xeca9;
const TC_PRIORITY: u32 = 1;
/// Per-CPU perf buffer size, in pages: room for several 64 KiB packets.
const PERF_PAGES: usize = 256;

pub struct PacketProbes {
    skel: Box<dyn Skel<'static>>,
    links: Vec<Link>,
    filters: Vec<TcHook>,
    /// Set when we made the clsact qdisc, which must then go when we do.
    created_qdisc_on: Option<i32>,
}

impl PacketProbes {
    pub fn load(flavor: Flavor, snap_len: u32) -> Result<PacketProbes> {
        let skel = match flavor {
            #[cfg(bpf_core)]
            Flavor::Core => load_skeleton!(packets_core::PacketsCoreSkelBuilder, |open| {
                open.maps
                    .rodata_data
                    .as_deref_mut()
                    .ok_or_else(|| anyhow!("no .rodata"))?
                    .snap_len = snap_len;
            }),
            #[cfg(bpf_nocore)]
            Flavor::NoCore => load_skeleton!(packets_nocore::PacketsNocoreSkelBuilder, |open| {
                open.maps
                    .rodata_data
                    .as_deref_mut()
                    .ok_or_else(|| anyhow!("no .rodata"))?
                    .snap_len = snap_len;
            }),
            #[allow(unreachable_patterns)]
            _ => bail!("{flavor:?} BPF objects are not built in"),
        };
        Ok(PacketProbes {
            skel,
            links: Vec::new(),
            filters: Vec::new(),
            created_qdisc_on: None,
        })
    }

    /// Starts learning connection owners and capturing on `ifindex`. On
    /// loopback every packet leaves and comes back: only egress is taken.
    pub fn attach(&mut self, ifindex: i32, loopback: bool) -> Result<()> {
        let object = self.skel.object();
        for prog in object.progs_mut() {
            let name = prog.name().to_string_lossy().into_owned();
            if let Some(syscall) = name.strip_suffix("_enter").or_else(|| name.strip_suffix("_exit")) {
                let phase = if name.ends_with("_enter") {
                    "sys_enter_"
                } else {
                    "sys_exit_"
                };
                let link = prog
                    .attach_tracepoint(libbpf_rs::TracepointCategory::Syscalls, format!("{phase}{syscall}"))
                    .with_context(|| format!("attaching {name}"))?;
                self.links.push(link);
            }
        }
        let points: &[(&str, TcAttachPoint)] = if loopback {
            &[("capture_egress", TC_EGRESS)]
        } else {
            &[("capture_ingress", TC_INGRESS), ("capture_egress", TC_EGRESS)]
        };
        for &(program, point) in points {
            let prog = object
                .progs()
                .find(|p| p.name() == program)
                .ok_or_else(|| anyhow!("BPF program {program} is missing"))?;
            // A TCX link (Linux 6.6) goes away with the process, even a killed
            // one; a clsact filter outlives it, so it is only the fallback.
            match attach_tcx(&prog, ifindex) {
                Ok(link) => {
                    self.links.push(link);
                    continue;
                }
                Err(err) => tracing::debug!("TCX unavailable ({err}); using a clsact filter"),
            }
            if self.created_qdisc_on.is_none() && create_clsact(ifindex)? {
                self.created_qdisc_on = Some(ifindex);
            }
            let mut hook = TcHookBuilder::new(prog.as_fd())
                .ifindex(ifindex)
                .handle(TC_HANDLE)
                .priority(TC_PRIORITY)
                .hook(point);
            let attached = hook.attach().map_err(|err| {
                anyhow!(
                    "attaching a TC filter to interface {ifindex} failed ({err}); is another ecapture capturing there?"
                )
            })?;
            self.filters.push(attached);
        }
        Ok(())
    }

    /// Records the owners of connections that were open before the capture
    /// started, which no connect() or accept() will announce.
    pub fn add_owners(&self, owners: &[(u32, String, SocketPair)]) -> Result<()> {
        let map = self
            .skel
            .object()
            .maps()
            .find(|m| m.name() == "flow_owners")
            .ok_or_else(|| anyhow!("no flow_owners map"))?;
        for (pid, comm, pair) in owners {
            let (family, local, remote) = match (pair.local.ip(), pair.remote.ip()) {
                (IpAddr::V4(l), IpAddr::V4(r)) => (AF_INET, padded(&l.octets()), padded(&r.octets())),
                (IpAddr::V6(l), IpAddr::V6(r)) => (AF_INET6, l.octets(), r.octets()),
                _ => continue,
            };
            let key = FlowKey {
                family,
                src_port: pair.local.port(),
                dst_port: pair.remote.port(),
                src_addr: local,
                dst_addr: remote,
                ..Default::default()
            };
            let mut owner = FlowOwner {
                pid: *pid,
                ..Default::default()
            };
            for (slot, byte) in owner.comm.iter_mut().zip(comm.bytes().take(15)) {
                *slot = byte as _;
            }
            // SAFETY: plain C structs, viewed as their bytes.
            let (key, owner) = unsafe { (plain::as_bytes(&key), plain::as_bytes(&owner)) };
            map.update(key, owner, MapFlags::ANY)?;
        }
        Ok(())
    }

    /// Hands every packet sample (header then bytes) to `on_sample`, and the
    /// count of samples perf dropped to `on_lost`.
    pub fn perf_buffer<'a>(
        &'a self,
        on_sample: impl FnMut(i32, &[u8]) + 'a,
        on_lost: impl FnMut(i32, u64) + 'a,
    ) -> Result<libbpf_rs::PerfBuffer<'a>> {
        let map = self
            .skel
            .object()
            .maps()
            .find(|m| m.name() == "packets")
            .ok_or_else(|| anyhow!("no packets map"))?;
        Ok(PerfBufferBuilder::new(&map)
            .pages(PERF_PAGES)
            .sample_cb(on_sample)
            .lost_cb(on_lost)
            .build()?)
    }

    pub fn attached(&self) -> usize {
        self.links.len() + self.filters.len()
    }

    /// Removes our filters, and the qdisc if we made it.
    pub fn detach(&mut self) {
        for mut filter in self.filters.drain(..) {
            if let Err(err) = filter.detach() {
                tracing::warn!("removing a TC filter failed: {err}");
            }
        }
        if let Some(ifindex) = self.created_qdisc_on.take() {
            let mut hook = clsact_hook(ifindex);
            // SAFETY: a valid, fully initialised hook description.
            let rc = unsafe { libbpf_sys::bpf_tc_hook_destroy(&mut hook) };
            if rc != 0 {
                tracing::warn!(
                    "removing the clsact qdisc we added failed: {}",
                    std::io::Error::from_raw_os_error(-rc)
                );
            }
        }
        self.links.clear();
    }
}

impl Drop for PacketProbes {
    fn drop(&mut self) {
        self.detach();
    }
}

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

fn padded(ipv4: &[u8; 4]) -> [u8; 16] {
    let mut out = [0; 16];
    out[..4].copy_from_slice(ipv4);
    out
}

/// Attaches a classifier as a TCX link, after any already there.
fn attach_tcx(prog: &libbpf_rs::Program<'_>, ifindex: i32) -> std::io::Result<Link> {
    let opts = libbpf_sys::bpf_tcx_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_tcx_opts>() as _,
        ..Default::default()
    };
    // SAFETY: a loaded program, a valid options struct; libbpf returns NULL
    // and sets errno on failure, or a link we then own.
    let link = unsafe { libbpf_sys::bpf_program__attach_tcx(prog.as_libbpf_object().as_ptr(), ifindex, &opts) };
    match std::ptr::NonNull::new(link) {
        // SAFETY: a link libbpf just created, owned by nothing else.
        Some(link) => Ok(unsafe { Link::from_ptr(link) }),
        None => Err(std::io::Error::last_os_error()),
    }
}

fn clsact_hook(ifindex: i32) -> libbpf_sys::bpf_tc_hook {
    libbpf_sys::bpf_tc_hook {
        sz: std::mem::size_of::<libbpf_sys::bpf_tc_hook>() as _,
        ifindex,
        attach_point: libbpf_sys::BPF_TC_INGRESS | libbpf_sys::BPF_TC_EGRESS,
        ..Default::default()
    }
}

/// Adds a clsact qdisc; true when we made it, false when it was there already.
fn create_clsact(ifindex: i32) -> Result<bool> {
    let mut hook = clsact_hook(ifindex);
    // SAFETY: a valid, fully initialised hook description.
    let rc = unsafe { libbpf_sys::bpf_tc_hook_create(&mut hook) };
    match rc {
        0 => Ok(true),
        rc if -rc == libc::EEXIST => Ok(false),
        rc => bail!(
            "adding a clsact qdisc failed: {}",
            std::io::Error::from_raw_os_error(-rc)
        ),
    }
}

/// The index of interface `name`.
pub fn interface_index(name: &str) -> Result<i32> {
    let c_name = std::ffi::CString::new(name)?;
    // SAFETY: a NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        bail!("no network interface named {name:?}; list them with `ip link`");
    }
    Ok(index as i32)
}

/// Whether `name` is a loopback interface (ARPHRD_LOOPBACK).
pub fn is_loopback(name: &str) -> bool {
    std::fs::read_to_string(format!("/sys/class/net/{name}/type")).is_ok_and(|t| t.trim() == "772")
}

/// The interface of the default route, from /proc/net/route.
pub fn default_route_interface() -> Result<String> {
    let routes = std::fs::read_to_string("/proc/net/route")?;
    routes
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|fields| fields.get(1) == Some(&"00000000") && fields.get(7) == Some(&"00000000"))
        .map(|fields| fields[0].to_string())
        .ok_or_else(|| anyhow!("there is no default route; name the interface with -i IFACE"))
}
