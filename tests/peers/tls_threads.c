/* Many TLS connections in one process, a client and a server thread each,
 * all writing at once: far more threads than CPUs, so that probes of
 * different threads run interleaved on each CPU. Client PAIR writes
 * MESSAGES messages, each one SSL_write of the token "PxxMyyyyy." repeated
 * to the message's size; its server checks every byte it reads.
 * Prints "ok BYTES" (bytes written in all) when every server read what was
 * sent. Usage: tls_threads CERT KEY PAIRS MESSAGES */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Around the 64-byte payload classes and the 16 KiB record, and past it. */
static const size_t SIZES[] = { 100, 1, 63, 64, 65, 129, 1000, 1500, 4097, 8191, 16383, 16384, 16385, 20000, 40000 };
#define NSIZES (sizeof(SIZES) / sizeof(SIZES[0]))
#define TOKEN_LEN 10

static SSL_CTX *server_ctx, *client_ctx;
static int listener, messages;
static struct sockaddr_in addr = { .sin_family = AF_INET };

static void must(int ok, const char *what)
{
	if (!ok) {
		fprintf(stderr, "tls_threads: %s failed\n", what);
		ERR_print_errors_fp(stderr);
		exit(1);
	}
}

/* Message m of pair p: its size, and its bytes in `out`. */
static size_t message(int pair, int m, char *out)
{
	char token[TOKEN_LEN + 1];
	size_t size = m == 0 ? SIZES[0] : SIZES[(pair * 7 + m) % NSIZES];

	snprintf(token, sizeof(token), "P%02dM%05d.", pair, m);
	for (size_t i = 0; i < size; i++)
		out[i] = token[i % TOKEN_LEN];
	return size;
}

static void *client(void *arg)
{
	int pair = (int)(long)arg, fd = socket(AF_INET, SOCK_STREAM, 0);
	char *buf = malloc(SIZES[NSIZES - 1]);
	SSL *ssl = SSL_new(client_ctx);
	size_t *total = malloc(sizeof(*total));

	*total = 0;
	must(connect(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0, "connect");
	SSL_set_fd(ssl, fd);
	must(SSL_connect(ssl) == 1, "SSL_connect");
	for (int m = 0; m < messages; m++) {
		size_t size = message(pair, m, buf);
		must(SSL_write(ssl, buf, (int)size) == (int)size, "SSL_write");
		*total += size;
	}
	/* Closing with the server's session tickets unread would send a reset,
	 * which can discard what the server has yet to read: wait for its end. */
	SSL_shutdown(ssl);
	while (SSL_read(ssl, buf, TOKEN_LEN) > 0)
		;
	SSL_free(ssl);
	close(fd);
	free(buf);
	return total;
}

static void *server(void *unused)
{
	int fd = accept(listener, NULL, NULL), pair = -1, m = 0;
	char *want = malloc(SIZES[NSIZES - 1]), got[4096];
	size_t want_len = 0, want_at = 0;
	SSL *ssl = SSL_new(server_ctx);
	int n;

	must(fd >= 0, "accept");
	SSL_set_fd(ssl, fd);
	must(SSL_accept(ssl) == 1, "SSL_accept");
	while ((n = SSL_read(ssl, got, sizeof(got))) > 0) {
		for (int i = 0; i < n; i++) {
			/* The first message's token says which pair this is. */
			if (pair < 0 && i == 0)
				pair = atoi(got + 1);
			if (want_at == want_len) {
				must(m < messages, "a message too many");
				want_len = message(pair, m++, want);
				want_at = 0;
			}
			must(got[i] == want[want_at++], "every byte as sent");
		}
	}
	must(m == messages && want_at == want_len, "every message");
	SSL_shutdown(ssl);
	SSL_free(ssl);
	close(fd);
	free(want);
	return unused;
}

int main(int argc, char **argv)
{
	socklen_t addr_len = sizeof(addr);
	size_t bytes = 0;

	if (argc != 5) {
		fprintf(stderr, "usage: %s CERT KEY PAIRS MESSAGES\n", argv[0]);
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	int pairs = atoi(argv[3]);
	messages = atoi(argv[4]);
	server_ctx = SSL_CTX_new(TLS_server_method());
	client_ctx = SSL_CTX_new(TLS_client_method());
	must(SSL_CTX_use_certificate_file(server_ctx, argv[1], SSL_FILETYPE_PEM) == 1, "certificate");
	must(SSL_CTX_use_PrivateKey_file(server_ctx, argv[2], SSL_FILETYPE_PEM) == 1, "key");
	addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	listener = socket(AF_INET, SOCK_STREAM, 0);
	must(bind(listener, (struct sockaddr *)&addr, sizeof(addr)) == 0, "bind");
	must(listen(listener, pairs) == 0, "listen");
	must(getsockname(listener, (struct sockaddr *)&addr, &addr_len) == 0, "getsockname");

	pthread_t threads[2 * pairs];
	for (int p = 0; p < pairs; p++) {
		pthread_create(&threads[2 * p], NULL, server, NULL);
		pthread_create(&threads[2 * p + 1], NULL, client, (void *)(long)p);
	}
	for (int t = 0; t < 2 * pairs; t++) {
		void *result;
		pthread_join(threads[t], &result);
		if (t % 2) {
			bytes += *(size_t *)result;
			free(result);
		}
	}
	printf("ok %zu\n", bytes);
	return 0;
}
