"""Minimal ctypes binding of the Keel C core (Sources/CKeelCore/include/keel.h).

Used by the Python conformance tests and by benchmarks/bench_core_vs_ort.py.
The shared library is taken from the environment variable KEEL_LIB, default
``build/libkeelcore.so`` (relative to the repository root).

    with Model.load("model.onnx") as m, Session(m) as s:
        (y,) = s.run([x])                 # outputs are copied out of session memory

    fast = s.bind([x])                    # preallocated keel_tensor structs
    fast.run()                            # one ctypes call, nothing allocated
    fast.copy_outputs_into([y_buf])       # memmove into caller arrays

    fast = s.bind([x], outputs=[y_buf])   # keel_session_bind: the core writes y_buf
    fast.run()                            # keel_session_run_bound: one two-argument call

Handles are freed deterministically by close(), by the context manager, or at
the latest by __del__. A Session keeps a reference to its Model so the model
always outlives its sessions, as keel.h requires.
"""
from __future__ import annotations

import ctypes
import os
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

MAX_RANK = 8
ERROR_MESSAGE_SIZE = 512

OK = 0
ERR_INVALID_ARGUMENT = 1
ERR_IO = 2
ERR_PARSE = 3
ERR_INVALID_MODEL = 4
ERR_UNSUPPORTED = 5
ERR_SHAPE = 6
ERR_OUT_OF_MEMORY = 7
ERR_LIMIT = 8
ERR_VERSION = 9
ERR_PLUGIN = 10
ERR_INTERNAL = 11

STATUS_NAMES = {
    0: "OK", 1: "INVALID_ARGUMENT", 2: "IO", 3: "PARSE", 4: "INVALID_MODEL",
    5: "UNSUPPORTED", 6: "SHAPE", 7: "OUT_OF_MEMORY", 8: "LIMIT", 9: "VERSION",
    10: "PLUGIN", 11: "INTERNAL",
}

DTYPE_FLOAT32 = 1
DTYPE_INT64 = 7


class _Error(ctypes.Structure):
    _fields_ = [("status", ctypes.c_int), ("message", ctypes.c_char * ERROR_MESSAGE_SIZE)]


class _TensorInfo(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("elem_type", ctypes.c_int32),
        ("rank", ctypes.c_uint32),
        ("dims", ctypes.c_int64 * MAX_RANK),
        ("dim_params", ctypes.c_char_p * MAX_RANK),
    ]


class _Tensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("rank", ctypes.c_uint32),
        ("shape", ctypes.c_int64 * MAX_RANK),
    ]


class KeelError(Exception):
    """A failing keel_* call: .status (int, keel_status) and .message (str)."""

    def __init__(self, status: int, message: str, where: str = ""):
        self.status = int(status)
        self.message = message
        self.where = where
        name = STATUS_NAMES.get(self.status, "?")
        super().__init__(f"{where + ': ' if where else ''}[{self.status} {name}] {message}")


def _default_lib_path() -> str:
    env = os.environ.get("KEEL_LIB")
    if env:
        return env
    root = Path(__file__).resolve().parents[2]
    return str(root / "build" / "libkeelcore.so")


_lib = None


def lib() -> ctypes.CDLL:
    """Load (once) and return the core library with its prototypes declared."""
    global _lib
    if _lib is not None:
        return _lib
    path = _default_lib_path()
    if not os.path.exists(path):
        raise FileNotFoundError(f"Keel core library not found at {path} (build it with `make lib` or set KEEL_LIB)")
    L = ctypes.CDLL(path)
    P = ctypes.POINTER
    vp = ctypes.c_void_p
    sz = ctypes.c_size_t
    st = ctypes.c_int
    E = P(_Error)

    def proto(name, restype, *argtypes):
        f = getattr(L, name)
        f.restype = restype
        f.argtypes = list(argtypes)

    proto("keel_version_string", ctypes.c_char_p)
    proto("keel_blas_set_threads", st, ctypes.c_int, E)
    proto("keel_blas_threads", ctypes.c_int)
    proto("keel_backend_builtin", vp)
    proto("keel_status_name", ctypes.c_char_p, st)
    proto("keel_model_load_file", st, vp, ctypes.c_char_p, P(vp), E)
    proto("keel_model_load_bytes", st, vp, ctypes.c_char_p, sz, ctypes.c_char_p, P(vp), E)
    proto("keel_model_free", None, vp)
    proto("keel_model_sha256", ctypes.c_char_p, vp)
    proto("keel_model_input_count", sz, vp)
    proto("keel_model_output_count", sz, vp)
    proto("keel_model_input_info", st, vp, sz, P(_TensorInfo), E)
    proto("keel_model_output_info", st, vp, sz, P(_TensorInfo), E)
    proto("keel_model_metadata_count", sz, vp)
    proto("keel_model_metadata_entry", st, vp, sz, P(ctypes.c_char_p), P(ctypes.c_char_p), E)
    proto("keel_model_metadata_lookup", ctypes.c_char_p, vp, ctypes.c_char_p)
    proto("keel_model_property_count", sz, vp)
    proto("keel_model_property_entry", st, vp, sz, P(ctypes.c_char_p), P(ctypes.c_char_p), E)
    proto("keel_model_property_lookup", ctypes.c_char_p, vp, ctypes.c_char_p)
    proto("keel_model_node_count", sz, vp)
    proto("keel_model_node_info", st, vp, sz, P(ctypes.c_char_p), P(ctypes.c_char_p), E)
    proto("keel_model_parameter_count", ctypes.c_uint64, vp)
    proto("keel_session_create", st, vp, P(vp), E)
    proto("keel_session_free", None, vp)
    proto("keel_session_run", st, vp, P(_Tensor), sz, P(_Tensor), sz, E)
    proto("keel_session_bind", st, vp, P(_Tensor), sz, P(_Tensor), sz, E)
    proto("keel_session_run_bound", st, vp, E)
    proto("keel_session_set_memory_limit", st, vp, ctypes.c_uint64, E)
    proto("keel_sha256", None, ctypes.c_char_p, sz, ctypes.c_char * 32)
    _lib = L
    return L


