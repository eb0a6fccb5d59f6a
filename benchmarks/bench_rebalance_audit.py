#!/usr/bin/env python3
"""Rebalance latency with the audit trail on, one fresh server per row.

For every row (assets, rate, audit sync) this starts `keel serve` on free
loopback ports with a fresh audit file and a copy of the shipped models, runs
`keel bench` open loop over the framed transport (or gRPC), scrapes the
server's per-phase means from /metrics, stops the server with SIGINT and
prints one Markdown table (the one in benchmarks/RESULTS.md).

    swift build -c release --scratch-path .build-release --product keel
    .venv/bin/python benchmarks/bench_rebalance_audit.py --keel .build-release/release/keel \
        [--rows 100:500:normal,100:2000:full] [--transport tcp|grpc] [--duration 10s] [--mandates N]

Server and load generator share the machine's cores, as in RESULTS.md.
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

DEFAULT_ROWS = "10:2000:normal,100:500:normal,100:1000:normal,100:2000:normal,100:500:full,100:2000:full,1000:100:normal"
PHASES = {"engine": "inference", "audit": "audit", "decode": "decode", "encode": "encode"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_rows(text):
    rows = []
    for item in text.split(","):
        parts = item.split(":")
        if len(parts) != 3 or parts[2] not in ("normal", "full"):
            raise SystemExit(f"bad row '{item}': expected ASSETS:RATE:normal|full")
        try:
            assets, rate = int(parts[0]), int(parts[1])
        except ValueError:
            raise SystemExit(f"bad row '{item}': assets and rate must be integers")
        if assets <= 0 or rate <= 0:
            raise SystemExit(f"bad row '{item}': assets and rate must be > 0")
        rows.append((assets, rate, parts[2]))
    return rows


def phase_means(metrics):
    """Per-request means in microseconds of the Rebalance phases."""
    out = {}
    for name, phase in PHASES.items():
        labels = r'\{method="Rebalance",phase="%s"\}' % phase
        total = re.search(r"keel_request_duration_seconds_sum" + labels + r" (\S+)", metrics)
        count = re.search(r"keel_request_duration_seconds_count" + labels + r" (\S+)", metrics)
        if total and count and float(count.group(1)) > 0:
            out[name] = float(total.group(1)) / float(count.group(1)) * 1e6
    return out


def wait_listening(port, process, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"keel serve exited with status {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"keel serve did not listen on port {port} within {timeout} s")


def run_row(keel, models, assets, rate, sync, transport, duration, warmup, mandates=0):
    work = tempfile.mkdtemp(prefix="keel-bench-audit-")
    try:
        grpc, tcp, metrics = free_port(), free_port(), free_port()
        log = open(os.path.join(work, "server.log"), "w")
        server = subprocess.Popen(
            [keel, "serve", "--models", models, "--audit-db", os.path.join(work, "audit.sqlite"),
             "--audit-sync", sync, "--grpc-port", str(grpc), "--tcp-port", str(tcp),
             "--metrics-port", str(metrics), "--log-level", "warning"],
            stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_listening(tcp, server)
            wait_listening(grpc, server)
            target = f"tcp://127.0.0.1:{tcp}" if transport == "tcp" else f"grpc://127.0.0.1:{grpc}"
            bench = subprocess.run(
                [keel, "bench", "--target", target, "--assets", str(assets), "--rate", str(rate),
                 "--duration", duration, "--warmup", warmup, "--open-loop-connections", "4", "--format", "json",
                 "--mandates", str(mandates)],
                capture_output=True, text=True)
            if bench.returncode not in (0, 2):
                raise RuntimeError(f"keel bench failed ({bench.returncode}): {bench.stderr.strip()}")
            report = json.loads(bench.stdout)
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as response:
                means = phase_means(response.read().decode())
        finally:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
            log.close()
        return report, means
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keel", required=True, help="a release build of keel")
    parser.add_argument("--models", default="models", help="model repository to copy (default ./models)")
    parser.add_argument("--rows", default=DEFAULT_ROWS, help="ASSETS:RATE:normal|full,... (default: RESULTS.md's)")
    parser.add_argument("--transport", choices=["tcp", "grpc"], default="tcp")
    parser.add_argument("--duration", default="10s")
    parser.add_argument("--warmup", default="2s")
    parser.add_argument("--mandates", type=int, default=0,
                        help="send N Rebalance requests in turn with varied mandates (keel bench --mandates; "
                             "default 0: its one fixed request)")
    args = parser.parse_args()
    rows = parse_rows(args.rows)
    if not os.access(args.keel, os.X_OK):
        raise SystemExit(f"{args.keel} is not an executable keel binary")
    if not os.path.isdir(args.models):
        raise SystemExit(f"{args.models} is not a model repository directory")

    models = tempfile.mkdtemp(prefix="keel-bench-models-")
    try:
        # A copy: the server watches its repository, and nothing here should touch ./models.
        shutil.copytree(args.models, models, dirs_exist_ok=True)
        print(f"| assets | rate | sync | ok | p50 us | p90 us | p99 us | p99.9 us | engine us | audit us | decode us | encode us |")
        print("|---:|---:|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for assets, rate, sync in rows:
            report, means = run_row(args.keel, models, assets, rate, sync, args.transport, args.duration, args.warmup,
                                    args.mandates)
            latency = report["latency_us"]
            cells = [f"{assets}", f"{rate:,}/s", sync, f"{report['ok']:,} of {report['sent']:,}"]
            cells += [f"{latency[k]:,.0f}" for k in ("p50", "p90", "p99", "p99_9")]
            cells += [f"{means[k]:,.0f}" if k in means else "" for k in PHASES]
            print("| " + " | ".join(cells) + " |", flush=True)
    finally:
        shutil.rmtree(models, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
