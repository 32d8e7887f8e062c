/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * What every TLS library module shares: remember a read or write call at its
 * entry, learn the socket from the library's own state or from the syscalls
 * it makes inside the call, and at the call's return copy exactly the bytes
 * transferred into the ring buffer. A library's file defines
 * TLS_CAPTURE_SOURCE (its enum data_source) before including this, then the
 * two library_transport functions declared below, and uprobes that call
 * tls_call_enter/tls_call_exit.
 */
#ifndef ECAPTURE_TLS_CAPTURE_H
#define ECAPTURE_TLS_CAPTURE_H

#include <bpf/bpf_helpers.h>
#include "kernel_compat.h"
#include "capture_settings.h"
#include "traced_process.h"
#include "tls_event.h"
#include "socket_of_fd.h"
#include "syscall_tracepoint.h"

#ifndef TLS_CAPTURE_SOURCE
#error "define TLS_CAPTURE_SOURCE, the library's enum data_source, before including tls_capture.h"
#endif

/* The object a session reaches its socket through (an OpenSSL BIO), or 0
 * when the library's state cannot tell. `ctx` lets a library that must
 * learn a process first ask userspace about it. */
static __always_inline __u64 library_transport(void *ctx, __u64 conn_id);
/* The descriptor that object holds, or -1 when it holds none (a memory BIO). */
static __always_inline int library_transport_fd(__u64 transport);


/* The 8-byte word at a user address, or 0 when it cannot be read. */
static __always_inline __u64 read_user_word(__u64 address)
{
	__u64 value = 0;

	if (bpf_probe_read_user(&value, sizeof(value), (void *)address))
		return 0;
	return value;
}

#define UNROLLED_MAX_CHUNKS 8

/* How the call reports the transferred length. */
enum length_source {
	LENGTH_FROM_RETURN = 0,   /* SSL_write/SSL_read: return value > 0 */
	LENGTH_FROM_POINTER = 1,  /* SSL_write_ex/SSL_read_ex and what they call: *len_ptr */
};

struct tls_call {
	__u64 entered_ns; /* when a write began (reads are stamped at their end) */
	__u64 conn_id;
	__u64 buf;
	__u64 len_ptr;
	__s32 fd;       /* last socket fd seen inside this call */
	__u16 depth;    /* nested hooked calls on the same session; 0: no call */
	__u8 direction;
	__u8 length_source;
};

struct session_key {
	__u32 tgid;
	__u32 _pad;
	__u64 conn_id;
};

/* What the kernel learned about a session's socket; kept across calls because
 * a read served from the library's buffer makes no syscall at all. */
struct session_socket {
	__s32 fd;
	/* Set once a record of a socket the kernel could not name (NoCore) has
	 * woken the reader, so that procfs names it while it is open. */
	__u32 woke_reader;
	__u64 sk;
	__u64 transport;  /* what it was read from (library_transport); 0: learned from syscalls */
	struct conn_tuple conn;
};

/* One slot per thread, reused from call to call (rewriting a hash entry in
 * place is far cheaper than deleting and inserting it); LRU so that the
 * slots of threads that are gone make room. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64); /* pid_tgid */
	__type(value, struct tls_call);
} active_calls SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct session_key);
	__type(value, struct session_socket);
} session_sockets SEC(".maps");

/* Which session each socket read from a BIO serves, so that its entry goes
 * when the connection closes: the library reuses a freed session object and
 * its BIO for the next connection, and the kernel the fd number. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64); /* struct sock * */
	__type(value, struct session_key);
} socket_sessions SEC(".maps");

EVENT_CHANNEL(events, 16 * 1024 * 1024); /* resized by userspace */
RECORD_SLOT(events, struct data_event);

/* A call's records: their common header, and where the bytes are. On the
 * program's stack, never in a per-CPU buffer: uprobe programs run with
 * migration disabled but preemption enabled (Linux 6.x), so another task can
 * run the same program on this CPU between two of our instructions. */
struct chunk_loop {
	struct data_event_header header;
	__u64 buf;
	__u64 total;
};

/* How many records a call of `total` bytes takes, counting what cannot be
 * sent (past `sendable` records) as lost. */
