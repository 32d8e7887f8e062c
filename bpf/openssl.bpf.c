// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Plaintext of OpenSSL and BoringSSL sessions, from the read/write API. */
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <stdbool.h>
#include <stddef.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#define TLS_CAPTURE_SOURCE SOURCE_OPENSSL
#include "tls_capture.h"
#include "tls_keys.h"
#include "foreign_tls.h"

/* Where a socket BIO keeps its fd, from the library's own accessors
 * (SSL_get_rbio, BIO_method_type, BIO_get_retry_reason); ssl_rbio 0 when
 * unknown. With them the return probe names the socket itself. Without
 * them, or for a session whose BIO is not a descriptor (curl's, node's),
 * the syscall tracepoints do; those put every system call of every process
 * on the kernel's slow path, which cost the 64-byte ping-pong 8% of its
 * speed. */
struct socket_bio_layout {
	__u32 ssl_rbio;
	__u32 bio_method;
	__u32 bio_num;
	/* 3.2+: only an SSL object whose type tag (at 0) is 0 is a TLS
	 * connection. */
	__u32 ssl_type_tagged;
};

DECLARE_SETTINGS(struct socket_bio_layout, socket_bio);

/* The socket, fd, connect, accept and datagram BIOs carry this type bit. */
#define BIO_TYPE_DESCRIPTOR 0x0100

/* From 3.2 an SSL object may be a QUIC one, whose fields differ. */
static __always_inline bool is_tls_connection(__u64 ssl)
{
	__u32 tag = 0;

	return !SETTING(socket_bio, ssl_type_tagged) || (!bpf_probe_read_user(&tag, sizeof(tag), (void *)ssl) && !tag);
}

/* The session's read BIO (its write BIO is the same socket, but for a
 * buffering BIO pushed in front during handshakes), or 0. */
static __always_inline __u64 library_transport(void *ctx, __u64 ssl)
{
	__u32 rbio = SETTING(socket_bio, ssl_rbio);
	__u64 bio = 0;

	if (!rbio || bpf_probe_read_user(&bio, sizeof(bio), (void *)(ssl + rbio)) || !is_tls_connection(ssl))
		return 0;
	return bio;
}

/* The fd of `bio` if it is a descriptor BIO (socket, fd, connect, accept,
 * datagram), else -1. */
static __always_inline int library_transport_fd(__u64 bio)
{
	__u64 method = 0;
	int type = 0, fd = -1;

	if (bpf_probe_read_user(&method, sizeof(method), (void *)(bio + SETTING(socket_bio, bio_method))) || !method)
		return -1;
	if (bpf_probe_read_user(&type, sizeof(type), (void *)method) || !(type & BIO_TYPE_DESCRIPTOR))
		return -1;
	if (bpf_probe_read_user(&fd, sizeof(fd), (void *)(bio + SETTING(socket_bio, bio_num))))
		return -1;
	return fd;
}

/* int SSL_write(SSL *ssl, const void *buf, int num) */
SEC("uprobe")
int BPF_UPROBE(ssl_write_enter, void *ssl, const void *buf)
{
	return tls_call_enter((__u64)ssl, (__u64)buf, 0, DIRECTION_EGRESS, LENGTH_FROM_RETURN);
}

/* int SSL_read(SSL *ssl, void *buf, int num) */
SEC("uprobe")
int BPF_UPROBE(ssl_read_enter, void *ssl, void *buf)
{
	return tls_call_enter((__u64)ssl, (__u64)buf, 0, DIRECTION_INGRESS, LENGTH_FROM_RETURN);
}

/* int SSL_write_ex(SSL *ssl, const void *buf, size_t num, size_t *written) */
SEC("uprobe")
int BPF_UPROBE(ssl_write_ex_enter, void *ssl, const void *buf, size_t num, size_t *written)
{
	return tls_call_enter((__u64)ssl, (__u64)buf, (__u64)written, DIRECTION_EGRESS,
			      LENGTH_FROM_POINTER);
}

/* OpenSSL 3.2+: int ssl_write_internal(SSL *ssl, const void *buf, size_t num,
 *                                      uint64_t flags, size_t *written) */
SEC("uprobe")
int BPF_UPROBE(ssl_write_flags_enter, void *ssl, const void *buf, size_t num, __u64 flags, size_t *written)
{
	return tls_call_enter((__u64)ssl, (__u64)buf, (__u64)written, DIRECTION_EGRESS,
			      LENGTH_FROM_POINTER);
}

