// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Go's crypto/tls, linked into each Go program: its secrets, from the
 * function every one of them goes through (src/modules/gotls). Entry probes
 * only: Go moves goroutine stacks, and a uretprobe's trampoline would break
 * them.
 */
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <stdbool.h>
#include <stddef.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#define TLS_CAPTURE_SOURCE SOURCE_GO
#include "tls_capture.h"
#include "keylog_channel.h"

/* No data path yet: sessions have no transport to name. */
static __always_inline __u64 library_transport(__u64 conn)
{
	return 0;
}

static __always_inline int library_transport_fd(__u64 transport)
{
	return -1;
}

/* Go's register ABI (Go 1.17 on x86-64, 1.18 on arm64): the integer
 * arguments, in order. */
#if defined(__TARGET_ARCH_x86)
#define GO_ARGUMENTS(ctx)                                                                 \
	{                                                                                 \
		(ctx)->rax, (ctx)->rbx, (ctx)->rcx, (ctx)->rdi, (ctx)->rsi, (ctx)->r8,    \
			(ctx)->r9, (ctx)->r10, (ctx)->r11                                 \
	}
typedef struct pt_regs go_regs;
#elif defined(__TARGET_ARCH_arm64)
#define GO_ARGUMENTS(ctx)                                                                 \
	{                                                                                 \
		(ctx)->regs[0], (ctx)->regs[1], (ctx)->regs[2], (ctx)->regs[3],           \
			(ctx)->regs[4], (ctx)->regs[5], (ctx)->regs[6], (ctx)->regs[7],   \
			(ctx)->regs[8]                                                    \
	}
typedef struct user_pt_regs go_regs;
#else
#error "Go's register ABI is read on x86-64 and arm64 only"
#endif

/* func (c *Config) writeKeyLog(label string, clientRandom, secret []byte) error:
 * c, then label (pointer, length), clientRandom and secret (pointer, length,
 * capacity). Called for every secret whether or not the program set a
 * KeyLogWriter: the check is inside. */
SEC("uprobe")
int gotls_keylog_enter(void *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	go_regs *regs = ctx;
	__u64 arguments[9] = GO_ARGUMENTS(regs);
	__u64 label_len = arguments[2], random_len = arguments[4], secret_len = arguments[7];
	struct keylog_line_event *ev;

	if (!process_is_traced(pid_tgid) || random_len != KEYLOG_RANDOM_LEN || !label_len ||
	    label_len >= KEYLOG_LABEL_MAX || !secret_len || secret_len > KEYLOG_SECRET_MAX)
		return 0;
	ev = reserve_keylog_line(pid_tgid);
	if (!ev)
		return 0;
	/* Keep the bounds in the verifier's view after clang's rewrites. */
	asm volatile("" : "+r"(label_len), "+r"(secret_len));
	if (label_len >= KEYLOG_LABEL_MAX || !label_len || secret_len > KEYLOG_SECRET_MAX || !secret_len ||
	    bpf_probe_read_user(ev->label, label_len, (void *)arguments[1]) ||
	    bpf_probe_read_user(ev->client_random, KEYLOG_RANDOM_LEN, (void *)arguments[3]) ||
	    bpf_probe_read_user(ev->secret, secret_len, (void *)arguments[6])) {
		DISCARD_RECORD(ev);
		return 0;
	}
	ev->secret_len = secret_len;
	SUBMIT_RECORD(ctx, keylog_lines, ev, sizeof(*ev), 0);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
