"""Shared helpers for the Keel Python tests: building ONNX models with
onnx.helper, running them with ONNX Runtime (the reference) and with the Keel
core through keelcore.py, and comparing the results.

The test modules import the plain helpers with `from conftest import ...`
(pytest puts this directory on sys.path).
"""
from __future__ import annotations

import sys
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import keelcore  # noqa: E402

REPO = HERE.parents[1]
FLOAT = TensorProto.FLOAT
INT64 = TensorProto.INT64

# Normwise relative error bound used by every numeric comparison against ORT.
REL_TOL = 1e-5


# --------------------------------------------------------------------------- #
# Model building
# --------------------------------------------------------------------------- #

def vi(name, shape, elem=FLOAT):
    """ValueInfo; shape entries are ints (static), str (dim_param) or None
    (dimension present but unknown); shape=None means no shape at all."""
    return helper.make_tensor_value_info(name, elem, shape)


def init(name, array, storage="raw"):
    """Initializer from a numpy array, stored as raw_data ("raw") or in the
    typed repeated field ("typed": float_data / int64_data)."""
    a = np.asarray(array)
    if storage == "raw":
        return numpy_helper.from_array(a, name)
    dt = {np.dtype(np.float32): FLOAT, np.dtype(np.int64): INT64}[a.dtype]
    return helper.make_tensor(name, dt, a.shape, a.flatten().tolist(), raw=False)


def ir_for(opset: int) -> int:
    # IR >= 7 so initializers need not be listed as graph inputs (IR 3 rule).
    return max(7, helper.find_min_ir_version_for([helper.make_opsetid("", opset)]))


def make_model(nodes, inputs, outputs, initializers=(), opset=17, metadata=None, ir_version=None,
               infer_output_shapes=True, check=True, name="g"):
    """Build a ModelProto. Graph outputs declared without a shape get the shape
    ONNX shape inference finds (as exporters write them)."""
    graph = helper.make_graph(list(nodes), name, list(inputs), list(outputs), list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="keel-tests")
    model.ir_version = ir_version if ir_version is not None else ir_for(opset)
    if metadata:
        helper.set_model_props(model, dict(metadata))
    if infer_output_shapes:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        known = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
        for out in model.graph.output:
            if not out.type.tensor_type.HasField("shape") and out.name in known:
                src = known[out.name].type.tensor_type
                if src.HasField("shape"):
                    out.type.tensor_type.shape.CopyFrom(src.shape)
    if check:
        onnx.checker.check_model(model)
    return model


def seed_for(key: str) -> int:
    return zlib.crc32(key.encode())


def rng_for(key: str) -> np.random.Generator:
    return np.random.default_rng(seed_for(key))


# --------------------------------------------------------------------------- #
# Running
# --------------------------------------------------------------------------- #

def ort_session(model_bytes: bytes):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


def ort_run(model_bytes: bytes, feeds):
    sess = ort_session(model_bytes)
    names = [i.name for i in sess.get_inputs()]
    assert len(names) == len(feeds), f"ORT expects inputs {names}, got {len(feeds)} arrays"
    return sess.run(None, dict(zip(names, feeds)))


def keel_run(model_bytes: bytes, feeds):
    with keelcore.Model.from_bytes(model_bytes, "test") as m, keelcore.Session(m) as s:
        # np.require keeps 0-d arrays 0-d (np.ascontiguousarray would make them 1-d).
        return s.run([np.require(f, np.float32, "C") for f in feeds])


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    """Normwise relative error max|got-ref| / max(max|ref|, 1e-30)."""
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if ref.size == 0:
        return 0.0
    denom = max(float(np.max(np.abs(ref))), 1e-30)
    return float(np.max(np.abs(got - ref))) / denom


def assert_matches(got_list, ref_list, tol=REL_TOL, what=""):
    assert len(got_list) == len(ref_list), f"{what}: Keel gave {len(got_list)} outputs, ORT {len(ref_list)}"
    for i, (g, r) in enumerate(zip(got_list, ref_list)):
        r = np.asarray(r)
        assert tuple(g.shape) == tuple(r.shape), f"{what}: output {i} shape Keel {g.shape} vs ORT {r.shape}"
        nan_g, nan_r = np.isnan(g), np.isnan(r)
        assert np.array_equal(nan_g, nan_r), (f"{what}: output {i} NaN pattern differs: Keel NaN at "
                                              f"{np.argwhere(nan_g)[:4].tolist()}, ORT NaN at "
                                              f"{np.argwhere(nan_r)[:4].tolist()}")
        inf_r = np.isinf(r)
        assert np.array_equal(np.isinf(g), inf_r) and np.array_equal(g[inf_r], r[inf_r]), \
            f"{what}: output {i} infinities differ\nkeel={g.ravel()[:8]}\nort ={r.ravel()[:8]}"
        fin = np.isfinite(r)
        e = rel_err(g[fin], r[fin]) if fin.any() else 0.0
        assert e <= tol, (f"{what}: output {i} normwise relative error {e:.3e} > {tol:.0e}\n"
                          f"keel={g.ravel()[:8]}\nort ={r.ravel()[:8]}")


def check_against_ort(model, feeds, tol=REL_TOL, what=""):
    b = model.SerializeToString()
    ref = ort_run(b, feeds)
    got = keel_run(b, feeds)
    assert_matches(got, ref, tol, what)
    return got, ref


# --------------------------------------------------------------------------- #
# Fixtures
# --------------------------------------------------------------------------- #

def pytest_configure(config):
    try:
        keelcore.lib()
    except (OSError, FileNotFoundError) as e:  # fail loudly: these tests exist to run the core
        raise pytest.UsageError(f"cannot load the Keel core library: {e}")


@pytest.fixture
def tmp_model_path(tmp_path):
    def write(model, name="model.onnx"):
        p = tmp_path / name
        p.write_bytes(model.SerializeToString() if hasattr(model, "SerializeToString") else model)
        return p
    return write
