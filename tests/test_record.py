"""The trial log stays the truth about what ran: Ctrl-C, reruns, two drivers, moved folders.

Real Ray and real signals throughout: drivers are ``sweeps/scaling.py`` subprocesses in
their own process group, interrupted with ``os.killpg(..., SIGINT)`` as a terminal's
Ctrl-C would. The specs are the smoke preset with overrides (``test_faults._write_spec``),
so every test shares the session's prepared dataset (``tiny_dataset``).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from test_faults import EPOCHS, _checkpoints, _long_axes, _part_files, _scaling_cmd, _write_spec

from brainray import locks, reaper, triallog
from brainray.config import load_spec

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def _start(cmd: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=REPO, env=ENV,
                            start_new_session=True)


def _wait_for(cond, proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not cond():
        time.sleep(0.2)
    assert proc.poll() is None and cond(), "the driver ended or never got there:\n" + log.read_text()[-3000:]


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _rows(root: Path) -> pd.DataFrame:
    """The log as a plain pandas read sees it; it must agree with ``read_trials``."""
    if not (root / "trials").is_dir():
        return pd.DataFrame(columns=["trial_id", "status", "brain_r_mean"])
    plain = pd.read_parquet(root / "trials")
    assert len(plain) == plain["trial_id"].nunique() == len(triallog.read_trials(str(root))), plain
    return plain


# -- Ctrl-C mid-trial, with trials still pending; resumed in a copy of the folder --------------
@pytest.mark.slow
def test_ctrl_c_logs_nothing_false_and_a_moved_copy_resumes_to_one_row_each(tmp_path, tiny_dataset):
    spec_path = _write_spec(tmp_path, "ctrlc", train={"epochs": EPOCHS}, axes=_long_axes(n_embd=(16, 128)))
    n = len(load_spec(str(spec_path)).runs())
    root = tmp_path / "ctrlc"
    data_dir = str(tiny_dataset.root.parent)
    first = _start(_scaling_cmd(spec_path, tmp_path, data_dir), tmp_path / "first.log")
    try:  # interrupt once a trial is mid-run (it has a checkpoint) and others have not started
        _wait_for(lambda: _checkpoints(root), first, tmp_path / "first.log")
        os.killpg(first.pid, signal.SIGINT)
        rc = first.wait(timeout=120)
    finally:
        _kill_group(first)
    out = (tmp_path / "first.log").read_text()
    assert rc == 130, out[-3000:]
    assert "interrupted" in out and "to resume, run the same command" in out and "--preset" in out
    assert "Tuner.restore" not in out and "Best configuration" not in out
    log = _rows(root)
    assert len(log) < n, "every trial has a row though the sweep was interrupted mid-trial"
    assert (log["status"] == "TERMINATED").all() and log["brain_r_mean"].notna().all(), log

    # The folder is copied elsewhere and resumed there: everything lands in the copy, nothing in the original.
    moved = tmp_path / "moved"
    shutil.copytree(root, moved / "ctrlc")
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    again = subprocess.run(_scaling_cmd(spec_path, moved, data_dir), capture_output=True, text=True, cwd=REPO,
                           env=ENV, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resuming" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before, "the resumed copy wrote into the original"
    log = _rows(moved / "ctrlc")
    assert len(log) == n and (log["status"] == "TERMINATED").all() and log["brain_r_mean"].notna().all()
    assert len(_part_files(moved / "ctrlc")) == n
    assert set(triallog.read_curves(str(moved / "ctrlc"))["trial_id"]) == set(log["trial_id"])
    assert list((moved / "ctrlc" / "tensorboard").rglob("events.out.tfevents.*"))
    lines = again.stdout.splitlines()  # prepare's own lines come before the driver's "ready"
    cached = next(i for i, s in enumerate(lines) if s.startswith("[prepare] cached dataset"))
    assert cached < next(i for i, s in enumerate(lines) if s.startswith("[prepare] ready"))


# -- a trial errors, is fixed, and the rerun finishes it --------------------------------------
@pytest.mark.slow
def test_a_rerun_that_finishes_an_errored_trial_supersedes_its_error_row(tmp_path, tiny_dataset):
    from brainray.sweep import run_sweep

    data = tmp_path / "data"
    shutil.copytree(tiny_dataset.root, data / tiny_dataset.root.name)
    tokens = data / tiny_dataset.root.name / "tokens" / "play-0001.npy"
    good = tokens.read_bytes()
    tokens.write_bytes(good[: len(good) // 3])  # only the trial whose budget reaches this replay reads it
    spec_path = _write_spec(
        tmp_path, "rerun", axes={**_long_axes(), "reference": {**_long_axes()["reference"], "n_embd": 16},
                                 "n_embd": [16]},
        resources={"max_failures": 0},
    )
    spec, root = load_spec(str(spec_path)), tmp_path / "rerun"
    try:
        run_sweep(spec, str(tmp_path), num_cpus=2, data_dir=str(data), log=lambda m: None)
        first = _rows(root).set_index("data_frames")
        assert first.loc[2400, "status"] == "ERROR" and first.loc[1200, "status"] == "TERMINATED"
        tokens.write_bytes(good)  # the user repairs the dataset and runs the same command
        run_sweep(spec, str(tmp_path), num_cpus=2, data_dir=str(data), log=lambda m: None)
    finally:
        import ray

        ray.shutdown()
    log = _rows(root).set_index("data_frames")
    assert (log["status"] == "TERMINATED").all() and log["brain_r_mean"].notna().all(), log[["status", "error"]]
    assert len(_part_files(root)) == 2
    superseded = list((root / "trials" / triallog.SUPERSEDED).glob("*.parquet"))
    assert len(superseded) == 1 and pd.read_parquet(superseded[0])["status"].item() == "ERROR"
    assert log.loc[1200, "trial_id"] == first.loc[1200, "trial_id"]  # the finished trial was not re-run


# -- actor reuse on a busy machine ------------------------------------------------------------
def _slow_teardown() -> None:
    """Runs in every Ray worker: a trial's thread ends 4 s after its last report, as on a loaded machine."""
    from brainray import sweep

    release = sweep._release_memory

    def slow() -> None:
        release()
        time.sleep(4)

    sweep._release_memory = slow


