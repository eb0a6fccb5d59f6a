"""A small client of Keel's framed TCP protocol (docs/PROTOCOL.md), version 1.

Dependencies: the standard library and the generated protobuf modules in
``keel_pb`` (``protobuf`` from PyPI). Put this directory on ``sys.path``::

    from keel_framed import KeelFramedClient, KeelRpcError, rebalance_request
    from keel_pb import service_pb2

    with KeelFramedClient("127.0.0.1", 50052) as client:
        models = client.call("ListModels", service_pb2.ListModelsRequest())
        request = rebalance_request(["AAA", "BBB", "CCC"], request_id="r-1")
        try:
            reply = client.call("Rebalance", request, timeout_s=0.5)
            print(reply.status, reply.decision_id, reply.audit_record_hash)
        except KeelRpcError as e:
            print(e.code, e.name, e.message)

``call`` sends one request and waits for its answer. For pipelining, ``send``
several requests and collect the answers with ``recv_any`` (they come back in
any order; match them by request id). A client object is not thread-safe: use
one per thread.

Run ``python keel_framed.py --help`` for a command-line demo.
"""
from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass
from typing import Optional, Union

PROTOCOL_VERSION = 1
KIND_REQUEST, KIND_RESPONSE, KIND_ERROR = 1, 2, 3
HEADER = struct.Struct(">IBBHQI")  # length, version, kind, method, request_id, timeout_us
HEADER_SIZE = HEADER.size  # 20
LENGTH_COUNTED = 16  # header bytes counted by `length`
DEFAULT_DEADLINE_S = 1.0  # the server's default deadline (timeout_us = 0)
TIMEOUT_GRACE_S = 0.25  # how much longer than the deadline the client waits itself
MAX_PAYLOAD = 64 * 1024 * 1024

# id: (full gRPC name, request message, response message); messages are
# (module, class) in keel_pb. See the method table of docs/PROTOCOL.md.
METHODS = {
    1: ("keel.v1.Rebalancer/Rebalance", ("service_pb2", "RebalanceRequest"), ("service_pb2", "RebalanceResponse")),
    2: ("keel.v1.Rebalancer/HarvestTaxLosses", ("service_pb2", "HarvestTaxLossesRequest"), ("service_pb2", "HarvestTaxLossesResponse")),
    3: ("keel.v1.Rebalancer/ForecastLiquidity", ("service_pb2", "ForecastLiquidityRequest"), ("service_pb2", "ForecastLiquidityResponse")),
    4: ("keel.v1.Rebalancer/PublishMarketData", ("service_pb2", "PriceUpdateBatch"), ("service_pb2", "PublishMarketDataResponse")),
    16: ("keel.v1.ModelAdmin/ListModels", ("service_pb2", "ListModelsRequest"), ("service_pb2", "ListModelsResponse")),
    17: ("keel.v1.ModelAdmin/LoadModel", ("service_pb2", "LoadModelRequest"), ("service_pb2", "LoadModelResponse")),
    18: ("keel.v1.ModelAdmin/UnloadModel", ("service_pb2", "UnloadModelRequest"), ("service_pb2", "UnloadModelResponse")),
    32: ("keel.v1.Approvals/ListPending", ("service_pb2", "ListPendingRequest"), ("service_pb2", "ListPendingResponse")),
    33: ("keel.v1.Approvals/Decide", ("service_pb2", "DecideRequest"), ("service_pb2", "DecideResponse")),
    48: ("grpc.health.v1.Health/Check", ("health_pb2", "HealthCheckRequest"), ("health_pb2", "HealthCheckResponse")),
}

STATUS_NAMES = {
    0: "OK", 1: "CANCELLED", 2: "UNKNOWN", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND", 6: "ALREADY_EXISTS", 7: "PERMISSION_DENIED", 8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION", 10: "ABORTED", 11: "OUT_OF_RANGE", 12: "UNIMPLEMENTED",
    13: "INTERNAL", 14: "UNAVAILABLE", 15: "DATA_LOSS", 16: "UNAUTHENTICATED",
}


class KeelRpcError(Exception):
    """A failed call: the server's status (error frame) or a transport failure
    (UNAVAILABLE: refused, reset, closed; DEADLINE_EXCEEDED: no answer in time)."""

    def __init__(self, code: int, message: str):
        super().__init__(f"{STATUS_NAMES.get(code, code)}: {message}")
        self.code = code
        self.message = message

    @property
    def name(self) -> str:
        return STATUS_NAMES.get(self.code, str(self.code))


