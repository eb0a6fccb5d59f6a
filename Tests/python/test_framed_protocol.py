"""The framed TCP protocol (docs/PROTOCOL.md) from Python: the reference client in
clients/python/keel_framed.py against a tiny in-test echo server, and, when KEEL_BIN
names a `keel` binary with a `serve` subcommand, against the real server."""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "clients" / "python"))

import keel_framed as kf  # noqa: E402
from keel_pb import portfolio_pb2, service_pb2  # noqa: E402

# --------------------------------------------------------------------------- #
# A tiny server speaking the protocol, for the client's own tests.
# --------------------------------------------------------------------------- #

HOLD, FLUSH = 2, 3  # methods the echo server treats specially (see below)


class EchoServer:
    """Accepts connections on 127.0.0.1; per connection, in a thread:
    - ListModels (16): answers with the request payload as the response;
    - Decide (33): answers with an INVALID_ARGUMENT error frame;
    - HOLD (2): holds the request; FLUSH (3) answers every held one, newest first,
      then itself (out-of-order answers for the pipelining tests);
    - any other method: UNIMPLEMENTED;
    - a frame with a bad version/kind: INVALID_ARGUMENT with request id 0, then close.
    Records every header it read."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.headers = []
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def close(self):
        self._stop = True
        self.sock.close()

    def _accept(self):
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @staticmethod
    def _read(conn, n):
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                return None
            data += chunk
        return data

    @staticmethod
    def _error(method, request_id, code, message):
        return kf.encode_frame(kf.KIND_ERROR, method, request_id,
                               service_pb2.ErrorStatus(code=code, message=message).SerializeToString())

    def _serve(self, conn):
        held = []
        with conn:
            conn.settimeout(10)
            while True:
                try:
                    header = self._read(conn, kf.HEADER_SIZE)
                except OSError:
                    return
                if header is None:
                    return
                length, version, kind, method, rid, timeout_us = kf.decode_header(header)
                self.headers.append((length, version, kind, method, rid, timeout_us))
                if version != 1 or kind != kf.KIND_REQUEST or length < 16:
                    conn.sendall(self._error(method, 0, 3, "bad header"))
                    return
                payload = self._read(conn, length - 16) if length > 16 else b""
                if payload is None:
                    return
                if method == 16:
                    conn.sendall(kf.encode_frame(kf.KIND_RESPONSE, method, rid, payload))
                elif method == 33:
                    conn.sendall(self._error(method, rid, 3, "cannot decode keel.v1.DecideRequest"))
                elif method == HOLD:
                    held.append((method, rid, payload))
                elif method == FLUSH:
                    out = b"".join(kf.encode_frame(kf.KIND_RESPONSE, m, r, p) for m, r, p in reversed(held))
                    held.clear()
                    conn.sendall(out + kf.encode_frame(kf.KIND_RESPONSE, method, rid, payload))
                else:
                    conn.sendall(self._error(method, rid, 12, f"unknown method id {method}"))


@pytest.fixture
def echo_server():
    server = EchoServer()
    yield server
    server.close()


# --------------------------------------------------------------------------- #
# Encoding
# --------------------------------------------------------------------------- #

def test_encode_matches_the_protocol_example():
    """The byte-exact ListModels example of docs/PROTOCOL.md."""
    expected = bytes.fromhex("00000010" "01" "01" "0010" "0000000000000007" "00000000")
    assert kf.encode_frame(kf.KIND_REQUEST, 16, 7) == expected
    assert kf.HEADER_SIZE == 20


def test_header_fields_are_big_endian():
    frame = kf.encode_frame(kf.KIND_RESPONSE, 0x0102, 0x0A0B0C0D0E0F1011, b"xyz", timeout_us=0x01020304)
    assert frame[:4] == struct.pack(">I", 19)
    assert frame[4:6] == b"\x01\x02"
    assert frame[6:8] == b"\x01\x02"
    assert frame[8:16] == bytes.fromhex("0A0B0C0D0E0F1011")
    assert frame[16:20] == bytes.fromhex("01020304")
    assert frame[20:] == b"xyz"
    assert kf.decode_header(frame[:20]) == (19, 1, 2, 0x0102, 0x0A0B0C0D0E0F1011, 0x01020304)


def test_timeouts_and_method_names():
    assert kf.timeout_to_us(None) == 0
    assert kf.timeout_to_us(0.25) == 250_000
    assert kf.timeout_to_us(0) == 1  # 0 would mean "server default"
    assert kf.timeout_to_us(1e9) == 0xFFFFFFFF
    assert kf.method_id("Rebalance") == 1
    assert kf.method_id("keel.v1.ModelAdmin/ListModels") == 16
    assert kf.method_id("Check") == 48
    assert kf.method_id("33") == 33
    with pytest.raises(ValueError):
        kf.method_id("NoSuchMethod")
    assert kf.message_type(1, response=True) is service_pb2.RebalanceResponse
    assert kf.message_type("PublishMarketData", response=False) is service_pb2.PriceUpdateBatch


def test_error_frame_payload_decodes_to_status():
    frame = kf.Frame(kf.KIND_ERROR, 1, 9, 0, service_pb2.ErrorStatus(code=5, message="no model").SerializeToString())
    err = frame.error()
    assert (err.code, err.name, err.message) == (5, "NOT_FOUND", "no model")
    assert kf.Frame(kf.KIND_RESPONSE, 1, 9, 0, b"").error() is None
    assert kf.Frame(kf.KIND_ERROR, 1, 9, 0, b"\xff\xff").error().code == 2


# --------------------------------------------------------------------------- #
# The client against the echo server
# --------------------------------------------------------------------------- #

def test_call_round_trip(echo_server):
    with kf.KeelFramedClient("127.0.0.1", echo_server.port) as c:
        # the echo server returns the request bytes, so ask to parse them as a request
        req = service_pb2.ListModelsRequest()
        assert c.call("ListModels", req, service_pb2.ListModelsRequest) == req
        msg = service_pb2.LoadModelRequest(name="policy", version=3)
        got = c.call(16, msg, service_pb2.LoadModelRequest, timeout_s=0.5)
        assert got == msg
    length, version, kind, method, rid, timeout_us = echo_server.headers[-1]
    assert (version, kind, method, timeout_us) == (1, 1, 16, 500_000)
    assert length == 16 + len(msg.SerializeToString())
    assert echo_server.headers[0][5] == 0  # no timeout: the server's default
    assert echo_server.headers[0][4] != rid  # request ids are unique per connection


def test_error_frames_raise_with_code_and_message(echo_server):
    with kf.KeelFramedClient("127.0.0.1", echo_server.port) as c:
        with pytest.raises(kf.KeelRpcError) as e:
            c.call("Decide", service_pb2.DecideRequest())
        assert (e.value.code, e.value.name) == (3, "INVALID_ARGUMENT")
        assert "DecideRequest" in e.value.message
        with pytest.raises(kf.KeelRpcError) as e:
            c.call("ListPending", service_pb2.ListPendingRequest())
        assert e.value.code == 12
        # still usable afterwards
        assert c.call(16, service_pb2.ListModelsRequest(), service_pb2.ListModelsRequest) is not None


def test_pipelined_answers_out_of_order(echo_server):
    with kf.KeelFramedClient("127.0.0.1", echo_server.port) as c:
        ids = [c.send(HOLD, f"held {i}".encode()) for i in range(5)]
        flush = c.send(FLUSH, b"flush")
        frames = [c.recv_any(timeout_s=5) for _ in range(6)]
        assert [f.request_id for f in frames] == list(reversed(ids)) + [flush]
        assert all(f.kind == kf.KIND_RESPONSE for f in frames)
        assert {f.request_id: f.payload for f in frames}[ids[2]] == b"held 2"
        # call() keeps answers to other requests for recv_any
        held = c.send(HOLD, b"later")
        echoed = c.call(FLUSH, service_pb2.ListModelsRequest(), service_pb2.ListModelsRequest, timeout_s=2)
        assert echoed == service_pb2.ListModelsRequest()
        stashed = c.recv_any(timeout_s=0.1)
        assert (stashed.request_id, stashed.payload) == (held, b"later")


def test_connection_level_failures(echo_server):
    with kf.KeelFramedClient("127.0.0.1", echo_server.port) as c:
        c.send_raw(kf.encode_frame(kf.KIND_REQUEST, 16, 1, version=9))
        f = c.recv_any(timeout_s=5)
        assert (f.kind, f.request_id, f.error().code) == (kf.KIND_ERROR, 0, 3)
        with pytest.raises(kf.KeelRpcError) as e:
            c.recv_any(timeout_s=5)
        assert e.value.code == 14  # closed
    # nobody answering: the client gives up by itself
    silent = socket.create_server(("127.0.0.1", 0))
    try:
        with kf.KeelFramedClient("127.0.0.1", silent.getsockname()[1]) as c:
            start = time.monotonic()
            with pytest.raises(kf.KeelRpcError) as e:
                c.call("ListModels", timeout_s=0.1)
            assert e.value.code == 4
            assert 0.3 <= time.monotonic() - start < 2.0
    finally:
        silent.close()
    with pytest.raises(kf.KeelRpcError) as e:
        kf.KeelFramedClient("127.0.0.1", _free_port(), connect_timeout_s=1)
    assert e.value.code == 14


# --------------------------------------------------------------------------- #
# The real server (`keel serve`), when KEEL_BIN points at a binary that has it
# --------------------------------------------------------------------------- #

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keel_serve_unavailable():
    binary = os.environ.get("KEEL_BIN")
    if not binary:
        return "KEEL_BIN is not set (point it at a built `keel`, e.g. .build/debug/keel)"
    if not os.access(binary, os.X_OK):
        return f"KEEL_BIN={binary} is not an executable file"
    try:
        r = subprocess.run([binary, "serve", "--help"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"`{binary} serve --help` failed: {e}"
    if r.returncode != 0:
        return f"`{binary} serve --help` exited {r.returncode}: this keel has no serve subcommand yet"
    return None


@pytest.fixture(scope="module")
def keel_server(tmp_path_factory):
    reason = _keel_serve_unavailable()
    if reason:
        pytest.skip(reason)
    models = tmp_path_factory.mktemp("keel") / "models"
    shutil.copytree(REPO / "models", models)
    tcp_port = _free_port()
    audit_db = tmp_path_factory.mktemp("keel-audit") / "audit.sqlite"
    args = [os.environ["KEEL_BIN"], "serve", "--host", "127.0.0.1", "--grpc-port", str(_free_port()),
            "--tcp-port", str(tcp_port), "--metrics-port", str(_free_port()), "--models", str(models),
            "--audit-db", str(audit_db)]
    log = tmp_path_factory.mktemp("keel-log") / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"keel serve exited {proc.returncode}:\n{log.read_text(errors='replace')[-4000:]}")
            try:
                socket.create_connection(("127.0.0.1", tcp_port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"keel serve did not listen on {tcp_port} within 30 s:\n"
                                f"{log.read_text(errors='replace')[-4000:]}")
                time.sleep(0.1)
        yield tcp_port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def test_server_list_models(keel_server):
    with kf.KeelFramedClient("127.0.0.1", keel_server) as c:
        reply = c.call("ListModels", service_pb2.ListModelsRequest(), timeout_s=2)
    policies = [m for m in reply.models if m.ref.name == "policy"]
    assert policies, f"no policy model listed: {reply}"
    assert any(m.serving for m in policies)
    assert len(policies[0].features) == 12


HEX64 = re.compile(r"[0-9a-f]{64}")
STATUSES = {service_pb2.DECISION_STATUS_EXECUTABLE, service_pb2.DECISION_STATUS_PENDING_APPROVAL,
            service_pb2.DECISION_STATUS_NO_TRADE, service_pb2.DECISION_STATUS_INFEASIBLE}


def check_engine_response(reply, request):
    """What every engine answer must satisfy, whatever the policy scores: ids, a
    status, an audit hash, whole-lot orders that never sell more than is held nor
    break the mandate's caps, and weights that add up."""
    ids = [i.id for i in request.instruments]
    assert reply.request_id == request.request_id
    assert reply.decision_id and reply.status in STATUSES, reply
    assert HEX64.fullmatch(reply.audit_record_hash), reply.audit_record_hash
    assert reply.model.name == "policy" and reply.model.version >= 1 and HEX64.fullmatch(reply.model.sha256)
    assert [t.instrument_id for t in reply.targets] == ids
    held = {h.instrument_id: h.quantity for h in request.portfolio.holdings}
    price = {i.id: i.price for i in request.instruments}
    mandate = request.mandate
    for o in reply.orders:
        assert o.instrument_id in price and o.side in (portfolio_pb2.SIDE_BUY, portfolio_pb2.SIDE_SELL)
        assert o.quantity > 0 and o.quantity == int(o.quantity), o  # lot size 1: whole units
        assert o.estimated_price == price[o.instrument_id]
        assert abs(o.notional - o.quantity * o.estimated_price) < 1e-6 * max(1.0, o.notional)
        assert o.estimated_cost >= 0 and o.reasons and o.explanation
        if o.side == portfolio_pb2.SIDE_SELL:
            assert o.quantity <= held.get(o.instrument_id, 0.0), f"sells more than held: {o}"
    assert len({o.instrument_id for o in reply.orders}) == len(reply.orders), "one order per instrument"
    if mandate.max_instrument_weight > 0:
        assert max(t.target_weight for t in reply.targets) <= mandate.max_instrument_weight + 1e-9
    if mandate.max_turnover > 0:
        assert reply.turnover <= mandate.max_turnover + 1e-9
    if reply.status in (service_pb2.DECISION_STATUS_NO_TRADE, service_pb2.DECISION_STATUS_INFEASIBLE):
        assert not reply.orders and reply.turnover == 0
    else:
        assert reply.orders
    assert reply.cash_weight_after >= mandate.min_cash_weight - 1e-9
    # after the orders: instruments plus cash are the whole portfolio, less the trading costs
    total = sum(t.target_weight for t in reply.targets) + reply.cash_weight_after
    assert 1.0 - 0.01 <= total <= 1.0 + 1e-9, total
    assert reply.total_value > 0 and reply.summary
    assert all(c.passed for c in reply.compliance.checks) and reply.compliance.compliant == (
        reply.status != service_pb2.DECISION_STATUS_INFEASIBLE)


