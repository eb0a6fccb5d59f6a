"""Invalid models and invalid runs must fail with the documented keel_status and
a message naming the culprit (node, op, tensor), never crash, and leave a
session usable afterwards.

Where keel.h leaves the choice between two codes open (e.g. an unsupported
dtype may be reported as UNSUPPORTED or INVALID_MODEL), the test accepts the
set given in the case table; everything else is exact.
"""
from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import keelcore
from keelcore import (ERR_INVALID_ARGUMENT, ERR_INVALID_MODEL, ERR_IO, ERR_LIMIT, ERR_PARSE, ERR_SHAPE,
                      ERR_UNSUPPORTED, KeelError)
from conftest import FLOAT, INT64, init, rng_for, vi

H = helper.make_node


def raw_model(nodes, inputs, outputs, inits=(), opset=17, opsets=None, metadata=None, ir_version=8):
    """A ModelProto built without any validation (the point is to be invalid)."""
    g = helper.make_graph(list(nodes), "g", list(inputs), list(outputs), list(inits))
    ops = opsets if opsets is not None else [helper.make_opsetid("", opset)]
    m = helper.make_model(g, opset_imports=ops, producer_name="keel-tests")
    m.ir_version = ir_version
    if metadata:
        helper.set_model_props(m, metadata)
    return m


def good_model():
    rng = rng_for("good")
    return raw_model([H("Gemm", ["x", "w", "b"], ["h"], name="fc", transB=1), H("Relu", ["h"], ["y"], name="act")],
                     [vi("x", ["N", 4])], [vi("y", ["N", 3])],
                     [init("w", rng.standard_normal((3, 4)).astype(np.float32)),
                      init("b", rng.standard_normal(3).astype(np.float32))])


def tensor(name, dtype, dims, raw=None, floats=None, location_external=False):
    t = TensorProto()
    t.name = name
    t.data_type = dtype
    t.dims.extend(dims)
    if raw is not None:
        t.raw_data = raw
    if floats is not None:
        t.float_data.extend(floats)
    if location_external:
        t.data_location = TensorProto.EXTERNAL
        e = t.external_data.add()
        e.key, e.value = "location", "weights.bin"
    return t


def add_w_model(w_tensor, x_shape=("N", 3)):
    return raw_model([H("Add", ["x", w_tensor.name], ["y"], name="add_w")], [vi("x", list(x_shape))],
                     [vi("y", list(x_shape))], [w_tensor])


def load_err(data) -> KeelError:
    b = data.SerializeToString() if hasattr(data, "SerializeToString") else bytes(data)
    with pytest.raises(KeelError) as ei:
        keelcore.Model.from_bytes(b, "bad.onnx")
    return ei.value


def cycle_model():
    return raw_model([H("Add", ["x", "d"], ["c"], name="cyc_add"), H("Relu", ["c"], ["d"], name="cyc_relu"),
                      H("Tanh", ["c"], ["y"], name="out_tanh")], [vi("x", ["N", 3])], [vi("y", ["N", 3])])


def no_graph_model():
    m = good_model()
    m.ClearField("graph")
    return m


