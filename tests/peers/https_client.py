#!/usr/bin/env python3
"""urllib over CPython's ssl: GET a URL, or POST --post-bytes N bytes of a
printable pattern that ends with --marker. With --wait, reads a line from
stdin first, so a test can learn the pid before any traffic."""
import argparse
import ssl
import sys
import urllib.request


def pattern(size, marker):
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-payload\n"
    tail = marker.encode()
    body = (line * (size // len(line) + 1))[: size - len(tail)]
    return body + tail


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--post-bytes", type=int, default=0)
    parser.add_argument("--marker", default="END")
    parser.add_argument("--wait", action="store_true")
    args = parser.parse_args()
    if args.wait:
        sys.stdin.readline()
    context = ssl._create_unverified_context()
    data = pattern(args.post_bytes, args.marker) if args.post_bytes else None
    request = urllib.request.Request(args.url, data=data, headers={"Connection": "close"})
    with urllib.request.urlopen(request, context=context, timeout=20) as response:
        sys.stdout.write(response.read().decode())


if __name__ == "__main__":
    main()
