/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* The channel of key log lines that a library's probes fill, for libraries
 * that hand out secrets with their labels (GnuTLS, NSS). */
#ifndef ECAPTURE_KEYLOG_CHANNEL_H
#define ECAPTURE_KEYLOG_CHANNEL_H

#include "kernel_compat.h"
#include "keylog_line.h"

EVENT_CHANNEL(keylog_lines, 256 * 1024);
RECORD_SLOT(keylog_lines, struct keylog_line_event);

/* A zeroed line of process pid_tgid, stamped with the time and its command;
 * NULL when the channel is full. */
static __always_inline struct keylog_line_event *reserve_keylog_line(__u64 pid_tgid)
{
	struct keylog_line_event *ev = RESERVE_RECORD(keylog_lines, sizeof(*ev));

	if (!ev)
		return NULL;
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->timestamp_ns = bpf_ktime_get_ns();
	ev->pid = pid_tgid >> 32;
	bpf_get_current_comm(ev->comm, sizeof(ev->comm));
	return ev;
}

/* Puts the NUL-terminated label at `label` in the line, or, when the probe
 * cannot read it, its address for userspace to read. */
static __always_inline void set_keylog_label(struct keylog_line_event *ev, const char *label)
{
	if (bpf_probe_read_user_str(ev->label, sizeof(ev->label), label) <= 0) {
		__builtin_memset(ev->label, 0, sizeof(ev->label));
		ev->label_address = (__u64)label;
	}
}

/* Reads the session's client random from `client_random` and sends the
 * line with `secret_len` bytes of secret; drops it if the random cannot be
 * read. */
static __always_inline int send_keylog_line(void *ctx, struct keylog_line_event *ev, __u64 client_random,
					    __u32 secret_len)
{
	if (bpf_probe_read_user(ev->client_random, sizeof(ev->client_random), (void *)client_random)) {
		DISCARD_RECORD(ev);
		return 0;
	}
	ev->secret_len = secret_len;
	SUBMIT_RECORD(ctx, keylog_lines, ev, sizeof(*ev), 0);
	return 0;
}

#endif
