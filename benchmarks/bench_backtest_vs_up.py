#!/usr/bin/env python3
"""Backtest speed: `keel backtest` vs universal-portfolios (PyPI), UCRP on NYSE(O).

Data: a CSV of daily PRICE RELATIVES x_t = p_t / p_(t-1) (a header of asset names,
one row per period; NYSE(O): 36 assets, 5651 periods). Keel reads that file
itself. universal-portfolios wants prices, so the script builds them in memory as
the cumulative product of the relatives under a first row of 1.0 (no file is
written). Both then hold 1/N and rebalance back to 1/N before every period.

Timed, with time.perf_counter, a warm-up and then --reps repetitions (median, min):

  universal-portfolios  `CRP().run(prices)` alone (uniform CRP, data already in a
                        DataFrame); also run() plus reading the figures Keel's JSON
                        reports (total_wealth, volatility, sharpe, max_drawdown,
                        turnover), and `pd.read_csv` + building the prices.
  Keel                  `keel backtest --data FILE --strategy ucrp --cost-bps 0
                        --format json --repeat N`: Keel runs the backtest N times in
                        one process and reports `timing.run_ms_median`,
                        `timing.run_ms_min` and `timing.load_ms` (CSV parse, once).
  Whole processes       wall time of `keel backtest ... --repeat 1` and of a Python
                        process doing import universal + read CSV + run + print,
                        --process-reps times each.

Final wealth is checked: against a numpy reference prod_t(x_t . 1/N), and, on
nyse_o.csv, against the published UCRP figure 27.0752 (1e-4 relative).

Costs (--cost-bps X, optional, X > 0): both tools are run once more at X basis
points per side and their final wealths printed next to numpy re-computations of
each tool's own convention, so a gap can be attributed to conventions:

  universal-portfolios 0.4.17: `result.fee = X / 1e4` (a fraction of traded value,
  per side; the AlgoResult docstring calls it "a percentage as a one-round fee").
  universal/result.py, AlgoResult._recalculate():
      self.fees = self._to_rebalance().abs() * self.fee ; self.r -= self.fees.sum(axis=1)
  with universal/tools.py, to_rebalance(B, X):  B - hold_B.shift(1), where
  hold_B = (B * X).div(E, axis=0) and E = (B * (X - 1)).sum(axis=1) + 1 (the
  previous period's weights after drifting with its price relatives). So, per period t,
      r_t = b_t . x_t  -  fee * sum_i |b_t,i - b_(t-1),i x_(t-1),i / (b_(t-1) . x_(t-1))|
  i.e. fee times the sum of absolute weight changes (buys + sells), SUBTRACTED from
  the period's gross return (additive, charged on the wealth before the period's
  move), weights not reduced by the cost. The first period has no previous weights
  (NaN, skipped by the sum): the initial purchase is free; there is no final sale.
  (AlgoResult._fees(), a different formula, is not used by _recalculate.)
  AlgoResult.turnover = sum of |weight changes| over all rows / (rows / 252): two-sided
  (buys + sells), per year, with rows = periods + 1 (the first row of prices).

  Keel (Sources/KeelResearch/Backtest.swift, Backtester.run): trades pay
  --cost-bps / 1e4 on their notional, per side; the rebalance solves
  W' = W - c * sum_i |W' b_i - h_i| (the cost comes out of the traded wealth), then
  W' grows by b . x. Initial purchase free. Turnover in the JSON is ONE-way
  (half the traded notional over the value) per year, over `periods` rows.

  The two differ only at second order: per period, UP's factor is (b.x - c*T) and
  Keel's about (1 - c*T) * b.x (T = sum of |weight changes|).

Usage:
  .venv/bin/python benchmarks/bench_backtest_vs_up.py [DATA] [--reps 20] [--keel-repeat 20]
      [--keel-bin PATH] [--process-reps 5] [--cost-bps X] [--json FILE] [--skip-keel]
  KEEL_BIN=/path/to/keel .venv/bin/python benchmarks/bench_backtest_vs_up.py

DATA defaults to ../shared/data/nyse_o.csv relative to the repository root; the Keel
binary to $KEEL_BIN, else .build-release/release/keel (swift build -c release
--build-path .build-release). Needs scripts/requirements-bench.txt installed.
"""
from __future__ import annotations

