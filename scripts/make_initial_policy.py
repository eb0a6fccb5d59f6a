#!/usr/bin/env python3
"""Write Keel's first policy network: models/policy/1/model.onnx.

This model is NOT trained. It holds honest initial weights so that the whole
pipeline (load, inspect, infer, serve, audit) can run end to end before a
trained policy exists; a trained policy replaces it as a new version.

Architecture, applied to every asset independently (one row per asset):
    features [N, 12]  (N = dim_param "assets")
      -> Gemm 12->64 -> Relu -> Gemm 64->64 -> Relu -> Gemm 64->1
      -> score [N, 1]
Weights: Glorot-uniform from numpy default_rng(20261121), drawn layer by layer
(W has the PyTorch layout [out, in], Gemm transB=1); the last layer's weights
are scaled by 0.1 so initial scores stay near 0; every bias is 0.
ONNX opset 17, IR version 8.

The output is deterministic: the same numpy/onnx versions (pinned in
scripts/requirements.txt) give byte-identical files; the script checks that two
builds serialize identically before writing.

It also writes docs/examples/policy-input.csv: a header of the 12 feature
names and 5 plausible asset rows, the input `keel infer` reads.

Usage: .venv/bin/python scripts/make_initial_policy.py [--out PATH] [--csv PATH]
"""
from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
SEED = 20261121
HIDDEN = 64
# Keel's feature set, in order: must equal KeelPortfolio.FeatureSet.names
# (Sources/KeelPortfolio/FeatureSet.swift); the server refuses a policy whose
# keel.features differ.
FEATURES = [
    "ret_1d_z", "ret_5d_z", "ret_21d_z", "ret_63d_z", "momentum_z", "vol_ann", "vol_rel",
    "drawdown_63d", "rel_ret_21d_z", "weight_current", "weight_strategic", "drift",
]
LAST_LAYER_SCALE = 0.1


def glorot_uniform(rng: np.random.Generator, fan_in: int, fan_out: int) -> np.ndarray:
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=(fan_out, fan_in)).astype(np.float32)  # [out, in]


def build_model() -> onnx.ModelProto:
    rng = np.random.default_rng(SEED)
    f = len(FEATURES)
    sizes = [f, HIDDEN, HIDDEN, 1]
    layers = ["fc1", "fc2", "head"]
    inits, nodes = [], []
    cur = "features"
    for i, name in enumerate(layers):
        w = glorot_uniform(rng, sizes[i], sizes[i + 1])
        if name == "head":
            w = (w * np.float32(LAST_LAYER_SCALE)).astype(np.float32)
        b = np.zeros(sizes[i + 1], dtype=np.float32)
        inits += [numpy_helper.from_array(w, f"{name}.weight"), numpy_helper.from_array(b, f"{name}.bias")]
        out = "score" if name == "head" else f"{name}.out"
        nodes.append(helper.make_node("Gemm", [cur, f"{name}.weight", f"{name}.bias"], [out], name=name,
                                      transB=1))
        cur = out
        if name != "head":
            act = f"{name}.relu"
            nodes.append(helper.make_node("Relu", [cur], [act], name=f"{name}_relu"))
            cur = act

    graph = helper.make_graph(
        nodes, "keel_policy_v1",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["assets", f])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["assets", 1])],
        inits,
        doc_string="Per-asset policy MLP 12->64->64->1 (Gemm/Relu). Initial weights, not trained.",
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="keel", producer_version="scripts/make_initial_policy.py")
    model.ir_version = 8
    model.model_version = 1
    helper.set_model_props(model, {
        "keel.kind": "policy",
        "keel.version": "1",
        "keel.features": ",".join(FEATURES),
        "keel.training": f"none: initial Glorot-uniform weights, seed {SEED} "
                         "(not trained; a trained policy replaces this model)",
        "keel.created_by": "scripts/make_initial_policy.py",
    })
    onnx.checker.check_model(model, full_check=True)
    return model


# Five plausible assets on one date: risk-adjusted returns (log return over
# the window / (daily volatility x sqrt(window))), momentum, annualised and
# relative volatility, 63-day drawdown, relative 21-day return, and portfolio
# weights (drift = weight_current - weight_strategic).
EXAMPLE_ROWS = [
    # r1z    r5z    r21z   r63z   mom_z  vol    vol_rel dd_63d  rel21z  w_cur  w_str
    (0.37, 0.45, 0.44, 0.67, 0.58, 0.182, 0.97, -0.031, 0.27, 0.22, 0.20),
    (-0.45, -0.45, 0.12, 0.25, 0.20, 0.241, 1.28, -0.074, -0.05, 0.18, 0.20),
    (0.16, 0.28, -0.33, 0.30, 0.45, 0.126, 0.67, -0.045, -0.50, 0.25, 0.24),
    (-0.11, 0.49, 0.48, -0.15, -0.20, 0.298, 1.59, -0.118, 0.31, 0.15, 0.16),
    (0.12, -0.24, 0.22, 0.84, 0.70, 0.094, 0.50, -0.012, 0.05, 0.16, 0.16),
]


def example_csv() -> str:
    lines = [",".join(FEATURES)]
    for r in EXAMPLE_ROWS:
        w_cur, w_str = r[9], r[10]
        vals = list(r) + [round(w_cur - w_str, 4)]
        lines.append(",".join(f"{v:g}" for v in vals))
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "models/policy/1/model.onnx")
    ap.add_argument("--csv", type=Path, default=ROOT / "docs/examples/policy-input.csv")
    args = ap.parse_args()

    data = build_model().SerializeToString()
    if build_model().SerializeToString() != data:
        raise SystemExit("make_initial_policy: two builds differ; the output would not be deterministic")
    weights_total = sum(float(np.abs(numpy_helper.to_array(t)).sum()) for t in onnx.load_from_string(data).graph.initializer)
    assert weights_total > 0

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(data)
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    csv = example_csv()
    assert all(len(line.split(",")) == len(FEATURES) for line in csv.splitlines())
    args.csv.write_text(csv)
    print(f"wrote {args.out} ({len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()})")
    print(f"wrote {args.csv} ({len(EXAMPLE_ROWS)} assets x {len(FEATURES)} features)")


if __name__ == "__main__":
    main()
