"""Conformance of the Keel C core against ONNX Runtime (CPUExecutionProvider).

Every model is built here with onnx.helper, checked with onnx.checker, then run
by ONNX Runtime and by Keel (through keelcore.py) on identical float32 inputs.

Metric: normwise relative error
    max |keel - ort| / max(max |ort|, 1e-30)  <=  1e-5
per output, after checking that both produce the same output shape and the same
pattern of non-finite values.

Coverage: every supported op (Gemm, MatMul, Add, Sub, Mul, Div, Relu, LeakyRelu,
Tanh, Sigmoid, Softmax, LogSoftmax, Exp, Log, Sqrt, Clip, Concat, Reshape,
Flatten, Transpose, Identity, Constant, ReduceSum, ReduceMean,
LayerNormalization) with attribute variants and at several opsets where the
semantics differ; numpy broadcasting; MatMul batching and 1-D operands; Gemm
transA/transB/alpha/beta and every C shape; initializers as raw_data and as
float_data; Constant value / value_float / value_floats; MLPs; dynamic batch on
one session. Then metadata, SHA-256, input/output info, node listing.
"""
from __future__ import annotations

import hashlib

import numpy as np
import onnx
import pytest
from onnx import helper

import keelcore
from conftest import (REPO, assert_matches, check_against_ort, init, make_model, ort_run,
                      rng_for, vi)

H = helper.make_node


def randn(rng, shape, scale=1.0):
    return np.asarray(rng.standard_normal(shape) * scale, dtype=np.float32)  # 0-d stays an ndarray


# --------------------------------------------------------------------------- #
# Unary element-wise ops
# --------------------------------------------------------------------------- #

UNARY = [
    # (op, opsets, attrs, domain of the input: "any" | "pos")
    ("Relu", [7, 13, 14, 22], {}, "any"),
    ("LeakyRelu", [7, 16, 22], {}, "any"),
    ("LeakyRelu", [7, 16], {"alpha": 0.2}, "any"),
    ("Tanh", [7, 13, 22], {}, "any"),
    ("Sigmoid", [7, 13, 22], {}, "any"),
    ("Exp", [7, 13, 22], {}, "any"),
    ("Log", [7, 13, 22], {}, "pos"),
    ("Sqrt", [7, 13, 22], {}, "pos"),
    ("Identity", [7, 13, 14, 16, 19, 21, 22], {}, "any"),
]


@pytest.mark.parametrize(
    "op,opset,attrs,dom",
    [pytest.param(op, o, a, d, id=f"{op}{'-' + '-'.join(f'{k}{v}' for k, v in a.items()) if a else ''}-op{o}")
     for op, opsets, a, d in UNARY for o in opsets])
def test_unary(op, opset, attrs, dom):
    rng = rng_for(f"{op}{opset}{attrs}")
    x = randn(rng, (3, 4, 5), 2.0)
    if dom == "pos":
        x = (np.abs(x) + 0.05).astype(np.float32)
    m = make_model([H(op, ["x"], ["y"], name="n0", **attrs)], [vi("x", ["N", 4, 5])], [vi("y", None)],
                   opset=opset)
    check_against_ort(m, [x], what=op)


# --------------------------------------------------------------------------- #
# Binary element-wise ops with broadcasting
# --------------------------------------------------------------------------- #

BCAST = [
    # (case id, shape A, shape B, B is an initializer)
    ("same", (3, 4), (3, 4), False),
    ("scalar0d", (3, 4), (), True),
    ("scalar1", (3, 4), (1,), True),
    ("row", (3, 4), (4,), True),
    ("column", (3, 4), (3, 1), True),
    ("rank-mismatch", (2, 3, 4), (3, 4), True),
    ("both-sides", (3, 1), (1, 4), False),
    ("lhs-smaller", (4,), (2, 3, 4), False),
    ("4d-both", (2, 1, 3, 1), (1, 5, 1, 4), False),
]


@pytest.mark.parametrize("opset", [7, 14])
@pytest.mark.parametrize("case", BCAST, ids=[c[0] for c in BCAST])
@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
def test_binary_broadcast(op, case, opset):
    cid, sa, sb, b_init = case
    rng = rng_for(f"{op}{cid}{opset}")
    a = randn(rng, sa, 2.0)
    b = randn(rng, sb, 2.0)
    if op == "Div":  # keep denominators away from 0: |b| in [0.5, 2.5]
        b = np.asarray(np.where(b < 0, -1.0, 1.0) * (0.5 + np.abs(b) % 2.0), dtype=np.float32)
    inputs = [vi("a", list(sa))]
    inits = []
    feeds = [a]
    if b_init:
        inits.append(init("b", b))
    else:
        inputs.append(vi("b", list(sb)))
        feeds.append(b)
    m = make_model([H(op, ["a", "b"], ["y"], name="n0")], inputs, [vi("y", None)], inits, opset=opset)
    check_against_ort(m, feeds, what=f"{op} {cid}")


def test_binary_same_tensor_both_operands():
    x = randn(rng_for("sq"), (5, 3))
    m = make_model([H("Mul", ["x", "x"], ["y"], name="sq")], [vi("x", ["N", 3])], [vi("y", None)], opset=13)
    check_against_ort(m, [x])


# --------------------------------------------------------------------------- #
# MatMul
# --------------------------------------------------------------------------- #


@pytest.fixture(params=["packed", "avx2", "blas"])
def gemm_path(request, monkeypatch):
    """Products by constant weights run Keel's packed kernels (AVX-512 where the
    CPU has it, the default), its AVX2 kernel (KEEL_GEMM=avx2), or cblas_sgemm
    (KEEL_GEMM=blas); the variable is read when a model loads. Every test taking
    this fixture runs all three ways (on a CPU without AVX-512, the first two
    are the same)."""
    if request.param == "packed":
        monkeypatch.delenv("KEEL_GEMM", raising=False)
    else:
        monkeypatch.setenv("KEEL_GEMM", request.param)
    return request.param

MATMUL = [
    # (id, shape A, shape B, B initializer)
    ("2d-init", (5, 7), (7, 3), True),
    ("2d-inputs", (6, 8), (8, 4), False),
    ("batched-rhs2d", (2, 3, 4, 5), (5, 6), True),
    ("batched-both", (2, 3, 4, 5), (2, 3, 5, 6), False),
    ("broadcast-batch", (2, 1, 3, 4), (3, 4, 5), False),
    ("lhs2d-rhs3d", (3, 4), (2, 4, 5), False),
    ("lhs1d", (4,), (4, 3), True),
    ("rhs1d", (5, 4), (4,), True),
    ("rhs1d-batched", (2, 3, 4), (4,), False),
    ("lhs1d-batched", (4,), (2, 4, 5), False),
    ("both1d", (6,), (6,), False),
    ("k1", (5, 1), (1, 3), False),
    ("gemv-like", (1, 64), (64, 64), True),
]


@pytest.mark.parametrize("opset", [7, 13])
@pytest.mark.parametrize("case", MATMUL, ids=[c[0] for c in MATMUL])
def test_matmul(case, opset, gemm_path):
    cid, sa, sb, b_init = case
    rng = rng_for(f"mm{cid}")
    a, b = randn(rng, sa), randn(rng, sb)
    inputs, inits, feeds = [vi("a", list(sa))], [], [a]
    if b_init:
        inits.append(init("b", b))
    else:
        inputs.append(vi("b", list(sb)))
        feeds.append(b)
    m = make_model([H("MatMul", ["a", "b"], ["y"], name="mm")], inputs, [vi("y", None)], inits, opset=opset)
    got, ref = check_against_ort(m, feeds, what=f"MatMul {cid}")
    np.testing.assert_equal(got[0].shape, np.matmul(a, b).shape)