import os

# One thread for numpy/BLAS (Keel's backtest is single-threaded), before numpy loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from importlib import metadata  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = (ROOT / ".." / "shared" / "data" / "nyse_o.csv").resolve()
DEFAULT_KEEL = ROOT / ".build-release" / "release" / "keel"

# Published figures for NYSE(O) without costs (checked when the file is nyse_o.csv).
PUBLISHED = {"nyse_o.csv": {"ucrp": 27.0752, "buy-and-hold": 14.4973}}
WEALTH_RTOL = 1e-4


# --------------------------------------------------------------------------- helpers

def load_relatives(path: Path) -> pd.DataFrame:
    x = pd.read_csv(path)
    if not all(np.issubdtype(t, np.number) for t in x.dtypes):
        raise SystemExit(f"{path}: expected only numeric price-relative columns (a header of asset names); "
                         "files with a date column are not supported by this benchmark")
    if x.isna().any().any():
        raise SystemExit(f"{path}: missing values; this benchmark needs a complete matrix of relatives")
    return x


def relatives_to_prices(x: pd.DataFrame) -> pd.DataFrame:
    """Prices p_0 = 1, p_t = p_(t-1) x_t: one more row than the relatives."""
    first = pd.DataFrame(np.ones((1, x.shape[1])), columns=x.columns)
    return pd.concat([first, x], ignore_index=True).cumprod()


def timed(fn, reps: int, warmup: int = 1) -> tuple[list[float], object]:
    out = None
    for _ in range(warmup):
        out = fn()
    ms = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        ms.append((time.perf_counter() - t0) * 1e3)
    return ms, out


def summary(ms: list[float]) -> dict:
    return {"median_ms": statistics.median(ms), "min_ms": min(ms), "n": len(ms)}


def rel_err(a: float, b: float) -> float:
    return abs(a / b - 1.0)


def ucrp_reference(x: np.ndarray) -> float:
    return float(np.prod(x.mean(axis=1)))


def up_fee_reference(x: np.ndarray, fee: float) -> float:
    """universal-portfolios' convention (see the module docstring), UCRP."""
    m = x.shape[1]
    b = np.full(m, 1.0 / m)
    gross = x @ b
    drift = (b * x) / gross[:, None]
    changes = np.r_[0.0, np.abs(b - drift[:-1]).sum(axis=1)]
    return float(np.prod(gross - fee * changes))


def keel_fee_reference(x: np.ndarray, c: float) -> float:
    """Keel's convention (Backtester.run), UCRP on relatives: W' = W - c sum|W' b - h|."""
    m = x.shape[1]
    b = np.full(m, 1.0 / m)
    h = b.copy()  # holdings' values at the first row: 1/N bought without cost, W = 1
    for t in range(x.shape[0]):
        w = h.sum()
        after = w
        for _ in range(100):
            nxt = w - c * np.abs(after * b - h).sum()
            if abs(nxt - after) <= 1e-15 * w:
                after = nxt
                break
            after = nxt
        h = after * b * x[t]
    return float(h.sum())


# --------------------------------------------------------------------------- universal-portfolios

