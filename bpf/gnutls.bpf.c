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
 * and gnutls_record_send2(session, data, size, pad, flags) */
SEC("uprobe")
int BPF_UPROBE(gnutls_send_enter, void *session, const void *data)
{
	return tls_call_enter((__u64)session, (__u64)data, 0, DIRECTION_EGRESS, LENGTH_FROM_RETURN);
}

/* ssize_t gnutls_record_recv(gnutls_session_t session, void *data, size_t size),
 * and gnutls_record_recv_seq(session, data, size, seq) */
SEC("uprobe")
int BPF_UPROBE(gnutls_recv_enter, void *session, void *data)
{
	return tls_call_enter((__u64)session, (__u64)data, 0, DIRECTION_INGRESS, LENGTH_FROM_RETURN);
}

SEC("uretprobe")
int BPF_URETPROBE(gnutls_call_return, long ret)
{
	return tls_call_exit(ctx, ret);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