# --------------------------------------------------------------------------- #
# Gemm
# --------------------------------------------------------------------------- #

M_, K_, N_ = 5, 7, 3
C_SHAPES = {"none": None, "scalar0d": (), "scalar1": (1,), "N": (N_,), "M1": (M_, 1), "MN": (M_, N_),
            "1N": (1, N_)}
GEMM_CASES = []
for _o in (11, 13):
    for _c in C_SHAPES:
        for _ta, _tb in ((0, 0), (1, 0), (0, 1), (1, 1)):
            GEMM_CASES.append((_o, _c, _ta, _tb, 1.0, 1.0))
    for _c in ("none", "N", "MN"):
        GEMM_CASES.append((_o, _c, 1, 1, 0.5, 2.0))
        GEMM_CASES.append((_o, _c, 0, 0, -1.5, 0.25))
for _c in ("scalar1", "N", "M1", "MN"):  # opset 7..10: C is required
    GEMM_CASES.append((7, _c, 0, 1, 1.0, 1.0))
    GEMM_CASES.append((9, _c, 1, 0, 0.7, -0.3))


def _gemm_id(c):
    o, cs, ta, tb, al, be = c
    return f"op{o}-C{cs}-tA{ta}tB{tb}" + ("" if (al, be) == (1.0, 1.0) else f"-a{al}b{be}")


@pytest.mark.parametrize("case", GEMM_CASES, ids=[_gemm_id(c) for c in GEMM_CASES])
def test_gemm(case, gemm_path):
    opset, cshape, ta, tb, alpha, beta = case
    rng = rng_for(_gemm_id(case))
    a = randn(rng, (K_, M_) if ta else (M_, K_))
    b = randn(rng, (N_, K_) if tb else (K_, N_))
    attrs = {"transA": ta, "transB": tb}
    if alpha != 1.0:
        attrs["alpha"] = alpha
    if beta != 1.0:
        attrs["beta"] = beta
    ins = ["a", "b"]
    inits = [init("b", b)]
    if C_SHAPES[cshape] is not None:
        inits.append(init("c", randn(rng, C_SHAPES[cshape])))
        ins.append("c")
    m = make_model([H("Gemm", ins, ["y"], name="gemm", **attrs)], [vi("a", list(a.shape))], [vi("y", None)],
                   inits, opset=opset)
    check_against_ort(m, [a], what=_gemm_id(case))


def test_gemm_dynamic_m_with_bias_vector(gemm_path):
    rng = rng_for("gemm-dyn")
    w, c = randn(rng, (3, 7)), randn(rng, (3,))
    m = make_model([H("Gemm", ["a", "w", "c"], ["y"], name="g", transB=1)], [vi("a", ["M", 7])], [vi("y", None)],
                   [init("w", w), init("c", c)], opset=13)
    for n in (1, 2, 33):
        check_against_ort(m, [randn(rng, (n, 7))], what=f"M={n}")


@pytest.mark.parametrize("k,n", [(1, 2), (17, 15), (32, 64), (65, 130), (64, 1), (200, 33)])
@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_relu_layer_shapes(k, n, trans_b, gemm_path):
    """Dense layers of the sizes the packed kernels tile differently (partial
    vectors, several 64-column panels, a single output column), each followed
    by a Relu that is fused into the product, at every tile height."""
    rng = rng_for(f"gemm-shapes-{k}-{n}-{trans_b}")
    w = randn(rng, (n, k) if trans_b else (k, n))
    c = randn(rng, (n,))
    m = make_model([H("Gemm", ["a", "w", "c"], ["h"], name="g", transB=trans_b), H("Relu", ["h"], ["y"], name="r")],
                   [vi("a", ["M", k])], [vi("y", None)], [init("w", w), init("c", c)], opset=13)
    for rows in (1, 5, 6, 7, 100):
        check_against_ort(m, [randn(rng, (rows, k))], what=f"M={rows}")


# --------------------------------------------------------------------------- #
# Softmax / LogSoftmax: opset < 13 coerces to 2-D at axis, >= 13 is per axis
# --------------------------------------------------------------------------- #

SOFTMAX_CASES = []
for _op in ("Softmax", "LogSoftmax"):
    for _o in (7, 11, 13, 22):
        axes = [None, 0, 1, 2] + ([-1, -2] if _o >= 11 else [])
        for _ax in axes:
            SOFTMAX_CASES.append((_op, _o, _ax))


@pytest.mark.parametrize("op,opset,axis", SOFTMAX_CASES,
                         ids=[f"{o}-op{s}-axis{a}" for o, s, a in SOFTMAX_CASES])
def test_softmax(op, opset, axis):
    rng = rng_for(f"{op}{opset}{axis}")
    x = randn(rng, (2, 3, 4), 3.0)
    attrs = {} if axis is None else {"axis": axis}
    m = make_model([H(op, ["x"], ["y"], name="sm", **attrs)], [vi("x", [2, 3, 4])], [vi("y", None)], opset=opset)
    check_against_ort(m, [x], what=f"{op} opset {opset} axis {axis}")


def test_softmax_semantics_differ_between_opsets():
    """Guards the test itself: opset 11 and 13 really give different results here."""
    x = randn(rng_for("smdiff"), (2, 3, 4), 3.0)
    outs = []
    for o in (11, 13):
        m = make_model([H("Softmax", ["x"], ["y"], name="sm", axis=1)], [vi("x", [2, 3, 4])], [vi("y", None)],
                       opset=o)
        b = m.SerializeToString()
        (k,) = keelcore.Session(keelcore.Model.from_bytes(b)).run([x])
        (r,) = ort_run(b, [x])
        assert_matches([k], [r], what=f"opset {o}")
        outs.append(k)
    assert np.max(np.abs(outs[0] - outs[1])) > 1e-2


def test_softmax_large_logits_stable():
    x = np.array([[1000.0, 1001.0, 999.0], [-1000.0, -1000.0, -1001.0]], dtype=np.float32)
    for op in ("Softmax", "LogSoftmax"):
        m = make_model([H(op, ["x"], ["y"], name="sm")], [vi("x", [2, 3])], [vi("y", None)], opset=13)
        check_against_ort(m, [x], what=op)


# --------------------------------------------------------------------------- #
# Clip: attributes before opset 11, optional inputs from 11
# --------------------------------------------------------------------------- #

CLIP_CASES = [(7, "both"), (7, "min"), (7, "max"), (7, "none")] + \
             [(o, v) for o in (11, 12, 13, 22) for v in ("both", "min", "max", "none")]


@pytest.mark.parametrize("opset,variant", CLIP_CASES, ids=[f"op{o}-{v}" for o, v in CLIP_CASES])
def test_clip(opset, variant):
    x = randn(rng_for(f"clip{opset}{variant}"), (4, 6), 2.0)
    lo, hi = -0.5, 0.75
    inits = []
    if opset < 11:
        attrs = {}
        if variant in ("both", "min"):
            attrs["min"] = lo
        if variant in ("both", "max"):
            attrs["max"] = hi
        node = H("Clip", ["x"], ["y"], name="clip", **attrs)
    else:
        ins = ["x"]
        if variant in ("both", "min"):
            inits.append(init("lo", np.array(lo, dtype=np.float32)))
            ins.append("lo")
        elif variant == "max":
            ins.append("")
        if variant in ("both", "max"):
            inits.append(init("hi", np.array(hi, dtype=np.float32)))
            ins.append("hi")
        node = H("Clip", ins, ["y"], name="clip")
    m = make_model([node], [vi("x", ["N", 6])], [vi("y", None)], inits, opset=opset)
    got, _ = check_against_ort(m, [x], what=f"Clip {variant}")
    if variant in ("both", "min"):
        assert got[0].min() >= lo
    if variant in ("both", "max"):
        assert got[0].max() <= hi


