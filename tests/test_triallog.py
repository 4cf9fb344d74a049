import pandas as pd

from brainray import triallog


def test_one_row_per_trial_newest_wins(tmp_path):
    root = str(tmp_path)
    triallog.write_trial(root, {"trial_id": "a", "status": "ERROR", "error": "node lost"})
    triallog.write_trial(root, {"trial_id": "b", "status": "TERMINATED", "val_loss": 2.0, "r_mean_sub-01": 0.2})
    triallog.write_trial(root, {"trial_id": "a", "status": "TERMINATED", "val_loss": 1.5})
    df = triallog.read_trials(root)
    assert list(df["trial_id"]) == ["a", "b"]
    assert df.set_index("trial_id").loc["a", "status"] == "TERMINATED"
    assert df.set_index("trial_id").loc["b", "r_mean_sub-01"] == 0.2
    # pandas reads the folder directly, as the README says
    assert len(pd.read_parquet(tmp_path / "trials")) == 3
    assert triallog.logged_trial_ids(root) == {"a", "b"}


def test_schema_is_pinned(tmp_path):
    root = str(tmp_path)
    triallog.write_trial(root, {"trial_id": "a", "status": "ERROR"})  # all metrics null
    triallog.write_trial(root, {"trial_id": "b", "status": "TERMINATED", "val_loss": 1.0, "mfu": 0.3})
    df = triallog.read_trials(root)
    assert df["val_loss"].dtype == "float64"
    assert {"brain_r_mean", "train_flops", "git_sha", "ceiling_frac"} <= set(df.columns)


def test_curves_dedupe_repeated_steps(tmp_path):
    root = str(tmp_path)
    triallog.write_curves(root, "a", [{"step": s, "train_loss": 5.0 - s} for s in range(1, 4)])
    triallog.write_curves(root, "a", [{"step": s, "train_loss": 9.0} for s in range(3, 5)])  # after restore
    df = triallog.read_curves(root)
    assert list(df["step"]) == [1, 2, 3, 4]
    assert df.set_index("step").loc[3, "train_loss"] == 9.0


def test_no_temp_files_left_and_empty_reads(tmp_path):
    assert triallog.read_trials(str(tmp_path)).empty
    triallog.write_trial(str(tmp_path), {"trial_id": "x", "status": "TERMINATED"})
    assert not [p for p in (tmp_path / "trials").iterdir() if p.name.startswith(".")]
