// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * MariaDB and MySQL servers: every command a connection sends, as
 * dispatch_command runs it, with its text whole, the error the server sent
 * back for it, and how long it took.
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

/* Where THD keeps who a connection is, read from the server's plugin
 * accessors (thd_get_thread_id, thd_user_name, thd_client_ip); 0: unknown. */
struct mysqld_settings {
	__u32 thread_id;        /* THD's thread id */
	__u32 security_context; /* THD's pointer to its Security_context */
	__u32 user;             /* Security_context's user name pointer */
	__u32 client_ip;        /* Security_context's client address pointer */
	__u32 client_host;      /* Security_context's host name pointer, for local clients */
	/* 1: dispatch_command(THD *, const COM_DATA *, enum_server_command)
	 * (MySQL 5.7, 8.0); 0: dispatch_command(enum_server_command, THD *,
	 * char *packet, uint length, ...) (MariaDB, MySQL 5.6). */
	__u8 com_data;
	/* 1: Protocol::net_send_error(THD *, uint, const char *, const char *)
	 * (MariaDB); 0: Protocol_classic::send_error(uint, const char *, const char *) (MySQL). */
	__u8 error_takes_thd;
	__u8 _pad[2];
};

DECLARE_SETTINGS(struct mysqld_settings, mysqld_settings);

/* enum_server_command values with text after the command byte. */
#define COM_INIT_DB 2
#define COM_QUERY 3
#define COM_STMT_PREPARE 22

static __always_inline void read_identity(struct query_call *call, __u64 thd)
{
	__u32 thread_id = SETTING(mysqld_settings, thread_id);
	__u32 context_at = SETTING(mysqld_settings, security_context);
	__u64 context = 0, name = 0;

	if (thread_id)
		bpf_probe_read_user(&call->connection, sizeof(call->connection), (void *)(thd + thread_id));
	if (!context_at || bpf_probe_read_user(&context, sizeof(context), (void *)(thd + context_at)) || !context)
		return;
	if (!bpf_probe_read_user(&name, sizeof(name), (void *)(context + SETTING(mysqld_settings, user))) && name)
		bpf_probe_read_user_str(call->user, sizeof(call->user), (void *)name);
	name = 0;
	if (!bpf_probe_read_user(&name, sizeof(name), (void *)(context + SETTING(mysqld_settings, client_ip))) && name &&
	    bpf_probe_read_user_str(call->client, sizeof(call->client), (void *)name) > 1)
		return;
	/* A client on the local socket has no address, only the host name "localhost". */
	name = 0;
	if (!bpf_probe_read_user(&name, sizeof(name), (void *)(context + SETTING(mysqld_settings, client_host))) && name)
		bpf_probe_read_user_str(call->client, sizeof(call->client), (void *)name);
}

SEC("uprobe")
int BPF_UPROBE(mysqld_dispatch_enter)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct query_call call = {};
	__u64 thd, text = 0, com_data;
	__u32 length = 0;

	if (!process_is_traced(pid_tgid))
		return 0;
	/* A command a command runs (MariaDB's COM_MULTI) stays part of it. */
	if (bpf_map_lookup_elem(&query_calls, &pid_tgid))
		return 0;
	call.started_ns = bpf_ktime_get_ns();
	if (SETTING(mysqld_settings, com_data)) {
		thd = PT_REGS_PARM1(ctx);
		com_data = PT_REGS_PARM2(ctx);
		call.command = (__u32)PT_REGS_PARM3(ctx);
		/* COM_DATA's query, prepare and init_db members: a pointer, then the length. */
		if (call.command == COM_QUERY || call.command == COM_STMT_PREPARE || call.command == COM_INIT_DB) {
			bpf_probe_read_user(&text, sizeof(text), (void *)com_data);
			bpf_probe_read_user(&length, sizeof(length), (void *)(com_data + 8));
		}
	} else {
		call.command = (__u32)PT_REGS_PARM1(ctx);
		thd = PT_REGS_PARM2(ctx);
		text = PT_REGS_PARM3(ctx);
		length = (__u32)PT_REGS_PARM4(ctx);
	}
	call.total_length = length;
	read_identity(&call, thd);
	bpf_map_update_elem(&query_calls, &pid_tgid, &call, BPF_ANY);
	if (text && length)
		send_query_text(ctx, pid_tgid, &call, (const char *)text, length);
	return 0;
}

SEC("uretprobe")
int BPF_URETPROBE(mysqld_dispatch_return, int ret)
{
	send_query_done(ctx, bpf_get_current_pid_tgid(), ret & 0xff);
	return 0;
}

/* The error the server sends for the command under way on this thread. */
SEC("uprobe")
int BPF_UPROBE(mysqld_error_enter)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct query_call *call = bpf_map_lookup_elem(&query_calls, &pid_tgid);
	bool takes_thd = SETTING(mysqld_settings, error_takes_thd);
	/* Each argument read once, whichever is used: a context pointer the
	 * compiler offsets by a branch's choice is one the verifier refuses. */
	__u64 second = PT_REGS_PARM2(ctx), third = PT_REGS_PARM3(ctx);
	__u64 fourth = PT_REGS_PARM4(ctx), fifth = PT_REGS_PARM5(ctx);
	struct query_event *ev;
	__u64 message, sqlstate;

	if (!call)
		return 0;
	ev = reserve_query_event(pid_tgid, call, QUERY_ERROR);
	if (!ev)
		return 0;
	ev->code = (__s32)(takes_thd ? third : second);
	message = takes_thd ? fourth : third;
	sqlstate = takes_thd ? fifth : fourth;
	if (sqlstate)
		bpf_probe_read_user(ev->sqlstate, 5, (void *)sqlstate);
	if (message) {
		long copied = bpf_probe_read_user_str(ev->text, sizeof(ev->text), (void *)message);

		if (copied > 0)
			ev->length = copied - 1;
	}
	submit_query_event(ctx, ev);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
