"""Run a sweep on Ray Tune: prepare once as a Ray task, then a FIFO grid of plain trials.

This is the only module that imports Ray Tune; the prepare runs as a Ray task
(``brainray.prepare.prepare_on_ray``). The trainable is ``brainray.trial.run`` wrapped
so that ``report`` becomes ``tune.report`` (with a checkpoint at each epoch) and a
restored checkpoint is handed back to it. The trial log and TensorBoard files are written
by thin Tune callbacks: rows are built and written by ``brainray.triallog``, the report is
rewritten in the background as rows land (``brainray.live``), and ``--extrapolate`` trials
are planned by ``brainray.extrapolate``. This module only wires them to Tune.

Layout under ``<storage>/<sweep>/`` (its names are ``brainray.triallog``'s; ``--fresh`` empties
it with ``triallog.remove_results``): ``data/<hash>/`` (the prepared dataset, or under ``data_dir``:
``config.dataset_root``), ``tune/`` (Tune's experiment state and checkpoints; ``tune-optuna/`` for
an Optuna search), ``trials/`` and ``curves/`` (Parquet), ``parcels/`` (one Parquet table of
per-parcel r per scored trial, ``brainray.parcels``), ``tensorboard/`` and ``frontier/``.
``storage`` may be a URI (``s3://``, ``gs://``, ``file://``): Tune, the trial log, the curves,
TensorBoard and the report go through pyarrow filesystems (``triallog.Staged``). The prepared
dataset is memory-mapped by every trial, so it needs a POSIX path that every node can read
(``data_dir``, e.g. NFS); a URI storage without ``data_dir`` is refused.

Fault tolerance (tested in ``tests/test_faults.py``): a lost node's trials are retried
from their last epoch checkpoint (``resources.max_failures``); a killed driver is resumed by
running the same command again (``Tuner.restore`` with ``resume_errored=True``); a trial
that raises or diverges becomes an ``ERROR`` row with its error text, and the sweep goes on.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import ray
from ray import tune
from ray.tune import ExperimentAnalysis

from brainray import live, locks, parcels, reaper, triallog
from brainray import extrapolate as xp
from brainray import prepare as prep
from brainray import trial as trial_mod
from brainray.config import SEARCHES, SearchSpace, SweepSpec, check_address, check_search, dataset_root, stable_hash
from brainray.dataset import load_dataset
from brainray.triallog import EXPERIMENT

logger = logging.getLogger(__name__)

__all__ = [
    "run_sweep", "SweepInterrupted", "trial_resources", "check_resources", "TrialLogCallback", "TensorBoardCallback",
    "CheckpointPruner",
    "SEARCHES", "REUSE_WAIT",
]

Log = Callable[[str], None]


# -- the trainable ---------------------------------------------------------------------------
_CHECKPOINT_LOGGERS = ("ray.train._internal.storage", "ray.train.v2._internal.execution.storage")


def trainable(config: dict[str, Any], root: str | None = None) -> None:
    """Tune function trainable: flatten the grid point, resume, run the plain trial.

    ``root`` (the sweep folder, for the per-parcel tables) comes through ``tune.with_parameters``,
    not the config: a restored config keeps the path of the first run, and a sweep folder moved
    since would be written at its old place.
    """
    for name in _CHECKPOINT_LOGGERS:  # one "Checkpoint successfully created" line per epoch is noise
        logging.getLogger(name).setLevel(logging.WARNING)
    # Read by Tune in this process when it reuses it for the next trial (a user's own value is kept);
    # set here, the one place that runs in every trial's process however Ray was started.
    os.environ.setdefault(*REUSE_WAIT)
    flat = {**{k: v for k, v in config.items() if k != "trial"}, **config["trial"]}

    def report(metrics: dict[str, Any], checkpoint_dir: str | None = None) -> None:
        parcel_r = metrics.get(trial_mod.PARCEL_R)
        if parcel_r is not None and root:  # a scored trial (or reuse branch): its per-parcel map, beside the log
            _write_parcels(root, flat["dataset"], triallog.row_id(tune.get_context().get_trial_id(), metrics),
                           parcel_r)
        # A missing value is left out, not sent as NaN: Tune's own TensorBoard logger warns once per NaN.
        # val_loss stays in every report, as Tune requires of a searcher's metric. Private keys (``_parcel_r``)
        # stay here.
        clean = {k: v for k, v in metrics.items() if not k.startswith("_")
                 and v is not None and (k == "val_loss" or not isinstance(v, float) or math.isfinite(v))}
        ckpt = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        tune.report(clean, checkpoint=ckpt)

    checkpoint = tune.get_checkpoint()
    try:
        if checkpoint:
            with checkpoint.as_directory() as d:
                trial_mod.run(flat, report, checkpoint_dir=d)
        else:
            trial_mod.run(flat, report)
    finally:
        _release_memory()


def _write_parcels(root: str, dataset: str, trial_id: str, parcel_r: dict[str, Any]) -> None:
    """``<root>/parcels/<trial_id>.parquet`` (``root`` a path or a URI); a storage error warns, the trial goes on:
    the trial-log row is the record, the map is a view of it."""
    table = parcels.parcel_table(load_dataset(dataset), parcel_r, trial_id)
    try:
        parcels.write_parcel_scores(root, trial_id, table)
    except OSError as e:
        warnings.warn(f"{trial_id}: its per-parcel scores could not be written under {root}/{parcels.PARCELS} "
                      f"({e}); the report has no parcel map for it. Check that the storage is writable.",
                      RuntimeWarning, stacklevel=2)


def _release_memory() -> None:
    """Free the finished trial's tensors: with ``reuse_actors`` the next trial runs in this process,
    and a CUDA cache kept here would be taken from the trials sharing the GPU."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


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