static __always_inline __u64 sendable_chunks(__u64 total, __u64 sendable)
{
	__u64 chunks = (total + DATA_CHUNK_MAX - 1) / DATA_CHUNK_MAX;

	if (chunks > sendable) {
		count_lost(chunks - sendable, total - sendable * DATA_CHUNK_MAX);
		chunks = sendable;
	}
	return chunks;
}

/* How many bytes record `index` of a call carries, from `*offset` on; 0
 * past the call's end. */
static __always_inline __u64 chunk_bytes(const struct chunk_loop *loop, __u32 index, __u64 *offset)
{
	__u64 n;

	*offset = (__u64)index * DATA_CHUNK_MAX;
	if (*offset >= loop->total)
		return 0;
	n = loop->total - *offset;
	return n > DATA_CHUNK_MAX ? DATA_CHUNK_MAX : n;
}

static __always_inline void fill_header(struct data_event *rec, const struct chunk_loop *loop, __u64 offset,
					__u64 n)
{
	rec->header = loop->header;
	rec->header.chunk_offset = offset;
	rec->header.data_len = n;
}

#ifdef ECAPTURE_LEGACY_KERNEL

/* Sends record `index` of a call through the per-CPU slot; returns 1 when
 * done. */
static __always_inline long emit_chunk(void *ctx, __u32 index, struct chunk_loop *loop)
{
	struct data_event *rec;
	__u64 offset, n = chunk_bytes(loop, index, &offset);

	/* Keep the bound in the verifier's view after clang's rewrites. */
	asm volatile("" : "+r"(n));
	if (!n || n > DATA_CHUNK_MAX)
		return 1;
	rec = RESERVE_RECORD(events, 0);
	if (!rec) {
		count_lost(1, n);
		return 0;
	}
	fill_header(rec, loop, offset, n);
	if (bpf_probe_read_user(rec->data, n, (void *)(loop->buf + offset)) ||
	    SUBMIT_RECORD(ctx, events, rec, offsetof(struct data_event, data) + n, 0))
		count_lost(1, n);
	return 0;
}

/* Kernels before 5.3 take no loops, and before 5.13 no callbacks: a call's
 * records go out CHUNKS_PER_PROGRAM to a program, unrolled, and the program
 * tail-calls emit_more_chunks for the next ones, up to the kernel's limit of
 * 32 tail calls in a row. */
#define CHUNKS_PER_PROGRAM 16
#define LEGACY_MAX_CHUNKS (CHUNKS_PER_PROGRAM * 33)

struct pending_chunks {
	struct chunk_loop loop;
	__u32 chunks;
	__u32 next;
};

/* Carries a call's records from program to program: one slot per CPU, which
 * the chain of tail calls holds from start to end. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pending_chunks);
} pending_chunks SEC(".maps");

/* Userspace puts emit_more_chunks here. */
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} chunk_continuation SEC(".maps");

static __always_inline void emit_batch(void *ctx, struct pending_chunks *pending)
{
	__u32 first = pending->next;

#pragma unroll
	for (__u32 i = 0; i < CHUNKS_PER_PROGRAM; i++) {
		if (first + i >= pending->chunks || emit_chunk(ctx, first + i, &pending->loop))
			return;
	}
	pending->next = first + CHUNKS_PER_PROGRAM;
	if (pending->next >= pending->chunks)
		return;
	bpf_tail_call(ctx, &chunk_continuation, 0);
	/* Only reached when the tail call failed. */
	count_lost(pending->chunks - pending->next,
		   pending->loop.total - (__u64)pending->next * DATA_CHUNK_MAX);
}

/* May end in a tail call: nothing may follow it in the calling program. */
static __always_inline void emit_chunks(void *ctx, struct chunk_loop *loop)
{
	struct pending_chunks *pending = record_slot(&pending_chunks);

	if (!pending) {
		count_lost((loop->total + DATA_CHUNK_MAX - 1) / DATA_CHUNK_MAX, loop->total);
		return;
	}
	pending->loop = *loop;
	pending->chunks = sendable_chunks(loop->total, LEGACY_MAX_CHUNKS);
	pending->next = 0;
	emit_batch(ctx, pending);
}

