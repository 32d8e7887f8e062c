#!/usr/bin/env python3
"""asyncio's TLS (a memory BIO: the event loop moves the ciphertext) on one
connection to 127.0.0.1:PORT: GETs each PATH in turn, keep-alive, and prints
each response's status line."""
import asyncio
import ssl
import sys


async def main(port, paths):
    context = ssl._create_unverified_context()
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    for path in paths:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
        length = next(
            int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
        )
        await asyncio.wait_for(reader.readexactly(length), 20)
        print(head.split(b"\r\n")[0].decode())
        await asyncio.sleep(0.1)
    writer.close()
    await writer.wait_closed()


asyncio.run(main(int(sys.argv[1]), sys.argv[2:]))