def test_server_rebalance(keel_server):
    ids = [f"ASSET{i}" for i in range(5)]
    with kf.KeelFramedClient("127.0.0.1", keel_server) as c:
        request = kf.rebalance_request(ids, request_id="py-1", account_id="framed-1")
        first = c.call("Rebalance", request, timeout_s=5)
        check_engine_response(first, request)
        # the account's first decision waits for an advisor
        assert first.status == service_pb2.DECISION_STATUS_PENDING_APPROVAL and first.approval_id
        again = c.call("Rebalance", request, timeout_s=5)
        check_engine_response(again, request)
        assert again.decision_id != first.decision_id and again.audit_record_hash != first.audit_record_hash
        assert "first rebalance" not in again.summary
        # the engine is deterministic: the same request gives the same orders
        assert [(o.instrument_id, o.side, o.quantity) for o in again.orders] == \
               [(o.instrument_id, o.side, o.quantity) for o in first.orders]


@pytest.mark.parametrize("options", [
    dict(),
    dict(max_instrument_weight=0.12),
    dict(max_turnover=0.03),
    dict(holdings={}, cash=50_000.0),  # all cash
    dict(drift=0.0, seed=3),
    dict(risk_tolerance=1),
    dict(risk_tolerance=7, history_days=30),
], ids=["default", "instrument-cap", "turnover-cap", "all-cash", "balanced", "sri-1", "sri-7"])
def test_server_rebalance_respects_the_mandate(keel_server, options):
    ids = [f"ASSET{i}" for i in range(8)]
    request = kf.rebalance_request(ids, request_id="mandate", account_id="framed-mandate", **options)
    with kf.KeelFramedClient("127.0.0.1", keel_server) as c:
        reply = c.call("Rebalance", request, timeout_s=5)
    check_engine_response(reply, request)


