"""Real fMRI: CNeuroMod shinobi runs from a BIDS dataset with fMRIPrep derivatives.

Reads the raw ``*_events.tsv`` (one row per game repetition, each pointing to its ``.bk2``
replay) and ``*_bold.json`` sidecars, the fMRIPrep ``*_desc-preproc_bold.nii.gz`` images and
their ``*_desc-confounds_timeseries.tsv``, and turns every run into parcel time series plus
the replays placed on the run's timeline. Replaying the ``.bk2`` files to frames is left to
``brainray.gameplay``.

Parcel extraction follows the pipeline the paper's author used before (Scaling-up-Ridge
``fMRI/Parcel.py``; see ``reference/paper.md`` section 1): MNI152NLin2009cAsym outputs,
confounds from ``nilearn.interfaces.fmriprep.load_confounds_strategy("simple",
global_signal="basic")``, then ``nilearn.maskers.NiftiLabelsMasker(labels_img,
standardize=True, detrend=False, smoothing_fwhm=8)``, with any labels atlas (the paper used
MIST ATOM, 1095 parcels).

Quirks of the real files that this module handles (DESIGN.md, "Real data"):

- events files carry an extra ``duration_bk2`` column (bk2 frame count / 60), onsets written
  as long floats, ``level`` values such as ``1-0``, ``4-1``, ``5-0``, and sometimes a leading
  unnamed column holding a pandas index (dropped);
- ``stim_file`` is relative to the dataset root, or the literal ``Missing file``, or empty;
- fMRIPrep names runs ``run-1`` where the raw files say ``run-01``: runs match by number;
- the sidecar has no ``NumberOfVolumes``: the number of volumes comes from the image.
"""

from __future__ import annotations

import json
import math
import re
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

__all__ = [
    "BoldRun",
    "Segment",
    "read_events",
    "find_runs",
    "extract_parcels",
    "run_timeline",
    "load_cneuromod",
    "REQUIRED_EVENT_COLUMNS",
    "MISSING_STIM_VALUES",
]

#: Columns every events file must have; any others (``duration_bk2``, ...) are kept.
REQUIRED_EVENT_COLUMNS = ("trial_type", "onset", "duration", "level", "stim_file")
#: ``stim_file`` values that mean "no replay for this repetition" (compared lower-case).
MISSING_STIM_VALUES = ("", "missing file", "n/a", "nan")
_TR_TOLERANCE_S = 1e-3  # sidecar vs NIfTI header; scanners write TR to the ms
_TIME_UNIT_TO_S = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6}
_EVENTS_RE = r"^(sub-[A-Za-z0-9]+)_(?:(ses-[A-Za-z0-9]+)_)?task-{task}_run-(\d+)_events\.tsv$"
_RUN_RE = re.compile(r"_run-(\d+)_")


@contextmanager
def _reading(path: Path, what: str) -> Iterator[None]:
    """Name ``path`` in the error of reading a damaged (corrupt, truncated) file.

    pandas, json and nibabel raise ValueError, EOFError, OSError or zlib.error without the path.
    """
    try:
        yield
    except FileNotFoundError:
        raise
    except (ValueError, EOFError, OSError, zlib.error) as err:
        raise ValueError(
            f"{path} cannot be read as {what} ({type(err).__name__}: {err}); it is corrupt or "
            "truncated. Restore it (for a DataLad dataset: `datalad get` it again)."
        ) from err


# ----------------------------------------------------------------------------- events


def _find_bids_root(path: Path) -> Path:
    """Nearest ancestor of ``path`` holding ``sub-*`` folders or ``dataset_description.json``."""
    for folder in path.resolve().parents:
        if (folder / "dataset_description.json").is_file():
            return folder
        if any(p.is_dir() for p in folder.glob("sub-*")):
            return folder
    raise ValueError(
        f"{path}: no BIDS root above this file (no ancestor folder holds sub-* folders or "
        "dataset_description.json); pass root= explicitly."
    )


