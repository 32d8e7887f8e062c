/* A minimal TLS client for ecapture's end-to-end tests, built against
 * OpenSSL (linked statically) or BoringSSL. Sends argv[3], prints the reply.
 * Options after it: "1.2" caps the protocol at TLS 1.2; "3x" makes three
 * connections one after the other, each with a session object made after
 * the last one was freed (the allocator hands the same memory back). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int exchange(SSL_CTX *ctx, const struct sockaddr_in *addr, const char *message)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0 || connect(fd, (const struct sockaddr *)addr, sizeof(*addr)) != 0) {
		perror("connect");
		return 1;
	}
	SSL *ssl = SSL_new(ctx);
	SSL_set_fd(ssl, fd);
	if (SSL_connect(ssl) != 1) {
		fprintf(stderr, "handshake failed\n");
		return 1;
	}
	if (SSL_write(ssl, message, (int)strlen(message)) <= 0) {
		fprintf(stderr, "write failed\n");
		return 1;
	}
	char reply[4096];
	int n = SSL_read(ssl, reply, sizeof(reply) - 1);
	if (n > 0) {
		reply[n] = 0;
		printf("%s", reply);
	}
	SSL_shutdown(ssl);
	SSL_free(ssl);
	close(fd);
	return n > 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
	if (argc < 4) {
		fprintf(stderr, "usage: %s HOST PORT MESSAGE [1.2] [3x]\n", argv[0]);
		return 2;
	}
	struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[2])) };
	inet_pton(AF_INET, argv[1], &addr.sin_addr);
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	int connections = 1;
	for (int i = 4; i < argc; i++) {
		if (strcmp(argv[i], "1.2") == 0)
			SSL_CTX_set_max_proto_version(ctx, TLS1_2_VERSION);
		else if (strcmp(argv[i], "3x") == 0)
			connections = 3;
	}
	for (int i = 0; i < connections; i++) {
		if (exchange(ctx, &addr, argv[3]))
			return 1;
	}
	SSL_CTX_free(ctx);
	return 0;
}
