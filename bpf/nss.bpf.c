// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * NSS (Firefox, Thunderbird, NSS's tools): plaintext from the SSL layer's
 * own I/O methods in libssl3, and secrets from softoken, where NSS keeps
 * them (src/modules/nss).
 */
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <stdbool.h>
#include <stddef.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#define TLS_CAPTURE_SOURCE SOURCE_NSS
#include "tls_capture.h"
#include "keylog_channel.h"

/* Where the library keeps what the probes read, found in the libraries
 * themselves (src/modules/nss). */
struct nss_settings {
	__u32 layer_secret;  /* PRFileDesc's private state */
	__u32 layer_lower;   /* PRFileDesc's next layer down */
	__u32 layer_identity; /* PRFileDesc's layer identity */
	__u32 secret_osfd;   /* the descriptor, in the bottom layer's private state */
	__u32 client_random; /* in sslSocket */
	__u32 key_handle;    /* PK11SymKey's softoken object handle */
};

DECLARE_SETTINGS(struct nss_settings, nss_settings);

/* NSPR's bottom layer, the one holding the descriptor (PR_NSPR_IO_LAYER). */
#define NSPR_IO_LAYER 0
/* Firefox stacks a few layers over the SSL one; SSL sits on the socket. */
#define MAX_LAYERS_BELOW 4

/* The SSL layer's session is its PRFileDesc; its transport is the bottom
 * layer below it, when that is NSPR's own (a socket, not an emulation). */
static __always_inline __u64 library_transport(void *ctx, __u64 ssl_layer)
{
	__u64 layer = ssl_layer, lower;
	int identity = -1;

#pragma unroll
	for (int i = 0; i < MAX_LAYERS_BELOW; i++) {
		lower = read_user_word(layer + SETTING(nss_settings, layer_lower));
		if (!lower)
			break;
		layer = lower;
	}
	if (layer == ssl_layer ||
	    bpf_probe_read_user(&identity, sizeof(identity), (void *)(layer + SETTING(nss_settings, layer_identity))) ||
	    identity != NSPR_IO_LAYER)
		return 0;
	return layer;
}

static __always_inline int library_transport_fd(__u64 bottom_layer)
{
	__u64 secret = read_user_word(bottom_layer + SETTING(nss_settings, layer_secret));
	int fd = -1;

	if (!secret || bpf_probe_read_user(&fd, sizeof(fd), (void *)(secret + SETTING(nss_settings, secret_osfd))))
		return -1;
	return fd;
}

/* PRInt32 ssl_Write(PRFileDesc *fd, const void *buf, PRInt32 len), ssl_Send(fd, buf, len,
 * flags, timeout), which PR_Writev's buffers go through; ssl_Read(fd, buf, len) and
 * ssl_Recv(fd, buf, len, flags, timeout). tls_call_exit reads the PRInt32 returned. */
TLS_CALL_PROBES(nss)

/*
 * Secrets. libssl3 holds only handles to its keys; their bytes live in
 * softoken, which stores each derived key's value as the object's CKA_VALUE
 * inside C_DeriveKey. That store is noted per thread, and kept under the
 * handle C_DeriveKey returns; when libssl3 then hands a secret to its key
 * log call (compiled empty, but called), the handle finds the bytes.
 */
#define CKA_VALUE 0x11
#define CKR_OK 0
#define SECRETS_PER_HOST 16384

struct secret_value {
	__u32 len;
	__u8 bytes[KEYLOG_SECRET_MAX];
};

struct derive_call {
	__u64 handle_out; /* CK_OBJECT_HANDLE_PTR phKey */
	struct secret_value value;
};

struct derived_key {
	__u32 tgid;
	__u32 _pad;
	__u64 handle;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1024);
	__type(key, __u64);
	__type(value, struct derive_call);
} derive_calls SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SECRETS_PER_HOST);
	__type(key, struct derived_key);
	__type(value, struct secret_value);
} derived_secrets SEC(".maps");

/* CK_RV NSC_DeriveKey(CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE hBaseKey,
 *                     CK_ATTRIBUTE_PTR, CK_ULONG, CK_OBJECT_HANDLE_PTR phKey);
 * nss_derive_return ends NSC_UnwrapKey's calls too. */
