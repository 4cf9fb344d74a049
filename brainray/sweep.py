"""Run a sweep on Ray Tune: prepare once as a Ray task, then a FIFO grid of plain trials.

This is the only module that imports Ray. The trainable is ``brainray.trial.run`` wrapped
so that ``report`` becomes ``tune.report`` (with a checkpoint at each epoch) and a
restored checkpoint is handed back to it. The trial log and TensorBoard files are written
by thin Tune callbacks that hand rows to ``brainray.triallog``.

Layout under ``<storage>/<sweep>/``: ``data/<hash>/`` (prepared dataset), ``tune/`` (Tune's
experiment state and checkpoints), ``trials/`` and ``curves/`` (Parquet),
``tensorboard/`` and ``frontier/``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import ray
from ray import tune

import brainray
from brainray import prepare as prep
from brainray import trial as trial_mod
from brainray import triallog
from brainray.config import SweepSpec

__all__ = ["run_sweep", "trial_resources", "TrialLogCallback", "EXPERIMENT"]

EXPERIMENT = "tune"
Log = Callable[[str], None]


# -- the trainable ---------------------------------------------------------------------------
def trainable(config: dict[str, Any]) -> None:
    """Tune function trainable: flatten the grid point, resume, run the plain trial."""
    flat = {**{k: v for k, v in config.items() if k != "trial"}, **config["trial"]}

    def report(metrics: dict[str, Any], checkpoint_dir: str | None = None) -> None:
        clean = {k: v for k, v in metrics.items() if v is not None}
        ckpt = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        tune.report(clean, checkpoint=ckpt)

    checkpoint = tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            trial_mod.run(flat, report, checkpoint_dir=d)
    else:
        trial_mod.run(flat, report)


def trial_resources(spec: SweepSpec, cluster: dict[str, float]) -> Callable[[dict], dict[str, float]]:
    """Resources per trial: CPUs from the spec; a GPU share sized by the model on GPU clusters.

    Small models cannot fill a GPU (DESIGN: width 126 reaches <2% MFU), so with
    ``gpus_per_trial: auto`` they share one: 1/4 of a GPU below 1M non-embedding
    parameters, 1/2 below 20M, a whole GPU above.
    """
    r = spec.resources
    has_gpu = cluster.get("GPU", 0) > 0

    def resources(config: dict[str, Any]) -> dict[str, float]:
        t = config["trial"]
        if r.gpus_per_trial == "auto":
            n = 12 * t["n_layer"] * t["n_embd"] ** 2
            gpu = (0.25 if n < 1e6 else 0.5 if n < 20e6 else 1.0) if has_gpu else 0.0
        else:
            gpu = float(r.gpus_per_trial)
        return {"cpu": float(r.cpus_per_trial), "gpu": gpu}

    return resources


def check_resources(spec: SweepSpec, cluster: dict[str, float]) -> None:
    """Refuse requests no node can satisfy (Tune would wait for them forever)."""
    problems = []
    cpus = cluster.get("CPU", 0)
    if spec.resources.cpus_per_trial > cpus:
        problems.append(f"resources.cpus_per_trial={spec.resources.cpus_per_trial} but the cluster has {cpus:g} CPUs")
    g = spec.resources.gpus_per_trial
    if g != "auto" and float(g) > cluster.get("GPU", 0):
        problems.append(f"resources.gpus_per_trial={g} but the cluster has {cluster.get('GPU', 0):g} GPUs")
    if problems:
        raise ValueError(f"{spec.source}: resource requests can never be met:\n  - " + "\n  - ".join(problems))


# -- callbacks -------------------------------------------------------------------------------
class TrialLogCallback(tune.Callback):
    """Writes one trial-log row per finished or failed trial, and its curve points.

    Runs in the driver on Tune's control loop, so writes never race. Rows already on
    storage (from before a resume) are not written again; curves are flushed every
    ``flush_s`` seconds so a killed driver loses at most that much.
    """

    def __init__(self, root: str, sweep: str, flush_s: float = 30.0, live_report: bool = True):
        self.root, self.sweep, self.flush_s, self.live_report = root, sweep, flush_s, live_report
        self._curves: dict[str, list[dict[str, Any]]] = {}
        self._started: dict[str, str] = {}
        self._last_flush = time.time()
        self._logged: set[str] | None = None
        self._report_thread: threading.Thread | None = None

    def __getstate__(self):  # Tune pickles callbacks into its experiment state
        return {**self.__dict__, "_report_thread": None}

    def setup(self, **info):
        self._logged = triallog.logged_trial_ids(self.root)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._started.setdefault(trial.trial_id, _now())

    def on_trial_result(self, iteration, trials, trial, result, **info):
        keys = ("step", "epoch", "tokens", "train_flops", "train_loss", "val_loss", "lr", "train_s")
        self._curves.setdefault(trial.trial_id, []).append({"sweep": self.sweep, **{k: result.get(k) for k in keys}})
        if time.time() - self._last_flush > self.flush_s:
            self._flush()

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        self._final(trial, "ERROR" if result.get("error") else "TERMINATED", result.get("error"))

    def on_trial_error(self, iteration, trials, trial, **info):
        self._final(trial, "ERROR", _error_text(trial))

    def on_experiment_end(self, trials, **info):
        self._flush()

    def _flush(self):
        for trial_id, rows in self._curves.items():
            triallog.write_curves(self.root, trial_id, rows)
        self._curves = {}
        self._last_flush = time.time()

    def _final(self, trial, status: str, error: str | None):
        if self._logged is None:
            self._logged = triallog.logged_trial_ids(self.root)
        if trial.trial_id in self._logged:
            return
        self._flush()
        result = dict(trial.last_result or {})
        config = dict(trial.config)
        row = {
            **{k: v for k, v in result.items() if not isinstance(v, (dict, list))},
            **config["trial"],
            "sweep": self.sweep, "trial_id": trial.trial_id, "status": status, "error": error,
            "num_failures": trial.num_failures, "brainray_version": brainray.__version__, "git_sha": _git_sha(),
            "started_at": self._started.get(trial.trial_id), "finished_at": _now(),
            "config_json": json.dumps({"trial": config["trial"], "train": config["train"]}, default=str),
        }
        triallog.write_trial(self.root, row)
        self._logged.add(trial.trial_id)
        if self.live_report:
            self._refresh_report()

    def _refresh_report(self) -> None:
        """Re-fit and re-write the report in the background, so the frontier forms as trials land."""
        if self._report_thread is not None and self._report_thread.is_alive():
            return  # the next finished trial refreshes it again; the sweep's end always does
        self._report_thread = threading.Thread(target=_live_report, args=(self.root,), daemon=True)
        self._report_thread.start()


REPORT_LOCK = threading.Lock()  # one report writer at a time (live refreshes and the final one)


def _live_report(root: str) -> None:
    from brainray.summary import run_frontier

    with REPORT_LOCK:
        try:
            run_frontier(root, bootstrap=50, log=lambda msg: None)
        except Exception as e:  # a live refresh must never stop the sweep
            print(f"[frontier] live report skipped: {type(e).__name__}: {e}")


class TensorBoardCallback(tune.Callback):
    """Scalars per trial under ``<sweep>/tensorboard/<trial>`` (losses, brain r, throughput)."""

    KEYS = ("train_loss", "val_loss", "brain_r_mean", "brain_r_max", "tokens_per_s", "mfu", "lr")

    def __init__(self, logdir: str):
        self.logdir = logdir
        self._writers: dict[str, Any] = {}

    def on_trial_result(self, iteration, trials, trial, result, **info):
        from tensorboardX import SummaryWriter

        if trial.trial_id not in self._writers:
            self._writers[trial.trial_id] = SummaryWriter(os.path.join(self.logdir, str(trial)))
        w = self._writers[trial.trial_id]
        for k in self.KEYS:
            v = result.get(k)
            if isinstance(v, (int, float)) and v == v:
                w.add_scalar(k, v, global_step=result.get("step", 0))

    def on_trial_complete(self, iteration, trials, trial, **info):
        if trial.trial_id in self._writers:
            self._writers.pop(trial.trial_id).close()

    on_trial_error = on_trial_complete


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _error_text(trial) -> str:
    path = getattr(trial, "error_file", None)
    try:
        if path and os.path.exists(path):
            return Path(path).read_text()[-4000:]
    except OSError:
        pass
    return str(getattr(trial, "error_msg", None) or "trial raised an error (see the Tune trial folder)")


# -- driver ----------------------------------------------------------------------------------
def _ray_map(fn: Callable, items) -> list:
    """``map`` over Ray tasks (one CPU each): plays are recorded in parallel across the cluster."""
    remote = ray.remote(num_cpus=1)(fn)
    return ray.get([remote.remote(x) for x in items])


@ray.remote(num_cpus=1)
def _prepare_task(spec: SweepSpec, root: str) -> str:
    prep.prepare(spec, root, map_fn=_ray_map)
    return root


def run_sweep(
    spec: SweepSpec,
    storage: str,
    address: str | None = None,
    fresh: bool = False,
    num_cpus: int | None = None,
    log: Log = print,
) -> Path:
    """Prepare, run every trial of ``spec`` on Ray Tune, and return the sweep folder.

    Re-running resumes: trials already finished are not re-run, unfinished ones continue
    from their last checkpoint. ``fresh`` deletes the sweep's previous results (the
    prepared dataset, keyed by its settings, is kept).
    """
    root = Path(storage) / spec.name
    if fresh and root.exists():
        for child in root.iterdir():
            if child.name != "data":
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        log(f"[sweep] --fresh: removed previous results in {root}")
    root.mkdir(parents=True, exist_ok=True)
    (root / "spec.json").write_text(json.dumps(spec.to_dict(), indent=1, default=str))

    if not ray.is_initialized():
        ray.init(address=address, num_cpus=None if address else num_cpus, log_to_driver=True,
                 include_dashboard=False if address is None else None)
    cluster = ray.cluster_resources()
    check_resources(spec, cluster)
    log(f"[sweep] Ray cluster: {cluster.get('CPU', 0):g} CPUs, {cluster.get('GPU', 0):g} GPUs")

    data_root = root / "data" / spec.data_key()
    t0 = time.perf_counter()
    log(f"[prepare] dataset {data_root}")
    ray.get(_prepare_task.options(runtime_env={"env_vars": {"PYTHONUNBUFFERED": "1"}}).remote(spec, str(data_root)))
    dataset = prep.load_dataset(data_root)
    spec.validate(max_data_frames=dataset.train_frames)
    log(f"[prepare] ready in {time.perf_counter() - t0:.0f} s ({dataset.train_frames} training frames)")

    trials = spec.axes.trials()
    log(f"[sweep] {len(trials)} trials over data_frames, n_embd, n_layer, n_head, dtype (FIFO grid)")
    param_space = {
        "trial": tune.grid_search(trials),
        "dataset": str(data_root),
        "train": dataclasses.asdict(spec.train),
    }
    run_config = tune.RunConfig(
        name=EXPERIMENT,
        storage_path=str(root),
        failure_config=tune.FailureConfig(max_failures=spec.resources.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        callbacks=[TrialLogCallback(str(root), spec.name), TensorBoardCallback(str(root / "tensorboard"))],
        progress_reporter=tune.CLIReporter(
            metric_columns={"step": "step", "val_loss": "val loss", "brain_r_mean": "brain r", "eta_s": "ETA s"},
            parameter_columns={
                "trial/data_frames": "frames", "trial/n_embd": "width", "trial/n_layer": "layers",
                "trial/n_head": "heads", "trial/dtype": "dtype",
            },
            max_report_frequency=30,
            sort_by_metric=False,
        ),
        verbose=1,
    )
    fn = tune.with_resources(trainable, trial_resources(spec, cluster))
    exp_path = str(root / EXPERIMENT)
    if tune.Tuner.can_restore(exp_path):
        log(f"[sweep] resuming {exp_path}: finished trials are kept, unfinished ones resume from checkpoints")
        tuner = tune.Tuner.restore(exp_path, trainable=fn, resume_errored=True, param_space=param_space)
    else:
        tuner = tune.Tuner(
            fn,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                metric="val_loss", mode="min", max_concurrent_trials=spec.resources.max_concurrent_trials or None,
                reuse_actors=False,
            ),
            run_config=run_config,
        )
    t0 = time.perf_counter()
    tuner.fit()
    log(f"[sweep] trials done in {time.perf_counter() - t0:.0f} s")
    return root
