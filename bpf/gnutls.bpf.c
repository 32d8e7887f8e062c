// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Plaintext of GnuTLS sessions, from its record send and receive calls. */
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <stdbool.h>
#include <stddef.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#define TLS_CAPTURE_SOURCE SOURCE_GNUTLS
#include "tls_capture.h"
#include "keylog_line.h"

/* A session's transport is whatever the program set (an fd cast to a
 * pointer, or its own object): its socket is named from the syscalls GnuTLS
 * makes inside each call. */
static __always_inline __u64 library_transport(__u64 session)
{
	return 0;
}

static __always_inline int library_transport_fd(__u64 transport)
{
	return -1;
}

/* ssize_t gnutls_record_send(gnutls_session_t session, const void *data, size_t size),
 * gnutls_record_send2(session, data, size, pad, flags); gnutls_record_recv(session, data,
 * size) and gnutls_record_recv_seq(session, data, size, seq) */
TLS_CALL_PROBES(gnutls)

/* Where a session keeps its client random, from the library's own
 * gnutls_session_get_random (src/modules/gnutls/keylog.rs). */
struct gnutls_settings {
	__u32 client_random;
	__u32 _pad;
};

DECLARE_SETTINGS(struct gnutls_settings, gnutls_settings);

EVENT_CHANNEL(keylog_lines, 256 * 1024);
RECORD_SLOT(keylog_lines, struct keylog_line_event);

/* void _gnutls_call_keylog_func(gnutls_session_t session, const char *label,
 *                               const uint8_t *data, unsigned size):
 * every secret GnuTLS derives, TLS 1.3's and TLS 1.2's master secret. */
SEC("uprobe")
int BPF_UPROBE(gnutls_keylog_enter, void *session, const char *label, const void *secret, unsigned int size)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct keylog_line_event *ev;
	__u64 n = size;

	if (!process_is_traced(pid_tgid))
		return 0;
	ev = RESERVE_RECORD(keylog_lines, sizeof(*ev));
	if (!ev)
		return 0;
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->timestamp_ns = bpf_ktime_get_ns();
	ev->pid = pid_tgid >> 32;
	bpf_get_current_comm(ev->comm, sizeof(ev->comm));
	bpf_probe_read_user_str(ev->label, sizeof(ev->label), label);
	if (n > KEYLOG_SECRET_MAX)
		n = KEYLOG_SECRET_MAX;
	/* Keep the bound in the verifier's view after clang's rewrites. */
	asm volatile("" : "+r"(n));
	if (n > KEYLOG_SECRET_MAX || bpf_probe_read_user(ev->secret, n, secret) ||
	    bpf_probe_read_user(ev->client_random, sizeof(ev->client_random),
				(void *)((__u64)session + SETTING(gnutls_settings, client_random)))) {
		DISCARD_RECORD(ev);
		return 0;
	}
	ev->secret_len = n;
	SUBMIT_RECORD(ctx, keylog_lines, ev, sizeof(*ev), 0);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