def test_clip_min_greater_than_max_gives_max():
    """Clip-13 spec: "When 'min' is greater than 'max', the clip operator sets
    all the 'input' values to the value of 'max'" (= Min(max, Max(x, min)))."""
    x = randn(rng_for("clipswap"), (3, 4), 2.0)
    m = make_model([H("Clip", ["x", "lo", "hi"], ["y"], name="clip")], [vi("x", ["N", 4])], [vi("y", None)],
                   [init("lo", np.array(1.0, np.float32)), init("hi", np.array(-1.0, np.float32))], opset=13)
    got, _ = check_against_ort(m, [x])
    np.testing.assert_array_equal(got[0], np.full((3, 4), -1.0, np.float32))


# --------------------------------------------------------------------------- #
# Non-finite values: NaN and +-inf propagate as in ONNX Runtime
# --------------------------------------------------------------------------- #

NONFINITE_X = np.array([[np.nan, 1.0, -1.0, 0.0], [2.0, np.inf, -np.inf, 0.5], [88.0, -1.5, 1e-3, -0.0]],
                       np.float32)
NONFINITE_CASES = [("Relu", {}, 13), ("Relu", {}, 7), ("LeakyRelu", {"alpha": 0.1}, 16), ("Sigmoid", {}, 13),
                   ("Tanh", {}, 13), ("Exp", {}, 13), ("Log", {}, 13), ("Sqrt", {}, 13), ("Identity", {}, 13),
                   ("Softmax", {}, 13), ("LogSoftmax", {}, 13), ("Softmax", {}, 11), ("Clip", {}, 13),
                   ("Clip", {"min": -0.5, "max": 0.5}, 9), ("ReduceSum", {"keepdims": 0}, 13),
                   ("ReduceMean", {"keepdims": 1, "axes": [1]}, 13), ("Flatten", {}, 13), ("Transpose", {}, 13)]


@pytest.mark.parametrize("op,attrs,opset", [
    pytest.param(c[0], c[1], c[2], marks=c[3:], id=f"{c[0]}-op{c[2]}" + ("-" + "-".join(c[1]) if c[1] else ""))
    for c in NONFINITE_CASES])
def test_nonfinite_propagation(op, attrs, opset):
    m = make_model([H(op, ["x"], ["y"], name="u", **attrs)], [vi("x", ["N", 4])], [vi("y", None)], opset=opset)
    check_against_ort(m, [NONFINITE_X], what=f"{op} on NaN/inf")


@pytest.mark.parametrize("op", ["Gemm", "LayerNormalization", "Add", "Div"])
def test_nonfinite_propagation_binary(op):
    w = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]], np.float32)
    if op == "Gemm":
        node, inits = H("Gemm", ["x", "w"], ["y"], name="u"), [init("w", w)]
    elif op == "LayerNormalization":
        node, inits = H(op, ["x", "g"], ["y"], name="u"), [init("g", np.ones(4, np.float32))]
    else:
        node, inits = H(op, ["x", "d"], ["y"], name="u"), [init("d", np.array([0.0, 1.0, -0.0, 2.0], np.float32))]
    m = make_model([node], [vi("x", ["N", 4])], [vi("y", None)], inits, opset=17)
    check_against_ort(m, [NONFINITE_X], what=f"{op} on NaN/inf")


# --------------------------------------------------------------------------- #
# Concat
# --------------------------------------------------------------------------- #

CONCAT_CASES = [(o, ax) for o in (7, 11, 13) for ax in (0, 1, 2)] + [(o, ax) for o in (11, 13) for ax in (-1, -3)]


@pytest.mark.parametrize("opset,axis", CONCAT_CASES, ids=[f"op{o}-axis{a}" for o, a in CONCAT_CASES])
def test_concat(opset, axis):
    rng = rng_for(f"concat{opset}{axis}")
    base = [2, 3, 4]
    shapes = []
    for extra in (1, 2, 3):
        s = list(base)
        s[axis] = extra
        shapes.append(s)
    a, b, c = (randn(rng, s) for s in shapes)
    m = make_model([H("Concat", ["a", "b", "c"], ["y"], name="cat", axis=axis)],
                   [vi("a", shapes[0]), vi("c", shapes[2])], [vi("y", None)], [init("b", b)], opset=opset)
    check_against_ort(m, [a, c], what=f"Concat axis {axis}")


def test_concat_single_input_and_repeated_input():
    x = randn(rng_for("cat1"), (3, 2))
    m = make_model([H("Concat", ["x"], ["y"], name="c1", axis=1), H("Concat", ["x", "x", "y"], ["z"], name="c2",
                                                                      axis=0)],
                   [vi("x", ["N", 2])], [vi("y", None), vi("z", None)], opset=13)
    check_against_ort(m, [x])


# --------------------------------------------------------------------------- #
# Reshape (0, -1, allowzero), Flatten, Transpose
# --------------------------------------------------------------------------- #

RESHAPE_CASES = [
    # (opset, target shape, allowzero or None)
    (7, [0, -1], None), (7, [-1], None), (7, [4, -1, 2], None), (7, [2, 0, 2, -1], None),
    (13, [0, -1], None), (13, [6, 4], None), (13, [-1, 1], None),
    (14, [0, 0, 2, -1], None), (14, [0, -1], 0), (14, [3, 2, 4], 1), (14, [-1, 4], 1),
    (19, [0, -1], 0), (21, [2, -1], 1),
]


@pytest.mark.parametrize("opset,target,allowzero", RESHAPE_CASES,
                         ids=[f"op{o}-{'x'.join(map(str, t))}-az{a}" for o, t, a in RESHAPE_CASES])
def test_reshape(opset, target, allowzero):
    x = randn(rng_for(f"reshape{opset}{target}"), (2, 3, 4))
    attrs = {} if allowzero is None else {"allowzero": allowzero}
    m = make_model([H("Reshape", ["x", "shape"], ["y"], name="rs", **attrs)], [vi("x", [2, 3, 4])],
                   [vi("y", None)], [init("shape", np.array(target, dtype=np.int64))], opset=opset)
    check_against_ort(m, [x], what=f"Reshape {target}")


@pytest.mark.parametrize("storage", ["raw", "typed"])
def test_reshape_dynamic_batch_shape_from_constant(storage):
    """Shape given by a Constant node (int64) and 0/-1 with a dynamic batch."""
    shape_t = init("s", np.array([0, -1], dtype=np.int64), storage)
    m = make_model([H("Constant", [], ["s"], name="shape_const", value=shape_t),
                    H("Reshape", ["x", "s"], ["y"], name="rs")],
                   [vi("x", ["N", 3, 4])], [vi("y", None)], opset=13)
    for n in (1, 5):
        check_against_ort(m, [randn(rng_for(f"rsd{n}"), (n, 3, 4))], what=f"N={n}")


def test_constant_int64_for_shape_and_axes():
    """int64 constants from Constant nodes (value tensor / value_ints) as Reshape
    shape and ReduceSum axes."""
    nodes = [H("Constant", [], ["s"], name="shape_k", value_ints=[0, -1]),
             H("Reshape", ["x", "s"], ["r"], name="rs"),
             H("Constant", [], ["ax"], name="axes_k", value=init("axv", np.array([1], np.int64))),
             H("ReduceSum", ["r", "ax"], ["y"], name="sum", keepdims=1)]
    m = make_model(nodes, [vi("x", ["N", 2, 3])], [vi("y", None)], opset=13)
    check_against_ort(m, [randn(rng_for("k64"), (4, 2, 3))])


FLATTEN_CASES = [(o, ax) for o in (9, 11, 13, 21) for ax in (None, 0, 1, 2, 3, 4)] + \
                [(o, ax) for o in (11, 13) for ax in (-1, -3, -4)]


