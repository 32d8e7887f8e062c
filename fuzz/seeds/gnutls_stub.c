/* A tiny library shaped like GnuTLS where ecapture looks (record calls, the key log hook
 * getter, the randoms getter, an internal function loading the hook): the seed
 * fuzz/corpus/elf/gnutls-stub-x86_64.so, built with
 * gcc -shared -fPIC -O2 -s -o gnutls-stub-x86_64.so gnutls_stub.c */
struct session {
	char before_randoms[0x50];
	unsigned char client_random[32];
	unsigned char server_random[32];
	char before_hook[0x660 - 0x90];
	int (*keylog)(struct session *, const char *, const void *, unsigned);
};
typedef struct { void *data; unsigned size; } datum;

long gnutls_record_send(struct session *s, const void *data, unsigned long size) { return (long)size; }
long gnutls_record_recv(struct session *s, void *data, unsigned long size) { return 0; }
void *gnutls_session_get_keylog_function(struct session *s) { return (void *)s->keylog; }
void gnutls_session_get_random(struct session *s, datum *client, datum *server)
{
	client->data = s->client_random;
	client->size = 32;
	if (server) {
		server->data = s->server_random;
		server->size = 32;
	}
}
__attribute__((noinline)) static int call_keylog(struct session *s, const char *label, const void *secret, unsigned size)
{
	return s->keylog ? s->keylog(s, label, secret, size) : 0;
}
int gnutls_handshake(struct session *s) { return call_keylog(s, "CLIENT_RANDOM", s->client_random, 32); }
