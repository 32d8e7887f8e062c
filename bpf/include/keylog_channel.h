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

#endif