def check_resources(
    spec: SweepSpec, nodes: list[dict[str, float]], joined: bool, log: Log = print
) -> None:
    """Refuse requests that no node can satisfy: Tune would leave such trials PENDING forever.

    nodes: the resources of each live node (``ray.nodes()[i]["Resources"]``). A trial runs
    on one node, so a request is compared with each node, not with the cluster's total.
    joined: the sweep joined an existing cluster (``--address``). There, zero GPUs with
    ``gpus_per_trial: auto`` is refused rather than read as "run on CPUs": a GPU cluster that
    is still scaling up, or scaled to zero, shows no GPU, and ``auto`` cannot size GPU shares
    from GPUs it cannot see. On a local Ray instance ``auto`` with no GPU means CPU trials.
    With ``resources.autoscale: true`` requests no current node meets are logged, not refused.
    """
    r = spec.resources
    problems = []
    total_gpu = sum(n.get("GPU", 0) for n in nodes)
    if r.gpus_per_trial == "auto" and total_gpu == 0 and joined:
        problems.append(
            "resources.gpus_per_trial='auto' but no node of the cluster has a GPU now (it may still be "
            "scaling up); 'auto' sizes GPU shares from the GPUs it sees. Set resources.gpus_per_trial to "
            "a number: 0.25-1 asks for GPU nodes (with resources.autoscale: true if an autoscaler adds "
            "them), 0 runs every trial on CPUs"
        )
    fn = trial_resources(spec, {"GPU": total_gpu})
    requests = sorted({(fn({"trial": t})["cpu"], fn({"trial": t})["gpu"]) for t in spec.runs()})
    largest = ", ".join(f"{n.get('CPU', 0):g} CPU/{n.get('GPU', 0):g} GPU" for n in nodes) or "no live node"
    for cpu, gpu in requests:
        if any(n.get("CPU", 0) >= cpu and n.get("GPU", 0) >= gpu for n in nodes):
            continue
        msg = f"a trial asks for {cpu:g} CPU and {gpu:g} GPU on one node, but the nodes have: {largest}"
        if r.autoscale:
            log(f"[sweep] warning: {msg}; waiting for the autoscaler to add such a node (resources.autoscale: true)")
        else:
            problems.append(
                f"{msg}. Lower resources.cpus_per_trial or resources.gpus_per_trial, add a larger node, "
                "or set resources.autoscale: true if an autoscaler will add one"
            )
    if problems:
        raise ValueError(f"{spec.source}: resource requests can never be met:\n  - " + "\n  - ".join(problems))


