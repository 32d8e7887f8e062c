/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* What the database probes report: each command a server runs, its text
 * in pieces, the error it sent back if any, and its end. */
#ifndef ECAPTURE_QUERY_EVENT_H
#define ECAPTURE_QUERY_EVENT_H

#define QUERY_COMM_LEN 16
/* Text bytes per record; a longer query takes several. */
#define QUERY_TEXT_MAX 4095
/* Records one query's text may take: 256 KiB come whole; 48 KiB with the
 * programs for kernels before 5.2, which take at most 4096 instructions. */
#ifdef ECAPTURE_LEGACY_KERNEL
#define QUERY_MAX_RECORDS 12
#else
#define QUERY_MAX_RECORDS 64
#endif
#define QUERY_NAME_MAX 64

enum query_event_kind {
	/* A piece of the command's text; `more` says whether another follows. */
	QUERY_TEXT = 1,
	/* The error the server sent for it: `code`, `sqlstate`, and the message in text[]. */
	QUERY_ERROR = 2,
	/* It is done: `duration_ns`, and what the function returned in `code`. */
	QUERY_DONE = 3,
};

struct query_event {
	__u64 timestamp_ns;
	__u64 connection; /* the server's id of the session; 0: unknown */
	__u64 duration_ns;
	__u32 pid;
	__u32 tid;
	__u32 uid;
	__u32 command; /* the server's command number (COM_QUERY...) */
	__u32 total_length; /* the whole text's length, when the server passes it */
	__s32 code;
	__u16 kind;
	__u16 length; /* valid bytes of text[] */
	__u8 chunk; /* this record's place in the text, from 0 */
	__u8 more;
	char sqlstate[6];
	char comm[QUERY_COMM_LEN];
	/* Who ran it; in QUERY_DONE records only, the text's being numerous. */
	char user[QUERY_NAME_MAX];
	char client[QUERY_NAME_MAX];
	char text[QUERY_TEXT_MAX + 1];
};

#endif
