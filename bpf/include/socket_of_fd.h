/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Maps a file descriptor of the current task to its inet socket addresses.
 *
 * kprobes on connect/accept are missing on many hardened kernels, so instead
 * of watching sockets being made we walk task->files->fdt->fd[fd] from a
 * syscall tracepoint. The structs below name only the fields we read; with
 * preserve_access_index libbpf relocates each access against the running
 * kernel's BTF (CO-RE). Built with ECAPTURE_NO_CORE the walk compiles away,
 * the object needs no kernel BTF, and userspace resolves addresses instead.
 */
#ifndef ECAPTURE_SOCKET_OF_FD_H
#define ECAPTURE_SOCKET_OF_FD_H

#include "tls_event.h"

#ifndef ECAPTURE_NO_CORE
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

#define ECAP_AF_INET 2
#define ECAP_AF_INET6 10

struct in6_addr___ecap {
	__u8 bytes[16];
};

struct sock_common {
	__u32 skc_daddr;
	__u32 skc_rcv_saddr;
	__u16 skc_dport; /* network order */
	__u16 skc_num;   /* host order */
	unsigned short skc_family;
	struct in6_addr___ecap skc_v6_daddr;
	struct in6_addr___ecap skc_v6_rcv_saddr;
} __attribute__((preserve_access_index));

struct sock {
	struct sock_common __sk_common;
} __attribute__((preserve_access_index));

struct file;

struct socket {
	struct file *file;
	struct sock *sk;
} __attribute__((preserve_access_index));

struct file {
	void *private_data;
} __attribute__((preserve_access_index));

struct fdtable {
	unsigned int max_fds;
	struct file **fd;
} __attribute__((preserve_access_index));

struct files_struct {
	struct fdtable *fdt;
} __attribute__((preserve_access_index));

struct task_struct {
	struct files_struct *files;
} __attribute__((preserve_access_index));

/* Returns the struct sock behind fd, or 0 when fd is not a socket. */
static __always_inline __u64 socket_of_fd(int fd)
{
	struct fdtable *fdt;
	struct file **fds;
	struct file *file = 0;
	struct socket *sock;
	unsigned int max_fds;

	/* This runs at every read and write of a traced call. From Linux 5.11
	 * the task's own pointers can be followed with plain loads, which the
	 * verifier guards, instead of a helper call per field. */
	if (bpf_core_enum_value_exists(enum bpf_func_id, BPF_FUNC_get_current_task_btf)) {
		struct task_struct *task = bpf_get_current_task_btf();

		fdt = task->files->fdt;
		if (!fdt)
			return 0;
		max_fds = fdt->max_fds;
		fds = fdt->fd;
	} else {
		struct task_struct *task = (struct task_struct *)bpf_get_current_task();

		fdt = BPF_CORE_READ(task, files, fdt);
		if (!fdt)
			return 0;
		max_fds = BPF_CORE_READ(fdt, max_fds);
		fds = BPF_CORE_READ(fdt, fd);
	}
	if (fd < 0 || (unsigned int)fd >= max_fds)
		return 0;
	bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]);
	if (!file)
		return 0;
	sock = BPF_CORE_READ(file, private_data);
	/* A socket's file and its struct socket point at each other; any other
	 * kind of file fails this, whatever its private_data holds. */
	if (!sock || BPF_CORE_READ(sock, file) != file)
		return 0;
	return (__u64)BPF_CORE_READ(sock, sk);
}

/* Whether socket_of_fd tells sockets from other files. */
#define KERNEL_NAMES_SOCKETS 1

static __always_inline bool may_be_socket(int fd)
{
	return socket_of_fd(fd) != 0;
}

static __always_inline bool is_v4_mapped(const __u8 *addr)
{
	const __u32 *words = (const __u32 *)addr;

	return words[0] == 0 && words[1] == 0 && words[2] == bpf_htonl(0x0000ffff);
}

static __always_inline void unmap_v4(__u8 *addr)
{
	__u32 *words = (__u32 *)addr;

	words[0] = words[3];
	words[1] = 0;
	words[2] = 0;
	words[3] = 0;
}

static __always_inline void read_conn_tuple(__u64 sk_addr, struct conn_tuple *tuple)
{
	struct sock_common *skc = (struct sock_common *)sk_addr;
	__u16 family = BPF_CORE_READ(skc, skc_family);

	if (family == ECAP_AF_INET) {
		bpf_core_read(tuple->local_addr, sizeof(__u32), &skc->skc_rcv_saddr);
		bpf_core_read(tuple->remote_addr, sizeof(__u32), &skc->skc_daddr);
	} else if (family == ECAP_AF_INET6) {
		bpf_core_read(tuple->local_addr, sizeof(tuple->local_addr), &skc->skc_v6_rcv_saddr);
		bpf_core_read(tuple->remote_addr, sizeof(tuple->remote_addr), &skc->skc_v6_daddr);
		/* A dual-stack socket talking IPv4 holds ::ffff:a.b.c.d; name it as
		 * the IPv4 connection its packets carry. */
		if (is_v4_mapped(tuple->local_addr) && is_v4_mapped(tuple->remote_addr)) {
			unmap_v4(tuple->local_addr);
			unmap_v4(tuple->remote_addr);
			family = ECAP_AF_INET;
		}
	} else {
		return;
	}
	tuple->family = family;
	tuple->local_port = BPF_CORE_READ(skc, skc_num);
	tuple->remote_port = bpf_ntohs(BPF_CORE_READ(skc, skc_dport));
}

#else /* ECAPTURE_NO_CORE */

static __always_inline __u64 socket_of_fd(int fd)
{
	return 0;
}

static __always_inline void read_conn_tuple(__u64 sk_addr, struct conn_tuple *tuple)
{
}

#define KERNEL_NAMES_SOCKETS 0

static __always_inline bool may_be_socket(int fd)
{
	return true;
}

#endif
#endif