# -- callbacks -------------------------------------------------------------------------------
class TrialLogCallback(tune.Callback):
    """Hands Tune's trial events to a ``triallog.TrialRecorder``, which writes the rows.

    Runs in the driver on Tune's control loop, so writes never race. ``unfinished`` lists,
    at the end, the Tune trials that neither finished nor failed: they have no row, and
    running the same command again resumes them.
    """

    def __init__(self, recorder: triallog.TrialRecorder):
        self.recorder = recorder
        self.unfinished: list[str] = []

    def on_trial_start(self, iteration, trials, trial, **info):
        self.recorder.start(trial.trial_id)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.recorder.result(trial.trial_id, trial.config, result, trial.num_failures)

    def on_trial_complete(self, iteration, trials, trial, **info):
        if triallog.is_final(trial.last_result):  # its function returned, with its final metrics
            self._close(trial, *triallog.outcome(trial.last_result))
        # else: stopped on the way (the sweep was interrupted); no row, it resumes next time

    def on_trial_error(self, iteration, trials, trial, **info):
        self._close(trial, "ERROR", _error_text(trial))

    def on_experiment_end(self, trials, **info):
        # Safety net for events that did not reach this callback (e.g. around a lost node, or a
        # trial Tune failed before it started); trials that are neither finished nor failed are
        # listed, not logged.
        for trial in trials:
            if trial.status == "ERROR":
                self._close(trial, "ERROR", f"ended ERROR: {_error_text(trial)}")
            elif triallog.is_final(trial.last_result) and trial.trial_id in self.recorder.started:
                self._close(trial, *triallog.outcome(trial.last_result))  # (else logged by an earlier run)
        self.recorder.flush()
        self.unfinished = [t.trial_id for t in trials if not (t.status == "ERROR" or triallog.is_final(t.last_result))]

    def _close(self, trial, status: str, error: str | None) -> None:
        self.recorder.close(trial.trial_id, trial.config, trial.last_result or {}, status, error, trial.num_failures)


class CheckpointPruner(tune.Callback):
    """Deletes each trial's checkpoints older than the one Tune's saved experiment state names.

    Tune's own ``num_to_keep`` deletes the older checkpoint as soon as a new one registers, but
    saves its experiment state on a throttle: a driver killed in between resumed a trial from a
    deleted checkpoint, and lost it (ray-project/ray#27790). A resume reads the state file on
    storage, so the checkpoint that file names, and every later one, is kept; the older ones
    can never be asked for again. Disk stays bounded by the checkpoints a trial makes between
    two state saves. Best effort: a state file caught mid-write is read at the next checkpoint.
    """

    def __init__(self, experiment: str):
        self.experiment = experiment
        self._read: tuple | None = None  # (name, mtime, size) of the state file last pruned against

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        self.prune()

    def prune(self) -> int:
        """Delete what the saved state can no longer resume from; the number of checkpoints deleted."""
        fs, path = triallog.filesystem(self.experiment)
        states = [f for f in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
                  if f.base_name.startswith("experiment_state-") and f.base_name.endswith(".json")]
        if not states:
            return 0
        state = max(states, key=lambda f: f.base_name)  # the newest session's, the one a resume reads
        key = (state.base_name, state.mtime_ns, state.size)
        if key == self._read:
            return 0
        quiet = logging.getLogger("ray.tune.analysis.experiment_analysis")
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # trials with no results yet are no news
        try:
            saved = ExperimentAnalysis(state.path, storage_filesystem=fs).trials
        except Exception as err:  # caught mid-write: keeping files is always safe
            logger.debug("checkpoint pruning skipped, %s unreadable: %s", state.path, err)
            return 0
        finally:
            quiet.setLevel(level)
        self._read, n = key, 0
        for t in saved:
            if t.checkpoint is not None:
                n += _delete_older(fs, t.storage.trial_fs_path, os.path.basename(t.checkpoint.path))
        return n


