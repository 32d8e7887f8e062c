/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The contract for captured packets: each perf sample is a struct packet_meta
 * followed by the first captured_len bytes of the packet, from its Ethernet
 * header on.
 */
#ifndef ECAPTURE_PACKET_EVENT_H
#define ECAPTURE_PACKET_EVENT_H

#define TASK_COMM_LEN 16

enum packet_direction {
	PACKET_INGRESS = 0,
	PACKET_EGRESS = 1,
};

/* A TCP connection as its owner sees it: src is the owner's end. On
 * loopback both ends are local, each with its own owner. Ports host order;
 * IPv4 addresses fill the first 4 bytes. */
struct flow_key {
	__u16 family;  /* 0: not TCP over IP */
	__u16 src_port;
	__u16 dst_port;
	__u16 _pad;
	__u8 src_addr[16];
	__u8 dst_addr[16];
};

struct packet_meta {
	__u64 timestamp_ns;  /* bpf_ktime_get_ns() */
	__u32 ifindex;
	__u32 len;           /* length on the wire */
	__u32 captured_len;  /* bytes that follow this header */
	__u32 pid;           /* owner of the connection, 0 when unknown */
	__u8 direction;      /* enum packet_direction */
	__u8 _pad[7];
	char comm[TASK_COMM_LEN];
	/* Its connection, for userspace to name when the kernel could not. */
	struct flow_key flow;
};

#endif