/* int SSL_read_ex(SSL *ssl, void *buf, size_t num, size_t *readbytes) */
SEC("uprobe")
int BPF_UPROBE(ssl_read_ex_enter, void *ssl, void *buf, size_t num, size_t *readbytes)
{
	return tls_call_enter((__u64)ssl, (__u64)buf, (__u64)readbytes, DIRECTION_INGRESS,
			      LENGTH_FROM_POINTER);
}

/* One return probe serves all four: the entry recorded how to read the length. */
SEC("uretprobe")
int BPF_URETPROBE(ssl_call_return, int ret)
{
	return tls_call_exit(ctx, ret);
}

/* int SSL_do_handshake(SSL *ssl), in text mode */
SEC("uprobe")
int BPF_UPROBE(handshake_socket_check, void *ssl)
{
	return check_socket_bio(ctx, (__u64)ssl);
}

/*
 * Session secrets (keylog and pcapng modes). Where the secrets live in
 * struct ssl_st (ssl_connection_st from 3.2) changes between releases; userspace
 * picks the layout for the loaded library, checks it against the library's own
 * accessor functions, and writes it here before load.
 */
struct openssl_layout {
	__u32 ssl_type;           /* 3.2+: SSL_TYPE_SSL_CONNECTION is 0; ABSENT before */
	__u32 version;            /* int ssl->version */
	__u32 session;            /* SSL_SESSION *, in ssl or (session_in_s3) in s3 */
	__u32 session_in_s3;      /* BoringSSL: s3->established_session */
	__u32 session_version;    /* BoringSSL: uint16_t session->ssl_version; else ABSENT */
	__u32 s3_pointer;         /* struct ssl3_state_st *ssl->s3 (up to 1.1.1, BoringSSL); else ABSENT */
	__u32 client_random;      /* s3.client_random[32], from ssl or from *s3_pointer */
	__u32 session_master_key; /* session->master_key[] */
	__u32 session_cipher;     /* const SSL_CIPHER *session->cipher */
	__u32 session_cipher_id;  /* unsigned long session->cipher_id; ABSENT in BoringSSL */
	__u32 cipher_id;          /* uint32_t cipher->id */
	/* OpenSSL's TLS 1.3 secrets, in the SSL object. */
	__u32 handshake_secret;
	__u32 handshake_traffic_hash;
	__u32 client_app_traffic_secret;
	__u32 server_app_traffic_secret;
	__u32 exporter_master_secret;
	/* BoringSSL's, in its handshake object; s3_handshake is ABSENT elsewhere. */
	__u32 s3_handshake;            /* SSL_HANDSHAKE *s3->hs */
	__u32 s3_write_traffic_secret; /* s3->write_traffic_secret[] */
	__u32 s3_exporter_secret;      /* s3->exporter_secret[] */
	__u32 hs_hash_len;             /* low byte of the secrets' length */
	__u32 hs_client_handshake_secret;
	__u32 hs_server_handshake_secret;
	__u32 hs_client_traffic_secret_0;
	__u32 hs_server_traffic_secret_0;
};

DECLARE_SETTINGS(struct openssl_layout, layout);

#define TLS1_3_VERSION 0x0304
#define ABSENT 0xffffffff
/* SSL_MAX_MD_SIZE: BoringSSL's secrets are at most SHA-384 long. */
#define BORINGSSL_SECRET_MAX 48

/* LRU: a thread that never returns from its call (killed, or a return
 * probe missed) must not hold its slot for good. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);   /* pid_tgid */
	__type(value, __u64); /* SSL * */
} handshake_calls SEC(".maps");

/* The client random last reported for each session object, so that each
 * session's secrets go out once however many calls follow. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct session_key);
	__type(value, __u8[TLS_RANDOM_LEN]);
} reported_sessions SEC(".maps");

EVENT_CHANNEL(key_events, 256 * 1024);
RECORD_SLOT(key_events, struct master_secret_event);

/* On SSL_do_handshake (which SSL_connect, SSL_accept and BoringSSL's
 * implicit handshakes call): remember the session until the call returns. */
SEC("uprobe")
int BPF_UPROBE(handshake_enter, void *ssl)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u64 ssl_addr = (__u64)ssl;

	if (!process_is_traced(pid_tgid))
		return 0;
	bpf_map_update_elem(&handshake_calls, &pid_tgid, &ssl_addr, BPF_ANY);
	return 0;
}

