/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* One secret as a library hands it to its key log hook: the label of an NSS
 * key log line, the session's client random, and the secret. */
#ifndef ECAPTURE_KEYLOG_LINE_H
#define ECAPTURE_KEYLOG_LINE_H

#define TASK_COMM_LEN 16
#define KEYLOG_LABEL_MAX 48
/* SHA-384's 48 bytes is the longest secret TLS derives; room to spare. */
#define KEYLOG_SECRET_MAX 64
#define KEYLOG_RANDOM_LEN 32

struct keylog_line_event {
	__u64 timestamp_ns;
	__u32 pid;
	__u32 secret_len; /* valid bytes of secret[] */
	char comm[TASK_COMM_LEN];
	char label[KEYLOG_LABEL_MAX]; /* NUL-terminated */
	__u8 client_random[KEYLOG_RANDOM_LEN];
	__u8 secret[KEYLOG_SECRET_MAX];
	/* When label[] is empty: where the label is in the process, and its
	 * length (0: NUL-terminated). A probe cannot fault in a page the
	 * process has not touched yet; userspace reads it there instead. */
	__u64 label_address;
	__u32 label_len;
	__u32 _pad;
};

#endif
