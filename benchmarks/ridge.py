"""Benchmark: RidgeEncoder vs the scikit-learn leave-one-run-out loop and himalaya.

Paper scale: 12 runs x 500 TRs (6000 TRs), 512 features x 4 FIR delays = 2048 features,
1095 parcels (MIST-1095), the paper's 11 alphas. A 13th run is held out to compare the
refitted models. Everything runs on CPU with the same thread count.

- ours: ``RidgeEncoder(alphas=PAPER_ALPHAS, cv="group")`` in float32 (default; fitted
  ``--repeats`` times, before and after the baselines, as the machine is shared) and
  float64. Both methods get the same float64 arrays.
- sklearn: for each fold and alpha, ``StandardScaler`` + ``Ridge(alpha)`` fitted on the
  training runs, validation MSE averaged over folds, best alpha per target, refit. This is
  the loop RidgeEncoder reproduces; sklearn's RidgeCV cannot pick an alpha per target with
  explicit folds. If the loop would take longer than ``--sklearn-budget-s`` it runs only
  the first folds and extrapolates (flagged in the JSON). Without extrapolation the run
  fails unless ours picks the same alpha for every parcel and test-run r within 1e-4.
- himalaya: ``himalaya.ridge.RidgeCV`` (torch backend, fit_intercept, same folds). It does
  not standardise per fold, so it is compared with ours at standardize=False, where ours
  takes the block hat-matrix path (one eigendecomposition of all data). That path is
  also timed against the unscaled sklearn loop (first ``--unscaled-folds`` folds,
  extrapolated) and checked against our per-fold path.

- solvers: ours with the tridiagonal reduction (``solver="tridiagonal"``, the CPU default)
  against one eigendecomposition per fold (``solver="primal"``), fitted alternately
  ``--repeats`` times each; the tridiagonal path is kept only while it is >= 1.3x faster.
  ``--solvers-only`` runs just this comparison and writes ``ridge_solvers.json``.

Usage: ``python benchmarks/ridge.py --scale paper`` (or ``small``); writes
``results/benchmarks/ridge.json``. On a shared machine add ``--wait-load 1.3`` to start
only once the 1-minute load average is below 1.3 (the load before and after every timed
method is recorded either way). On a GPU machine: ``--device cuda --threads 16`` times ours
on the GPU (and himalaya's torch_cuda backend) against the CPU loop on 16 threads, and writes
``results/benchmarks/ridge_cuda.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import sklearn
import torch
from sklearn.linear_model import Ridge
from sklearn.model_selection import LeaveOneGroupOut
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from brainray.encoding import PAPER_ALPHAS, RidgeEncoder, make_delays, pearson_r

SCALES = {  # n_runs (CV) , TRs per run, features before delays, parcels
    "paper": dict(n_runs=12, n_per_run=500, n_features=512, n_parcels=1095),
    "small": dict(n_runs=4, n_per_run=100, n_features=32, n_parcels=50),
}
DELAYS = (1, 2, 3, 4)


def make_data(n_runs: int, n_per_run: int, n_features: int, n_parcels: int, seed: int = 0):
    """Smooth features (AR(1)) and parcels driven by delayed features at varied SNR.

    Returns X (n, p), Y (n, t), groups (n,) for n_runs + 1 runs; the last run is the test.
    """
    rng = np.random.default_rng(seed)
    n = (n_runs + 1) * n_per_run
    X = rng.standard_normal((n, n_features))
    for i in range(1, n):  # AR(1), rho 0.7: fMRI-rate features are smooth
        X[i] += 0.7 * X[i - 1]
    groups = np.repeat(np.arange(n_runs + 1), n_per_run)
    Xd = make_delays(X, DELAYS, groups)
    W = rng.standard_normal((Xd.shape[1], n_parcels)) * (
        rng.random((Xd.shape[1], n_parcels)) < 0.05)
    signal = Xd @ W
    signal /= signal.std(0) + 1e-12
    snr = rng.uniform(0.0, 1.0, n_parcels) ** 2  # many weak parcels, a few strong
    Y = snr * signal + rng.standard_normal((n, n_parcels))
    return X, Y, groups


def sklearn_loop(Xd, Y, folds, alphas, budget_s: float, standardize: bool = True):
    """The reference loop; returns alphas, refit model, mean val MSE and timing info."""
    mse = np.zeros((len(alphas), Y.shape[1]))
    t0 = time.perf_counter()
    done = 0
    for f, (train, val) in enumerate(folds):
        for k, alpha in enumerate(alphas):
            model = make_pipeline(StandardScaler(with_std=standardize), Ridge(alpha=alpha))
            model.fit(Xd[train], Y[train])
            mse[k] += ((Y[val] - model.predict(Xd[val])) ** 2).mean(0) / len(folds)
        done = f + 1
        per_fold = (time.perf_counter() - t0) / done
        if per_fold * len(folds) > budget_s and done < len(folds):
            break
    cv_s = time.perf_counter() - t0
    complete = done == len(folds)
    best = np.asarray(alphas)[mse.argmin(0)] if complete else None
    t1 = time.perf_counter()
    refit = make_pipeline(StandardScaler(with_std=standardize),
                          Ridge(alpha=best if complete else alphas[0]))
    refit.fit(Xd, Y)
    refit_s = time.perf_counter() - t1
    total = cv_s * len(folds) / done + refit_s
    return dict(best=best, model=refit, neg_mse=-mse, time_s=total, folds_run=done,
                extrapolated=not complete, cv_s=cv_s, refit_s=refit_s)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _fit_ours(Xtr, Ytr, gtr, alphas, device: str = "cpu", **kw) -> tuple[RidgeEncoder, float]:
    """Fit and time ours; the weights come back to the host, so CUDA work is finished."""
    enc = RidgeEncoder(alphas=alphas, delays=DELAYS, device=device, **kw)
    t0 = time.perf_counter()
    enc.fit(Xtr, Ytr, groups=gtr)
    return enc, time.perf_counter() - t0


def compare_solvers(Xtr, Ytr, gtr, alphas, repeats: int, device: str = "cpu") -> dict:
    """Whole fits of ours per solver, alternating (the machine is shared); medians and ratio."""
    runs: dict[str, list[float]] = {"tridiagonal": [], "primal": []}
    fits: dict[str, RidgeEncoder] = {}
    for i in range(repeats):
        for solver in sorted(runs, reverse=i % 2 == 0):  # tridiagonal first on even rounds
            fits[solver], s = _fit_ours(Xtr, Ytr, gtr, alphas, device, solver=solver)
            runs[solver].append(s)
            print(f"ours float32, solver {solver}: {s:.1f} s", flush=True)
    median = {k: float(np.median(v)) for k, v in runs.items()}
    tri, eig = fits["tridiagonal"], fits["primal"]
    paired = [e / t for e, t in zip(runs["primal"], runs["tridiagonal"])]  # same round, same load
    return {
        "runs_s": {k: [round(s, 3) for s in v] for k, v in runs.items()},
        "median_s": {k: round(v, 3) for k, v in median.items()},
        "speedup_tridiagonal_vs_eigh_per_fold": {
            "median": round(median["primal"] / median["tridiagonal"], 3),
            "worst": round(min(runs["primal"]) / max(runs["tridiagonal"]), 3),
            "best": round(max(runs["primal"]) / min(runs["tridiagonal"]), 3),
            "paired": [round(r, 3) for r in paired], "paired_median": round(float(np.median(paired)), 3)},
        "keep_threshold": 1.3,
        "alphas_equal_frac": float(np.mean(tri.alpha_ == eig.alpha_)),
        "max_rel_diff_cv_mse": float(np.max(np.abs(tri.cv_scores_ - eig.cv_scores_)
                                            / np.abs(eig.cv_scores_))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="paper")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch and BLAS threads for every method (default 1: the "
                             "benchmark machine is shared, one thread is reproducible)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="fits of ours (float32), interleaved around the baselines")
    parser.add_argument("--sklearn-budget-s", type=float, default=900.0)
    parser.add_argument("--no-himalaya", action="store_true")
    parser.add_argument("--solvers-only", action="store_true",
                        help="time only ours per solver (tridiagonal vs one eigh per fold), "
                             "no baselines; writes results/benchmarks/ridge_solvers.json")
    parser.add_argument("--unscaled-folds", type=int, default=2,
                        help="folds of the unscaled sklearn loop to time (extrapolated)")
    parser.add_argument("--device", default="cpu",
                        help="where ours runs (cpu, cuda, auto); the baselines stay on CPU, "
                             "himalaya on the GPU when this is cuda")
    parser.add_argument("--out", default=None,
                        help="default results/benchmarks/ridge.json (ridge_cuda.json on GPU)")
    parser.add_argument("--wait-load", type=float, default=None,
                        help="before starting, poll the 1-minute load average every 30 s "
                             "until it is below this (the machine is shared)")
    parser.add_argument("--wait-max-s", type=float, default=1500.0,
                        help="give up waiting for --wait-load after this long and run")
    args = parser.parse_args()
    waited_s, t_wait = 0.0, time.perf_counter()
    if args.wait_load is not None:
        while os.getloadavg()[0] >= args.wait_load and waited_s < args.wait_max_s:
            print(f"load {os.getloadavg()[0]:.2f} >= {args.wait_load}: waiting", flush=True)
            time.sleep(30)
            waited_s = time.perf_counter() - t_wait
    torch.set_num_threads(args.threads)
    shape = SCALES[args.scale]
    alphas = list(PAPER_ALPHAS)

    X, Y, groups = make_data(**shape)
    test = groups == shape["n_runs"]
    Xtr, Ytr, gtr = X[~test], Y[~test], groups[~test]
    folds = list(LeaveOneGroupOut().split(Xtr, Ytr, gtr))
    result: dict = {
        "scale": args.scale,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "device": args.device,
        "gpu": torch.cuda.get_device_name() if args.device != "cpu" and torch.cuda.is_available()
        else None,
        "cpu": _cpu_model(),
        "n_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "blas_threads": args.threads,
        "load_avg_start": os.getloadavg(),
        "waited_for_load_s": round(waited_s, 1),
        "wait_load_threshold": args.wait_load,
        "versions": {"torch": torch.__version__, "sklearn": sklearn.__version__,
                     "numpy": np.__version__},
        "shapes": {"n_trs": int(Xtr.shape[0]), "n_runs": shape["n_runs"],
                   "n_features": shape["n_features"], "n_delays": len(DELAYS),
                   "n_features_delayed": shape["n_features"] * len(DELAYS),
                   "n_parcels": shape["n_parcels"], "n_alphas": len(alphas),
                   "n_test_trs": int(test.sum())},
        "alphas": alphas,
        "input_dtype": str(Xtr.dtype),
    }
    times: dict = {}
    ours32: list[float] = []
    loads: dict = {}  # 1-minute load average before and after each timed method

    def timed_load(key: str, before: float) -> None:
        loads.setdefault(key, []).append([round(before, 2), round(os.getloadavg()[0], 2)])

    def ours_once(label: str) -> RidgeEncoder:
        before = os.getloadavg()[0]
        enc, s = _fit_ours(Xtr, Ytr, gtr, alphas, args.device)
        timed_load("ours_float32", before)
        ours32.append(s)
        print(f"ours float32 ({label}, solver {enc.solver_}): {s:.1f} s", flush=True)
        return enc

    with threadpool_limits(args.threads):
        if args.device != "cpu":  # CUDA context and solver libraries load outside the timing
            _fit_ours(Xtr[:1000], Ytr[:1000], gtr[:1000], alphas, args.device)
        if args.solvers_only:
            result["solvers"] = compare_solvers(Xtr, Ytr, gtr, alphas, args.repeats, args.device)
            result["load_avg_end"] = os.getloadavg()
            out = Path(args.out or "results/benchmarks/ridge_solvers.json")
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=2) + "\n")
            print(json.dumps(result["solvers"], indent=2))
            return
        ours = {"float32": ours_once("before sklearn")}

        t0 = time.perf_counter()
        Xd = make_delays(Xtr, DELAYS, gtr)  # the same float64 input ours gets
        delay_s = time.perf_counter() - t0
        before = os.getloadavg()[0]
        sk = sklearn_loop(Xd, Ytr, folds, alphas, args.sklearn_budget_s)
        timed_load("sklearn", before)
        times["sklearn_s"] = sk["time_s"] + delay_s
        print(f"sklearn loop: {times['sklearn_s']:.1f} s "
              f"({'extrapolated from %d folds' % sk['folds_run'] if sk['extrapolated'] else 'full'})",
              flush=True)
        for i in range(1, args.repeats):
            ours_once(f"after sklearn, {i}")

        before = os.getloadavg()[0]
        ours["float64"], times["ours_float64_s"] = _fit_ours(Xtr, Ytr, gtr, alphas, args.device,
                                                             dtype="float64")
        timed_load("ours_float64", before)
        print(f"ours float64: {times['ours_float64_s']:.1f} s", flush=True)

        before = os.getloadavg()[0]
        enc_ns, times["ours_unscaled_hat_float32_s"] = _fit_ours(
            Xtr, Ytr, gtr, alphas, args.device, standardize=False)
        timed_load("ours_unscaled_hat", before)
        assert enc_ns.solver_ == "hat"
        print(f"ours unscaled (hat): {times['ours_unscaled_hat_float32_s']:.1f} s", flush=True)
        ref_ns = RidgeEncoder(alphas=alphas, delays=DELAYS, device="cpu", dtype="float64",
                              standardize=False, solver="primal").fit(Xtr, Ytr, groups=gtr)
        result["hat_check_vs_per_fold_float64"] = {
            "alphas_equal_frac": float(np.mean(enc_ns.alpha_ == ref_ns.alpha_)),
            "max_rel_diff_cv_mse": float(np.max(
                np.abs(enc_ns.cv_scores_ - ref_ns.cv_scores_) / np.abs(ref_ns.cv_scores_))),
            "max_abs_diff_test_r": float(np.abs(
                pearson_r(Y[test], enc_ns.predict(X[test]))
                - pearson_r(Y[test], ref_ns.predict(X[test]))).max()),
        }

        if not args.no_himalaya:
            from himalaya.backend import set_backend
            from himalaya.ridge import RidgeCV as HimalayaRidgeCV

            backend = set_backend("torch" if args.device == "cpu" else "torch_cuda",
                                  on_error="raise")
            t0 = time.perf_counter()
            Xd32 = make_delays(Xtr, DELAYS, gtr).astype(np.float32)
            him = HimalayaRidgeCV(alphas=alphas, cv=folds, fit_intercept=True)
            before = os.getloadavg()[0]
            him.fit(backend.asarray(Xd32), backend.asarray(Ytr.astype(np.float32)))
            times["himalaya_s"] = time.perf_counter() - t0
            timed_load("himalaya", before)
            print(f"himalaya: {times['himalaya_s']:.1f} s", flush=True)
            him_alphas = backend.to_numpy(him.best_alphas_)
            result["himalaya_check"] = {
                "compared_with": "ours float32, standardize=False (hat path)",
                "alphas_equal_frac": float(np.mean(np.isclose(him_alphas, enc_ns.alpha_))),
            }
            ours_once("after himalaya")

        sk_ns = sklearn_loop(Xd, Ytr, folds[:args.unscaled_folds], alphas, np.inf,
                             standardize=False)
        times["sklearn_unscaled_s"] = (sk_ns["cv_s"] * len(folds) / args.unscaled_folds
                                       + sk_ns["refit_s"] + delay_s)
        print(f"sklearn unscaled loop (extrapolated from {args.unscaled_folds} folds): "
              f"{times['sklearn_unscaled_s']:.1f} s", flush=True)
        if args.device == "cpu":
            result["solvers"] = compare_solvers(Xtr, Ytr, gtr, alphas, args.repeats)

    result["load_avg_end"] = os.getloadavg()
    result["load_1min_before_after"] = loads
    times["ours_float32_s"] = float(np.median(ours32))
    result["ours_float32_runs_s"] = [round(s, 3) for s in ours32]
    result["times"] = {k: round(v, 3) for k, v in times.items()}
    result["sklearn_extrapolated"] = sk["extrapolated"]
    result["sklearn_folds_run"] = sk["folds_run"]
    result["speedup_vs_sklearn"] = {
        "float32_median": round(times["sklearn_s"] / float(np.median(ours32)), 2),
        "float32_fastest_fit": round(times["sklearn_s"] / min(ours32), 2),
        "float32_slowest_fit": round(times["sklearn_s"] / max(ours32), 2),
        "float64": round(times["sklearn_s"] / times["ours_float64_s"], 2)}
    result["speedup_unscaled_hat_vs_sklearn_unscaled"] = round(
        times["sklearn_unscaled_s"] / times["ours_unscaled_hat_float32_s"], 2)
    if "himalaya_s" in times:
        result["speedup_vs_himalaya"] = {
            "ours_float32_per_fold_median": round(
                times["himalaya_s"] / float(np.median(ours32)), 2),
            "ours_unscaled_hat": round(
                times["himalaya_s"] / times["ours_unscaled_hat_float32_s"], 2)}

    ok = True
    if not sk["extrapolated"]:
        Xd_test = make_delays(X[test], DELAYS)
        r_sk = pearson_r(Y[test], sk["model"].predict(Xd_test))
        checks = {}
        for dtype, enc in ours.items():
            pred = enc.predict(X[test])
            r = pearson_r(Y[test], pred)
            checks[dtype] = {
                "solver": enc.solver_,
                "alphas_equal_frac": float(np.mean(enc.alpha_ == sk["best"])),
                "max_abs_diff_test_r": float(np.abs(r - r_sk).max()),
                "max_abs_diff_test_pred": float(
                    np.abs(pred - sk["model"].predict(Xd_test)).max()),
                "max_rel_diff_cv_mse": float(
                    np.max(np.abs(enc.cv_scores_ - sk["neg_mse"]) / np.abs(sk["neg_mse"]))),
            }
            checks[dtype]["passed"] = bool(checks[dtype]["alphas_equal_frac"] == 1.0
                                           and checks[dtype]["max_abs_diff_test_r"] <= 1e-4)
            ok &= checks[dtype]["passed"]
        result["checks_vs_sklearn"] = checks
        result["test_r_mean_sklearn"] = float(r_sk.mean())
    result["note"] = (
        "Both get the same float64 input; ours computes in float32 (its default) or "
        "float64. sklearn times include make_delays; ours include delays, CV over all "
        "alphas and the refit. Ours float32 is fitted before and after the sklearn loop "
        "(and after himalaya) on a shared machine; ratios use the median (min/max ours "
        "also given). sklearn_unscaled_s is extrapolated from the first folds (CV time "
        "scaled by n_folds / folds run, plus one refit).")
    out = Path(args.out or "results/benchmarks/ridge%s.json" % (
        "" if args.device == "cpu" else "_cuda"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if not ok:
        raise SystemExit("ours differs from the sklearn loop: see checks_vs_sklearn")


if __name__ == "__main__":
    main()