static __always_inline bool same_32_bytes(const __u8 *a, const __u8 *b)
{
	const __u64 *x = (const __u64 *)a, *y = (const __u64 *)b;

	return x[0] == y[0] && x[1] == y[1] && x[2] == y[2] && x[3] == y[3];
}

/* Secrets live in zero-filled memory until they are derived; 16 zero bytes
 * at the start of one means it is not there yet. */
static __always_inline bool is_zero_secret(const __u8 *secret)
{
	const __u64 *words = (const __u64 *)secret;

	return words[0] == 0 && words[1] == 0;
}

/* Both application traffic secrets are derived: the handshake is complete. */
static __always_inline bool has_app_secrets(const struct master_secret_event *ev)
{
	return !is_zero_secret(ev->client_app_traffic_secret) && !is_zero_secret(ev->server_app_traffic_secret);
}

/* A session is its SSL object in its process, reported once per client
 * random: an object reused for a new connection is a new session. */
static __always_inline bool already_reported(struct session_key *key, __u64 pid_tgid, __u64 ssl,
					     const __u8 *random)
{
	__u8 *reported;

	key->tgid = pid_tgid >> 32;
	key->conn_id = ssl;
	reported = bpf_map_lookup_elem(&reported_sessions, key);
	return reported && same_32_bytes(reported, random);
}

/* A zeroed record for the session, saying whose and when. */
static __always_inline struct master_secret_event *start_report(const struct session_key *key,
								 const __u8 *random, int version)
{
	struct master_secret_event *ev = RESERVE_RECORD(key_events, sizeof(*ev));

	if (!ev)
		return NULL;
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->timestamp_ns = bpf_ktime_get_ns();
	ev->pid = key->tgid;
	ev->tls_version = version;
	bpf_get_current_comm(ev->comm, sizeof(ev->comm));
	__builtin_memcpy(ev->client_random, random, TLS_RANDOM_LEN);
	return ev;
}

/* A report the reader had no room for is sent again at the next call. */
static __always_inline void send_report(void *ctx, struct master_secret_event *ev, const struct session_key *key,
					const __u8 *random)
{
	if (!SUBMIT_RECORD(ctx, key_events, ev, sizeof(*ev), 0))
		bpf_map_update_elem(&reported_sessions, key, random, BPF_ANY);
}

/* Sends the secrets of `ssl` once its handshake is complete, once per
 * session. */
static __always_inline int report_keys(void *ctx, __u64 pid_tgid, __u64 ssl)
{
	struct session_key key = {};
	struct master_secret_event *ev;
	__u8 random[TLS_RANDOM_LEN];
	__u64 s3 = 0, session = 0, cipher = 0;
	__u32 ssl_type = 0;
	int version = 0;

	if (!ssl)
		return 0;
	/* QUIC objects (3.2+) are not TLS connections. */
	if (SETTING(layout, ssl_type) != ABSENT &&
	    (bpf_probe_read_user(&ssl_type, sizeof(ssl_type), (void *)(ssl + SETTING(layout, ssl_type))) || ssl_type != 0))
		return 0;
	s3 = ssl;
	if (SETTING(layout, s3_pointer) != ABSENT &&
	    (bpf_probe_read_user(&s3, sizeof(s3), (void *)(ssl + SETTING(layout, s3_pointer))) || !s3))
		return 0;
	if (bpf_probe_read_user(random, sizeof(random), (void *)(s3 + SETTING(layout, client_random))))
		return 0;
	if (already_reported(&key, pid_tgid, ssl, random))
		return 0;
	if (bpf_probe_read_user(&session, sizeof(session),
				(void *)((SETTING(layout, session_in_s3) ? s3 : ssl) + SETTING(layout, session))) || !session)
		return 0;
	if (SETTING(layout, session_version) != ABSENT)
		bpf_probe_read_user(&version, sizeof(__u16), (void *)(session + SETTING(layout, session_version)));
	else
		bpf_probe_read_user(&version, sizeof(version), (void *)(ssl + SETTING(layout, version)));
	/* BoringSSL's TLS 1.3 secrets went out while its Finished flight was written. */
	if (version == TLS1_3_VERSION && SETTING(layout, s3_handshake) != ABSENT)
		return 0;

	ev = start_report(&key, random, version);
	if (!ev)
		return 0;
	bpf_probe_read_user(ev->master_key, sizeof(ev->master_key), (void *)(session + SETTING(layout, session_master_key)));
	if (!bpf_probe_read_user(&cipher, sizeof(cipher), (void *)(session + SETTING(layout, session_cipher))) && cipher)
		bpf_probe_read_user(&ev->cipher_id, sizeof(ev->cipher_id), (void *)(cipher + SETTING(layout, cipher_id)));
	else if (SETTING(layout, session_cipher_id) != ABSENT)
		bpf_probe_read_user(&ev->cipher_id, sizeof(ev->cipher_id), (void *)(session + SETTING(layout, session_cipher_id)));
	if (version == TLS1_3_VERSION) {
		bpf_probe_read_user(ev->handshake_secret, TLS13_SECRET_MAX, (void *)(ssl + SETTING(layout, handshake_secret)));
		bpf_probe_read_user(ev->handshake_traffic_hash, TLS13_SECRET_MAX,
				    (void *)(ssl + SETTING(layout, handshake_traffic_hash)));
		bpf_probe_read_user(ev->client_app_traffic_secret, TLS13_SECRET_MAX,
				    (void *)(ssl + SETTING(layout, client_app_traffic_secret)));
		bpf_probe_read_user(ev->server_app_traffic_secret, TLS13_SECRET_MAX,
				    (void *)(ssl + SETTING(layout, server_app_traffic_secret)));
		bpf_probe_read_user(ev->exporter_master_secret, TLS13_SECRET_MAX,
				    (void *)(ssl + SETTING(layout, exporter_master_secret)));
		/* A server may return from the handshake before it has read the
		 * client's Finished, when the client's application secret is not
		 * derived yet: report the session on a later call instead. */
		if (!has_app_secrets(ev)) {
			DISCARD_RECORD(ev);
			return 0;
		}
	} else if (is_zero_secret(ev->master_key)) {
		DISCARD_RECORD(ev);
		return 0;
	}
	send_report(ctx, ev, &key, random);
	return 0;
}

