#!/usr/bin/env python3
"""`make bench`: what tracing TLS costs, measured against no tracer and a
bpftrace peer, on a TLS ping-pong and on nginx loaded by wrk; and what
`ecapture gotls` costs a ping-pong in Go's own TLS.

Configurations run in alternation (A/B) for several rounds; the report gives
the median and the min-max of each, the throughput ratio to no tracer,
ecapture's CPU seconds, peak RSS, time to ready, and completeness: the bytes
ecapture captured against the bytes the workload moved, and records lost.
The same figures go to target/bench/<time>.json. Speed is only measured here,
never asserted."""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ECAPTURE = ROOT / "bin" / "ecapture"
LIBSSL = "/usr/lib/x86_64-linux-gnu/libssl.so.3"

# bpftrace one-liner that captures the same payloads (as far as its 64-byte
# buffers go): written bytes at entry, read bytes at return.
BPFTRACE = f"""
uprobe:{LIBSSL}:SSL_write {{ printf("%d %r\\n", pid, buf(arg1, arg2)); }}
uprobe:{LIBSSL}:SSL_read {{ @buf[tid] = arg1; }}
uretprobe:{LIBSSL}:SSL_read /@buf[tid] && retval > 0/ {{ printf("%d %r\\n", pid, buf(@buf[tid], retval)); delete(@buf[tid]); }}
"""

CONFIGS = ["baseline", "ecapture-text", "ecapture-keylog", "bpftrace"]

# The ping-pong's two threads share CPU 0 and the tracer's reader gets CPU 1.
# Left to the scheduler, each round trip waits for an idle vCPU to wake, and
# on some VM hosts that wait dominates: a tracer that merely keeps the other
# vCPU busy then makes the workload faster. Pinned, a round trip is two
# context switches on one CPU, and the probes' cost lands on the workload.
WORKLOAD_CPUS = ["taskset", "-c", "0"] if (os.cpu_count() or 1) >= 2 else []
TRACER_CPUS = ["taskset", "-c", "1"] if (os.cpu_count() or 1) >= 2 else []


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise RuntimeError(f"timed out waiting for {what}")


def stop(proc, sig, timeout):
    """Asks `proc` to stop with `sig`, and kills it if it has not within `timeout` seconds."""
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def proc_stats(pid):
    """CPU seconds used and peak RSS (KiB) of a running process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    hwm = re.search(r"VmHWM:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())
    return cpu, int(hwm.group(1)) if hwm else 0


def bpf_program_costs():
    """Average run time of each ecapture program, from kernel.bpf_stats_enabled."""
    out = subprocess.run(["bpftool", "prog", "show", "-j"], capture_output=True, text=True, check=False).stdout
    costs = {}
    for prog in json.loads(out or "[]"):
        name = prog.get("name", "")
        if prog.get("run_cnt") and (name.startswith(("ssl_", "handshake_", "keys_", "sys_enter_", "gotls_"))):
            costs[name] = prog["run_time_ns"] / prog["run_cnt"]
    return costs


class Tracer:
    """One tracer configuration, started before a workload and stopped after."""

    def __init__(self, config, workdir, module, program_costs=False):
        """`module` is ecapture's module and its target, as arguments."""
        self.config, self.workdir, self.proc, self.result = config, Path(workdir), None, {}
        self.module, self.program_costs = module, program_costs

    def __enter__(self):
        if self.config == "baseline":
            return self
        out = open(self.workdir / f"{self.config}.out", "wb")
        self.err_path = self.workdir / f"{self.config}.err"
        err = open(self.err_path, "wb")
        if self.config == "bpftrace":
            cmd = ["bpftrace", "-e", BPFTRACE]
            ready = lambda: b"Attaching" in self.err_path.read_bytes() or b"Attaching" in (self.workdir / f"{self.config}.out").read_bytes()
        else:
            cmd = [str(ECAPTURE)] + self.module
            if self.config == "ecapture-keylog":
                cmd += ["-m", "keylog", "-k", str(self.workdir / "keys.log")]
            ready = lambda: b"ready" in self.err_path.read_bytes()
        started = time.monotonic()
        self.proc = subprocess.Popen(TRACER_CPUS + cmd, stdout=out, stderr=err)
        wait_for(lambda: ready() or self.proc.poll() is not None, 30, f"{self.config} to be ready")
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.config} exited: {self.err_path.read_text()}")
        self.result["ready_ms"] = (time.monotonic() - started) * 1000
        if self.config == "bpftrace":
            time.sleep(1.0)  # bpftrace prints before it finishes attaching
        if self.program_costs:
            subprocess.run(["sysctl", "-q", "kernel.bpf_stats_enabled=1"], check=False)
        return self

    def __exit__(self, *exc):
        if self.proc is None:
            return False
        if self.config.startswith("ecapture"):
            self.result["cpu_s"], self.result["rss_kib"] = proc_stats(self.proc.pid)
        if self.program_costs:
            self.result["bpf_ns_per_run"] = bpf_program_costs()
            subprocess.run(["sysctl", "-q", "kernel.bpf_stats_enabled=0"], check=False)
        stop(self.proc, signal.SIGINT, 60)
        if self.config.startswith("ecapture"):
            summary = re.search(
                rb"stopped: (\d+) events, (\d+) bytes captured, (\d+) sessions keyed, \d+ packets written, "
                rb"(\d+) records lost, \d+ packets lost, (\d+) calls incomplete",
                self.err_path.read_bytes(),
            )
            if summary:
                events, captured, sessions, lost, broken = map(int, summary.groups())
                self.result.update(events=events, captured_bytes=captured, sessions=sessions, lost=lost + broken)
        return False


