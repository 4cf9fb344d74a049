"""A tiny synthetic CNeuroMod-like BIDS + fMRIPrep tree, shared by test_fmri and test_prepare.

Raw BIDS (``sub-XX/ses-YYY/func``: events with the real quirks, ``_bold.json`` sidecars),
fMRIPrep derivatives (``derivatives/fmriprep``, runs named ``run-1`` where the raw files say
``run-01``; 6x6x6 preproc images; confounds with the real fMRIPrep column names) and a
four-label atlas, one label per x-y quadrant.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

TR = 1.49
SHAPE = (6, 6, 6)
SUB, SES, TASK, SPACE = "sub-01", "ses-001", "shinobi", "MNI152NLin2009cAsym"
MOTION = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]

#: (trial_type, onset, duration, duration_bk2, level, stim), stim as "rep-NNN" (made into a
#: gamelogs path), or a literal such as "Missing file" or "".
Row = tuple[str, float, float, float, str, str]


def bk2_path(run: int, level: str, rep: str, sub: str = SUB, ses: str = SES) -> str:
    """``stim_file`` of a repetition, relative to the dataset root, as CNeuroMod writes it."""
    lvl = level.split("-")[0]
    return f"{sub}/{ses}/gamelogs/{sub}_{ses}_task-{TASK}_run-{run:02d}_level-{lvl}_{rep}.bk2"


def write_events(path: Path, rows: list[Row], run: int, sub: str = SUB, ses: str = SES) -> None:
    """An events file with a leading unnamed pandas-index column and long float onsets."""
    lines = ["\ttrial_type\tonset\tduration\tduration_bk2\tlevel\tstim_file"]
    for i, (tt, onset, dur, dur_bk2, level, stim) in enumerate(rows):
        stim = bk2_path(run, level, stim, sub, ses) if stim.startswith("rep-") else stim
        lines.append(f"{i}\t{tt}\t{onset!r}\t{dur!r}\t{dur_bk2!r}\t{level}\t{stim}")
    path.write_text("\n".join(lines) + "\n")


def labels() -> np.ndarray:
    """Four labels, one per x-y quadrant, through all z: label 1 is x < 3, y < 3."""
    x, y, _ = np.indices(SHAPE)
    return (1 + (x >= 3) + 2 * (y >= 3)).astype(np.int16)


def mni_atlas() -> "nib.Nifti1Image":
    """The four quadrant labels as 10, 20, 30, 40 (not 1..4), 20 mm voxels over MNI space: an atlas
    that nilearn's bundled MNI template can show."""
    import nibabel as nib

    affine = np.array([[20.0, 0, 0, -60], [0, 20, 0, -90], [0, 0, 20, -50], [0, 0, 0, 1]])
    return nib.Nifti1Image(10 * labels(), affine)


def confounds(rng: np.random.Generator, n_vols: int, keep: np.ndarray | None = None) -> pd.DataFrame:
    """Every column fMRIPrep writes for "simple" + global signal, orthogonal to ``keep``."""
    names = []
    for base in MOTION + ["global_signal", "csf", "white_matter"]:
        names += [base, f"{base}_derivative1", f"{base}_power2", f"{base}_derivative1_power2"]
    names += ["framewise_displacement", "cosine00", "cosine01"]
    basis = np.ones((n_vols, 1)) if keep is None else np.column_stack([np.ones(n_vols), keep])
    x = rng.standard_normal((n_vols, len(names)))
    x -= basis @ np.linalg.lstsq(basis, x, rcond=None)[0]  # the signal must survive denoising
    df = pd.DataFrame(x, columns=names)
    df.loc[0, [n for n in names if "derivative1" in n] + ["framewise_displacement"]] = np.nan
    return df


def write_bold(path: Path, data: np.ndarray, tr: float = TR) -> None:
    img = nib.Nifti1Image(data.astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0]))
    img.header.set_zooms((2.0, 2.0, 2.0, tr))
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, path)


def build_tree(
    base: Path,
    events: dict[int, list[Row]],
    n_vols: int,
    signal: Callable[[int], np.ndarray] | None = None,
    seed: int = 0,
) -> dict:
    """Write the tree under ``base``; returns its paths.

    Parameters
    ----------
    base : Path
        Folder that receives ``shinobi/`` (the dataset root) and ``atlas.nii.gz``.
    events : dict of int to list of Row
        Events rows of each run of ``sub-01/ses-001``.
    n_vols : int
        Volumes of every run.
    signal : callable or None
        ``signal(run)`` gives an array of shape (n_vols,) added to label 1 and kept out of
        the confounds; None adds nothing.

    Returns
    -------
    dict
        ``root`` (dataset root), ``func`` (raw func folder), ``dfunc`` (fMRIPrep func
        folder), ``atlas`` (labels image path).
    """
    rng = np.random.default_rng(seed)
    root = base / "shinobi"
    func = root / SUB / SES / "func"
    dfunc = root / "derivatives" / "fmriprep" / SUB / SES / "func"
    func.mkdir(parents=True)
    dfunc.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "shinobi", "BIDSVersion": "1.6.0"}))
    lab = labels()
    for run, rows in events.items():
        raw = f"{SUB}_{SES}_task-{TASK}_run-{run:02d}"
        write_events(func / f"{raw}_events.tsv", rows, run)
        (func / f"{raw}_bold.json").write_text(json.dumps({"RepetitionTime": TR, "TaskName": TASK}))
        der = f"{SUB}_{SES}_task-{TASK}_run-{run}"  # fMRIPrep drops the zero padding: run-1
        data = 100.0 + 0.3 * rng.standard_normal(SHAPE + (n_vols,))
        keep = None if signal is None else signal(run)
        if keep is not None:
            data[lab == 1] += keep
        write_bold(dfunc / f"{der}_space-{SPACE}_desc-preproc_bold.nii.gz", data)
        conf = dfunc / f"{der}_desc-confounds_timeseries.tsv"
        confounds(rng, n_vols, keep).to_csv(conf, sep="\t", index=False, na_rep="n/a")
    atlas = base / "atlas.nii.gz"
    nib.save(nib.Nifti1Image(lab, np.diag([2.0, 2.0, 2.0, 1.0])), atlas)
    return {"root": root, "func": func, "dfunc": dfunc, "atlas": atlas}