def bench_up(prices: pd.DataFrame, data: Path, reps: int, process_reps: int, ref: float) -> dict:
    from universal import algos  # noqa: PLC0415

    m = prices.shape[1]

    def run():
        return algos.CRP().run(prices)  # b=None: uniform weights, the package's UCRP

    run_ms, result = timed(run, reps)
    wealth = float(result.total_wealth)

    def run_and_figures():
        r = algos.CRP().run(prices)
        return (r.total_wealth, r.volatility, r.sharpe, r.max_drawdown, r.turnover)

    fig_ms, _ = timed(run_and_figures, reps)

    # Explicit weights (the other CRP code path): same wealth expected.
    wealth_b = float(algos.CRP(np.full(m, 1.0 / m)).run(prices).total_wealth)

    load_ms, _ = timed(lambda: relatives_to_prices(pd.read_csv(data)), reps)

    # Sanity, not timed: uniform buy-and-hold.
    bah = float(algos.BAH().run(prices).total_wealth)
    pub = PUBLISHED.get(data.name, {}).get("buy-and-hold")
    print(f"  (not timed) BAH() final wealth {bah:.6f}" + (f", published {pub}: rel. err {rel_err(bah, pub):.1e}" if pub else ""))

    out = {"run": summary(run_ms), "run_and_figures": summary(fig_ms), "load": summary(load_ms),
           "final_wealth": wealth, "final_wealth_explicit_b": wealth_b, "reference": ref, "bah_final_wealth": bah}

    if process_reps > 0:
        code = ("import sys, numpy as np, pandas as pd\n"
                "from universal import algos\n"
                "x = pd.read_csv(sys.argv[1])\n"
                "p = pd.concat([pd.DataFrame(np.ones((1, x.shape[1])), columns=x.columns), x],"
                " ignore_index=True).cumprod()\n"
                "print(algos.CRP().run(p).total_wealth)\n")
        walls = []
        for k in range(process_reps + 1):  # the first is a warm-up (file cache)
            t0 = time.perf_counter()
            p = subprocess.run([sys.executable, "-c", code, str(data)], capture_output=True, text=True, timeout=600)
            wall = (time.perf_counter() - t0) * 1e3
            if p.returncode != 0:
                print(f"  (universal-portfolios process failed: {p.stderr.strip()[-400:]})")
                break
            if k > 0:
                walls.append(wall)
        if walls:
            out["process"] = summary(walls)
    return out


# --------------------------------------------------------------------------- Keel

class KeelUnavailable(Exception):
    pass


def keel_cmd(keel: Path, data: Path, cost_bps: float, repeat: int) -> list[str]:
    cmd = [str(keel), "backtest", "--data", str(data), "--strategy", "ucrp",
           "--cost-bps", f"{cost_bps:g}", "--format", "json"]
    if repeat > 1:
        cmd += ["--repeat", str(repeat)]
    return cmd


def run_keel(cmd: list[str]) -> tuple[dict, float]:
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    except OSError as e:
        raise KeelUnavailable(f"could not start {cmd[0]}: {e}") from e
    wall = (time.perf_counter() - t0) * 1e3
    if p.returncode != 0:
        err = (p.stderr.strip() or p.stdout.strip())[-600:]
        hint = ""
        if "Unknown option" in err or "Unexpected argument" in err or ("backtest" in err.lower() and "unknown" in err.lower()):
            hint = "\n  (this keel binary predates `keel backtest` / `--repeat`: rebuild it)"
        raise KeelUnavailable(f"`{shlex.join(cmd)}` exited with {p.returncode}:\n  {err}{hint}")
    try:
        doc = json.loads(p.stdout)
    except json.JSONDecodeError as e:
        raise KeelUnavailable(f"`{shlex.join(cmd)}` did not print JSON ({e}): {p.stdout[:300]!r}") from e
    return doc, wall


def keel_strategy(doc: dict, name: str = "ucrp") -> dict:
    for s in doc.get("strategies", []):
        if s.get("name") == name:
            return s
    raise KeelUnavailable(f"keel's JSON has no strategy named {name!r}: {[s.get('name') for s in doc.get('strategies', [])]}")


def keel_version(keel: Path) -> str:
    try:
        p = subprocess.run([str(keel), "--version"], capture_output=True, text=True, timeout=30)
        return p.stdout.strip() or p.stderr.strip() or "?"
    except OSError:
        return "?"