@pytest.mark.parametrize("opset,axis", FLATTEN_CASES, ids=[f"op{o}-axis{a}" for o, a in FLATTEN_CASES])
def test_flatten(opset, axis):
    x = randn(rng_for(f"flat{opset}{axis}"), (2, 3, 4, 5))
    attrs = {} if axis is None else {"axis": axis}
    m = make_model([H("Flatten", ["x"], ["y"], name="fl", **attrs)], [vi("x", [2, 3, 4, 5])], [vi("y", None)],
                   opset=opset)
    check_against_ort(m, [x], what=f"Flatten axis {axis}")


TRANSPOSE_CASES = [
    (7, (3, 4), None), (13, (3, 4), [1, 0]), (13, (2, 3, 4), None), (7, (2, 3, 4), [0, 2, 1]),
    (13, (2, 3, 4), [2, 0, 1]), (13, (2, 3, 4), [1, 0, 2]), (21, (2, 3, 4, 5), [0, 2, 3, 1]),
    (13, (2, 3, 4, 5), [3, 1, 0, 2]), (13, (2, 3, 4, 5), None), (13, (2, 3, 4), [0, 1, 2]),
]


@pytest.mark.parametrize("opset,shape,perm", TRANSPOSE_CASES,
                         ids=[f"op{o}-{'x'.join(map(str, s))}-{p}" for o, s, p in TRANSPOSE_CASES])
def test_transpose(opset, shape, perm):
    x = randn(rng_for(f"tr{shape}{perm}"), shape)
    attrs = {} if perm is None else {"perm": perm}
    m = make_model([H("Transpose", ["x"], ["y"], name="tr", **attrs)], [vi("x", list(shape))], [vi("y", None)],
                   opset=opset)
    check_against_ort(m, [x], what=f"Transpose {perm}")


# --------------------------------------------------------------------------- #
# Constant
# --------------------------------------------------------------------------- #

CONST_CASES = [(9, "value-raw"), (9, "value-float_data"), (13, "value-raw"), (13, "value-float_data"),
               (12, "value_float"), (13, "value_float"), (12, "value_floats"), (19, "value_floats"),
               (13, "value-scalar0d")]


@pytest.mark.parametrize("opset,kind", CONST_CASES, ids=[f"op{o}-{k}" for o, k in CONST_CASES])
def test_constant(opset, kind):
    rng = rng_for(f"const{opset}{kind}")
    x = randn(rng, (3, 4))
    c = randn(rng, (3, 4))
    if kind == "value-raw":
        node = H("Constant", [], ["c"], name="k", value=init("cv", c, "raw"))
    elif kind == "value-float_data":
        node = H("Constant", [], ["c"], name="k", value=init("cv", c, "typed"))
    elif kind == "value-scalar0d":
        node = H("Constant", [], ["c"], name="k", value=init("cv", np.array(2.5, dtype=np.float32)))
    elif kind == "value_float":
        node = H("Constant", [], ["c"], name="k", value_float=-1.25)
    else:
        node = H("Constant", [], ["c"], name="k", value_floats=[0.5, -1.0, 2.0, 3.5])
    m = make_model([node, H("Add", ["x", "c"], ["y"], name="add")], [vi("x", ["N", 4])], [vi("y", None)],
                   opset=opset)
    check_against_ort(m, [x], what=kind)


def test_constant_as_graph_output():
    c = randn(rng_for("constout"), (2, 2))
    m = make_model([H("Constant", [], ["c"], name="k", value=init("cv", c)), H("Relu", ["x"], ["y"], name="r")],
                   [vi("x", [3])], [vi("y", None), vi("c", None)], opset=13)
    got, _ = check_against_ort(m, [randn(rng_for("co"), (3,))])
    np.testing.assert_array_equal(got[1], c)


# --------------------------------------------------------------------------- #
# ReduceSum / ReduceMean: axes attribute vs axes input (ReduceSum 13, ReduceMean 18)
# --------------------------------------------------------------------------- #

REDUCE_CASES = []
for _op, _attr_opsets, _input_opsets in (("ReduceSum", (7, 11), (13, 21)), ("ReduceMean", (11, 13), (18, 22))):
    for _o in _attr_opsets + _input_opsets:
        for _axes in ([1], [0, 2], [-1], [2, 0], None):
            for _kd in (None, 0, 1):
                if _axes is not None and _axes[0] < 0 and _o < 11:
                    continue
                REDUCE_CASES.append((_op, _o, _o in _input_opsets, _axes, _kd, None))
    for _o in _input_opsets:
        REDUCE_CASES.append((_op, _o, True, None, 1, 1))   # noop_with_empty_axes=1, no axes: identity
        REDUCE_CASES.append((_op, _o, True, None, 0, 0))   # explicit 0: reduce all
        REDUCE_CASES.append((_op, _o, True, [], 1, 1))     # empty axes tensor + noop: identity
        REDUCE_CASES.append((_op, _o, True, [], 1, 0))     # empty axes tensor, noop 0: reduce all


def _red_id(c):
    op, o, as_input, axes, kd, noop = c
    return f"{op}-op{o}-{'in' if as_input else 'attr'}-axes{axes}-kd{kd}-noop{noop}"


@pytest.mark.parametrize("case", REDUCE_CASES, ids=[_red_id(c) for c in REDUCE_CASES])
def test_reduce(case):
    op, opset, as_input, axes, keepdims, noop = case
    x = randn(rng_for(_red_id(case)), (2, 3, 4))
    x += 0.5  # keep sums away from total cancellation
    attrs = {}
    if keepdims is not None:
        attrs["keepdims"] = keepdims
    if noop is not None:
        attrs["noop_with_empty_axes"] = noop
    ins, inits = ["x"], []
    if axes is not None:
        if as_input:
            inits.append(init("axes", np.array(axes, dtype=np.int64)))
            ins.append("axes")
        else:
            attrs["axes"] = axes
    m = make_model([H(op, ins, ["y"], name="red", **attrs)], [vi("x", [2, 3, 4])], [vi("y", None)], inits,
                   opset=opset)
    check_against_ort(m, [x], what=_red_id(case))


# --------------------------------------------------------------------------- #
# LayerNormalization (opset 17+)
# --------------------------------------------------------------------------- #

LN_CASES = [(17, None, True, None), (17, -1, False, None), (17, 1, True, None), (17, 2, True, 1e-3),
            (17, -2, False, 1e-2), (22, -1, True, None), (17, 0, True, None)]


@pytest.mark.parametrize("opset,axis,bias,eps", LN_CASES, ids=[f"op{o}-axis{a}-bias{b}-eps{e}" for o, a, b, e in LN_CASES])
def test_layer_norm(opset, axis, bias, eps):
    rng = rng_for(f"ln{opset}{axis}{bias}{eps}")
    shape = (2, 3, 4)
    x = randn(rng, shape, 2.0) + 1.0
    ax = (-1 if axis is None else axis) % len(shape)
    norm_shape = shape[ax:]
    scale = randn(rng, norm_shape) + 1.0
    inits = [init("scale", scale)]
    ins = ["x", "scale"]
    if bias:
        inits.append(init("bias", randn(rng, norm_shape)))
        ins.append("bias")
    attrs = {}
    if axis is not None:
        attrs["axis"] = axis
    if eps is not None:
        attrs["epsilon"] = eps
    m = make_model([H("LayerNormalization", ins, ["y"], name="ln", **attrs)], [vi("x", ["N", 3, 4])],
                   [vi("y", None)], inits, opset=opset)
    check_against_ort(m, [x], what="LayerNormalization")


@pytest.mark.parametrize("outs", [["y", "mean", "isd"], ["y", "", "isd"], ["y", "mean"], ["y", "", ""]],
                         ids=["Y-Mean-InvStdDev", "Y-skip-InvStdDev", "Y-Mean", "Y-skip-skip"])