SEC("uprobe")
int emit_more_chunks(struct pt_regs *ctx)
{
	struct pending_chunks *pending = record_slot(&pending_chunks);

	if (pending)
		emit_batch(ctx, pending);
	return 0;
}

#else /* current kernels */

/* While the reader sleeps: the bytes waiting in the ring at which it wants
 * to be woken; 0 while it is awake. Userspace writes it. */
SHARED_WORD(reader_wake_bytes);

/* Wakes the reader once per sleep, when the bytes it asked for are waiting.
 * A reader that is awake needs none: it looks at what waits before it
 * sleeps. One per record past the threshold (whenever the reader lagged) cost
 * an interrupt each, a VM exit under a hypervisor: 7% of a traced CPU.
 * Returns the flag for the record's commit. Once a record carrying the
 * wakeup is in the ring, reader_woken() clears the word; cleared earlier, a
 * full ring (which takes no record) would leave the reader asleep through a
 * flood until its timeout. */
static __always_inline __u64 ringbuf_wakeup_flag(__u32 **wake_bytes, __u64 record_bytes)
{
	__u32 zero = 0;

	*wake_bytes = bpf_map_lookup_elem(&reader_wake_bytes, &zero);
	if (!*wake_bytes || !**wake_bytes)
		return BPF_RB_NO_WAKEUP;
	if (bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) + record_bytes < **wake_bytes)
		return BPF_RB_NO_WAKEUP;
	return BPF_RB_FORCE_WAKEUP;
}

static __always_inline void reader_woken(__u32 *wake_bytes, __u64 wakeup)
{
	if (wake_bytes && wakeup == BPF_RB_FORCE_WAKEUP)
		*wake_bytes = 0;
}

/* Reserves a record for `n` payload bytes (n <= size, a constant), and reads
 * them straight into it: one copy, into memory no other task shares. */
static __always_inline long emit_in_class(struct chunk_loop *loop, __u64 offset, __u64 n, const __u64 size)
{
	const __u64 record_bytes = offsetof(struct data_event, data) + size;
	struct data_event *rec;
	__u32 *wake_bytes;
	__u64 wakeup;

	/* Keep the bound in the verifier's view after clang's rewrites. */
	asm volatile("" : "+r"(n));
	if (n > size)
		return 1;
	rec = bpf_ringbuf_reserve(&events, record_bytes, 0);
	if (!rec) {
		count_lost(1, n);
		return 0;
	}
	fill_header(rec, loop, offset, n);
	/* Bytes that cannot be read are lost, not sent as zeros. */
	if (bpf_probe_read_user(rec->data, n, (void *)(loop->buf + offset))) {
		bpf_ringbuf_discard(rec, BPF_RB_NO_WAKEUP);
		count_lost(1, n);
		return 0;
	}
	wakeup = ringbuf_wakeup_flag(&wake_bytes, record_bytes);
	bpf_ringbuf_submit(rec, wakeup);
	reader_woken(wake_bytes, wakeup);
	return 0;
}

/* Sends record `index` of a call; returns 1 when done. A separate function
 * so that bpf_loop verifies it once, whatever the count. Payload classes
 * double from 64 bytes, so a record takes at most twice its bytes. */
static long emit_chunk_by_index(__u32 index, void *data)
{
	struct chunk_loop *loop = data;
	__u64 offset, n = chunk_bytes(loop, index, &offset);

	if (!n)
		return 1;
	if (n <= 64)
		return emit_in_class(loop, offset, n, 64);
	if (n <= 128)
		return emit_in_class(loop, offset, n, 128);
	if (n <= 256)
		return emit_in_class(loop, offset, n, 256);
	if (n <= 512)
		return emit_in_class(loop, offset, n, 512);
	if (n <= 1024)
		return emit_in_class(loop, offset, n, 1024);
	if (n <= 2048)
		return emit_in_class(loop, offset, n, 2048);
	if (n <= 4096)
		return emit_in_class(loop, offset, n, 4096);
	if (n <= 8192)
		return emit_in_class(loop, offset, n, 8192);
	return emit_in_class(loop, offset, n, DATA_CHUNK_MAX);
}

