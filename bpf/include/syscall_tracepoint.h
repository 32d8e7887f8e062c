/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* The records of the syscalls:sys_enter_* and sys_exit_* tracepoints, whose
 * layout is fixed: 8 bytes of common fields, the syscall number, then the
 * arguments or the return value. */
#ifndef ECAPTURE_SYSCALL_TRACEPOINT_H
#define ECAPTURE_SYSCALL_TRACEPOINT_H

struct syscall_enter_ctx {
	__u64 common;
	long syscall_nr;
	unsigned long args[6];
};

struct syscall_exit_ctx {
	__u64 common;
	long syscall_nr;
	long ret;
};

#endif
