#!/usr/bin/env python3
"""An HTTPS server that forks a child per connection, as PostgreSQL and
socat's fork mode do: the parent accepts, the child does the TLS and
answers "served-by PID". Usage: forking_server.py PORT CERT KEY"""
import os
import signal
import socket
import ssl
import sys


def serve(connection, context):
    with context.wrap_socket(connection, server_side=True) as tls:
        request = b""
        while b"\r\n\r\n" not in request:
            data = tls.recv(4096)
            if not data:
                return
            request += data
        body = f"served-by {os.getpid()}\n".encode()
        tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))


def main():
    port, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    listener = socket.create_server(("127.0.0.1", port))
    print("listening", flush=True)
    while True:
        connection, _ = listener.accept()
        if os.fork() == 0:
            listener.close()
            serve(connection, context)
            os._exit(0)
        connection.close()


if __name__ == "__main__":
    main()
