#!/usr/bin/env python3
"""Side-by-side latency: Keel's C core vs ONNX Runtime on the same .onnx file.

Model: a per-asset policy MLP [N x 32] -> 64 -> 64 -> 1 (Gemm, Relu, Gemm,
Relu, Gemm), built here from a fixed seed. Both engines run the same file on
the same preallocated inputs, driven from the same Python loop, one thread each:

  ONNX Runtime  intra_op_num_threads=1, inter_op_num_threads=1, ORT_SEQUENTIAL,
                CPUExecutionProvider. Two ways of calling it are timed:
                `sess.run(names, feeds)` and io_binding with a preallocated
                output buffer (`run_with_iobinding`); the table reports the
                faster one for each N and says which it was.
  Keel          through ctypes (Tests/python/keelcore.py), the counterpart of
                io_binding: input and a preallocated output array bound once
                (keel_session_bind), then one keel_session_run_bound call per
                run that writes the output array (the table's number). Also
                timed and printed below the table: keel_session_run plus a
                memmove of the output (two ctypes calls), and keel_session_run
                alone (output left in session memory). One OpenBLAS thread;
                dense layers run Keel's packed AVX-512 (or AVX2) kernels when
                the CPU has them, unless KEEL_GEMM=blas sends them to
                cblas_sgemm (KEEL_GEMM=avx2 picks the AVX2 kernel). The model's
                "kernels" property, printed in the header, says which ran.

Method: outputs are compared first (normwise relative error <= 1e-5), then a
warm-up, then interleaved batches of calls (ORT batch, Keel batch, alternating
which goes first); each call is timed alone with time.perf_counter_ns. Reported:
median and p99 microseconds per call and the ratio ORT/Keel of the medians.

Usage:
  .venv/bin/python benchmarks/bench_core_vs_ort.py [--sizes 10,100,1000] [--calls 4000] [--json FILE]
  .venv/bin/python benchmarks/bench_core_vs_ort.py --write-model build/bench_policy.onnx
"""
from __future__ import annotations

import os

# One thread everywhere, before numpy / OpenBLAS / the core are loaded.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("KEEL_BLAS_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "Tests" / "python"))

SEED = 7
F, HID = 32, 64


