"""Malformed-file corpus through the sanitized checker (KEEL_CORPUS_CHECK, built
by `make c-tests` as build/asan/keel_corpus_check under ASan + UBSan + LSan).

The corpus (about 4,400 files) is generated in a temporary directory from small
valid models (526 and 930 bytes):
  - truncations of two base models at every length 0..len-1,
  - 2000 single-bit flips (numpy default_rng(1234)),
  - structural mutants: every node's op swapped for every supported op, every
    attribute set to extreme values or the wrong type, inputs dropped/added,
    initializer dims permuted or zeroed,
  - wrong dtypes, huge declared dimensions, cycles,
  - garbage and zero-length files.
The checker loads each file, runs what loads, and prints one `load` line (and a
`run` line for loaded models) per file. When a checker process dies, the file
it was on is recorded as a crash and the batch continues in a new process.
Assertions: no crash or sanitizer report; every file has a load line;
truncated files that load also run; the deliberately invalid ones are rejected
with the expected status; no file ever yields INTERNAL. Takes a few seconds.
"""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import init, make_model, rng_for, vi

H = helper.make_node
CHECKER = os.environ.get("KEEL_CORPUS_CHECK")
BATCH = 600            # files per checker process (well under a second each under ASan here)
TIMEOUT_S = 120        # per checker process
SANITIZER_MARKERS = ("AddressSanitizer", "LeakSanitizer", "UndefinedBehaviorSanitizer", "runtime error:")

pytestmark = pytest.mark.skipif(not CHECKER, reason="KEEL_CORPUS_CHECK is not set (run through `make test-python`)")


# --------------------------------------------------------------------------- #
# Base models
# --------------------------------------------------------------------------- #

def base_mlp():
    rng = rng_for("corpus-mlp")
    return make_model(
        [H("Gemm", ["x", "w0", "b0"], ["h"], name="fc0", transB=1), H("Relu", ["h"], ["r"], name="act0"),
         H("Gemm", ["r", "w1", "b1"], ["y"], name="fc1", transB=1)],
        [vi("x", ["N", 4])], [vi("y", None)],
        [init("w0", rng.standard_normal((8, 4)).astype(np.float32)), init("b0", np.zeros(8, np.float32)),
         init("w1", rng.standard_normal((2, 8)).astype(np.float32), "typed"), init("b1", np.zeros(2, np.float32))],
        opset=17, metadata={"keel.kind": "policy", "keel.features": "a,b,c,d", "keel.version": "1"})


def base_mixed():
    rng = rng_for("corpus-mixed")
    return make_model(
        [H("MatMul", ["x", "w"], ["m"], name="mm"), H("Add", ["m", "b"], ["a"], name="bias"),
         H("LayerNormalization", ["a", "g", "be"], ["ln"], name="ln", axis=-1),
         H("Tanh", ["ln"], ["t"], name="tanh"),
         H("Reshape", ["t", "shape"], ["rs"], name="rs"),
         H("Transpose", ["rs"], ["tr"], name="tr", perm=[0, 2, 1]),
         H("Flatten", ["tr"], ["fl"], name="fl", axis=1),
         H("Softmax", ["fl"], ["p"], name="sm", axis=-1),
         H("ReduceSum", ["p", "axes"], ["s"], name="rsum", keepdims=1),
         H("Clip", ["s", "lo", "hi"], ["c"], name="clip"),
         H("Concat", ["p", "c"], ["y"], name="cat", axis=1)],
        [vi("x", ["N", 6])], [vi("y", None)],
        [init("w", rng.standard_normal((6, 8)).astype(np.float32)), init("b", np.zeros(8, np.float32), "typed"),
         init("g", np.ones(8, np.float32)), init("be", np.zeros(8, np.float32)),
         init("shape", np.array([0, 2, 4], np.int64)), init("axes", np.array([1], np.int64)),
         init("lo", np.array(0.0, np.float32)), init("hi", np.array(1.0, np.float32))],
        opset=17, metadata={"keel.kind": "tax_loss", "keel.version": "2"})