@pytest.mark.parametrize("mutate, words", [
    (lambda r: setattr(r.instruments[2], "price", -5.0), ["ASSET2", "price"]),
    (lambda r: r.portfolio.holdings.add(instrument_id="NOPE", quantity=3.0), ["NOPE"]),
    (lambda r: setattr(r.risk_profile, "risk_tolerance", 0), ["risk_tolerance"]),
    (lambda r: setattr(r.risk_profile, "risk_tolerance", 8), ["risk_tolerance"]),
    (lambda r: r.instruments.add(id="ASSET1", price=10.0), ["ASSET1"]),  # listed twice
    (lambda r: r.mandate.strategic_weights.add(id="GHOST", weight=0.01), ["GHOST"]),
    (lambda r: setattr(r.portfolio, "cash", -1.0), ["cash"]),
    (lambda r: r.instruments[0].price_history.add(time_unix_nanos=1, price=0.0), ["ASSET0", "price_history"]),
    (lambda r: setattr(r.instruments[1], "esg_score", 101.0), ["ASSET1", "esg_score"]),
    (lambda r: setattr(r.mandate, "max_turnover", 1.5), ["max_turnover"]),
    (lambda r: r.mandate.asset_class_caps.add(id="STOCKS", weight=0.5), ["asset_class_caps"]),
    (lambda r: setattr(r.instruments[3], "price", 0.0), ["ASSET3", "no price"]),  # none in the market state
    (lambda r: r.ClearField("instruments"), ["no instruments"]),
], ids=["negative-price", "unknown-holding", "risk-tolerance-0", "risk-tolerance-8", "duplicate-instrument",
        "unknown-strategic-weight", "negative-cash", "bad-history", "esg-above-100", "turnover-above-1",
        "unknown-asset-class-cap", "no-price", "no-instruments"])