@dataclass
class Frame:
    kind: int
    method: int
    request_id: int
    timeout_us: int
    payload: bytes
    version: int = PROTOCOL_VERSION

    def error(self) -> Optional[KeelRpcError]:
        """The status of an error frame, else None."""
        if self.kind != KIND_ERROR:
            return None
        from keel_pb import service_pb2
        status = service_pb2.ErrorStatus()
        try:
            status.ParseFromString(self.payload)
        except Exception:  # noqa: BLE001 - any decode failure
            return KeelRpcError(2, "error frame whose payload is not a keel.v1.ErrorStatus")
        return KeelRpcError(status.code, status.message)


def method_id(method: Union[int, str]) -> int:
    """A method id from an id, a full name (``keel.v1.Rebalancer/Rebalance``) or a bare name."""
    if isinstance(method, int):
        return method
    if method.isdigit():
        return int(method)
    for mid, (full, _, _) in METHODS.items():
        if method == full or method == full.rsplit("/", 1)[1]:
            return mid
    raise ValueError(f"unknown method {method!r}")


def message_type(method: Union[int, str], response: bool):
    """The request or response message class of a method."""
    import importlib
    mid = method_id(method)
    if mid not in METHODS:
        raise ValueError(f"unknown method id {mid}")
    module, cls = METHODS[mid][2 if response else 1]
    return getattr(importlib.import_module(f"keel_pb.{module}"), cls)


def encode_frame(kind: int, method: int, request_id: int, payload: bytes = b"", timeout_us: int = 0,
                 version: int = PROTOCOL_VERSION) -> bytes:
    """One frame: the 20-byte big-endian header, then the payload."""
    return HEADER.pack(LENGTH_COUNTED + len(payload), version, kind, method, request_id, timeout_us) + payload


def decode_header(header: bytes):
    """(length, version, kind, method, request_id, timeout_us) of a 20-byte header."""
    return HEADER.unpack(header)


def timeout_to_us(timeout_s: Optional[float]) -> int:
    """A frame's timeout_us: 0 (server default) for None, else clamped to 1 .. 2**32-1."""
    if timeout_s is None:
        return 0
    return max(1, min(int(round(timeout_s * 1e6)), 0xFFFFFFFF))


class KeelFramedClient:
    """One TCP connection to a Keel server's framed port. Not thread-safe."""

    def __init__(self, host: str = "127.0.0.1", port: int = 50052, connect_timeout_s: float = 3.0):
        self.host, self.port = host, port
        try:
            self._sock = socket.create_connection((host, port), timeout=connect_timeout_s)
        except OSError as e:
            raise KeelRpcError(14, f"cannot connect to {host}:{port}: {e}") from None
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._next_id = 1
        self._buffer = bytearray()
        self._stash: dict[int, Frame] = {}  # answers received while waiting for another

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        try:
            self._sock.close()
        except OSError:
            pass

    # -- pipelining --------------------------------------------------------

    def send(self, method: Union[int, str], request=b"", timeout_s: Optional[float] = None,
             request_id: Optional[int] = None) -> int:
        """Sends one request frame without waiting; returns its request id.
        `request` is a protobuf message or its serialized bytes."""
        if request_id is None:
            request_id = self._next_id
            self._next_id += 1
        payload = request if isinstance(request, (bytes, bytearray)) else request.SerializeToString()
        self.send_raw(encode_frame(KIND_REQUEST, method_id(method), request_id, bytes(payload), timeout_to_us(timeout_s)))
        return request_id

    def send_raw(self, data: bytes) -> None:
        """Writes bytes as they are (for tests of malformed streams)."""
        try:
            self._sock.sendall(data)
        except OSError as e:
            raise KeelRpcError(14, f"connection failed while sending: {e}") from None

    def recv_any(self, timeout_s: Optional[float] = 5.0) -> Frame:
        """The next answer of any request (stashed ones first). Raises KeelRpcError
        UNAVAILABLE when the connection closes, DEADLINE_EXCEEDED on timeout."""
        if self._stash:
            return self._stash.pop(next(iter(self._stash)))
        return self._read_frame(timeout_s)

    def _read_exact(self, n: int, deadline: Optional[float]) -> bytes:
        while len(self._buffer) < n:
            if deadline is None:
                self._sock.settimeout(None)
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise KeelRpcError(4, "no answer from the server in time")
                self._sock.settimeout(remaining)
            try:
                chunk = self._sock.recv(max(65536, n - len(self._buffer)))
            except socket.timeout:
                raise KeelRpcError(4, "no answer from the server in time") from None
            except OSError as e:
                raise KeelRpcError(14, f"connection failed: {e}") from None
            if not chunk:
                raise KeelRpcError(14, "the server closed the connection")
            self._buffer += chunk
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    def _read_frame(self, timeout_s: Optional[float]) -> Frame:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        length, version, kind, method, request_id, timeout_us = decode_header(self._read_exact(HEADER_SIZE, deadline))
        if length < LENGTH_COUNTED or version != PROTOCOL_VERSION or kind not in (KIND_RESPONSE, KIND_ERROR):
            self.close()
            raise KeelRpcError(14, f"malformed frame from the server (length {length}, version {version}, kind {kind})")
        if length - LENGTH_COUNTED > MAX_PAYLOAD:
            self.close()
            raise KeelRpcError(14, f"the server sent a {length - LENGTH_COUNTED}-byte payload, above {MAX_PAYLOAD}")
        payload = self._read_exact(length - LENGTH_COUNTED, deadline)
        return Frame(kind, method, request_id, timeout_us, payload, version)

    def recv_for(self, request_id: int, timeout_s: Optional[float]) -> Frame:
        """The answer to one request; answers to others are kept for recv_any."""
        if request_id in self._stash:
            return self._stash.pop(request_id)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            frame = self._read_frame(remaining)
            if frame.request_id == request_id:
                return frame
            self._stash[frame.request_id] = frame

    # -- unary calls -------------------------------------------------------

    def call(self, method: Union[int, str], request_message=None, response_type=None,
             timeout_s: Optional[float] = None):
        """Sends one request and returns the parsed response (`response_type`, by
        default the method's response message). Raises KeelRpcError with the
        server's code and message on an error frame."""
        mid = method_id(method)
        if request_message is None:
            request_message = message_type(mid, response=False)()
        if response_type is None:
            response_type = message_type(mid, response=True)
        request_id = self.send(mid, request_message, timeout_s)
        wait = (DEFAULT_DEADLINE_S if timeout_s is None else timeout_s) + TIMEOUT_GRACE_S
        frame = self.recv_for(request_id, wait)
        err = frame.error()
        if err is not None:
            raise err
        response = response_type()
        response.ParseFromString(frame.payload)
        return response


