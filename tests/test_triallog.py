from pathlib import Path

import pandas as pd
import pytest

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
    # pandas reads the folder directly, as the README says, and sees the same rows: the
    # superseded ERROR part moved to trials/_superseded, which it skips
    plain = pd.read_parquet(tmp_path / "trials")
    assert sorted(plain["trial_id"]) == ["a", "b"] and set(plain["status"]) == {"TERMINATED"}
    assert [p.name.startswith("trial-a-") for p in (tmp_path / "trials" / triallog.SUPERSEDED).iterdir()] == [True]
    assert triallog.logged_trial_ids(root) == {"a", "b"}
    assert triallog.final_trial_ids(root) == {"a", "b"}


def test_a_branch_row_does_not_supersede_its_parent_trial(tmp_path):
    """Reuse branches are ``<id>-d<frames>``: superseding matches whole ids, not prefixes."""
    root = str(tmp_path)
    triallog.write_trial(root, {"trial_id": "x_00001", "status": "ERROR"})
    triallog.write_trial(root, {"trial_id": "x_00001-d1200", "status": "TERMINATED"})
    triallog.write_trial(root, {"trial_id": "x_00001-d1200", "status": "TERMINATED"})
    assert sorted(pd.read_parquet(tmp_path / "trials")["trial_id"]) == ["x_00001", "x_00001-d1200"]
    assert triallog.final_trial_ids(root) == {"x_00001-d1200"}


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


def _truncate(path: str) -> None:
    """Keep the first half of a file, as a partial copy or a full disk leaves it."""
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])


def _garble(path: str) -> None:
    """Overwrite the data pages of a part, keeping its footer: its schema still reads."""
    data = bytearray(Path(path).read_bytes())
    data[4 : len(data) // 2] = b"\xff" * (len(data) // 2 - 4)
    Path(path).write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_truncate, _garble])
def test_a_damaged_part_is_named_not_dropped(tmp_path, damage):
    root = str(tmp_path)
    triallog.write_trial(root, {"trial_id": "a", "status": "TERMINATED", "val_loss": 1.0})
    bad = triallog.write_trial(root, {"trial_id": "b", "status": "TERMINATED", "val_loss": 2.0, "error": "x" * 99})
    damage(bad)
    with pytest.raises(triallog.CorruptLogError, match=r"1 trial-log part file\(s\) in .*trials cannot be read") as err:
        triallog.read_trials(root)
    assert bad in str(err.value) and "Move each aside" in str(err.value)
    assert isinstance(err.value, ValueError)
    Path(bad).rename(bad + ".corrupt")  # the advice works: the rest of the log reads
    assert list(triallog.read_trials(root)["trial_id"]) == ["a"]


def test_a_truncated_curve_part_is_named(tmp_path):
    root = str(tmp_path)
    bad = triallog.write_curves(root, "a", [{"step": 1, "train_loss": 2.0}])
    _truncate(bad)
    with pytest.raises(triallog.CorruptLogError, match=r"in .*curves cannot be read") as err:
        triallog.read_curves(root)
    assert bad in str(err.value)
