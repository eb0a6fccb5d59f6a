"""Reference point for `keel bench`: the same Rebalance request, byte for byte, sent by a
standard Python grpcio client, sequentially on one channel (closed loop, one request in
flight) or at a fixed rate (open loop, latency measured from the intended send time).

The request comes from `keel bench --write-requests` (the bytes `keel bench` sends, and the
price history it publishes first with PublishMarketData), so both clients measure the same
work. grpcio sends and receives raw bytes: no Python protobuf encoding inside the timing.

Usage:
    swift build -c release --scratch-path .build-release --product keel
    .venv/bin/python benchmarks/bench_grpcio_client.py --keel .build-release/release/keel \
        --port 50051 --assets 100 [--rate 500] [--duration 10]
Prints p50/p90/p99/p99.9/max in microseconds, throughput and errors; exits 1 when a
request failed.
"""
import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REBALANCE = "/keel.v1.Rebalancer/Rebalance"
PUBLISH = "/keel.v1.Rebalancer/PublishMarketData"


def read_varint(data: bytes, i: int):
    value, shift = 0, 0
    while True:
        if i >= len(data):
            raise ValueError("truncated varint")
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def split_batch(batch: bytes):
    """The PriceUpdate messages of a serialized keel.v1.PriceUpdateBatch (field 1,
    repeated), as raw bytes: PublishMarketData streams them one message each."""
    updates, i = [], 0
    while i < len(batch):
        tag, i = read_varint(batch, i)
        if tag != (1 << 3 | 2):
            raise ValueError(f"unexpected tag {tag} at byte {i} of the PriceUpdateBatch")
        length, i = read_varint(batch, i)
        if i + length > len(batch):
            raise ValueError("a PriceUpdate runs past the end of the batch")
        updates.append(batch[i:i + length])
        i += length
    return updates


def write_requests(keel: str, host: str, port: int, assets: int, directory: Path):
    if not Path(keel).is_file():
        raise SystemExit(f"--keel {keel}: no such file (build it: swift build -c release "
                         "--scratch-path .build-release --product keel)")
    run = subprocess.run([keel, "bench", "--target", f"grpc://{host}:{port}", "--assets", str(assets),
                          "--rate", "1", "--write-requests", str(directory)],
                         capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"keel bench --write-requests failed ({run.returncode}): {run.stderr.strip()}")
    request = (directory / "request.bin").read_bytes()
    market = directory / "market.bin"
    return request, (market.read_bytes() if market.exists() else None)


def percentiles(lat_ns):
    a = np.sort(np.asarray(lat_ns, dtype=np.float64)) / 1000.0
    q = lambda p: float(a[min(len(a) - 1, int(p * len(a)))])
    return {"p50": q(0.50), "p90": q(0.90), "p99": q(0.99), "p99.9": q(0.999), "max": float(a[-1])}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keel", default=".build-release/release/keel", help="a keel binary (writes the request)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=50051)
    ap.add_argument("--assets", type=int, default=100)
    ap.add_argument("--rate", type=float, default=0, help="requests/s (open loop); 0 = closed loop")
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--warmup", type=float, default=1)
    args = ap.parse_args()

    import grpc
    with tempfile.TemporaryDirectory(prefix="keel-grpcio-bench-") as tmp:
        request, market = write_requests(args.keel, args.host, args.port, args.assets, Path(tmp))
    ch = grpc.insecure_channel(f"{args.host}:{args.port}")
    # No serializers: grpcio sends and returns the bytes as they are.
    rebalance = ch.unary_unary(REBALANCE)
    if market is not None:
        ch.stream_unary(PUBLISH)(iter(split_batch(market)), timeout=30)
    end = time.perf_counter() + args.warmup
    while time.perf_counter() < end:
        rebalance(request, timeout=5)

    lat, errors = [], {}
    lock = threading.Lock()
    t0 = time.perf_counter_ns()
    if args.rate <= 0:
        end = t0 + int(args.duration * 1e9)
        while time.perf_counter_ns() < end:
            s = time.perf_counter_ns()
            try:
                rebalance(request, timeout=5)
                lat.append(time.perf_counter_ns() - s)
            except grpc.RpcError as e:
                errors[e.code().name] = errors.get(e.code().name, 0) + 1
        sent = len(lat) + sum(errors.values())
    else:
        interval = 1e9 / args.rate
        total = int(args.rate * args.duration)

        def done(fut, intended):
            now = time.perf_counter_ns()
            with lock:
                try:
                    fut.result()
                    lat.append(now - intended)
                except grpc.RpcError as e:
                    errors[e.code().name] = errors.get(e.code().name, 0) + 1

        pending = []
        for i in range(total):
            intended = t0 + int(i * interval)
            wait = intended - time.perf_counter_ns()
            if wait > 0:
                time.sleep(wait / 1e9)  # sleeping releases the GIL for grpcio's callback threads
            fut = rebalance.future(request, timeout=5)
            fut.add_done_callback(lambda f, t=intended: done(f, t))
            pending.append(fut)
        for f in pending:
            try:
                f.result()
            except grpc.RpcError:
                pass
        sent = total
    elapsed = (time.perf_counter_ns() - t0) / 1e9
    p = percentiles(lat) if lat else {}
    mode = f"open loop {args.rate:g} req/s" if args.rate > 0 else "closed loop, 1 in flight"
    print(f"grpcio {grpc.__version__} Rebalance, {args.assets} assets ({len(request)} bytes), {mode}, "
          f"{args.duration:g} s: sent {sent}, ok {len(lat)}, errors {errors or 0}, "
          f"throughput {len(lat) / elapsed:.0f} req/s")
    print("  " + ", ".join(f"{k} {v:.0f} us" for k, v in p.items()))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