def pingpong(binary, cert, key, size, seconds):
    """Runs a ping-pong of bench/tls_pingpong.c's command line and output."""
    out = subprocess.run(WORKLOAD_CPUS + [binary, cert, key, str(size), str(seconds)], capture_output=True, check=True,
                         timeout=seconds + 60)
    data = json.loads(out.stdout)
    return {"throughput": data["round_trips"] / data["seconds"], "transferred_bytes": data["ssl_bytes"]}


class Nginx:
    def __init__(self, workdir, cert, key):
        self.dir, self.port = Path(workdir) / "nginx", free_port()
        (self.dir / "html").mkdir(parents=True, exist_ok=True)
        (self.dir / "logs").mkdir(exist_ok=True)
        for name, size in [("100b", 100), ("16k", 16 * 1024), ("1m", 1024 * 1024)]:
            (self.dir / "html" / name).write_bytes(b"x" * size)
        (self.dir / "nginx.conf").write_text(f"""
worker_processes 2;
pid {self.dir}/nginx.pid;
error_log {self.dir}/logs/error.log;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile off;
    client_body_temp_path {self.dir}/tmp; proxy_temp_path {self.dir}/tmp; fastcgi_temp_path {self.dir}/tmp;
    uwsgi_temp_path {self.dir}/tmp; scgi_temp_path {self.dir}/tmp;
    server {{
        listen 127.0.0.1:{self.port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        root {self.dir}/html;
        keepalive_requests 1000000;
    }}
}}
""")

    def __enter__(self):
        self.proc = subprocess.Popen(["nginx", "-p", str(self.dir), "-c", str(self.dir / "nginx.conf"), "-g", "daemon off;"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: self._listening(), 15, "nginx")
        return self

    def _listening(self):
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def __exit__(self, *exc):
        stop(self.proc, signal.SIGQUIT, 20)
        return False


def parse_duration_ms(text):
    match = re.match(r"([\d.]+)(ns|us|ms|s|m)$", text)
    if not match:
        raise RuntimeError(f"unexpected wrk latency {text!r}")
    value, unit = match.groups()
    return float(value) * {"ns": 1e-6, "us": 0.001, "ms": 1, "s": 1000, "m": 60000}[unit]


def wrk(port, path, seconds):
    out = subprocess.run(["wrk", "-t2", "-c16", f"-d{seconds}s", "--latency", f"https://127.0.0.1:{port}/{path}"],
                         capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw failed requests:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    # The "Latency Distribution" block: lines such as "     99%    1.23ms".
    p50 = parse_duration_ms(re.search(r"^\s+50%\s+(\S+)$", out, re.M).group(1))
    p99 = parse_duration_ms(re.search(r"^\s+99%\s+(\S+)$", out, re.M).group(1))
    read = re.search(r"requests in [\d.]+\w+, ([\d.]+)(B|KB|MB|GB) read", out)
    scale = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}[read.group(2)]
    return {"throughput": rps, "p50_ms": p50, "p99_ms": p99, "transferred_bytes": int(float(read.group(1)) * scale)}


def summarize(samples):
    values = [s for s in samples if s is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def run(args, workdir):
    os.chmod(workdir, 0o755)  # nginx workers run as nobody and must read the pages
    cert, key = f"{workdir}/cert.pem", f"{workdir}/key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-keyout", key, "-out", cert], check=True, capture_output=True)
    pingpong_bin = f"{workdir}/tls_pingpong"
    subprocess.run(["cc", "-O2", "-o", pingpong_bin, str(ROOT / "bench" / "tls_pingpong.c"), "-lssl", "-lcrypto", "-lpthread"],
                   check=True)
    go_pingpong_bin = f"{workdir}/go_pingpong"
    if args.go_sizes:
        subprocess.run(["go", "build", "-o", go_pingpong_bin, str(ROOT / "bench" / "go_pingpong.go")], check=True,
                       env=dict(os.environ, GO111MODULE="off", GOCACHE=f"{workdir}/go-cache", HOME=workdir))

    def measure(kind, param, context):
        if kind == "pingpong":
            return pingpong(pingpong_bin, cert, key, param, args.seconds)
        if kind == "go pingpong":
            return pingpong(go_pingpong_bin, cert, key, param, args.seconds)
        return wrk(context.port, param, args.seconds)

    libssl = ["tls", "--libssl", LIBSSL]
    go = ["gotls", "--elfpath", go_pingpong_bin]
    workloads = [(f"pingpong {size}", "pingpong", size, libssl) for size in args.sizes]
    workloads += [(f"nginx {path}", "nginx", path, libssl) for path in args.paths]
    workloads += [(f"go pingpong {size}", "go pingpong", size, go) for size in args.go_sizes]
    results, costs = {}, {}
    for name, kind, param, module in workloads:
        # bpftrace has no safe way into Go: its return probes corrupt Go's stacks.
        configs = [c for c in args.configs if c != "bpftrace" or module == libssl]
        runs = {config: [] for config in configs}
        context = Nginx(workdir, cert, key) if kind == "nginx" else None
        if context:
            context.__enter__()
        try:
            for round_index in range(args.rounds):
                # Alternate the order each round so drift hits every configuration alike.
                order = configs if round_index % 2 == 0 else list(reversed(configs))
                for config in order:
                    with Tracer(config, workdir, module) as tracer:
                        measured = measure(kind, param, context)
                    measured.update(tracer.result)
                    runs[config].append(measured)
                    print(f"{name:16} {config:16} {measured['throughput']:12.1f}/s", file=sys.stderr)
            # The kernel's per-program statistics cost each program run two
            # clock reads (2% of the 64-byte ping-pong): they are taken in a
            # run of their own, which the throughput figures leave out.
            costs[name] = {}
            for config in [c for c in configs if c.startswith("ecapture")]:
                with Tracer(config, workdir, module, program_costs=True) as tracer:
                    measure(kind, param, context)
                costs[name][config] = tracer.result["bpf_ns_per_run"]
        finally:
            if context:
                context.__exit__(None, None, None)
        results[name] = runs
    return results, costs