def bench_keel(keel: Path, data: Path, repeat: int, process_reps: int, ref: float) -> dict:
    if not keel.exists():
        alt = ROOT / ".build" / "release" / "keel"
        raise KeelUnavailable(
            f"no keel binary at {keel}.\n  Build it with `swift build -c release --build-path .build-release`, or point "
            f"--keel-bin / KEEL_BIN at one" + (f" (e.g. {alt}, from `make release`)" if alt.exists() else "") + ".")
    if not os.access(keel, os.X_OK):
        raise KeelUnavailable(f"{keel} is not executable")
    out: dict = {"version": keel_version(keel)}

    cmd = keel_cmd(keel, data, 0, repeat)
    run_keel(cmd)  # warm-up: page cache, binary mapped
    doc, wall = run_keel(cmd)
    s = keel_strategy(doc)
    out["command"] = shlex.join(cmd)
    out["figures"] = {k: s.get(k) for k in ("name", "final_wealth", "cagr", "volatility", "sharpe", "max_drawdown",
                                            "turnover", "costs")}
    out["final_wealth"] = float(s["final_wealth"])
    out["reference"] = ref
    out["repeat_process_wall_ms"] = wall
    timing = doc.get("timing")
    if timing is None:
        print(f"  note: keel printed no `timing` (built without --repeat support, or --keel-repeat {repeat} <= 1); "
              "only process wall times are reported for Keel")
    else:
        out["timing"] = timing
        if timing.get("repeat") != repeat:
            print(f"  note: keel reports repeat={timing.get('repeat')}, asked for {repeat}")

    if process_reps > 0:
        cmd1 = keel_cmd(keel, data, 0, 1)
        walls = []
        for _ in range(process_reps):
            _, w = run_keel(cmd1)
            walls.append(w)
        out["process"] = summary(walls)
        out["process_command"] = shlex.join(cmd1)
    return out


# --------------------------------------------------------------------------- costs

def compare_costs(keel: Path | None, data: Path, prices: pd.DataFrame, x: np.ndarray, bps: float) -> dict:
    from universal import algos  # noqa: PLC0415

    fee = bps / 1e4
    r = algos.CRP().run(prices)
    r.fee = fee
    up = {"final_wealth": float(r.total_wealth), "turnover_two_sided_per_year": float(r.turnover),
          "reference": up_fee_reference(x, fee)}
    out = {"cost_bps": bps, "universal_portfolios": up, "keel_convention_reference": keel_fee_reference(x, fee)}
    print(f"\nAt {bps:g} bps per side (universal-portfolios: result.fee = {fee:g}; keel: --cost-bps {bps:g}):")
    print(f"  universal-portfolios final wealth {up['final_wealth']:.6f}   (numpy, its convention: {up['reference']:.6f}; "
          f"turnover {up['turnover_two_sided_per_year']:.4f}/yr two-sided = {up['turnover_two_sided_per_year'] / 2:.4f} one-way)")
    if keel is not None:
        try:
            doc, _ = run_keel(keel_cmd(keel, data, bps, 1))
            s = keel_strategy(doc)
            out["keel"] = {k: s.get(k) for k in ("final_wealth", "turnover", "costs")}
            print(f"  keel                 final wealth {float(s['final_wealth']):.6f}   (numpy, its convention: "
                  f"{out['keel_convention_reference']:.6f}; turnover {float(s['turnover']):.4f}/yr one-way, "
                  f"costs {float(s['costs']):.6f} of starting wealth)")
            print(f"  keel / universal-portfolios - 1 = {float(s['final_wealth']) / up['final_wealth'] - 1:+.3e}")
            if rel_err(float(s["final_wealth"]), out["keel_convention_reference"]) > 1e-8:
                print("  MISMATCH: keel's wealth differs from the numpy re-computation of its own convention")
        except KeelUnavailable as e:
            print(f"  keel: unavailable ({e})")
            print(f"  keel (numpy, its convention): {out['keel_convention_reference']:.6f}")
    else:
        print(f"  keel (numpy, its convention; binary not run): {out['keel_convention_reference']:.6f}")
    return out