def _check_number_column(
    df: pd.DataFrame, column: str, path: Path, allow_nan: pd.Series | None = None
) -> pd.Series:
    """Cast ``column`` to float; raise naming the first row that is not finite and >= 0."""
    values = pd.to_numeric(df[column], errors="coerce").astype(float)
    ok = np.isfinite(values) & (values >= 0)
    if allow_nan is not None:
        ok |= allow_nan & values.isna()
    if not ok.all():
        row = int(np.flatnonzero(~ok.to_numpy())[0])
        raise ValueError(
            f"{path.name}, row {row}: {column} '{df[column].iloc[row]}' must be a finite, "
            f"non-negative number of seconds; fix the events file {path}."
        )
    return values


def read_events(path: str | Path, root: str | Path | None = None) -> pd.DataFrame:
    """Read a CNeuroMod ``*_events.tsv`` (one row per game repetition) and check it.

    Parameters
    ----------
    path : :obj:`str` or :obj:`pathlib.Path`
        The events file, e.g. ``sub-01/ses-001/func/sub-01_ses-001_task-shinobi_run-01_events.tsv``.
    root : :obj:`str` or :obj:`pathlib.Path`, default=None
        Dataset root that ``stim_file`` paths are relative to. ``None`` takes the nearest
        ancestor folder of ``path`` that holds ``sub-*`` folders or ``dataset_description.json``.

    Returns
    -------
    events : :class:`pandas.DataFrame` of shape (n_events, n_columns)
        The columns of the file (``trial_type``, ``onset``, ``duration``, ``level``,
        ``stim_file`` and any others, such as ``duration_bk2``), rows in file order with a
        ``0..n_events-1`` index; ``onset``, ``duration`` (and ``duration_bk2``) as float,
        ``level`` and ``stim_file`` as strings. Two columns are added: ``missing``
        (:obj:`bool`, True where ``stim_file`` is ``Missing file``, ``n/a`` or empty) and
        ``bk2_path`` (:obj:`str`, the absolute resolved replay path, or None where missing).
        ``events.attrs["path"]`` holds the file's path and ``events.attrs["root"]`` the root.
        A leading unnamed column (a pandas index written by the acquisition scripts) is dropped.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If a required column is missing; if an onset or duration is not a finite,
        non-negative number; if a ``stim_file`` is absolute or points outside ``root``.
        Messages name the file, the row (counted from 0, header excluded) and the value.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Events file not found: {path}")
    root = _find_bids_root(path) if root is None else Path(root)
    root = root.resolve()

    with _reading(path, "a tab-separated events file"):
        df = pd.read_csv(
            path, sep="\t", dtype={"level": str, "stim_file": str, "trial_type": str},
            na_values=["n/a"], keep_default_na=False,
        )
    df = df.drop(columns=[c for c in df.columns if re.fullmatch(r"Unnamed: \d+", str(c))])
    missing_cols = [c for c in REQUIRED_EVENT_COLUMNS if c not in df.columns]
    if missing_cols:
        raise ValueError(
            f"{path}: missing required column(s) {missing_cols}; an events file needs "
            f"{list(REQUIRED_EVENT_COLUMNS)} (found {list(df.columns)})."
        )
    df = df.reset_index(drop=True)

    stim = df["stim_file"].fillna("").astype(str).str.strip()
    missing = stim.str.lower().isin(MISSING_STIM_VALUES)
    df["onset"] = _check_number_column(df, "onset", path)
    df["duration"] = _check_number_column(df, "duration", path)
    if "duration_bk2" in df.columns:  # n/a is fine here: run_timeline falls back to duration
        df["duration_bk2"] = _check_number_column(
            df, "duration_bk2", path, allow_nan=pd.Series(True, index=df.index)
        )
    df["level"] = df["level"].astype(str)

    bk2_paths: list[str | None] = []
    for row, (value, is_missing) in enumerate(zip(stim, missing)):
        if is_missing:
            bk2_paths.append(None)
            continue
        if Path(value).is_absolute():
            raise ValueError(
                f"{path.name}, row {row}: stim_file {value!r} is an absolute path; stim_file "
                f"must be relative to the dataset root {root}; fix the path."
            )
        resolved = (root / value).resolve()
        if not resolved.is_relative_to(root):
            raise ValueError(
                f"{path.name}, row {row}: stim_file {value!r} points outside the dataset "
                f"root {root}; fix the path."
            )
        bk2_paths.append(str(resolved))
    df["stim_file"] = stim
    df["missing"] = missing.to_numpy(dtype=bool)
    df["bk2_path"] = pd.Series(bk2_paths, index=df.index, dtype=object)
    df.attrs["path"] = str(path)
    df.attrs["root"] = str(root)
    return df


# ----------------------------------------------------------------------------- runs


@dataclass
class BoldRun:
    """One fMRI run: raw events and sidecar, fMRIPrep image and confounds.

    Attributes
    ----------
    subject : :obj:`str`
        BIDS subject with its prefix, e.g. ``"sub-01"``.
    session : :obj:`str`
        BIDS session with its prefix, e.g. ``"ses-001"``; ``""`` for a dataset without sessions.
    run : :obj:`int`
        Run number (``run-01`` in the raw tree and ``run-1`` in fMRIPrep are both 1).
    task : :obj:`str`
        BIDS task, e.g. ``"shinobi"``.
    bold_path, confounds_path, sidecar_path, events_path : :class:`pathlib.Path`
        ``*_desc-preproc_bold.nii.gz``, ``*_desc-confounds_timeseries.tsv``, ``*_bold.json``
        and ``*_events.tsv``.
    tr : :obj:`float`
        Repetition time in seconds, from the sidecar's ``RepetitionTime``.
    """

    subject: str
    session: str
    run: int
    task: str
    bold_path: Path
    confounds_path: Path
    sidecar_path: Path
    events_path: Path
    tr: float


def _sidecar_tr(sidecar: Path) -> float:
    with _reading(sidecar, "a JSON sidecar"), sidecar.open() as f:
        meta = json.load(f)
    tr = meta.get("RepetitionTime") if isinstance(meta, dict) else None
    if not isinstance(tr, (int, float)) or isinstance(tr, bool) or not (tr > 0):
        raise ValueError(
            f"{sidecar}: 'RepetitionTime' must be a positive number of seconds; got {tr!r}. "
            "Fix the sidecar."
        )
    return float(tr)


def _header_tr(bold: Path) -> float | None:
    """TR in seconds from the NIfTI header, or None when the header holds no real value."""
    import nibabel as nib

    with _reading(bold, "a NIfTI image"):
        header = nib.load(bold).header
    zooms = header.get_zooms()
    if len(zooms) < 4 or not zooms[3] > 0:
        return None
    unit = header.get_xyzt_units()[1]
    if unit not in _TIME_UNIT_TO_S:  # 'unknown': 1.0 is nibabel's placeholder, else assume s
        return None if float(zooms[3]) == 1.0 else float(zooms[3])
    return float(zooms[3]) * _TIME_UNIT_TO_S[unit]


def _find_sidecar(events: Path, bids_root: Path, task: str) -> Path:
    """The run's ``_bold.json``, else the dataset-level ``task-<task>_bold.json`` (inheritance)."""
    sidecar = events.with_name(events.name.replace("_events.tsv", "_bold.json"))
    if sidecar.is_file():
        return sidecar
    top = bids_root / f"task-{task}_bold.json"
    if top.is_file():
        return top
    raise FileNotFoundError(
        f"No BOLD sidecar for {events.name}: expected {sidecar} (or {top}); "
        "it gives the RepetitionTime."
    )


