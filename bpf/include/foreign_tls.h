/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* A handshake through a TLS library the module does not capture, reported
 * once per process so that ecapture can say so instead of staying silent. */
#ifndef ECAPTURE_FOREIGN_TLS_H
#define ECAPTURE_FOREIGN_TLS_H

#define TASK_COMM_LEN 16

/* Numbered as userspace's ForeignTls (src/target/foreign.rs). */
enum foreign_library {
	FOREIGN_GNUTLS = 1,
	FOREIGN_NSS = 2,
	FOREIGN_GO = 3,
};

struct foreign_tls_event {
	__u32 pid;
	__u32 library; /* enum foreign_library */
	char comm[TASK_COMM_LEN];
};

#endif
