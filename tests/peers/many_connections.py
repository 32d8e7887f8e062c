#!/usr/bin/env python3
"""Opens COUNT HTTPS connections to 127.0.0.1:PORT one after another, each
sending one GET for PATH and reading the whole response before closing."""
import socket
import ssl
import sys


def main():
    port, count, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    context = ssl._create_unverified_context()
    request = f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port)) as raw:
            with context.wrap_socket(raw) as tls:
                tls.sendall(request)
                while tls.recv(65536):
                    pass
    print(f"{count} connections")


if __name__ == "__main__":
    main()
