/* TLS ping-pong for `make bench`: a client and a server thread in one process,
 * over loopback TCP, linked to the system libssl. The client writes SIZE bytes,
 * the server reads them and writes them back, for SECONDS. Prints one JSON line
 * with the round trips made and the bytes each side moved through SSL_write
 * and SSL_read. Usage: tls_pingpong CERT KEY SIZE SECONDS */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static size_t size;
static SSL_CTX *server_ctx;
static int listener;

static void must(int ok, const char *what)
{
	if (!ok) {
		fprintf(stderr, "tls_pingpong: %s failed\n", what);
		exit(1);
	}
}

/* Full-length I/O: SSL_write/SSL_read may move less than asked. */
static void write_all(SSL *ssl, const char *buf, size_t len)
{
	while (len > 0) {
		int n = SSL_write(ssl, buf, (int)len);
		must(n > 0, "SSL_write");
		buf += n;
		len -= n;
	}
}

static int read_all(SSL *ssl, char *buf, size_t len)
{
	while (len > 0) {
		int n = SSL_read(ssl, buf, (int)len);
		if (n <= 0)
			return 0;
		buf += n;
		len -= n;
	}
	return 1;
}

static void *serve(void *unused)
{
	int fd = accept(listener, NULL, NULL);
	SSL *ssl = SSL_new(server_ctx);
	char *buf = malloc(size);
	int one = 1;

	must(fd >= 0, "accept");
	/* Without it, large replies stall on delayed ACKs and the loop measures timers. */
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	SSL_set_fd(ssl, fd);
	must(SSL_accept(ssl) == 1, "SSL_accept");
	while (read_all(ssl, buf, size))
		write_all(ssl, buf, size);
	SSL_free(ssl);
	close(fd);
	free(buf);
	return unused;
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	struct sockaddr_in addr = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t addr_len = sizeof(addr);
	int one = 1;

	if (argc != 5) {
		fprintf(stderr, "usage: %s CERT KEY SIZE SECONDS\n", argv[0]);
		return 2;
	}
	size = strtoul(argv[3], NULL, 10);
	double seconds = atof(argv[4]);

	server_ctx = SSL_CTX_new(TLS_server_method());
	must(SSL_CTX_use_certificate_file(server_ctx, argv[1], SSL_FILETYPE_PEM) == 1, "certificate");
	must(SSL_CTX_use_PrivateKey_file(server_ctx, argv[2], SSL_FILETYPE_PEM) == 1, "key");
	listener = socket(AF_INET, SOCK_STREAM, 0);
	must(bind(listener, (struct sockaddr *)&addr, sizeof(addr)) == 0, "bind");
	must(listen(listener, 1) == 0, "listen");
	must(getsockname(listener, (struct sockaddr *)&addr, &addr_len) == 0, "getsockname");

	pthread_t server;
	pthread_create(&server, NULL, serve, NULL);

	int fd = socket(AF_INET, SOCK_STREAM, 0);
	must(connect(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0, "connect");
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	SSL_CTX *client_ctx = SSL_CTX_new(TLS_client_method());
	SSL *ssl = SSL_new(client_ctx);
	SSL_set_fd(ssl, fd);
	must(SSL_connect(ssl) == 1, "SSL_connect");

	char *out = malloc(size), *in = malloc(size);
	memset(out, 'x', size);
	unsigned long round_trips = 0;
	double start = now(), elapsed;
	do {
		write_all(ssl, out, size);
		must(read_all(ssl, in, size), "client SSL_read");
		round_trips++;
		elapsed = now() - start;
	} while (elapsed < seconds);
	SSL_shutdown(ssl);
	close(fd);
	pthread_join(server, NULL);
	/* Each round trip: client write, server read, server write, client read. */
	printf("{\"size\": %zu, \"round_trips\": %lu, \"seconds\": %.6f, \"ssl_bytes\": %lu}\n", size, round_trips,
	       elapsed, round_trips * size * 4);
	return 0;
}