BIG = 1 << 40
LOAD_CASES = {
    # id: (builder, accepted statuses, substrings the message must contain)
    "unsupported-op-Conv": (lambda: raw_model(
        [H("Conv", ["x", "w"], ["y"], name="conv_first")], [vi("x", [1, 1, 4, 4])], [vi("y", None)],
        [init("w", np.ones((1, 1, 3, 3), np.float32))]), {ERR_UNSUPPORTED}, ["Conv", "conv_first"]),
    "unsupported-op-after-good-ones": (lambda: raw_model(
        [H("Relu", ["x"], ["r"], name="ok_relu"), H("Erf", ["r"], ["y"], name="the_erf")],
        [vi("x", ["N", 3])], [vi("y", None)]), {ERR_UNSUPPORTED}, ["Erf", "the_erf"]),
    "non-default-domain-op": (lambda: raw_model(
        [H("FusedGemm", ["x", "x"], ["y"], name="fused", domain="com.microsoft")], [vi("x", [3, 3])],
        [vi("y", None)], opsets=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]),
        {ERR_UNSUPPORTED}, ["FusedGemm"]),
    "float64-graph-input": (lambda: raw_model(
        [H("Relu", ["x"], ["y"], name="r")], [vi("x", ["N", 3], TensorProto.DOUBLE)],
        [vi("y", ["N", 3], TensorProto.DOUBLE)]), {ERR_UNSUPPORTED, ERR_INVALID_MODEL}, ["x"]),
    "float64-graph-output": (lambda: raw_model(
        [H("Relu", ["x"], ["y"], name="r")], [vi("x", ["N", 3])], [vi("y", ["N", 3], TensorProto.DOUBLE)]),
        {ERR_UNSUPPORTED, ERR_INVALID_MODEL}, ["y"]),
    "int64-graph-input": (lambda: raw_model(
        [H("Reshape", ["x", "shp"], ["y"], name="rs")], [vi("x", [2, 3]), vi("shp", [2], INT64)], [vi("y", None)]),
        {ERR_UNSUPPORTED, ERR_INVALID_MODEL}, ["shp"]),
    "int32-initializer": (lambda: add_w_model(numpy_helper.from_array(np.ones(3, np.int32), "w_int32")),
                          {ERR_UNSUPPORTED, ERR_INVALID_MODEL}, ["w_int32"]),
    "raw_data-length-mismatch": (lambda: add_w_model(tensor("w_short", FLOAT, [2, 3], raw=b"\0" * 20)),
                                 {ERR_INVALID_MODEL}, ["w_short"]),
    "raw_data-too-long": (lambda: add_w_model(tensor("w_long", FLOAT, [3], raw=b"\0" * 16)),
                          {ERR_INVALID_MODEL}, ["w_long"]),
    "float_data-count-mismatch": (lambda: add_w_model(tensor("w_count", FLOAT, [2, 3], floats=[1.0] * 5)),
                                  {ERR_INVALID_MODEL}, ["w_count"]),
    "no-data-at-all": (lambda: add_w_model(tensor("w_empty", FLOAT, [2, 3])), {ERR_INVALID_MODEL}, ["w_empty"]),
    "negative-initializer-dim": (lambda: add_w_model(tensor("w_neg", FLOAT, [-2, 3], raw=b"")),
                                 {ERR_INVALID_MODEL}, ["w_neg"]),
    "negative-input-dim": (lambda: raw_model([H("Relu", ["x_neg"], ["y"], name="r")], [vi("x_neg", [-3, 4])],
                                             [vi("y", None)]), {ERR_INVALID_MODEL}, ["x_neg"]),
    "dims-product-overflows-int64": (lambda: add_w_model(tensor("w_ovf", FLOAT, [1 << 62, 1 << 62], raw=b"")),
                                     {ERR_INVALID_MODEL, ERR_LIMIT}, ["w_ovf"]),
    "dims-bytes-overflow-int64": (lambda: add_w_model(tensor("w_ovf4", FLOAT, [1 << 31, 1 << 31], raw=b"")),
                                  {ERR_INVALID_MODEL, ERR_LIMIT}, ["w_ovf4"]),
    "huge-dims-without-data": (lambda: add_w_model(tensor("w_huge", FLOAT, [BIG, BIG])),
                               {ERR_INVALID_MODEL, ERR_LIMIT}, ["w_huge"]),
    "huge-dims-float_data-short": (lambda: add_w_model(tensor("w_huge2", FLOAT, [1 << 20, 1 << 20], floats=[1.0])),
                                   {ERR_INVALID_MODEL, ERR_LIMIT}, ["w_huge2"]),
    "dangling-node-input": (lambda: raw_model([H("Add", ["x", "ghost_tensor"], ["y"], name="add_ghost")],
                                              [vi("x", ["N", 3])], [vi("y", None)]),
                            {ERR_INVALID_MODEL}, ["ghost_tensor"]),
    "duplicate-node-outputs": (lambda: raw_model(
        [H("Relu", ["x"], ["dup"], name="first"), H("Tanh", ["x"], ["dup"], name="second"),
         H("Add", ["dup", "x"], ["y"], name="add")], [vi("x", ["N", 3])], [vi("y", None)]),
        {ERR_INVALID_MODEL}, ["dup"]),
    "node-output-shadows-input": (lambda: raw_model(
        [H("Relu", ["x"], ["x"], name="selfish")], [vi("x", ["N", 3])], [vi("x", None)]),
        {ERR_INVALID_MODEL}, ["x"]),
    "duplicate-graph-input-names": (lambda: raw_model(
        [H("Add", ["x", "x"], ["y"], name="add")], [vi("x", ["N", 3]), vi("x", ["N", 3])], [vi("y", None)]),
        {ERR_INVALID_MODEL}, ["x"]),
    "cycle": (cycle_model, {ERR_INVALID_MODEL}, [("cyc_add", "cyc_relu")]),
    "missing-output-producer": (lambda: raw_model([H("Relu", ["x"], ["y"], name="r")], [vi("x", ["N", 3])],
                                                  [vi("y", None), vi("z_orphan", None)]),
                                {ERR_INVALID_MODEL}, ["z_orphan"]),
    "missing-default-opset-import": (lambda: raw_model(
        [H("Relu", ["x"], ["y"], name="r")], [vi("x", ["N", 3])], [vi("y", None)],
        opsets=[helper.make_opsetid("ai.onnx.ml", 3)]), {ERR_INVALID_MODEL}, []),
    "no-opset-import-at-all": (lambda: raw_model(
        [H("Relu", ["x"], ["y"], name="r")], [vi("x", ["N", 3])], [vi("y", None)], opsets=[]),
        {ERR_INVALID_MODEL}, []),
    "opset-too-new-99": (lambda: raw_model([H("Relu", ["x"], ["y"], name="r")], [vi("x", ["N", 3])],
                                           [vi("y", None)], opset=99), {ERR_UNSUPPORTED}, ["99"]),
    "opset-too-old-6": (lambda: raw_model([H("Relu", ["x"], ["y"], name="r")], [vi("x", ["N", 3])],
                                          [vi("y", None)], opset=6), {ERR_UNSUPPORTED}, ["6"]),
    "external-data": (lambda: add_w_model(tensor("w_ext", FLOAT, [3], location_external=True)),
                      {ERR_UNSUPPORTED, ERR_INVALID_MODEL}, ["w_ext"]),
    "features-count-mismatch": (lambda: raw_model(
        [H("Relu", ["x"], ["y"], name="r")], [vi("x", ["N", 4])], [vi("y", None)],
        metadata={"keel.kind": "policy", "keel.features": "a,b,c"}), {ERR_INVALID_MODEL}, ["keel.features"]),
    "graph-without-outputs": (lambda: helper.make_model(helper.make_graph([], "g", [], []),
                                                        opset_imports=[helper.make_opsetid("", 17)]),
                              {ERR_INVALID_MODEL}, []),
    "model-without-graph": (lambda: no_graph_model(), {ERR_INVALID_MODEL, ERR_PARSE}, []),
    "graph-input-without-type": (lambda: raw_model([H("Relu", ["x_untyped"], ["y"], name="r")],
                                                   [helper.make_value_info("x_untyped", helper.TypeProto())],
                                                   [vi("y", None)]),
                                 {ERR_INVALID_MODEL, ERR_UNSUPPORTED}, ["x_untyped"]),
    "reshape-shape-from-float-input": (lambda: raw_model(
        [H("Reshape", ["x", "shape_in"], ["y"], name="rs_dyn")], [vi("x", ["N", 3]), vi("shape_in", [2])],
        [vi("y", None)]), {ERR_UNSUPPORTED, ERR_INVALID_MODEL}, [("rs_dyn", "shape_in")]),
    "shape-op-unsupported": (lambda: raw_model(
        [H("Shape", ["x"], ["s"], name="shape_of"), H("Reshape", ["x", "s"], ["y"], name="rs")],
        [vi("x", ["N", 3])], [vi("y", None)]), {ERR_UNSUPPORTED}, ["Shape", "shape_of"]),
    "rank-above-8": (lambda: raw_model([H("Relu", ["x9"], ["y"], name="r")], [vi("x9", [1] * 9)], [vi("y", None)]),
                     {ERR_UNSUPPORTED, ERR_INVALID_MODEL}, ["x9"]),
}


