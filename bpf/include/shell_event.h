/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* What the shell probes report: the lines an interactive shell reads, and
 * where each command it runs from them ends, with its exit status. */
#ifndef ECAPTURE_SHELL_EVENT_H
#define ECAPTURE_SHELL_EVENT_H

#define SHELL_COMM_LEN 16
/* Text bytes per record; a longer line takes several. */
#define SHELL_TEXT_MAX 4095
/* Records one line may take: lines up to 128 KiB come whole. */
#define SHELL_LINE_MAX_RECORDS 32

enum shell_event_kind {
	/* A piece of a line the shell read; `more` says whether another follows. */
	SHELL_LINE = 1,
	/* The shell is about to read its next command: the lines read since
	 * the last one ran as one command, which ended with `status`. */
	SHELL_COMMAND_DONE = 2,
	/* The shell is exiting with `status`. */
	SHELL_EXIT = 3,
};

struct shell_event {
	__u64 timestamp_ns;
	__u32 pid;
	__u32 uid;
	__s32 status;
	__u16 kind;
	__u16 length; /* valid bytes of text[] */
	__u8 more;
	__u8 chunk; /* this record's place in its line, from 0 */
	__u8 status_known; /* 0: the status could not be read */
	__u8 _pad[5];
	char comm[SHELL_COMM_LEN];
	char text[SHELL_TEXT_MAX + 1];
};

/* Where the shell keeps the last command's exit status, relative to the
 * probe that reads it; both are in the shell's own executable. */
struct shell_settings {
	__s64 status_from_probe;  /* the status variable's address minus the probe's */
	__u64 probe_address_rest; /* the probe's address modulo 16 */
};

#endif