def report(results, costs):
    table = []
    for workload, runs in results.items():
        base = statistics.median(r["throughput"] for r in runs["baseline"])
        for config, samples in runs.items():
            row = {"workload": workload, "config": config}
            for field in ["throughput", "p50_ms", "p99_ms", "cpu_s", "rss_kib", "ready_ms", "lost"]:
                row[field] = summarize([s.get(field) for s in samples])
            row["ratio"] = row["throughput"]["median"] / base
            if costs[workload].get(config):
                row["bpf_ns_per_run"] = costs[workload][config]
            if config.startswith("ecapture-text"):
                row["completeness"] = summarize([s["captured_bytes"] / s["transferred_bytes"] for s in samples
                                                 if "captured_bytes" in s])
            table.append(row)
    return table


def print_table(table):
    print(f"{'workload':16} {'config':16} {'ratio':>6} {'median/s':>11} {'min-max/s':>21} {'p50ms':>7} {'p99ms':>7} "
          f"{'cpu s':>6} {'rssMiB':>7} {'ready ms':>8} {'lost':>5} {'captured/moved':>14}")
    for row in table:
        t = row["throughput"]
        cell = lambda f, fmt: (fmt.format(row[f]["median"]) if row.get(f) else "-")
        rss = f"{row['rss_kib']['median'] / 1024:.1f}" if row.get("rss_kib") else "-"
        print(f"{row['workload']:16} {row['config']:16} {row['ratio']:6.2f} {t['median']:11.1f} "
              f"{t['min']:10.1f}-{t['max']:<10.1f} {cell('p50_ms', '{:.2f}'):>7} {cell('p99_ms', '{:.2f}'):>7} "
              f"{cell('cpu_s', '{:.2f}'):>6} {rss:>7} "
              f"{cell('ready_ms', '{:.0f}'):>8} {cell('lost', '{:.0f}'):>5} {cell('completeness', '{:.3f}'):>14}")


