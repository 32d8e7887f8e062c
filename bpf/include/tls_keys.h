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

/* How a TLS 1.3 record carries the handshake traffic secrets. */
enum handshake_secrets_form {
	/* OpenSSL: handshake_secret and handshake_traffic_hash, from which
	 * userspace derives them; the cipher suite gives their length. */
	HANDSHAKE_SECRETS_TO_DERIVE = 0,
	/* BoringSSL: the two secrets as the library holds them, secret_len long. */
	HANDSHAKE_SECRETS_AS_HELD = 1,
	/* BoringSSL, but the write traffic secret matched neither application
	 * secret: the layout does not fit, the secrets are not to be used. */
	HANDSHAKE_SECRETS_CONTRADICTED = 2,
};

struct master_secret_event {
	__u64 timestamp_ns;
	__u32 pid;
	__u32 tls_version;  /* 0x0303 TLS 1.2, 0x0304 TLS 1.3 */
	__u32 cipher_id;    /* OpenSSL cipher id, e.g. 0x03001301 */
	__u8 handshake_form; /* enum handshake_secrets_form */
	__u8 secret_len;     /* HANDSHAKE_SECRETS_AS_HELD: 32 or 48 */
	__u16 _pad;
	__u8 client_random[TLS_RANDOM_LEN];
	__u8 master_key[TLS12_MASTER_KEY_LEN];
	/* TLS 1.3 only, by handshake_form; the others are used as they are. */
	__u8 handshake_secret[TLS13_SECRET_MAX];
	__u8 handshake_traffic_hash[TLS13_SECRET_MAX];
	__u8 client_handshake_traffic_secret[TLS13_SECRET_MAX];
	__u8 server_handshake_traffic_secret[TLS13_SECRET_MAX];
	__u8 client_app_traffic_secret[TLS13_SECRET_MAX];
	__u8 server_app_traffic_secret[TLS13_SECRET_MAX];
	__u8 exporter_master_secret[TLS13_SECRET_MAX];
	char comm[TASK_COMM_LEN];
};

#endif
