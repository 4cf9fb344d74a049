"""Per-trial scheduling overhead of a Ray Tune sweep, as a fraction of trial time.

Each trial imports what a real brainray trial imports (``brainray.trial``: torch,
transformers, scikit-learn) and then sleeps ``T`` seconds, reporting once a second. With
``slots`` concurrent CPUs a sweep of ``n`` trials runs ``ceil(n / slots)`` rounds. The wall
time of a sweep also holds fixed costs (Tuner setup, experiment state, shutdown) that do
not grow with the number of trials, so the per-trial overhead is taken from the
*difference* of two sweeps, ``n1`` and ``n2`` trials, run back to back:

    overhead per round = (wall(n2) - wall(n1)) / (rounds(n2) - rounds(n1)) - T

It is measured with real 60-second trials, with and without ``reuse_actors``; the naive
figure ``(wall - rounds * T) / rounds`` of each sweep is kept too. Actor reuse runs under
brainray's policy (``sweep.REUSE_WAIT``: Tune waits for a finished trial's thread instead of
failing the next trial after 2 s), as in a sweep.

    python benchmarks/sweep_overhead.py            # ~10 min; writes results/benchmarks/sweep_overhead.json
    python benchmarks/sweep_overhead.py --seconds 20 --n1 2 --n2 6
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "results" / "benchmarks" / "sweep_overhead.json"


def _trainable(config):
    import brainray.trial  # noqa: F401  (the real trial's imports: torch, transformers)
    from ray import tune

    for s in range(int(config["seconds"])):
        time.sleep(1.0)
        tune.report({"val_loss": 1.0 / (s + 1), "step": s})


def measure(seconds: float, n_trials: int, reuse: bool, storage: str, slots: int = 2) -> dict:
    from ray import tune

    t0 = time.perf_counter()
    tuner = tune.Tuner(
        tune.with_resources(_trainable, {"cpu": 1}),
        param_space={"seconds": seconds, "i": tune.grid_search(list(range(n_trials)))},
        tune_config=tune.TuneConfig(metric="val_loss", mode="min", reuse_actors=reuse),
        run_config=tune.RunConfig(name=f"t{seconds}-reuse{int(reuse)}-{time.time_ns()}", storage_path=storage,
                                  verbose=0),
    )
    grid = tuner.fit()
    wall = time.perf_counter() - t0
    assert grid.num_errors == 0
    rounds = math.ceil(n_trials / slots)
    per_trial = (wall - rounds * seconds) / rounds
    return {"trial_s": seconds, "n_trials": n_trials, "slots": slots, "reuse_actors": reuse,
            "wall_s": round(wall, 2), "overhead_per_trial_s": round(per_trial, 2),
            "overhead_frac": round(per_trial / seconds, 3)}


def main(argv: list[str] | None = None) -> int:
    import argparse
    import tempfile

    import ray

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0, help="trial length T (default 60)")
    ap.add_argument("--n1", type=int, default=2, help="trials of the shorter sweep")
    ap.add_argument("--n2", type=int, default=6, help="trials of the longer sweep")
    args = ap.parse_args(argv)
    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
    from brainray.sweep import REUSE_WAIT

    os.environ.setdefault(*REUSE_WAIT)  # the local instance's workers inherit it, as in run_sweep
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    rows, per_trial = [], {}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as storage:
        for reuse in (False, True):
            pair = [measure(args.seconds, n, reuse, storage) for n in (args.n1, args.n2)]
            rows += pair
            for r in pair:
                print(r, flush=True)
            rounds = [math.ceil(n / 2) for n in (args.n1, args.n2)]
            o = (pair[1]["wall_s"] - pair[0]["wall_s"]) / (rounds[1] - rounds[0]) - args.seconds
            per_trial[f"reuse_actors={reuse}"] = {"overhead_per_trial_s": round(o, 2),
                                                  "overhead_frac": round(o / args.seconds, 4)}
    ray.shutdown()
    result = {
        "what": "Ray Tune per-trial overhead: extra wall time per round of trials, from the difference of two sweeps",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
        "ray": ray.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "trial_s": args.seconds,
        "measured": rows,
        "per_trial": per_trial,
        "method": f"(wall(n2={args.n2}) - wall(n1={args.n1})) / (rounds(n2) - rounds(n1)) - T, 2 slots",
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "target": "<= 5% for 60-second trials",
        "actor_reuse_policy": f"{REUSE_WAIT[0]}={os.environ[REUSE_WAIT[0]]}",
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(per_trial, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
