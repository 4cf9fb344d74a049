"""The users' path: ``python sweeps/scaling.py --preset smoke`` through a real local Ray."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from brainray import triallog
from brainray.config import load_spec

REPO = Path(__file__).resolve().parent.parent


def _scaling(*args, timeout=900):
    return subprocess.run(
        [sys.executable, str(REPO / "sweeps" / "scaling.py"), *args],
        capture_output=True, text=True, timeout=timeout, cwd=REPO,
    )


def test_relative_storage_is_refused_before_ray_starts():
    out = _scaling("--storage", "results", "--dry-run")
    assert out.returncode == 2
    assert "relative path" in out.stderr


def test_dry_run_prints_the_trial_table():
    out = _scaling("--preset", "paper", "--dry-run")
    assert out.returncode == 0, out.stderr
    assert "19 trials" in out.stdout and "GPU-hours" in out.stdout


@pytest.mark.slow
def test_smoke_sweep_end_to_end_then_resume(tmp_path):
    out = _scaling("--preset", "smoke", "--storage", str(tmp_path), "--num-cpus", "2")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    root = tmp_path / "smoke"
    trials = pd.read_parquet(root / "trials")
    expected = load_spec("smoke").axes.trials()
    assert len(trials) == len(expected) == trials["trial_id"].nunique()
    assert (trials["status"] == "TERMINATED").all(), trials[["trial_id", "status", "error"]]
    for axis in ("data_frames", "n_embd", "n_layer", "n_head", "dtype"):
        assert trials[axis].nunique() > 1
    assert trials["val_loss"].notna().all() and trials["brain_r_mean"].notna().all()
    assert (trials["brain_r_mean"] < trials["ceiling_mean"]).all()
    assert (trials["train_flops"] == trials["flops_per_token"] * trials["tokens"]).all()
    curves = triallog.read_curves(str(root))
    assert set(curves["trial_id"]) == set(trials["trial_id"])
    for name in ("fits.json", "report.html"):
        assert (root / "frontier" / name).exists(), name
    assert list((root / "frontier").glob("*.png"))
    assert list((root / "tensorboard").rglob("events.out.tfevents.*"))
    assert "Best configuration per training-FLOPs budget" in out.stdout

    again = _scaling("--preset", "smoke", "--storage", str(tmp_path), "--num-cpus", "2")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming" in again.stdout
    log = triallog.read_trials(str(root))
    assert len(log) == len(expected)
    assert len(list((root / "trials").glob("*.parquet"))) == len(expected)  # nothing re-run or re-written