def test_server_rebalance_invalid_argument(keel_server, mutate, words):
    request = kf.rebalance_request([f"ASSET{i}" for i in range(5)], request_id="bad")
    mutate(request)
    with kf.KeelFramedClient("127.0.0.1", keel_server) as c:
        with pytest.raises(kf.KeelRpcError) as e:
            c.call("Rebalance", request, timeout_s=5)
        assert e.value.code == 3, e.value
        for word in words:
            assert word in e.value.message, e.value.message
        # the connection stays usable
        good = kf.rebalance_request(["ASSET0", "ASSET1"], request_id="good")
        assert c.call("Rebalance", good, timeout_s=5).request_id == "good"


def test_server_rebalance_stream_errors_keep_the_connection(keel_server):
    with kf.KeelFramedClient("127.0.0.1", keel_server) as c:
        # bytes that are not a RebalanceRequest
        rid = c.send(1, b"\xff\xff\xff")
        f = c.recv_for(rid, 3)
        assert f.error() is not None and f.error().code == 3
        # the removed field 10 (raw features) is an unknown field now: ignored, and the
        # empty rest of the request has no instruments
        rid = c.send(1, bytes([0x52, 0x04]) + struct.pack("<f", 0.5))
        f = c.recv_for(rid, 3)
        assert f.error() is not None and f.error().code == 3
        # an unknown method id
        rid = c.send(999, b"")
        f = c.recv_for(rid, 3)
        assert (f.method, f.error().code) == (999, 12)
        assert c.call("ListModels", timeout_s=2).models