SEC("uprobe")
int BPF_UPROBE(nss_derive_enter)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct derive_call call = {};

	if (!process_is_traced(pid_tgid))
		return 0;
	call.handle_out = PT_REGS_PARM6(ctx);
	bpf_map_update_elem(&derive_calls, &pid_tgid, &call, BPF_ANY);
	return 0;
}

/* CK_RV NSC_UnwrapKey(CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE, CK_BYTE_PTR,
 *                     CK_ULONG, CK_ATTRIBUTE_PTR, CK_ULONG, CK_OBJECT_HANDLE_PTR phKey):
 * a resumed TLS 1.2 session's master secret, unwrapped from the session
 * cache. phKey is the eighth argument: x7 on arm64; on x86-64 the second
 * stack slot above the return address, as the probe sits on the first
 * instruction. */
SEC("uprobe")
int BPF_UPROBE(nss_unwrap_enter)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct derive_call call = {};

	if (!process_is_traced(pid_tgid))
		return 0;
#if defined(__TARGET_ARCH_arm64)
	call.handle_out = PT_REGS_PARM8(ctx);
#else
	if (bpf_probe_read_user(&call.handle_out, sizeof(call.handle_out), (void *)(PT_REGS_SP(ctx) + 16)))
		return 0;
#endif
	bpf_map_update_elem(&derive_calls, &pid_tgid, &call, BPF_ANY);
	return 0;
}

/* CK_RV sftk_forceAttribute(SFTKObject *, CK_ATTRIBUTE_TYPE, const void *value, unsigned int len),
 * and sftk_AddAttributeType(object, type, value, len) */
SEC("uprobe")
int BPF_UPROBE(nss_attribute_enter, void *object, __u64 type, const void *value, __u32 len)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct derive_call *call;
	__u64 n = len;

	if (type != CKA_VALUE || !n || n > KEYLOG_SECRET_MAX)
		return 0;
	call = bpf_map_lookup_elem(&derive_calls, &pid_tgid);
	if (!call)
		return 0;
	asm volatile("" : "+r"(n));
	if (n > KEYLOG_SECRET_MAX || bpf_probe_read_user(call->value.bytes, n, value))
		return 0;
	call->value.len = n;
	return 0;
}

SEC("uretprobe")
int BPF_URETPROBE(nss_derive_return, long ret)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct derived_key key = {.tgid = pid_tgid >> 32};
	struct derive_call *call;

	call = bpf_map_lookup_elem(&derive_calls, &pid_tgid);
	if (!call)
		return 0;
	if (ret == CKR_OK && call->value.len && call->handle_out &&
	    !bpf_probe_read_user(&key.handle, sizeof(key.handle), (void *)call->handle_out))
		bpf_map_update_elem(&derived_secrets, &key, &call->value, BPF_ANY);
	bpf_map_delete_elem(&derive_calls, &pid_tgid);
	return 0;
}

/* void ssl3_RecordKeyLog(sslSocket *ss, const char *label, PK11SymKey *secret) */
SEC("uprobe")
int BPF_UPROBE(nss_keylog_enter, void *ss, const char *label, void *symkey)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct derived_key key = {.tgid = pid_tgid >> 32};
	struct keylog_line_event *ev;
	struct secret_value *secret;
	__u32 n;

	if (!process_is_traced(pid_tgid) ||
	    bpf_probe_read_user(&key.handle, sizeof(key.handle),
				(void *)((__u64)symkey + SETTING(nss_settings, key_handle))))
		return 0;
	secret = bpf_map_lookup_elem(&derived_secrets, &key);
	if (!secret)
		return 0;
	n = secret->len;
	if (!n || n > KEYLOG_SECRET_MAX)
		return 0;
	ev = reserve_keylog_line(pid_tgid);
	if (!ev)
		return 0;
	set_keylog_label(ev, label);
	__builtin_memcpy(ev->secret, secret->bytes, sizeof(ev->secret));
	return send_keylog_line(ctx, ev, (__u64)ss + SETTING(nss_settings, client_random), n);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
