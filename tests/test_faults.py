"""Faults a sweep must survive, on a real Ray: a lost node, a killed driver, a failing trial.

Every test ends by checking the trial log: one row per trial (``triallog.read_trials``)
and one part file per trial, so nothing is lost and nothing is written twice. The trials
share the smoke preset's dataset (``tiny_dataset``, prepared once per session) through
``data_dir``; the specs are small YAML files written to ``tmp_path``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from brainray import triallog
from brainray.config import PRESETS_DIR, load_spec

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow

# Slow enough to be caught mid-run (~0.6 s per epoch on one core), one checkpoint per epoch.
LONG = {"n_embd": 128, "n_layer": 4, "n_head": 1}
EPOCHS = 15


def _write_spec(tmp_path: Path, name: str, train=None, axes=None, resources=None) -> Path:
    """The smoke preset with overrides (same data and tokenizer, so the same prepared dataset)."""
    raw = yaml.safe_load((PRESETS_DIR / "smoke.yaml").read_text())
    raw["name"] = name
    raw["train"].update(train or {})
    # No control rows: these tests count and index trial rows; controls are tested in test_sweep and test_trial.
    raw["axes"] = {**raw["axes"], "controls": [], **(axes or {})}
    raw["resources"].update(resources or {})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _long_axes(data_frames=(1200, 2400), n_embd=(128,)) -> dict:
    return {
        "design": "lines", "cross": False,
        "reference": {"data_frames": 2400, **LONG, "dtype": "fp32", "seed": 0},
        "data_frames": list(data_frames), "n_embd": list(n_embd), "n_layer": [4], "n_head": [1], "dtype": ["fp32"],
    }


def _part_files(root: Path) -> list[Path]:
    return sorted((root / "trials").glob("*.parquet"))


def _assert_one_row_per_trial(root: Path, n: int):
    log = triallog.read_trials(str(root))
    assert len(log) == n == log["trial_id"].nunique(), log[["trial_id", "status"]]
    assert len(_part_files(root)) == n, [p.name for p in _part_files(root)]
    return log


def _on_disk(root: Path) -> dict[str, list[int]]:
    """The checkpoint indices per trial id, ascending, read from Tune's folders on storage."""
    out: dict[str, list[int]] = {}
    for ck in sorted((root / "tune").glob("trainable_*/checkpoint_*")):
        out.setdefault("_".join(ck.parent.name.split("_")[1:3]), []).append(int(ck.name.split("_")[-1]))
    return out


def _checkpoints(root: Path) -> dict[str, int]:
    """Latest checkpoint index per trial id."""
    return {t: have[-1] for t, have in _on_disk(root).items()}


def _mid_run(root: Path) -> list[str]:
    """Trials with a checkpoint, not yet logged, and at least 3 epochs from their end.

    Killing a trial after its last checkpoint would test resuming a finished training loop,
    which is not what these tests are about.
    """
    logged = triallog.logged_trial_ids(str(root))
    return [t for t, i in _checkpoints(root).items() if t not in logged and i <= EPOCHS - 3]


@pytest.fixture
def ray_cleanup():
    yield
    import ray

    ray.shutdown()


def _run_sweep(spec_path: Path, storage: Path, data_dir: str, **kw):
    from brainray.sweep import run_sweep

    spec = load_spec(str(spec_path))
    return run_sweep(spec, str(storage), num_cpus=2, data_dir=data_dir, **kw), spec


# -- a. a worker node is lost mid-sweep ------------------------------------------------------
def test_trials_on_a_removed_node_resume_on_the_head(tmp_path, tiny_dataset, ray_cleanup):
    import ray
    from ray.cluster_utils import Cluster

    spec_path = _write_spec(
        tmp_path, "nodeloss", train={"epochs": EPOCHS}, axes=_long_axes(),
        resources={"gpus_per_trial": 0, "max_failures": 3},
    )
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        worker = cluster.add_node(num_cpus=1)  # main thread only (it installs a signal handler)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address)
        root = tmp_path / "nodeloss"
        errors = []

        def sweep():
            try:
                from brainray.sweep import run_sweep

                run_sweep(load_spec(str(spec_path)), str(tmp_path), address=cluster.address,
                          data_dir=str(tiny_dataset.root.parent))
            except BaseException as e:  # surfaced in the main thread
                errors.append(e)

        th = threading.Thread(target=sweep, daemon=True)
        th.start()
        deadline = time.time() + 240
        # Both trials run at once, one per node: wait until both have checkpoints, then pull the worker.
        while len(_mid_run(root)) < 2 and th.is_alive() and time.time() < deadline:
            time.sleep(0.2)
        assert len(_mid_run(root)) == 2, f"trials never ran side by side: {_checkpoints(root)}"
        cluster.remove_node(worker, allow_graceful=False)
        th.join(timeout=300)
        assert not th.is_alive(), "the sweep did not finish after the node was removed"
        assert not errors, errors
    finally:
        ray.shutdown()
        cluster.shutdown()
    log = _assert_one_row_per_trial(root, 2)
    assert (log["status"] == "TERMINATED").all(), log[["trial_id", "status", "error"]]
    assert log["num_failures"].sum() >= 1, "no trial was retried: the node was removed after the sweep"
    assert log["brain_r_mean"].notna().all()


