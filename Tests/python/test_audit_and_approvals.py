"""The audit trail and the approval workflow of `keel serve`, end to end (docs/AUDIT.md).

- A server killed with SIGKILL in the middle of a pipelined stream of Rebalance requests
  loses no acknowledged decision: after a restart on the same file, `keel audit verify`
  passes and `keel audit export` holds every decision a client got an answer for, with the
  hash the answer carried.
- Approvals over the framed protocol: PENDING_APPROVAL, ListPending, Decide and its errors,
  and the approval events in the trail.
- Tampering with a copy of the file is caught and named; export in both formats.

Every file (models copy, audit database, logs) lives in pytest's tmp dirs. The records are
also re-verified here in Python from the specification alone (`reference_verify`), so a
bug in `keel audit verify` cannot hide a broken chain.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shutil
import signal
import sqlite3
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
from keel_pb import service_pb2  # noqa: E402

KEEL_BIN = os.environ.get("KEEL_BIN")
if KEEL_BIN:
    KEEL_BIN = str(Path(KEEL_BIN).resolve())  # the server runs in a tmp dir
pytestmark = pytest.mark.skipif(not KEEL_BIN or not Path(KEEL_BIN).exists(),
                                reason="KEEL_BIN is not set to a built keel binary (make test sets it)")

HEX64 = re.compile(r"[0-9a-f]{64}")
GENESIS = "0" * 64
PORTS = re.compile(r"grpc=\S+:(\d+) tcp=\S+:(\d+) metrics=\S+:(\d+)")
IDS = [f"AUD{i}" for i in range(6)]
NANOS_PER_MINUTE = 60 * 1_000_000_000


# --------------------------------------------------------------------------- #
# Helpers
# --------------------------------------------------------------------------- #

class KeelServer:
    """`keel serve` on free ports with its audit trail at `db`; its log goes to a file
    (a pipe nobody reads could fill and block the server)."""

    def __init__(self, workdir: Path, db: Path, *extra: str):
        models = workdir / "models"
        if not models.exists():
            shutil.copytree(REPO / "models", models)
        self.db = db
        self.log_path = workdir / f"serve-{time.monotonic_ns()}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [KEEL_BIN, "serve", "--host", "127.0.0.1", "--grpc-port", "0", "--tcp-port", "0",
                 "--metrics-port", "0", "--models", str(models), "--audit-db", str(db), *extra],
                stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
        deadline = time.monotonic() + 30
        while True:
            m = PORTS.search(self.log())
            if m:
                self.grpc_port, self.tcp_port, self.metrics_port = map(int, m.groups())
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"keel serve did not start (exit {self.proc.returncode}):\n{self.log()[-4000:]}")
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client(self) -> kf.KeelFramedClient:
        return kf.KeelFramedClient("127.0.0.1", self.tcp_port)

    def stop(self) -> int:
        """SIGTERM: graceful; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # SIGKILL
            self.proc.wait(timeout=10)


_AUDIT_CLI: list = []


def keel_audit(*args: str) -> subprocess.CompletedProcess:
    """`keel audit ARGS...`; fails the test at once when this keel has no audit subcommand."""
    if not _AUDIT_CLI:
        h = subprocess.run([KEEL_BIN, "audit", "verify", "--help"], capture_output=True, text=True, timeout=60)
        _AUDIT_CLI.append(h.returncode == 0 and "--db" in h.stdout + h.stderr)
    if not _AUDIT_CLI[0]:
        pytest.fail(f"{KEEL_BIN} has no `keel audit verify --db` subcommand (rebuild keel?)")
    return subprocess.run([KEEL_BIN, "audit", *args], capture_output=True, text=True, timeout=120)


def verify(db: Path) -> subprocess.CompletedProcess:
    return keel_audit("verify", "--db", str(db))


def export(db: Path, fmt: str = "jsonl", since: str | None = None) -> str:
    args = ["export", "--db", str(db), "--format", fmt] + (["--since", since] if since else [])
    r = keel_audit(*args)
    assert r.returncode == 0, f"keel audit {' '.join(args)} exited {r.returncode}:\n{r.stderr}"
    return r.stdout