@pytest.mark.slow
@pytest.mark.parametrize("tune_wait", [None, "1"], ids=["brainray-policy", "tune-default-wait-too-short"])
def test_actor_reuse_loses_no_trial_when_a_finished_trial_is_slow_to_end(tmp_path, tiny_dataset, monkeypatch,
                                                                        tune_wait):
    """With brainray's policy every trial finishes. With a wait set too short (Tune's own 2 s is, on a
    busy machine) Tune fails the trials it could not hand over: each still gets an ERROR row."""
    import ray
    import ray.cloudpickle

    from brainray.sweep import run_sweep

    if tune_wait:
        monkeypatch.setenv("TUNE_FUNCTION_THREAD_TIMEOUT_S", tune_wait)  # a user's own setting is kept
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the hook runs where this file is not
    spec_path = _write_spec(tmp_path, "reuse", resources={"max_failures": 0})
    spec = load_spec(str(spec_path))
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"worker_process_setup_hook": _slow_teardown})
    try:
        run_sweep(spec, str(tmp_path), data_dir=str(tiny_dataset.root.parent), reuse_actors=True,
                  log=lambda m: None)
    finally:
        ray.shutdown()
    log = _rows(tmp_path / "reuse")
    assert len(log) == len(spec.runs()), log
    if tune_wait is None:
        assert (log["status"] == "TERMINATED").all(), log.loc[log["status"] != "TERMINATED", "error"].tolist()
    else:
        failed = log[log["status"] == "ERROR"]
        assert len(failed) and failed["error"].str.contains("reuse", case=False).all(), failed["error"].tolist()


# -- two drivers, one sweep ---------------------------------------------------------------------
@pytest.mark.slow
def test_a_second_driver_on_the_same_sweep_is_refused_at_once(tmp_path, tiny_dataset):
    spec_path = _write_spec(tmp_path, "twice")
    n = len(load_spec(str(spec_path)).runs())
    root = tmp_path / "twice"
    cmd = _scaling_cmd(spec_path, tmp_path, str(tiny_dataset.root.parent))
    first = _start(cmd, tmp_path / "first.log")
    try:
        _wait_for(lambda: locks.holder(root / ".driver.lock").get("pid") == first.pid, first, tmp_path / "first.log")
        t0 = time.time()
        second = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=ENV, timeout=120)
        assert second.returncode == 2, second.stdout[-2000:] + second.stderr[-2000:]
        assert time.time() - t0 < 60  # refused before Ray starts, not after a sweep's worth of waiting
        assert f"pid {first.pid}" in second.stderr and "in use" in second.stderr
        assert first.wait(timeout=600) == 0, (tmp_path / "first.log").read_text()[-3000:]
    finally:
        _kill_group(first)
    log = _rows(root)
    assert len(log) == n and (log["status"] == "TERMINATED").all()