def _derivative_files(func: Path, prefix: str, task: str, space: str) -> tuple[dict, dict]:
    """Preproc images and confounds in one fMRIPrep ``func`` folder, keyed by run number."""
    bolds: dict[int, list[Path]] = {}
    confounds: dict[int, list[Path]] = {}
    for pattern, out in (
        (f"{prefix}_task-{task}_*run-*_space-{space}_*desc-preproc_bold.nii.gz", bolds),
        (f"{prefix}_task-{task}_*run-*_desc-confounds_timeseries.tsv", confounds),
    ):
        for p in sorted(func.glob(pattern)):
            m = _RUN_RE.search(p.name)
            if m:
                out.setdefault(int(m.group(1)), []).append(p)
    return bolds, confounds


def _one(found: list[Path] | None, expected: Path) -> Path | None:
    if not found:
        return None
    if len(found) > 1:
        raise ValueError(
            f"More than one file matches {expected.name}: {[str(p) for p in found]}; "
            "remove the extra ones or point derivatives_root at one fMRIPrep output."
        )
    return found[0]


def find_runs(
    bids_root: str | Path,
    derivatives_root: str | Path | None = None,
    task: str = "shinobi",
    space: str = "MNI152NLin2009cAsym",
    subjects: list[str] | None = None,
    on_missing: Literal["raise", "warn"] = "raise",
) -> list[BoldRun]:
    """Pair every raw run (events + sidecar) with its fMRIPrep image and confounds.

    Raw runs are the ``sub-*/[ses-*/]func/*_task-<task>_run-XX_events.tsv`` files of
    ``bids_root`` (``desc-annotated`` events are not runs). Their derivatives are
    ``*_task-<task>_run-N_space-<space>_desc-preproc_bold.nii.gz`` and
    ``*_task-<task>_run-N_desc-confounds_timeseries.tsv`` in the same subject/session folder
    of ``derivatives_root``, matched by run number (``run-01`` is ``run-1``).

    Parameters
    ----------
    bids_root : :obj:`str` or :class:`pathlib.Path`
        Raw BIDS dataset root (holds ``sub-*``).
    derivatives_root : :obj:`str` or :class:`pathlib.Path`, default=None
        fMRIPrep output root; ``None`` means ``<bids_root>/derivatives/fmriprep``.
    task : :obj:`str`, default="shinobi"
        BIDS task label.
    space : :obj:`str`, default="MNI152NLin2009cAsym"
        fMRIPrep output space of the preprocessed images.
    subjects : :obj:`list` of :obj:`str`, default=None
        Subjects to keep, as ``"01"`` or ``"sub-01"``; ``None`` keeps all.
    on_missing : {"raise", "warn"}, default="raise"
        What to do when a raw run has no preprocessed image or no confounds file:
        raise :class:`FileNotFoundError`, or warn and skip the run.

    Returns
    -------
    runs : :obj:`list` of :class:`BoldRun`
        Sorted by subject, session and run. ``tr`` comes from the sidecar.

    Raises
    ------
    FileNotFoundError
        If ``bids_root`` or ``derivatives_root`` does not exist, if no events file matches,
        if a sidecar is missing, or (``on_missing="raise"``) if a derivative is missing; the
        message names the expected file.
    ValueError
        If ``on_missing`` is not allowed, if a requested subject has no runs, if two
        derivatives match one run, or if the sidecar's RepetitionTime differs from the
        image header's (``zooms[3]``, when it holds a real value).
    """
    if on_missing not in ("raise", "warn"):
        raise ValueError(f"'on_missing' must be one of ('raise', 'warn'); got {on_missing!r}.")
    bids_root = Path(bids_root)
    if derivatives_root is None:
        deriv = bids_root / "derivatives" / "fmriprep"
    else:
        deriv = Path(derivatives_root)
    for name, folder in (("bids_root", bids_root), ("derivatives_root", deriv)):
        if not folder.is_dir():
            raise FileNotFoundError(f"{name} folder not found: {folder}")
    wanted = None
    if subjects is not None:
        wanted = {s if s.startswith("sub-") else f"sub-{s}" for s in subjects}

    events_re = re.compile(_EVENTS_RE.format(task=re.escape(task)))
    candidates = sorted(bids_root.glob("sub-*/ses-*/func/*_events.tsv")) + sorted(
        bids_root.glob("sub-*/func/*_events.tsv")
    )
    runs: list[BoldRun] = []
    seen_subjects: set[str] = set()
    for events in candidates:
        m = events_re.match(events.name)
        if m is None:
            continue
        subject, session, run = m.group(1), m.group(2) or "", int(m.group(3))
        seen_subjects.add(subject)
        if wanted is not None and subject not in wanted:
            continue
        sidecar = _find_sidecar(events, bids_root, task)
        prefix = f"{subject}_{session}" if session else subject
        func = deriv / subject / session / "func" if session else deriv / subject / "func"
        bolds, confounds = _derivative_files(func, prefix, task, space)
        stem = f"{prefix}_task-{task}_run-{run}"
        expected_bold = func / f"{stem}_space-{space}_desc-preproc_bold.nii.gz"
        expected_conf = func / f"{stem}_desc-confounds_timeseries.tsv"
        bold = _one(bolds.get(run), expected_bold)
        conf = _one(confounds.get(run), expected_conf)
        pairs = ((expected_bold, bold), (expected_conf, conf))
        absent = [str(p) for p, found in pairs if found is None]
        if absent:
            what = (
                f"{events.name}: no fMRIPrep derivative for run {run}; "
                f"expected {' and '.join(absent)}"
            )
            if on_missing == "raise":
                raise FileNotFoundError(
                    f"{what}. Run fMRIPrep on this run, or pass on_missing='warn' to skip it."
                )
            warnings.warn(
                f"{what}; it is skipped. To include it, run fMRIPrep on this run.",
                UserWarning,
                stacklevel=2,
            )
            continue
        tr = _sidecar_tr(sidecar)
        header_tr = _header_tr(bold)
        if header_tr is not None and abs(header_tr - tr) > _TR_TOLERANCE_S:
            raise ValueError(
                f"TR mismatch for run {run}: {sidecar} says RepetitionTime={tr} s but the header "
                f"of {bold} says {header_tr} s (zooms[3]); fix the sidecar or the image header."
            )
        runs.append(BoldRun(subject, session, run, task, bold, conf, sidecar, events, tr))

    if not seen_subjects:
        raise FileNotFoundError(
            f"No events files for task {task!r} under {bids_root} "
            f"(looked for sub-*/[ses-*/]func/sub-*_task-{task}_run-*_events.tsv)."
        )
    if wanted is not None and (unknown := sorted(wanted - seen_subjects)):
        raise ValueError(
            f"subjects {unknown} have no task-{task} runs under {bids_root}; "
            f"available: {sorted(seen_subjects)}."
        )
    runs.sort(key=lambda r: (r.subject, r.session, r.run))
    return runs


