/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The contract for session secrets: one record per TLS session, sent once its
 * handshake is complete. Userspace turns it into NSS key log lines.
 */
#ifndef ECAPTURE_TLS_KEYS_H
#define ECAPTURE_TLS_KEYS_H

#define TLS_RANDOM_LEN 32
#define TLS12_MASTER_KEY_LEN 48
/* EVP_MAX_MD_SIZE: room for any TLS 1.3 hash (SHA-384 uses 48). */
#define TLS13_SECRET_MAX 64

struct master_secret_event {
	__u64 timestamp_ns;
	__u32 pid;
	__u32 tls_version;  /* 0x0303 TLS 1.2, 0x0304 TLS 1.3 */
	__u32 cipher_id;    /* OpenSSL cipher id, e.g. 0x03001301 */
	__u32 _pad;
	__u8 client_random[TLS_RANDOM_LEN];
	__u8 master_key[TLS12_MASTER_KEY_LEN];
	/* TLS 1.3 only: the handshake traffic secrets are derived in userspace
	 * from these two; the others are used as they are. */
	__u8 handshake_secret[TLS13_SECRET_MAX];
	__u8 handshake_traffic_hash[TLS13_SECRET_MAX];
	__u8 client_app_traffic_secret[TLS13_SECRET_MAX];
	__u8 server_app_traffic_secret[TLS13_SECRET_MAX];
	__u8 exporter_master_secret[TLS13_SECRET_MAX];
	char comm[TASK_COMM_LEN];
};

#endif