@pytest.mark.parametrize("case", list(LOAD_CASES), ids=list(LOAD_CASES))
def test_invalid_model_rejected(case):
    build, statuses, needles = LOAD_CASES[case]
    e = load_err(build())
    assert e.status in statuses, f"{case}: got status {e.status} ({e.message!r}), want one of {sorted(statuses)}"
    assert e.message, f"{case}: empty error message"
    for n in needles:
        alts = n if isinstance(n, tuple) else (n,)
        assert any(a in e.message for a in alts), f"{case}: message {e.message!r} does not name any of {alts}"


def test_good_model_loads_and_runs():
    """Guard for the builders above: the unmodified base model is accepted."""
    with keelcore.Model.from_bytes(good_model().SerializeToString()) as m, keelcore.Session(m) as s:
        (y,) = s.run([np.ones((2, 4), np.float32)])
        assert y.shape == (2, 3)


def test_features_count_matching_is_accepted():
    m = raw_model([H("Relu", ["x"], ["y"], name="r")], [vi("x", ["N", 3])], [vi("y", None)],
                  metadata={"keel.kind": "policy", "keel.features": "a,b,c"})
    with keelcore.Model.from_bytes(m.SerializeToString()) as km:
        assert km.metadata["keel.features"] == "a,b,c"