# ----------------------------------------------------------------------------- parcels


def _load_confounds(
    run: BoldRun, n_vols: int, confound_strategy: str, global_signal: str | None
) -> pd.DataFrame:
    """Confounds (n_vols, n_confounds) from nilearn, checked against the raw TSV for NaNs."""
    from nilearn.interfaces.fmriprep import load_confounds_strategy

    if not Path(run.confounds_path).is_file():
        raise FileNotFoundError(
            f"Confounds file not found: {run.confounds_path} (needed for "
            f"{Path(run.bold_path).name}); fMRIPrep writes it next to the preprocessed image."
        )
    kwargs = {} if global_signal is None else {"global_signal": global_signal}
    try:
        confounds, sample_mask = load_confounds_strategy(
            str(run.bold_path), denoise_strategy=confound_strategy, **kwargs
        )
    except ValueError as err:
        raise ValueError(
            f"{run.confounds_path}: nilearn could not load the confounds: {err}"
        ) from err

    with _reading(run.confounds_path, "a tab-separated confounds file"):
        raw = pd.read_csv(run.confounds_path, sep="\t", na_values=["n/a"], keep_default_na=False)
    if len(raw) != n_vols:
        raise ValueError(
            f"{run.confounds_path} has {len(raw)} rows but {run.bold_path} has {n_vols} volumes; "
            "they must come from the same fMRIPrep run."
        )
    for column in confounds.columns:
        values = pd.to_numeric(raw[column], errors="coerce").to_numpy(dtype=float)
        # fMRIPrep writes n/a in the first row of derivative columns (nothing to difference)
        check = values[1:] if "derivative" in column else values
        if not np.isfinite(check).all():
            row = int(np.flatnonzero(~np.isfinite(check))[0]) + (len(values) - len(check))
            raise ValueError(
                f"{run.confounds_path}: column {column!r} has a NaN or non-number at row {row} "
                "(only the first row of derivative columns may be n/a); fix or re-run fMRIPrep."
            )
    if sample_mask is not None and len(sample_mask) != n_vols:
        raise ValueError(
            f"confound_strategy={confound_strategy!r} removes {n_vols - len(sample_mask)} volumes "
            f"of {run.bold_path}, which would break the alignment of replays to volumes; "
            "use a strategy without scrubbing (e.g. 'simple')."
        )
    return confounds