# -- b. the driver is SIGKILLed, then the same command is run again ----------------------------
def _scaling_cmd(spec_path, storage, data_dir):
    return [sys.executable, str(REPO / "sweeps" / "scaling.py"), "--preset", str(spec_path),
            "--storage", str(storage), "--num-cpus", "2", "--data-dir", data_dir, "--no-report"]


def test_killed_driver_resumes_without_rerunning_finished_trials(tmp_path, tiny_dataset):
    # n_embd 16 is quick: one trial finishes while the n_embd 128 ones are mid-run.
    spec_path = _write_spec(
        tmp_path, "driverkill", train={"epochs": EPOCHS}, axes=_long_axes(n_embd=(16, 128)),
        resources={"max_failures": 1},
    )
    n_trials = len(load_spec(str(spec_path)).runs())
    root = tmp_path / "driverkill"
    cmd = _scaling_cmd(spec_path, tmp_path, str(tiny_dataset.root.parent))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first_log = open(tmp_path / "first.log", "w")
    # Its own process group: the Ray processes this driver starts are in it, and are killed
    # with it at the end if they outlive their driver.
    first = subprocess.Popen(cmd, stdout=first_log, stderr=subprocess.STDOUT, cwd=REPO, env=env,
                             start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and first.poll() is None:
            if _part_files(root) and _mid_run(root):
                break
            time.sleep(0.2)
        first_out = (tmp_path / "first.log").read_text()[-3000:]
        assert first.poll() is None, "the sweep ended before it could be killed:\n" + first_out
        assert _part_files(root) and _mid_run(root)
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        done_before = {p.name: p.stat().st_mtime_ns for p in _part_files(root)}

        again = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
        assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    finally:
        try:
            os.killpg(first.pid, signal.SIGKILL)  # Ray processes left by the killed driver, if any
        except ProcessLookupError:
            pass
        first_log.close()
    out = again.stdout + again.stderr
    assert "resuming" in out
    assert "from checkpoint" in out  # the mid-run trial continued from its checkpoint
    # The killed driver's Ray processes (its dashboard and runtime-env agents outlive it) are gone.
    from brainray import reaper

    sessions = set(re.findall(r"/tmp/ray/session_[0-9_-]+", (tmp_path / "first.log").read_text()))
    assert sessions, first_out
    assert not [pid for s in sessions for pid in reaper.leftovers(s)], "Ray processes outlived their driver"
    log = _assert_one_row_per_trial(root, n_trials)
    assert (log["status"] == "TERMINATED").all(), log[["trial_id", "status", "error"]]
    for name, mtime in done_before.items():  # finished trials were not re-run or re-written
        assert (root / "trials" / name).stat().st_mtime_ns == mtime


def _saved_checkpoints(root: Path) -> dict[str, int]:
    """The checkpoint index per trial id that Tune's experiment state on storage names (what a resume reads)."""
    from ray.tune import ExperimentAnalysis

    try:
        trials = ExperimentAnalysis(str(root / "tune")).trials
    except Exception:  # not written yet, or caught mid-write
        return {}
    return {t.trial_id: int(t.checkpoint.path.rsplit("_", 1)[-1]) for t in trials if t.checkpoint is not None}


def test_a_killed_driver_resumes_from_the_checkpoint_its_saved_state_names(tmp_path, tiny_dataset):
    """Tune saves its experiment state every 4 s here, so a trial makes several checkpoints in
    between: the driver is killed when the saved state names a checkpoint two older than the
    trial's newest. Keeping only the newest (Tune's ``num_to_keep=1``) loses that trial; the
    pruner keeps what the saved state names and deletes only what is older."""
    epochs = 30
    spec_path = _write_spec(tmp_path, "lagkill", train={"epochs": epochs}, axes=_long_axes(data_frames=(2400,)),
                            resources={"max_failures": 0})
    root = tmp_path / "lagkill"
    cmd = _scaling_cmd(spec_path, tmp_path, str(tiny_dataset.root.parent))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TUNE_GLOBAL_CHECKPOINT_S": "4"}
    first_log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(cmd, stdout=first_log, stderr=subprocess.STDOUT, cwd=REPO, env=env,
                             start_new_session=True)
    try:
        caught = None
        deadline = time.time() + 240
        while time.time() < deadline and first.poll() is None and caught is None:
            saved, disk = _saved_checkpoints(root), _on_disk(root)
            for trial_id, named in saved.items():
                have = disk.get(trial_id, [])
                # Pruned (nothing older than the named one), two or more behind the newest (never
                # on disk if only the newest is kept, even just before the older one is deleted), mid-run.
                if named >= 1 and have and have[0] == named and named + 2 <= have[-1] <= epochs - 3:
                    caught = trial_id, named, have
            time.sleep(0.2)
        assert caught, "never caught the saved state behind the newest checkpoint:\n" + \
            (tmp_path / "first.log").read_text()[-3000:]
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        again = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
        assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    finally:
        try:
            os.killpg(first.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        first_log.close()
    restored = re.findall(r"from checkpoint: .*checkpoint_(\d+)", again.stdout + again.stderr)
    assert restored and int(restored[0]) >= caught[1], (caught, restored)  # the named one (or a later save's)
    log = _assert_one_row_per_trial(root, 1)
    assert (log["status"] == "TERMINATED").all(), log[["trial_id", "status", "error"]]
    # Bounded: at the end only the checkpoint the final state names is left.
    trial_id = caught[0]
    assert _on_disk(root)[trial_id] == [_saved_checkpoints(root)[trial_id]]


# -- c. a trial raises: the sweep goes on ------------------------------------------------------
def test_a_trial_that_raises_is_logged_as_error_and_the_sweep_goes_on(tmp_path, tiny_dataset, ray_cleanup):
    # A real fault: one training replay's token file is cut short in the shared dataset. It still
    # exists, so the dataset opens (existence is checked, not content); only the trial whose data
    # budget reaches into that replay reads it and fails (1200 frames fit in the first one).
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset.root, data / tiny_dataset.root.name)
    cut = data / tiny_dataset.root.name / "tokens" / "play-0001.npy"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])  # the .npy header survives, the codes do not
    spec_path = _write_spec(
        tmp_path, "raises", axes={**_long_axes(), "reference": {**_long_axes()["reference"], "n_embd": 16},
                                  "n_embd": [16]},
        resources={"max_failures": 0},
    )
    root, _ = _run_sweep(spec_path, tmp_path, str(data))
    log = _assert_one_row_per_trial(Path(root), 2).set_index("data_frames")
    assert log.loc[1200, "status"] == "TERMINATED" and log.loc[1200, "brain_r_mean"] > 0
    assert log.loc[2400, "status"] == "ERROR"
    error = log.loc[2400, "error"]
    assert "play-0001.npy cannot be read" in error and "corrupt or truncated" in error, error