_RUN_PROTO = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p,
                              ctypes.c_size_t, ctypes.c_void_p)
_run_fn = None
_RUN_BOUND_PROTO = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
_run_bound_fn = None


def _run_noconv():
    """keel_session_run through a CFUNCTYPE prototype (for pre-converted arguments)."""
    global _run_fn
    if _run_fn is None:
        _run_fn = _RUN_PROTO(ctypes.cast(lib().keel_session_run, ctypes.c_void_p).value)
    return _run_fn


def _run_bound_noconv():
    """keel_session_run_bound through a CFUNCTYPE prototype (for pre-converted arguments)."""
    global _run_bound_fn
    if _run_bound_fn is None:
        _run_bound_fn = _RUN_BOUND_PROTO(ctypes.cast(lib().keel_session_run_bound, ctypes.c_void_p).value)
    return _run_bound_fn


def _check(status: int, err: _Error, where: str) -> None:
    if status != OK:
        raise KeelError(status, err.message.decode("utf-8", "replace"), where)


def _s(b: bytes | None) -> str | None:
    return None if b is None else b.decode("utf-8", "replace")


def version() -> str:
    return lib().keel_version_string().decode()


def set_blas_threads(n: int) -> None:
    err = _Error()
    _check(lib().keel_blas_set_threads(n, ctypes.byref(err)), err, "keel_blas_set_threads")


def blas_threads() -> int:
    return lib().keel_blas_threads()


def sha256(data: bytes) -> str:
    out = (ctypes.c_char * 32)()
    lib().keel_sha256(data, len(data), out)
    return bytes(out).hex()


@dataclass(frozen=True)
class TensorInfo:
    name: str
    elem_type: int
    dims: tuple            # -1 where dynamic
    dim_params: tuple      # symbolic name or None, per dim


def _info(raw: _TensorInfo) -> TensorInfo:
    r = raw.rank
    return TensorInfo(
        name=_s(raw.name),
        elem_type=raw.elem_type,
        dims=tuple(int(raw.dims[i]) for i in range(r)),
        dim_params=tuple(_s(raw.dim_params[i]) for i in range(r)),
    )


