#!/usr/bin/env python3
"""A real HTTPS peer for ecapture's end-to-end tests (CPython's ssl, hence
SSL_read_ex/SSL_write_ex). Answers GET with a body naming the path; paths
ending in /gzip-chunked get a gzip body in chunked framing; paths under
/hostile/ get the malformed framing they name, then the connection closes;
/big/SIZE/FRAMING/RATE streams SIZE bytes of numbered 64-byte lines, with a
Content-Length or chunked (FRAMING "length" or "chunked"), at RATE MB/s;
POST is answered with the number of bytes received. Serves until killed."""
import gzip
import http.server
import ssl
import sys
import time


# The big body's lines: "L" and the line's number, then filler to 64 bytes.
FILLER = b"-abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"[:53] + b"\n"
LINES_PER_BLOCK = 16384


def big_body_blocks(size):
    """The body, a block of LINES_PER_BLOCK lines (1 MiB) at a time."""
    lines = size // 64
    for first in range(0, lines, LINES_PER_BLOCK):
        last = min(first + LINES_PER_BLOCK, lines)
        yield b"".join(b"L%09d%s" % (n, FILLER) for n in range(first, last))


def gzip_response(body):
    return b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


# Framings no reader can follow, and bodies no reader should inflate, as a
# hostile peer would send them.
HOSTILE = {
    # size + offset wraps a 64-bit sum
    "chunk-overflow": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffe\r\nabc\r\n",
    "length-overflow": b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\nabc",
    # the gzip trailer (and the end of the deflate stream) cut off
    "truncated-gzip": gzip_response(gzip.compress(b"truncated gzip body " * 100)[:-12]),
    # 256 MiB of zeros in about 250 KiB
    "gzip-bomb": gzip_response(gzip.compress(bytes(256 << 20), 9)),
}


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = f"response-body-for {self.path}\n".encode()
        hostile = HOSTILE.get(self.path.rsplit("/", 1)[-1])
        if self.path.startswith("/hostile/") and hostile:
            self.close_connection = True
            self.wfile.write(hostile)
            return
        if self.path.endswith("/gzip-chunked"):
            compressed = gzip.compress(body)
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            half = len(compressed) // 2
            for part in (compressed[:half], compressed[half:]):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
            return
        if self.path.startswith("/big/"):
            self.send_big(*self.path.split("/")[2:5])
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def send_big(self, size, framing, rate):
        size, chunked, rate = int(size), framing == "chunked", float(rate) * 1e6
        self.send_response(200)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(size // 64 * 64))
        self.end_headers()
        start, sent = time.monotonic(), 0
        for block in big_body_blocks(size):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block) if chunked else block)
            sent += len(block)
            ahead = sent / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        received = self.rfile.read(length)
        body = f"received {len(received)} bytes\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main():
    port, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    print("listening", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