# -- d. a trial diverges -----------------------------------------------------------------------
def test_a_diverging_trial_is_logged_as_error_with_the_reason(tmp_path, tiny_dataset, ray_cleanup):
    # A legal but absurd LR (the spec refuses inf): the second step's loss is NaN.
    spec_path = _write_spec(
        tmp_path, "diverges", train={"lr": 1e30},
        axes={**_long_axes(), "reference": {**_long_axes()["reference"], "n_embd": 16}, "n_embd": [16]},
        resources={"max_failures": 0},
    )
    root, _ = _run_sweep(spec_path, tmp_path, str(tiny_dataset.root.parent))
    log = _assert_one_row_per_trial(Path(root), 2)
    assert (log["status"] == "ERROR").all()
    assert log["error"].str.contains("diverged").all(), log["error"].tolist()


# -- Optuna search and URI storage ---------------------------------------------------------------
def test_optuna_search_logs_its_trials_with_their_axes(tmp_path, tiny_dataset, ray_cleanup):
    spec_path = _write_spec(tmp_path, "optuna", train={"epochs": 3}, axes={"n_embd": [8, 32]},
                            resources={"max_failures": 0})
    # file:// exercises the URI path of Tune, the trial log, TensorBoard and the report.
    root, spec = _run_sweep(spec_path, f"file://{tmp_path}", str(tiny_dataset.root.parent),
                            search="optuna", samples=3)
    assert root == f"file://{tmp_path}/optuna"
    from brainray.summary import run_frontier

    assert run_frontier(root, bootstrap=5, log=lambda m: None) == f"{root}/frontier"
    local = tmp_path / "optuna"
    log = _assert_one_row_per_trial(local, 3)
    assert (log["status"] == "TERMINATED").all(), log[["trial_id", "status", "error"]]
    ref = spec.axes.reference
    assert log["n_embd"].between(8, 32).all() and (log["n_embd"] % ref["n_head"] == 0).all()
    assert log["data_frames"].between(1200, 2400).all()
    assert (log["n_layer"] == ref["n_layer"]).all() and (log["dtype"] == ref["dtype"]).all()
    assert (local / "tune-optuna").is_dir()
    # three epochs, three checkpoints each; pruned through the URI's filesystem to the one the final state names
    assert [len(list(d.glob("checkpoint_*"))) for d in (local / "tune-optuna").glob("trainable_*")] == [1, 1, 1]
    assert (local / "frontier" / "report.html").exists()
    assert list((local / "tensorboard").rglob("events.out.tfevents.*"))
    from brainray import parcels  # per-parcel tables through the URI's filesystem, and the report maps one

    assert all(parcels.read_parcel_scores(root, t) is not None for t in log["trial_id"])
    assert (local / "frontier" / "parcels.png").exists()