SECTORS = ("technology", "financials", "healthcare", "energy", "utilities")
HISTORY_END_UNIX_NANOS = 1_795_000_000_000_000_000  # 2026-11-18T11:06:40Z: the last day of generated histories
NANOS_PER_DAY = 86_400 * 1_000_000_000


def price_history(instrument_id: str, price: float, days: int, seed: int = 0,
                  end_unix_nanos: int = HISTORY_END_UNIX_NANOS):
    """`days` daily PricePoints of one instrument, oldest first, ending at `price`
    on `end_unix_nanos`: a random walk (daily volatility 0.5 % to 2.5 %) walked
    backwards from `price`. Deterministic: the same arguments give the same points."""
    import random
    from keel_pb import portfolio_pb2
    rng = random.Random(f"{seed}:{instrument_id}")
    daily = 0.005 + 0.02 * rng.random()
    prices = [float(price)] * max(1, days)
    for k in range(len(prices) - 2, -1, -1):
        prices[k] = max(0.01, round(prices[k + 1] / (1.0 + daily * rng.gauss(0.0, 1.0)), 4))
    return [portfolio_pb2.PricePoint(time_unix_nanos=end_unix_nanos - (len(prices) - 1 - k) * NANOS_PER_DAY, price=p)
            for k, p in enumerate(prices)]


