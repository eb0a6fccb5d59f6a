"""End-to-end tests of `keel serve` through a standard gRPC client (Python grpcio).

The client stubs are generated from proto/ with grpc_tools at test time, exactly as any user
would, so the test proves that an unmodified standard client works. The server is the real
`keel` binary (KEEL_BIN, built by `make test`), started on free ports with a temporary copy
of the model repository; it logs the ports it bound on one line that the fixture waits for.
"""
import importlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
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

    def __init__(self, models: Path, *extra: str):
        self.proc = subprocess.Popen(
            [KEEL_BIN, "serve", "--host", "127.0.0.1", "--grpc-port", "0", "--tcp-port", "0",
             "--metrics-port", "0", "--models", str(models), "--model-poll-interval-ms", "100", *extra],
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


def rebalance_request(stubs, n, features=12, seed=1):
    rng = np.random.default_rng(seed)
    req = stubs.service.RebalanceRequest(request_id=f"req-{n}")
    for i in range(n):
        req.instruments.add(id=f"A{i:03d}", price=float(10 + i), sector="tech", lot_size=1)
    req.features.extend(rng.standard_normal(n * features).astype(np.float32).tolist())
    return req


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
        assert policy and policy[0].ref.version == 1 and len(policy[0].ref.sha256) == 64
        assert policy[0].kind == "policy" and len(policy[0].features) == 12


@pytest.mark.parametrize("n", [1, 10, 100])
def test_rebalance_returns_weights_from_the_policy(server, stubs, n):
    with channel(server) as ch:
        stub = stubs.service_grpc.RebalancerStub(ch)
        resp = stub.Rebalance(rebalance_request(stubs, n), timeout=5)
    assert resp.request_id == f"req-{n}"
    assert [t.instrument_id for t in resp.targets] == [f"A{i:03d}" for i in range(n)]
    assert abs(sum(t.target_weight for t in resp.targets) - 1.0) < 1e-6
    assert resp.model.name == "policy" and resp.model.version == 1 and len(resp.model.sha256) == 64
    assert "engine not implemented" in resp.note


def test_bad_requests_get_invalid_argument_and_server_keeps_serving(server, stubs):
    with channel(server) as ch:
        stub = stubs.service_grpc.RebalancerStub(ch)
        bad = rebalance_request(stubs, 3)
        del bad.features[-1]
        with pytest.raises(grpc.RpcError) as e:
            stub.Rebalance(bad, timeout=5)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "feature" in e.value.details()
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


def test_publish_market_data_client_stream(server, stubs):
    with channel(server) as ch:
        stub = stubs.service_grpc.RebalancerStub(ch)
        updates = [stubs.service.PriceUpdate(instrument_id=f"A{i}", price=100.0 + i, time_unix_nanos=1)
                   for i in range(5)]
        updates.append(stubs.service.PriceUpdate(instrument_id="BAD", price=-1.0))
        resp = stub.PublishMarketData(iter(updates), timeout=5)
    assert resp.accepted == 5 and resp.rejected == 1 and resp.errors


def test_metrics_endpoint_counts_requests(server, stubs):
    with channel(server) as ch:
        stub = stubs.service_grpc.RebalancerStub(ch)
        for _ in range(3):
            stub.Rebalance(rebalance_request(stubs, 5), timeout=5)
    body = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    assert "keel_requests_total" in body and 'method="Rebalance"' in body
    assert "keel_request_duration_seconds" in body


def test_sigterm_exits_zero(server):
    assert server.stop() == 0


def test_sigterm_with_an_open_health_watch_exits_and_ends_the_stream(server, stubs):
    """A Watch stream never ends by itself; shutdown must not wait for it forever."""
    import threading
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
