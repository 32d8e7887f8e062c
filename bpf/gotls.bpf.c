// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Go's crypto/tls, linked into each Go program (src/modules/gotls): its
 * plaintext, from (*Conn).Write and (*Conn).Read, and its secrets, from the
 * function every one of them goes through. No uretprobe: Go moves
 * goroutine stacks, and a return trampoline would break them.
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

/* Go's register ABI (Go 1.17 on x86-64, 1.18 on arm64): the integer
 * arguments, in order. */
#if defined(__TARGET_ARCH_x86)
#define GO_ARGUMENTS(ctx)                                                                 \
	{                                                                                 \
		(ctx)->rax, (ctx)->rbx, (ctx)->rcx, (ctx)->rdi, (ctx)->rsi, (ctx)->r8,    \
			(ctx)->r9, (ctx)->r10, (ctx)->r11                                 \
	}
typedef struct pt_regs go_regs;
/* The running goroutine's g, in a register of its own. */
#define GO_G(ctx) ((ctx)->r14)
#define GO_SP(ctx) ((ctx)->rsp)
/* At a uprobe's program, the probed instruction. */
#define GO_IP(ctx) ((ctx)->rip)
/* At the JBE of a function's stack-bound check: true when it jumps (CF or
 * ZF), to grow the stack and enter the function again. */
#define GO_STACK_GROWS(ctx) (((ctx)->eflags & 0x41) != 0)
#elif defined(__TARGET_ARCH_arm64)
#define GO_ARGUMENTS(ctx)                                                                 \
	{                                                                                 \
		(ctx)->regs[0], (ctx)->regs[1], (ctx)->regs[2], (ctx)->regs[3],           \
			(ctx)->regs[4], (ctx)->regs[5], (ctx)->regs[6], (ctx)->regs[7],   \
			(ctx)->regs[8]                                                    \
	}
typedef struct user_pt_regs go_regs;
#define GO_G(ctx) ((ctx)->regs[28])
#define GO_SP(ctx) ((ctx)->sp)
#define GO_IP(ctx) ((ctx)->pc)
/* At the B.LS of a function's stack-bound check: C clear or Z set. */
#define GO_STACK_GROWS(ctx) (!((ctx)->pstate & (1ULL << 29)) || ((ctx)->pstate & (1ULL << 30)))
#else
#error "Go's register ABI is read on x86-64 and arm64 only"
#endif

/* A *tls.Conn's net.Conn is read as a TCP connection only when its method
 * table says it is one: when its first method is the program's
 * net.(*TCPConn).Close.
 *
 * With attachment cookies, each probe that reads a connection carries where
 * that function lies from the probe's own instruction (0: the program has
 * none): a fixed distance within the program, wherever it is mapped, so
 * that a process is known from its first call. The low half of the cookie is
 * the probe's own (gotls_read_copy_by_cookie's stack slot). */
#define COOKIE_LOW(cookie) ((__u32)(cookie))
#define COOKIE_CLOSE_DISTANCE(cookie) ((__s32)((cookie) >> 32))

/* Without cookies: per process, where net.(*TCPConn).Close is mapped,
 * filled by userspace. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u64);
} tcp_conn_close SEC(".maps");

/* Processes whose place of net.(*TCPConn).Close was asked for, once each. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u8);
} transport_asked SEC(".maps");

/* A process that makes TLS calls before userspace has placed its
 * net.(*TCPConn).Close (one started after the capture with --elfpath, which
 * no exec watch reports) asks for it once. */
static __always_inline void ask_for_transport(void *ctx, __u32 tgid)
{
	__u8 asked = 1;

	if (!bpf_map_update_elem(&transport_asked, &tgid, &asked, BPF_NOEXIST))
		report_process(ctx);
}

/* Offsets of Go's runtime and net package, fixed since Go 1.9: an
 * interface is (itab, data), an itab's methods start at +24, a TCPConn
 * begins with its *netFD, and a netFD's poll.FD holds Sysfd after a 16-byte
 * mutex. A *tls.Conn begins with its net.Conn. */