def test_layer_norm_optional_outputs(outs):
    """Mean and InvStdDev may be requested (then they must match ORT) or, per
    keel.h's contract, refused at load as UNSUPPORTED naming the node."""
    rng = rng_for(f"lnout{outs}")
    x = randn(rng, (5, 6), 2.0)
    graph_outs = [o for o in outs if o]
    m = make_model([H("LayerNormalization", ["x", "g", "b"], outs, name="ln_multi", axis=-1)], [vi("x", ["N", 6])],
                   [vi(o, None) for o in graph_outs], [init("g", randn(rng, (6,)) + 1), init("b", randn(rng, (6,)))],
                   opset=17)
    try:
        keel_only(m, [x])
    except keelcore.KeelError as e:
        assert len(graph_outs) > 1 and e.status == keelcore.ERR_UNSUPPORTED and "ln_multi" in e.message, e
        return
    check_against_ort(m, [x], what=f"LayerNormalization outputs {outs}")


# --------------------------------------------------------------------------- #
# Initializer storage
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("storage", ["raw", "typed"])
@pytest.mark.parametrize("shape", [(), (1,), (4,), (3, 4), (2, 3, 4)], ids=lambda s: "x".join(map(str, s)) or "0d")
def test_initializer_storage(storage, shape):
    rng = rng_for(f"init{storage}{shape}")
    w = randn(rng, shape)
    m = make_model([H("Add", ["x", "w"], ["y"], name="add")], [vi("x", [2, 3, 4])], [vi("y", None)],
                   [init("w", w, storage)], opset=13)
    x = np.zeros((2, 3, 4), dtype=np.float32)
    got, _ = check_against_ort(m, [x], what=storage)
    np.testing.assert_array_equal(got[0], np.broadcast_to(w, (2, 3, 4)))  # exact: 0 + w == w


# --------------------------------------------------------------------------- #
# Multi-node graphs: MLPs, fan-out, several inputs/outputs
# --------------------------------------------------------------------------- #

def glorot(rng, fan_in, fan_out):
    lim = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-lim, lim, (fan_in, fan_out)).astype(np.float32)


def mlp_gemm(sizes, storage="raw", seed="mlp", batch="N", transB=0):
    rng = rng_for(seed)
    nodes, inits = [], []
    cur = "x"
    for i, (fi, fo) in enumerate(zip(sizes[:-1], sizes[1:])):
        w = glorot(rng, fi, fo)
        if transB:
            w = np.ascontiguousarray(w.T)
        inits += [init(f"W{i}", w, storage), init(f"b{i}", randn(rng, (fo,), 0.1), storage)]
        out = f"h{i}" if i < len(sizes) - 2 else "y"
        nodes.append(H("Gemm", [cur, f"W{i}", f"b{i}"], [f"g{i}" if out != "y" else "y"], name=f"gemm{i}",
                       transB=transB))
        if out != "y":
            nodes.append(H("Relu", [f"g{i}"], [out], name=f"relu{i}"))
        cur = out
    return make_model(nodes, [vi("x", [batch, sizes[0]])], [vi("y", None)], inits, opset=17)


@pytest.mark.parametrize("storage", ["raw", "typed"])
@pytest.mark.parametrize("transB", [0, 1])
@pytest.mark.parametrize("n", [1, 7, 100])
def test_mlp_32_64_64_1(storage, transB, n, gemm_path):
    m = mlp_gemm([32, 64, 64, 1], storage, "mlp32", transB=transB)
    check_against_ort(m, [randn(rng_for(f"x{n}"), (n, 32))], what=f"MLP n={n}")


def test_mlp_8_16_4_softmax():
    rng = rng_for("mlp8")
    inits = [init("W0", glorot(rng, 8, 16)), init("b0", randn(rng, (16,), 0.1)),
             init("W1", glorot(rng, 16, 4)), init("b1", randn(rng, (4,), 0.1))]
    nodes = [H("MatMul", ["x", "W0"], ["m0"], name="mm0"), H("Add", ["m0", "b0"], ["a0"], name="add0"),
             H("Relu", ["a0"], ["r0"], name="relu0"), H("MatMul", ["r0", "W1"], ["m1"], name="mm1"),
             H("Add", ["m1", "b1"], ["a1"], name="add1"), H("Softmax", ["a1"], ["p"], name="softmax", axis=-1)]
    m = make_model(nodes, [vi("x", ["batch", 8])], [vi("p", None)], inits, opset=13)
    for n in (1, 9, 64):
        got, _ = check_against_ort(m, [randn(rng, (n, 8), 2.0)], what=f"n={n}")
        np.testing.assert_allclose(got[0].sum(axis=1), 1.0, rtol=1e-5)


def test_layernorm_tanh_block():
    rng = rng_for("lnblock")
    d = 16
    inits = [init("W0", glorot(rng, 12, d)), init("b0", randn(rng, (d,), 0.1)),
             init("g", randn(rng, (d,), 0.1) + 1.0), init("beta", randn(rng, (d,), 0.1)),
             init("W1", glorot(rng, d, 1)), init("b1", randn(rng, (1,), 0.1))]
    nodes = [H("MatMul", ["x", "W0"], ["m0"], name="proj"), H("Add", ["m0", "b0"], ["a0"], name="proj_bias"),
             H("LayerNormalization", ["a0", "g", "beta"], ["ln"], name="ln", axis=-1, epsilon=1e-5),
             H("Tanh", ["ln"], ["t"], name="tanh"), H("MatMul", ["t", "W1"], ["m1"], name="head"),
             H("Add", ["m1", "b1"], ["y"], name="head_bias")]
    m = make_model(nodes, [vi("x", ["N", 12])], [vi("y", None)], inits, opset=17)
    for n in (1, 13, 200):
        check_against_ort(m, [randn(rng, (n, 12), 3.0)], what=f"n={n}")


def test_fan_out_multi_input_multi_output():
    """One tensor consumed by several nodes; a graph output also consumed
    internally; outputs returned in graph-output order."""
    rng = rng_for("fan")
    nodes = [H("Add", ["a", "b"], ["s"], name="add"), H("Relu", ["s"], ["r"], name="relu"),
             H("Sigmoid", ["s"], ["sg"], name="sig"), H("Mul", ["r", "sg"], ["p"], name="mul"),
             H("ReduceSum", ["p", "ax"], ["tot"], name="sum", keepdims=0),
             H("Concat", ["s", "p"], ["cat"], name="cat", axis=1)]
    m = make_model(nodes, [vi("a", ["N", 4]), vi("b", ["N", 4])], [vi("tot", None), vi("s", None), vi("cat", None)],
                   [init("ax", np.array([1], dtype=np.int64))], opset=13)
    check_against_ort(m, [randn(rng, (6, 4)), randn(rng, (6, 4))])


def test_graph_output_without_declared_shape():
    """onnx.checker insists on a shape field for graph outputs, but ORT and
    hand-written models do without; Keel computes output shapes at run time."""
    m = make_model([H("Tanh", ["x"], ["y"], name="t")], [vi("x", ["N", 3])], [vi("y", None)], opset=13,
                   infer_output_shapes=False, check=False)
    assert not m.graph.output[0].type.tensor_type.HasField("shape")
    check_against_ort(m, [randn(rng_for("ns"), (4, 3))])


def test_dead_node_and_unused_input():
    m = make_model([H("Relu", ["x"], ["y"], name="used"), H("Tanh", ["x"], ["dead"], name="dead_end")],
                   [vi("x", ["N", 4]), vi("unused", ["M", 2])], [vi("y", None)], opset=13)
    rng = rng_for("dead")
    check_against_ort(m, [randn(rng, (3, 4)), randn(rng, (5, 2))])