def test_features_count_checks_the_first_input_only():
    nodes = [H("Add", ["a", "b"], ["y"], name="add")]
    ok = raw_model(nodes, [vi("a", ["N", 3]), vi("b", ["N", 1])], [vi("y", None)],
                   metadata={"keel.features": "f1,f2,f3"})
    with keelcore.Model.from_bytes(ok.SerializeToString()) as km:
        assert km.metadata["keel.features"] == "f1,f2,f3"
    bad = raw_model(nodes, [vi("a", ["N", 1]), vi("b", ["N", 3])], [vi("y", None)],
                    metadata={"keel.features": "f1,f2,f3"})
    e = load_err(bad)
    assert e.status == ERR_INVALID_MODEL and "keel.features" in e.message, e


@pytest.mark.parametrize("data", [b"", b"\x00", b"\xff" * 64, b"not an onnx model at all\n"],
                         ids=["empty", "nul", "ff64", "text"])
def test_garbage_bytes(data):
    e = load_err(data)
    assert e.status in (ERR_PARSE, ERR_INVALID_MODEL), e


@pytest.mark.parametrize("seed", range(8))
def test_random_bytes(seed):
    data = np.random.default_rng(seed).integers(0, 256, 64 + 97 * seed, dtype=np.uint8).tobytes()
    e = load_err(data)
    assert e.status in (ERR_PARSE, ERR_INVALID_MODEL), e


def test_missing_file(tmp_path):
    p = tmp_path / "does-not-exist.onnx"
    with pytest.raises(KeelError) as ei:
        keelcore.Model.load(p)
    assert ei.value.status == ERR_IO
    assert "does-not-exist.onnx" in ei.value.message


def test_file_over_size_limit(tmp_path):
    """keel.h: a model file larger than KEEL_DEFAULT_MAX_MODEL_BYTES (1 GiB) is
    refused with LIMIT (a sparse file: nothing is written to disk)."""
    p = tmp_path / "big.onnx"
    with open(p, "wb") as fh:
        fh.truncate((1 << 30) + 1)
    with pytest.raises(KeelError) as ei:
        keelcore.Model.load(p)
    assert ei.value.status == ERR_LIMIT, ei.value
    assert "big.onnx" in ei.value.message


def test_very_long_path_message_is_truncated_not_overflowed(tmp_path):
    p = "/tmp/" + "a" * 5000 + ".onnx"
    with pytest.raises(KeelError) as ei:
        keelcore.Model.load(p)
    assert ei.value.status in (ERR_IO, ERR_INVALID_ARGUMENT)
    assert len(ei.value.message.encode()) <= keelcore.ERROR_MESSAGE_SIZE - 1


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(KeelError) as ei:
        keelcore.Model.load(tmp_path)
    assert ei.value.status in (ERR_IO, ERR_PARSE)


def test_empty_file(tmp_path):
    p = tmp_path / "empty.onnx"
    p.write_bytes(b"")
    with pytest.raises(KeelError) as ei:
        keelcore.Model.load(p)
    assert ei.value.status in (ERR_PARSE, ERR_INVALID_MODEL)


# --------------------------------------------------------------------------- #
# NULL / bad arguments at the C boundary
# --------------------------------------------------------------------------- #

def test_null_arguments():
    L = keelcore.lib()
    err = keelcore._Error()
    h = ctypes.c_void_p()
    assert L.keel_model_load_file(None, None, ctypes.byref(h), ctypes.byref(err)) == ERR_INVALID_ARGUMENT
    assert L.keel_model_load_bytes(None, b"x", 1, None, None, ctypes.byref(err)) == ERR_INVALID_ARGUMENT
    assert L.keel_model_load_bytes(None, None, 5, None, ctypes.byref(h), ctypes.byref(err)) == ERR_INVALID_ARGUMENT
    assert L.keel_session_create(None, ctypes.byref(h), ctypes.byref(err)) == ERR_INVALID_ARGUMENT
    assert L.keel_session_run(None, None, 0, None, 0, ctypes.byref(err)) == ERR_INVALID_ARGUMENT
    assert L.keel_model_input_count(None) == 0
    assert L.keel_model_metadata_lookup(None, b"k") is None
    L.keel_model_free(None)
    L.keel_session_free(None)
    # err may be NULL
    assert L.keel_model_load_file(None, b"/nonexistent/x.onnx", ctypes.byref(h), None) == ERR_IO