#define ITAB_FIRST_METHOD 24
#define NETFD_SYSFD 16

/* Where the calling process has net.(*TCPConn).Close, 0 when unknown. */
static __always_inline __u64 tcp_conn_close_address(void *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	__u64 *close;

#ifndef ECAPTURE_LEGACY_KERNEL
	if (SETTING(capture_settings, have_attach_cookies)) {
		__s32 distance = COOKIE_CLOSE_DISTANCE(bpf_get_attach_cookie(ctx));

		return distance ? GO_IP((go_regs *)ctx) + distance : 0;
	}
#endif
	close = bpf_map_lookup_elem(&tcp_conn_close, &tgid);
	if (!close) {
		ask_for_transport(ctx, tgid);
		return 0;
	}
	return *close;
}

/* The *net.TCPConn under a *tls.Conn, or 0 when it is another net.Conn
 * (an unknown socket) or the process is not known yet. */
static __always_inline __u64 library_transport(void *ctx, __u64 conn)
{
	__u64 close = tcp_conn_close_address(ctx);
	__u64 itab, data;

	if (!close)
		return 0;
	itab = read_user_word(conn);
	data = read_user_word(conn + 8);
	if (!itab || !data || read_user_word(itab + ITAB_FIRST_METHOD) != close)
		return 0;
	return data;
}

static __always_inline int library_transport_fd(__u64 tcp_conn)
{
	__u64 netfd = read_user_word(tcp_conn);
	__s64 fd = -1;

	if (!netfd || bpf_probe_read_user(&fd, sizeof(fd), (void *)(netfd + NETFD_SYSFD)) || fd < 0 || fd > 0x7fffffff)
		return -1;
	return (int)fd;
}

/* Entry programs come in two placements. On the first instruction, which
 * the kernel steps out of line. Or on the branch of the stack-bound check
 * that begins every Go function with a frame, which it emulates: the
 * arguments are still in place there, but a function whose stack must grow
 * passes it twice, once before and once after growing; only the second
 * pass, when the branch falls through, counts. */
#define GO_ENTRY_PROGRAMS(name)                                                   \
	static __always_inline int name(void *ctx);                              \
	SEC("uprobe")                                                            \
	int name##_enter(void *ctx)                                              \
	{                                                                        \
		return name(ctx);                                                \
	}                                                                        \
	SEC("uprobe")                                                            \
	int name##_past_stack_check(void *ctx)                                   \
	{                                                                        \
		return GO_STACK_GROWS((go_regs *)ctx) ? 0 : name(ctx);           \
	}

/* func (c *Config) writeKeyLog(label string, clientRandom, secret []byte) error:
 * c, then label (pointer, length), clientRandom and secret (pointer, length,
 * capacity). Called for every secret whether or not the program set a
 * KeyLogWriter: the check is inside. */
GO_ENTRY_PROGRAMS(gotls_keylog)
static __always_inline int gotls_keylog(void *ctx)
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
	if (label_len >= KEYLOG_LABEL_MAX || !label_len ||
	    bpf_probe_read_user(ev->label, label_len, (void *)arguments[1])) {
		__builtin_memset(ev->label, 0, sizeof(ev->label));
		ev->label_address = arguments[1];
		ev->label_len = label_len;
	}
	if (secret_len > KEYLOG_SECRET_MAX || !secret_len ||
	    bpf_probe_read_user(ev->secret, secret_len, (void *)arguments[6])) {
		DISCARD_RECORD(ev);
		return 0;
	}
	return send_keylog_line(ctx, ev, arguments[3], secret_len);
}

/* func (c *Conn) Write(b []byte) (int, error): b whole at entry. */
GO_ENTRY_PROGRAMS(gotls_write)
static __always_inline int gotls_write(void *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	go_regs *regs = ctx;
	__u64 arguments[9] = GO_ARGUMENTS(regs);

	if (!process_is_traced(pid_tgid) || !arguments[2] || arguments[2] > (1ULL << 31))
		return 0;
	return emit_session_data(ctx, pid_tgid, arguments[0], arguments[1], arguments[2], DIRECTION_EGRESS,
				 bpf_ktime_get_ns());
}

