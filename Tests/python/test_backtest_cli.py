"""`keel backtest` and `keel train policy` end to end through the CLI.

The reference figures of ../shared/data/README.md are checked when the data is
present (CI has it beside the checkout); everything else uses small synthetic
files written here.
"""
from __future__ import annotations

import json
import os
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
KEEL_BIN = os.environ.get("KEEL_BIN")
if KEEL_BIN:
    KEEL_BIN = str(Path(KEEL_BIN).resolve())
pytestmark = pytest.mark.skipif(not KEEL_BIN or not Path(KEEL_BIN).exists(),
                                reason="KEEL_BIN is not set to a built keel binary (make test sets it)")
DATA = Path(os.environ.get("KEEL_DATA_DIR", REPO.parent / "shared" / "data"))
REQUIRED = {"name", "final_wealth", "cagr", "volatility", "sharpe", "max_drawdown", "turnover", "costs"}


def keel(*args, cwd=None, check=True):
    p = subprocess.run([KEEL_BIN, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(f"keel {' '.join(map(str, args))} exited {p.returncode}: {p.stderr}")
    return p


def backtest_json(*args):
    return json.loads(keel("backtest", *args, "--format", "json").stdout)


def synthetic_relatives(path: Path, assets=5, periods=400, seed=1):
    rng = np.random.default_rng(seed)
    x = np.exp(0.0003 + 0.015 * rng.standard_normal((periods, assets)))
    lines = [",".join(f"a{i}" for i in range(assets))] + [",".join(repr(float(v)) for v in row) for row in x]
    path.write_text("\n".join(lines) + "\n")
    return x


# --------------------------------------------------------------------------- #
# Reference figures (real data, when present)
# --------------------------------------------------------------------------- #

REFERENCE = [
    ("nyse_o.csv", 27.0752, 14.4973, 54.1404),
    ("nyse_n.csv", 31.5517, 18.0565, 83.5067),
    ("djia.csv", 0.8127, 0.7644, 1.1884),
]


@pytest.mark.parametrize("name,ucrp,ubah,best", REFERENCE)
def test_reference_figures(name, ucrp, ubah, best):
    path = DATA / name
    if not path.exists():
        pytest.skip(f"{path} is not present")
    doc = backtest_json("--data", path, "--strategy", "ucrp", "--strategy", "buy-and-hold",
                        "--strategy", "best-asset", "--cost-bps", "0")
    got = {s["name"]: s["final_wealth"] for s in doc["strategies"]}
    for key, want in (("ucrp", ucrp), ("buy-and-hold", ubah), ("best-asset", best)):
        assert abs(got[key] - want) / want < 1e-4, (name, key, got[key], want)


# --------------------------------------------------------------------------- #
# Synthetic data
# --------------------------------------------------------------------------- #

def test_json_document_and_arithmetic(tmp_path):
    x = synthetic_relatives(tmp_path / "s.csv")
    doc = backtest_json("--data", tmp_path / "s.csv", "--strategy", "ucrp", "--strategy", "buy-and-hold",
                        "--strategy", "calendar:21", "--strategy", "band:3%", "--cost-bps", "0")
    names = [s["name"] for s in doc["strategies"]]
    assert names == ["ucrp", "buy-and-hold", "calendar:21", "band:0.03"]
    for s in doc["strategies"]:
        assert REQUIRED <= s.keys()
    assert doc["data"]["assets"] == 5 and doc["data"]["periods"] == 400
    ucrp = np.prod(x.mean(axis=1))
    ubah = np.prod(x, axis=0).mean()
    assert abs(doc["strategies"][0]["final_wealth"] - ucrp) / ucrp < 1e-12
    assert abs(doc["strategies"][1]["final_wealth"] - ubah) / ubah < 1e-12


def test_costs_are_charged(tmp_path):
    synthetic_relatives(tmp_path / "s.csv")
    free = backtest_json("--data", tmp_path / "s.csv", "--strategy", "ucrp", "--cost-bps", "0")["strategies"][0]
    paid = backtest_json("--data", tmp_path / "s.csv", "--strategy", "ucrp", "--cost-bps", "25")["strategies"][0]
    assert paid["final_wealth"] < free["final_wealth"]
    assert paid["costs"] > 0 and free["costs"] == 0


@pytest.mark.parametrize("content,expected", [
    ("", "the file is empty"),
    ("a,b\n1,2\n3\n", "line 3: 1 cells, but the header names 2 columns"),
    ("a,b\n1,x\n", "line 2: column 2 ('b'): 'x' is not a number"),
    ("a,b\n1,-1\n", "line 2: column 2 ('b'): -1 is not > 0"),
    ("date,a\n2020-01-02,1\n2020-01-01,2\n", "line 3: column 1 (date)"),
])
def test_malformed_data_is_a_clear_error(tmp_path, content, expected):
    (tmp_path / "bad.csv").write_text(content)
    p = keel("backtest", "--data", tmp_path / "bad.csv", "--strategy", "ucrp", check=False)
    assert p.returncode == 1
    assert expected in p.stderr and "bad.csv" in p.stderr
    assert p.stdout == ""


@pytest.mark.parametrize("args,code,expected", [
    (["--strategy", "momentum"], 1, "unknown strategy"),
    (["--strategy", "asset:zzz"], 1, "unknown column 'zzz'"),
    (["--strategy", "policy:/nonexistent.onnx"], 1, "/nonexistent.onnx"),
    (["--strategy", "ucrp", "--cost-bps=-3"], 1, "--cost-bps"),
    (["--strategy", "ucrp", "--from", "300", "--to", "100"], 1, "needs at least two rows"),
    (["--strategy", "ucrp", "--stress", "meteor"], 1, "unknown scenario"),
    (["--strategy", "ucrp", "--from", "100", "--to", "200", "--stress", "crash@250"], 1,
     "row 250 is outside the backtest window 100..<200"),
    ([], 64, "--strategy"),
])
def test_bad_arguments(tmp_path, args, code, expected):
    synthetic_relatives(tmp_path / "s.csv")
    p = keel("backtest", "--data", tmp_path / "s.csv", *args, check=False)
    assert p.returncode == code, p.stderr
    assert expected in p.stderr


def test_report_directory(tmp_path):
    synthetic_relatives(tmp_path / "s.csv", periods=200)
    policy = REPO / "models" / "policy" / "1" / "model.onnx"
    keel("backtest", "--data", tmp_path / "s.csv", "--strategy", "ucrp", "--strategy", f"policy:{policy}",
         "--cost-bps", "10", "--report", tmp_path / "rep")
    files = {p.name for p in (tmp_path / "rep").iterdir()}
    assert {"report.json", "README.md", "equity.svg", "drawdown.svg", "weights-2.svg"} <= files
    for svg in (tmp_path / "rep").glob("*.svg"):
        root = ET.parse(svg).getroot()
        assert root.tag.endswith("svg")
    doc = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert doc["strategies"][1]["name"].startswith("policy:")


def test_stress_crash(tmp_path):
    synthetic_relatives(tmp_path / "s.csv", periods=500)
    doc = backtest_json("--data", tmp_path / "s.csv", "--strategy", "buy-and-hold", "--strategy", "ucrp",
                        "--stress", "crash@200")
    s = doc["stress"]
    assert s["scenario"] == "crash@200" and s["event_row"] == 200
    hold, ucrp = s["outcomes"]
    assert abs(hold["event_return"] + 0.2) < 1e-9 and abs(ucrp["event_return"] + 0.2) < 1e-9
    assert abs(hold["trading_effect"]) < 1e-12


def test_repeat_reports_timing(tmp_path):
    synthetic_relatives(tmp_path / "s.csv")
    doc = backtest_json("--data", tmp_path / "s.csv", "--strategy", "ucrp", "--repeat", "3")
    t = doc["timing"]
    assert t["repeat"] == 3 and t["run_ms_min"] <= t["run_ms_median"] and t["load_ms"] > 0


# --------------------------------------------------------------------------- #
# Training: champion/challenger, warm start
# --------------------------------------------------------------------------- #

TINY = ["--folds", "1", "--train-blocks", "1", "--population", "4", "--segment", "30", "--hidden", "4",
        "--evaluate-every", "1"]


def test_train_publishes_then_refuses_an_equal_challenger(tmp_path):
    synthetic_relatives(tmp_path / "a.csv", assets=4, periods=240, seed=2)
    models = tmp_path / "models"
    first = keel("train", "policy", "--data", tmp_path / "a.csv", "--models", models, "--out", tmp_path / "out1",
                 "--generations", "2", *TINY)
    assert "published as" in first.stdout
    model = models / "policy" / "1" / "model.onnx"
    assert model.exists() and (models / "policy" / "1" / "REPORT.md").exists()
    report = (models / "policy" / "1" / "REPORT.md").read_text()
    assert "walk-forward" in report and "| 1 | a.csv |" in report
    inspect = json.loads(keel("model", "inspect", model, "--format", "json").stdout)
    meta = inspect["metadata"]
    assert meta["keel.kind"] == "policy" and meta["keel.version"] == "1"
    training = json.loads(meta["keel.training"])
    assert training["folds"][0]["windows"][0]["data"] == "a.csv"
    assert "hyperparameters" in training and training["data"][0]["sha256"]

    # The same run again: its model is the champion's twin, so it does not beat it.
    again = keel("train", "policy", "--data", tmp_path / "a.csv", "--models", models, "--out", tmp_path / "out2",
                 "--generations", "2", *TINY, check=False)
    assert again.returncode == 3, again.stderr
    assert "does not beat the current v1" in again.stderr
    assert not (models / "policy" / "2").exists()
    assert (tmp_path / "out2" / "model.onnx").read_bytes() != b""

    # A current model that cannot be read: the new files are still written, publishing needs --force.
    model.write_bytes(b"not a model")
    broken = keel("train", "policy", "--data", tmp_path / "a.csv", "--models", models, "--out", tmp_path / "out3",
                  "--generations", "2", *TINY, check=False)
    assert broken.returncode == 3, broken.stderr
    assert "the current v1 could not be scored" in broken.stderr and "--force" in broken.stderr
    assert (tmp_path / "out3" / "model.onnx").stat().st_size > 0 and not (models / "policy" / "2").exists()


def test_train_is_deterministic(tmp_path):
    synthetic_relatives(tmp_path / "a.csv", assets=4, periods=240, seed=3)
    for k in (1, 2):
        keel("train", "policy", "--data", tmp_path / "a.csv", "--out", tmp_path / f"o{k}", "--no-publish",
             "--generations", "2", *TINY)
    import onnx
    from onnx import numpy_helper
    a, b = (onnx.load(str(tmp_path / f"o{k}" / "model.onnx")) for k in (1, 2))
    wa = {t.name: numpy_helper.to_array(t) for t in a.graph.initializer}
    wb = {t.name: numpy_helper.to_array(t) for t in b.graph.initializer}
    assert wa.keys() == wb.keys() == {"fc1.weight", "fc1.bias", "head.weight", "head.bias"}
    for k in wa:
        assert np.array_equal(wa[k], wb[k]), k
    onnx.checker.check_model(a, full_check=True)


def test_warm_start(tmp_path):
    synthetic_relatives(tmp_path / "a.csv", assets=4, periods=240, seed=4)
    shipped = REPO / "models" / "policy" / "1" / "model.onnx"
    p = keel("train", "policy", "--data", tmp_path / "a.csv", "--out", tmp_path / "o", "--no-publish",
             "--warm-start", shipped, "--generations", "1", *TINY)
    assert p.returncode == 0
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    p = keel("train", "policy", "--data", tmp_path / "a.csv", "--out", tmp_path / "o", "--no-publish",
             "--warm-start", bad, "--generations", "1", *TINY, check=False)
    assert p.returncode == 1 and "cannot warm-start" in p.stderr


# --------------------------------------------------------------------------- #
# Stress: the shipped policy does not amplify a crash through its own trading
# --------------------------------------------------------------------------- #

def latest_policy() -> Path:
    versions = [int(d.name) for d in (REPO / "models" / "policy").iterdir() if d.name.isdigit()]
    return REPO / "models" / "policy" / str(max(versions)) / "model.onnx"


def crash_outcomes(data: Path, *window):
    doc = backtest_json("--data", data, "--strategy", f"policy:{latest_policy()}", "--strategy", "ucrp",
                        "--strategy", "buy-and-hold", "--cost-bps", "10", "--stress", "crash", *window)
    return {o["name"].split(":")[0]: o for o in doc["stress"]["outcomes"]}


def assert_no_amplification(o):
    policy, ucrp = o["policy"], o["ucrp"]
    # No leverage: the crash day costs the policy at most the market's 20 %.
    assert policy["event_return"] >= -0.2 - 1e-9
    # Its trades through the recovery do no worse than daily rebalancing's (1 point of slack).
    assert policy["trading_effect"] >= min(ucrp["trading_effect"], 0.0) - 0.01, (policy, ucrp)
    assert policy["fall_below_event"] <= o["buy-and-hold"]["fall_below_event"] + 0.02


def test_shipped_policy_does_not_amplify_a_crash_synthetic(tmp_path):
    synthetic_relatives(tmp_path / "s.csv", assets=8, periods=700, seed=7)
    assert_no_amplification(crash_outcomes(tmp_path / "s.csv"))


@pytest.mark.parametrize("name,window", [("nyse_o.csv", ("--from", "4800")), ("djia.csv", ())])
def test_shipped_policy_does_not_amplify_a_crash_real_data(name, window):
    path = DATA / name
    if not path.exists():
        pytest.skip(f"{path} is not present")
    assert_no_amplification(crash_outcomes(path, *window))


def test_train_liquidity_small(tmp_path):
    p = keel("train", "liquidity", "--models", tmp_path / "models", "--out", tmp_path / "out", "--accounts", "4",
             "--evaluation-accounts", "2", "--days", "700", "--epochs", "5", "--origin-every", "60")
    assert "published as" in p.stdout and "seasonal naive" in p.stdout
    model = tmp_path / "models" / "liquidity" / "1" / "model.onnx"
    meta = json.loads(keel("model", "inspect", model, "--format", "json").stdout)["metadata"]
    assert meta["keel.kind"] == "liquidity" and meta["keel.features"].startswith("horizon,business_day")
    assert meta["keel.buffer_calibration"].startswith("0.5=")
    report = (tmp_path / "models" / "liquidity" / "1" / "REPORT.md").read_text()
    assert "The data is synthetic" in report
    bad = keel("train", "liquidity", "--out", tmp_path / "o", "--no-publish", "--horizon-bogus", check=False)
    assert bad.returncode == 64
    bad = keel("train", "liquidity", "--out", tmp_path / "o", "--no-publish", "--days", "300", check=False)
    assert bad.returncode == 1 and "--days" in bad.stderr


def synthetic_prices(path, assets=4, rows=400, seed=5):
    """A dated prices file (one asset listing late), seeded log-normal walks."""
    rng = np.random.default_rng(seed)
    prices = 50 * np.exp(np.cumsum(rng.normal(0.0003, 0.012, size=(rows, assets)), axis=0))
    days = np.datetime64("2010-01-04") + np.arange(rows)
    lines = ["date," + ",".join(f"S{i}" for i in range(assets))]
    for r in range(rows):
        cells = ["" if (i == assets - 1 and r < 60) else f"{prices[r, i]:.6f}" for i in range(assets)]
        lines.append(f"{days[r]}," + ",".join(cells))
    path.write_text("\n".join(lines) + "\n")


def test_train_tax_loss_small(tmp_path):
    synthetic_prices(tmp_path / "p.csv")
    p = keel("train", "tax-loss", "--data", tmp_path / "p.csv", "--models", tmp_path / "models",
             "--out", tmp_path / "out", "--epochs", "30")
    assert "published as" in p.stdout and "momentum" in p.stdout and "rank IC" in p.stdout
    model = tmp_path / "models" / "tax_loss" / "1" / "model.onnx"
    meta = json.loads(keel("model", "inspect", model, "--format", "json").stdout)["metadata"]
    assert meta["keel.kind"] == "tax_loss"
    assert meta["keel.features"] == "ret_5,ret_21,ret_63,ret_126,vol_21,vol_63,drawdown_126"
    report = (tmp_path / "models" / "tax_loss" / "1" / "REPORT.md").read_text()
    assert "Held-back test periods" in report and "p.csv" in report
    bad = keel("train", "tax-loss", "--out", tmp_path / "o", "--no-publish", check=False)
    assert bad.returncode == 1 and "--data" in bad.stderr
    bad = keel("train", "tax-loss", "--data", tmp_path / "p.csv", "--out", tmp_path / "o", "--every", "0", check=False)
    assert bad.returncode == 1 and "--every" in bad.stderr
    (tmp_path / "again").mkdir()
    (tmp_path / "again" / "p.csv").write_text((tmp_path / "p.csv").read_text())
    bad = keel("train", "tax-loss", "--data", tmp_path / "p.csv", "--data", tmp_path / "again" / "p.csv",
               "--out", tmp_path / "o", check=False)
    assert bad.returncode == 1 and "have the same file name 'p.csv'" in bad.stderr


def test_shipped_tax_loss_model_matches_onnxruntime(tmp_path):
    """The shipped forecaster is standard ONNX: onnxruntime and Keel's C core agree on it."""
    ort = pytest.importorskip("onnxruntime")
    path = REPO / "models" / "tax_loss" / "1" / "model.onnx"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).normal(0, 0.05, size=(5, 7)).astype(np.float32)
    (reference,) = session.run(None, {"features": x})
    assert reference.shape == (5, 1)
    names = "ret_5,ret_21,ret_63,ret_126,vol_21,vol_63,drawdown_126"
    (tmp_path / "x.csv").write_text(names + "\n" + "\n".join(",".join(repr(float(v)) for v in row) for row in x) + "\n")
    ours = [float(line) for line in keel("infer", "--model", path, "--input", tmp_path / "x.csv").stdout.split()]
    assert np.allclose(ours, reference[:, 0], atol=1e-6)


def test_tax_alpha_cli(tmp_path):
    synthetic_prices(tmp_path / "p.csv", assets=6, rows=900, seed=9)
    doc = json.loads(keel("tax-alpha", "--data", tmp_path / "p.csv", "--format", "json").stdout)
    assert doc["wash_sale_violations"] == 0 and doc["harvests"] > 0
    assert doc["contributed"] == 100_000 + 1_000 * 29   # 2010-01-04 .. 2012-06-21: 29 new months
    assert doc["losses_harvested"]["short_term"] > 0
    assert doc["after_tax_value"]["harvesting"] > 0 and doc["after_tax_value"]["baseline"] > 0
    assert doc["tax_alpha"] == pytest.approx((doc["after_tax_value"]["harvesting"] / doc["after_tax_value"]["baseline"])
                                             ** (1 / doc["years"]) - 1)
    table = keel("tax-alpha", "--data", tmp_path / "p.csv", "--unlimited-outside-gains").stdout
    assert "tax alpha:" in table and "wash-sale violations (independent audit of the trade log): 0" in table
    bad = keel("tax-alpha", "--data", tmp_path / "p.csv", "--short-term-rate", "2", check=False)
    assert bad.returncode == 1 and "--short-term-rate must be within 0...1" in bad.stderr
    bad = keel("tax-alpha", "--data", tmp_path / "p.csv", "--from", "2031-01-01", check=False)
    assert bad.returncode == 1 and "--from '2031-01-01'" in bad.stderr
    (tmp_path / "r.csv").write_text("A,B\n1.0,1.1\n1.2,0.9\n")
    bad = keel("tax-alpha", "--data", tmp_path / "r.csv", check=False)
    assert bad.returncode == 1 and "needs dated prices" in bad.stderr