def test_out_of_range_indices():
    with keelcore.Model.from_bytes(good_model().SerializeToString()) as m:
        L = keelcore.lib()
        err = keelcore._Error()
        ti = keelcore._TensorInfo()
        k, v = ctypes.c_char_p(), ctypes.c_char_p()
        assert L.keel_model_input_info(m.handle, 1, ctypes.byref(ti), ctypes.byref(err)) == ERR_INVALID_ARGUMENT
        assert L.keel_model_output_info(m.handle, 5, ctypes.byref(ti), ctypes.byref(err)) == ERR_INVALID_ARGUMENT
        assert L.keel_model_metadata_entry(m.handle, 0, ctypes.byref(k), ctypes.byref(v),
                                           ctypes.byref(err)) == ERR_INVALID_ARGUMENT
        assert L.keel_model_node_info(m.handle, 2, ctypes.byref(k), ctypes.byref(v),
                                      ctypes.byref(err)) == ERR_INVALID_ARGUMENT


def test_blas_threads_rejects_zero():
    with pytest.raises(KeelError) as ei:
        keelcore.set_blas_threads(0)
    assert ei.value.status == ERR_INVALID_ARGUMENT


# --------------------------------------------------------------------------- #
# Run-time errors: each fails with its code, and the session keeps working
# --------------------------------------------------------------------------- #

def two_input_model():
    """x: [N, 4] (dynamic N), c: [N, 4] added to x, then Gemm to 3 outputs."""
    rng = rng_for("two")
    return raw_model([H("Add", ["x", "c"], ["s"], name="add_xc"), H("Gemm", ["s", "w"], ["y"], name="fc", transB=1)],
                     [vi("x", ["N", 4]), vi("c", ["M", 4])], [vi("y", ["N", 3])],
                     [init("w", rng.standard_normal((3, 4)).astype(np.float32))])


def f32(*shape, v=1.0):
    return np.full(shape, v, dtype=np.float32)


RUN_CASES = {
    # id: (model builder, arrays, n_inputs passed, n_outputs passed or None, statuses, needles)
    "no-inputs": (good_model, [], 0, None, {ERR_INVALID_ARGUMENT}, []),
    "too-many-inputs": (good_model, [f32(2, 4), f32(2, 4)], 2, None, {ERR_INVALID_ARGUMENT}, []),
    "too-few-inputs": (two_input_model, [f32(2, 4)], 1, None, {ERR_INVALID_ARGUMENT}, []),
    "wrong-output-count": (good_model, [f32(2, 4)], 1, 2, {ERR_INVALID_ARGUMENT}, []),
    "wrong-static-dim": (good_model, [f32(2, 5)], 1, None, {ERR_SHAPE}, ["x"]),
    "rank-too-low": (good_model, [f32(8)], 1, None, {ERR_SHAPE}, ["x"]),
    "rank-too-high": (good_model, [f32(2, 4, 1)], 1, None, {ERR_SHAPE}, ["x"]),
    "rank-0": (good_model, [np.array(1.0, np.float32)], 1, None, {ERR_SHAPE}, ["x"]),
    "broadcast-mismatch-between-dynamic-inputs": (two_input_model, [f32(3, 4), f32(5, 4)], 2, None, {ERR_SHAPE},
                                                  ["add_xc"]),
}


def _expected_ok(builder, arrays):
    with keelcore.Model.from_bytes(builder().SerializeToString()) as m, keelcore.Session(m) as s:
        return s.run(arrays)


