/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The contract between the kernel probes and userspace: every record in the
 * events ring buffer is a struct data_event whose first data_len bytes of
 * payload are valid. Rust types are generated from this header.
 */
#ifndef ECAPTURE_TLS_EVENT_H
#define ECAPTURE_TLS_EVENT_H

#define TASK_COMM_LEN 16

/* Payload bytes carried by one ring buffer record. A call that moved more is
 * split into several records, which userspace joins by chunk_offset. 16 KiB
 * is one TLS record, and keeps the per-CPU staging buffer under the 32 KiB
 * per-CPU value limit. */
#define DATA_CHUNK_MAX (16 * 1024)

/* Upper bound on records per call (with bpf_loop; see tls_capture.h):
 * 1024 x 16 KiB = 16 MiB in one SSL_write/SSL_read. Bytes past it are counted
 * as lost, never silently dropped. */
#define MAX_CHUNKS_PER_CALL 1024

enum data_direction {
	DIRECTION_EGRESS = 0,  /* the process wrote these bytes (SSL_write) */
	DIRECTION_INGRESS = 1, /* the process read these bytes (SSL_read) */
};

/* Which library hook produced the record; userspace picks the decoder. */
enum data_source {
	SOURCE_OPENSSL = 1,
	SOURCE_GNUTLS = 2,
	SOURCE_NSS = 3,
	SOURCE_GO = 4,
};

/* The socket behind the fd, when the kernel could read it. family is 0 when
 * unknown (no BTF, or the fd is not an inet socket). Ports in host order. */
struct conn_tuple {
	__u16 family;
	__u16 local_port;
	__u16 remote_port;
	__u16 _pad;
	__u8 local_addr[16];
	__u8 remote_addr[16];
};

/* What every record of a call carries ahead of its payload. */
struct data_event_header {
	__u64 timestamp_ns;  /* bpf_ktime_get_ns(): when a write began, when a read ended */
	__u64 conn_id;       /* the library's session pointer (SSL *) */
	__u64 total_len;     /* bytes the call transferred */
	__u64 chunk_offset;  /* where data[] starts within those bytes */
	__u32 pid;
	__u32 tid;
	__u32 uid;
	__s32 fd;            /* -1 when no socket syscall was seen for the session */
	__u32 data_len;      /* valid bytes in data[] */
	__u8 direction;      /* enum data_direction */
	__u8 source;         /* enum data_source */
	__u16 _pad;
	struct conn_tuple conn;
	char comm[TASK_COMM_LEN];
};

/* A record is reserved for the smallest payload class that holds its bytes
 * (see tls_capture.h), so data[] may be longer than data_len. */
struct data_event {
	struct data_event_header header;
	__u8 data[DATA_CHUNK_MAX];
};

#endif