def _delete_older(fs, trial_dir: str, named: str) -> int:
    """Delete the ``checkpoint_<i>`` folders in ``trial_dir`` older than ``named``."""
    older = [f for f in fs.get_file_info(pafs.FileSelector(trial_dir, allow_not_found=True))
             if f.type == pafs.FileType.Directory and f.base_name.startswith("checkpoint_")
             and f.base_name < named]  # zero-padded, so names sort as their indices
    for f in older:
        fs.delete_dir(f.path)
    return len(older)


def _error_text(trial) -> str:
    return triallog.error_text(getattr(trial, "error_file", None), getattr(trial, "error_msg", None))


class TensorBoardCallback(tune.Callback):
    """Scalars per trial under ``<sweep>/tensorboard/<trial>`` (losses, brain r, throughput).

    tensorboardX writes local files: the events go to ``staged.path`` (a staging folder for a
    URI root), published when a trial ends and when the sweep ends.
    """

    KEYS = ("train_loss", "val_loss", "brain_r_mean", "brain_r_max", "tokens_per_s", "mfu", "lr")

    def __init__(self, staged: triallog.Staged):
        self.staged = staged
        self._writers: dict[str, Any] = {}

    def __getstate__(self):  # writers hold open files; they are re-opened after a restore
        return {**self.__dict__, "_writers": {}}

    def on_trial_result(self, iteration, trials, trial, result, **info):
        from tensorboardX import SummaryWriter

        branch = result.get("branch")  # a reuse branch's cooldown gets a run of its own
        key = triallog.branch_id(trial.trial_id, branch) if branch else trial.trial_id
        if key not in self._writers:
            run = triallog.branch_id(str(trial), branch) if branch else str(trial)
            self._writers[key] = SummaryWriter(os.path.join(self.staged.path, run))
        w = self._writers[key]
        for k in self.KEYS:
            v = result.get(k)
            if isinstance(v, (int, float)) and math.isfinite(v):  # a missing value is not a point (nor a warning)
                w.add_scalar(k, v, global_step=result.get("step", 0))

    def on_trial_complete(self, iteration, trials, trial, **info):
        for key in [k for k in self._writers if k == trial.trial_id or k.startswith(f"{trial.trial_id}-d")]:
            self._writers.pop(key).close()
        self.staged.publish()

    on_trial_error = on_trial_complete

    def on_experiment_end(self, trials, **info):
        for w in self._writers.values():
            w.flush()
        self.staged.publish()


# -- driver ----------------------------------------------------------------------------------
class SweepInterrupted(RuntimeError):
    """The sweep stopped before every trial finished (Ctrl-C, a stop signal); its log is partial."""


# Tune's end-of-run lines that are wrong for brainray: the way to resume is the same command.
_TUNE_NOISE = ("Tuner.restore", "Failed to fetch metrics", "Trials did not complete")


class _QuietTune(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(s in record.getMessage() for s in _TUNE_NOISE)


def _quiet_tune() -> None:
    for name in ("ray.tune.tune", "ray.tune.analysis.experiment_analysis"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _QuietTune) for f in logger.filters):
            logger.addFilter(_QuietTune())


# Tune waits this long (default 2 s) for a finished trial's thread before reusing its actor,
# and fails the next trial when it misses it, which a busy machine does. A finished trial's
# thread always ends (it only frees memory), so waiting for it is safe.
REUSE_WAIT = ("TUNE_FUNCTION_THREAD_TIMEOUT_S", "600")