def base_opset11():
    """Attribute-era variants (axes attributes, Clip inputs, Softmax 2-D coercion)."""
    rng = rng_for("corpus-op11")
    return make_model(
        [H("Constant", [], ["k"], name="k", value=init("kv", rng.standard_normal((1, 4)).astype(np.float32))),
         H("Add", ["x", "k"], ["a"], name="add"),
         H("LeakyRelu", ["a"], ["lr"], name="lrelu", alpha=0.2),
         H("Gemm", ["lr", "w", "c"], ["g"], name="gemm", transA=0, transB=1, alpha=0.5, beta=2.0),
         H("Softmax", ["g"], ["sm"], name="sm", axis=1),
         H("ReduceSum", ["sm"], ["rs"], name="rsum", axes=[1], keepdims=1),
         H("Transpose", ["g"], ["t"], name="tr", perm=[1, 0]),
         H("Flatten", ["t"], ["f"], name="fl", axis=0),
         H("ReduceMean", ["g"], ["rm"], name="rmean", axes=[0, 1], keepdims=0),
         H("Concat", ["sm", "rs"], ["y"], name="cat", axis=-1),
         H("Clip", ["y", "lo", ""], ["z"], name="clip")],
        [vi("x", ["N", 4])], [vi("z", None), vi("f", None), vi("rm", None)],
        [init("w", rng.standard_normal((5, 4)).astype(np.float32)), init("c", np.zeros(5, np.float32)),
         init("lo", np.array(0.01, np.float32))],
        opset=11)


def base_tiny():
    return make_model([H("Sigmoid", ["x"], ["y"], name="s")], [vi("x", ["N", 3])], [vi("y", None)], opset=13)


# --------------------------------------------------------------------------- #
# Deliberately invalid models (expected load statuses)
# --------------------------------------------------------------------------- #