def test_one_value_to_two_graph_outputs():
    m = make_model([H("Relu", ["x"], ["y"], name="r"), H("Identity", ["y"], ["y2"], name="copy")],
                   [vi("x", ["N", 4])], [vi("y", None), vi("y2", None)], opset=13)
    got, _ = check_against_ort(m, [randn(rng_for("twoout"), (3, 4))])
    np.testing.assert_array_equal(got[0], got[1])


# --------------------------------------------------------------------------- #
# Dynamic batch on one session
# --------------------------------------------------------------------------- #

def test_dynamic_batch_one_session():
    m = mlp_gemm([32, 64, 64, 1], "raw", "dyn")
    b = m.SerializeToString()
    from conftest import ort_session
    ort = ort_session(b)
    rng = rng_for("dynx")
    with keelcore.Model.from_bytes(b) as km, keelcore.Session(km) as s:
        for n in (1, 7, 100, 1000, 7):
            x = randn(rng, (n, 32))
            (got,) = s.run([x])
            ref = ort.run(None, {"x": x})
            assert_matches([got], ref, what=f"N={n}")
            assert got.shape == (n, 1)


def test_run_outputs_are_independent_copies():
    """keelcore copies outputs out of session memory: a later run must not change them."""
    m = mlp_gemm([4, 3], "raw", "copy")
    with keelcore.Model.from_bytes(m.SerializeToString()) as km, keelcore.Session(km) as s:
        (y1,) = s.run([np.ones((2, 4), np.float32)])
        keep = y1.copy()
        s.run([np.full((2, 4), 5.0, np.float32)])
        np.testing.assert_array_equal(y1, keep)


def test_bound_run_fast_path_matches_run():
    m = mlp_gemm([32, 64, 64, 1], "raw", "bound")
    rng = rng_for("boundx")
    x = randn(rng, (50, 32))
    with keelcore.Model.from_bytes(m.SerializeToString()) as km, keelcore.Session(km) as s:
        (ref,) = s.run([x])
        fast = s.bind([x])
        out = np.empty((50, 1), np.float32)
        fast.run()
        fast.copy_outputs_into([out])
        np.testing.assert_array_equal(out, ref)
        x[:] = randn(rng, (50, 32))  # in-place update of the bound input
        out2 = np.empty_like(out)
        fast.run_into([(out2.ctypes.data, out2.nbytes)])
        (ref2,) = s.run([x])
        np.testing.assert_array_equal(out2, ref2)
        assert not np.array_equal(out2, out)
        # keel_session_bind: the core writes the caller's array on every run
        out3 = np.full_like(out, np.nan)
        bound = s.bind([x], outputs=[out3])
        bound.run()
        np.testing.assert_array_equal(out3, ref2)
        x[:] = randn(rng, (50, 32))
        bound.run()
        (ref3,) = s.run([x])
        np.testing.assert_array_equal(out3, ref3)


def test_bound_output_of_the_wrong_shape_is_an_error():
    m = mlp_gemm([4, 3, 2], "raw", "boundshape")
    x = np.ones((5, 4), np.float32)
    with keelcore.Model.from_bytes(m.SerializeToString()) as km, keelcore.Session(km) as s:
        out = np.full((4, 2), 7.0, np.float32)
        bound = s.bind([x], outputs=[out])
        with pytest.raises(keelcore.KeelError) as e:
            bound.run()
        assert "[5,2]" in str(e.value) and "[4,2]" in str(e.value)
        assert (out == 7.0).all()
        with pytest.raises(ValueError):
            s.bind([x], outputs=[np.ones((5, 2), np.float64)])


def test_concurrent_sessions_share_one_model():
    """keel.h: a model is safe to share; one session per thread. ctypes releases
    the GIL during keel_session_run, so these runs really overlap."""
    import threading
    m = mlp_gemm([32, 64, 64, 1], "raw", "threads")
    rng = rng_for("threads-x")
    xs = {n: randn(rng, (n, 32)) for n in (1, 17, 256)}
    with keelcore.Model.from_bytes(m.SerializeToString()) as km:
        with keelcore.Session(km) as s0:
            want = {n: s0.run([x])[0] for n, x in xs.items()}
        errors = []

        def worker(tid):
            try:
                with keelcore.Session(km) as s:
                    for it in range(150):
                        n = (1, 17, 256)[(it + tid) % 3]
                        (y,) = s.run([xs[n]])
                        if not np.array_equal(y, want[n]):
                            errors.append(f"thread {tid} iteration {it} N={n}: result differs")
                            return
            except Exception as e:  # pragma: no cover - reported below
                errors.append(f"thread {tid}: {e!r}")

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not any(t.is_alive() for t in threads), "a worker thread hung"
        assert not errors, errors


def test_concurrent_loads():
    import threading
    b = mlp_gemm([8, 16, 2], "raw", "loads").SerializeToString()
    results, errors = [], []

    def worker():
        try:
            for _ in range(30):
                with keelcore.Model.from_bytes(b) as km:
                    results.append((km.sha256, km.parameter_count))
        except Exception as e:  # pragma: no cover
            errors.append(repr(e))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert len(set(results)) == 1 and len(results) == 120


ALIAS_CASES = {
    "Identity": [H("Identity", ["x"], ["y"], name="id")],
    "Reshape": [H("Reshape", ["x", "shape"], ["y"], name="rs")],
    "Flatten": [H("Flatten", ["x"], ["y"], name="fl")],
    "input-is-output": [],
}


@pytest.mark.parametrize("case", list(ALIAS_CASES))
def test_outputs_live_in_session_memory_not_in_inputs(case):
    """keel.h: outputs are "views into session memory that stay valid until the
    next run". A view that aliases the caller's input buffer breaks that: after
    the caller reuses or frees its input (e.g. a Swift withUnsafeBufferPointer
    scope ends) the output would change or dangle."""
    out = "x" if case == "input-is-output" else "y"
    m = make_model(ALIAS_CASES[case], [vi("x", ["N", 3])], [vi(out, None)],
                   [init("shape", np.array([-1], np.int64))] if case == "Reshape" else [], opset=13,
                   check=case != "input-is-output")
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    want = x.reshape(-1 if case == "Reshape" else 2, *(() if case == "Reshape" else (3,))).copy()
    with keelcore.Model.from_bytes(m.SerializeToString()) as km, keelcore.Session(km) as s:
        fast = s.bind([x])
        fast.run()
        (view,) = fast.outputs_view()
        x[...] = -7.0  # the caller reuses its input buffer; no new run
        np.testing.assert_array_equal(view.reshape(want.shape), want)


def test_binding_closes_in_order():
    """keelcore frees deterministically: closing a model first closes its
    sessions; a bound fast path of a closed session refuses to run."""
    m = mlp_gemm([4, 2], "raw", "close")
    km = keelcore.Model.from_bytes(m.SerializeToString())
    s = keelcore.Session(km)
    fast = s.bind([np.ones((3, 4), np.float32)])
    fast.run()
    km.close()
    assert not s._h
    with pytest.raises(ValueError):
        fast.run()
    with pytest.raises(ValueError):
        s.run([np.ones((3, 4), np.float32)])
    km.close()  # idempotent
    s.close()


def test_two_sessions_of_one_model_are_independent():
    m = mlp_gemm([5, 6, 2], "raw", "twos")
    rng = rng_for("twos-x")
    x1, x2 = randn(rng, (3, 5)), randn(rng, (8, 5))
    with keelcore.Model.from_bytes(m.SerializeToString()) as km:
        s1, s2 = keelcore.Session(km), keelcore.Session(km)
        (a,) = s1.run([x1])
        (b,) = s2.run([x2])
        (a2,) = s1.run([x1])
        np.testing.assert_array_equal(a, a2)
        assert b.shape == (8, 2)
        s1.close()
        s2.close()