/* SSL_do_handshake returns 1 once the handshake is complete. */
SEC("uretprobe")
int BPF_URETPROBE(handshake_return, int ret)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u64 *stashed, ssl;

	stashed = bpf_map_lookup_elem(&handshake_calls, &pid_tgid);
	if (!stashed)
		return 0;
	ssl = *stashed;
	bpf_map_delete_elem(&handshake_calls, &pid_tgid);
	if (ret <= 0)
		return 0;
	return report_keys(ctx, pid_tgid, ssl);
}

/* On entry to reads, writes and SSL_shutdown: keys sessions whose handshake
 * ran implicitly inside an earlier read or write, sessions a server completes
 * only once it reads the client's Finished, and sessions established before
 * ecapture started. No return probe: the data path stays cheap. */
SEC("uprobe")
int BPF_UPROBE(keys_at_call, void *ssl)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();

	if (!process_is_traced(pid_tgid))
		return 0;
	return report_keys(ctx, pid_tgid, (__u64)ssl);
}

/*
 * BoringSSL frees its handshake object, the only holder of the TLS 1.3
 * handshake traffic secrets, before SSL_do_handshake returns. Every secret
 * exists once the library writes its Finished flight (a client's last
 * flight, a server's first), so they are read at the write syscalls of a
 * thread inside a hooked call.
 */
