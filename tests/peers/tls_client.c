/* A minimal TLS client for ecapture's end-to-end tests, built against
 * OpenSSL (linked statically) or BoringSSL. Sends argv[3], prints the reply.
 * An optional argv[4] of "1.2" caps the protocol at TLS 1.2. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc != 4 && argc != 5) {
		fprintf(stderr, "usage: %s HOST PORT MESSAGE [1.2]\n", argv[0]);
		return 2;
	}
	struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[2])) };
	inet_pton(AF_INET, argv[1], &addr.sin_addr);
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0) {
		perror("connect");
		return 1;
	}
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	if (argc == 5 && strcmp(argv[4], "1.2") == 0)
		SSL_CTX_set_max_proto_version(ctx, TLS1_2_VERSION);
	SSL *ssl = SSL_new(ctx);
	SSL_set_fd(ssl, fd);
	if (SSL_connect(ssl) != 1) {
		fprintf(stderr, "handshake failed\n");
		return 1;
	}
	if (SSL_write(ssl, argv[3], (int)strlen(argv[3])) <= 0) {
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
	SSL_CTX_free(ctx);
	close(fd);
	return n > 0 ? 0 : 1;
}
