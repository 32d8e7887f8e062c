#!/usr/bin/env python3
"""An eCaptureQ client: decodes LogEntry messages with classes protoc made
from tests/peers/ecaptureq.proto, and prints one JSON object per message.

usage: ecaptureq_client.py URL GENERATED_DIR SECONDS

Connects to URL (retrying until it listens), then prints what it receives
for SECONDS, or until the server closes the connection.
"""
import asyncio
import base64
import json
import sys
import time

import websockets

sys.path.insert(0, sys.argv[2])
import ecaptureq_pb2  # noqa: E402

NAMES = {0: "heartbeat", 1: "log", 2: "event"}


def describe(entry):
    kind = entry.WhichOneof("payload")
    shown = {"log_type": NAMES.get(entry.log_type, entry.log_type), "payload": kind}
    if kind == "run_log":
        shown["run_log"] = entry.run_log
    elif kind == "event_payload":
        event = entry.event_payload
        shown.update(
            timestamp=event.timestamp, uuid=event.uuid, src_ip=event.src_ip, src_port=event.src_port,
            dst_ip=event.dst_ip, dst_port=event.dst_port, pid=event.pid, pname=event.pname,
            type=event.type, length=event.length,
            payload=event.payload.decode("utf-8", "replace"),
            payload_base64=base64.b64encode(event.payload).decode(),
        )
    elif kind == "heartbeat_payload":
        shown.update(count=entry.heartbeat_payload.count, message=entry.heartbeat_payload.message)
    return shown


async def main():
    url, seconds = sys.argv[1], float(sys.argv[3])
    deadline = time.monotonic() + seconds
    while True:
        try:
            connection = await websockets.connect(url, open_timeout=2, close_timeout=0.5, max_size=None)
            break
        except OSError:
            if time.monotonic() > deadline:
                sys.exit(f"ecaptureq_client: {url} did not accept a connection")
            await asyncio.sleep(0.1)
    print(json.dumps({"connected": True}), flush=True)
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            message = await asyncio.wait_for(connection.recv(), timeout=left)
            entry = ecaptureq_pb2.LogEntry()
            entry.ParseFromString(message if isinstance(message, bytes) else message.encode())
            print(json.dumps(describe(entry)), flush=True)
    except (asyncio.TimeoutError, websockets.ConnectionClosed):
        pass
    await connection.close()


asyncio.run(main())
