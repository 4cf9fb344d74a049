"""Benchmark: one scaling-law fit and 1000 bootstrap re-fits on 200 synthetic trials.

Targets (issue 8): one fit < 1 s, 1000 bootstraps < 60 s on 2 CPU cores. Also times the
Chinchilla fixture fit (240 runs) and reports its parameters beside the Epoch AI
replication's, and the compute-only law (``fit_compute_law``, Gokce & Schrimpf's form) on
30 points, with and without 200 bootstrap re-fits (issue 18: well under a second without
bootstrap). Writes results/benchmarks/frontier_fit.json and a table in frontier_fit.md beside it.

    python benchmarks/frontier_fit.py [--n-boot 1000] [--out results/benchmarks/frontier_fit.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from brainray.frontier import fit_compute_law, fit_law

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "chinchilla_runs.csv"
TRUTH = (1.817, 482.0, 2085.4, 0.3478, 0.3658)  # Epoch AI's Chinchilla fit as the truth
EPOCH = {"E": 1.817, "A": 482.01, "B": 2085.43, "alpha": 0.3478, "beta": 0.3658, "a": 0.513}


def _times(fit: Callable[[], object], repeats: int = 5) -> list[float]:
    """Wall seconds of ``repeats`` calls, after one warm-up call (imports, caches)."""
    fit()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fit()
        out.append(time.perf_counter() - t0)
    return out


def _markdown(r: dict) -> str:
    """The table of frontier_fit.md: each timing beside its target."""
    c, m = r["compute_law"], r["machine"]
    lines = ["# Scaling-law fit benchmark (`benchmarks/frontier_fit.py`)", "",
             f"Run {r['when']} on {m['cpus']} CPUs ({m['platform']}), 1-minute load {m['load_1min']:.2f} at the "
             f"start; one BLAS thread (the fitter pins it). Synthetic trials from a known law, log-normal noise "
             f"sd {r['noise_sd_log']}.", "",
             "| what | data | time | target |", "|---|---|---|---|",
             f"| `fit_law`, one fit (median of 5) | {r['n_trials']} trials | {r['one_fit_s_median']:.3f} s | < 1 s |",
             f"| `fit_law`, {r['n_bootstrap']} bootstrap re-fits | {r['n_trials']} trials | "
             f"{r['bootstrap_total_s']:.1f} s | < 60 s |",
             f"| `fit_compute_law`, one fit, no bootstrap (median of 5; max {c['one_fit_s_max'] * 1e3:.1f} ms) | "
             f"{c['n_points']} points | {c['one_fit_s_median'] * 1e3:.1f} ms | well under 1 s |",
             f"| `fit_compute_law`, 200 bootstrap re-fits | {c['n_points']} points | {c['bootstrap_200_s']:.2f} s | "
             "– |"]
    if "chinchilla_fixture" in r:
        f = r["chinchilla_fixture"]
        lines.append(f"| `fit_law` on the Chinchilla fixture | {f['n_runs']} runs | {f['fit_s']:.3f} s | – |")
    lines += ["", f"Every target met: **{'yes' if r['meets_targets'] else 'no'}**. `fit_compute_law` recovered "
              f"E = {c['fit']['E']:.3f}, A = {c['fit']['A']:.3g}, alpha = {c['fit']['alpha']:.3f} (truth "
              f"{c['truth']['E']}, {c['truth']['A']:g}, {c['truth']['alpha']})."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-trials", type=int, default=200)
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--noise", type=float, default=0.01, help="log-normal loss noise")
    parser.add_argument("--out", type=Path,
                        default=ROOT / "results" / "benchmarks" / "frontier_fit.json")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    n = args.n_trials
    N = np.exp(rng.uniform(np.log(1e5), np.log(8.5e7), n))
    D = np.exp(rng.uniform(np.log(1e7), np.log(6e9), n))
    E, A, B, al, be = TRUTH
    y = (E + A * N ** -al + B * D ** -be) * np.exp(args.noise * rng.standard_normal(n))

    load = os.getloadavg()[0]  # the 2-core machine is shared: say how busy it was
    times = _times(lambda: fit_law(N, D, y))
    fit = fit_law(N, D, y)
    t0 = time.perf_counter()
    boot = fit_law(N, D, y, bootstrap=args.n_boot, seed=0)
    t_boot = time.perf_counter() - t0 - boot.fit_seconds

    result = {
        "benchmark": "frontier_fit",
        "n_trials": n, "noise_sd_log": args.noise, "truth": dict(zip(
            ("E", "A", "B", "alpha", "beta"), TRUTH)),
        "one_fit_s_median": float(np.median(times)), "one_fit_s_max": float(max(times)),
        "n_bootstrap": args.n_boot, "bootstrap_total_s": t_boot,
        "bootstrap_per_refit_ms": 1e3 * t_boot / args.n_boot,
        "bootstrap_failed": boot.n_bootstrap_failed,
        "fit": {k: getattr(fit, k) for k in ("E", "A", "B", "alpha", "beta", "a")},
        "ci95": boot.ci,
        "targets": {"one_fit_s": 1.0, "bootstrap_1000_s": 60.0, "compute_law_one_fit_s": 1.0},
        "when": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "load_1min": load},
    }
    C = np.geomspace(1e15, 1e21, 30)
    yc = (0.45 + 20 * C ** -0.12) * np.exp(args.noise * rng.standard_normal(len(C)))
    ctimes = _times(lambda: fit_compute_law(C, yc))
    cfit = fit_compute_law(C, yc)
    t0 = time.perf_counter()
    cboot = fit_compute_law(C, yc, bootstrap=200)
    result["compute_law"] = {
        "n_points": len(C), "truth": {"E": 0.45, "A": 20.0, "alpha": 0.12},
        "one_fit_s_median": float(np.median(ctimes)), "one_fit_s_max": float(max(ctimes)),
        "bootstrap_200_s": time.perf_counter() - t0,
        "fit": {"E": cfit.E, "A": cfit.A, "alpha": cfit.alpha}, "ci95": cboot.ci,
    }
    result["meets_targets"] = bool(np.median(times) < 1.0 and t_boot * 1000 / args.n_boot < 60.0
                                   and np.median(ctimes) < 1.0)
    if FIXTURE.exists():
        df = pd.read_csv(FIXTURE).sort_values("loss").iloc[:-5]
        Nc = df["Model Size"].to_numpy()
        t0 = time.perf_counter()
        cf = fit_law(Nc, df["Training FLOP"].to_numpy() / (6 * Nc), df["loss"].to_numpy())
        result["chinchilla_fixture"] = {
            "n_runs": cf.n_used, "fit_s": time.perf_counter() - t0,
            "ours": {k: getattr(cf, k) for k in EPOCH}, "epoch_published": EPOCH,
            "objective": cf.objective}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    args.out.with_suffix(".md").write_text(_markdown(result))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