# --------------------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", nargs="?", default=str(DEFAULT_DATA), help=f"price-relatives CSV (default {DEFAULT_DATA})")
    ap.add_argument("--reps", type=int, default=20, help="timed repetitions for universal-portfolios (after 1 warm-up)")
    ap.add_argument("--keel-repeat", type=int, default=None, help="keel --repeat N (default: --reps)")
    ap.add_argument("--keel-bin", default=os.environ.get("KEEL_BIN", str(DEFAULT_KEEL)),
                    help="keel binary (default $KEEL_BIN, else .build-release/release/keel)")
    ap.add_argument("--process-reps", type=int, default=5, help="whole-process wall-time runs per tool (0: skip)")
    ap.add_argument("--cost-bps", type=float, default=None, help="also compare final wealth at this cost, bps per side")
    ap.add_argument("--skip-keel", action="store_true", help="only the universal-portfolios side")
    ap.add_argument("--json", help="write all measurements to this file")
    args = ap.parse_args()
    keel_repeat = args.keel_repeat or args.reps
    data = Path(args.data).resolve()
    keel = Path(args.keel_bin)
    if not data.exists():
        raise SystemExit(f"no data file at {data}")

    x_df = load_relatives(data)
    x = x_df.to_numpy()
    prices = relatives_to_prices(x_df)
    ref = ucrp_reference(x)
    published = PUBLISHED.get(data.name, {}).get("ucrp")

    versions = {"python": platform.python_version(), "numpy": np.__version__, "pandas": pd.__version__,
                "universal-portfolios": metadata.version("universal-portfolios"),
                "platform": platform.platform(), "cpus": os.cpu_count()}
    exe = Path(sys.executable)
    try:
        exe = exe.relative_to(Path.cwd())
    except ValueError:
        pass
    command = shlex.join([str(exe), *sys.argv])
    print(f"data: {data} ({x.shape[1]} assets, {x.shape[0]} periods); prices for universal-portfolios: "
          f"{prices.shape[0]} rows (first = 1)")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    print(f"numpy reference UCRP final wealth: {ref:.6f}"
          + (f" (published {published}: rel. err {rel_err(ref, published):.1e})" if published else ""))

    results: dict = {"data": str(data), "assets": x.shape[1], "periods": x.shape[0], "versions": versions,
                     "command": command}
    ok = True

    print(f"\nuniversal-portfolios: CRP().run(prices), 1 warm-up + {args.reps} runs ...")
    up = bench_up(prices, data, args.reps, args.process_reps, ref)
    results["universal_portfolios"] = up
    print(f"  run():            median {up['run']['median_ms']:.2f} ms, min {up['run']['min_ms']:.2f} ms")
    print(f"  run() + figures:  median {up['run_and_figures']['median_ms']:.2f} ms, min {up['run_and_figures']['min_ms']:.2f} ms")
    print(f"  read_csv+prices:  median {up['load']['median_ms']:.2f} ms, min {up['load']['min_ms']:.2f} ms")
    if "process" in up:
        print(f"  whole process:    median {up['process']['median_ms']:.0f} ms, min {up['process']['min_ms']:.0f} ms")
    print(f"  final wealth {up['final_wealth']:.6f} (CRP(b=1/N): {up['final_wealth_explicit_b']:.6f}); "
          f"vs numpy {rel_err(up['final_wealth'], ref):.1e}"
          + (f", vs published {published}: {rel_err(up['final_wealth'], published):.1e}" if published else ""))
    if rel_err(up["final_wealth"], ref) > 1e-9 or (published and rel_err(up["final_wealth"], published) > WEALTH_RTOL):
        print("  MISMATCH: universal-portfolios' UCRP wealth is off")
        ok = False

    kl = None
    keel_ok = False
    if not args.skip_keel:
        print(f"\nkeel: {shlex.join(keel_cmd(keel, data, 0, keel_repeat))} ...")
        try:
            kl = bench_keel(keel, data, keel_repeat, args.process_reps, ref)
            results["keel"] = kl
            keel_ok = True
            t = kl.get("timing")
            if t:
                print(f"  in-process run:   median {t['run_ms_median']:.3f} ms, min {t['run_ms_min']:.3f} ms "
                      f"over {t['repeat']} runs; load {t['load_ms']:.2f} ms")
            print(f"  process, --repeat {keel_repeat}: {kl['repeat_process_wall_ms']:.0f} ms wall")
            if "process" in kl:
                print(f"  whole process:    median {kl['process']['median_ms']:.1f} ms, min {kl['process']['min_ms']:.1f} ms")
            print(f"  final wealth {kl['final_wealth']:.6f}; vs numpy {rel_err(kl['final_wealth'], ref):.1e}"
                  + (f", vs published {published}: {rel_err(kl['final_wealth'], published):.1e}" if published else ""))
            print("  figures: " + ", ".join(f"{k} {v}" for k, v in kl["figures"].items()))
            if rel_err(kl["final_wealth"], ref) > 1e-9 or (published and rel_err(kl["final_wealth"], published) > WEALTH_RTOL):
                print("  MISMATCH: keel's UCRP wealth is off")
                ok = False
        except KeelUnavailable as e:
            print(f"  KEEL NOT MEASURED: {e}")
            print("  (the universal-portfolios numbers above stand on their own)")
            results["keel"] = {"unavailable": str(e)}

    if args.cost_bps is not None and args.cost_bps > 0:
        results["costs"] = compare_costs(keel if keel_ok else None, data, prices, x, args.cost_bps)

    # ---- Markdown for benchmarks/RESULTS.md
    upv = versions["universal-portfolios"]
    rows = [
        (f"universal-portfolios {upv}", "`CRP().run(prices)`, data in memory", up["run"], up["final_wealth"]),
        (f"universal-portfolios {upv}", "`run()` + total_wealth, volatility, sharpe, max_drawdown, turnover",
         up["run_and_figures"], None),
        (f"universal-portfolios {upv}", "`pd.read_csv` + prices (cumprod)", up["load"], None),
    ]
    if "process" in up:
        rows.append((f"universal-portfolios {upv}", "whole Python process: import, read CSV, run, print",
                     up["process"], None))
    if kl is not None:
        kname = f"Keel ({kl['version']})"
        t = kl.get("timing")
        if t:
            rows.append((kname, f"UCRP backtest in-process (`timing.run_ms_*`, --repeat {t['repeat']})",
                         {"median_ms": t["run_ms_median"], "min_ms": t["run_ms_min"]}, kl["final_wealth"]))
            rows.append((kname, "CSV load (`timing.load_ms`, once per process)",
                         {"median_ms": t["load_ms"], "min_ms": None}, None))
        if "process" in kl:
            rows.append((kname, "whole `keel backtest` process (--repeat 1), wall", kl["process"], kl["final_wealth"]))
    elif not args.skip_keel:
        rows.append(("Keel", "not measured (see above)", {"median_ms": None, "min_ms": None}, None))

    def f(v, nd=3):
        return "n/a" if v is None else f"{v:.{nd}f}"

    print("\n---- Markdown (benchmarks/RESULTS.md) ----\n")
    print(f"Command: `{command}`\n")
    print(f"Data: `{data.name}`, {x.shape[1]} assets, {x.shape[0]} periods; UCRP (1/N, rebalanced every period), "
          f"no costs. Versions: Python {versions['python']}, numpy {versions['numpy']}, pandas {versions['pandas']}, "
          f"universal-portfolios {upv}" + (f", {kl['version']}" if kl else "") + ".\n")
    print("| tool | what is timed | median ms | min ms | final wealth |")
    print("|:---|:---|---:|---:|---:|")
    for tool, what, s, w in rows:
        print(f"| {tool} | {what} | {f(s['median_ms'])} | {f(s.get('min_ms'))} | {'' if w is None else f'{w:.4f}'} |")
    if kl is not None and kl.get("timing") and up["run"]["median_ms"]:
        ratio = up["run"]["median_ms"] / kl["timing"]["run_ms_median"] if kl["timing"]["run_ms_median"] else float("nan")
        print(f"\nuniversal-portfolios `run()` / Keel in-process run, medians: {ratio:.1f}x")
    print(f"\nReference UCRP final wealth (numpy prod of 1/N relatives): {ref:.4f}"
          + (f"; published: {published}" if published else "") + ".")

    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"\nwrote {args.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
