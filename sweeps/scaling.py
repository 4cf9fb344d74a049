"""Run a compute-optimal scaling sweep of brain-encoding models, then its frontier report.

    python sweeps/scaling.py                      # the demo preset, on a local Ray instance
    python sweeps/scaling.py --preset smoke       # the smallest end-to-end run (tests, CI)
    python sweeps/scaling.py --preset paper --address auto --storage /shared/results
    python sweeps/scaling.py --dry-run            # the trial table and its estimated cost

Running the same command again resumes an interrupted sweep; ``--fresh`` starts over.
"""

from __future__ import annotations

import argparse
import os
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
    ap.add_argument("--dry-run", action="store_true", help="print the trials and their estimated cost, then exit")
    ap.add_argument("--no-report", action="store_true", help="skip the frontier analysis at the end")
    args = ap.parse_args(argv)

    try:
        storage = check_storage(args.storage)
        spec = load_spec(args.preset)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(dry_run_table(spec))
        return 0

    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the classic table honours our chosen columns
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    from brainray.sweep import run_sweep  # imports Ray: after argument checks, so --help is instant

    t0 = time.perf_counter()
    print(f"[brainray] sweep {spec.name!r} from {spec.source} -> {storage}/{spec.name}")
    try:
        root = run_sweep(spec, storage, address=args.address, fresh=args.fresh, num_cpus=args.num_cpus)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not args.no_report:
        from brainray.summary import run_frontier
        from brainray.sweep import REPORT_LOCK

        with REPORT_LOCK:  # wait for a live refresh still writing
            run_frontier(root)
    print(final_summary(root, time.perf_counter() - t0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
