"""Tests for brainray.fmri on a tiny synthetic BIDS + fMRIPrep tree (1 subject, 1 session, 2 runs)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_tree import SES, SUB, TASK, TR, build_tree, bk2_path, write_bold
from brainray import fmri

N_VOLS = 120  # "simple" + global signal is ~31 regressors: leave degrees of freedom
SINE_PERIOD_S = 20.0

EVENTS = {  # the real quirks: duration_bk2, long float onsets, levels 1-0/4-1/5-0, missing rows
    1: [
        ("gym-retro_game", 3.0140000000000002, 40.5, 40.516666666666666, "1-0", "rep-000"),
        ("gym-retro_game", 48.609800000000064, 30.2, 30.233333333333334, "4-1", "Missing file"),
        ("gym-retro_game", 85.10019999999997, 35.0, 35.016666666666666, "5-0", ""),
        ("gym-retro_game", 130.07170000000025, 45.0, 45.0, "1-0", "rep-001"),
    ],
    2: [
        ("gym-retro_game", 0.0158000000001266, 80.0, 80.1, "4-1", "rep-002"),
        ("gym-retro_game", 90.6908000000003, 80.0, 80.08333333333333, "5-0", "rep-003"),
    ],
}


def _sine() -> np.ndarray:
    return np.sin(2 * np.pi * np.arange(N_VOLS) * TR / SINE_PERIOD_S)


_bk2, _write_bold = bk2_path, write_bold


@pytest.fixture
def tree(tmp_path: Path) -> dict:
    """Raw BIDS tree with events and sidecars, fMRIPrep derivatives (run-1, run-2), atlas."""
    return build_tree(tmp_path, EVENTS, N_VOLS, signal=lambda run: _sine())


def _events_path(tree: dict, run: int = 1) -> Path:
    return tree["func"] / f"{SUB}_{SES}_task-{TASK}_run-{run:02d}_events.tsv"


# ----------------------------------------------------------------------------- read_events


def test_read_events_quirks(tree):
    ev = fmri.read_events(_events_path(tree))  # root found above the file
    assert list(ev.columns[:6]) == ["trial_type", "onset", "duration", "duration_bk2", "level", "stim_file"]
    assert "Unnamed: 0" not in ev.columns
    assert ev["onset"].iloc[0] == pytest.approx(3.0140000000000002)
    assert ev["onset"].dtype == float and ev["duration_bk2"].dtype == float
    assert list(ev["level"]) == ["1-0", "4-1", "5-0", "1-0"]
    assert list(ev["missing"]) == [False, True, True, False]
    assert ev["bk2_path"].iloc[1] is None and ev["bk2_path"].iloc[2] is None
    expected = (tree["root"] / _bk2(1, "1-0", "rep-000")).resolve()
    assert ev["bk2_path"].iloc[0] == str(expected)
    assert ev.attrs["root"] == str(tree["root"].resolve())


def test_read_events_root_from_sub_folders(tree):
    (tree["root"] / "dataset_description.json").unlink()
    ev = fmri.read_events(_events_path(tree))
    assert ev.attrs["root"] == str(tree["root"].resolve())


def _rewrite(tree, column: str, row: int, value: str) -> Path:
    path = _events_path(tree)
    df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    df.loc[row, column] = value
    df.to_csv(path, sep="\t", index=False)
    return path


def test_read_events_na_values(tree):
    _rewrite(tree, "stim_file", 0, "n/a")
    path = _rewrite(tree, "duration_bk2", 3, "n/a")  # falls back to duration in run_timeline
    ev = fmri.read_events(path)
    assert list(ev["missing"]) == [True, True, True, False]
    with pytest.warns(UserWarning, match="row skipped"):
        (seg,) = fmri.run_timeline(ev, TR, N_VOLS)
    assert seg.n_frames_expected == 45 * 60


def test_read_events_stim_outside_root(tree):
    path = _rewrite(tree, "stim_file", 3, "../x.bk2")
    msg = (
        r"_run-01_events.tsv, row 3: stim_file '../x.bk2' points"
        r" outside the dataset root .*shinobi; fix the path"
    )
    with pytest.raises(ValueError, match=msg):
        fmri.read_events(path)


def test_read_events_stim_absolute(tree):
    path = _rewrite(tree, "stim_file", 0, "/data/x.bk2")
    with pytest.raises(ValueError, match=r"row 0: stim_file '/data/x.bk2' is an absolute path"):
        fmri.read_events(path)


@pytest.mark.parametrize("column, value", [("onset", "-1.0"), ("duration", "abc"), ("onset", "inf")])
def test_read_events_bad_numbers(tree, column, value):
    path = _rewrite(tree, column, 2, value)
    with pytest.raises(ValueError, match=rf"row 2: {column} '{value}' must be a finite, non-negative number"):
        fmri.read_events(path)


def test_read_events_missing_columns(tree):
    path = _events_path(tree)
    pd.read_csv(path, sep="\t").drop(columns=["level", "stim_file"]).to_csv(path, sep="\t", index=False)
    with pytest.raises(ValueError, match=r"missing required column\(s\) \['level', 'stim_file'\]"):
        fmri.read_events(path)


def test_read_events_missing_file_and_no_root(tmp_path, tree):
    with pytest.raises(FileNotFoundError, match="Events file not found: .*nope_events.tsv"):
        fmri.read_events(tmp_path / "nope_events.tsv")
    lone = tmp_path / "lone" / "x_events.tsv"
    lone.parent.mkdir()
    shutil.copy(_events_path(tree), lone)
    with pytest.raises(ValueError, match="no BIDS root above this file.*pass root= explicitly"):
        fmri.read_events(lone)


# ----------------------------------------------------------------------------- find_runs


def test_find_runs_matches_run_numbers(tree):
    runs = fmri.find_runs(tree["root"])
    assert [r.run for r in runs] == [1, 2]
    r = runs[0]
    assert (r.subject, r.session, r.task, r.tr) == (SUB, SES, TASK, TR)
    assert r.events_path.name.endswith("_run-01_events.tsv")
    assert r.sidecar_path.name.endswith("_run-01_bold.json")
    assert r.bold_path.name.endswith("_run-1_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz")
    assert r.confounds_path.name.endswith("_run-1_desc-confounds_timeseries.tsv")
    assert fmri.find_runs(tree["root"], subjects=["01"]) == runs


def test_find_runs_unknown_subject_and_no_events(tree, tmp_path):
    msg = r"subjects \['sub-02'\] have no task-shinobi runs.*available: \['sub-01'\]"
    with pytest.raises(ValueError, match=msg):
        fmri.find_runs(tree["root"], subjects=["sub-02"])
    with pytest.raises(FileNotFoundError, match="No events files for task 'rest'"):
        fmri.find_runs(tree["root"], task="rest")
    with pytest.raises(FileNotFoundError, match="derivatives_root folder not found"):
        fmri.find_runs(tree["root"], derivatives_root=tmp_path / "none")
    msg = r"'on_missing' must be one of \('raise', 'warn'\); got 'skip'"
    with pytest.raises(ValueError, match=msg):
        fmri.find_runs(tree["root"], on_missing="skip")


def test_find_runs_missing_derivative(tree):
    bold = next(tree["dfunc"].glob("*run-2_*preproc_bold.nii.gz"))
    bold.unlink()
    msg = (
        r"run-02_events.tsv: no fMRIPrep derivative for run 2; expected"
        r" .*_run-2_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz"
    )
    with pytest.raises(FileNotFoundError, match=msg):
        fmri.find_runs(tree["root"])
    with pytest.warns(UserWarning, match="no fMRIPrep derivative for run 2.*it is skipped"):
        runs = fmri.find_runs(tree["root"], on_missing="warn")
    assert [r.run for r in runs] == [1]


def test_find_runs_missing_sidecar(tree):
    sidecar = next(tree["func"].glob("*run-01_bold.json"))
    sidecar.unlink()
    msg = r"No BOLD sidecar for .*run-01_events.tsv: expected .*run-01_bold.json"
    with pytest.raises(FileNotFoundError, match=msg):
        fmri.find_runs(tree["root"])
    (tree["root"] / "task-shinobi_bold.json").write_text(json.dumps({"RepetitionTime": TR}))
    assert fmri.find_runs(tree["root"])[0].sidecar_path.name == "task-shinobi_bold.json"


def test_find_runs_tr_mismatch(tree):
    sidecar = next(tree["func"].glob("*run-02_bold.json"))
    sidecar.write_text(json.dumps({"RepetitionTime": 2.0}))
    msg = (
        r"TR mismatch for run 2: .*run-02_bold.json says"
        r" RepetitionTime=2.0 s but the header of .*run-2_space.* says 1.49"
    )
    with pytest.raises(ValueError, match=msg):
        fmri.find_runs(tree["root"])
    sidecar.write_text(json.dumps({"RepetitionTime": "1.49"}))
    msg = r"'RepetitionTime' must be a positive number of seconds; got '1.49'"
    with pytest.raises(ValueError, match=msg):
        fmri.find_runs(tree["root"])


def test_find_runs_header_without_tr(tree):
    bold = next(tree["dfunc"].glob("*run-1_*preproc_bold.nii.gz"))
    img = nib.load(bold)
    data = np.asarray(img.dataobj)
    fresh = nib.Nifti1Image(data, img.affine)  # zooms[3] = 1.0, time unit unknown: not a TR
    nib.save(fresh, bold)
    assert fmri.find_runs(tree["root"])[0].tr == TR


# ----------------------------------------------------------------------------- extract_parcels


def test_extract_parcels_recovers_sine(tree):
    run = fmri.find_runs(tree["root"])[0]
    bold = fmri.extract_parcels(run, tree["atlas"])  # paper defaults: 8 mm, standardize
    assert bold.shape == (N_VOLS, 4)
    assert bold.dtype == np.float32
    np.testing.assert_allclose(bold.mean(0), 0, atol=1e-3)  # standardized per parcel
    np.testing.assert_allclose(bold.std(0, ddof=1), 1, atol=1e-3)
    assert np.corrcoef(bold[:, 0], _sine())[0, 1] > 0.99  # label 1 carries the sine
    # 8 mm smoothing spreads it over this 12 mm image; without smoothing it stays in label 1
    bold = fmri.extract_parcels(run, tree["atlas"], smoothing_fwhm=None, standardize=False)
    r = [np.corrcoef(bold[:, k], _sine())[0, 1] for k in range(4)]
    assert r[0] > 0.99 and max(abs(x) for x in r[1:]) < 0.4, r


def test_extract_parcels_missing_confounds(tree):
    run = fmri.find_runs(tree["root"])[0]
    run.confounds_path.unlink()
    msg = r"Confounds file not found: .*run-1_desc-confounds_timeseries.tsv"
    with pytest.raises(FileNotFoundError, match=msg):
        fmri.extract_parcels(run, tree["atlas"])


def test_extract_parcels_nan_bold(tree):
    run = fmri.find_runs(tree["root"])[0]
    img = nib.load(run.bold_path)
    data = np.asarray(img.dataobj)
    data[2, 2, 2, 7] = np.nan
    _write_bold(run.bold_path, data)
    with pytest.raises(ValueError, match=r"run-1_space-.*preproc_bold.nii.gz: volume 7 holds NaN"):
        fmri.extract_parcels(run, tree["atlas"])


def test_extract_parcels_nan_confounds(tree):
    run = fmri.find_runs(tree["root"])[0]
    conf = pd.read_csv(run.confounds_path, sep="\t", na_values=["n/a"])
    conf.loc[5, "trans_x_derivative1"] = np.nan
    conf.to_csv(run.confounds_path, sep="\t", index=False, na_rep="n/a")
    msg = r"confounds_timeseries.tsv: column 'trans_x_derivative1' has a NaN or non-number at row 5"
    with pytest.raises(ValueError, match=msg):
        fmri.extract_parcels(run, tree["atlas"])


def test_extract_parcels_confounds_length(tree):
    run = fmri.find_runs(tree["root"])[0]
    conf = pd.read_csv(run.confounds_path, sep="\t", na_values=["n/a"])
    conf.iloc[:-3].to_csv(run.confounds_path, sep="\t", index=False, na_rep="n/a")
    with pytest.raises(ValueError, match=rf"has {N_VOLS - 3} rows but .* has {N_VOLS} volumes"):
        fmri.extract_parcels(run, tree["atlas"])


def test_extract_parcels_confounds_missing_columns(tree):
    run = fmri.find_runs(tree["root"])[0]
    conf = pd.read_csv(run.confounds_path, sep="\t", na_values=["n/a"])
    conf.drop(columns=["csf", "white_matter"]).to_csv(run.confounds_path, sep="\t", index=False, na_rep="n/a")
    msg = r"confounds_timeseries.tsv: nilearn could not load the confounds"
    with pytest.raises(ValueError, match=msg):
        fmri.extract_parcels(run, tree["atlas"])


# ----------------------------------------------------------------------------- run_timeline


def test_run_timeline_alignment(tree):
    ev = fmri.read_events(_events_path(tree))
    with pytest.warns(UserWarning) as rec:
        segs = fmri.run_timeline(ev, TR, N_VOLS)
    messages = [str(w.message) for w in rec]
    assert len(messages) == 2
    assert "_run-01_events.tsv, row 1: stim_file 'Missing file' has no replay; row skipped" in messages[0]
    assert "row 2: stim_file '' has no replay; row skipped" in messages[1]
    assert [s.level for s in segs] == ["1-0", "1-0"]
    assert [s.onset_s for s in segs] == [3.0140000000000002, 130.07170000000025]
    assert [s.n_frames_expected for s in segs] == [2431, 2700]  # duration_bk2 * 60
    assert segs[0].bk2_path == ev["bk2_path"].iloc[0]
    assert segs[0].duration_s == 40.5


def test_run_timeline_falls_back_to_duration(tree):
    ev = fmri.read_events(_events_path(tree, run=2)).drop(columns=["duration_bk2"])
    segs = fmri.run_timeline(ev, TR, N_VOLS, fps=60.0)
    assert [s.n_frames_expected for s in segs] == [4800, 4800]


def test_run_timeline_bold_shorter_than_events(tree):
    ev = fmri.read_events(_events_path(tree, run=2))
    msg = (
        r"BOLD shorter than the events: .*run-02_events.tsv, row 1 ends"
        r" at 170.691 s .*lasts 149.000 s \(100 volumes"
    )
    with pytest.raises(ValueError, match=msg):
        fmri.run_timeline(ev, TR, n_vols=100)
    fmri.run_timeline(ev, TR, n_vols=114)  # ends 170.69 s <= 169.86 + one TR: tolerated
    with pytest.raises(ValueError, match="'tr' must be positive; got 0"):
        fmri.run_timeline(ev, 0, N_VOLS)


# ----------------------------------------------------------------------------- load_cneuromod


def test_load_cneuromod(tree):
    with pytest.warns(UserWarning, match="row skipped"):
        runs = fmri.load_cneuromod(tree["root"], tree["atlas"], subjects=["sub-01"])
    assert [(r["subject"], r["session"], r["run"]) for r in runs] == [(SUB, SES, 1), (SUB, SES, 2)]
    for r in runs:
        assert r["tr"] == TR and r["bold"].shape == (N_VOLS, 4)
    assert [len(r["segments"]) for r in runs] == [2, 2]
    assert runs[1]["segments"][1].level == "5-0"
