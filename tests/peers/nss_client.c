/*
 * An NSS HTTPS client for the nss module's tests: GETs PATH from 127.0.0.1:PORT
 * with PR_Write/PR_Read (as Firefox moves its data) or PR_Send/PR_Recv (as
 * tstclnt does), and prints the answer. It trusts any certificate. Before
 * connecting it reads FILE through NSPR too, and writes a copy of it: that
 * I/O must not show up as TLS. With `wait` it reads a line from stdin first.
 *
 * usage: nss_client PORT PATH read|send tls1.2|tls1.3 FILE [wait]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nss.h>
#include <nspr.h>
#include <ssl.h>
#include <sslproto.h>

static SECStatus accept_any_certificate(void *arg, PRFileDesc *fd, PRBool check_sig, PRBool is_server)
{
	return SECSuccess;
}

static void fail(const char *what)
{
	fprintf(stderr, "nss_client: %s failed: error %d\n", what, PR_GetError());
	exit(1);
}

/* Reads `path` and writes it to `path`.copy, both through NSPR's file I/O. */
static void copy_file_through_nspr(const char *path)
{
	char buf[4096], copy_path[4096];
	PRFileDesc *in, *out;
	PRInt32 n;

	in = PR_Open(path, PR_RDONLY, 0);
	if (!in)
		fail("PR_Open");
	snprintf(copy_path, sizeof(copy_path), "%s.copy", path);
	out = PR_Open(copy_path, PR_WRONLY | PR_CREATE_FILE | PR_TRUNCATE, 0600);
	if (!out)
		fail("PR_Open copy");
	while ((n = PR_Read(in, buf, sizeof(buf))) > 0)
		if (PR_Write(out, buf, n) != n)
			fail("PR_Write file");
	PR_Close(in);
	PR_Close(out);
}

int main(int argc, char **argv)
{
	SSLVersionRange versions = {SSL_LIBRARY_VERSION_TLS_1_2, SSL_LIBRARY_VERSION_TLS_1_3};
	PRIntervalTime timeout = PR_SecondsToInterval(10);
	char request[1024], answer[16384];
	PRFileDesc *tcp, *tls;
	PRNetAddr addr;
	PRBool use_send;
	PRInt32 n;

	if (argc != 6 && !(argc == 7 && strcmp(argv[6], "wait") == 0)) {
		fprintf(stderr, "usage: %s PORT PATH read|send tls1.2|tls1.3 FILE [wait]\n", argv[0]);
		return 2;
	}
	use_send = strcmp(argv[3], "send") == 0;
	if (strcmp(argv[4], "tls1.2") == 0)
		versions.max = SSL_LIBRARY_VERSION_TLS_1_2;
	else
		versions.min = SSL_LIBRARY_VERSION_TLS_1_3;

	if (NSS_NoDB_Init(NULL) != SECSuccess)
		fail("NSS_NoDB_Init");
	if (NSS_SetDomesticPolicy() != SECSuccess)
		fail("NSS_SetDomesticPolicy");
	copy_file_through_nspr(argv[5]);
	if (argc == 7 && !fgets(request, sizeof(request), stdin))
		fail("waiting for a line");

	tcp = PR_OpenTCPSocket(PR_AF_INET);
	if (!tcp)
		fail("PR_OpenTCPSocket");
	tls = SSL_ImportFD(NULL, tcp);
	if (!tls)
		fail("SSL_ImportFD");
	if (SSL_OptionSet(tls, SSL_SECURITY, PR_TRUE) != SECSuccess ||
	    SSL_OptionSet(tls, SSL_HANDSHAKE_AS_CLIENT, PR_TRUE) != SECSuccess ||
	    SSL_VersionRangeSet(tls, &versions) != SECSuccess ||
	    SSL_AuthCertificateHook(tls, accept_any_certificate, NULL) != SECSuccess ||
	    SSL_SetURL(tls, "localhost") != SECSuccess)
		fail("configuring the socket");

	memset(&addr, 0, sizeof(addr));
	if (PR_StringToNetAddr("127.0.0.1", &addr) != PR_SUCCESS)
		fail("PR_StringToNetAddr");
	addr.inet.port = PR_htons((PRUint16)atoi(argv[1]));
	if (PR_Connect(tls, &addr, timeout) != PR_SUCCESS)
		fail("PR_Connect");
	if (SSL_ResetHandshake(tls, PR_FALSE) != SECSuccess || SSL_ForceHandshake(tls) != SECSuccess)
		fail("the handshake");

	snprintf(request, sizeof(request), "GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n", argv[2]);
	n = (PRInt32)strlen(request);
	if ((use_send ? PR_Send(tls, request, n, 0, timeout) : PR_Write(tls, request, n)) != n)
		fail("sending the request");
	for (;;) {
		n = use_send ? PR_Recv(tls, answer, sizeof(answer), 0, timeout) : PR_Read(tls, answer, sizeof(answer));
		if (n <= 0)
			break;
		fwrite(answer, 1, (size_t)n, stdout);
	}
	PR_Close(tls);
	SSL_ClearSessionCache();
	if (NSS_Shutdown() != SECSuccess)
		fail("NSS_Shutdown");
	PR_Cleanup();
	return 0;
}