# --------------------------------------------------------------------------- #
# Model queries: metadata, sha256, input/output info, nodes, parameters
# --------------------------------------------------------------------------- #

FEATURES = ["ret_1d", "vol_21d", "weight_current", "drift"]


def test_metadata_entries_and_lookup(tmp_model_path):
    m = mlp_gemm([4, 8, 1], "raw", "meta")
    meta = {"keel.kind": "policy", "keel.features": ",".join(FEATURES), "keel.version": "3",
            "provenance.git": "abc123", "note": "ünïcode ✓"}
    helper.set_model_props(m, meta)
    with keelcore.Model.load(tmp_model_path(m)) as km:
        assert km.metadata == meta
        assert [k for k, _ in km.metadata_items] == list(meta.keys())
        assert km.metadata_lookup("keel.kind") == "policy"
        assert km.metadata_lookup("keel.features").split(",") == FEATURES
        assert km.metadata_lookup("absent.key") is None


@pytest.mark.parametrize("opset", [7, 13, 17, 22])
def test_model_properties(opset):
    m = make_model([H("Relu", ["x"], ["y"], name="r")], [vi("x", ["N", 3])], [vi("y", None)], opset=opset,
                   name=f"graph_op{opset}")
    m.producer_version = "9.9"
    with keelcore.Model.from_bytes(m.SerializeToString()) as km:
        p = km.properties
        assert p["producer"] == "keel-tests" and p["producer_version"] == "9.9"
        assert p["ir_version"] == str(m.ir_version)
        assert p["opset"] == str(opset)
        assert p["graph"] == f"graph_op{opset}"
        assert keelcore.lib().keel_model_property_lookup(km.handle, b"opset") == str(opset).encode()
        assert keelcore.lib().keel_model_property_lookup(km.handle, b"nope") is None
        assert p["kernels"].startswith("cblas_sgemm for all 0") or "0 of 0 matrix products" in p["kernels"]


def test_kernels_property_names_the_path(gemm_path):
    """The "kernels" property says which kernels run a model's products: the
    packed AVX-512 kernels (on CPUs that have them) or cblas_sgemm, and why."""
    m = mlp_gemm([8, 16, 4], "raw", "kernels-prop")
    with keelcore.Model.from_bytes(m.SerializeToString()) as km:
        kernels = km.properties["kernels"]
    flags = open("/proc/cpuinfo").read()
    avx512, avx2 = " avx512f" in flags, " avx2" in flags and " fma" in flags
    if gemm_path == "blas":
        assert kernels == "cblas_sgemm for all 2 matrix products (packed kernels off: KEEL_GEMM=blas)"
    elif avx512 and gemm_path == "packed":
        assert kernels == "AVX-512 packed weights for 2 of 2 matrix products, cblas_sgemm for the rest"
    elif avx2:
        assert kernels == "AVX2 packed weights for 2 of 2 matrix products, cblas_sgemm for the rest"
    else:
        assert kernels == "cblas_sgemm for all 2 matrix products (packed kernels off: no AVX-512F or AVX2+FMA)"


def test_features_dynamic_last_dim_any_count_ok():
    m = make_model([H("Relu", ["x"], ["y"], name="r")], [vi("x", ["N", "F"])], [vi("y", None)], opset=13,
                   metadata={"keel.kind": "policy", "keel.features": "a,b,c"})
    with keelcore.Model.from_bytes(m.SerializeToString()) as km:
        assert km.metadata["keel.features"] == "a,b,c"


def test_sha256_of_file_and_bytes(tmp_model_path):
    m = mlp_gemm([4, 8, 1], "raw", "sha")
    b = m.SerializeToString()
    want = hashlib.sha256(b).hexdigest()
    with keelcore.Model.load(tmp_model_path(m)) as k1, keelcore.Model.from_bytes(b) as k2:
        assert k1.sha256 == want
        assert k2.sha256 == want
    helper.set_model_props(m, {"keel.version": "2"})
    with keelcore.Model.from_bytes(m.SerializeToString()) as k3:
        assert k3.sha256 == hashlib.sha256(m.SerializeToString()).hexdigest() != want


@pytest.mark.parametrize("n", [0, 1, 3, 55, 56, 63, 64, 65, 119, 120, 1000, 100_003])
def test_sha256_utility(n):
    data = np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8).tobytes()
    assert keelcore.sha256(data) == hashlib.sha256(data).hexdigest()


def test_input_output_info():
    nodes = [H("MatMul", ["feat", "W"], ["h"], name="mm"), H("Add", ["h", "ctx"], ["score"], name="add"),
             H("Softmax", ["score"], ["prob"], name="sm", axis=-1)]
    inputs = [vi("feat", ["assets", 5]), vi("ctx", [None, 3])]
    outputs = [vi("score", ["assets", 3]), vi("prob", ["assets", 3])]
    m = make_model(nodes, inputs, outputs, [init("W", randn(rng_for("io"), (5, 3)))], opset=13)
    with keelcore.Model.from_bytes(m.SerializeToString()) as km:
        assert [i.name for i in km.inputs] == ["feat", "ctx"]          # initializer W is not an input
        assert [o.name for o in km.outputs] == ["score", "prob"]
        assert km.inputs[0].dims == (-1, 5)
        assert km.inputs[0].dim_params == ("assets", None)
        assert km.inputs[1].dims == (-1, 3)
        assert km.inputs[1].dim_params[1] is None
        assert all(t.elem_type == keelcore.DTYPE_FLOAT32 for t in km.inputs + km.outputs)
        assert km.outputs[1].dims == (-1, 3)
        assert km.outputs[1].dim_params == ("assets", None)


def test_initializer_also_listed_as_graph_input_is_not_an_input():
    """IR < 4 style: an initializer that also appears in graph.input is a
    constant (with a default), not something the caller feeds. Keel's rule:
    inputs are graph inputs that are NOT initializers."""
    w = randn(rng_for("iri"), (3,))
    m = make_model([H("Add", ["x", "w"], ["y"], name="add")], [vi("x", ["N", 3]), vi("w", [3])], [vi("y", None)],
                   [init("w", w)], opset=9, ir_version=3)
    with keelcore.Model.from_bytes(m.SerializeToString()) as km:
        assert [i.name for i in km.inputs] == ["x"]
    x = randn(rng_for("irx"), (2, 3))
    (got,) = keel_only(m, [x])
    np.testing.assert_allclose(got, x + w, rtol=1e-6)


def keel_only(m, feeds):
    with keelcore.Model.from_bytes(m.SerializeToString()) as km, keelcore.Session(km) as s:
        return s.run(feeds)


def test_node_listing_and_parameter_count():
    m = mlp_gemm([32, 64, 64, 1], "raw", "nodes")
    with keelcore.Model.from_bytes(m.SerializeToString()) as km:
        assert km.nodes == [("gemm0", "Gemm"), ("relu0", "Relu"), ("gemm1", "Gemm"), ("relu1", "Relu"),
                            ("gemm2", "Gemm")]
        expected = sum(int(np.prod(t.dims)) for t in m.graph.initializer)
        assert expected == 32 * 64 + 64 + 64 * 64 + 64 + 64 + 1
        assert km.parameter_count == expected


def test_version_and_blas_threads():
    assert keelcore.version()
    assert keelcore.blas_threads() >= 1


# --------------------------------------------------------------------------- #
# Seeded random shapes (property style): broadcasting, MatMul batching,
# Transpose perms, Reduce axes, Softmax axes, Concat, Flatten — each vs ORT
# --------------------------------------------------------------------------- #

def _rand_shape(rng, rank, lo=1, hi=4):
    return [int(d) for d in rng.integers(lo, hi + 1, rank)]