static __always_inline void emit_chunks(void *ctx, struct chunk_loop *loop)
{
	bool have_bpf_loop = SETTING(capture_settings, have_bpf_loop);
	__u64 chunks = sendable_chunks(loop->total, have_bpf_loop ? MAX_CHUNKS_PER_CALL : UNROLLED_MAX_CHUNKS);

	if (chunks == 1) {
		emit_chunk_by_index(0, loop);
		return;
	}
	if (have_bpf_loop) {
		bpf_loop(chunks, emit_chunk_by_index, loop, 0);
		return;
	}
	for (__u32 i = 0; i < UNROLLED_MAX_CHUNKS; i++) {
		if (emit_chunk_by_index(i, loop))
			return;
	}
}

#endif

/* Set once a session's socket cannot be read from its BIO; userspace then
 * attaches the syscall tracepoints. */
SHARED_WORD(syscall_sockets_wanted);

/* Wakes the reader at once, for what cannot wait for a batch: a request for
 * the syscall tracepoints (the session's first read or write may follow its
 * handshake within milliseconds), or a socket only procfs can name, which
 * it must do before the connection closes. */
EVENT_CHANNEL(reader_wakeups, 4096);

static __always_inline void wake_reader(void *ctx)
{
	__u32 zero = 0;

	OUTPUT_RECORD(ctx, reader_wakeups, &zero, sizeof(zero), BPF_RB_FORCE_WAKEUP);
}

static __always_inline void want_syscall_sockets(void *ctx)
{
	__u32 zero = 0, *wanted = bpf_map_lookup_elem(&syscall_sockets_wanted, &zero);

	if (!wanted || *wanted)
		return;
	*wanted = 1;
	wake_reader(ctx);
}

/* Records that the session uses socket `fd`, read from `transport` (0: seen
 * in a syscall), unless `known` says so already, and returns the entry. The
 * socket is compared too: a freed session object and its fd number are
 * both reused for the next connection. */
static __always_inline struct session_socket *remember_socket(struct session_key *key, long fd, __u64 transport,
							      struct session_socket *known)
{
	struct session_socket fresh = {};

	fresh.fd = fd;
	fresh.sk = socket_of_fd(fd);
	fresh.transport = transport;
	/* A program may write to a pipe or an eventfd (node's event loop does)
	 * in the middle of a call: only a socket names the session. */
	if (!transport && !fresh.sk && KERNEL_NAMES_SOCKETS)
		return known;
	if (known && known->fd == fresh.fd && known->sk == fresh.sk && known->transport == transport)
		return known;
	if (fresh.sk)
		read_conn_tuple(fresh.sk, &fresh.conn);
	bpf_map_update_elem(&session_sockets, key, &fresh, BPF_ANY);
	if (fresh.sk && transport)
		bpf_map_update_elem(&socket_sessions, &fresh.sk, key, BPF_ANY);
	return bpf_map_lookup_elem(&session_sockets, key);
}

/* The session's socket. Read through the library's transport when that
 * holds a descriptor: one load while the transport is the one the socket was
 * learned from, as forget_closed_socket drops the entry when the connection
 * ends. Else as the syscall tracepoints last saw it, asking for them if
 * need be. */
static __always_inline struct session_socket *session_socket(void *ctx, struct session_key *key)
{
	struct session_socket *known = bpf_map_lookup_elem(&session_sockets, key);
	__u64 transport = library_transport(ctx, key->conn_id);
	int fd;

	if (!transport)
		return known;
	if (known && known->sk && known->transport == transport)
		return known;
	fd = library_transport_fd(transport);
	if (fd >= 0)
		return remember_socket(key, fd, transport, known);
	if (!known)
		want_syscall_sockets(ctx);
	return known;
}

/*
 * A memory BIO (node's TLS sockets, Python's asyncio) makes no socket call
 * inside the library: the program reads the ciphertext from the socket, hands
 * it to the library and calls it, all on one thread. So in processes whose
 * sessions no call has named, each thread's last socket read is noted, and
 * names the session of the read or handshake call that follows.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32); /* tgid */
	__type(value, __u8);
} memory_bio_processes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);   /* pid_tgid */
	__type(value, __s32); /* the socket it read last */
} thread_socket_reads SEC(".maps");