def _raw(nodes, inputs, outputs, inits=(), opset=17):
    g = helper.make_graph(nodes, "g", inputs, outputs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def _tensor(name, dtype, dims, raw=None):
    t = TensorProto()
    t.name, t.data_type = name, dtype
    t.dims.extend(dims)
    if raw is not None:
        t.raw_data = raw
    return t


def _add_w(t, xshape=("N", 3)):
    return _raw([H("Add", ["x", t.name], ["y"], name="add")], [vi("x", list(xshape))], [vi("y", None)], [t])


INVALID = {
    # name: (model, accepted statuses)
    "dtype_float64_input": (_raw([H("Relu", ["x"], ["y"], name="r")], [vi("x", ["N", 3], TensorProto.DOUBLE)],
                                 [vi("y", None, TensorProto.DOUBLE)]), {4, 5}),
    "dtype_float16_input": (_raw([H("Relu", ["x"], ["y"], name="r")], [vi("x", ["N", 3], TensorProto.FLOAT16)],
                                 [vi("y", None, TensorProto.FLOAT16)]), {4, 5}),
    "dtype_int32_initializer": (_add_w(numpy_helper.from_array(np.ones(3, np.int32), "w")), {4, 5}),
    "dtype_float64_initializer": (_add_w(numpy_helper.from_array(np.ones(3, np.float64), "w")), {4, 5}),
    "dtype_int64_initializer_in_add": (_add_w(numpy_helper.from_array(np.ones(3, np.int64), "w")), {4, 5}),
    "dtype_string_initializer": (_add_w(helper.make_tensor("w", TensorProto.STRING, [1], [b"abc"])), {4, 5}),
    "dtype_undefined": (_add_w(_tensor("w", 0, [3], b"\0" * 12)), {4, 5}),
    "dtype_out_of_enum": (_add_w(_tensor("w", 999, [3], b"\0" * 12)), {3, 4, 5}),
    "huge_dims_2p40_squared": (_add_w(_tensor("w", TensorProto.FLOAT, [1 << 40, 1 << 40])), {4, 8}),
    "huge_dims_2p31_squared": (_add_w(_tensor("w", TensorProto.FLOAT, [1 << 31, 1 << 31], b"")), {4, 8}),
    "huge_dims_int64max": (_add_w(_tensor("w", TensorProto.FLOAT, [2**63 - 1], b"")), {4, 8}),
    "huge_dims_many": (_add_w(_tensor("w", TensorProto.FLOAT, [1 << 16] * 8, b"\0" * 4)), {4, 8}),
    "huge_dims_shape_tensor": (_raw([H("Reshape", ["x", "s"], ["y"], name="rs")], [vi("x", [2, 3])], [vi("y", None)],
                                    [_tensor("s", TensorProto.INT64, [1 << 40], b"\0" * 16)]), {4, 8}),
    "cycle_two_nodes": (_raw([H("Add", ["x", "d"], ["c"], name="a"), H("Relu", ["c"], ["d"], name="b"),
                              H("Tanh", ["c"], ["y"], name="t")], [vi("x", ["N", 3])], [vi("y", None)]), {4}),
    "cycle_self_loop": (_raw([H("Add", ["x", "c"], ["c"], name="self"), H("Tanh", ["c"], ["y"], name="t")],
                             [vi("x", ["N", 3])], [vi("y", None)]), {4}),
    "cycle_three_nodes": (_raw([H("Relu", ["e"], ["c"], name="n1"), H("Tanh", ["c"], ["d"], name="n2"),
                                H("Add", ["d", "x"], ["e"], name="n3"), H("Relu", ["e"], ["y"], name="n4")],
                               [vi("x", ["N", 3])], [vi("y", None)]), {4}),
    "cycle_output_feeds_itself": (_raw([H("Relu", ["y"], ["y"], name="loop")], [vi("x", ["N", 3])],
                                       [vi("y", None)]), {4}),
}

GARBAGE_SIZES = [1, 2, 3, 7, 16, 64, 255, 1024, 4096]

SUPPORTED_OPS = ["Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Relu", "LeakyRelu", "Tanh", "Sigmoid", "Softmax",
                 "LogSoftmax", "Exp", "Log", "Sqrt", "Clip", "Concat", "Reshape", "Flatten", "Transpose",
                 "Identity", "Constant", "ReduceSum", "ReduceMean", "LayerNormalization"]
INT_EXTREMES = [-(2**62), -100, -4, -1, 0, 1, 3, 8, 100, 2**62]
FLOAT_EXTREMES = [float("nan"), float("inf"), -float("inf"), -1.0, 0.0, 1e30]
INTS_EXTREMES = [[], [0, 0, 0], [2, 1, 0, 3], [5, 1, 0], [-1, -2, -3], [2**40], [0] * 9, [1, 0]]


def structural_mutants(model):
    """Well-formed protobufs with wrong graph content: every node's op swapped
    for every supported op (wrong arity/attributes for it), every attribute set
    to extreme values, inputs dropped or added, initializer dims permuted."""
    out = []
    for ni, node in enumerate(model.graph.node):
        for op in SUPPORTED_OPS:
            if op != node.op_type:
                m = type(model)()
                m.CopyFrom(model)
                m.graph.node[ni].op_type = op
                out.append((f"opswap_{ni}_{op}", m))
        for ai, attr in enumerate(node.attribute):
            if attr.type == attr.INT:
                values = [("i", v) for v in INT_EXTREMES]
            elif attr.type == attr.FLOAT:
                values = [("f", v) for v in FLOAT_EXTREMES]
            elif attr.type == attr.INTS:
                values = [("ints", v) for v in INTS_EXTREMES]
            else:
                continue
            for vi_, (field, v) in enumerate(values):
                m = type(model)()
                m.CopyFrom(model)
                a = m.graph.node[ni].attribute[ai]
                if field == "ints":
                    del a.ints[:]
                    a.ints.extend(v)
                else:
                    setattr(a, field, v)
                out.append((f"attr_{ni}_{attr.name}_{vi_}", m))
            m = type(model)()
            m.CopyFrom(model)
            m.graph.node[ni].attribute[ai].type = attr.STRING  # right name, wrong type
            out.append((f"attrtype_{ni}_{attr.name}", m))
        m = type(model)()
        m.CopyFrom(model)
        if m.graph.node[ni].input:
            m.graph.node[ni].input.pop()
            out.append((f"dropin_{ni}", m))
        m = type(model)()
        m.CopyFrom(model)
        m.graph.node[ni].input.append(model.graph.input[0].name)
        out.append((f"extrain_{ni}", m))
        m = type(model)()
        m.CopyFrom(model)
        m.graph.node[ni].input.insert(0, "")
        out.append((f"emptyin_{ni}", m))
    for ti, t in enumerate(model.graph.initializer):
        if len(t.dims) >= 1:
            m = type(model)()
            m.CopyFrom(model)
            dims = list(t.dims)[::-1] + [1]
            del m.graph.initializer[ti].dims[:]
            m.graph.initializer[ti].dims.extend(dims)
            out.append((f"initdims_{ti}", m))
            m = type(model)()
            m.CopyFrom(model)
            m.graph.initializer[ti].dims[0] = 0
            out.append((f"initzero_{ti}", m))
    return out


# --------------------------------------------------------------------------- #
# Corpus generation and checker runs
# --------------------------------------------------------------------------- #

def build_corpus(root: Path):
    """Returns {path: (category, detail)}."""
    files = {}

    def put(name, data, category, detail=None):
        p = root / name
        p.write_bytes(data)
        files[str(p)] = (category, detail)

    bases = {"mlp": base_mlp().SerializeToString(), "mixed": base_mixed().SerializeToString(),
             "op11": base_opset11().SerializeToString(), "tiny": base_tiny().SerializeToString()}
    for bname, b in bases.items():
        put(f"base_{bname}.onnx", b, "base", bname)
    for bname in ("mlp", "mixed"):
        b = bases[bname]
        for n in range(len(b)):
            put(f"trunc_{bname}_{n:05d}.onnx", b[:n], "trunc", (bname, n))

    rng = np.random.default_rng(1234)
    names = sorted(bases)
    for i in range(2000):
        bname = names[int(rng.integers(len(names)))]
        b = bytearray(bases[bname])
        pos = int(rng.integers(len(b)))
        bit = int(rng.integers(8))
        b[pos] ^= 1 << bit
        put(f"flip_{i:04d}_{bname}_{pos}_{bit}.onnx", bytes(b), "flip", (bname, pos, bit))

    for bname, build in (("mlp", base_mlp), ("mixed", base_mixed), ("op11", base_opset11)):
        for mname, m in structural_mutants(build()):
            put(f"mutant_{bname}_{mname}.onnx", m.SerializeToString(), "mutant", (bname, mname))

    for name, (m, statuses) in INVALID.items():
        put(f"invalid_{name}.onnx", m.SerializeToString(), "invalid", statuses)

    put("zero_length.onnx", b"", "garbage", None)
    put("text.onnx", b"ir_version: 8\ngraph { node { op_type: 'Relu' } }\n", "garbage", None)
    put("all_ff.onnx", b"\xff" * 512, "garbage", None)
    grng = np.random.default_rng(99)
    for n in GARBAGE_SIZES:
        put(f"garbage_{n}.onnx", grng.integers(0, 256, n, dtype=np.uint8).tobytes(), "garbage", None)
    # A varint length that claims far more bytes than the file has.
    put("length_lies.onnx", b"\x3a\xff\xff\xff\xff\x0f" + b"\x00" * 10, "garbage", None)
    return files


def run_checker(paths):
    env = dict(os.environ)
    env["ASAN_OPTIONS"] = "detect_leaks=1:abort_on_error=0:exitcode=23"
    env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1"
    env.setdefault("KEEL_BLAS_THREADS", "1")
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    p = subprocess.run([CHECKER, "-"], input="\n".join(paths) + "\n", capture_output=True, text=True, errors="replace",
                       timeout=TIMEOUT_S, env=env)
    return p.returncode, p.stdout, p.stderr


def _first_report_line(err: str) -> str:
    for line in err.splitlines():
        if any(m in line for m in SANITIZER_MARKERS) or "runtime error" in line:
            return line.strip()
    return (err.strip().splitlines() or ["<no stderr>"])[-1]


@pytest.fixture(scope="module")
def corpus_results(tmp_path_factory):
    """Runs the checker over the corpus in batches. When a process dies (crash
    or sanitizer report), the file it was working on is recorded as crashed
    and the rest of the batch continues in a fresh process."""
    root = tmp_path_factory.mktemp("corpus")
    files = build_corpus(root)
    paths = sorted(files)
    records = {}
    crashes = {}        # path -> "exit N: first report line"
    for start in range(0, len(paths), BATCH):
        todo = paths[start:start + BATCH]
        while todo and len(crashes) < 50:
            rc, out, err = run_checker(todo)
            seen = []
            for line in out.splitlines():
                parts = line.split("\t", 3)
                assert len(parts) == 4, f"malformed checker line {line!r}"
                path, phase, status, msg = parts
                records.setdefault(path, {})[phase] = (status, msg)
                if phase == "load":
                    seen.append(path)
            report = [m for m in SANITIZER_MARKERS if m in err]
            if rc == 0 and not report:
                break
            # The culprit: a file that loaded but has no run line yet, else the next unseen one.
            idx = len(seen)
            if seen and records[seen[-1]]["load"][0] == "0" and "run" not in records[seen[-1]]:
                idx = len(seen) - 1
            if idx >= len(todo):
                crashes[todo[-1]] = f"exit {rc} after the last file: {_first_report_line(err)}"
                break
            crashes[todo[idx]] = f"exit {rc}: {_first_report_line(err)}"
            todo = todo[idx + 1:]
    return files, records, crashes


def _ok(records, crashes):
    """Records of files that did not crash the checker (crashes are reported once, by
    test_checker_exits_cleanly)."""
    return {p: r for p, r in records.items() if p not in crashes and "load" in r}


def _describe(files, crashes):
    return "\n".join(f"{Path(p).name} [{files[p][0]} {files[p][1]}]: {why}" for p, why in list(crashes.items())[:20])


def test_checker_exits_cleanly(corpus_results):
    files, _, crashes = corpus_results
    assert not crashes, (f"the sanitized checker crashed or reported on {len(crashes)} files:\n"
                         + _describe(files, crashes))


def test_every_file_has_a_load_line(corpus_results):
    files, records, crashes = corpus_results
    missing = [p for p in files if p not in crashes and "load" not in records.get(p, {})]
    assert not missing, f"{len(missing)} files without a load line, e.g. {missing[:5]}"
    no_run = [p for p, r in _ok(records, crashes).items() if r["load"][0] == "0" and "run" not in r]
    assert not no_run, f"loaded but not run: {no_run[:5]}"


def _category(files, records, crashes, category):
    ok = _ok(records, crashes)
    return [(p, detail, ok[p]) for p, (cat, detail) in files.items() if cat == category and p in ok]


def test_base_models_load_and_run(corpus_results):
    files, records, crashes = corpus_results
    bases = _category(files, records, crashes, "base")
    assert len(bases) == 4
    for p, name, r in bases:
        assert r["load"][0] == "0", f"base model {name}: {r['load']}"
        assert r["run"][0] == "0", f"base model {name}: {r['run']}"


def test_no_internal_errors(corpus_results):
    _, records, crashes = corpus_results
    internal = [(Path(p).name, ph, r) for p, rr in _ok(records, crashes).items() for ph, r in rr.items()
                if r[0] == "11"]
    assert not internal, f"INTERNAL status (a core bug) for {len(internal)} records, e.g. {internal[:3]}"


def test_truncated_files(corpus_results):
    files, records, crashes = corpus_results
    trunc = _category(files, records, crashes, "trunc")
    assert len(trunc) > 500
    loaded = 0
    problems = []
    for p, detail, r in trunc:
        if r["load"][0] == "0":
            loaded += 1
            if r.get("run", ("missing", ""))[0] != "0":
                problems.append(f"{detail}: loaded but run gave {r.get('run')}")
        elif r["load"][0] not in ("3", "4", "5"):
            problems.append(f"{detail}: load status {r['load']} (want PARSE/INVALID_MODEL/UNSUPPORTED)")
    assert not problems, f"{len(problems)} truncated files misbehaved:\n" + "\n".join(problems[:20])
    assert loaded < len(trunc) // 10  # almost no prefix of a model is a valid model


def test_deliberately_invalid_rejected(corpus_results):
    files, records, crashes = corpus_results
    invalid = _category(files, records, crashes, "invalid")
    assert len(invalid) == len(INVALID)
    problems = []
    for p, statuses, r in invalid:
        st = int(r["load"][0])
        if st not in statuses:
            problems.append(f"{Path(p).name}: load {r['load']}, want one of {sorted(statuses)}")
        elif not r["load"][1].strip():
            problems.append(f"{Path(p).name}: empty message")
    assert not problems, "\n".join(problems)


def test_garbage_rejected(corpus_results):
    files, records, crashes = corpus_results
    garbage = _category(files, records, crashes, "garbage")
    assert len(garbage) == len(GARBAGE_SIZES) + 4
    problems = [f"{Path(p).name}: {r['load']}" for p, _, r in garbage if r["load"][0] not in ("3", "4")]
    assert not problems, "garbage/zero-length files not rejected as PARSE/INVALID_MODEL:\n" + "\n".join(problems)


def test_structural_mutants(corpus_results):
    files, records, crashes = corpus_results
    mutants = _category(files, records, crashes, "mutant")
    assert len(mutants) > 500
    problems = []
    for p, _, r in mutants:
        load = r["load"]
        if int(load[0]) not in range(0, 9) or (load[0] != "0" and not load[1].strip()):
            problems.append(f"{Path(p).name}: load {load}")
        if load[0] == "0" and r["run"][0] not in ("0", "6", "7", "8", "skipped"):
            problems.append(f"{Path(p).name}: run {r['run']}")
    assert not problems, f"{len(problems)} mutated models misbehaved:\n" + "\n".join(problems[:20])


def test_bit_flips(corpus_results):
    files, records, crashes = corpus_results
    flips = _category(files, records, crashes, "flip")
    assert len(flips) + sum(files[p][0] == "flip" for p in crashes) == 2000
    problems = []
    for p, _, r in flips:
        load_st = int(r["load"][0])
        if load_st not in range(0, 9):
            problems.append(f"{Path(p).name}: load {r['load']}")
        if load_st == 0 and r["run"][0] not in ("0", "6", "7", "8", "skipped"):
            problems.append(f"{Path(p).name}: run {r['run']}")
    assert not problems, f"{len(problems)} bit-flipped files misbehaved:\n" + "\n".join(problems[:20])