def test_server_rebalance_pipelined(keel_server):
    """Many requests in flight on one connection, answers matched by request id;
    every answer is a distinct, audited decision."""
    ids = [f"ASSET{i}" for i in range(6)]
    with kf.KeelFramedClient("127.0.0.1", keel_server) as c:
        requests = {}
        for i in range(50):
            request = kf.rebalance_request(ids, request_id=f"p{i}", account_id=f"pipe-{i % 5}", seed=i % 3,
                                           drift=0.05 * (i % 5))
            requests[c.send("Rebalance", request, timeout_s=10)] = request
        got = {}
        for _ in range(len(requests)):
            f = c.recv_any(timeout_s=15)
            assert f.kind == kf.KIND_RESPONSE, f.error()
            r = service_pb2.RebalanceResponse()
            r.ParseFromString(f.payload)
            check_engine_response(r, requests[f.request_id])
            got[f.request_id] = r
    assert {k: r.request_id for k, r in got.items()} == {k: q.request_id for k, q in requests.items()}
    assert len({r.decision_id for r in got.values()}) == len(got)
    assert len({r.audit_record_hash for r in got.values()}) == len(got)
    assert len({r.approval_id for r in got.values() if r.approval_id}) == \
        sum(1 for r in got.values() if r.status == service_pb2.DECISION_STATUS_PENDING_APPROVAL)


