"""End-to-end tests of `keel serve` through a standard gRPC client (Python grpcio).

The client stubs are generated from proto/ with grpc_tools at test time, exactly as any user
would, so the test proves that an unmodified standard client works. The server is the real
`keel` binary (KEEL_BIN, built by `make test`), started on free ports with a temporary copy
of the model repository; it logs the ports it bound on one line that the fixture waits for.
"""
import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "clients" / "python"))
import keel_framed as kf  # noqa: E402

KEEL_BIN = os.environ.get("KEEL_BIN")

pytestmark = pytest.mark.skipif(not KEEL_BIN or not Path(KEEL_BIN).exists(),
                                reason="KEEL_BIN is not set to a built keel binary (make test sets it)")

grpc = pytest.importorskip("grpc")
grpc_tools = pytest.importorskip("grpc_tools")


@pytest.fixture(scope="module")
def stubs(tmp_path_factory):
    from grpc_tools import protoc
    out = tmp_path_factory.mktemp("pygen")
    files = ["keel/v1/portfolio.proto", "keel/v1/service.proto", "grpc/health/v1/health.proto"]
    import grpc_tools as gt
    include = str(Path(gt.__file__).parent / "_proto")
    rc = protoc.main(["protoc", f"-I{ROOT / 'proto'}", f"-I{include}", f"--python_out={out}",
                      f"--grpc_python_out={out}", *files])
    assert rc == 0, "grpc_tools.protoc failed on proto/"
    sys.path.insert(0, str(out))
    # `grpc` is also the grpcio package's name: load the generated health modules by path.
    import importlib.util

    def load(path, name):
        spec = importlib.util.spec_from_file_location(name, out / path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        return mod

    ns = type("Stubs", (), {})()
    ns.portfolio = importlib.import_module("keel.v1.portfolio_pb2")
    ns.service = importlib.import_module("keel.v1.service_pb2")
    ns.service_grpc = importlib.import_module("keel.v1.service_pb2_grpc")
    ns.health = load("grpc/health/v1/health_pb2.py", "keel_test_health_pb2")
    return ns


def health_check(ch, stubs, service):
    """grpc.health.v1.Health/Check through grpcio's generic unary call (the generated
    health stub imports `grpc.health.v1`, which collides with the grpcio package name)."""
    call = ch.unary_unary("/grpc.health.v1.Health/Check",
                          request_serializer=stubs.health.HealthCheckRequest.SerializeToString,
                          response_deserializer=stubs.health.HealthCheckResponse.FromString)
    return call(stubs.health.HealthCheckRequest(service=service), timeout=5)


class Server:
    PORTS = re.compile(r"grpc=\S+:(\d+) tcp=\S+:(\d+) metrics=\S+:(\d+)")

    def __init__(self, models: Path, *extra: str, audit_db: Path = None):
        # the audit trail goes next to the temporary models, never into the working directory
        self.audit_db = audit_db or models.parent / "keel-audit.sqlite"
        self.proc = subprocess.Popen(
            [KEEL_BIN, "serve", "--host", "127.0.0.1", "--grpc-port", "0", "--tcp-port", "0",
             "--metrics-port", "0", "--models", str(models), "--model-poll-interval-ms", "100",
             "--audit-db", str(self.audit_db), *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.log = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.log.append(line)
            m = self.PORTS.search(line)
            if m:
                self.grpc_port, self.tcp_port, self.metrics_port = map(int, m.groups())
                return
        self.proc.kill()
        raise AssertionError("keel serve did not report its ports:\n" + "".join(self.log))

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=15)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


@pytest.fixture()
def server(tmp_path):
    models = tmp_path / "models"
    shutil.copytree(ROOT / "models", models)
    s = Server(models)
    yield s
    if s.proc.poll() is None:
        s.stop()


def channel(server):
    return grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")


def rebalance_request(stubs, n, seed=1, account="grpc-acct", **options):
    """A realistic engine request for n instruments A000..., built by the reference client's
    helper and re-read as this module's generated class (what a gRPC user sends)."""
    request = kf.rebalance_request([f"A{i:03d}" for i in range(n)], request_id=f"req-{n}", account_id=account,
                                   seed=seed, **options)
    return stubs.service.RebalanceRequest.FromString(request.SerializeToString())


def test_health_and_list_models(server, stubs):
    with channel(server) as ch:
        assert health_check(ch, stubs, "").status == stubs.health.HealthCheckResponse.SERVING
        resp = health_check(ch, stubs, "keel.v1.Rebalancer")
        assert resp.status == stubs.health.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as e:
            health_check(ch, stubs, "no.such.Service")
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        admin = stubs.service_grpc.ModelAdminStub(ch)
        models = admin.ListModels(stubs.service.ListModelsRequest(), timeout=5).models
        policy = [m for m in models if m.ref.name == "policy"]
        assert policy and policy[0].ref.version == SHIPPED_POLICY_VERSION and len(policy[0].ref.sha256) == 64
        assert policy[0].kind == "policy" and len(policy[0].features) == 12


HEX64 = re.compile(r"[0-9a-f]{64}")
# The server serves the latest shipped version of the policy.
SHIPPED_POLICY_VERSION = max(int(d.name) for d in (ROOT / "models" / "policy").iterdir() if d.name.isdigit())


@pytest.mark.parametrize("n", [1, 10, 100])
def test_rebalance_runs_the_engine(server, stubs, n):
    S = stubs.service
    request = rebalance_request(stubs, n, account=f"grpc-{n}", max_instrument_weight=0.5)
    with channel(server) as ch:
        stub = stubs.service_grpc.RebalancerStub(ch)
        first = stub.Rebalance(request, timeout=10)
        second = stub.Rebalance(request, timeout=10)
    for resp in (first, second):
        assert resp.request_id == f"req-{n}"
        assert [t.instrument_id for t in resp.targets] == [f"A{i:03d}" for i in range(n)]
        assert resp.model.name == "policy" and resp.model.version == SHIPPED_POLICY_VERSION and HEX64.fullmatch(resp.model.sha256)
        assert HEX64.fullmatch(resp.audit_record_hash) and resp.decision_id
        assert resp.status in (S.DECISION_STATUS_EXECUTABLE, S.DECISION_STATUS_PENDING_APPROVAL,
                               S.DECISION_STATUS_NO_TRADE, S.DECISION_STATUS_INFEASIBLE)
        assert max(t.target_weight for t in resp.targets) <= 0.5 + 1e-9
        assert 0.99 <= sum(t.target_weight for t in resp.targets) + resp.cash_weight_after <= 1 + 1e-9
        held = {h.instrument_id: h.quantity for h in request.portfolio.holdings}
        for o in resp.orders:
            assert o.quantity > 0 and o.quantity == int(o.quantity)
            if o.side == stubs.portfolio.SIDE_SELL:
                assert o.quantity <= held.get(o.instrument_id, 0)
        assert resp.summary and resp.compliance.checks and resp.total_value > 0
    # the account's first decision waits for an advisor; the next one does not for that reason
    assert first.status == S.DECISION_STATUS_PENDING_APPROVAL and first.approval_id
    assert "first rebalance" not in second.summary and not (
        second.status == S.DECISION_STATUS_PENDING_APPROVAL and second.approval_id == first.approval_id)
    assert first.decision_id != second.decision_id and first.audit_record_hash != second.audit_record_hash


def test_bad_requests_get_invalid_argument_and_server_keeps_serving(server, stubs):
    with channel(server) as ch:
        stub = stubs.service_grpc.RebalancerStub(ch)
        bad_price = rebalance_request(stubs, 3)
        bad_price.instruments[1].price = -2.5
        unknown_holding = rebalance_request(stubs, 3)
        unknown_holding.portfolio.holdings.add(instrument_id="ZZZ", quantity=1)
        no_tolerance = rebalance_request(stubs, 3)
        no_tolerance.risk_profile.risk_tolerance = 0
        for bad, word in [(bad_price, "price"), (unknown_holding, "ZZZ"), (no_tolerance, "risk_tolerance")]:
            with pytest.raises(grpc.RpcError) as e:
                stub.Rebalance(bad, timeout=5)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert word in e.value.details(), e.value.details()
        # Raw garbage bytes for a Rebalance request.
        raw = ch.unary_unary("/keel.v1.Rebalancer/Rebalance", request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as e:
            raw(b"\xff\xff\xff\xff", timeout=5)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        unknown = ch.unary_unary("/keel.v1.Rebalancer/NoSuchMethod", request_serializer=None,
                                 response_deserializer=None)
        with pytest.raises(grpc.RpcError) as e:
            unknown(b"", timeout=5)
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
        ok = stub.Rebalance(rebalance_request(stubs, 4), timeout=5)
        assert len(ok.targets) == 4


def test_a_long_bad_value_gets_invalid_argument_naming_the_field(server, stubs):
    """Error messages quote the offending value; gRPC carries them in a header that
    grpcio refuses past its metadata limit (it reported RESOURCE_EXHAUSTED, "received
    metadata size exceeds hard limit", for a 100 KB date). The server cuts them."""
    with channel(server) as ch:
        stub = stubs.service_grpc.RebalancerStub(ch)
        for size in (100, 100_000, 1_000_000):
            bad = rebalance_request(stubs, 3)
            bad.tax.trade_date = "x" * size
            with pytest.raises(grpc.RpcError) as e:
                stub.Rebalance(bad, timeout=5)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (size, e.value.details())
            assert e.value.details().startswith("tax.trade_date 'xxx"), e.value.details()[:80]
            assert e.value.details().endswith("' is not a date of the form YYYY-MM-DD"), e.value.details()[-80:]
            assert len(e.value.details().encode()) <= 2048
        assert len(stub.Rebalance(rebalance_request(stubs, 3), timeout=5).targets) == 3


def test_rebalance_deadline_exceeded(server, stubs):
    with channel(server) as ch:
        stub = stubs.service_grpc.RebalancerStub(ch)
        with pytest.raises(grpc.RpcError) as e:
            stub.Rebalance(rebalance_request(stubs, 50), timeout=1e-4)
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert len(stub.Rebalance(rebalance_request(stubs, 5), timeout=5).targets) == 5


def test_approvals_over_grpc(server, stubs):
    S = stubs.service
    with channel(server) as ch:
        rebalancer = stubs.service_grpc.RebalancerStub(ch)
        approvals = stubs.service_grpc.ApprovalsStub(ch)
        pending = rebalancer.Rebalance(rebalance_request(stubs, 5, account="grpc-approve"), timeout=5)
        assert pending.status == S.DECISION_STATUS_PENDING_APPROVAL and pending.approval_id
        listed = approvals.ListPending(S.ListPendingRequest(account_id="grpc-approve"), timeout=5).pending
        assert [p.approval_id for p in listed] == [pending.approval_id]
        assert listed[0].decision_id == pending.decision_id and listed[0].proposal.decision_id == pending.decision_id
        decided = approvals.Decide(S.DecideRequest(approval_id=pending.approval_id, approve=False,
                                                   advisor_id="adv-g", comment="too early"), timeout=5)
        assert decided.status == S.DECISION_STATUS_REJECTED and HEX64.fullmatch(decided.audit_record_hash)
        with pytest.raises(grpc.RpcError) as e:
            approvals.Decide(S.DecideRequest(approval_id=pending.approval_id, approve=True, advisor_id="adv-g"),
                             timeout=5)
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(grpc.RpcError) as e:
            approvals.Decide(S.DecideRequest(approval_id="no-such-approval", approve=True, advisor_id="adv-g"),
                             timeout=5)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        assert not approvals.ListPending(S.ListPendingRequest(account_id="grpc-approve"), timeout=5).pending


def test_publish_market_data_client_stream(server, stubs):
    with channel(server) as ch:
        stub = stubs.service_grpc.RebalancerStub(ch)
        updates = [stubs.service.PriceUpdate(instrument_id=f"A{i}", price=100.0 + i, time_unix_nanos=1)
                   for i in range(5)]
        updates.append(stubs.service.PriceUpdate(instrument_id="BAD", price=-1.0))
        resp = stub.PublishMarketData(iter(updates), timeout=5)
    assert resp.accepted == 5 and resp.rejected == 1 and resp.errors


def test_a_stream_that_never_half_closes_gets_deadline_exceeded_at_the_server_default(tmp_path, stubs):
    """A client that sends no deadline and never ends its PublishMarketData stream cannot hold the
    call open: the server answers DEADLINE_EXCEEDED at its default deadline (here 300 ms)."""
    models = tmp_path / "models"
    shutil.copytree(ROOT / "models", models)
    s = Server(models, "--default-deadline-ms", "300")
    try:
        stop = threading.Event()

        def updates():
            yield stubs.service.PriceUpdate(instrument_id="A", price=1.0, time_unix_nanos=1)
            stop.wait(10)  # then nothing more, and no end of stream

        with channel(s) as ch:
            stub = stubs.service_grpc.RebalancerStub(ch)
            start = time.monotonic()
            with pytest.raises(grpc.RpcError) as caught:
                stub.PublishMarketData(updates())  # no client deadline
            elapsed = time.monotonic() - start
            stop.set()
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, caught.value
        assert "not complete before its deadline" in caught.value.details()
        assert 0.25 < elapsed < 5, elapsed
        # The server keeps serving.
        with channel(s) as ch:
            assert health_check(ch, stubs, "").status == stubs.health.HealthCheckResponse.SERVING
    finally:
        s.stop()


def test_metrics_endpoint_counts_requests(server, stubs):
    with channel(server) as ch:
        stub = stubs.service_grpc.RebalancerStub(ch)
        for _ in range(3):
            stub.Rebalance(rebalance_request(stubs, 5), timeout=5)
    # An answer the framed transport gives itself: an unknown method id.
    with kf.KeelFramedClient("127.0.0.1", server.tcp_port) as c:
        frame = c.recv_for(c.send(999, b"", timeout_s=5), 5)
        assert frame.kind == kf.KIND_ERROR and frame.error().code == 12
    body = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    assert "keel_requests_total" in body and 'method="Rebalance"' in body
    assert "keel_request_duration_seconds" in body
    transport = [line for line in body.splitlines() if line.startswith("keel_transport_errors_total{")]
    assert any('transport="framed"' in line and 'code="UNIMPLEMENTED"' in line and line.endswith(" 1")
               for line in transport), transport


def test_sigterm_exits_zero(server, stubs):
    with channel(server) as ch:  # one gRPC call first, so its event loop has served
        assert health_check(ch, stubs, "").status == stubs.health.HealthCheckResponse.SERVING
    assert server.stop() == 0
    # A clean shutdown: nothing refused by an event loop already shut down (NIO prints
    # "ERROR: Cannot schedule tasks on an EventLoop that has already shut down").
    rest = server.proc.stderr.read()
    assert "ERROR:" not in rest, rest[-2000:]
    assert "stopped" in rest


def test_sigterm_with_an_open_health_watch_exits_and_ends_the_stream(server, stubs):
    """A Watch stream never ends by itself; shutdown must not wait for it forever."""
    with channel(server) as ch:
        watch = ch.unary_stream("/grpc.health.v1.Health/Watch",
                                request_serializer=stubs.health.HealthCheckRequest.SerializeToString,
                                response_deserializer=stubs.health.HealthCheckResponse.FromString)
        stream = watch(stubs.health.HealthCheckRequest(service=""), timeout=30)
        first = next(stream)
        assert first.status == stubs.health.HealthCheckResponse.SERVING
        seen = []
        reader = threading.Thread(target=lambda: seen.extend(m.status for m in stream), daemon=True)
        reader.start()
        assert server.stop() == 0
        reader.join(timeout=10)
        assert not reader.is_alive(), "the Watch stream did not end"
        assert seen and seen[-1] == stubs.health.HealthCheckResponse.NOT_SERVING


def test_publish_market_data_stream_is_capped_at_the_message_size_limit(tmp_path, stubs):
    models = tmp_path / "models"
    shutil.copytree(ROOT / "models", models)
    s = Server(models, "--max-message-bytes", "2048")
    try:
        with channel(s) as ch:
            stub = stubs.service_grpc.RebalancerStub(ch)
            updates = (stubs.service.PriceUpdate(instrument_id=f"INSTRUMENT-{i:05d}", price=100.0, time_unix_nanos=1)
                       for i in range(500))  # about 17 KB in all; each message is small
            with pytest.raises(grpc.RpcError) as e:
                stub.PublishMarketData(updates, timeout=5)
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "2048" in e.value.details()
            small = stub.PublishMarketData(iter([stubs.service.PriceUpdate(instrument_id="A", price=1.0)]), timeout=5)
            assert small.accepted == 1
    finally:
        assert s.stop() == 0


def harvest_request(stubs):
    """VTI at 100 with a short-term loss lot and a gain lot; ITOT is its replacement."""
    s, p = stubs.service, stubs.portfolio
    closes = [100 * (1.0005 ** (k - 199)) for k in range(200)]
    r = s.HarvestTaxLossesRequest(request_id="tlh-py")
    r.portfolio.account_id = "py-acct"
    r.portfolio.household_id = "py-house"
    h = r.portfolio.holdings.add(instrument_id="VTI", quantity=15)
    h.lots.add(lot_id="L1", quantity=10, acquired_on="2026-01-05", cost_per_share=120)
    h.lots.add(lot_id="L2", quantity=5, acquired_on="2024-03-01", cost_per_share=90)
    vti = r.instruments.add(id="VTI", price=100, replacement_for_tax="ITOT")
    vti.price_history.extend(p.PricePoint(price=c) for c in closes)
    itot = r.instruments.add(id="ITOT", price=50)
    itot.price_history.extend(p.PricePoint(price=c / 2) for c in closes)
    r.tax.short_term_rate = 0.37
    r.tax.long_term_rate = 0.2
    r.tax.trade_date = "2026-11-20"
    return r


def test_harvest_tax_losses(server, stubs):
    """HarvestTaxLosses through grpcio with the shipped tax-loss forecaster."""
    with channel(server) as ch:
        stub = stubs.service_grpc.RebalancerStub(ch)
        resp = stub.HarvestTaxLosses(harvest_request(stubs), timeout=5)
        assert resp.request_id == "tlh-py"
        assert resp.model.name == "tax_loss" and len(resp.model.sha256) == 64
        (p,) = resp.proposals
        assert p.instrument_id == "VTI" and list(p.lot_ids) == ["L1"] and p.quantity == 10
        assert p.realised_loss == pytest.approx(200) and not p.long_term
        assert p.estimated_tax_saving == pytest.approx(74)
        assert p.replacement_instrument_id == "ITOT" and p.replacement_quantity == 20
        assert p.wash_sale_window_end == "2026-12-20"
        # tax saving 7.4 % of the proceeds, plus the forecast spread of two identical-shaped series
        assert p.forecaster_score == pytest.approx(0.074, abs=1e-3)
        # bad input names the field
        bad = harvest_request(stubs)
        bad.portfolio.holdings[0].lots[0].quantity = -1
        with pytest.raises(grpc.RpcError) as e:
            stub.HarvestTaxLosses(bad, timeout=5)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "portfolio.holdings[0].lots[0].quantity" in e.value.details()


def test_overload_is_resource_exhausted_on_both_transports_and_the_server_keeps_serving(tmp_path, stubs):
    """One request at a time and one waiting: a burst of compute requests gets RESOURCE_EXHAUSTED
    at once for the excess (Rebalance, and HarvestTaxLosses, which shares the gate), never a
    growing queue; afterwards the same server answers normally."""
    models = tmp_path / "models"
    shutil.copytree(ROOT / "models", models)
    s = Server(models, "--max-concurrent-requests", "1", "--max-queued-requests", "1")
    try:
        big = rebalance_request(stubs, 300, account="overload")
        harvest = harvest_request(stubs)
        # Framed: 40 Rebalances and 40 HarvestTaxLosses pipelined on one connection.
        with kf.KeelFramedClient("127.0.0.1", s.tcp_port) as c:
            for method, request in (("Rebalance", big), ("HarvestTaxLosses", harvest)):
                ids = [c.send(method, request.SerializeToString(), timeout_s=30) for _ in range(40)]
                frames = [c.recv_for(i, 60) for i in ids]
                exhausted = [f for f in frames if f.kind == kf.KIND_ERROR and f.error().code == 8]
                ok = [f for f in frames if f.kind == kf.KIND_RESPONSE]
                assert len(exhausted) + len(ok) == 40, [f.error() for f in frames if f.kind == kf.KIND_ERROR]
                assert len(exhausted) >= 10 and len(ok) >= 2, (method, len(exhausted), len(ok))
                assert "server queue full" in exhausted[0].error().message
            assert c.call("Rebalance", big, timeout_s=30).request_id == big.request_id
        # gRPC: 40 concurrent Rebalances on one channel.
        with channel(s) as ch:
            stub = stubs.service_grpc.RebalancerStub(ch)
            futures = [stub.Rebalance.future(big, timeout=30) for _ in range(40)]
            codes = []
            for f in futures:
                try:
                    f.result()
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as e:
                    codes.append(e.code())
                    if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                        assert "server queue full" in e.details()
            assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
            assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 10 and codes.count(grpc.StatusCode.OK) >= 2
            assert len(stub.Rebalance(big, timeout=30).targets) == 300
            assert health_check(ch, stubs, "").status == stubs.health.HealthCheckResponse.SERVING
    finally:
        assert s.stop() == 0


def test_grpcio_reference_benchmark_sends_keel_benchs_request(server, tmp_path):
    """benchmarks/bench_grpcio_client.py: the request `keel bench --write-requests` wrote,
    the price history published first, every request answered."""
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_grpcio_client.py"),
                          "--keel", KEEL_BIN, "--port", str(server.grpc_port), "--assets", "20",
                          "--rate", "50", "--duration", "1", "--warmup", "0"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "sent 50, ok 50, errors 0" in run.stdout, run.stdout
    assert re.search(r"p50 \d+ us, p90 \d+ us, p99 \d+ us", run.stdout), run.stdout

    # What it sent is what keel bench writes: a Rebalance request and the batch it publishes.
    out = tmp_path / "requests"
    written = subprocess.run([KEEL_BIN, "bench", "--target", "grpc://127.0.0.1:1", "--assets", "20", "--rate", "1",
                              "--write-requests", str(out)], capture_output=True, text=True, timeout=60)
    assert written.returncode == 0, written.stderr
    from keel_pb import service_pb2
    request = service_pb2.RebalanceRequest.FromString((out / "request.bin").read_bytes())
    assert len(request.instruments) == 20 and request.model == "policy"
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_grpcio_client as bgc
    updates = bgc.split_batch((out / "market.bin").read_bytes())
    assert len(updates) == 20 * 64
    assert service_pb2.PriceUpdate.FromString(updates[0]).price > 0
    with pytest.raises(ValueError, match="past the end"):
        bgc.split_batch(bytes([0x0A, 0x05, 0x01]))


def test_keel_bench_sends_mandate_variants_in_turn(server, tmp_path):
    """`keel bench --mandates N`: N Rebalance requests that differ in mandate and risk
    profile only, written by --write-requests and all answered by a live server."""
    out = tmp_path / "variants"
    written = subprocess.run([KEEL_BIN, "bench", "--target", "grpc://127.0.0.1:1", "--assets", "20", "--rate", "1",
                              "--mandates", "3", "--write-requests", str(out)],
                             capture_output=True, text=True, timeout=60)
    assert written.returncode == 0, written.stderr
    from keel_pb import service_pb2
    variants = [service_pb2.RebalanceRequest.FromString((out / f"request-{k}.bin").read_bytes()) for k in (1, 2, 3)]
    assert (out / "request.bin").read_bytes() == (out / "request-1.bin").read_bytes()
    assert all(v.instruments == variants[0].instruments and v.portfolio == variants[0].portfolio for v in variants)
    assert len({v.mandate.SerializeToString() for v in variants}) == 3
    assert [v.risk_profile.risk_tolerance for v in variants] == [2, 3, 4]

    run = subprocess.run([KEEL_BIN, "bench", "--target", f"grpc://127.0.0.1:{server.grpc_port}", "--assets", "20",
                          "--mandates", "12", "--rate", "60", "--duration", "1s", "--warmup", "0s", "--format", "json"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(run.stdout)
    assert report["request_variants"] == 12
    assert report["sent"] == 60 and report["ok"] == 60 and report["errors"] == 0, report

    bad = subprocess.run([KEEL_BIN, "bench", "--target", "grpc://127.0.0.1:1", "--method", "Check", "--mandates", "2",
                          "--rate", "1"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 64 and "--mandates applies to Rebalance only" in bad.stderr, bad.stderr
