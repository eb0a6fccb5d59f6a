"""Reference point for `keel bench`: the same Rebalance requests sent by a standard
Python grpcio client, sequentially on one channel (closed loop, one request in flight) or
at a fixed rate (open loop, latency measured from the intended send time).

Usage: .venv/bin/python benchmarks/bench_grpcio_client.py --port 50051 --assets 100
           [--rate 500] [--duration 10] [--features 12]
Prints p50/p90/p99/p99.9/max in microseconds, throughput and errors.
"""
import argparse
import importlib
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def load_stubs():
    from grpc_tools import protoc
    out = Path(tempfile.mkdtemp(prefix="keel-bench-pygen-"))
    rc = protoc.main(["protoc", f"-I{ROOT / 'proto'}", f"--python_out={out}", f"--grpc_python_out={out}",
                      "keel/v1/portfolio.proto", "keel/v1/service.proto"])
    if rc != 0:
        raise SystemExit("grpc_tools.protoc failed")
    sys.path.insert(0, str(out))
    return importlib.import_module("keel.v1.service_pb2"), importlib.import_module("keel.v1.service_pb2_grpc")


def request(service, n, features, seed=7):
    rng = np.random.default_rng(seed)
    req = service.RebalanceRequest(request_id="bench")
    for i in range(n):
        req.instruments.add(id=f"A{i:04d}", price=float(10 + i % 90), sector="S", lot_size=1)
    req.features.extend(rng.standard_normal(n * features).astype(np.float32).tolist())
    return req


def percentiles(lat_ns):
    a = np.sort(np.asarray(lat_ns, dtype=np.float64)) / 1000.0
    q = lambda p: float(a[min(len(a) - 1, int(p * len(a)))])
    return {"p50": q(0.50), "p90": q(0.90), "p99": q(0.99), "p99.9": q(0.999), "max": float(a[-1])}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=50051)
    ap.add_argument("--assets", type=int, default=100)
    ap.add_argument("--features", type=int, default=12)
    ap.add_argument("--rate", type=float, default=0, help="requests/s (open loop); 0 = closed loop")
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--warmup", type=float, default=1)
    args = ap.parse_args()

    import grpc
    service, service_grpc = load_stubs()
    ch = grpc.insecure_channel(f"{args.host}:{args.port}")
    stub = service_grpc.RebalancerStub(ch)
    req = request(service, args.assets, args.features)
    end = time.perf_counter() + args.warmup
    while time.perf_counter() < end:
        stub.Rebalance(req, timeout=5)

    lat, errors = [], {}
    lock = threading.Lock()
    t0 = time.perf_counter_ns()
    if args.rate <= 0:
        end = t0 + int(args.duration * 1e9)
        while time.perf_counter_ns() < end:
            s = time.perf_counter_ns()
            try:
                stub.Rebalance(req, timeout=5)
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
            fut = stub.Rebalance.future(req, timeout=5)
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
    print(f"grpcio {grpc.__version__} Rebalance, {args.assets} assets, {mode}, {args.duration:g} s: "
          f"sent {sent}, ok {len(lat)}, errors {errors or 0}, throughput {len(lat) / elapsed:.0f} req/s")
    print("  " + ", ".join(f"{k} {v:.0f} us" for k, v in p.items()))


if __name__ == "__main__":
    main()