def build_model_bytes() -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(SEED)
    sizes = [F, HID, HID, 1]
    nodes, inits, cur = [], [], "x"
    for i in range(3):
        lim = np.sqrt(6.0 / (sizes[i] + sizes[i + 1]))
        w = rng.uniform(-lim, lim, (sizes[i + 1], sizes[i])).astype(np.float32)
        b = (rng.standard_normal(sizes[i + 1]) * 0.1).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        out = "y" if i == 2 else f"g{i}"
        nodes.append(helper.make_node("Gemm", [cur, f"w{i}", f"b{i}"], [out], name=f"fc{i}", transB=1))
        if i < 2:
            nodes.append(helper.make_node("Relu", [out], [f"r{i}"], name=f"relu{i}"))
            cur = f"r{i}"
    g = helper.make_graph(nodes, "bench_policy", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", F])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], producer_name="keel-bench")
    m.ir_version = 8
    helper.set_model_props(m, {"keel.kind": "policy", "keel.version": "0",
                               "keel.features": ",".join(f"f{i}" for i in range(F))})
    onnx.checker.check_model(m)
    return m.SerializeToString()


def stats(ns: np.ndarray) -> dict:
    us = ns / 1000.0
    return {"median_us": float(np.median(us)), "p99_us": float(np.percentile(us, 99)),
            "mean_us": float(us.mean()), "min_us": float(us.min()), "calls": int(us.size)}


def timed_loop(fn, n_calls: int, out: np.ndarray, pos: int) -> int:
    pc = time.perf_counter_ns
    for _ in range(n_calls):
        t0 = pc()
        fn()
        out[pos] = pc() - t0
        pos += 1
    return pos


def bench_size(model_path: str, n: int, calls: int, batch: int, warmup: int):
    import onnxruntime as ort
    import keelcore

    rng = np.random.default_rng(1000 + n)
    x = rng.standard_normal((n, F)).astype(np.float32)

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    sess = ort.InferenceSession(model_path, so, providers=["CPUExecutionProvider"])
    feeds = {"x": x}
    names = ["y"]
    y_ort_buf = np.empty((n, 1), np.float32)
    io = sess.io_binding()
    io.bind_cpu_input("x", x)
    io.bind_output("y", "cpu", 0, np.float32, [n, 1], y_ort_buf.ctypes.data)

    def ort_run():
        sess.run(names, feeds)

    def ort_iob():
        sess.run_with_iobinding(io)

    model = keelcore.Model.load(model_path)
    ksess = keelcore.Session(model)
    y_keel = np.empty((n, 1), np.float32)
    keel_run = ksess.bind([x], outputs=[y_keel]).run  # keel_session_run_bound
    fast = ksess.bind([x])                              # keel_session_run + memmove
    y_copy = np.empty((n, 1), np.float32)
    dst = [(y_copy.ctypes.data, y_copy.nbytes)]
    run_into = fast.run_into

    def keel_run_copy():
        run_into(dst)

    keel_view = fast.run  # output left in session memory (a view), no copy

    # Correctness first.
    (ref,) = sess.run(names, feeds)
    ort_iob()
    keel_run()
    keel_run_copy()
    denom = max(float(np.abs(ref).max()), 1e-30)
    err_keel = max(float(np.abs(y_keel - ref).max()), float(np.abs(y_copy - ref).max())) / denom
    err_iob = float(np.abs(y_ort_buf - ref).max()) / denom
    if err_keel > 1e-5 or err_iob > 1e-6:
        raise SystemExit(f"N={n}: outputs disagree (keel rel err {err_keel:.2e}, io_binding {err_iob:.2e})")

    contenders = {"ort_run": ort_run, "ort_iobinding": ort_iob, "keel": keel_run, "keel_run_copy": keel_run_copy,
                  "keel_view": keel_view}
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    times = {k: np.empty(calls, np.int64) for k in contenders}
    pos = {k: 0 for k in contenders}
    order = list(contenders)
    rnd = 0
    while pos["keel"] < calls:
        b = min(batch, calls - pos["keel"])
        seq = order if rnd % 2 == 0 else order[::-1]
        for k in seq:
            pos[k] = timed_loop(contenders[k], b, times[k], pos[k])
        rnd += 1
    res = {k: stats(v) for k, v in times.items()}
    best_ort = min(("ort_run", "ort_iobinding"), key=lambda k: res[k]["median_us"])
    ksess.close()
    model.close()
    return {"N": n, "rel_err_keel_vs_ort": err_keel, "ort_method": best_ort, "ort": res[best_ort],
            "ort_run": res["ort_run"], "ort_iobinding": res["ort_iobinding"], "keel": res["keel"],
            "keel_run_copy": res["keel_run_copy"], "keel_view": res["keel_view"],
            "ratio_ort_over_keel_median": res[best_ort]["median_us"] / res["keel"]["median_us"],
            "ratio_ort_over_keel_p99": res[best_ort]["p99_us"] / res["keel"]["p99_us"]}


def openblas_info() -> str:
    """Config and kernel set of the OpenBLAS the core uses (same soname, same library)."""
    import ctypes
    try:
        ob = ctypes.CDLL("libopenblas.so.0")
        ob.openblas_get_corename.restype = ctypes.c_char_p
        ob.openblas_get_config.restype = ctypes.c_char_p
        return f"{ob.openblas_get_config().decode()} (kernels: {ob.openblas_get_corename().decode()})"
    except (OSError, AttributeError) as e:
        return f"unknown ({e})"


def cpu_has_avx512() -> bool:
    try:
        return " avx512f" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def ctypes_floor_ns(reps=20000) -> float:
    """Cost of a trivial ctypes call into the core (keel_blas_threads), per call."""
    import keelcore
    f = keelcore.lib().keel_blas_threads
    pc = time.perf_counter_ns
    t = np.empty(reps, np.int64)
    for i in range(reps):
        t0 = pc()
        f()
        t[i] = pc() - t0
    return float(np.median(t))


def main():
    ap = argparse.ArgumentParser(description="Keel core vs ONNX Runtime latency")
    ap.add_argument("--sizes", default="10,100,1000")
    ap.add_argument("--calls", type=int, default=4000, help="timed calls per engine and size")
    ap.add_argument("--batch", type=int, default=200, help="calls per interleaved batch")
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--json", type=Path, help="also write the results as JSON here")
    ap.add_argument("--write-model", type=Path, help="only write the benchmark model to this path and exit")
    args = ap.parse_args()

    data = build_model_bytes()
    if args.write_model:
        args.write_model.parent.mkdir(parents=True, exist_ok=True)
        args.write_model.write_bytes(data)
        print(f"wrote {args.write_model} ({len(data)} bytes): policy MLP [N x {F}] -> {HID} -> {HID} -> 1")
        return

    import onnxruntime as ort
    import keelcore
    keelcore.set_blas_threads(1)

    with tempfile.TemporaryDirectory() as td:
        path = os.path.join(td, "bench_policy.onnx")
        Path(path).write_bytes(data)
        with keelcore.Model.load(path) as m:
            kernels = m.properties.get("kernels", "(unknown)")  # which kernels run the products
        sizes = [int(s) for s in args.sizes.split(",")]
        results = [bench_size(path, n, args.calls, args.batch, args.warmup) for n in sizes]

    env = {"python": platform.python_version(), "onnxruntime": ort.__version__, "numpy": np.__version__,
           "keel": keelcore.version(), "keel_blas_threads": keelcore.blas_threads(),
           "machine": platform.machine(), "cpus": os.cpu_count(),
           "ctypes_call_floor_us": ctypes_floor_ns() / 1000.0,
           "openblas": openblas_info(), "openblas_coretype_env": os.environ.get("OPENBLAS_CORETYPE"),
           "cpu_avx512f": cpu_has_avx512(), "keel_gemm_env": os.environ.get("KEEL_GEMM"),
           "keel_kernels": kernels,
           "model": f"Gemm/Relu MLP [N x {F}] -> {HID} -> {HID} -> 1, opset 17, seed {SEED}",
           "calls_per_engine": args.calls, "batch": args.batch, "warmup": args.warmup}

    print(f"Keel core vs ONNX Runtime {ort.__version__}: {env['model']}; one thread each; "
          f"{args.calls} timed calls per engine and N, interleaved batches of {args.batch}.")
    print(f"Keel's OpenBLAS: {env['openblas']}; OPENBLAS_CORETYPE={env['openblas_coretype_env'] or '(unset)'}; "
          f"CPU AVX-512F: {'yes' if env['cpu_avx512f'] else 'no'}; KEEL_GEMM={env['keel_gemm_env'] or '(unset)'}; "
          f"Keel's kernels: {env['keel_kernels']}\n")
    print("| N | ORT median us | ORT p99 us | ORT call | Keel median us | Keel p99 us | ORT/Keel median | ORT/Keel p99 |")
    print("|---:|---:|---:|:---|---:|---:|---:|---:|")
    for r in results:
        o, k = r["ort"], r["keel"]
        print(f"| {r['N']} | {o['median_us']:.1f} | {o['p99_us']:.1f} | {r['ort_method']} | {k['median_us']:.1f} | "
              f"{k['p99_us']:.1f} | {r['ratio_ort_over_keel_median']:.2f}x | {r['ratio_ort_over_keel_p99']:.2f}x |")
    print()
    for r in results:
        print(f"N={r['N']}: ORT sess.run median {r['ort_run']['median_us']:.1f} us, io_binding median "
              f"{r['ort_iobinding']['median_us']:.1f} us; Keel run + memmove median "
              f"{r['keel_run_copy']['median_us']:.1f} us, run alone (output left in session memory) "
              f"{r['keel_view']['median_us']:.1f} us; Keel vs ORT normwise rel err {r['rel_err_keel_vs_ort']:.1e}")
    print(f"\nBoth include the Python loop and call overhead (a no-op ctypes call costs "
          f"{env['ctypes_call_floor_us']:.2f} us here). Keel's time includes writing the output into the "
          f"caller's array, as io_binding's does.")
    if env["cpu_avx512f"] and env["openblas_coretype_env"] and env["keel_kernels"].startswith("cblas_sgemm"):
        print(f"Note: this CPU has AVX-512 but OPENBLAS_CORETYPE={env['openblas_coretype_env']} in the environment "
              f"pins OpenBLAS's kernel set; ONNX Runtime picks its own. Compare with the variable unset.")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"env": env, "results": results}, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
