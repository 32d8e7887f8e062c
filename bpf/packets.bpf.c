// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Packets for pcapng mode: TC classifiers copy every packet of an interface to
 * userspace, each labelled with the process that owns its connection.
 *
 * Owners are learned without kprobes: when connect() or accept() returns, the
 * syscall tracepoints run in the owning process, and its new socket's
 * addresses are read through CO-RE. The non-CO-RE build cannot read sockets;
 * userspace names its connections from /proc, by the flow in each sample.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <stdbool.h>
#include <stddef.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "kernel_compat.h"
#include "packet_event.h"
#include "socket_of_fd.h"
#include "syscall_tracepoint.h"

/* Largest sample perf can carry (its size field is 16 bits), less headers. */
#define MAX_CAPTURE (65535 - 512)

struct packet_settings {
	__u32 snap_len; /* at most MAX_CAPTURE */
	/* Where the IP header starts: after the Ethernet header, or at once
	 * on layer-3 devices (tun, WireGuard, IP-in-IP). */
	__u32 network_offset;
};

DECLARE_SETTINGS(struct packet_settings, packet_settings);

struct flow_owner {
	__u32 pid;
	char comm[TASK_COMM_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct flow_key);
	__type(value, struct flow_owner);
} flow_owners SEC(".maps");

/* LRU, like every per-call map: a connect() whose return is never seen
 * must not hold its slot for good. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);  /* pid_tgid */
	__type(value, __s32); /* fd being connected */
} connecting SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
} packets SEC(".maps");

/* With a pcap filter in the kernel, the classifier is the filter, compiled at
 * run time, and it tail-calls these for the packets it keeps. */
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} ingress_capture SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} egress_capture SEC(".maps");

BTF_ANCHOR(struct packet_meta, _packet_meta_btf_anchor);
/* Userspace fills flow_owners with connections that predate the capture. */
BTF_ANCHOR(struct flow_key, _flow_key_btf_anchor);
BTF_ANCHOR(struct flow_owner, _flow_owner_btf_anchor);

/* The connection of the TCP socket behind fd, our end first; false if fd
 * is not one. */
static __always_inline bool flow_of_fd(long fd, struct flow_key *key)
{
	struct conn_tuple tuple = {};
	__u64 sk = socket_of_fd(fd);

	if (!sk)
		return false;
	read_conn_tuple(sk, &tuple);
	if (!tuple.family)
		return false;
	key->family = tuple.family;
	key->src_port = tuple.local_port;
	key->dst_port = tuple.remote_port;
	__builtin_memcpy(key->src_addr, tuple.local_addr, 16);
	__builtin_memcpy(key->dst_addr, tuple.remote_addr, 16);
	return true;
}

static __always_inline void set_owner(struct flow_key *key, __u32 pid)
{
	struct flow_owner owner = {};

	owner.pid = pid;
	bpf_get_current_comm(owner.comm, sizeof(owner.comm));
	bpf_map_update_elem(&flow_owners, key, &owner, BPF_ANY);
}

static __always_inline void remember_owner(long fd)
{
	struct flow_key key = {};

	if (flow_of_fd(fd, &key))
		set_owner(&key, bpf_get_current_pid_tgid() >> 32);
}

/* A connection's packets belong to the process that uses its socket: a
 * fork-per-connection server (PostgreSQL, socat) accepts in its master and
 * serves in a child, which takes the connection over at its first read or
 * write. One lookup when the owner is already this process. */
static __always_inline void claim_owner(long fd)
{
	__u32 pid = bpf_get_current_pid_tgid() >> 32;
	struct flow_owner *owner;
	struct flow_key key = {};

	if (!flow_of_fd(fd, &key))
		return;
	owner = bpf_map_lookup_elem(&flow_owners, &key);
	if (!owner || owner->pid != pid)
		set_owner(&key, pid);
}

