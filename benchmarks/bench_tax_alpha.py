#!/usr/bin/env python3
"""Direct-indexing tax alpha on the dated US stocks: the whole period and rolling 10-year windows.

Runs `keel tax-alpha --format json` (KEEL_BIN, default the release build) on
../shared/data/pypfopt_stock_prices.csv for the full period and for 10-year windows starting
in each January from 1991 to 2008, under both conventions (the 3,000 ordinary-income offset
with carry-forward, and unlimited outside long-term gains), and prints a Markdown summary.

    python3 benchmarks/bench_tax_alpha.py [--data FILE] [--monthly 1000] [--initial 100000]
"""
import argparse
import json
import os
import statistics
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(keel, data, *args):
    out = subprocess.run([keel, "tax-alpha", "--data", data, "--format", "json", *args],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def pct(v):
    return f"{v * 100:.2f} %"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "pypfopt_stock_prices.csv"))
    ap.add_argument("--keel", default=os.environ.get("KEEL_BIN", str(ROOT / ".build-release" / "release" / "keel")))
    ap.add_argument("--initial", default="100000")
    ap.add_argument("--monthly", default="1000")
    a = ap.parse_args()
    common = ["--initial", a.initial, "--monthly", a.monthly]
    conventions = [("3,000 offset, carry-forward", []), ("unlimited outside gains", ["--unlimited-outside-gains"])]
    print("| window | convention | years | tax alpha / yr | pre-tax drift / yr | tax savings / value | "
          "tracking error | harvests | wash sales |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    started = time.perf_counter()
    runs = 0
    summary = {name: [] for name, _ in conventions}
    windows = [("full period", [])] + [(f"{y}-{y + 9}", ["--from", f"{y}-01-01", "--to", f"{y + 9}-12-31"])
                                       for y in range(1991, 2009)]
    for label, window in windows:
        for name, extra in conventions:
            r = run(a.keel, a.data, *common, *window, *extra)
            runs += 1
            if label != "full period":
                summary[name].append(r)
            print(f"| {label} | {name} | {r['years']:.1f} | {pct(r['tax_alpha'])} | {pct(r['pre_tax_difference'])} | "
                  f"{pct(r['annual_savings_rate'])} | {pct(r['tracking_error'])} | {r['harvests']} | "
                  f"{r['wash_sale_violations']} |")
    elapsed = time.perf_counter() - started
    print()
    print("Rolling 10-year windows (18 of them):")
    print()
    print("| convention | median tax alpha / yr | mean tax alpha / yr | mean (tax alpha − pre-tax drift) / yr | "
          "mean tax savings / value | mean tracking error | wash sales in all |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, rs in summary.items():
        alpha = [r["tax_alpha"] for r in rs]
        net = [r["tax_alpha"] - r["pre_tax_difference"] for r in rs]
        print(f"| {name} | {pct(statistics.median(alpha))} | {pct(statistics.mean(alpha))} | "
              f"{pct(statistics.mean(net))} | {pct(statistics.mean(r['annual_savings_rate'] for r in rs))} | "
              f"{pct(statistics.mean(r['tracking_error'] for r in rs))} | "
              f"{sum(r['wash_sale_violations'] for r in rs)} |")
    print()
    print(f"{runs} backtests in {elapsed:.1f} s (each runs both accounts, whole process included)")


if __name__ == "__main__":
    main()