def rebalance_request(instrument_ids, *, request_id: str = "", model: str = "", account_id: str = "acct-1",
                      history_days: int = 60, seed: int = 0, value: float = 100_000.0, drift: float = 0.2,
                      holdings=None, cash=None, risk_tolerance: int = 4, max_instrument_weight: float = 0.0,
                      max_turnover: float = 0.0, cash_weight: float = 0.05, first_rebalance: bool = False):
    """A realistic RebalanceRequest, deterministic in its arguments.

    Instruments: the k-th id gets price 20 + 10·(k mod 9), a sector from SECTORS,
    an asset class (every fourth is fixed income, the others equity), an ESG
    score in 40..89, lot size 1 and, when `history_days` > 0, that many daily
    prices (``price_history``; 0 leaves the history to the server's market
    state, fed by PublishMarketData).

    Mandate: equal strategic weights summing to 1 - `cash_weight`, minimum cash
    2 %, costs of 2 bp (at least 1.00) per order, and the optional
    `max_instrument_weight` and `max_turnover` caps (0 = none).

    Portfolio of about `value`: by default each instrument is held at its
    strategic weight off by ±`drift` (relative; alternately over and under,
    whole units), the rest in cash. `holdings` ({id: quantity}) and `cash`
    replace either part. `first_rebalance` marks the account's first decision.

    Risk profile: `risk_tolerance` (SRI 1..7; other values are sent as they
    are, for tests of the server's validation), balanced, 10 years."""
    import zlib
    from keel_pb import portfolio_pb2, service_pb2
    ids = list(instrument_ids)
    prices = [20.0 + 10.0 * (k % 9) for k in range(len(ids))]
    weight = (1.0 - cash_weight) / len(ids) if ids else 0.0
    if holdings is None:
        holdings = {iid: float(round(weight * value / prices[k] * (1.0 + drift * (1 if k % 2 == 0 else -1))))
                    for k, iid in enumerate(ids)}
    if cash is None:
        price_of = dict(zip(ids, prices))
        cash = max(0.0, value - sum(q * price_of.get(iid, 0.0) for iid, q in holdings.items()))
    instruments = [
        portfolio_pb2.Instrument(
            id=iid, price=prices[k], sector=SECTORS[k % len(SECTORS)],
            asset_class=(portfolio_pb2.ASSET_CLASS_FIXED_INCOME if k % 4 == 3 else portfolio_pb2.ASSET_CLASS_EQUITY),
            esg_score=float(40 + zlib.crc32(iid.encode()) % 50), lot_size=1.0,
            required_knowledge=portfolio_pb2.KNOWLEDGE_LEVEL_BASIC,
            price_history=price_history(iid, prices[k], history_days, seed) if history_days > 0 else [])
        for k, iid in enumerate(ids)]
    return service_pb2.RebalanceRequest(
        request_id=request_id, model=model,
        portfolio=portfolio_pb2.Portfolio(
            account_id=account_id, cash=float(cash), base_currency="EUR", first_rebalance=first_rebalance,
            holdings=[portfolio_pb2.Holding(instrument_id=i, quantity=float(q)) for i, q in holdings.items()]),
        instruments=instruments,
        risk_profile=portfolio_pb2.RiskProfile(
            risk_tolerance=risk_tolerance, capacity_for_loss=portfolio_pb2.CAPACITY_FOR_LOSS_SIGNIFICANT,
            horizon_years=10, knowledge=portfolio_pb2.KNOWLEDGE_LEVEL_INFORMED,
            objectives=[portfolio_pb2.OBJECTIVE_BALANCED]),
        mandate=portfolio_pb2.Mandate(
            strategic_weights=[portfolio_pb2.Weight(id=i, weight=weight) for i in ids],
            max_instrument_weight=max_instrument_weight, max_turnover=max_turnover,
            min_cash_weight=0.02, commission_bps=2.0, commission_min=1.0))


def _main(argv=None) -> int:
    import argparse
    import os
    import sys
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from keel_pb import service_pb2  # noqa: F401 - fail early when protobuf is missing

    parser = argparse.ArgumentParser(description="Call a Keel server over the framed TCP protocol.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=50052)
    parser.add_argument("--timeout", type=float, default=None, help="deadline in seconds (default: the server's)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list-models", help="ListModels")
    sub.add_parser("health", help="grpc.health.v1.Health/Check")
    rb = sub.add_parser("rebalance", help="Rebalance a generated portfolio (see rebalance_request)")
    rb.add_argument("--assets", type=int, default=5)
    rb.add_argument("--history-days", type=int, default=60,
                    help="daily prices per instrument in the request (0: use the server's market state)")
    rb.add_argument("--account", default="demo-account")
    rb.add_argument("--risk-tolerance", type=int, default=4, help="SRI 1..7")
    rb.add_argument("--seed", type=int, default=1)
    rb.add_argument("--json", action="store_true", help="print the response as JSON")
    args = parser.parse_args(argv)

    try:
        with KeelFramedClient(args.host, args.port) as client:
            if args.command == "list-models":
                print(client.call("ListModels", timeout_s=args.timeout))
            elif args.command == "health":
                print(client.call("Check", timeout_s=args.timeout))
            else:
                request = rebalance_request(
                    [f"ASSET{i}" for i in range(args.assets)], request_id="demo-1", account_id=args.account,
                    history_days=args.history_days, seed=args.seed, risk_tolerance=args.risk_tolerance)
                start = time.perf_counter()
                response = client.call("Rebalance", request, timeout_s=args.timeout)
                elapsed_us = (time.perf_counter() - start) * 1e6
                if args.json:
                    from google.protobuf import json_format
                    print(json_format.MessageToJson(response))
                else:
                    print(response)
                print(f"round trip: {elapsed_us:.0f} us")
    except KeelRpcError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