def extract_parcels(
    run: BoldRun,
    labels_img: Any,
    smoothing_fwhm: float | None = 8.0,
    standardize: bool = True,
    confound_strategy: Literal["simple", "scrubbing", "compcor", "ica_aroma"] = "simple",
    global_signal: Literal["basic", "derivatives", "power2", "full"] | None = "basic",
) -> np.ndarray:
    """Denoised parcel time series of one run.

    The image is smoothed and voxels are averaged within each label; each parcel's series
    ``y`` is then cleaned by regressing out the confounds ``C`` (``y - C C^+ y``, ``C``
    z-scored) and z-scored over time (``standardize``), as nilearn does:
    ``NiftiLabelsMasker(labels_img, smoothing_fwhm, standardize, detrend=False, t_r=run.tr)``
    with ``confounds = load_confounds_strategy(run.bold_path, confound_strategy,
    global_signal=global_signal)``.

    Parameters
    ----------
    run : :class:`BoldRun`
        The run, as returned by :func:`find_runs`.
    labels_img : Niimg-like
        Labels atlas (path or image), e.g. MIST ATOM; 0 is background. Resampled to the data.
    smoothing_fwhm : :obj:`float` or None, default=8.0
        Gaussian smoothing kernel FWHM in mm; None for none.
    standardize : :obj:`bool`, default=True
        Z-score each series over time (nilearn's ``"zscore_sample"``).
    confound_strategy : {"simple", "scrubbing", "compcor", "ica_aroma"}, default="simple"
        nilearn ``denoise_strategy``; strategies that drop volumes raise, as they would
        break the alignment with the replays.
    global_signal : {"basic", "derivatives", "power2", "full"} or None, default="basic"
        Global-signal regressors; None leaves the strategy's default.

    Returns
    -------
    bold : :class:`numpy.ndarray` of shape (n_vols, n_parcels), float32
        One row per volume of the image, one column per label of ``labels_img``.

    Raises
    ------
    FileNotFoundError
        If the image or the confounds file does not exist (names the file).
    ValueError
        If the image is not 4-D or holds NaN/inf; if the confounds hold NaN (other than the
        first row of derivative columns), have a different number of rows, or cannot be
        loaded by nilearn; if the strategy drops volumes.
    """
    import nibabel as nib
    from nilearn.maskers import NiftiLabelsMasker

    bold_path = Path(run.bold_path)
    if not bold_path.is_file():
        raise FileNotFoundError(f"Preprocessed BOLD image not found: {bold_path}")
    with _reading(bold_path, "a NIfTI image"):
        img = nib.load(bold_path)
    if len(img.shape) != 4:
        raise ValueError(
            f"{bold_path}: expected a 4-D image (x, y, z, time); got shape {img.shape}."
        )
    with _reading(bold_path, "a NIfTI image"):  # a truncated .nii.gz fails here, not at load
        data = np.asarray(img.dataobj, dtype=np.float32)  # (X, Y, Z, n_vols)
    n_vols = data.shape[3]
    for t in range(n_vols):  # per volume: no full-size boolean copy of a long run
        if not np.isfinite(data[..., t]).all():
            raise ValueError(
                f"{bold_path}: volume {t} holds NaN or inf values; re-run fMRIPrep or "
                "replace them before extracting parcels."
            )
    confounds = _load_confounds(run, n_vols, confound_strategy, global_signal)

    masker = NiftiLabelsMasker(
        labels_img=labels_img,
        smoothing_fwhm=smoothing_fwhm,
        standardize="zscore_sample" if standardize else None,
        detrend=False,
        t_r=run.tr,
    )
    clean_img = nib.Nifti1Image(data, img.affine, img.header)
    bold = masker.fit_transform(clean_img, confounds=confounds)  # (n_vols, n_parcels)
    return np.asarray(bold, dtype=np.float32)


