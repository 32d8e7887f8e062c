/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* The channel of query events, and the calls under way that fill it: what
 * a database module's probes share. */
#ifndef ECAPTURE_QUERY_CHANNEL_H
#define ECAPTURE_QUERY_CHANNEL_H

#include "kernel_compat.h"
#include "traced_process.h"
#include "query_event.h"

EVENT_CHANNEL(events, 1024 * 1024); /* resized by userspace */
RECORD_SLOT(events, struct query_event);

/* A command under way on one thread: what every record of it carries. */
struct query_call {
	__u64 started_ns;
	__u64 connection;
	__u32 command;
	__u32 total_length;
	char user[QUERY_NAME_MAX];
	char client[QUERY_NAME_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64); /* pid_tgid */
	__type(value, struct query_call);
} query_calls SEC(".maps");

static __always_inline struct query_event *reserve_query_event(__u64 pid_tgid, const struct query_call *call,
								__u16 kind)
{
	struct query_event *ev = RESERVE_RECORD(events, sizeof(*ev));

	if (!ev) {
		count_lost(1, 0);
		return NULL;
	}
	ev->timestamp_ns = bpf_ktime_get_ns();
	ev->connection = call->connection;
	ev->duration_ns = 0;
	ev->pid = pid_tgid >> 32;
	ev->tid = (__u32)pid_tgid;
	ev->uid = (__u32)bpf_get_current_uid_gid();
	ev->command = call->command;
	ev->total_length = call->total_length;
	ev->code = 0;
	ev->kind = kind;
	ev->length = 0;
	ev->chunk = 0;
	ev->more = 0;
	__builtin_memset(ev->sqlstate, 0, sizeof(ev->sqlstate));
	bpf_get_current_comm(ev->comm, sizeof(ev->comm));
	if (kind == QUERY_DONE) {
		__builtin_memcpy(ev->user, call->user, sizeof(ev->user));
		__builtin_memcpy(ev->client, call->client, sizeof(ev->client));
	} else {
		ev->user[0] = 0;
		ev->client[0] = 0;
	}
	return ev;
}

static __always_inline void submit_query_event(void *ctx, struct query_event *ev)
{
	__u64 size = offsetof(struct query_event, text) + (ev->length & QUERY_TEXT_MAX);

	if (SUBMIT_RECORD(ctx, events, ev, size, 0))
		count_lost(1, ev->length);
}

/* Sends the text at `text` in records of QUERY_TEXT_MAX bytes: `length`
 * bytes of it, or up to its NUL when `length` is 0. */
static __always_inline void send_query_text(void *ctx, __u64 pid_tgid, const struct query_call *call,
					    const char *text, __u32 length)
{
	/* Unrolled: kernels before 5.3 load no loop. */
#pragma unroll
	for (int i = 0; i < QUERY_MAX_RECORDS; i++) {
		__u64 offset = (__u64)i * QUERY_TEXT_MAX;
		struct query_event *ev;
		long copied;
		bool more;

		if (length && offset >= length)
			return;
		ev = reserve_query_event(pid_tgid, call, QUERY_TEXT);
		if (!ev)
			return;
		ev->chunk = i;
		if (length) {
			__u64 n = length - offset;

			if (n > QUERY_TEXT_MAX)
				n = QUERY_TEXT_MAX;
			/* Keep the bound in the verifier's view after clang's rewrites. */
			asm volatile("" : "+r"(n));
			if (n > QUERY_TEXT_MAX || bpf_probe_read_user(ev->text, n, text + offset)) {
				DISCARD_RECORD(ev);
				count_lost(1, 0);
				return;
			}
			ev->length = n;
			ev->more = offset + n < length;
		} else {
			copied = bpf_probe_read_user_str(ev->text, sizeof(ev->text), text + offset);
			if (copied <= 0) {
				DISCARD_RECORD(ev);
				count_lost(1, 0);
				return;
			}
			ev->length = copied - 1;
			/* A full record may have the rest of the text after it. */
			ev->more = copied == sizeof(ev->text);
		}
		more = ev->more;
		submit_query_event(ctx, ev);
		if (!more)
			return;
	}
}

/* The command on this thread is done. */
static __always_inline void send_query_done(void *ctx, __u64 pid_tgid, __s32 code)
{
	struct query_call *call = bpf_map_lookup_elem(&query_calls, &pid_tgid);
	struct query_event *ev;

	if (!call)
		return;
	ev = reserve_query_event(pid_tgid, call, QUERY_DONE);
	if (ev) {
		ev->duration_ns = ev->timestamp_ns - call->started_ns;
		ev->code = code;
		submit_query_event(ctx, ev);
	}
	bpf_map_delete_elem(&query_calls, &pid_tgid);
}

#endif
