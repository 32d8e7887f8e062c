#!/usr/bin/env python3
"""`make soak`: ecapture in text mode under mixed traffic for a set time.

Clients of the tests' Python HTTPS server run side by side, each in a loop:
small keep-alive GETs (curl), chunked gzip responses, 1 MiB uploads, bursts
of short connections, and paced downloads of 64 MiB with a Content-Length
and chunked. Every few seconds the report gives ecapture's RSS; at the end
its summary: events, bytes, records and bytes lost. Exits non-zero if
anything was lost or the RSS kept growing. Not part of `make test`: it
runs for SOAK_SECONDS (default 300) and only ever talks to 127.0.0.1."""
import argparse
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ECAPTURE = ROOT / "bin" / "ecapture"
PEERS = ROOT / "tests" / "peers"
sys.path.insert(0, str(ROOT / "bench"))
from run import free_port, stop, wait_for  # noqa: E402

# A download a side streams at this pace: well within what the reader keeps
# up with while writing both sides to disk.
DOWNLOAD_MB_S = 32
SAMPLE_SECONDS = 5


def rss_kib(pid):
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1))


def traffic_loops(port, until):
    """One loop per kind of client, each until `until`."""
    url = f"https://127.0.0.1:{port}"
    curl = ["curl", "-sk", "--http1.1", "-o", "/dev/null"]
    kinds = {
        "keep-alive GETs": curl + [f"{url}/soak/a", f"{url}/soak/b", f"{url}/soak/c"] * 30,
        "chunked gzip": curl + ["--compressed", f"{url}/soak/gzip-chunked"],
        "1 MiB upload": ["python3", str(PEERS / "https_client.py"), f"{url}/soak/upload", "--post-bytes", str(1 << 20)],
        "short connections": ["python3", str(PEERS / "many_connections.py"), str(port), "200", "/soak/short"],
        "64 MiB download": curl + [f"{url}/big/{64 << 20}/length/{DOWNLOAD_MB_S}"],
        "64 MiB chunked download": curl + [f"{url}/big/{64 << 20}/chunked/{DOWNLOAD_MB_S}"],
    }
    runs = {name: 0 for name in kinds}

    def loop(name, command):
        while time.monotonic() < until:
            subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600, check=True)
            runs[name] += 1

    threads = [threading.Thread(target=loop, args=item, daemon=True) for item in kinds.items()]
    return threads, runs


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ecapture-soak-") as work:
        work = Path(work)
        cert, key = work / "cert.pem", work / "key.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
             "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True,
        )
        port = free_port()
        server_log = open(work / "server.out", "wb")
        server = subprocess.Popen(["python3", str(PEERS / "https_server.py"), str(port), str(cert), str(key)],
                                  stdout=server_log, stderr=subprocess.DEVNULL)
        err_path = work / "ecapture.err"
        # The capture's output is the bulk of the disk traffic; /dev/null keeps
        # the soak about ecapture, not the disk.
        ecapture = subprocess.Popen([str(ECAPTURE), "tls"], stdout=subprocess.DEVNULL, stderr=open(err_path, "wb"))
        try:
            wait_for(lambda: b"listening" in (work / "server.out").read_bytes(), 30, "the server")
            wait_for(lambda: b"ready" in err_path.read_bytes() or ecapture.poll() is not None, 30, "ecapture")
            start = time.monotonic()
            threads, runs = traffic_loops(port, start + args.seconds)
            for thread in threads:
                thread.start()
            samples = []
            print(f"{'seconds':>8} {'RSS MiB':>8}")
            while any(thread.is_alive() for thread in threads):
                time.sleep(SAMPLE_SECONDS)
                samples.append(rss_kib(ecapture.pid))
                print(f"{time.monotonic() - start:8.0f} {samples[-1] / 1024:8.1f}", flush=True)
        finally:
            stop(ecapture, signal.SIGINT, 60)
            stop(server, signal.SIGTERM, 10)
        summary = next((l for l in err_path.read_text().splitlines() if "stopped:" in l), "")
        print("client runs:", ", ".join(f"{name} {count}" for name, count in runs.items()))
        print(summary.split("INFO ")[-1])
        lost = re.search(r"(\d+) records lost, .* (\d+) bytes lost", summary)
        quarter = max(1, len(samples) // 4)
        # Memory is flat when the last quarter's peak is no higher than the
        # first quarter's, give or take 16 MiB of allocator slack.
        growing = bool(samples) and max(samples[-quarter:]) > max(samples[:quarter]) + 16 * 1024
        if not lost or lost.group(1) != "0" or lost.group(2) != "0" or growing:
            print("soak FAILED: " + ("records lost" if not lost or lost.group(1) != "0" else "RSS kept growing"))
            return 1
        print("soak passed: nothing lost, RSS flat")
        return 0


if __name__ == "__main__":
    sys.exit(main())