def test_the_lock_names_its_holder_and_waiters_wait_for_it(tmp_path):
    path, said, order = tmp_path / "x.lock", [], []
    with locks.exclusive(path, "the thing"):
        with pytest.raises(locks.LockHeld, match=f"the thing is in use by pid {os.getpid()}"):
            with locks.exclusive(path, "the thing"):
                pass

        def waiter():
            with locks.exclusive(path, "the thing", wait=True, log=said.append, poll_s=0.05):
                order.append("waiter")

        th = threading.Thread(target=waiter)
        th.start()
        time.sleep(0.5)
        order.append("holder")
    th.join(timeout=10)
    assert order == ["holder", "waiter"]
    assert len(said) == 1 and "waiting for the thing" in said[0] and str(os.getpid()) in said[0]


def test_a_dead_holders_lock_is_taken_over(tmp_path):
    path = tmp_path / "x.lock"
    code = f"from brainray import locks\nwith locks.exclusive({str(path)!r}, 'x'):\n    import os; os._exit(0)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)  # exits holding it, no cleanup
    assert locks.holder(path)["pid"] != os.getpid()
    with locks.exclusive(path, "x"):
        assert locks.holder(path)["pid"] == os.getpid()


@pytest.mark.slow
def test_sweeps_that_share_a_dataset_build_it_once(tmp_path, smoke_spec):
    """Two sweeps (different names, same data settings) start at once on a fresh data dir."""
    specs = [_write_spec(tmp_path, name, resources={"max_failures": 0}) for name in ("left", "right")]
    data_dir = tmp_path / "data"
    procs = [_start(_scaling_cmd(s, tmp_path, str(data_dir)), tmp_path / f"{s.stem}.log") for s in specs]
    try:
        rcs = [p.wait(timeout=900) for p in procs]
    finally:
        for p in procs:
            _kill_group(p)
    logs = [(tmp_path / f"{s.stem}.log").read_text() for s in specs]
    assert rcs == [0, 0], [lg[-2000:] for lg in logs]
    assert sum("[prepare] cached dataset" in lg for lg in logs) == 1, "both sweeps built the dataset"
    assert any("[lock] waiting for the dataset" in lg for lg in logs)
    for s in specs:
        assert (_rows(tmp_path / s.stem)["status"] == "TERMINATED").all()


# -- --fresh, --address ----------------------------------------------------------------------------
def test_fresh_removes_only_what_brainray_wrote(tmp_path):
    sweep = tmp_path / "mine"
    for name in triallog.RESULT_ENTRIES:
        (sweep / name).mkdir(parents=True) if "." not in name else (sweep / name).write_text("{}")
    (sweep / "data" / "abc").mkdir(parents=True)
    (sweep / "notes.txt").write_text("mine")
    (tmp_path / "other-sweep").mkdir()
    triallog.remove_results(str(sweep))
    assert sorted(p.name for p in sweep.iterdir()) == ["data", "notes.txt"]
    assert (tmp_path / "other-sweep").is_dir()


def test_an_unreachable_address_fails_fast_naming_it(tmp_path):
    t0 = time.time()
    out = subprocess.run(
        [sys.executable, str(REPO / "sweeps" / "scaling.py"), "--preset", "smoke", "--storage", str(tmp_path),
         "--address", "127.0.0.1:1", "--no-report"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    assert time.time() - t0 < 60
    assert "127.0.0.1:1" in out.stderr and "ray start --head" in out.stderr
    assert "Traceback" not in out.stderr


# -- a killed driver leaves no Ray process behind ---------------------------------------------------
def test_the_reaper_stops_a_dead_drivers_ray_processes(tmp_path):
    session = tmp_path / "session"
    (session / "logs").mkdir(parents=True)
    # A stand-in for a Ray agent: its command line says "ray" and it holds a log file of the session.
    code = "import sys, time; f = open(sys.argv[1], 'a'); time.sleep(600)"
    agent = subprocess.Popen([sys.executable, "-c", code, str(session / "logs" / "ray-agent.log"), "ray::Agent"],
                             start_new_session=True)
    driver = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        deadline = time.time() + 30
        while agent.pid not in reaper.leftovers(str(session)) and time.time() < deadline:
            time.sleep(0.1)
        assert reaper.leftovers(str(session)) == [agent.pid]
        watcher = reaper.watch(driver.pid, str(session))
        time.sleep(1)
        assert agent.poll() is None  # the driver lives: nothing is touched
        driver.kill()
        driver.wait()
        assert agent.wait(timeout=60) != 0  # stopped by a signal
        watcher.wait(timeout=60)
    finally:
        agent.kill()
        driver.kill()