/* Set once any process is marked: until then a read call's entry costs no
 * hash lookup (an array lookup is inlined to a load). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} memory_bio_seen SEC(".maps");

static __always_inline void mark_memory_bio_process(__u32 tgid)
{
	__u32 zero = 0, *seen = bpf_map_lookup_elem(&memory_bio_seen, &zero);
	__u8 yes = 1;

	if (seen && !*seen)
		*seen = 1;
	if (!bpf_map_lookup_elem(&memory_bio_processes, &tgid))
		bpf_map_update_elem(&memory_bio_processes, &tgid, &yes, BPF_ANY);
}

/* From the syscall tracepoints, outside any hooked call. */
static __always_inline void note_socket_read(__u64 pid_tgid, int fd)
{
	__u32 tgid = pid_tgid >> 32;
	__s32 socket_fd = fd;

	if (!bpf_map_lookup_elem(&memory_bio_processes, &tgid) || !may_be_socket(fd))
		return;
	bpf_map_update_elem(&thread_socket_reads, &pid_tgid, &socket_fd, BPF_ANY);
}

/* At a read or handshake call: the session's ciphertext came from the socket
 * this thread read last. Taken once, so that a call the program makes
 * without reading first cannot name its session after another socket. */
static __always_inline void name_from_socket_read(__u64 pid_tgid, __u64 conn_id)
{
	__u32 zero = 0, *seen = bpf_map_lookup_elem(&memory_bio_seen, &zero);
	struct session_socket *known;
	struct session_key key = {};
	__s32 *noted, fd;

	if (!seen || !*seen)
		return;
	noted = bpf_map_lookup_elem(&thread_socket_reads, &pid_tgid);
	if (!noted)
		return;
	fd = *noted;
	bpf_map_delete_elem(&thread_socket_reads, &pid_tgid);
	key.tgid = pid_tgid >> 32;
	key.conn_id = conn_id;
	known = bpf_map_lookup_elem(&session_sockets, &key);
	/* A session named from its transport keeps that name. */
	if (!known || !known->transport)
		remember_socket(&key, fd, 0, known);
}

/* Whether the session's transport holds no descriptor. Such a session asks
 * for the syscall tracepoints, before its data if it can: at its handshake. */
static __always_inline bool check_memory_bio(void *ctx, __u64 pid_tgid, __u64 conn_id)
{
	__u64 transport = library_transport(ctx, conn_id);

	if (!transport || library_transport_fd(transport) >= 0)
		return false;
	mark_memory_bio_process(pid_tgid >> 32);
	want_syscall_sockets(ctx);
	return true;
}

/* On a handshake call, in text mode. */
static __always_inline int check_socket_bio(void *ctx, __u64 conn_id)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();

	if (process_is_traced(pid_tgid) && check_memory_bio(ctx, pid_tgid, conn_id))
		name_from_socket_read(pid_tgid, conn_id);
	return 0;
}

static __always_inline int tls_call_enter(__u64 conn_id, __u64 buf, __u64 len_ptr,
					  enum data_direction direction,
					  enum length_source length_source)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct tls_call *outer, call = {};

	if (!process_is_traced(pid_tgid))
		return 0;
	/* SSL_write_ex may be built on SSL_write (BoringSSL): the outer call
	 * owns the bytes, the inner one only deepens the nesting. */
	outer = bpf_map_lookup_elem(&active_calls, &pid_tgid);
	if (outer && outer->depth && outer->conn_id == conn_id) {
		outer->depth++;
		return 0;
	}
	if (direction == DIRECTION_EGRESS)
		call.entered_ns = bpf_ktime_get_ns();
	else
		name_from_socket_read(pid_tgid, conn_id);
	call.conn_id = conn_id;
	call.buf = buf;
	call.len_ptr = len_ptr;
	call.fd = -1;
	call.depth = 1;
	call.direction = direction;
	call.length_source = length_source;
	if (outer)
		*outer = call;
	else
		bpf_map_update_elem(&active_calls, &pid_tgid, &call, BPF_ANY);
	return 0;
}


/* The three programs of a library whose calls take (session, buffer) first
 * and return the bytes moved: PREFIX_send_enter, PREFIX_recv_enter, and
 * PREFIX_call_return for both. */
