// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * PostgreSQL backends: every message a client sends that runs something
 * (a simple query, and the extended protocol's parse, bind and execute),
 * whole, as the backend reads it, with the error it sends back and how long
 * it took. The backend reads a message's type with pq_getbyte and its body
 * with pq_getmessage, builds an error response in a StringInfo it hands to
 * pq_endmessage, and calls ReadyForQuery when a query, or a sync of the
 * extended protocol, is done.
 */
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <stdbool.h>
#include <stddef.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "kernel_compat.h"
#include "traced_process.h"
#include "query_channel.h"

/* StringInfoData { char *data; int len; int maxlen; int cursor; }; a
 * message under construction keeps its type in cursor (pq_beginmessage). */
#define STRINGINFO_DATA 0
#define STRINGINFO_LEN 8
#define STRINGINFO_CURSOR 16

/* The message type each thread read last, until its body is read. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, __u32);
} message_types SEC(".maps");

/* The StringInfo each thread's pq_getmessage fills. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, __u64);
} message_buffers SEC(".maps");

/* Messages that begin something: Query, Parse, Bind, Execute, FunctionCall,
 * Describe, Close, Sync, Flush, Terminate. COPY's data messages are part of
 * the query that started the copy. */
static __always_inline bool begins_command(__u32 type)
{
	switch (type) {
	case 'Q': case 'P': case 'B': case 'E': case 'F':
	case 'D': case 'C': case 'S': case 'H': case 'X':
		return true;
	default:
		return false;
	}
}

/* Only these carry text worth sending. */
static __always_inline bool carries_text(__u32 type)
{
	return type == 'Q' || type == 'P' || type == 'B' || type == 'E' || type == 'F';
}

/* int pq_getbyte(void): the type of the next message. */
SEC("uretprobe")
int BPF_URETPROBE(postgres_getbyte_return, int type)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 value = type;

	if (type > 0 && begins_command(value) && process_is_traced(pid_tgid))
		bpf_map_update_elem(&message_types, &pid_tgid, &value, BPF_ANY);
	return 0;
}

/* int pq_getmessage(StringInfo s, int maxlen) */
SEC("uprobe")
int BPF_UPROBE(postgres_getmessage_enter, void *buffer)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u64 address = (__u64)buffer;

	if (bpf_map_lookup_elem(&message_types, &pid_tgid))
		bpf_map_update_elem(&message_buffers, &pid_tgid, &address, BPF_ANY);
	return 0;
}

SEC("uretprobe")
int BPF_URETPROBE(postgres_getmessage_return, int ret)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 *type = bpf_map_lookup_elem(&message_types, &pid_tgid);
	__u64 *buffer = bpf_map_lookup_elem(&message_buffers, &pid_tgid);
	struct query_call call = {};
	__u64 data = 0;
	__s32 length = 0;

	if (!type || !buffer) {
		if (type)
			bpf_map_delete_elem(&message_types, &pid_tgid);
		return 0;
	}
	call.command = *type;
	bpf_probe_read_user(&data, sizeof(data), (void *)(*buffer + STRINGINFO_DATA));
	bpf_probe_read_user(&length, sizeof(length), (void *)(*buffer + STRINGINFO_LEN));
	bpf_map_delete_elem(&message_types, &pid_tgid);
	bpf_map_delete_elem(&message_buffers, &pid_tgid);
	if (ret != 0)
		return 0;
	/* The message before this one is done. */
	send_query_done(ctx, pid_tgid, 0);
	/* The backend's pid is the session's id. */
	call.started_ns = bpf_ktime_get_ns();
	call.total_length = length > 0 && carries_text(call.command) ? length : 0;
	bpf_map_update_elem(&query_calls, &pid_tgid, &call, BPF_ANY);
	if (data && call.total_length)
		send_query_text(ctx, pid_tgid, &call, (const char *)data, call.total_length);
	return 0;
}

/* void ReadyForQuery(CommandDest dest): the query, or the sync, is done. */
SEC("uprobe")
int BPF_UPROBE(postgres_ready_enter)
{
	send_query_done(ctx, bpf_get_current_pid_tgid(), 0);
	return 0;
}

/* void pq_endmessage(StringInfo buf): an ErrorResponse ('E') is the error
 * of the message under way; its fields go as the text. */
SEC("uprobe")
int BPF_UPROBE(postgres_endmessage_enter, void *buffer)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct query_call *call = bpf_map_lookup_elem(&query_calls, &pid_tgid);
	struct query_event *ev;
	__s32 type = 0, length = 0;
	__u64 data = 0, n;

	if (!call)
		return 0;
	if (bpf_probe_read_user(&type, sizeof(type), buffer + STRINGINFO_CURSOR) || type != 'E')
		return 0;
	bpf_probe_read_user(&data, sizeof(data), buffer + STRINGINFO_DATA);
	bpf_probe_read_user(&length, sizeof(length), buffer + STRINGINFO_LEN);
	if (!data || length <= 0)
		return 0;
	ev = reserve_query_event(pid_tgid, call, QUERY_ERROR);
	if (!ev)
		return 0;
	n = length;
	if (n > QUERY_TEXT_MAX)
		n = QUERY_TEXT_MAX;
	/* Keep the bound in the verifier's view after clang's rewrites. */
	asm volatile("" : "+r"(n));
	if (n > QUERY_TEXT_MAX || bpf_probe_read_user(ev->text, n, (void *)data)) {
		DISCARD_RECORD(ev);
		return 0;
	}
	ev->length = n;
	submit_query_event(ctx, ev);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