class Model:
    """A loaded keel_model. Use Model.load(path) or Model.from_bytes(b)."""

    def __init__(self, handle: int):
        self._h = ctypes.c_void_p(handle)
        self._sessions = weakref.WeakSet()
        self._open_sessions = 0      # strong count: survives the GC clearing weak references
        self._free_when_idle = False
        L = lib()
        h = self._h
        self.sha256 = _s(L.keel_model_sha256(h))
        self.inputs = [self._tinfo(L.keel_model_input_info, i) for i in range(L.keel_model_input_count(h))]
        self.outputs = [self._tinfo(L.keel_model_output_info, i) for i in range(L.keel_model_output_count(h))]
        self.metadata = {}
        self.metadata_items = []
        for i in range(L.keel_model_metadata_count(h)):
            k, v, err = ctypes.c_char_p(), ctypes.c_char_p(), _Error()
            _check(L.keel_model_metadata_entry(h, i, ctypes.byref(k), ctypes.byref(v), ctypes.byref(err)), err,
                   "keel_model_metadata_entry")
            self.metadata_items.append((_s(k.value), _s(v.value)))
            self.metadata[_s(k.value)] = _s(v.value)
        self.properties = {}
        for i in range(L.keel_model_property_count(h)):
            k, v, err = ctypes.c_char_p(), ctypes.c_char_p(), _Error()
            _check(L.keel_model_property_entry(h, i, ctypes.byref(k), ctypes.byref(v), ctypes.byref(err)), err,
                   "keel_model_property_entry")
            self.properties[_s(k.value)] = _s(v.value)
        self.nodes = []
        for i in range(L.keel_model_node_count(h)):
            n, o, err = ctypes.c_char_p(), ctypes.c_char_p(), _Error()
            _check(L.keel_model_node_info(h, i, ctypes.byref(n), ctypes.byref(o), ctypes.byref(err)), err,
                   "keel_model_node_info")
            self.nodes.append((_s(n.value), _s(o.value)))
        self.parameter_count = int(L.keel_model_parameter_count(h))

    def _tinfo(self, fn, i):
        raw, err = _TensorInfo(), _Error()
        _check(fn(self._h, i, ctypes.byref(raw), ctypes.byref(err)), err, fn.__name__)
        return _info(raw)

    @classmethod
    def load(cls, path) -> "Model":
        h, err = ctypes.c_void_p(), _Error()
        st = lib().keel_model_load_file(None, os.fsencode(str(path)), ctypes.byref(h), ctypes.byref(err))
        _check(st, err, f"load {path}")
        return cls(h.value)

    @classmethod
    def from_bytes(cls, data: bytes, source_name: str | None = None) -> "Model":
        h, err = ctypes.c_void_p(), _Error()
        data = bytes(data)
        name = None if source_name is None else source_name.encode()
        st = lib().keel_model_load_bytes(None, data if data else None, len(data), name, ctypes.byref(h),
                                         ctypes.byref(err))
        _check(st, err, f"load_bytes {source_name or '<bytes>'}")
        return cls(h.value)

    def metadata_lookup(self, key: str) -> str | None:
        self._alive()
        return _s(lib().keel_model_metadata_lookup(self._h, key.encode()))

    def _alive(self):
        if not self._h:
            raise ValueError("model is closed")

    @property
    def handle(self) -> ctypes.c_void_p:
        self._alive()
        return self._h

    def close(self) -> None:
        """Free the model, after closing any session still open on it (keel.h:
        every session must be freed before its model). When the garbage
        collector finalizes a model before its sessions (objects in a cycle),
        the free is deferred until the last session is closed."""
        if getattr(self, "_h", None):
            for s in list(self._sessions):
                s.close()
            if self._open_sessions > 0:
                self._free_when_idle = True
                return
            lib().keel_model_free(self._h)
            self._h = ctypes.c_void_p()

    def _session_closed(self) -> None:
        self._open_sessions -= 1
        if self._free_when_idle and self._open_sessions == 0:
            self._free_when_idle = False
            self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def _fill_tensor(t: _Tensor, a: np.ndarray) -> None:
    if a.ndim > MAX_RANK:
        raise ValueError(f"rank {a.ndim} > {MAX_RANK}")
    t.data = a.ctypes.data
    t.rank = a.ndim
    for i, d in enumerate(a.shape):
        t.shape[i] = d


def _as_input(a) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype != np.float32 or not a.flags.c_contiguous:
        raise TypeError(f"inputs must be C-contiguous float32 arrays, got {a.dtype} "
                        f"(c_contiguous={a.flags.c_contiguous})")
    return a


def _view_output(t: _Tensor) -> np.ndarray:
    shape = tuple(int(t.shape[i]) for i in range(t.rank))
    n = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if n == 0:
        return np.zeros(shape, dtype=np.float32)
    if not t.data:
        raise KeelError(ERR_INTERNAL, "output tensor has NULL data", "keel_session_run")
    buf = (ctypes.c_float * n).from_address(t.data)
    return np.frombuffer(buf, dtype=np.float32).reshape(shape)


