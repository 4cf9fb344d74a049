"""The data axis at a fraction of the compute: one WSD trunk per model config, cooldown branches.

Schedule and plan are checked exactly; the trial runs the real model on the smoke dataset
(no Ray) and is checked for the accounting (steps, tokens, FLOPs), for the trunk being
untouched by its branches, and for resume; ``test_reuse_sweep_*`` runs it through Ray Tune.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from recorder import Recorder

from brainray import schedule, trial, triallog
from brainray.config import PRESETS_DIR, SpecError, load_spec

REPO = Path(__file__).resolve().parent.parent


# -- schedule and plan -------------------------------------------------------------------------
def test_wsd_is_constant_until_the_fork_then_decays_to_the_floor():
    lrs = [schedule.wsd_lr(s, fork=80, max_steps=100, lr=1.0, warmup=10, min_lr_frac=0.1) for s in range(100)]
    assert lrs[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert set(lrs[10:80]) == {1.0}
    assert all(a > b for a, b in zip(lrs[80:], lrs[81:]))  # strictly decreasing cooldown
    assert lrs[-1] == pytest.approx(0.1)
    # a one-step cooldown still decays
    assert schedule.wsd_lr(9, fork=9, max_steps=10, lr=1.0, warmup=0, min_lr_frac=0.1) == pytest.approx(0.1)


def test_reuse_plan_forks_share_the_trunk_and_match_scratch_lengths():
    sizes, pairs = [24000, 3000, 8000], [749, 92, 249]  # unordered on purpose
    plan = schedule.reuse_plan(sizes, pairs, epochs=2, batch_size=32, cooldown_frac=0.2)
    assert [b.data_frames for b in plan] == [3000, 8000, 24000]
    for br, n in zip(plan, [92, 249, 749]):
        assert br.steps == schedule.steps_for(n, 2, 32) == 2 * math.ceil(n / 32)  # as its scratch trial
        assert br.steps - br.fork == max(1, round(0.2 * br.steps))
    assert [b.start for b in plan] == [0, plan[0].fork, plan[1].fork]
    # the bill: the trunk once, plus every smaller size's cooldown
    assert sum(b.own_steps for b in plan) == plan[-1].steps + sum(b.steps - b.fork for b in plan[:-1])
    # the trunk draws from the smallest prefix whose fork lies ahead
    assert schedule.segment_at(plan, 0).data_frames == 3000
    assert schedule.segment_at(plan, plan[0].fork).data_frames == 8000
    assert schedule.segment_at(plan, plan[1].fork).data_frames == 24000
    with pytest.raises(ValueError, match="cooldown_frac"):
        schedule.reuse_plan(sizes, pairs, 2, 32, cooldown_frac=1.0)


def test_spec_groups_data_sizes_into_one_run_per_model_config():
    spec = load_spec("demo", {"train.data_schedule": "reuse"})
    assert spec.train.lr_schedule == "wsd"
    runs, trials = [r for r in spec.runs() if not r.get("control")], spec.axes.trials()
    assert sum(len(r["branches"]) for r in runs) == len(trials)
    assert [r for r in spec.runs() if r.get("control")] == spec.axes.control_trials()  # controls: never trained
    by_width = {r["n_embd"]: r for r in runs if r["n_layer"] == 2 and r["n_head"] == 2 and r["dtype"] == "fp32"
                and r["seed"] == 0}
    assert by_width[48]["branches"] == [3000, 8000, 24000, 54000] and by_width[48]["data_frames"] == 54000
    assert len(load_spec("demo").runs()) == len(trials) + len(spec.axes.control_trials())  # scratch: one per trial


def test_bad_reuse_settings_are_listed_with_their_keys():
    with pytest.raises(SpecError) as e:
        load_spec("smoke", {"train.data_schedule": "reus", "train.cooldown_frac": 1.5})
    assert "'train.data_schedule' must be one of ['scratch', 'reuse']; got 'reus'" in str(e.value)
    assert "'train.cooldown_frac' must be in (0, 1); got 1.5" in str(e.value)
    with pytest.raises(SpecError, match="reuse needs 'train.lr_schedule' wsd"):
        load_spec("smoke", {"train.data_schedule": "reuse", "train.lr_schedule": "cosine"})


# -- the trial ---------------------------------------------------------------------------------
@pytest.fixture
def reuse_config(trial_config):
    train = {**trial_config["train"], "data_schedule": "reuse", "lr_schedule": "wsd", "epochs": 3, "log_every": 1}
    return {**trial_config, "train": train, "data_frames": 2400, "branches": [1200, 2400]}


def test_reuse_trial_reports_every_size_with_honest_costs(reuse_config, trial_config, tmp_path):
    rec = Recorder(tmp_path)
    last = trial.run(reuse_config, rec)
    small, large = rec.rows()
    assert (small["data_frames"], large["data_frames"]) == (1200, 2400) and last == large
    scratch = trial.run({**trial_config, "data_frames": 1200, "train": {**reuse_config["train"], "data_schedule": "scratch",
                                                                         "lr_schedule": "cosine"}}, Recorder(tmp_path / "s"))
    for row in (small, large):
        assert "error" not in row and row["data_schedule"] == "reuse"
        assert row["tokens"] == row["step"] * row["batch_size"] * row["n_ctx"]
        assert row["train_flops"] == pytest.approx(row["flops_per_token"] * row["tokens"])
        assert math.isfinite(row["val_loss"]) and math.isfinite(row["brain_r_mean"])
    assert small["step"] == scratch["step"]  # same training length as from scratch
    assert small["tokens"] == scratch["tokens"] and small["train_flops"] == scratch["train_flops"]
    plan = schedule.reuse_plan([1200, 2400], [small["train_pairs"], large["train_pairs"]], 3, 16, 0.2)
    per_step = large["flops_per_token"] * large["batch_size"] * large["n_ctx"]
    assert small["incurred_flops"] + large["incurred_flops"] == pytest.approx(
        per_step * (plan[1].steps + plan[0].steps - plan[0].fork))  # shared prefix counted once
    assert large["incurred_flops"] < large["train_flops"]
    assert [m["step"] for m in rec.metrics if m.get("branch") == 1200 and not m.get("branch_done")] == list(range(plan[0].fork + 1, plan[0].steps + 1))


def test_branches_leave_the_trunk_untouched_and_resume_exactly(reuse_config, tmp_path):
    full = Recorder(tmp_path / "full")
    expected = trial.run(reuse_config, full)
    fork = full.rows()[0]["branch_step"]
    steps = [torch.load(c / trial.CHECKPOINT, weights_only=True) for c in full.checkpoints]
    before = next(c for c, s in zip(full.checkpoints, steps) if s["step"] == fork and not s["branches_done"])
    after = next(c for c, s in zip(full.checkpoints, steps) if s["branches_done"] == [1200])

    # resume after the branch: the rest of the run is the same
    resumed = Recorder(tmp_path / "resumed")
    got = trial.run(reuse_config, resumed, checkpoint_dir=str(after))
    assert [r["data_frames"] for r in resumed.rows()] == [2400]
    assert got["val_loss"] == expected["val_loss"] and got["step"] == expected["step"]
    assert got["brain_r_mean"] == pytest.approx(expected["brain_r_mean"], abs=1e-6)

    # resume at the fork, before the branch: the branch is taken again, the same
    again = Recorder(tmp_path / "again")
    trial.run(reuse_config, again, checkpoint_dir=str(before))
    assert again.rows()[0]["val_loss"] == full.rows()[0]["val_loss"]

    # skip the branch at the fork: the trunk after it is the same as with the branch taken
    ckpt = torch.load(before / trial.CHECKPOINT, weights_only=True)
    skip = tmp_path / "skip"
    skip.mkdir()
    torch.save({**ckpt, "branches_done": [1200]}, skip / trial.CHECKPOINT)
    no_branch = Recorder(tmp_path / "nobranch")
    trial.run(reuse_config, no_branch, checkpoint_dir=str(skip))
    after_fork = [p for p in full.trunk() if p[0] > fork]
    assert after_fork and [p for p in no_branch.trunk() if p[0] > fork] == after_fork
    assert no_branch.rows()[-1]["val_loss"] == expected["val_loss"]


def test_a_diverging_trunk_fails_the_run(reuse_config, tmp_path):
    cfg = {**reuse_config, "train": {**reuse_config["train"], "lr": float("inf"), "warmup_frac": 0.0}}
    final = trial.run(cfg, Recorder(tmp_path))
    assert final["error"].startswith("diverged: loss=nan") and not final.get("branch_done")


# -- through Ray Tune ----------------------------------------------------------------------------
@pytest.mark.slow
def test_reuse_sweep_survives_a_killed_driver_with_one_row_per_data_size(tmp_path, tiny_dataset):
    """A reuse run is killed (SIGKILL, driver and all) after its first branch is logged and while
    its trunk goes on; the same command again resumes the trunk from its checkpoint, logs the rest,
    and leaves the row already written alone."""
    import os
    import signal
    import time

    raw = yaml.safe_load((PRESETS_DIR / "smoke.yaml").read_text())
    raw["name"] = "reuse"
    raw["train"].update(data_schedule="reuse", epochs=25)  # slow enough to be caught mid-trunk
    raw["axes"] = {"design": "lines", "cross": False, "controls": [], "data_frames": [1200, 2400], "n_embd": [128], "n_layer": [4],
                   "n_head": [1], "dtype": ["fp32"],
                   "reference": {"data_frames": 2400, "n_embd": 128, "n_layer": 4, "n_head": 1, "dtype": "fp32", "seed": 0}}
    spec_file = tmp_path / "reuse.yaml"
    spec_file.write_text(yaml.safe_dump(raw))
    cmd = [sys.executable, str(REPO / "sweeps" / "scaling.py"), "--preset", str(spec_file), "--storage",
           str(tmp_path), "--num-cpus", "2", "--data-dir", str(Path(tiny_dataset.root).parent)]
    root = tmp_path / "reuse"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(tmp_path / "first.log", "w") as first_log:
        first = subprocess.Popen(cmd, stdout=first_log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            deadline = time.time() + 300
            while time.time() < deadline and first.poll() is None and not list((root / "trials").glob("*.parquet")):
                time.sleep(0.2)
            assert first.poll() is None, "the run ended before it could be killed:\n" + (tmp_path / "first.log").read_text()[-3000:]
            os.kill(first.pid, signal.SIGKILL)
            first.wait()
        finally:
            try:
                os.killpg(first.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    before = {p.name: p.stat().st_mtime_ns for p in (root / "trials").glob("*.parquet")}
    assert len(before) == 1 and triallog.read_trials(str(root))["data_frames"].tolist() == [1200]

    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resuming" in again.stdout and "2 trials as 1 reuse runs" in again.stdout
    log = triallog.read_trials(str(root))
    assert sorted(log["data_frames"]) == [1200, 2400] and len(list((root / "trials").glob("*.parquet"))) == 2
    assert (log["status"] == "TERMINATED").all(), log[["trial_id", "status", "error"]]
    assert (log["data_schedule"] == "reuse").all() and log["parent_trial"].nunique() == 1
    for name, mtime in before.items():  # the row written before the kill is not re-written
        assert (root / "trials" / name).stat().st_mtime_ns == mtime
    assert log["incurred_flops"].sum() < log["train_flops"].sum()  # the trunk once + a cooldown
    assert set(log["trial_id"]) <= set(triallog.read_curves(str(root))["trial_id"])  # each branch has its curve
    assert "Data reuse" in (root / "frontier" / "report.html").read_text()


# -- the analysis: savings, agreement, beta per arm ------------------------------------------------
def _arm_table(shift: float, loss_noise: float, beta: float = 0.4, seed: int = 0):
    """Two arms drawn from known laws: scratch/wsd, and reuse/wsd whose loss is ``shift`` higher."""
    import pandas as pd

    from brainray.frontier import simulate_trials

    law = (2.0, 60.0, 400.0, 0.25, beta)
    kw = dict(n_embd=(64, 128, 256), n_layer=(2, 4), data_frames=(10_000, 30_000, 100_000, 300_000, 1_000_000),
              seeds=(0, 1, 2, 3), loss_law=law, loss_noise=loss_noise)
    a = simulate_trials(**kw, seed=seed).assign(data_schedule="scratch", lr_schedule="wsd")
    b = simulate_trials(**kw, seed=seed + 1).assign(data_schedule="reuse", lr_schedule="wsd")
    b["val_loss"] += shift
    b["parent_trial"] = b[["n_embd", "n_layer", "seed"]].astype(str).agg("-".join, axis=1)
    b["incurred_flops"] = b["train_flops"] * 0.4
    b["incurred_gpu_hours"] = b["gpu_hours"] * 0.4
    a["trial_id"], b["trial_id"] = "s" + a.index.astype(str), "r" + b.index.astype(str)
    return pd.concat([a, b], ignore_index=True)


def test_agreement_recovers_a_known_shift_and_the_seed_noise():
    from brainray import reuse

    df = _arm_table(shift=0.05, loss_noise=0.01)
    matched, summary = reuse.agreement(df, metrics=("val_loss",))
    row = summary.iloc[0]
    assert row["n_matched"] == 3 * 2 * 5
    assert row["mean_diff"] == pytest.approx(0.05, abs=0.01)
    assert row["mean_diff_lo"] < 0.05 < row["mean_diff_hi"]
    # log-normal noise of sd 0.01 on losses around 2-4: an absolute sd of about 0.01 * mean loss
    expected_sd = 0.01 * df["val_loss"].mean()
    assert row["noise_sd"] == pytest.approx(expected_sd, rel=0.35)
    _, s0 = reuse.agreement(_arm_table(shift=0.0, loss_noise=0.01), metrics=("val_loss",))
    assert s0.iloc[0]["mean_diff_lo"] < 0 < s0.iloc[0]["mean_diff_hi"] and s0.iloc[0]["within_2se"] > 0.85
    assert summary.iloc[0]["within_2se"] < s0.iloc[0]["within_2se"]  # the shift is seen


def test_savings_sum_each_run_and_the_total():
    from brainray import reuse

    df = _arm_table(shift=0.0, loss_noise=0.0)
    sav = reuse.savings(df)
    total = sav.iloc[-1]
    runs = sav.iloc[:-1]
    assert len(runs) == 3 * 2 * 4  # widths x depths x seeds
    assert list(runs["ratio"]) == pytest.approx([0.4] * len(runs)) and total["ratio"] == pytest.approx(0.4)
    reused = df[df["data_schedule"] == "reuse"]
    assert total["scratch_flops"] == pytest.approx(reused["train_flops"].sum())


def test_data_exponents_recover_beta_on_each_arm():
    from brainray import reuse

    df = _arm_table(shift=0.0, loss_noise=0.0, beta=0.35)
    laws = reuse.data_exponents(df, bootstrap=0)
    assert set(laws) == {"scratch/wsd", "reuse/wsd"}
    for fit in laws.values():
        assert fit.beta == pytest.approx(0.35, rel=1e-3)