def run_sweep(
    spec: SweepSpec,
    storage: str,
    address: str | None = None,
    fresh: bool = False,
    num_cpus: int | None = None,
    log: Log = print,
    *,
    data_dir: str | None = None,
    search: str = "grid",
    samples: int = 8,
    reuse_actors: bool | None = None,
    prepare_only: bool = False,
    extrapolate: float | None = None,
    allow_unidentified: bool = False,
) -> str:
    """Prepare, run every trial of ``spec`` on Ray Tune, and return the sweep folder (path or URI).

    Re-running resumes: trials already finished are not re-run, unfinished ones continue
    from their last checkpoint, failed ones are tried again. ``fresh`` deletes the sweep's
    previous results (the prepared dataset, keyed by its settings, is kept). One driver
    per sweep: a second one on the same ``<storage>/<name>`` raises ``locks.LockHeld``.

    Parameters
    ----------
    storage : str
        Absolute path or URI (``s3://``, ``gs://``, ``file://``) under which ``<spec.name>/`` is written.
    data_dir : str, optional
        POSIX folder (shared by all nodes) for the prepared dataset; default ``<storage>/<name>/data``.
        Required when ``storage`` is a URI.
    search : {"grid", "optuna"}, default="grid"
        ``grid``: every trial of the spec's axes, FIFO. ``optuna``: ``samples`` trials drawn by
        Optuna's TPE over ``n_embd`` and ``data_frames`` (log-uniform integers between the axes'
        smallest and largest values; ``n_embd`` a multiple of the reference ``n_head``; the other
        axes at the reference), FIFO. Its trials land in the same trial log.
    reuse_actors : bool, optional
        Run the next trial in the finished trial's worker process (same resource request),
        saving the process start and the imports (torch, transformers: ~6 s here); see
        ``results/benchmarks/sweep_overhead.json``. The trainable keeps no state between trials
        and frees its tensors and the CUDA cache when it ends. Default (None): on for a local
        Ray instance, off when joining a cluster (``address``): after a node is lost, Tune may
        hand a retried trial to the dead node's cached actor again and burn its retries in the
        same second (seen in ``tests/test_cluster_live.py``), and cluster trials are long enough
        that a process start is a small share of them.
    prepare_only : bool, default=False
        Prepare (or find) the dataset and return without starting a trial: a cluster prepares
        the data once, before its sweeps.
    extrapolate : float, optional
        Predict, then verify (``brainray.extrapolate``): fit the sweep's finished trials, plan the
        compute-optimal trial at ``extrapolate`` x the largest budget with its IsoFLOP neighbours,
        and run them into the same trial log (``role = "extrapolation"``, with their predictions;
        Tune's state under ``tune-extrapolate/x<K>``). Running it again resumes the same plan (the
        extrapolation rows are never fitted).
    allow_unidentified : bool, default=False
        With ``extrapolate``: plan even when neither law is identified by the sweep.

    Raises
    ------
    SweepInterrupted
        If the sweep stopped before every trial finished; the same call resumes it.
    """
    if reuse_actors is None:
        reuse_actors = address is None
    check_search(spec, search, samples)
    if extrapolate is not None:
        xp.check_request(extrapolate, fresh, search)
    root = f"{str(storage).rstrip('/')}/{spec.name}"
    data_root = dataset_root(root, storage, data_dir, spec)
    fs, base = triallog.filesystem(root)
    fs.create_dir(base, recursive=True)
    lock = f"{base}/.driver.lock" if not triallog.is_uri(root) else \
        str(Path(data_root).parent / f".driver-{stable_hash(root)}.lock")
    with locks.exclusive(lock, f"the sweep {root}"):
        if fresh:
            triallog.remove_results(root)
            log(f"[sweep] --fresh: removed previous results in {root} ({', '.join(triallog.RESULT_ENTRIES)})")
        with fs.open_output_stream(f"{base}/spec.json") as f:
            f.write(json.dumps(spec.to_dict(), indent=1, default=str).encode())
        if not ray.is_initialized():
            _start_ray(address, num_cpus)
        cluster = ray.cluster_resources()
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        check_resources(spec, nodes, joined=address is not None, log=log)
        log(f"[sweep] Ray cluster: {len(nodes)} nodes, {cluster.get('CPU', 0):g} CPUs, {cluster.get('GPU', 0):g} GPUs")

        t0 = time.perf_counter()
        log(f"[prepare] dataset {data_root}")
        dataset = prep.prepare_on_ray(spec, data_root, log)
        spec.validate(max_data_frames=dataset.train_frames)
        log(f"[prepare] ready in {time.perf_counter() - t0:.0f} s ({dataset.train_frames} training frames)")
        if prepare_only:
            log(f"[sweep] --prepare-only: the dataset is ready at {data_root}; no trial was started")
            return root
        if extrapolate is not None:
            plan = xp.plan_from_log(root, spec, dataset, extrapolate, allow_unidentified, log=log)
            _run_trials(spec, root, data_root, cluster, reuse_actors, log, trials=plan.trials,
                        experiment=f"{root}/{EXPERIMENT}-extrapolate/{plan.name}")
        else:
            _run_trials(spec, root, data_root, cluster, reuse_actors, log, search, samples)
    return root