def export_jsonl(db: Path, since: str | None = None) -> list[dict]:
    return [json.loads(line) for line in export(db, "jsonl", since).splitlines() if line.strip()]


def _field(data: bytes) -> bytes:
    return struct.pack(">Q", len(data)) + data


def record_hash(prev: bytes, seq: int, nanos: int, kind: bytes, account: bytes, decision: bytes,
                payload: bytes) -> str:
    """The record hash of docs/AUDIT.md."""
    return hashlib.sha256(b"".join(_field(x) for x in (
        prev, str(seq).encode(), str(nanos).encode(), kind, account, decision, payload))).hexdigest()


def reference_verify(db: Path):
    """(record count, first broken sequence or None), from docs/AUDIT.md alone.
    Open only files no server has open."""
    con = sqlite3.connect(str(db))
    con.text_factory = bytes
    try:
        previous, expected, previous_time, broken, count = GENESIS.encode(), 1, -(2 ** 63), None, 0
        for seq, nanos, kind, account, decision, payload, prev, stored in con.execute(
                "SELECT sequence, recorded_unix_nanos, kind, account_id, decision_id, payload, prev_hash, hash "
                "FROM audit_records ORDER BY sequence"):
            count += 1
            if broken is None:
                if seq != expected:
                    broken = expected
                elif (prev != previous or nanos < previous_time or kind not in (b"decision", b"approval")
                      or record_hash(prev, seq, nanos, kind, account, decision, payload).encode() != stored):
                    broken = seq
            previous, expected, previous_time = stored, seq + 1, nanos
        return count, broken
    finally:
        con.close()


def test_reference_hash_matches_the_documented_vector():
    assert record_hash(GENESIS.encode(), 1, 1795219200000000000, b"decision", b"acct-1", b"dec-1",
                       b"\x01\x02\x03") == "e70a213dad6f3283962446738171d3c5c6c3ced2c8c695fc0c8eeaaabd32390d"


def rebalance(client, account: str, request_id: str, **options):
    return client.call("Rebalance", kf.rebalance_request(IDS, request_id=request_id, account_id=account, **options),
                       timeout_s=10)


# --------------------------------------------------------------------------- #
# SIGKILL in the middle of a stream
# --------------------------------------------------------------------------- #

THREADS = 4
WINDOW = 16          # requests in flight per connection
KILL_AFTER = 400     # responses before the kill


def _stream(port: int, thread: int, received: dict, errors: list, lock: threading.Lock, stop: threading.Event):
    """Sends Rebalance requests without pause, up to WINDOW in flight, and records every
    answer, until the connection dies (the kill) or `stop` is set."""
    try:
        client = kf.KeelFramedClient("127.0.0.1", port)
    except kf.KeelRpcError as e:
        errors.append(f"thread {thread}: {e}")
        return
    in_flight = {}
    sent = 0
    try:
        while not stop.is_set() or in_flight:
            while not stop.is_set() and len(in_flight) < WINDOW:
                request_id = f"kill-{thread}-{sent}"
                request = kf.rebalance_request(IDS, request_id=request_id, account_id=f"kill-acct-{sent % 7}",
                                               seed=sent % 5, drift=0.05 * (sent % 6))
                in_flight[client.send("Rebalance", request, timeout_s=30)] = request_id
                sent += 1
            frame = client.recv_any(timeout_s=30)
            request_id = in_flight.pop(frame.request_id)
            if frame.kind != kf.KIND_RESPONSE:
                with lock:
                    errors.append(f"{request_id}: {frame.error()}")
                continue
            reply = service_pb2.RebalanceResponse.FromString(frame.payload)
            with lock:
                received[reply.decision_id] = (request_id, reply.audit_record_hash, reply.status)
    except kf.KeelRpcError as e:
        if e.code != 14:  # anything but "the connection died" is a failure
            with lock:
                errors.append(f"thread {thread}: {e}")
    finally:
        client.close()


