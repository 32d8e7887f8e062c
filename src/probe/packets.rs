//! The packet capture object (`bpf/packets.bpf.c`): TC classifiers on one
//! interface, and the syscall tracepoints that tell which process owns each
//! connection. Detaching restores the interface as it was found.

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{
    Link, MapCore, MapFlags, MapHandle, PerfBufferBuilder, TC_EGRESS, TC_INGRESS, TcAttachPoint, TcHook, TcHookBuilder,
};

use super::kernel_filter::{self, ClassicInstruction};
use super::{
    Flavor, Generation, copy_c_struct, include_skeletons, load_build, map_named, program_named, write_settings_map,
};
use crate::event::{Comm, SocketPair};
use crate::procnet;

include_skeletons!("packets");

/// The header of each packet sample, generated from `bpf/include/packet_event.h`.
#[cfg(bpf_core)]
pub use skel_core::types::packet_meta as RawPacketMeta;
#[cfg(all(bpf_nocore, not(bpf_core)))]
pub use skel_nocore::types::packet_meta as RawPacketMeta;

#[cfg(bpf_core)]
use skel_core::types::{flow_key as FlowKey, flow_owner as FlowOwner, packet_settings as RawPacketSettings};
#[cfg(all(bpf_nocore, not(bpf_core)))]
use skel_nocore::types::{flow_key as FlowKey, flow_owner as FlowOwner, packet_settings as RawPacketSettings};

// SAFETY: C structs of integers and byte arrays; any bit pattern is valid.
unsafe impl plain::Plain for RawPacketMeta {}
unsafe impl plain::Plain for FlowKey {}
unsafe impl plain::Plain for FlowOwner {}
unsafe impl plain::Plain for RawPacketSettings {}

/// Largest packet prefix one perf sample carries.
pub const MAX_CAPTURE: u32 = 65535 - 512;
/// Our filters' handle and priority on the clsact qdisc.
const TC_HANDLE: u32 = 0xeca9;
const TC_PRIORITY: u32 = 1;
/// Per-CPU perf buffer size, in pages: room for several 64 KiB packets.
const PERF_PAGES: usize = 256;

/// One direction of an interface: the capture program, the program array a
/// pcap filter tail-calls it through, and the two ways to attach.
struct Direction {
    capture: &'static str,
    capture_array: &'static str,
    clsact: TcAttachPoint,
    tcx: libbpf_sys::bpf_attach_type,
}

const INGRESS: Direction = Direction {
    capture: "capture_ingress",
    capture_array: "ingress_capture",
    clsact: TC_INGRESS,
    tcx: libbpf_sys::BPF_TCX_INGRESS,
};

const EGRESS: Direction = Direction {
    capture: "capture_egress",
    capture_array: "egress_capture",
    clsact: TC_EGRESS,
    tcx: libbpf_sys::BPF_TCX_EGRESS,
};

pub struct PacketProbes {
    skel: Box<dyn Skel<'static>>,
    links: Vec<Link>,
    /// TCX links, which detach when closed.
    tcx_links: Vec<OwnedFd>,
    filters: Vec<TcHook>,
    /// The pcap filter's programs, one per direction, when it runs in the kernel.
    filter_programs: Vec<OwnedFd>,
    /// Set when we made the clsact qdisc, which must then go when we do.
    created_qdisc_on: Option<i32>,
    generation: Generation,
}

impl PacketProbes {
    pub fn load(flavor: Flavor, generation: Generation, snap_len: u32, link: LinkLayer) -> Result<PacketProbes> {
        let settings = RawPacketSettings {
            snap_len,
            network_offset: link.network_offset(),
        };
        macro_rules! configure {
            ($open:ident) => {{
                let rodata = $open
                    .maps
                    .rodata_data
                    .as_deref_mut()
                    .ok_or_else(|| anyhow!("no .rodata"))?;
                copy_c_struct(&settings, &mut rodata.packet_settings);
            }};
        }
        let skel = load_build!(
            flavor,
            generation,
            [
                PacketsCoreSkelBuilder,
                PacketsNocoreSkelBuilder,
                PacketsCoreLegacySkelBuilder,
                PacketsNocoreLegacySkelBuilder
            ],
            |open| { configure!(open) }
        );
        if generation == Generation::Legacy {
            write_settings_map(skel.object(), "packet_settings", &settings)?;
        }
        Ok(PacketProbes {
            generation,
            skel,
            links: Vec::new(),
            tcx_links: Vec::new(),
            filters: Vec::new(),
            filter_programs: Vec::new(),
            created_qdisc_on: None,
        })
    }