@pytest.mark.parametrize("case", list(RUN_CASES), ids=list(RUN_CASES))
def test_run_error_then_session_still_works(case):
    builder, arrays, n_in, n_out, statuses, needles = RUN_CASES[case]
    rng = rng_for(case)
    good_inputs = [rng.standard_normal((6, 4)).astype(np.float32) for _ in range(2 if builder is two_input_model
                                                                                   else 1)]
    want = _expected_ok(builder, good_inputs)
    with keelcore.Model.from_bytes(builder().SerializeToString()) as m, keelcore.Session(m) as s:
        before = s.run(good_inputs)                # warm: shapes planned for N=6
        for attempt in range(2):                    # fail twice: no state leaks from the first failure
            with pytest.raises(KeelError) as ei:
                s.run_raw(list(arrays), n_in, n_out)
            e = ei.value
            assert e.status in statuses, f"{case}: got {e.status} ({e.message!r}), want {sorted(statuses)}"
            for n in needles:
                assert n in e.message, f"{case}: message {e.message!r} does not name {n!r}"
        after = s.run(good_inputs)
        for a, b, w in zip(before, after, want):
            np.testing.assert_array_equal(a, w)
            np.testing.assert_array_equal(b, w)
        small = [g[:1].copy() for g in good_inputs]
        (y1,) = s.run(small)
        # A different batch size may take a different BLAS path (sgemv for one row):
        # equal to rounding, not bit for bit.
        np.testing.assert_allclose(y1, want[0][:1], rtol=1e-5, atol=1e-6)


def test_null_data_pointer_rejected():
    with keelcore.Model.from_bytes(good_model().SerializeToString()) as m, keelcore.Session(m) as s:
        tin = (keelcore._Tensor * 1)()
        tin[0].data = None
        tin[0].rank = 2
        tin[0].shape[0], tin[0].shape[1] = 3, 4
        tout = (keelcore._Tensor * 1)()
        err = keelcore._Error()
        st = keelcore.lib().keel_session_run(s._h, tin, 1, tout, 1, ctypes.byref(err))
        assert st == ERR_INVALID_ARGUMENT, err.message
        (y,) = s.run([f32(3, 4)])
        assert y.shape == (3, 3)


@pytest.mark.parametrize("shape", [(-1, 4), (2, 4, 1, 1, 1, 1, 1, 1, 1)], ids=["negative", "rank9"])
def test_bad_runtime_shape_struct(shape):
    with keelcore.Model.from_bytes(good_model().SerializeToString()) as m, keelcore.Session(m) as s:
        buf = f32(64)
        tin = (keelcore._Tensor * 1)()
        tin[0].data = buf.ctypes.data
        tin[0].rank = len(shape)
        for i, d in enumerate(shape[:keelcore.MAX_RANK]):
            tin[0].shape[i] = d
        tout = (keelcore._Tensor * 1)()
        err = keelcore._Error()
        st = keelcore.lib().keel_session_run(s._h, tin, 1, tout, 1, ctypes.byref(err))
        assert st in (ERR_INVALID_ARGUMENT, ERR_SHAPE), (st, err.message)
        (y,) = s.run([f32(2, 4)])
        assert y.shape == (2, 3)


def test_run_argument_checks():
    with keelcore.Model.from_bytes(good_model().SerializeToString()) as m, keelcore.Session(m) as s:
        L = keelcore.lib()
        err = keelcore._Error()
        x = f32(2, 4)
        tin = (keelcore._Tensor * 1)()
        keelcore._fill_tensor(tin[0], x)
        tout = (keelcore._Tensor * 1)()
        assert L.keel_session_run(s._h, None, 1, tout, 1, ctypes.byref(err)) == ERR_INVALID_ARGUMENT
        assert L.keel_session_run(s._h, tin, 1, None, 1, ctypes.byref(err)) == ERR_INVALID_ARGUMENT
        assert L.keel_session_run(s._h, tin, 2, tout, 1, None) == ERR_INVALID_ARGUMENT  # err may be NULL
        # Dimensions too large to address, and ones that only exceed the memory cap.
        big = (keelcore._Tensor * 1)()
        big[0].data, big[0].rank, big[0].shape[1] = x.ctypes.data, 2, 4
        for rows, statuses in (((1 << 62), {ERR_SHAPE, ERR_INVALID_ARGUMENT, ERR_LIMIT}),
                               ((1 << 40), {ERR_SHAPE, ERR_INVALID_ARGUMENT, ERR_LIMIT}),
                               ((1 << 28), {ERR_LIMIT})):
            big[0].shape[0] = rows
            st = L.keel_session_run(s._h, big, 1, tout, 1, ctypes.byref(err))
            assert st in statuses, (rows, st, err.message)
        # A zero-size input needs no data pointer.
        z = (keelcore._Tensor * 1)()
        z[0].rank, z[0].shape[0], z[0].shape[1] = 2, 0, 4
        assert L.keel_session_run(s._h, z, 1, tout, 1, ctypes.byref(err)) == 0, err.message
        assert tout[0].rank == 2 and tout[0].shape[0] == 0 and tout[0].shape[1] == 3
        (y,) = s.run([x])
        assert y.shape == (2, 3)


