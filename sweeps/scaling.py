"""Run a compute-optimal scaling sweep of brain-encoding models, then its frontier report.

    python sweeps/scaling.py                      # the demo preset, on a local Ray instance
    python sweeps/scaling.py --preset smoke       # the smallest end-to-end run (tests, CI)
    python sweeps/scaling.py --preset paper --address auto --storage /shared/results
    python sweeps/scaling.py --dry-run            # the trial table and its estimated cost
    python sweeps/scaling.py --preset paper --address auto --prepare-only   # the data, before any sweep
    python sweeps/scaling.py --search optuna --samples 20   # a budgeted Optuna search instead of the grid
    python sweeps/scaling.py --storage s3://bucket/brainray --data-dir /shared/brainray-data
    python sweeps/scaling.py --extrapolate 4      # predict the best config at 4x the largest budget, run it

Running the same command again resumes an interrupted sweep; ``--fresh`` starts over.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from brainray.config import check_storage, load_spec  # noqa: E402
from brainray.summary import dry_run_table, final_summary  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="demo", help="demo | smoke | paper | path/to/spec.yaml (default: demo)")
    ap.add_argument("--storage", default=str(REPO / "results"), help="absolute path or URI for all outputs")
    ap.add_argument("--address", default=None, help="Ray cluster to join ('auto' on a cluster node)")
    ap.add_argument("--num-cpus", type=int, default=None, help="CPUs for a local Ray instance (default: all)")
    ap.add_argument("--fresh", action="store_true", help="delete this sweep's previous results and start over")
    ap.add_argument("--dry-run", action="store_true", help="print the trials (or the Optuna search space) and their estimated cost, then exit")
    ap.add_argument("--prepare-only", action="store_true",
                    help="prepare (or find) the dataset of the spec and exit without starting trials")
    ap.add_argument("--no-report", action="store_true", help="skip the frontier analysis at the end")
    ap.add_argument("--data-dir", default=None,
                    help="shared POSIX folder for the prepared dataset (required when --storage is a URI)")
    ap.add_argument("--search", choices=("grid", "optuna"), default="grid",
                    help="grid: every trial of the spec (default); optuna: --samples trials over width and data")
    ap.add_argument("--samples", type=int, default=8, help="trials of an Optuna search (default: 8)")
    ap.add_argument("--reuse-actors", choices=("auto", "on", "off"), default="auto",
                    help="run a trial in the previous trial's worker process (auto: on for a local Ray, "
                         "off with --address)")
    ap.add_argument("--extrapolate", type=float, default=None, metavar="K",
                    help="predict, then verify: fit this sweep's finished trials, then run the compute-optimal "
                         "config at K x the largest budget and its IsoFLOP neighbours (role = extrapolation)")
    ap.add_argument("--allow-unidentified", action="store_true",
                    help="with --extrapolate: plan even when no law is identified by the sweep (a check, flagged)")
    args = ap.parse_args(argv)

    try:
        storage = check_storage(args.storage, writable=not args.dry_run)
        spec = load_spec(args.preset)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        try:
            print(dry_run_table(spec, search=args.search, samples=args.samples))
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0

    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the classic table honours our chosen columns
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    from brainray.sweep import run_sweep  # imports Ray: after argument checks, so --help is instant

    t0 = time.perf_counter()
    data_dir = os.path.abspath(args.data_dir) if args.data_dir else None
    # Under `ray job submit` the job's working dir can vanish before Tune's last look at the
    # current directory (ray-project/ray#52343); every path here is absolute, so leave it.
    os.chdir(Path.home())
    print(f"[brainray] sweep {spec.name!r} from {spec.source} -> {storage}/{spec.name}")
    from brainray.locks import LockHeld
    from brainray.sweep import SweepInterrupted

    given = sys.argv[1:] if argv is None else argv
    again = " ".join(shlex.quote(a) for a in ["python", sys.argv[0], *(a for a in given if a != "--fresh")])
    try:
        root = run_sweep(
            spec, storage, address=args.address, fresh=args.fresh, num_cpus=args.num_cpus,
            data_dir=data_dir, search=args.search, samples=args.samples,
            reuse_actors={"auto": None, "on": True, "off": False}[args.reuse_actors],
            prepare_only=args.prepare_only, extrapolate=args.extrapolate,
            allow_unidentified=args.allow_unidentified,
        )
    except (ValueError, LockHeld) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (SweepInterrupted, KeyboardInterrupt) as e:
        what = str(e) or "the sweep was interrupted before its trials finished"
        print(f"\n[brainray] interrupted: {what}\n[brainray] to resume, run the same command:\n  {again}",
              file=sys.stderr)
        return 130
    if args.prepare_only:
        print(f"[brainray] dataset prepared in {time.perf_counter() - t0:.0f} s; run without --prepare-only to sweep")
        return 0
    if not args.no_report:
        from brainray.live import REPORT_LOCK
        from brainray.summary import run_frontier

        with REPORT_LOCK:  # wait for a live refresh still writing
            run_frontier(root)
    if "://" in root:
        print(_uri_summary(root, time.perf_counter() - t0))
    else:
        print(final_summary(root, time.perf_counter() - t0))
    return 0


def _uri_summary(root: str, elapsed_s: float) -> str:
    """The end-of-sweep summary for a URI root (``final_summary`` works on local folders)."""
    from brainray import triallog
    from brainray.summary import best_per_budget

    trials = triallog.read_trials(root)
    lines = ["", "=" * 78, f"Sweep {root}: {len(trials)} trials"]
    if not trials.empty:
        lines.append("  status: " + ", ".join(f"{k} {v}" for k, v in trials["status"].value_counts().items()))
        best = best_per_budget(trials)
        if not best.empty:
            lines += ["", "Best configuration per training-FLOPs budget:", best.to_string(index=False)]
    lines += ["", "Written:"] + [f"  {d:<11} {root}/{d}" for d in ("trials", "curves", "tensorboard", "frontier")]
    lines.append(f"Total wall time {elapsed_s / 60:.1f} min")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
