"""What does ``sweep.CheckpointPruner`` keep on disk, and what does it cost the driver?

Tune keeps every checkpoint in a brainray sweep (``num_to_keep=None``): its own pruning deleted
the checkpoint its saved experiment state still named (ray-project/ray#27790). The pruner
deletes what that saved state can no longer resume from. This runs one small real Tune
experiment twice, in one process, with a trivial trainable that writes a checkpoint of
``--mb`` MB at every iteration:

- ``keep all``: no pruner, what Tune alone leaves;
- ``pruner``: ``CheckpointPruner`` as ``run_sweep`` wires it (at each checkpoint, and once after ``fit``).

and reports the checkpoints on disk at their peak (sampled every 50 ms) and at the end, the
time of the runs, and the time of one prune that reads the saved state (cold: the state file
changed; warm: it did not).

    python benchmarks/checkpoint_pruning.py                 # ~2 min on 2 cores
    python benchmarks/checkpoint_pruning.py --trials 32 --iters 50

Writes ``results/benchmarks/checkpoint_pruning.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import ray
from ray import tune

from brainray.sweep import CheckpointPruner

OUT = Path(__file__).resolve().parents[1] / "results" / "benchmarks"


def _trainable(config: dict) -> None:
    start = 0
    if (ck := tune.get_checkpoint()) is not None:
        with ck.as_directory() as d:
            start = int(Path(d, "it").read_text()) + 1
    for it in range(start, config["iters"]):
        time.sleep(config["sleep_s"])
        with tempfile.TemporaryDirectory() as d:
            Path(d, "it").write_text(str(it))
            Path(d, "weights.bin").write_bytes(os.urandom(int(config["mb"] * 2**20)))
            tune.report({"it": it}, checkpoint=tune.Checkpoint.from_directory(d))


def _on_disk(experiment: Path) -> tuple[int, int]:
    """(checkpoints, bytes) under an experiment folder."""
    dirs = list(experiment.glob("*/checkpoint_*"))
    return len(dirs), sum(f.stat().st_size for d in dirs for f in d.rglob("*") if f.is_file())


def run(storage: Path, name: str, trials: int, iters: int, mb: float, prune: bool) -> dict:
    experiment = storage / name
    pruner = CheckpointPruner(str(experiment))
    peak, stop = [0, 0], threading.Event()

    def watch() -> None:
        while not stop.is_set():
            n, b = _on_disk(experiment) if experiment.exists() else (0, 0)
            peak[0], peak[1] = max(peak[0], n), max(peak[1], b)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    t0 = time.perf_counter()
    tuner = tune.Tuner(
        tune.with_resources(_trainable, {"cpu": 0.5}),
        param_space={"iters": iters, "mb": mb, "sleep_s": 0.2, "seed": tune.grid_search(list(range(trials)))},
        run_config=tune.RunConfig(
            name=name, storage_path=str(storage), verbose=0,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
            callbacks=[pruner] if prune else [],
        ),
    )
    tuner.fit()
    if prune:
        pruner.prune()
    wall = time.perf_counter() - t0
    stop.set()
    watcher.join()
    end_n, end_b = _on_disk(experiment)
    cold = CheckpointPruner(str(experiment))
    t1 = time.perf_counter()
    cold.prune()
    t2 = time.perf_counter()
    cold.prune()
    t3 = time.perf_counter()
    state = max(experiment.glob("experiment_state-*.json"))
    return {
        "mode": "pruner" if prune else "keep all", "trials": trials, "iters": iters, "mb": mb,
        "peak_checkpoints": peak[0], "peak_mb": peak[1] / 2**20, "end_checkpoints": end_n, "end_mb": end_b / 2**20,
        "wall_s": wall, "prune_cold_s": t2 - t1, "prune_warm_s": t3 - t2, "state_mb": state.stat().st_size / 2**20,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--mb", type=float, default=0.25, help="size of one checkpoint")
    ap.add_argument("--out", default="checkpoint_pruning")
    args = ap.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for prune in (False, True):
            rows.append(run(Path(tmp), f"prune{int(prune)}", args.trials, args.iters, args.mb, prune))
            print(rows[-1], flush=True)
    ray.shutdown()
    meta = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": platform.machine(),
            "cpus": os.cpu_count(), "ray": ray.__version__,
            "checkpoint_period": os.environ.get("TUNE_GLOBAL_CHECKPOINT_S", "auto")}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{args.out}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [
        "# Checkpoint pruning",
        "",
        f"`python benchmarks/checkpoint_pruning.py --trials {args.trials} --iters {args.iters} --mb {args.mb}`, "
        f"{meta['date']}, {meta['machine']}, {meta['cpus']} CPUs, Ray {meta['ray']}, Tune's state saved on "
        f"TUNE_GLOBAL_CHECKPOINT_S={meta['checkpoint_period']} (auto: at least 10 s apart). {args.trials} trials of {args.iters} iterations, one {args.mb} MB "
        "checkpoint per iteration (0.2 s apart), 4 at a time.",
        "",
        "| mode | checkpoints at peak | MB at peak | checkpoints at end | MB at end | wall s | prune, state changed (s) | prune, unchanged (s) | state file MB |",
        "|---|---|---|---|---|---|---|---|---|",
        *(f"| {r['mode']} | {r['peak_checkpoints']} | {r['peak_mb']:.0f} | {r['end_checkpoints']} | {r['end_mb']:.0f} | "
          f"{r['wall_s']:.1f} | {r['prune_cold_s']:.3f} | {r['prune_warm_s']:.4f} | {r['state_mb']:.2f} |" for r in rows),
        "",
        "Peak: sampled every 50 ms. With the pruner the peak is what the running trials write between two "
        "saves of Tune's state, and the end is one checkpoint per trial. A prune reads the saved state only "
        "when the file changed (Tune rewrites it at each save), so its cost is paid at most once per save.",
    ]
    (OUT / f"{args.out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