    /// Starts learning connection owners and capturing on `ifindex`. On
    /// loopback every packet leaves and comes back: only egress is taken.
    /// With `filter`, the classifiers are the pcap filter, which hands the
    /// packets it keeps to the capture programs; returns false when the
    /// kernel could not take it, and every packet is captured instead.
    pub fn attach(&mut self, ifindex: i32, loopback: bool, filter: Option<&[ClassicInstruction]>) -> Result<bool> {
        for prog in self.skel.object().progs_mut() {
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
        let directions: &[Direction] = if loopback { &[EGRESS] } else { &[INGRESS, EGRESS] };
        let filtered = match filter {
            Some(filter) => match self.load_filter(filter, directions) {
                Ok(programs) => {
                    self.filter_programs = programs;
                    true
                }
                Err(err) => {
                    tracing::warn!("the pcap filter runs in userspace, after every packet is copied: {err:#}");
                    false
                }
            },
            None => false,
        };
        for (index, direction) in directions.iter().enumerate() {
            let capture = program_named(self.skel.object(), direction.capture)?;
            let classifier = match self.filter_programs.get(index) {
                Some(program) => program.as_fd(),
                None => capture.as_fd(),
            };
            // A TCX link (Linux 6.6) goes away with the process, even a killed
            // one; a clsact filter outlives it, so it is only the fallback,
            // and all that the kernels of the legacy programs have.
            if self.generation == Generation::Current {
                match attach_tcx(classifier, ifindex, direction.tcx) {
                    Ok(link) => {
                        self.tcx_links.push(link);
                        continue;
                    }
                    Err(err) => tracing::debug!("TCX unavailable ({err}); using a clsact filter"),
                }
            }
            if self.created_qdisc_on.is_none() && create_clsact(ifindex)? {
                self.created_qdisc_on = Some(ifindex);
            }
            let mut hook = TcHookBuilder::new(classifier)
                .ifindex(ifindex)
                .handle(TC_HANDLE)
                .priority(TC_PRIORITY)
                .hook(direction.clsact);
            let attached = hook.attach().map_err(|err| {
                anyhow!(
                    "attaching a TC filter to interface {ifindex} failed ({err}); is another ecapture capturing there?"
                )
            })?;
            self.filters.push(attached);
        }
        Ok(filtered)
    }

    /// Puts each direction's capture program where the filter tail-calls
    /// it, and loads the filter for that direction.
    fn load_filter(&self, filter: &[ClassicInstruction], directions: &[Direction]) -> Result<Vec<OwnedFd>> {
        let object = self.skel.object();
        directions
            .iter()
            .map(|direction| {
                let capture = program_named(object, direction.capture)?;
                let array = map_named(object, direction.capture_array)?;
                array.update(
                    &0u32.to_ne_bytes(),
                    &capture.as_fd().as_raw_fd().to_ne_bytes(),
                    MapFlags::ANY,
                )?;
                kernel_filter::load(filter, array.as_fd(), direction.tcx)
            })
            .collect()
    }

    /// Records the owners of connections that were open before the capture
    /// started, which no connect() or accept() will announce.
    pub fn add_owners(&self, owners: &[(u32, String, SocketPair)]) -> Result<()> {
        let map = map_named(self.skel.object(), "flow_owners")?;
        for (pid, comm, pair) in owners {
            let Some(key) = flow_key(pair) else { continue };
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

    /// Looks up connection owners after the fact, for packets that left
    /// before their owner was known (a connection's SYN and SYN-ACK go out
    /// inside connect() and before accept() returns).
    pub fn owner_lookup(&self) -> Result<OwnerLookup> {
        let map = map_named(self.skel.object(), "flow_owners")?;
        Ok(OwnerLookup(MapHandle::try_from(&map)?))
    }

    /// Hands every packet sample (header then bytes) to `on_sample`, and the
    /// count of samples perf dropped to `on_lost`.
    pub fn perf_buffer<'a>(
        &'a self,
        on_sample: impl FnMut(i32, &[u8]) + 'a,
        on_lost: impl FnMut(i32, u64) + 'a,
    ) -> Result<libbpf_rs::PerfBuffer<'a>> {
        let map = map_named(self.skel.object(), "packets")?;
        Ok(PerfBufferBuilder::new(&map)
            .pages(PERF_PAGES)
            .sample_cb(on_sample)
            .lost_cb(on_lost)
            .build()?)
    }

    pub fn attached(&self) -> usize {
        self.links.len() + self.tcx_links.len() + self.filters.len()
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
        self.tcx_links.clear();
        self.filter_programs.clear();
        super::release_together(std::mem::take(&mut self.links));
    }
}

impl Drop for PacketProbes {
    fn drop(&mut self) {
        self.detach();
    }
}

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// The key the kernel files `pair` under, seen from its local end.
fn flow_key(pair: &SocketPair) -> Option<FlowKey> {
    let (family, local, remote) = match (pair.local.ip(), pair.remote.ip()) {
        (IpAddr::V4(l), IpAddr::V4(r)) => (AF_INET, padded(&l.octets()), padded(&r.octets())),
        (IpAddr::V6(l), IpAddr::V6(r)) => (AF_INET6, l.octets(), r.octets()),
        _ => return None,
    };
    Some(FlowKey {
        family,
        src_port: pair.local.port(),
        dst_port: pair.remote.port(),
        src_addr: local,
        dst_addr: remote,
        ..Default::default()
    })
}

/// A flow key as a map key: FlowKey is generated without Hash.
type FlowId = (u16, u16, u16, [u8; 16], [u8; 16]);

fn flow_id(key: &FlowKey) -> FlowId {
    (key.family, key.src_port, key.dst_port, key.src_addr, key.dst_addr)
}

/// Owners of the connections the kernel could not name (the non-CO-RE
/// build reads no sockets), from /proc. A flow not known yet triggers a
/// rescan, at most one per `RESCAN_INTERVAL`, so that a burst of new
/// connections costs one scan; one that opens and closes between two scans
/// goes unnamed.
#[derive(Default)]
pub struct ProcOwners {
    owners: HashMap<FlowId, (u32, String)>,
    last_scan: Option<Instant>,
}

const RESCAN_INTERVAL: Duration = Duration::from_millis(100);

impl ProcOwners {
    /// The pid and comm owning the packet's flow, if /proc names it.
    pub fn owner(&mut self, meta: &RawPacketMeta) -> Option<&(u32, String)> {
        if meta.flow.family == 0 {
            return None;
        }
        let id = flow_id(&meta.flow);
        if !self.owners.contains_key(&id) && self.last_scan.is_none_or(|at| at.elapsed() >= RESCAN_INTERVAL) {
            self.last_scan = Some(Instant::now());
            self.owners = procnet::connection_owners()
                .into_iter()
                .filter_map(|(pid, comm, pair)| Some((flow_id(&flow_key(&pair)?), (pid, comm))))
                .collect();
        }
        self.owners.get(&id)
    }
}

fn padded(ipv4: &[u8; 4]) -> [u8; 16] {
    let mut out = [0; 16];
    out[..4].copy_from_slice(ipv4);
    out
}

/// Attaches a classifier as a TCX link, after any already there.
fn attach_tcx(
    program: BorrowedFd<'_>,
    ifindex: i32,
    attach_type: libbpf_sys::bpf_attach_type,
) -> std::io::Result<OwnedFd> {
    let opts = libbpf_sys::bpf_link_create_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_link_create_opts>() as _,
        ..Default::default()
    };
    // SAFETY: a loaded program and a valid options struct; the kernel
    // returns a new link fd or a negative errno.
    let fd = unsafe { libbpf_sys::bpf_link_create(program.as_raw_fd(), ifindex, attach_type, &opts) };
    if fd < 0 {
        return Err(std::io::Error::from_raw_os_error(-fd));
    }
    // SAFETY: a new fd the kernel just gave us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
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

/// The kernel's table of connection owners, read from userspace.
pub struct OwnerLookup(MapHandle);

impl OwnerLookup {
    /// The comment naming the owner of the connection whose flow key (as a
    /// packet's metadata carries it) is `flow`, if the kernel knows it now.
    pub fn comment(&self, flow: &[u8]) -> Option<String> {
        let bytes = self.0.lookup(flow, MapFlags::ANY).ok()??;
        let mut owner = FlowOwner::default();
        plain::copy_from_bytes(&mut owner, &bytes).ok()?;
        Some(format!("pid={} comm={}", owner.pid, Comm::from_kernel(&owner.comm)))
    }
}

/// The bytes of a packet's flow key, when the kernel could read its addresses.
pub fn flow_bytes(meta: &RawPacketMeta) -> Option<Vec<u8>> {
    // SAFETY: a plain C struct, viewed as its bytes.
    (meta.flow.family != 0).then(|| unsafe { plain::as_bytes(&meta.flow) }.to_vec())
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

/// What classifiers on an interface see at the start of a packet, from its
/// ARPHRD type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkLayer {
    /// An Ethernet header: Ethernet, veth, bridges, and loopback, whose
    /// packets carry a zeroed one.
    Ethernet { loopback: bool },
    /// The IP header itself: tun, WireGuard, IP-in-IP, SIT and other
    /// layer-3 devices.
    RawIp,
}

const ARPHRD_ETHER: u32 = 1;
const ARPHRD_RAWIP: u32 = 519;
const ARPHRD_TUNNEL: u32 = 768;
const ARPHRD_TUNNEL6: u32 = 769;
const ARPHRD_LOOPBACK: u32 = 772;
const ARPHRD_SIT: u32 = 776;
const ARPHRD_NONE: u32 = 65534;

impl LinkLayer {
    /// The link layer of interface `name`, or an error naming its type when
    /// ecapture cannot read its packets.
    pub fn of(name: &str) -> Result<LinkLayer> {
        let kind = std::fs::read_to_string(format!("/sys/class/net/{name}/type"))
            .with_context(|| format!("cannot read the type of interface {name}"))?;
        match kind.trim().parse::<u32>() {
            Ok(ARPHRD_ETHER) => Ok(LinkLayer::Ethernet { loopback: false }),
            Ok(ARPHRD_LOOPBACK) => Ok(LinkLayer::Ethernet { loopback: true }),
            Ok(ARPHRD_NONE | ARPHRD_RAWIP | ARPHRD_TUNNEL | ARPHRD_TUNNEL6 | ARPHRD_SIT) => Ok(LinkLayer::RawIp),
            _ => bail!(
                "interface {name} has link type {} (ARPHRD), whose packets ecapture cannot read; \
                 capture on an Ethernet, loopback or IP-level interface (tun, WireGuard, IP-in-IP) instead",
                kind.trim()
            ),
        }
    }