# ----------------------------------------------------------------------------- timeline


@dataclass
class Segment:
    """One replay placed on a run's timeline.

    Attributes
    ----------
    bk2_path : :obj:`str`
        Absolute path of the ``.bk2`` replay.
    onset_s : :obj:`float`
        Start of the replay in seconds from the first volume's acquisition.
    n_frames_expected : :obj:`int`
        Frames the replay should give: ``round(duration_bk2 * fps)``, or
        ``round(duration * fps)`` when ``duration_bk2`` is absent or n/a.
    level : :obj:`str`
        Game level, e.g. ``"1-0"``.
    duration_s : :obj:`float`
        The event's ``duration`` in seconds (scanner clock).
    """

    bk2_path: str
    onset_s: float
    n_frames_expected: int
    level: str
    duration_s: float = math.nan


def run_timeline(events: pd.DataFrame, tr: float, n_vols: int, fps: float = 60.0) -> list[Segment]:
    """Place every replay of a run on the run's timeline.

    Parameters
    ----------
    events : :class:`pandas.DataFrame`
        As returned by :func:`read_events` (needs ``onset``, ``duration``, ``level``,
        ``missing``, ``bk2_path``; ``duration_bk2`` is used when present).
    tr : :obj:`float`
        Repetition time in seconds.
    n_vols : :obj:`int`
        Number of volumes of the run's image; the run lasts ``n_vols * tr`` seconds.
    fps : :obj:`float`, default=60.0
        Emulator frame rate (Genesis: 60 Hz).

    Returns
    -------
    segments : :obj:`list` of :class:`Segment`
        One per non-missing row, in file order. Rows whose ``stim_file`` is missing are
        skipped with a :class:`UserWarning` naming the row.

    Raises
    ------
    ValueError
        "BOLD shorter than the events" if a replay ends (``onset + duration``) more than one
        TR after the run's last volume ends (``n_vols * tr``); the message names the events
        file (``events.attrs["path"]``) and both durations. Also for a non-positive ``tr``,
        ``n_vols`` or ``fps``.
    """
    for name, value in (("tr", tr), ("n_vols", n_vols), ("fps", fps)):
        if not value > 0:
            raise ValueError(f"'{name}' must be positive; got {value!r}.")
    source = events.attrs.get("path", "<events DataFrame>")
    run_s = n_vols * tr
    has_bk2 = "duration_bk2" in events.columns
    segments: list[Segment] = []
    for row, ev in enumerate(events.itertuples(index=False)):
        if ev.missing:
            warnings.warn(
                f"{Path(source).name}, row {row}: stim_file {ev.stim_file!r} has no replay; "
                f"row skipped (level {ev.level}, onset {ev.onset:.3f} s). To avoid this warning, "
                "restore the .bk2 or drop the row.",
                UserWarning,
                stacklevel=2,
            )
            continue
        end = ev.onset + ev.duration
        if end > run_s + tr:
            raise ValueError(
                f"BOLD shorter than the events: {source}, row {row} ends at {end:.3f} s "
                f"(onset {ev.onset:.3f} + duration {ev.duration:.3f}) but the BOLD run lasts "
                f"{run_s:.3f} s ({n_vols} volumes x TR {tr} s); check that the events and the "
                "image belong to the same run."
            )
        seconds = ev.duration_bk2 if has_bk2 and np.isfinite(ev.duration_bk2) else ev.duration
        segments.append(
            Segment(
                bk2_path=str(ev.bk2_path),
                onset_s=float(ev.onset),
                n_frames_expected=int(round(seconds * fps)),
                level=str(ev.level),
                duration_s=float(ev.duration),
            )
        )
    return segments