@pytest.mark.parametrize("seed", range(40))
def test_random_broadcast(seed):
    rng = np.random.default_rng(10_000 + seed)
    out = _rand_shape(rng, int(rng.integers(0, 6)))
    shapes = []
    for _ in range(2):
        r = int(rng.integers(0, len(out) + 1))
        sh = out[len(out) - r:]
        shapes.append([1 if rng.random() < 0.35 else d for d in sh])
    op = ["Add", "Sub", "Mul", "Div"][seed % 4]
    a = randn(rng, shapes[0])
    b = np.asarray(np.abs(randn(rng, shapes[1])) + 0.5, dtype=np.float32)
    m = make_model([H(op, ["a", "b"], ["y"], name="n")], [vi("a", shapes[0]), vi("b", shapes[1])], [vi("y", None)],
                   opset=14)
    check_against_ort(m, [a, b], what=f"{op} {shapes}")


@pytest.mark.parametrize("seed", range(30))
def test_random_matmul(seed):
    rng = np.random.default_rng(20_000 + seed)
    m_, k_, n_ = (int(v) for v in rng.integers(1, 9, 3))
    batch = _rand_shape(rng, int(rng.integers(0, 3)), 1, 3)
    ba = [1 if rng.random() < 0.3 else d for d in batch][int(rng.integers(0, len(batch) + 1)):]
    bb = [1 if rng.random() < 0.3 else d for d in batch][int(rng.integers(0, len(batch) + 1)):]
    sa = ba + [m_, k_] if rng.random() < 0.85 else [k_]
    sb = bb + [k_, n_] if rng.random() < 0.85 else [k_]
    a, b = randn(rng, sa), randn(rng, sb)
    m = make_model([H("MatMul", ["a", "b"], ["y"], name="mm")], [vi("a", sa), vi("b", sb)], [vi("y", None)], opset=13)
    check_against_ort(m, [a, b], what=f"MatMul {sa} x {sb}")


@pytest.mark.parametrize("seed", range(30))
def test_random_transpose(seed):
    rng = np.random.default_rng(30_000 + seed)
    shape = _rand_shape(rng, int(rng.integers(1, 7)), 1, 5)
    perm = [int(p) for p in rng.permutation(len(shape))]
    x = randn(rng, shape)
    m = make_model([H("Transpose", ["x"], ["y"], name="t", perm=perm)], [vi("x", shape)], [vi("y", None)], opset=13)
    got, _ = check_against_ort(m, [x], what=f"Transpose {shape} {perm}")
    np.testing.assert_array_equal(got[0], np.transpose(x, perm))


@pytest.mark.parametrize("seed", range(30))
def test_random_reduce(seed):
    rng = np.random.default_rng(40_000 + seed)
    shape = _rand_shape(rng, int(rng.integers(1, 6)), 1, 5)
    r = len(shape)
    k = int(rng.integers(1, r + 1))
    axes = [int(a) - (r if rng.random() < 0.3 else 0) for a in rng.choice(r, k, replace=False)]
    op = "ReduceSum" if seed % 2 == 0 else "ReduceMean"
    kd = int(rng.integers(0, 2))
    x = np.asarray(randn(rng, shape) + 2.0, dtype=np.float32)
    opset = 18
    m = make_model([H(op, ["x", "axes"], ["y"], name="r", keepdims=kd)], [vi("x", shape)], [vi("y", None)],
                   [init("axes", np.array(axes, np.int64))], opset=opset)
    check_against_ort(m, [x], what=f"{op} {shape} axes {axes} keepdims {kd}")


@pytest.mark.parametrize("seed", range(24))
def test_random_softmax_axis(seed):
    rng = np.random.default_rng(50_000 + seed)
    shape = _rand_shape(rng, int(rng.integers(1, 6)), 1, 5)
    axis = int(rng.integers(-len(shape), len(shape)))
    op = "Softmax" if seed % 2 == 0 else "LogSoftmax"
    opset = [11, 13][(seed // 2) % 2]
    x = randn(rng, shape, 3.0)
    m = make_model([H(op, ["x"], ["y"], name="s", axis=axis)], [vi("x", shape)], [vi("y", None)], opset=opset)
    check_against_ort(m, [x], what=f"{op}-{opset} {shape} axis {axis}")


@pytest.mark.parametrize("seed", range(16))
def test_random_concat_flatten(seed):
    rng = np.random.default_rng(60_000 + seed)
    base = _rand_shape(rng, int(rng.integers(1, 5)), 1, 4)
    axis = int(rng.integers(-len(base), len(base)))
    shapes = []
    for _ in range(int(rng.integers(1, 5))):
        s = list(base)
        s[axis] = int(rng.integers(1, 4))
        shapes.append(s)
    names = [f"i{j}" for j in range(len(shapes))]
    fl_axis = int(rng.integers(0, len(base) + 1))
    m = make_model([H("Concat", names, ["c"], name="cat", axis=axis), H("Flatten", ["c"], ["y"], name="fl", axis=fl_axis)],
                   [vi(n, s) for n, s in zip(names, shapes)], [vi("y", None), vi("c", None)], opset=13)
    check_against_ort(m, [randn(rng, s) for s in shapes], what=f"Concat {shapes} axis {axis}, Flatten {fl_axis}")


# --------------------------------------------------------------------------- #
# The shipped initial policy (scripts/make_initial_policy.py)
# --------------------------------------------------------------------------- #

POLICY = REPO / "models" / "policy" / "1" / "model.onnx"
POLICY_CSV = REPO / "docs" / "examples" / "policy-input.csv"


def test_shipped_initial_policy(tmp_path):
    import subprocess
    import sys
    assert POLICY.exists(), "run `make models` (scripts/make_initial_policy.py)"
    # The committed file is exactly what the seeded script writes.
    out, csv = tmp_path / "model.onnx", tmp_path / "input.csv"
    subprocess.run([sys.executable, str(REPO / "scripts" / "make_initial_policy.py"), "--out", str(out),
                    "--csv", str(csv)], check=True, capture_output=True, timeout=120)
    assert out.read_bytes() == POLICY.read_bytes(), "models/policy/1/model.onnx differs from the script's output"
    assert csv.read_text() == POLICY_CSV.read_text()

    header = POLICY_CSV.read_text().splitlines()[0].split(",")
    x = np.loadtxt(POLICY_CSV, delimiter=",", skiprows=1, dtype=np.float32)
    with keelcore.Model.load(POLICY) as km:
        md = km.metadata
        assert md["keel.kind"] == "policy"
        assert md["keel.version"] == "1"
        assert md["keel.features"].split(",") == header and len(header) == 12
        assert md["keel.training"].startswith("none:")
        assert md["keel.created_by"] == "scripts/make_initial_policy.py"
        assert [(i.name, i.dims, i.dim_params[0]) for i in km.inputs] == [("features", (-1, 12), "assets")]
        assert [(o.name, o.dims) for o in km.outputs] == [("score", (-1, 1))]
        assert [op for _, op in km.nodes] == ["Gemm", "Relu", "Gemm", "Relu", "Gemm"]
        assert km.parameter_count == 12 * 64 + 64 + 64 * 64 + 64 + 64 + 1
        assert km.sha256 == hashlib.sha256(POLICY.read_bytes()).hexdigest()
        assert (km.properties["opset"], km.properties["ir_version"]) == ("17", "8")
    got, _ = check_against_ort(onnx.load(str(POLICY)), [x], what="initial policy")
    assert got[0].shape == (5, 1)
    assert np.all(np.abs(got[0]) < 0.1), f"initial scores should stay near 0, got {got[0].ravel()}"
    assert np.ptp(got[0]) > 0, "scores should still depend on the features"