def test_server_rebalance_deadline(keel_server):
    request = kf.rebalance_request([f"ASSET{i}" for i in range(5)], request_id="late")
    with kf.KeelFramedClient("127.0.0.1", keel_server) as c:
        rid = c.send("Rebalance", request, timeout_s=1e-6)  # timeout_us = 1: over before the work starts
        f = c.recv_for(rid, 5)
        assert f.kind == kf.KIND_ERROR and f.error().code == 4, f
        assert c.call("Rebalance", request, timeout_s=5).request_id == "late"


def test_server_rebalance_uses_published_market_data(keel_server):
    """Instruments without price or history in the request take them from the market
    state that PublishMarketData feeds."""
    ids = [f"MKT{i}" for i in range(4)]
    batch = service_pb2.PriceUpdateBatch()
    for k, iid in enumerate(ids):
        for point in kf.price_history(iid, 20.0 + 10.0 * k, 40, seed=5):
            batch.updates.add(instrument_id=iid, price=point.price, time_unix_nanos=point.time_unix_nanos)
    with kf.KeelFramedClient("127.0.0.1", keel_server) as c:
        published = c.call("PublishMarketData", batch, timeout_s=5)
        assert (published.accepted, published.rejected) == (len(batch.updates), 0), published
        request = kf.rebalance_request(ids, request_id="mkt", account_id="framed-mkt", history_days=0)
        request.instruments[1].price = 0.0  # the market's latest price
        reply = c.call("Rebalance", request, timeout_s=5)
        assert reply.market_state_unix_nanos == kf.HISTORY_END_UNIX_NANOS
        assert "fewer than" not in reply.note, reply.note  # every instrument had 40 prices
        assert reply.targets[1].current_weight > 0
        request.instruments[1].price = 30.0
        check_engine_response(reply, request)
        # without market data for them, instruments fall back to their asset class's volatility
        fresh = kf.rebalance_request(["NEW0", "NEW1"], request_id="fresh", history_days=0)
        assert "fewer than" in c.call("Rebalance", fresh, timeout_s=5).note


def test_server_refuses_bad_version_and_closes(keel_server):
    with kf.KeelFramedClient("127.0.0.1", keel_server) as c:
        c.send_raw(kf.encode_frame(kf.KIND_REQUEST, 16, 5, version=2))
        f = c.recv_any(timeout_s=3)
        assert f.kind == kf.KIND_ERROR and f.error().code == 3
        with pytest.raises(kf.KeelRpcError) as e:
            c.recv_any(timeout_s=3)
        assert e.value.code == 14
    with kf.KeelFramedClient("127.0.0.1", keel_server) as c:  # the server still serves
        assert c.call("ListModels", timeout_s=2) is not None