SEC("tracepoint/syscalls/sys_enter_read")
int read_enter(struct syscall_enter_ctx *ctx)
{
	claim_owner(ctx->args[0]);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_write")
int write_enter(struct syscall_enter_ctx *ctx)
{
	claim_owner(ctx->args[0]);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_recvfrom")
int recvfrom_enter(struct syscall_enter_ctx *ctx)
{
	claim_owner(ctx->args[0]);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_sendto")
int sendto_enter(struct syscall_enter_ctx *ctx)
{
	claim_owner(ctx->args[0]);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_connect")
int connect_enter(struct syscall_enter_ctx *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__s32 fd = ctx->args[0];

	bpf_map_update_elem(&connecting, &pid_tgid, &fd, BPF_ANY);
	return 0;
}

/* Even a non-blocking connect (EINPROGRESS) has both ends set by now. */
SEC("tracepoint/syscalls/sys_exit_connect")
int connect_exit(struct syscall_exit_ctx *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__s32 *fd = bpf_map_lookup_elem(&connecting, &pid_tgid);

	if (!fd)
		return 0;
	remember_owner(*fd);
	bpf_map_delete_elem(&connecting, &pid_tgid);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_accept4")
int accept4_exit(struct syscall_exit_ctx *ctx)
{
	if (ctx->ret >= 0)
		remember_owner(ctx->ret);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_accept")
int accept_exit(struct syscall_exit_ctx *ctx)
{
	if (ctx->ret >= 0)
		remember_owner(ctx->ret);
	return 0;
}

#define IPV6_HOP_BY_HOP 0
#define IPV6_ROUTING 43
#define IPV6_FRAGMENT 44
#define IPV6_AUTH 51
#define IPV6_DEST_OPTIONS 60
/* Extension headers followed before giving up on finding TCP. */
#define IPV6_MAX_EXTENSIONS 6

/* Moves past IPv6 extension headers to the transport header; false for a
 * fragment other than the first, which carries no ports. */
static __always_inline bool skip_ipv6_extensions(struct __sk_buff *skb, __u8 *protocol, __u32 *offset)
{
#pragma unroll
	for (int i = 0; i < IPV6_MAX_EXTENSIONS; i++) {
		__u8 header[4];

		if (*protocol != IPV6_HOP_BY_HOP && *protocol != IPV6_ROUTING && *protocol != IPV6_FRAGMENT &&
		    *protocol != IPV6_AUTH && *protocol != IPV6_DEST_OPTIONS)
			return true;
		if (bpf_skb_load_bytes(skb, *offset, header, sizeof(header)))
			return false;
		if (*protocol == IPV6_FRAGMENT) {
			/* The fragment offset: the upper 13 bits of bytes 2-3. */
			if (((header[2] << 8) | header[3]) & 0xfff8)
				return false;
			*offset += 8;
		} else if (*protocol == IPV6_AUTH) {
			*offset += (header[1] + 2) * 4;
		} else {
			*offset += (header[1] + 1) * 8;
		}
		*protocol = header[0];
	}
	return true;
}

/* Reads the packet's addresses and ports into key, our end first: the source
 * for a packet we send, the destination for one we receive. False if the
 * packet is not TCP over IP. */
static __always_inline bool packet_flow(struct __sk_buff *skb, struct flow_key *key, bool received)
{
	/* Where the packet's source and destination addresses go in the key. */
	__u8 *source_slot = received ? key->dst_addr : key->src_addr;
	__u8 *destination_slot = received ? key->src_addr : key->dst_addr;
	__u32 network_offset = SETTING(packet_settings, network_offset);
	__u32 l4_offset;
	__u16 ports[2];
	__u8 protocol;

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;

		if (bpf_skb_load_bytes(skb, network_offset, &ip, sizeof(ip)))
			return false;
		protocol = ip.protocol;
		l4_offset = network_offset + ip.ihl * 4;
		key->family = 2; /* AF_INET */
		__builtin_memcpy(source_slot, &ip.saddr, 4);
		__builtin_memcpy(destination_slot, &ip.daddr, 4);
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;

		if (bpf_skb_load_bytes(skb, network_offset, &ip6, sizeof(ip6)))
			return false;
		protocol = ip6.nexthdr;
		l4_offset = network_offset + sizeof(ip6);
		if (!skip_ipv6_extensions(skb, &protocol, &l4_offset))
			return false;
		key->family = 10; /* AF_INET6 */
		__builtin_memcpy(source_slot, &ip6.saddr, 16);
		__builtin_memcpy(destination_slot, &ip6.daddr, 16);
	} else {
		return false;
	}
	if (protocol != IPPROTO_TCP || bpf_skb_load_bytes(skb, l4_offset, ports, sizeof(ports)))
		return false;
	key->src_port = bpf_ntohs(ports[received ? 1 : 0]);
	key->dst_port = bpf_ntohs(ports[received ? 0 : 1]);
	return true;
}

static __always_inline int capture(struct __sk_buff *skb, enum packet_direction direction)
{
	struct packet_meta meta = {};
	struct flow_key key = {};
	struct flow_owner *owner;
	__u64 captured = skb->len;
	__u64 snap_len = SETTING(packet_settings, snap_len);

	if (captured > snap_len)
		captured = snap_len;
	/* Within perf's limit whatever the settings say. */
	if (captured > MAX_CAPTURE)
		captured = MAX_CAPTURE;
	meta.timestamp_ns = bpf_ktime_get_ns();
	meta.ifindex = skb->ifindex;
	meta.len = skb->len;
	meta.captured_len = captured;
	meta.direction = direction;
	if (packet_flow(skb, &key, direction == PACKET_INGRESS)) {
		owner = bpf_map_lookup_elem(&flow_owners, &key);
		if (owner) {
			meta.pid = owner->pid;
			__builtin_memcpy(meta.comm, owner->comm, sizeof(meta.comm));
		}
		meta.flow = key;
	}
	/* The upper 32 bits of the flags ask perf to append that many packet bytes. */
	bpf_perf_event_output(skb, &packets, BPF_F_CURRENT_CPU | (captured << 32), &meta, sizeof(meta));
	return TC_ACT_OK;
}

SEC("tcx/ingress")
int capture_ingress(struct __sk_buff *skb)
{
	return capture(skb, PACKET_INGRESS);
}

SEC("tcx/egress")
int capture_egress(struct __sk_buff *skb)
{
	return capture(skb, PACKET_EGRESS);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