/* A Read in progress, by goroutine: a goroutine blocked in Read may resume
 * on another thread. */
struct goroutine_key {
	__u32 tgid;
	__u32 _pad;
	__u64 g;
};

struct go_read {
	__u64 conn;
	__u64 buf;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct goroutine_key);
	__type(value, struct go_read);
} go_reads SEC(".maps");

/* func (c *Conn) Read(b []byte) (int, error) */
GO_ENTRY_PROGRAMS(gotls_read)
static __always_inline int gotls_read(void *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	go_regs *regs = ctx;
	__u64 arguments[9] = GO_ARGUMENTS(regs);
	struct goroutine_key key = {.tgid = pid_tgid >> 32, .g = GO_G(regs)};
	struct go_read read = {.conn = arguments[0], .buf = arguments[1]};

	if (!process_is_traced(pid_tgid))
		return 0;
	bpf_map_update_elem(&go_reads, &key, &read, BPF_ANY);
	return 0;
}

/* The goroutine's Read in progress, taken off the map. */
static __always_inline bool take_read(__u64 pid_tgid, go_regs *regs, struct go_read *read)
{
	struct goroutine_key key = {.tgid = pid_tgid >> 32, .g = GO_G(regs)};
	struct go_read *found = bpf_map_lookup_elem(&go_reads, &key);

	if (!found)
		return false;
	*read = *found;
	bpf_map_delete_elem(&go_reads, &key);
	return true;
}

/* Emits the goroutine's Read in progress: n bytes from `source`, or from
 * the buffer it was given when `source` is 0. */
static __always_inline int emit_read(void *ctx, go_regs *regs, __s64 n, __u64 source)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct go_read read;

	if (!take_read(pid_tgid, regs, &read) || n <= 0 || n > (1LL << 31))
		return 0;
	return emit_session_data(ctx, pid_tgid, read.conn, source ? source : read.buf, n, DIRECTION_INGRESS,
				 bpf_ktime_get_ns());
}

/* On each return instruction of Read, found by decoding it (never a
 * uretprobe): n in the first result register. */
SEC("uprobe")
int gotls_read_return(void *ctx)
{
	go_regs *regs = ctx;
	__u64 results[9] = GO_ARGUMENTS(regs);

	return emit_read(ctx, regs, (__s64)results[0], 0);
}

/* On Read's one call of runtime.memmove(to, from, n), the copy of the
 * decrypted record into b: a call, which the kernel emulates, where the
 * return instructions are stepped out of line on x86-64. The plaintext is
 * read from its source, which stays put while the call runs. */
SEC("uprobe")
int gotls_read_copy(void *ctx)
{
	go_regs *regs = ctx;
	__u64 arguments[9] = GO_ARGUMENTS(regs);

	return emit_read(ctx, regs, (__s64)arguments[2], arguments[1]);
}

#ifndef ECAPTURE_LEGACY_KERNEL
/* On Read's copy, as gotls_read_copy, where Read's receiver stays in the
 * stack slot its prologue spilled it to (src/target/golang.rs): the low
 * half of the attachment's cookie is that slot's offset from the stack
 * pointer. One probe hit per Read rather than two, and no map. Cookies came
 * with Linux 5.15; userspace loads this program only where the kernel has
 * them. */
SEC("uprobe")
int gotls_read_copy_by_cookie(void *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	go_regs *regs = ctx;
	__u64 arguments[9] = GO_ARGUMENTS(regs);
	__u64 conn = read_user_word(GO_SP(regs) + COOKIE_LOW(bpf_get_attach_cookie(ctx)));
	__s64 n = arguments[2];

	if (!process_is_traced(pid_tgid) || !conn || n <= 0 || n > (1LL << 31))
		return 0;
	return emit_session_data(ctx, pid_tgid, conn, arguments[1], n, DIRECTION_INGRESS, bpf_ktime_get_ns());
}
#endif

char LICENSE[] SEC("license") = "Dual BSD/GPL";