class Session:
    """A keel_session for a Model (the Model is kept alive by the session)."""

    def __init__(self, model: Model):
        self.model = model
        h, err = ctypes.c_void_p(), _Error()
        _check(lib().keel_session_create(model.handle, ctypes.byref(h), ctypes.byref(err)), err,
               "keel_session_create")
        self._h = h
        self.n_outputs = len(model.outputs)
        self._bound = weakref.WeakSet()
        model._sessions.add(self)
        model._open_sessions += 1

    def run(self, inputs: Sequence[np.ndarray]) -> list:
        """Run once; raises KeelError on failure. Returns copies of the outputs."""
        arrs = [_as_input(a) for a in inputs]
        return self.run_raw(arrs, len(arrs))

    def run_raw(self, arrays: Sequence[np.ndarray], n_inputs: int, n_outputs: int | None = None) -> list:
        """Like run, but lets tests pass a deliberately wrong n_inputs/n_outputs."""
        if not self._h:
            raise ValueError("session is closed")
        n_out = self.n_outputs if n_outputs is None else n_outputs
        tin = (_Tensor * max(len(arrays), 1))()
        for i, a in enumerate(arrays):
            _fill_tensor(tin[i], a)
        tout = (_Tensor * max(n_out, 1))()
        err = _Error()
        st = lib().keel_session_run(self._h, tin, n_inputs, tout, n_out, ctypes.byref(err))
        _check(st, err, "keel_session_run")
        return [_view_output(tout[i]).copy() for i in range(n_out)]

    def bind(self, inputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray] | None = None) -> "BoundRun":
        """A fast path for repeated runs. With outputs (preallocated float32
        arrays of the output shapes), the core binds them (keel_session_bind)
        and every run() writes them directly (keel_session_run_bound)."""
        if not self._h:
            raise ValueError("session is closed")
        b = BoundRun(self, inputs, outputs)
        self._bound.add(b)
        return b

    def set_memory_limit(self, nbytes: int) -> None:
        err = _Error()
        _check(lib().keel_session_set_memory_limit(self._h, nbytes, ctypes.byref(err)), err,
               "keel_session_set_memory_limit")

    def close(self) -> None:
        if getattr(self, "_h", None):
            for b in list(self._bound):
                b._invalidate()
            lib().keel_session_free(self._h)
            self._h = ctypes.c_void_p()
            self.model._session_closed()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class BoundRun:
    """Fast path: keel_tensor input/output arrays and the error struct are built
    once; run() is a single ctypes call. The input arrays are referenced (not
    copied): write new values into them in place between runs. With outputs,
    the session itself is bound (keel_session_bind) and run() fills them."""

    def __init__(self, session: Session, inputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray] | None = None):
        self.session = session
        self.inputs = [_as_input(a) for a in inputs]  # keeps the memory alive
        self._tin = (_Tensor * max(len(self.inputs), 1))()
        for i, a in enumerate(self.inputs):
            _fill_tensor(self._tin[i], a)
        self._n_out = session.n_outputs
        self._tout = (_Tensor * max(self._n_out, 1))()
        self._err = _Error()
        vp, sz = ctypes.c_void_p, ctypes.c_size_t
        self.outputs = None
        if outputs is not None:
            self.outputs = list(outputs)
            for i, a in enumerate(self.outputs):
                if a.dtype != np.float32 or not a.flags["C_CONTIGUOUS"] or not a.flags["WRITEABLE"]:
                    raise ValueError(f"bound output {i} must be a writable C-contiguous float32 array")
                _fill_tensor(self._tout[i], a)
            _check(lib().keel_session_bind(session._h, self._tin, len(self.inputs), self._tout, len(self.outputs),
                                           ctypes.byref(self._err)), self._err, "keel_session_bind")
            self._fn = _run_bound_noconv()
            self._args = (vp(session._h.value), vp(ctypes.addressof(self._err)))
            self._where = "keel_session_run_bound"
        else:
            # A prototype without per-call argument conversion, and arguments
            # converted once: the call is the only work left per run.
            self._fn = _run_noconv()
            self._args = (vp(session._h.value), vp(ctypes.addressof(self._tin)), sz(len(self.inputs)),
                          vp(ctypes.addressof(self._tout)), sz(self._n_out), vp(ctypes.addressof(self._err)))
            self._where = "keel_session_run"
        self._memmove = ctypes.memmove

    def _invalidate(self) -> None:
        def closed(*_):
            raise ValueError("session is closed")
        self._fn = closed
        self._args = ()

    def run(self) -> None:
        st = self._fn(*self._args)
        if st:
            _check(st, self._err, self._where)

    def outputs_view(self) -> list:
        """Zero-copy views of the outputs (valid until the next run)."""
        if self.outputs is not None:
            return self.outputs
        return [_view_output(self._tout[i]) for i in range(self._n_out)]

    def copy_outputs_into(self, dst: Sequence[np.ndarray]) -> None:
        """memmove each output into a preallocated float32 array of the same size."""
        for i, d in enumerate(dst):
            self._memmove(d.ctypes.data, self._tout[i].data, d.nbytes)

    def run_into(self, dst_ptrs: Sequence[tuple]) -> None:
        """run() then memmove outputs to (address, nbytes) pairs; the cheapest
        complete call (no per-call Python object beyond the ctypes calls)."""
        st = self._fn(*self._args)
        if st:
            _check(st, self._err, "keel_session_run")
        tout = self._tout
        mm = self._memmove
        for i, (addr, nbytes) in enumerate(dst_ptrs):
            mm(addr, tout[i].data, nbytes)
