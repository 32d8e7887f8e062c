// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Plaintext of OpenSSL and BoringSSL sessions, from the read/write API. */
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <stdbool.h>
#include <stddef.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "tls_capture.h"

/* int SSL_write(SSL *ssl, const void *buf, int num) */
SEC("uprobe")
int BPF_UPROBE(ssl_write_enter, void *ssl, const void *buf)
{
	return tls_call_enter((__u64)ssl, (__u64)buf, 0, DIRECTION_EGRESS, LENGTH_FROM_RETURN);
}

/* int SSL_read(SSL *ssl, void *buf, int num) */
SEC("uprobe")
int BPF_UPROBE(ssl_read_enter, void *ssl, void *buf)
{
	return tls_call_enter((__u64)ssl, (__u64)buf, 0, DIRECTION_INGRESS, LENGTH_FROM_RETURN);
}

/* int SSL_write_ex(SSL *ssl, const void *buf, size_t num, size_t *written) */
SEC("uprobe")
int BPF_UPROBE(ssl_write_ex_enter, void *ssl, const void *buf, size_t num, size_t *written)
{
	return tls_call_enter((__u64)ssl, (__u64)buf, (__u64)written, DIRECTION_EGRESS,
			      LENGTH_FROM_POINTER);
}

/* int SSL_read_ex(SSL *ssl, void *buf, size_t num, size_t *readbytes) */
SEC("uprobe")
int BPF_UPROBE(ssl_read_ex_enter, void *ssl, void *buf, size_t num, size_t *readbytes)
{
	return tls_call_enter((__u64)ssl, (__u64)buf, (__u64)readbytes, DIRECTION_INGRESS,
			      LENGTH_FROM_POINTER);
}

/* One return probe serves all four: the entry recorded how to read the length. */
SEC("uretprobe")
int BPF_URETPROBE(ssl_call_return, int ret)
{
	return tls_call_exit(ret);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
