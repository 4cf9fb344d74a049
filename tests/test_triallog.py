import json
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


# -- rows from a sweep's trial events (brainray.sweep.TrialLogCallback feeds TrialRecorder) ---------------
def _config(**trial):
    return {"trial": {"data_frames": 1200, "n_embd": 16, "n_layer": 1, "n_head": 1, "dtype": "fp32", "seed": 0,
                      **trial}, "train": {"epochs": 2}}


def test_a_finished_trial_is_one_row_with_its_config_and_curve(tmp_path):
    root, rows = str(tmp_path), []
    rec = triallog.TrialRecorder(root, "sw", on_row=lambda: rows.append(1))
    rec.start("t1")
    for step in (1, 2):
        rec.result("t1", _config(), {"step": step, "train_loss": 3.0 - step, "val_loss": 2.5}, num_failures=0)
    final = {"step": 2, "val_loss": 2.5, "brain_r_mean": 0.3, "done": True, "curve": [1, 2]}
    assert triallog.is_final(final) and not triallog.is_final(None)
    rec.close("t1", _config(), final, *triallog.outcome(final), num_failures=1)
    rec.close("t1", _config(), final, *triallog.outcome(final), num_failures=1)  # the end-of-sweep safety net
    row = triallog.read_trials(root).iloc[0]
    assert (row["trial_id"], row["status"], row["sweep"], row["num_failures"], row["control"], row["role"]) == (
        "t1", "TERMINATED", "sw", 1, "", "")
    assert row["brain_r_mean"] == 0.3 and row["n_embd"] == 16 and row["started_at"] <= row["finished_at"]
    assert json.loads(row["config_json"]) == _config() and row["git_sha"] == triallog._git_sha()
    assert rows == [1] and len(list((tmp_path / "trials").glob("*.parquet"))) == 1
    assert list(triallog.read_curves(root)["train_loss"]) == [2.0, 1.0]  # flushed before the row
    again = triallog.TrialRecorder(root, "sw")  # a resumed driver never rewrites a finished row
    again.close("t1", _config(), final, "TERMINATED", None, num_failures=0)
    assert len(list((tmp_path / "trials").glob("*.parquet"))) == 1


def test_a_diverged_trial_is_an_error_row_that_a_rerun_supersedes(tmp_path):
    root = str(tmp_path)
    diverged = {"done": True, "error": "val_loss diverged (nan) at step 2"}
    assert triallog.outcome(diverged) == ("ERROR", diverged["error"])
    triallog.TrialRecorder(root, "sw").close("t1", _config(), diverged, *triallog.outcome(diverged), num_failures=0)
    assert triallog.read_trials(root).iloc[0]["status"] == "ERROR"
    done = {"done": True, "val_loss": 2.0}
    triallog.TrialRecorder(root, "sw").close("t1", _config(), done, *triallog.outcome(done), num_failures=0)
    assert list(triallog.read_trials(root)["status"]) == ["TERMINATED"]


def test_a_reuse_run_logs_each_branch_and_errors_the_unscored_ones(tmp_path):
    root = str(tmp_path)
    config = _config(data_frames=2400, branches=[1200, 2400])
    rec = triallog.TrialRecorder(root, "sw")
    rec.result("t1", config, {"step": 3, "branch": 1200, "train_loss": 2.0}, num_failures=0)
    rec.result("t1", config, {"step": 3, "branch": 1200, "branch_done": True, "data_frames": 1200,
                              "brain_r_mean": 0.2}, num_failures=0)
    assert triallog.row_id("t1", {"branch_done": True, "data_frames": 1200}) == "t1-d1200"
    rec.close("t1", config, {"error": "raised"}, "ERROR", "trunk raised", num_failures=0)
    log = triallog.read_trials(root).set_index("trial_id")
    assert list(log.index) == ["t1-d1200", "t1-d2400"]
    assert (log["parent_trial"] == "t1").all() and (log["data_schedule"] == "reuse").all()
    assert log.loc["t1-d1200", "status"] == "TERMINATED" and log.loc["t1-d1200", "data_frames"] == 1200
    assert log.loc["t1-d2400", "status"] == "ERROR" and log.loc["t1-d2400", "error"] == "trunk raised"
    rec.flush()
    assert set(triallog.read_curves(root)["trial_id"]) == {"t1-d1200"}


def test_the_error_text_is_the_end_of_the_error_file(tmp_path):
    err = tmp_path / "error.txt"
    err.write_text("Traceback\n" + "x" * 5000 + "\nValueError: boom")
    assert triallog.error_text(str(err), "short").endswith("ValueError: boom")
    assert len(triallog.error_text(str(err), "short")) == 4000
    assert triallog.error_text(str(tmp_path / "missing.txt"), "short") == "short"
    assert "see the Tune trial folder" in triallog.error_text(None, None)


def test_staged_writes_a_local_root_in_place_and_copies_to_a_uri(tmp_path):
    local = triallog.Staged(str(tmp_path / "a"), "tensorboard")
    assert local.path == local.dest == f"{tmp_path}/a/tensorboard"
    with triallog.Staged(f"file://{tmp_path}/b", "frontier") as uri:
        assert not uri.path.startswith(str(tmp_path))
        Path(uri.path, "run").mkdir()
        Path(uri.path, "run", "report.html").write_text("page")
        uri.publish()  # while it is open, as TensorBoard does when a trial ends
        assert (tmp_path / "b" / "frontier" / "run" / "report.html").read_text() == "page"
        Path(uri.path, "fits.json").write_text("{}")
    assert (tmp_path / "b" / "frontier" / "fits.json").exists() and not Path(uri.path).exists()