#define TLS_CALL_PROBES(prefix)                                                                  \
	SEC("uprobe")                                                                            \
	int BPF_UPROBE(prefix##_send_enter, void *session, const void *buf)                     \
	{                                                                                        \
		return tls_call_enter((__u64)session, (__u64)buf, 0, DIRECTION_EGRESS,          \
				      LENGTH_FROM_RETURN);                                       \
	}                                                                                        \
	SEC("uprobe")                                                                            \
	int BPF_UPROBE(prefix##_recv_enter, void *session, void *buf)                           \
	{                                                                                        \
		return tls_call_enter((__u64)session, (__u64)buf, 0, DIRECTION_INGRESS,         \
				      LENGTH_FROM_RETURN);                                       \
	}                                                                                        \
	SEC("uretprobe")                                                                         \
	int BPF_URETPROBE(prefix##_call_return, long ret)                                        \
	{                                                                                        \
		return tls_call_exit(ctx, ret);                                                  \
	}

/* Processes whose code changed while the capture runs, for userspace to
 * look at: a program with the TLS library linked in (node) is hooked as it
 * starts, and a TLS library mapped from a file not hooked yet (a copy an
 * application bundles) as it is loaded. */
EVENT_CHANNEL(execs, 16 * 1024);

static __always_inline int report_process(void *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 pid = pid_tgid >> 32;

	if (process_is_traced(pid_tgid))
		OUTPUT_RECORD(ctx, execs, &pid, sizeof(pid), BPF_RB_FORCE_WAKEUP);
	return 0;
}

SEC("tracepoint/sched/sched_process_exec")
int notice_exec(void *ctx)
{
	return report_process(ctx);
}

/* void _dl_debug_state(void): the dynamic loader's hook for debuggers,
 * called once it has mapped libraries, at a program's start and at each
 * dlopen. */
SEC("uprobe")
int notice_library_load(struct pt_regs *ctx)
{
	return report_process(ctx);
}

#define ECAP_TCP_ESTABLISHED 1
#define ECAP_TCP_CLOSE 7

/* The record of sock:inet_sock_set_state, fixed since Linux 4.16. */
struct inet_sock_state_ctx {
	__u64 common;
	__u64 skaddr;
	int oldstate;
	int newstate;
};

/* A connection that ends takes its session's socket entry with it. */
SEC("tracepoint/sock/inet_sock_set_state")
int forget_closed_socket(struct inet_sock_state_ctx *ctx)
{
	__u64 sk = ctx->skaddr;
	struct session_socket *entry;
	struct session_key *key;

	if (ctx->oldstate != ECAP_TCP_ESTABLISHED && ctx->newstate != ECAP_TCP_CLOSE)
		return 0;
	key = bpf_map_lookup_elem(&socket_sessions, &sk);
	if (!key)
		return 0;
	entry = bpf_map_lookup_elem(&session_sockets, key);
	if (entry && entry->sk == sk)
		bpf_map_delete_elem(&session_sockets, key);
	bpf_map_delete_elem(&socket_sessions, &sk);
	return 0;
}

/* Sends `total` bytes at `buf` that the call on session `conn_id` moved
 * in `direction`, stamped `timestamp_ns`, with the session's socket. */
static __always_inline int emit_session_data(void *ctx, __u64 pid_tgid, __u64 conn_id, __u64 buf, __u64 total,
					     enum data_direction direction, __u64 timestamp_ns)
{
	struct session_key key = {};
	struct session_socket *sock;
	struct chunk_loop loop = {};
	struct data_event_header *ev = &loop.header;
	bool wake;

	key.tgid = pid_tgid >> 32;
	key.conn_id = conn_id;
	ev->timestamp_ns = timestamp_ns;
	ev->conn_id = conn_id;
	ev->total_len = total;
	ev->pid = pid_tgid >> 32;
	ev->tid = (__u32)pid_tgid;
	ev->uid = (__u32)bpf_get_current_uid_gid();
	ev->direction = direction;
	ev->source = TLS_CAPTURE_SOURCE;
	bpf_get_current_comm(ev->comm, sizeof(ev->comm));

	sock = session_socket(ctx, &key);
	if (sock) {
		ev->fd = sock->fd;
		ev->conn = sock->conn;
	} else {
		ev->fd = -1;
		mark_memory_bio_process(ev->pid);
	}
	loop.buf = buf;
	loop.total = total;
	/* A socket only procfs can name wakes the reader, which must name it
	 * while it is open: after its record is out, or (legacy) before, as
	 * sending the records may end in a tail call, and each one wakes the
	 * reader there anyway. */
	wake = sock && !sock->sk && !sock->woke_reader;
	if (wake)
		sock->woke_reader = 1;
#ifdef ECAPTURE_LEGACY_KERNEL
	if (wake)
		wake_reader(ctx);
	emit_chunks(ctx, &loop);
#else
	emit_chunks(ctx, &loop);
	if (wake)
		wake_reader(ctx);
#endif
	return 0;
}

static __always_inline int tls_call_exit(void *ctx, int ret)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct session_key key = {};
	struct tls_call *active, call;
	__u64 total = 0;

	active = bpf_map_lookup_elem(&active_calls, &pid_tgid);
	if (!active || !active->depth)
		return 0;
	if (active->depth > 1) {
		active->depth--;
		return 0;
	}
	call = *active;
	active->depth = 0;
	key.tgid = pid_tgid >> 32;
	key.conn_id = call.conn_id;
	/* A call that moved nothing may be a handshake's progress (node and
	 * Python's asyncio run theirs through SSL_read): a memory BIO asks for
	 * the tracepoints then, ahead of the session's first data. */
	if (ret <= 0 && !bpf_map_lookup_elem(&session_sockets, &key))
		check_memory_bio(ctx, pid_tgid, call.conn_id);

	if (call.length_source == LENGTH_FROM_POINTER) {
		/* The _ex functions return 1, the internal ones they call > 0. */
		if (ret <= 0)
			return 0;
		if (bpf_probe_read_user(&total, sizeof(total), (void *)call.len_ptr)) {
			/* How many bytes the call moved is unknown. */
			count_lost(1, 0);
			return 0;
		}
	} else {
		if (ret <= 0)
			return 0;
		total = ret;
	}
	if (!total)
		return 0;
	/* Writes are stamped when they begin and reads when they end: a
	 * peer's read of these bytes cannot then carry an earlier time. */
	return emit_session_data(ctx, pid_tgid, call.conn_id, call.buf, total, call.direction,
				 call.direction == DIRECTION_EGRESS ? call.entered_ns : bpf_ktime_get_ns());
}

/* Called from the syscall tracepoints below with the fd of a read or write. */
static __always_inline int note_socket_fd(long fd, bool is_read)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct session_socket *known;
	struct session_key key = {};
	struct tls_call *call;

	call = bpf_map_lookup_elem(&active_calls, &pid_tgid);
	if (!call || !call->depth) {
		if (is_read)
			note_socket_read(pid_tgid, fd);
		return 0;
	}
	if (call->fd == fd)
		return 0;
	call->fd = fd;

	key.tgid = pid_tgid >> 32;
	key.conn_id = call->conn_id;
	known = bpf_map_lookup_elem(&session_sockets, &key);
	/* A session named from its transport is kept by the return probe. */
	if (!known || !known->transport)
		remember_socket(&key, fd, 0, known);
	return 0;
}

#define NOTE_FD_OF_SYSCALL(name, is_read)                                    \
	SEC("tracepoint/syscalls/sys_enter_" #name)                          \
	int sys_enter_##name(struct syscall_enter_ctx *ctx)                  \
	{                                                                    \
		return note_socket_fd((long)ctx->args[0], is_read);          \
	}

NOTE_FD_OF_SYSCALL(read, true)
NOTE_FD_OF_SYSCALL(write, false)
NOTE_FD_OF_SYSCALL(readv, true)
NOTE_FD_OF_SYSCALL(writev, false)
NOTE_FD_OF_SYSCALL(recvfrom, true)
NOTE_FD_OF_SYSCALL(sendto, false)
NOTE_FD_OF_SYSCALL(recvmsg, true)
NOTE_FD_OF_SYSCALL(sendmsg, false)

#endif
