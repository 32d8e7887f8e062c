// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Interactive bash and zsh: each line the shell reads with its line editor
 * (readline; zsh's zle), and the exit status of the command those lines
 * ran, read from the shell's own variable when it next reads a command.
 */
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <stdbool.h>
#include <stddef.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "kernel_compat.h"
#include "traced_process.h"
#include "shell_event.h"

DECLARE_SETTINGS(struct shell_settings, shell_settings);

EVENT_CHANNEL(events, 1024 * 1024); /* resized by userspace */
RECORD_SLOT(events, struct shell_event);

/* Shells that read a line with their editor: only their commands are
 * reported, not those of every script. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u8);
} interactive_shells SEC(".maps");

static __always_inline struct shell_event *reserve_shell_event(__u64 pid_tgid, __u16 kind)
{
	struct shell_event *ev = RESERVE_RECORD(events, sizeof(*ev));

	if (!ev) {
		count_lost(1, 0);
		return NULL;
	}
	ev->timestamp_ns = bpf_ktime_get_ns();
	ev->pid = pid_tgid >> 32;
	ev->uid = (__u32)bpf_get_current_uid_gid();
	ev->status = 0;
	ev->kind = kind;
	ev->length = 0;
	ev->more = 0;
	ev->chunk = 0;
	ev->status_known = 0;
	bpf_get_current_comm(ev->comm, sizeof(ev->comm));
	return ev;
}

static __always_inline void submit_shell_event(void *ctx, struct shell_event *ev)
{
	__u64 size = offsetof(struct shell_event, text) + (ev->length & SHELL_TEXT_MAX);

	if (SUBMIT_RECORD(ctx, events, ev, size, 0))
		count_lost(1, ev->length);
}

/* Sends the NUL-terminated line at `line` in records of SHELL_TEXT_MAX
 * bytes; a line longer than SHELL_LINE_MAX_RECORDS of them ends with a
 * record whose `more` is still set. */
static __always_inline void send_line(void *ctx, __u64 pid_tgid, const char *line)
{
	__u32 pid = pid_tgid >> 32;
	__u8 yes = 1;

	bpf_map_update_elem(&interactive_shells, &pid, &yes, BPF_ANY);
	/* Unrolled: kernels before 5.3 load no loop. */
#pragma unroll
	for (int i = 0; i < SHELL_LINE_MAX_RECORDS; i++) {
		struct shell_event *ev = reserve_shell_event(pid_tgid, SHELL_LINE);
		long copied;

		if (!ev)
			return;
		copied = bpf_probe_read_user_str(ev->text, sizeof(ev->text), line + i * SHELL_TEXT_MAX);
		if (copied <= 0) {
			DISCARD_RECORD(ev);
			count_lost(1, 0);
			return;
		}
		ev->length = copied - 1;
		ev->chunk = i;
		/* A full record may have the rest of the line after it. */
		ev->more = copied == sizeof(ev->text);
		submit_shell_event(ctx, ev);
		if (copied != sizeof(ev->text))
			return;
	}
}

/* Reports the status of the command that just ended, read from the shell's
 * variable. Its address follows from the probe's: the probe's address
 * modulo 16 is known, and the instruction pointer is at most a byte past
 * the probe when the program runs (x86 reports the byte after int3 on some
 * kernels). */
static __always_inline void send_command_done(struct pt_regs *ctx, __u64 pid_tgid, __u16 kind, __s32 status,
					      bool status_known)
{
	__u32 pid = pid_tgid >> 32;
	struct shell_event *ev;

	if (!bpf_map_lookup_elem(&interactive_shells, &pid))
		return;
	ev = reserve_shell_event(pid_tgid, kind);
	if (!ev)
		return;
	if (!status_known) {
		__u64 rest = SETTING(shell_settings, probe_address_rest);
		__u64 probe = ((PT_REGS_IP(ctx) - rest) & ~15ULL) + rest;
		__u64 variable = probe + SETTING(shell_settings, status_from_probe);

		status_known = !bpf_probe_read_user(&status, sizeof(status), (void *)variable);
	}
	ev->status = status;
	ev->status_known = status_known;
	submit_shell_event(ctx, ev);
	if (kind == SHELL_EXIT)
		bpf_map_delete_elem(&interactive_shells, &pid);
}

/* char *readline(const char *prompt): the line, without its line break; NULL at end of input. */
SEC("uretprobe")
int BPF_URETPROBE(bash_readline_return, const char *line)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();

	if (line && process_is_traced(pid_tgid))
		send_line(ctx, pid_tgid, line);
	return 0;
}

/* int read_command(void): bash reads its next command, so the last one is done. */
SEC("uprobe")
int BPF_UPROBE(bash_read_command_enter)
{
	send_command_done(ctx, bpf_get_current_pid_tgid(), SHELL_COMMAND_DONE, 0, false);
	return 0;
}

/* void exit_shell(int status) (bash); void zexit(int status, enum zexit_t from) (zsh) */
SEC("uprobe")
int BPF_UPROBE(shell_exit_enter, int status)
{
	send_command_done(ctx, bpf_get_current_pid_tgid(), SHELL_EXIT, status, true);
	return 0;
}

/* zsh's zleentry(int cmd, ...) with cmd ZLE_CMD_READ takes (char **lprompt,
 * char **rprompt, int flags, int context) and returns the line read. */
#define ZLE_CMD_READ 1
#define ZLCON_LINE_START 0
#define ZLCON_LINE_CONT 1

/* The context of each thread's zleentry(ZLE_CMD_READ) under way. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u32);
} zle_reads SEC(".maps");

SEC("uprobe")
int BPF_UPROBE(zsh_zleentry_enter, int cmd)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 context = (__u32)PT_REGS_PARM5(ctx);

	if (cmd != ZLE_CMD_READ || !process_is_traced(pid_tgid))
		return 0;
	/* A new command line (not vared's or select's prompt): the last one is done. */
	if (context == ZLCON_LINE_START)
		send_command_done(ctx, pid_tgid, SHELL_COMMAND_DONE, 0, false);
	bpf_map_update_elem(&zle_reads, &pid_tgid, &context, BPF_ANY);
	return 0;
}

SEC("uretprobe")
int BPF_URETPROBE(zsh_zleentry_return, const char *line)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 *context = bpf_map_lookup_elem(&zle_reads, &pid_tgid);
	bool command_line;

	if (!context)
		return 0;
	command_line = *context == ZLCON_LINE_START || *context == ZLCON_LINE_CONT;
	bpf_map_delete_elem(&zle_reads, &pid_tgid);
	if (command_line && line)
		send_line(ctx, pid_tgid, line);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
