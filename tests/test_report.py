"""Tests for brainray.report: files written, self-contained HTML, graceful small sweeps."""

import json
import re

import numpy as np
import pandas as pd
import pytest

from brainray.frontier import analyze, simulate_trials
from brainray.report import PLOTS, write_report

LOSS = (2.0, 60.0, 400.0, 0.25, 0.40)
BRAIN = (0.25, 6.0, 5.0, 0.25, 0.30)


@pytest.fixture(scope="module")
def trials() -> pd.DataFrame:
    """36 trials from known laws (fp32 and fp16), plus one failed trial."""
    df = simulate_trials(n_embd=(64, 128, 256), n_layer=(2, 4), data_frames=(10_000, 100_000, 1_000_000),
                         dtype=("fp32", "fp16"), loss_law=LOSS, brain_law=BRAIN,
                         loss_noise=0.005, brain_noise=0.002, seed=2)
    failed = df.iloc[[0]].assign(trial_id="crashed", status="ERROR", val_loss=np.nan,
                                 brain_r_mean=np.nan,
                                 error="Traceback\nRuntimeError: worker died")
    return pd.concat([df, failed], ignore_index=True)


@pytest.fixture(scope="module")
def curves(trials) -> pd.DataFrame:
    rows = []
    for _, t in trials[trials["status"] == "TERMINATED"].iloc[::5].iterrows():
        for step in range(1, 11):
            loss = t["val_loss"] * (1 + 2 / step)
            rows.append(dict(trial_id=t["trial_id"], step=step, tokens=t["tokens"] * step / 10,
                             train_loss=loss,
                             val_loss=loss * 1.01 if step % 5 == 0 else np.nan))
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def full_report(tmp_path_factory, trials, curves):
    out = tmp_path_factory.mktemp("report")
    path = write_report(trials, out, curves_df=curves, bootstrap=10, title="test sweep")
    return out, path


def test_report_writes_every_file(full_report):
    out, path = full_report
    assert path == out / "report.html"
    for name in ("fits.json", "allocation.csv", "report.html") + PLOTS:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for name in PLOTS:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_fits_json_parses_and_recovers_law(full_report, trials):
    out, _ = full_report
    d = json.loads((out / "fits.json").read_text())
    assert d["n_trials"] == len(trials) and d["n_usable"] == len(trials) - 1
    fit = d["fits"]["val_loss"]
    assert fit["alpha"] == pytest.approx(LOSS[3], rel=0.05)
    assert fit["beta"] == pytest.approx(LOSS[4], rel=0.05)
    assert set(fit["ci"]) >= {"alpha", "beta", "a", "b"}
    assert d["fits"]["brain_r_mean"]["form"] == "ceiling_gap"
    assert d["left_out"] == [{"trial_id": "crashed", "status": "ERROR",
                              "reason": "status ERROR: RuntimeError: worker died"}]
    assert all(v == "written" for k, v in d["plots"].items() if k != "frontier_families.png")
    assert "no per-family scores" in d["plots"]["frontier_families.png"]  # these trials have no parcel families
    alloc = pd.read_csv(out / "allocation.csv")
    assert set(alloc["metric"]) == {"val_loss", "brain_r_mean"}
    assert (alloc["cost"] <= alloc["budget"]).all()


def test_html_is_self_contained(full_report):
    _, path = full_report
    text = path.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*https?://""", text, re.I)
    assert "<script" not in text.lower() and "<link" not in text.lower()
    assert text.count("src='data:image/png;base64,") == len(PLOTS)
    assert "crashed" in text and "RuntimeError: worker died" in text  # left-out row
    for section in ("Fitted scaling laws", "Compute-optimal allocation", "Per-axis effects",
                    "Precision (dtype)", "Trials", "Left out"):
        assert section in text
    assert "L = " in text and "1 - r/c = " in text  # the fitted laws written out
    assert "1.17" in text  # paper's dtype speed-up beside ours


def test_tiny_sweep_still_writes_report(tmp_path, trials):
    tiny = trials[trials["status"] == "TERMINATED"].iloc[:3]
    path = write_report(tiny, tmp_path)
    text = path.read_text()
    assert "No law was fitted" in text and "only 3 usable trial" in text
    d = json.loads((tmp_path / "fits.json").read_text())
    assert d["fits"] == {"val_loss": None, "brain_r_mean": None}
    assert "only 3 usable" in d["fit_errors"]["val_loss"]
    assert (tmp_path / "frontier_loss.png").is_file()
    assert (tmp_path / "allocation.csv").is_file()
    assert "no training curves" in d["plots"]["loss_curves.png"]
    assert not (tmp_path / "loss_curves.png").exists()


def test_report_with_all_trials_failed(tmp_path, trials):
    bad = trials.assign(status="ERROR").iloc[:4]
    path = write_report(bad, tmp_path)
    text = path.read_text()
    assert "only 0 usable" in text and text.count("status ERROR") == 4


def test_report_reuses_given_analysis(tmp_path, trials):
    res = analyze(trials, bootstrap=0)
    write_report(trials, tmp_path, analysis=res)
    d = json.loads((tmp_path / "fits.json").read_text())
    assert d["fits"]["val_loss"]["n_bootstrap"] == 0


def test_report_errors(tmp_path, trials):
    with pytest.raises(TypeError, match="trials_df must be a pandas DataFrame; got list"):
        write_report([1, 2], tmp_path)
    with pytest.raises(ValueError, match=r"curves_df lacks column\(s\) \['train_loss'\]"):
        write_report(trials, tmp_path,
                     curves_df=pd.DataFrame(columns=["trial_id", "step", "tokens",
                                                     "val_loss"]))