def print_program_costs(table):
    print("\nBPF program cost, ns per run (kernel.bpf_stats_enabled, in a run of their own):")
    for row in table:
        if row.get("bpf_ns_per_run"):
            costs = ", ".join(f"{name} {ns:.0f}" for name, ns in sorted(row["bpf_ns_per_run"].items()))
            print(f"  {row['workload']:16} {row['config']:16} {costs}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a run under two minutes")
    parser.add_argument("--sizes", type=int, nargs="*", help="only these ping-pong sizes")
    parser.add_argument("--paths", nargs="*", help="only these nginx pages (100b, 16k, 1m)")
    parser.add_argument("--go-sizes", type=int, nargs="*", help="only these Go ping-pong sizes")
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=CONFIGS, help="only these configurations")
    parser.add_argument("--rounds", type=int, help="rounds of alternation")
    args = parser.parse_args()
    if args.quick:
        rounds, args.seconds, sizes, paths, go_sizes = 1, 2, [64, 16384], ["100b", "1m"], [64, 16384]
    else:
        rounds, args.seconds, sizes, paths, go_sizes = 5, 3, [64, 1024, 16384, 262144], ["100b", "16k", "1m"], [64, 16384]
    # Ratios are to the untraced run, which therefore always runs.
    args.configs = ["baseline"] + [c for c in args.configs if c != "baseline"]
    args.rounds = args.rounds or rounds
    args.sizes = sizes if args.sizes is None else args.sizes
    args.paths = paths if args.paths is None else args.paths
    args.go_sizes = go_sizes if args.go_sizes is None else args.go_sizes
    if os.geteuid() != 0:
        sys.exit("make bench needs root (BPF)")
    # Captured text runs to gigabytes a run: the directory goes at the end.
    workdir = tempfile.mkdtemp(prefix="ecapture-bench-")
    try:
        results, costs = run(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    table = report(results, costs)
    print_table(table)
    print_program_costs(table)
    out_dir = ROOT / "target" / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{time.strftime('%Y%m%dT%H%M%S')}{'-quick' if args.quick else ''}.json"
    machine = {"kernel": os.uname().release, "cpus": os.cpu_count(), "rounds": args.rounds, "seconds": args.seconds}
    out.write_text(json.dumps({"machine": machine, "table": table, "runs": results}, indent=1))
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