    /// Where the IP header starts.
    pub fn network_offset(self) -> u32 {
        match self {
            LinkLayer::Ethernet { .. } => 14,
            LinkLayer::RawIp => 0,
        }
    }

    /// The pcapng link type (LINKTYPE_ETHERNET, LINKTYPE_RAW).
    pub fn pcapng_link_type(self) -> u16 {
        match self {
            LinkLayer::Ethernet { .. } => 1,
            LinkLayer::RawIp => 101,
        }
    }

    /// The link type libpcap compiles filters for: DLT values, and Linux's
    /// DLT_RAW is 12, not LINKTYPE_RAW.
    pub fn filter_link_type(self) -> pcap::Linktype {
        match self {
            LinkLayer::Ethernet { .. } => pcap::Linktype::ETHERNET,
            LinkLayer::RawIp => pcap::Linktype(12),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_layers_are_read_from_the_interface_type() {
        let loopback = LinkLayer::of("lo").unwrap();
        assert_eq!(loopback, LinkLayer::Ethernet { loopback: true });
        assert_eq!((loopback.network_offset(), loopback.pcapng_link_type()), (14, 1));
        assert_eq!(
            (LinkLayer::RawIp.network_offset(), LinkLayer::RawIp.pcapng_link_type()),
            (0, 101)
        );
        assert!(LinkLayer::of("no-such-interface").is_err());
    }
}