@pytest.mark.parametrize("sync", ["full", "normal"])
def test_sigkill_mid_stream_loses_no_acknowledged_decision(tmp_path, sync):
    """docs/AUDIT.md: with either durability, a process kill loses no acknowledged record."""
    db = tmp_path / "audit.sqlite"
    server = KeelServer(tmp_path, db, "--audit-sync", sync)
    received, errors, lock, stop = {}, [], threading.Lock(), threading.Event()
    threads = [threading.Thread(target=_stream, args=(server.tcp_port, t, received, errors, lock, stop), daemon=True)
               for t in range(THREADS)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while True:
            with lock:
                n = len(received)
            if n >= KILL_AFTER or errors or time.monotonic() > deadline:
                break
            time.sleep(0.005)
        os.kill(server.proc.pid, signal.SIGKILL)  # mid-stream: every connection has requests in flight
        server.proc.wait(timeout=10)
    finally:
        stop.set()
        server.kill()
        for t in threads:
            t.join(timeout=40)
    assert not errors, errors[:5]
    assert len(received) >= KILL_AFTER, f"only {len(received)} answers before the kill"
    assert server.proc.returncode == -signal.SIGKILL
    with lock:
        before = dict(received)
    assert all(HEX64.fullmatch(h) for _, h, _ in before.values())
    assert len({h for _, h, _ in before.values()}) == len(before), "audit hashes are not unique"
    assert len({r for r, _, _ in before.values()}) == len(before)

    # The same file after the kill: the server starts and continues the chain.
    restarted = KeelServer(tmp_path, db, "--audit-sync", sync)
    try:
        with restarted.client() as c:
            after = [rebalance(c, f"kill-acct-{k}", f"after-{k}") for k in range(3)]
        # accounts with decisions before the kill are known: not a "first rebalance" again
        assert all("first rebalance" not in r.summary for r in after), [r.summary for r in after]
    finally:
        assert restarted.stop() == 0, restarted.log()[-3000:]

    # First the file itself, read with sqlite3 and checked against docs/AUDIT.md ...
    count, broken = reference_verify(db)
    assert broken is None, f"the chain breaks at record {broken}"
    con = sqlite3.connect(str(db))
    try:
        stored = {d: (seq, h) for seq, d, h in con.execute(
            "SELECT sequence, decision_id, hash FROM audit_records ORDER BY sequence")}
    finally:
        con.close()
    assert len(stored) == count, "a decision id occurs twice in the trail"
    assert sorted(seq for seq, _ in stored.values()) == list(range(1, count + 1)), "sequences are not contiguous"
    missing = [d for d in before if d not in stored]
    assert not missing, f"{len(missing)} acknowledged decisions are missing from the trail, e.g. {missing[:3]}"
    wrong = [d for d, (_, h, _) in before.items() if stored[d][1] != h]
    assert not wrong, f"{len(wrong)} answers carry another hash than their record, e.g. {wrong[:3]}"

    # ... then what `keel audit verify` and `keel audit export` say about it.
    r = verify(db)
    assert r.returncode == 0, f"keel audit verify failed after the kill:\n{r.stdout}\n{r.stderr}"
    assert re.search(rf"^records:\s*{count}$", r.stdout, re.M), f"verify does not print the count {count}:\n{r.stdout}"
    # the head it prints is the last answer's hash
    assert re.search(rf"^head:\s*{after[-1].audit_record_hash}$", r.stdout, re.M), r.stdout

    records = export_jsonl(db)
    assert len(records) == count
    assert [rec["sequence"] for rec in records] == list(range(1, count + 1)), "sequences are not contiguous"
    assert records[0]["prev_hash"] == GENESIS
    for prev, rec in zip(records, records[1:]):
        assert rec["prev_hash"] == prev["hash"], f"record {rec['sequence']} does not link to its predecessor"
    assert all(rec["kind"] == "decision" for rec in records)
    by_decision = {rec["decision_id"]: rec for rec in records}
    assert len(by_decision) == count, "a decision id occurs twice in the trail"

    # every acknowledged decision is in the file, with the hash its answer carried
    missing = [d for d in before if d not in by_decision]
    assert not missing, f"{len(missing)} acknowledged decisions are missing from the trail, e.g. {missing[:3]}"
    for decision_id, (request_id, hash_, status) in before.items():
        rec = by_decision[decision_id]
        assert rec["hash"] == hash_, f"{decision_id}: client got {hash_}, the trail holds {rec['hash']}"
        payload = rec["payload"]
        assert payload["requestId"] == request_id
        assert payload["response"]["decisionId"] == decision_id
        assert "auditRecordHash" not in payload["response"]
        assert rec["account_id"] == payload["portfolio"]["accountId"]
    # answers lost with the kill may have been recorded too, but nothing else
    unanswered = {rec["payload"]["requestId"] for rec in records} - {r for r, _, _ in before.values()}
    assert all(re.fullmatch(r"kill-\d+-\d+|after-\d", r) for r in unanswered)

    # the decisions after the restart come last and continue the chain
    tail = records[-len(after):]
    assert [rec["decision_id"] for rec in tail] == [r.decision_id for r in after]
    assert [rec["hash"] for rec in tail] == [r.audit_record_hash for r in after]
    assert count >= len(before) + len(after)


def test_restart_after_sigkill_keeps_verifying_and_counting(tmp_path):
    """Kill, restart, kill again, restart: each generation appends to one intact chain."""
    db = tmp_path / "audit.sqlite"
    counts = []
    hashes = []
    for generation in range(3):
        server = KeelServer(tmp_path, db)
        try:
            with server.client() as c:
                for k in range(4):
                    hashes.append(rebalance(c, f"gen-{k}", f"g{generation}-{k}").audit_record_hash)
        finally:
            if generation < 2:
                server.kill()
            else:
                assert server.stop() == 0
        counts.append(reference_verify(db))
        assert counts[-1] == (4 * (generation + 1), None)
        r = verify(db)
        assert r.returncode == 0, r.stdout + r.stderr
    assert [rec["hash"] for rec in export_jsonl(db)] == hashes


def test_pending_approvals_survive_a_sigkill(tmp_path):
    """A decision waiting for an advisor before the kill is still waiting after the restart
    (rebuilt from the audit trail); one decided before the kill stays decided."""
    db = tmp_path / "audit.sqlite"
    server = KeelServer(tmp_path, db)
    try:
        with server.client() as c:
            waiting = rebalance(c, "acc-wait", "w1")
            decided = rebalance(c, "acc-done", "d1")
            assert waiting.status == service_pb2.DECISION_STATUS_PENDING_APPROVAL
            assert decided.status == service_pb2.DECISION_STATUS_PENDING_APPROVAL
            c.call("Decide", service_pb2.DecideRequest(approval_id=decided.approval_id, approve=False,
                                                       advisor_id="adv-1"), timeout_s=5)
    finally:
        server.kill()
    server = KeelServer(tmp_path, db)
    try:
        with server.client() as c:
            pending = c.call("ListPending", service_pb2.ListPendingRequest(), timeout_s=5).pending
            assert [p.approval_id for p in pending] == [waiting.approval_id]
            assert pending[0].proposal.audit_record_hash == waiting.audit_record_hash
            assert list(pending[0].proposal.orders) == list(waiting.orders)
            with pytest.raises(kf.KeelRpcError) as e:
                c.call("Decide", service_pb2.DecideRequest(approval_id=decided.approval_id, approve=True,
                                                           advisor_id="adv-2"), timeout_s=5)
            assert e.value.code == 9, e.value  # FAILED_PRECONDITION: already rejected
            ok = c.call("Decide", service_pb2.DecideRequest(approval_id=waiting.approval_id, approve=True,
                                                            advisor_id="adv-2"), timeout_s=5)
            assert ok.status == service_pb2.DECISION_STATUS_APPROVED
    finally:
        assert server.stop() == 0
    assert verify(db).returncode == 0


# --------------------------------------------------------------------------- #
# Approvals over the framed protocol
# --------------------------------------------------------------------------- #

EXPIRY_MINUTES = 7


@pytest.fixture(scope="module")
def approvals_server(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("approvals")
    server = KeelServer(workdir, workdir / "audit.sqlite", "--approval-expiry-minutes", str(EXPIRY_MINUTES))
    yield server
    server.stop()


def decide(client, approval_id: str, approve: bool, advisor: str = "adv-1", comment: str = ""):
    return client.call("Decide", service_pb2.DecideRequest(approval_id=approval_id, approve=approve,
                                                           advisor_id=advisor, comment=comment), timeout_s=5)


def list_pending(client, account: str = ""):
    return client.call("ListPending", service_pb2.ListPendingRequest(account_id=account), timeout_s=5).pending


def test_first_rebalance_waits_for_approval_and_is_approved_once(approvals_server):
    with approvals_server.client() as c:
        reply = rebalance(c, "appr-1", "a1")
        assert reply.status == service_pb2.DECISION_STATUS_PENDING_APPROVAL
        assert reply.approval_id and reply.approval_id != reply.decision_id
        assert reply.approval_id in reply.summary and "first rebalance" in reply.summary
        assert HEX64.fullmatch(reply.audit_record_hash) and reply.orders

        pending = list_pending(c, "appr-1")
        assert [p.approval_id for p in pending] == [reply.approval_id]
        p = pending[0]
        assert (p.decision_id, p.account_id) == (reply.decision_id, "appr-1")
        assert any(rule.startswith("approval.first_rebalance") for rule in p.triggered_rules), p.triggered_rules
        assert p.proposal.decision_id == reply.decision_id
        assert p.proposal.status == service_pb2.DECISION_STATUS_PENDING_APPROVAL
        assert [(o.instrument_id, o.quantity) for o in p.proposal.orders] == \
               [(o.instrument_id, o.quantity) for o in reply.orders]
        assert p.expires_unix_nanos - p.created_unix_nanos == EXPIRY_MINUTES * NANOS_PER_MINUTE
        assert abs(p.created_unix_nanos - time.time_ns()) < 600 * 1_000_000_000
        assert reply.approval_id in {q.approval_id for q in list_pending(c)}  # no filter: every account
        assert reply.approval_id not in {q.approval_id for q in list_pending(c, "appr-other")}

        # refused: no advisor, an unknown id, no id
        with pytest.raises(kf.KeelRpcError) as e:
            decide(c, reply.approval_id, True, advisor="")
        assert e.value.code == 3 and "advisor_id" in e.value.message
        with pytest.raises(kf.KeelRpcError) as e:
            decide(c, "no-such-approval", True)
        assert e.value.code == 5 and "no-such-approval" in e.value.message
        with pytest.raises(kf.KeelRpcError) as e:
            decide(c, "", True)
        assert e.value.code == 3
        assert [q.approval_id for q in list_pending(c, "appr-1")] == [reply.approval_id]  # still pending

        decided = decide(c, reply.approval_id, True, advisor="adv-7", comment="checked with the client")
        assert decided.approval_id == reply.approval_id
        assert decided.status == service_pb2.DECISION_STATUS_APPROVED
        assert HEX64.fullmatch(decided.audit_record_hash) and decided.audit_record_hash != reply.audit_record_hash
        assert list_pending(c, "appr-1") == []

        # a decision cannot be changed or repeated
        for approve in (False, True):
            with pytest.raises(kf.KeelRpcError) as e:
                decide(c, reply.approval_id, approve, advisor="adv-8")
            assert e.value.code == 9, e.value
            assert "approved" in e.value.message and "adv-7" in e.value.message

        # the account has a decision now: its next balanced rebalance is not a "first" one
        again = rebalance(c, "appr-1", "a2")
        assert "first rebalance" not in again.summary


def test_reject_and_the_other_approval_rules(approvals_server):
    with approvals_server.client() as c:
        first = rebalance(c, "appr-2", "b1")
        assert first.status == service_pb2.DECISION_STATUS_PENDING_APPROVAL
        rejected = decide(c, first.approval_id, False, advisor="adv-2", comment="no")
        assert rejected.status == service_pb2.DECISION_STATUS_REJECTED and HEX64.fullmatch(rejected.audit_record_hash)
        with pytest.raises(kf.KeelRpcError) as e:
            decide(c, first.approval_id, True)
        assert e.value.code == 9 and "rejected" in e.value.message

        # not the first rebalance any more, but investing an all-cash portfolio is a high turnover
        big = rebalance(c, "appr-2", "b2", holdings={}, cash=100_000.0)
        assert big.status == service_pb2.DECISION_STATUS_PENDING_APPROVAL, big.summary
        assert big.turnover > 0.20
        (p,) = [q for q in list_pending(c, "appr-2")]
        assert p.approval_id == big.approval_id
        assert any(r.startswith("approval.turnover") for r in p.triggered_rules), p.triggered_rules
        assert not any(r.startswith("approval.first_rebalance") for r in p.triggered_rules), p.triggered_rules

        # an explicit first_rebalance flag asks for approval even for a known account
        flagged = rebalance(c, "appr-2", "b3", first_rebalance=True)
        assert flagged.status == service_pb2.DECISION_STATUS_PENDING_APPROVAL

        # the approval ids are distinct and all listed, oldest first
        listed = [q.approval_id for q in list_pending(c, "appr-2")]
        assert listed == [big.approval_id, flagged.approval_id]


def test_approval_rules_are_server_settings(tmp_path):
    """The high-impact rules come from flags (and a config file or KEEL_* variables): with the
    first-rebalance and turnover rules off, the decisions that waited above are executable; a
    tighter turnover threshold holds a small rebalance."""
    relaxed = KeelServer(tmp_path / "relaxed", tmp_path / "relaxed.sqlite", "--approval-first-rebalance", "false",
                         "--approval-turnover-above", "off", "--approval-order-share-above", "off",
                         "--approval-volatility-rise-above", "off")
    try:
        with relaxed.client() as c:
            first = rebalance(c, "rules-1", "r1")
            assert first.status == service_pb2.DECISION_STATUS_EXECUTABLE, first.summary
            big = rebalance(c, "rules-1", "r2", holdings={}, cash=100_000.0)
            assert big.status == service_pb2.DECISION_STATUS_EXECUTABLE and big.turnover > 0.20
    finally:
        relaxed.stop()
    strict = KeelServer(tmp_path / "strict", tmp_path / "strict.sqlite", "--approval-first-rebalance", "false",
                        "--approval-turnover-above", "0.0001")
    try:
        with strict.client() as c:
            held = rebalance(c, "rules-2", "s1")
            assert held.status == service_pb2.DECISION_STATUS_PENDING_APPROVAL, held.summary
            (p,) = list_pending(c, "rules-2")
            assert [r.split(":")[0] for r in p.triggered_rules] == ["approval.turnover"], p.triggered_rules
    finally:
        strict.stop()


def test_approval_events_are_in_the_audit_trail(tmp_path):
    db = tmp_path / "audit.sqlite"
    server = KeelServer(tmp_path, db, "--approval-expiry-minutes", "5")
    try:
        with server.client() as c:
            approved = rebalance(c, "trail-1", "t1")
            rejected = rebalance(c, "trail-2", "t2")
            yes = decide(c, approved.approval_id, True, advisor="adv-yes", comment="fine")
            no = decide(c, rejected.approval_id, False, advisor="adv-no", comment="not now")
            untouched = rebalance(c, "trail-3", "t3")
    finally:
        assert server.stop() == 0
    assert verify(db).returncode == 0
    records = export_jsonl(db)
    assert reference_verify(db) == (len(records), None)
    assert [r["kind"] for r in records] == ["decision", "decision", "approval", "approval", "decision"]
    by_hash = {r["hash"]: r for r in records}
    for response, event, advisor, comment, decision in [
            (yes, "APPROVAL_EVENT_APPROVED", "adv-yes", "fine", approved),
            (no, "APPROVAL_EVENT_REJECTED", "adv-no", "not now", rejected)]:
        rec = by_hash[response.audit_record_hash]
        assert rec["kind"] == "approval"
        assert rec["decision_id"] == decision.decision_id
        payload = rec["payload"]
        assert payload["approvalId"] == decision.approval_id and payload["decisionId"] == decision.decision_id
        assert payload["event"] == event
        assert (payload["advisorId"], payload["comment"]) == (advisor, comment)
        assert int(payload["decidedUnixNanos"]) > 0
        pending = by_hash[decision.audit_record_hash]
        assert pending["kind"] == "decision"
        assert pending["payload"]["response"]["status"] == "DECISION_STATUS_PENDING_APPROVAL"
        assert pending["payload"]["response"]["approvalId"] == decision.approval_id
    assert by_hash[untouched.audit_record_hash]["account_id"] == "trail-3"


@pytest.mark.parametrize("account", ["x" * 5000, "nul\x00inside"], ids=["5000-bytes", "nul"])
def test_an_account_id_the_trail_cannot_hold_is_invalid_argument(approvals_server, account):
    with approvals_server.client() as c:
        with pytest.raises(kf.KeelRpcError) as e:
            rebalance(c, account, "bad-account")
        pending = list_pending(c, account)
    assert e.value.code == 3 and "account_id" in e.value.message, e.value
    assert pending == [], "a pending approval exists for a decision that was never recorded nor answered"


# --------------------------------------------------------------------------- #
# Tampering and export
# --------------------------------------------------------------------------- #

@pytest.fixture(scope="module")
def small_trail(tmp_path_factory):
    """A cleanly closed trail of 8 records (7 decisions, 1 approval) and the answers."""
    workdir = tmp_path_factory.mktemp("trail")
    db = workdir / "audit.sqlite"
    server = KeelServer(workdir, db)
    try:
        with server.client() as c:
            replies = [rebalance(c, f"small-{k % 3}", f"s{k}") for k in range(6)]
            approval = decide(c, replies[0].approval_id, True, advisor="adv-s")
            replies.append(rebalance(c, "small-9", "s9"))
    finally:
        assert server.stop() == 0
    return db, replies, approval


def _copy(db: Path, to: Path) -> Path:
    """A copy through SQLite's backup API (includes whatever is still in the WAL)."""
    src, dst = sqlite3.connect(str(db)), sqlite3.connect(str(to))
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()
    return to


def test_triggers_refuse_update_and_delete(small_trail, tmp_path):
    db = _copy(small_trail[0], tmp_path / "copy.sqlite")
    con = sqlite3.connect(str(db))
    try:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            con.execute("UPDATE audit_records SET payload = X'00' WHERE sequence = 2")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            con.execute("DELETE FROM audit_records WHERE sequence = 8")
        with pytest.raises(sqlite3.DatabaseError, match="end of the chain"):
            con.execute("INSERT OR REPLACE INTO audit_records SELECT * FROM audit_records WHERE sequence = 3")
        con.rollback()
    finally:
        con.close()
    assert verify(db).returncode == 0


def _tamper(db: Path, sql: str, *args):
    con = sqlite3.connect(str(db))
    try:
        con.execute("DROP TRIGGER audit_records_no_update")
        con.execute("DROP TRIGGER audit_records_no_delete")
        con.execute(sql, args)
        con.commit()
    finally:
        con.close()


def _names_sequence(output: str, sequence: int) -> bool:
    """True when verify's output names record `sequence` as the first broken one
    (`error: <file>: record <sequence>: <reason>`)."""
    return re.search(rf"\brecord {sequence}\b", output) is not None


def test_verify_names_a_modified_payload(small_trail, tmp_path):
    original = small_trail[0]
    assert verify(original).returncode == 0
    db = _copy(original, tmp_path / "tampered.sqlite")
    con = sqlite3.connect(str(db))
    (payload,) = con.execute("SELECT payload FROM audit_records WHERE sequence = 5").fetchone()
    con.close()
    # change one byte inside the account id text of the portfolio (the payload still decodes)
    at = payload.index(b"small-")
    changed = payload[:at] + b"X" + payload[at + 1:]
    _tamper(db, "UPDATE audit_records SET payload = ? WHERE sequence = 5", changed)
    r = verify(db)
    assert r.returncode != 0, f"verify accepted a modified record:\n{r.stdout}"
    out = r.stdout + r.stderr
    assert _names_sequence(out, 5), f"verify does not name record 5:\n{out}"
    assert reference_verify(db) == (8, 5)
    assert verify(original).returncode == 0  # the original is untouched


def test_verify_names_a_deleted_record(small_trail, tmp_path):
    db = _copy(small_trail[0], tmp_path / "gap.sqlite")
    _tamper(db, "DELETE FROM audit_records WHERE sequence = ?", 3)
    r = verify(db)
    assert r.returncode != 0
    assert _names_sequence(r.stdout + r.stderr, 3), r.stdout + r.stderr
    assert reference_verify(db) == (7, 3)


def test_verify_names_a_changed_hash_link(small_trail, tmp_path):
    db = _copy(small_trail[0], tmp_path / "relinked.sqlite")
    _tamper(db, "UPDATE audit_records SET hash = ? WHERE sequence = 6", "f" * 64)
    r = verify(db)
    assert r.returncode != 0
    assert _names_sequence(r.stdout + r.stderr, 6), r.stdout + r.stderr
    assert reference_verify(db) == (8, 6)


def test_server_refuses_to_extend_a_tampered_tail(small_trail, tmp_path):
    """docs/AUDIT.md: a writer does not open a file whose last record does not check out."""
    workdir = tmp_path / "w"
    workdir.mkdir()
    db = _copy(small_trail[0], workdir / "audit.sqlite")
    _tamper(db, "UPDATE audit_records SET account_id = 'someone-else' WHERE sequence = 8")
    with pytest.raises(AssertionError, match="did not start"):
        KeelServer(workdir, db)


def test_export_jsonl_matches_the_answers(small_trail):
    db, replies, approval = small_trail
    records = export_jsonl(db)
    assert [r["sequence"] for r in records] == list(range(1, 9))
    assert [r["hash"] for r in records] == [x.audit_record_hash for x in replies[:6]] + \
        [approval.audit_record_hash, replies[6].audit_record_hash]
    assert [r["decision_id"] for r in records if r["kind"] == "decision"] == [x.decision_id for x in replies]
    for r in records:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", r["recorded_at"]), r["recorded_at"]
        assert HEX64.fullmatch(r["hash"]) and HEX64.fullmatch(r["prev_hash"])


def test_export_csv_has_a_header_and_the_same_records(small_trail):
    db = small_trail[0]
    records = export_jsonl(db)
    text = export(db, "csv")
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows[0] == ["sequence", "recorded_at", "kind", "account_id", "decision_id", "prev_hash", "hash", "payload"]
    body = rows[1:]
    assert len(body) == len(records)
    for row, rec in zip(body, records):
        assert (int(row[0]), row[1], row[2], row[3], row[4], row[5], row[6]) == (
            rec["sequence"], rec["recorded_at"], rec["kind"], rec["account_id"], rec["decision_id"],
            rec["prev_hash"], rec["hash"])
        assert json.loads(row[7]) == rec["payload"]


def test_export_since(small_trail):
    db = small_trail[0]
    everything = export_jsonl(db)
    assert export_jsonl(db, since="2000-01-01") == everything
    assert export_jsonl(db, since="2200-01-01") == []
    csv_future = list(csv.reader(io.StringIO(export(db, "csv", since="2200-01-01"), newline="")))
    assert len(csv_future) == 1 and csv_future[0][0] == "sequence"  # the header only
    # from the time of the fourth record on: the records from the fourth on
    cut = everything[3]["recorded_at"]
    assert [r["sequence"] for r in export_jsonl(db, since=cut)] == \
        [r["sequence"] for r in everything if r["recorded_at"] >= cut]
    bad = keel_audit("export", "--db", str(db), "--since", "yesterday")
    assert bad.returncode != 0 and not bad.stdout.strip(), bad.stdout


def test_verify_refuses_what_is_not_an_audit_log(tmp_path):
    missing = verify(tmp_path / "nope.sqlite")
    assert missing.returncode != 0
    assert not (tmp_path / "nope.sqlite").exists(), "verify created the file it was asked to check"
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database" * 100)
    assert verify(junk).returncode != 0
    other = tmp_path / "other.sqlite"
    con = sqlite3.connect(str(other))
    con.execute("CREATE TABLE t (x)")
    con.commit()
    con.close()
    r = verify(other)
    assert r.returncode != 0 and "audit" in (r.stdout + r.stderr).lower()