# ----------------------------------------------------------------------------- all runs


def load_cneuromod(
    bids_root: str | Path,
    labels_img: Any,
    derivatives_root: str | Path | None = None,
    subjects: list[str] | None = None,
    task: str = "shinobi",
    map_fn: Callable[[Callable, Iterable], Iterable] | None = None,
) -> list[dict[str, Any]]:
    """Parcel time series and replay segments of every run of a CNeuroMod dataset.

    Runs :func:`find_runs`, then for each run :func:`read_events` (``stim_file`` relative to
    ``bids_root``), :func:`extract_parcels` with the paper's defaults and :func:`run_timeline`.
    Replays are not replayed here: the prepare stage streams each segment's ``.bk2`` into tokens.

    Parameters
    ----------
    bids_root : :obj:`str` or :class:`pathlib.Path`
        Raw BIDS dataset root.
    labels_img : Niimg-like
        Labels atlas (path or image), e.g. MIST ATOM.
    derivatives_root : :obj:`str` or :class:`pathlib.Path`, default=None
        fMRIPrep output root; ``None`` means ``<bids_root>/derivatives/fmriprep``.
    subjects : :obj:`list` of :obj:`str`, default=None
        Subjects to load (``"01"`` or ``"sub-01"``); ``None`` loads all.
    task : :obj:`str`, default="shinobi"
        BIDS task label.
    map_fn : callable, default=None
        A parallel ``map`` over the runs (prepare passes one backed by Ray tasks: one
        extraction per run, in parallel); plain ``map`` by default.

    Returns
    -------
    runs : :obj:`list` of :obj:`dict`
        One per run, sorted by subject, session, run, with keys ``subject`` (``"sub-01"``),
        ``session`` (``"ses-001"``), ``run`` (:obj:`int`), ``tr`` (:obj:`float`), ``bold``
        (array of shape (n_vols, n_parcels)) and ``segments`` (:obj:`list` of :class:`Segment`).

    Examples
    --------
    >>> runs = load_cneuromod("/data/shinobi", "MIST_ATOM.nii.gz", subjects=["01"])  # doctest: +SKIP
    >>> runs[0]["bold"].shape, runs[0]["segments"][0].level  # doctest: +SKIP
    ((451, 1095), '1-0')
    """
    from nilearn.image import load_img

    labels = load_img(labels_img)  # once, not once per run
    runs = find_runs(bids_root, derivatives_root, task=task, subjects=subjects)
    map_fn = map_fn or (lambda f, xs: list(map(f, xs)))
    return list(map_fn(_load_run, [(bids_root, run, labels) for run in runs]))


def _load_run(args: tuple[str | Path, Any, Any]) -> dict[str, Any]:
    """One run's events, parcels (one ``NiftiLabelsMasker`` pass) and timeline: one task."""
    bids_root, run, labels = args
    events = read_events(run.events_path, root=bids_root)
    bold = extract_parcels(run, labels)
    segments = run_timeline(events, run.tr, bold.shape[0])
    return {"subject": run.subject, "session": run.session, "run": run.run, "tr": run.tr,
            "bold": bold, "segments": segments}