def _start_ray(address: str | None, num_cpus: int | None) -> None:
    """A new local instance without ``address``; else join it, failing fast if it cannot be reached.

    A bare ``ray.init()`` would join any `ray start` cluster recorded in
    /tmp/ray/ray_current_cluster (another user's, or one left by a killed driver) and then
    refuse num_cpus, so no address always means "local".
    """
    if address is None:
        ctx = ray.init(address="local", num_cpus=num_cpus, log_to_driver=True, include_dashboard=False)
        reaper.watch(os.getpid(), ctx.address_info["session_dir"])
        return
    check_address(address)
    try:
        ray.init(address=address, log_to_driver=True)
    except ConnectionError as e:
        raise ValueError(f"--address {address}: {e}") from e


def _run_trials(
    spec: SweepSpec, root: str, data_root: str, cluster: dict[str, float], reuse_actors: bool, log: Log,
    search: str = "grid", samples: int = 0, trials: list[dict[str, Any]] | None = None, experiment: str | None = None,
) -> None:
    """Run a FIFO grid (the spec's trials, or ``trials``) or an Optuna search as the Tune experiment
    ``experiment`` (default ``<root>/tune``, ``<root>/tune-optuna``), every trial into ``<root>``'s trial log."""
    constants = {"dataset": data_root, "train": dataclasses.asdict(spec.train)}
    if search == "optuna":
        space = _OptunaSpace(spec)
        log(f"[sweep] Optuna search: {samples} trials, {space} (FIFO)")
        from ray.tune.search.optuna import OptunaSearch

        search_alg = OptunaSearch(space=space, metric="val_loss", mode="min", seed=int(spec.axes.reference["seed"]))
        param_space, num_samples, experiment = constants, samples, experiment or f"{root}/{EXPERIMENT}-optuna"
    else:
        if trials is not None:
            log(f"[sweep] {len(trials)} trials (FIFO grid)")
        elif spec.train.data_schedule == "reuse":
            trials = spec.runs()
            n = sum(len(t.get("branches") or [t]) for t in trials)  # a control is one trial
            log(f"[sweep] {n} trials as {len(trials)} reuse runs (one per model config; each smaller data size "
                "a cooldown branch, logged as its own trial), FIFO grid")
        else:
            trials = spec.runs()
            log(f"[sweep] {len(trials)} trials over data_frames, n_embd, n_layer, n_head, dtype (FIFO grid)")
        param_space, search_alg, num_samples = {"trial": tune.grid_search(trials), **constants}, None, 1
        experiment = experiment or f"{root}/{EXPERIMENT}"

    report = live.LiveReport(root, log=log)
    trial_log = TrialLogCallback(triallog.TrialRecorder(root, spec.name, on_row=report.refresh))
    tensorboard = triallog.Staged(root, "tensorboard")
    pruner = CheckpointPruner(experiment)
    callbacks = [trial_log, TensorBoardCallback(tensorboard), pruner]
    # No "Current best trial" line: TuneConfig names no metric (in a scaling sweep the lowest loss
    # is simply the largest model); the Optuna searcher carries its own.
    reporter = tune.CLIReporter(
        metric_columns={"step": "step", "val_loss": "val loss", "brain_r_mean": "brain r", "eta_s": "ETA s"},
        parameter_columns={
            "trial/data_frames": "frames", "trial/n_embd": "width", "trial/n_layer": "layers",
            "trial/n_head": "heads", "trial/dtype": "dtype", "trial/seed": "seed",
            "trial/control": "control",  # untrained or codes; empty for a trained trial
        },
        max_report_frequency=30,
    )
    fn = tune.with_resources(tune.with_parameters(trainable, root=root), trial_resources(spec, cluster))
    if tune.Tuner.can_restore(experiment):
        log(f"[sweep] resuming {experiment}: finished trials are kept, unfinished and failed ones run again "
            "(from their checkpoints)")
        tuner = tune.Tuner.restore(
            experiment, trainable=fn, resume_errored=True, param_space=None if search_alg else param_space
        )
        # The restored run config holds the callbacks pickled by the first run, with the paths
        # of that run: a sweep folder moved or copied since would be written at its old place.
        # Ray 2.60 has no public way to replace them: Tuner.restore takes no run_config, and the
        # restored RunConfig is reachable only through the private _local_tuner (ray-project/ray#41364).
        restored = tuner._local_tuner.get_run_config()
        restored.callbacks, restored.progress_reporter = callbacks, reporter
    else:
        storage_path, name = experiment.rsplit("/", 1)
        tuner = tune.Tuner(
            fn,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                search_alg=search_alg, num_samples=num_samples,
                max_concurrent_trials=spec.resources.max_concurrent_trials or None, reuse_actors=reuse_actors,
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=storage_path,
                failure_config=tune.FailureConfig(max_failures=spec.resources.max_failures),
                # Tune deletes nothing; CheckpointPruner deletes what the saved state cannot resume
                # from (ray-project/ray#27790; tests/test_reuse.py caught Tune's own pruning).
                checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
                callbacks=callbacks,
                progress_reporter=reporter,
                verbose=1,
            ),
        )
    _quiet_tune()
    t0 = time.perf_counter()
    try:
        with tensorboard:
            tuner.fit()
    finally:
        report.close()
    pruner.prune()  # against the state Tune saved as it stopped
    if trial_log.unfinished:
        raise SweepInterrupted(
            f"the sweep {root} stopped before {len(trial_log.unfinished)} of its trials finished "
            f"({', '.join(trial_log.unfinished[:6])}{' ...' if len(trial_log.unfinished) > 6 else ''}). "
            "They have no row in the trial log yet."
        )
    log(f"[sweep] trials done in {time.perf_counter() - t0:.0f} s")


class _OptunaSpace(SearchSpace):
    """Optuna define-by-run form of ``config.SearchSpace`` (its ranges, which ``--dry-run`` prints).

    A class, not a closure: the searcher is pickled into the experiment state.
    """

    def __call__(self, trial) -> dict[str, Any]:
        k = trial.suggest_int("n_embd_per_head", *self.k_range, log=True)
        frames = trial.suggest_int("data_frames", *self.frames_range, log=True)
        return {"trial": {**self.reference, "n_embd": k * self.n_head, "data_frames": frames}}