static __always_inline int read_boringssl_secrets(void *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct session_key key = {};
	struct master_secret_event *ev;
	__u8 random[TLS_RANDOM_LEN], written[TLS_RANDOM_LEN];
	__u64 *stashed, ssl, s3 = 0, hs = 0;
	__u8 hash_len = 0;

	stashed = bpf_map_lookup_elem(&handshake_calls, &pid_tgid);
	if (!stashed)
		return 0;
	ssl = *stashed;
	if (bpf_probe_read_user(&s3, sizeof(s3), (void *)(ssl + SETTING(layout, s3_pointer))) || !s3)
		return 0;
	if (bpf_probe_read_user(&hs, sizeof(hs), (void *)(s3 + SETTING(layout, s3_handshake))) || !hs)
		return 0;
	/* Zero until the server's hello fixes the hash: nothing to read yet. */
	if (bpf_probe_read_user(&hash_len, sizeof(hash_len), (void *)(hs + SETTING(layout, hs_hash_len))) ||
	    (hash_len != 32 && hash_len != 48))
		return 0;
	if (bpf_probe_read_user(random, sizeof(random), (void *)(s3 + SETTING(layout, client_random))))
		return 0;
	if (already_reported(&key, pid_tgid, ssl, random))
		return 0;

	ev = start_report(&key, random, TLS1_3_VERSION);
	if (!ev)
		return 0;
	bpf_probe_read_user(ev->client_app_traffic_secret, BORINGSSL_SECRET_MAX,
			    (void *)(hs + SETTING(layout, hs_client_traffic_secret_0)));
	bpf_probe_read_user(ev->server_app_traffic_secret, BORINGSSL_SECRET_MAX,
			    (void *)(hs + SETTING(layout, hs_server_traffic_secret_0)));
	/* The first flight of a client, or a TLS 1.2 handshake. */
	if (!has_app_secrets(ev)) {
		DISCARD_RECORD(ev);
		return 0;
	}
	bpf_probe_read_user(ev->client_handshake_traffic_secret, BORINGSSL_SECRET_MAX,
			    (void *)(hs + SETTING(layout, hs_client_handshake_secret)));
	bpf_probe_read_user(ev->server_handshake_traffic_secret, BORINGSSL_SECRET_MAX,
			    (void *)(hs + SETTING(layout, hs_server_handshake_secret)));
	bpf_probe_read_user(ev->exporter_master_secret, BORINGSSL_SECRET_MAX,
			    (void *)(s3 + SETTING(layout, s3_exporter_secret)));
	/* The flight is encrypted with this end's application secret by now. */
	bpf_probe_read_user(written, sizeof(written), (void *)(s3 + SETTING(layout, s3_write_traffic_secret)));
	if (same_32_bytes(written, ev->client_app_traffic_secret) ||
	    same_32_bytes(written, ev->server_app_traffic_secret))
		ev->handshake_form = HANDSHAKE_SECRETS_AS_HELD;
	else
		ev->handshake_form = HANDSHAKE_SECRETS_CONTRADICTED;
	ev->secret_len = hash_len;
	send_report(ctx, ev, &key, random);
	return 0;
}

/* Attached for BoringSSL only; the data path has its own sys_enter_ programs. */
#define READ_BORINGSSL_SECRETS_AT(name)                                      \
	SEC("tracepoint/syscalls/sys_enter_" #name)                          \
	int boringssl_sys_enter_##name(struct syscall_enter_ctx *ctx)        \
	{                                                                    \
		return read_boringssl_secrets(ctx);                           \
	}

READ_BORINGSSL_SECRETS_AT(write)
READ_BORINGSSL_SECRETS_AT(writev)
READ_BORINGSSL_SECRETS_AT(sendto)
READ_BORINGSSL_SECRETS_AT(sendmsg)

/* Handshakes of TLS libraries this module does not capture (foreign_tls.h). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32); /* tgid */
	__type(value, __u8);
} foreign_reported SEC(".maps");

EVENT_CHANNEL(foreign_tls, 4096);

static __always_inline int report_foreign(void *ctx, __u32 library)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct foreign_tls_event ev = {};
	__u8 seen = 1;

	ev.pid = pid_tgid >> 32;
	if (!process_is_traced(pid_tgid) || bpf_map_lookup_elem(&foreign_reported, &ev.pid))
		return 0;
	bpf_map_update_elem(&foreign_reported, &ev.pid, &seen, BPF_ANY);
	ev.library = library;
	bpf_get_current_comm(ev.comm, sizeof(ev.comm));
	OUTPUT_RECORD(ctx, foreign_tls, &ev, sizeof(ev), BPF_RB_FORCE_WAKEUP);
	return 0;
}

/* int gnutls_handshake(gnutls_session_t): every GnuTLS session calls it. */
SEC("uprobe")
int gnutls_handshake_seen(struct pt_regs *ctx)
{
	return report_foreign(ctx, FOREIGN_GNUTLS);
}

/* PRFileDesc *SSL_ImportFD(PRFileDesc *model, PRFileDesc *fd): every NSS
 * TLS socket is made by it. */
SEC("uprobe")
int nss_import_fd_seen(struct pt_regs *ctx)
{
	return report_foreign(ctx, FOREIGN_NSS);
}

/* crypto/tls.(*Conn).handshakeContext (Go 1.17+) or (*Conn).Handshake: an
 * entry probe, safe on Go code where a return probe is not. */
SEC("uprobe")
int go_tls_handshake_seen(struct pt_regs *ctx)
{
	return report_foreign(ctx, FOREIGN_GO);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
