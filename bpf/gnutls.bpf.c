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
#include "keylog_channel.h"

/* A session's transport is whatever the program set (an fd cast to a
 * pointer, or its own object): its socket is named from the syscalls GnuTLS
 * makes inside each call. */
static __always_inline __u64 library_transport(void *ctx, __u64 session)
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

/* Where a session keeps what the key log needs, from the library's own
 * accessors (src/modules/gnutls/keylog.rs): gnutls_session_get_random,
 * gnutls_session_get_master_secret, gnutls_protocol_get_version. */
struct gnutls_settings {
	__u32 client_random;
	__u32 master_secret;
	__u32 version_entry; /* the session's protocol entry */
	__u32 version_id;    /* its gnutls_protocol_t */
};

DECLARE_SETTINGS(struct gnutls_settings, gnutls_settings);

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
	ev = reserve_keylog_line(pid_tgid);
	if (!ev)
		return 0;
	set_keylog_label(ev, label);
	if (n > KEYLOG_SECRET_MAX)
		n = KEYLOG_SECRET_MAX;
	/* Keep the bound in the verifier's view after clang's rewrites. */
	asm volatile("" : "+r"(n));
	if (n > KEYLOG_SECRET_MAX || bpf_probe_read_user(ev->secret, n, secret)) {
		DISCARD_RECORD(ev);
		return 0;
	}
	return send_keylog_line(ctx, ev, (__u64)session + SETTING(gnutls_settings, client_random), n);
}

/* gnutls_protocol_t values */
#define GNUTLS_TLS1_3 5
#define TLS12_MASTER_SECRET_LEN 48

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1024);
	__type(key, __u64);
	__type(value, __u64);
} handshakes SEC(".maps");

/* int gnutls_handshake(gnutls_session_t session): a resumed TLS 1.2
 * session derives no secret, so its master secret is read when the
 * handshake completes (a full one's line comes twice, and is written once). */
SEC("uprobe")
int BPF_UPROBE(gnutls_handshake_enter, void *session)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u64 address = (__u64)session;

	if (process_is_traced(pid_tgid))
		bpf_map_update_elem(&handshakes, &pid_tgid, &address, BPF_ANY);
	return 0;
}

SEC("uretprobe")
int BPF_URETPROBE(gnutls_handshake_return, int ret)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct keylog_line_event *ev;
	__u64 *found, session, entry = 0, label_words[2];
	int version = 0;

	found = bpf_map_lookup_elem(&handshakes, &pid_tgid);
	if (!found)
		return 0;
	session = *found;
	bpf_map_delete_elem(&handshakes, &pid_tgid);
	if (ret != 0 ||
	    bpf_probe_read_user(&entry, sizeof(entry), (void *)(session + SETTING(gnutls_settings, version_entry))) ||
	    !entry ||
	    bpf_probe_read_user(&version, sizeof(version), (void *)(entry + SETTING(gnutls_settings, version_id))) ||
	    !version || version == GNUTLS_TLS1_3)
		return 0;
	ev = reserve_keylog_line(pid_tgid);
	if (!ev)
		return 0;
	/* "CLIENT_RANDOM" from immediates: a string constant would be global
	 * data, which kernels before 5.2 cannot load. */
	label_words[0] = 0x525f544e45494c43ULL; /* CLIENT_R */
	label_words[1] = 0x0000004d4f444e41ULL; /* ANDOM */
	__builtin_memcpy(ev->label, label_words, sizeof(label_words));
	if (bpf_probe_read_user(ev->secret, TLS12_MASTER_SECRET_LEN,
				(void *)(session + SETTING(gnutls_settings, master_secret)))) {
		DISCARD_RECORD(ev);
		return 0;
	}
	return send_keylog_line(ctx, ev, session + SETTING(gnutls_settings, client_random),
				TLS12_MASTER_SECRET_LEN);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