def test_memory_limit_then_recover():
    with keelcore.Model.from_bytes(good_model().SerializeToString()) as m, keelcore.Session(m) as s:
        x_big = np.ones((100_000, 4), np.float32)
        s.set_memory_limit(4096)
        with pytest.raises(KeelError) as ei:
            s.run([x_big])
        assert ei.value.status == ERR_LIMIT, ei.value
        s.set_memory_limit(0)
        (y,) = s.run([x_big])
        assert y.shape == (100_000, 3)


def test_runtime_shape_error_inside_graph_names_node():
    """MatMul whose inner dimension only meets at run time."""
    m = raw_model([H("MatMul", ["a", "b"], ["y"], name="mm_inner")], [vi("a", ["N", "K"]), vi("b", ["J", 2])],
                  [vi("y", None)])
    with keelcore.Model.from_bytes(m.SerializeToString()) as km, keelcore.Session(km) as s:
        with pytest.raises(KeelError) as ei:
            s.run([f32(3, 4), f32(5, 2)])
        assert ei.value.status == ERR_SHAPE
        assert "mm_inner" in ei.value.message
        (y,) = s.run([f32(3, 4), f32(4, 2)])
        np.testing.assert_array_equal(y, np.full((3, 2), 4.0, np.float32))


# --------------------------------------------------------------------------- #
# Models that once crashed the loader: loaded in a child process so a crash
# fails only these tests (with the signal) instead of killing the whole run
# --------------------------------------------------------------------------- #

_ISOLATED_LOADER = """
import sys, keelcore
data = sys.stdin.buffer.read()
try:
    keelcore.Model.from_bytes(data, "isolated.onnx").close()
    print("0\tok")
except keelcore.KeelError as e:
    print(f"{e.status}\t{e.message}")
"""


def load_isolated(model) -> tuple:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.dirname(os.path.abspath(keelcore.__file__))
    p = subprocess.run([sys.executable, "-c", _ISOLATED_LOADER], input=model.SerializeToString(),
                       capture_output=True, timeout=60, env=env)
    assert p.returncode == 0, (f"loading crashed the process (exit {p.returncode}, "
                               f"signal {-p.returncode if p.returncode < 0 else '-'}): {p.stderr.decode()[-500:]}")
    status, _, message = p.stdout.decode().strip().partition("\t")
    return int(status), message


def reduce_with_second_input(op, opset, second):
    return raw_model([H(op, ["x", "second"], ["y"], name="red_extra")], [vi("x", ["N", 8])], [vi("y", None)],
                     [second], opset=opset)


ISOLATED_CASES = {
    # Before ReduceSum-13 / ReduceMean-18 the axes are an attribute: a second input is not axes.
    "ReduceSum-11-float-second-input": ("ReduceSum", 11, numpy_helper.from_array(np.zeros(3, np.float32), "second")),
    "ReduceSum-7-float-second-input": ("ReduceSum", 7, numpy_helper.from_array(np.zeros(3, np.float32), "second")),
    "ReduceMean-13-float-second-input": ("ReduceMean", 13,
                                         numpy_helper.from_array(np.zeros(3, np.float32), "second")),
    "ReduceMean-17-float-second-input": ("ReduceMean", 17,
                                         numpy_helper.from_array(np.zeros(3, np.float32), "second")),
    "ReduceMean-18-float-axes": ("ReduceMean", 18, numpy_helper.from_array(np.zeros(3, np.float32), "second")),
    "ReduceSum-13-float-axes": ("ReduceSum", 13, numpy_helper.from_array(np.zeros(3, np.float32), "second")),
}




@pytest.mark.parametrize("case", list(ISOLATED_CASES))
def test_reduce_with_bad_second_input_is_rejected_not_crash(case):
    op, opset, second = ISOLATED_CASES[case]
    status, message = load_isolated(reduce_with_second_input(op, opset, second))
    assert status in (ERR_INVALID_MODEL, ERR_UNSUPPORTED), f"{case}: status {status} {message!r}"
    assert "red_extra" in message, message
