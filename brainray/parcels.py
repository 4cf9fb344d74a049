"""Per-parcel scores of a trial: the r and noise ceiling of every parcel, with its family and receptive field.

The trial log keeps summaries per trial (``brain_r_mean``, ``brain_r_<family>``); a map needs every
parcel. :func:`parcel_table` joins the per-parcel Pearson r of each subject (what
``encoding.encode_subject`` returns) with what the dataset knows of each parcel: on a simulated brain
its family, its main stimulus feature, the receptive field of that feature (cell ``g`` of the
``grid x grid`` split of the screen, for the pixel features ``lum-g``, ``contrast-g``, ``motion-g``,
``surprise-g``) and its exact noise ceiling; on measured data only the parcel's index. The table of a
trial lives in ``<root>/parcels/<trial_id>.parquet`` (:func:`write_parcel_scores`, a path or a URI),
beside the trial log, under the trial log's id (Tune's trial id, ``<id>-d<frames>`` for a reuse
branch). ``brainray.sweep`` writes it when a trial is scored, and the report maps the best
trial's (``brainray.report``).

On measured data with a labels atlas the scores become brain maps: :func:`paint` writes one value per
parcel into the atlas's label image (parcel ``i`` of a table is the ``i``-th smallest non-zero label, the
column order of ``NiftiLabelsMasker`` in ``brainray.fmri.extract_parcels``), :func:`parcel_means`
averages a table over subjects, and :func:`axis_deltas` gives the change of every parcel's r along each
sweep axis.
"""

from __future__ import annotations

import itertools
import math
import uuid
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from brainray import triallog

__all__ = ["PARCELS", "COLUMNS", "parcel_table", "write_parcel_scores", "read_parcel_scores", "summarize",
           "parcel_means", "atlas_labels", "paint", "axis_deltas"]

PARCELS = triallog.PARCELS  # folder under the sweep root (its layout is triallog's)
COLUMNS = ("trial_id", "subject", "parcel", "family", "feature", "receptive_field", "ceiling", "r")
_RF_FEATURES = ("lum", "contrast", "motion", "surprise")  # simbrain.stimulus_features: one per screen cell


def _receptive_field(feature: str, grid: int) -> str:
    """``"row 1, col 2"`` for a pixel feature ``lum-5`` on a 3 x 3 grid; "" for the others."""
    base, _, cell = feature.rpartition("-")
    if base not in _RF_FEATURES or not cell.isdigit():
        return ""
    row, col = divmod(int(cell), grid)
    return f"row {row}, col {col}"


def parcel_table(ds: Any, r_by_subject: Mapping[str, Any], trial_id: str = "") -> pd.DataFrame:
    """One row per (subject, parcel): its r, ceiling, family and receptive field.

    Parameters
    ----------
    ds : brainray.dataset.Dataset
        The prepared dataset the trial was scored on (``ds.subject(name)`` gives the parcels).
    r_by_subject : mapping of str to array of shape (n_parcels,)
        Held-out Pearson r per parcel of each subject.
    trial_id : str, default=""
        Written in every row.

    Returns
    -------
    DataFrame with columns :data:`COLUMNS`; ``family`` and ``feature`` are "" and ``ceiling``
    NaN for measured parcels (their ceiling is unknown).
    """
    frames = []
    for subject, r in r_by_subject.items():
        r = np.asarray(r, dtype=float).ravel()
        sub = ds.subject(subject)
        parcels = getattr(sub, "parcels", None)
        if parcels is not None and len(parcels) != len(r):
            raise ValueError(f"parcel_table: {subject} has {len(parcels)} parcels but {len(r)} scores; pass the "
                             "r of every parcel, in the dataset's order.")
        if parcels is None:  # measured BOLD: no ground truth
            frames.append(pd.DataFrame(dict(parcel=[f"p{i:04d}" for i in range(len(r))], family="", feature="",
                                            receptive_field="", ceiling=math.nan, r=r)).assign(subject=subject))
            continue
        grid = int(getattr(sub.config, "grid", 3))
        main = [p.features[0] if p.features else "" for p in parcels]
        frames.append(pd.DataFrame(dict(
            subject=subject, parcel=[p.label for p in parcels], family=[p.kind for p in parcels], feature=main,
            receptive_field=[_receptive_field(f, grid) for f in main], ceiling=np.asarray(sub.ceiling, float), r=r)))
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)
    return out.assign(trial_id=trial_id)[list(COLUMNS)]


def write_parcel_scores(root: str | Path, trial_id: str, table: pd.DataFrame) -> Path | str:
    """Write one trial's :func:`parcel_table` to ``<root>/parcels/<trial_id>.parquet``; returns the path.

    ``root`` is the sweep folder: a local path (a :class:`~pathlib.Path` is returned) or a URI
    (``s3://``, ``gs://``, ``file://``: written through its pyarrow filesystem, the URI is returned).
    """
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"write_parcel_scores: the table lacks column(s) {missing}; build it with parcel_table.")
    fs, base = triallog.filesystem(str(root))
    folder = f"{base.rstrip('/')}/{PARCELS}"
    fs.create_dir(folder, recursive=True)
    final, tmp = f"{folder}/{trial_id}.parquet", f"{folder}/.{trial_id}.{uuid.uuid4().hex}.tmp"
    pq.write_table(pa.Table.from_pandas(table, preserve_index=False), tmp, filesystem=fs)
    fs.move(tmp, final)  # a reader never sees half a file
    return _location(root, trial_id)


def read_parcel_scores(root: str | Path, trial_id: str) -> pd.DataFrame | None:
    """The per-parcel table of ``trial_id`` under ``root`` (a path or a URI), or None when it was not written."""
    fs, base = triallog.filesystem(str(root))
    path = f"{base.rstrip('/')}/{PARCELS}/{trial_id}.parquet"
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    return pq.read_table(path, filesystem=fs).to_pandas()


def _location(root: str | Path, trial_id: str) -> Path | str:
    if triallog.is_uri(str(root)):
        return f"{str(root).rstrip('/')}/{PARCELS}/{trial_id}.parquet"
    return Path(root) / PARCELS / f"{trial_id}.parquet"


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Mean r, mean ceiling and mean r / ceiling per family and receptive field (over subjects and parcels).

    Returns
    -------
    DataFrame with columns ``family, receptive_field, n, r_mean, r_sd, ceiling_mean, ceiling_frac``;
    ``ceiling_frac`` is the mean of r / ceiling over parcels with a ceiling > 0 (NaN otherwise).
    """
    df = table.assign(_frac=np.where(table["ceiling"] > 0, table["r"] / table["ceiling"].where(table["ceiling"] > 0),
                                     np.nan))
    g = df.groupby(["family", "receptive_field"], sort=True)
    return (g.agg(n=("r", "size"), r_mean=("r", "mean"), r_sd=("r", "std"), ceiling_mean=("ceiling", "mean"),
                  ceiling_frac=("_frac", "mean"))
            .reset_index())


def parcel_means(table: pd.DataFrame) -> pd.Series:
    """Mean r of each parcel over subjects, indexed by parcel in the table's order (the dataset's).

    One map per trial needs one value per parcel; the subjects share the atlas (MNI space).
    """
    return table.groupby("parcel", sort=False)["r"].mean()


def atlas_labels(labels_img: Any) -> np.ndarray:
    """The non-zero labels of a labels image (path or image), sorted: the parcel order of its scores."""
    from nilearn.image import load_img

    data = np.asarray(load_img(labels_img).dataobj)
    labels = np.unique(data)
    return labels[labels != 0]


def paint(labels_img: Any, values: Any) -> Any:
    """A float image of the atlas's shape and affine with ``values[i]`` in every voxel of the ``i``-th label.

    Parameters
    ----------
    labels_img : Niimg-like
        Labels atlas (path or image); 0 is background and stays 0.
    values : array_like of shape (n_labels,)
        One value per parcel, in the order of :func:`atlas_labels`.

    Returns
    -------
    nibabel.Nifti1Image, float32
    """
    import nibabel as nib
    from nilearn.image import load_img

    img = load_img(labels_img)
    data = np.asarray(img.dataobj)
    labels = atlas_labels(img)
    values = np.asarray(values, dtype=np.float32).ravel()
    if len(values) != len(labels):
        raise ValueError(f"paint: {len(values)} parcel values for an atlas of {len(labels)} labels; the scores must "
                         "come from this atlas (one per non-zero label, as NiftiLabelsMasker extracted them).")
    out = np.zeros(data.shape, dtype=np.float32)
    inside = data != 0
    out[inside] = values[np.searchsorted(labels, data[inside])]
    return nib.Nifti1Image(out, img.affine)


def axis_deltas(trials: pd.DataFrame, reference: Mapping[str, Any],
                read: Callable[[str], pd.DataFrame | None]) -> pd.DataFrame:
    """Change of each parcel's r between consecutive values of each axis, the other axes at the reference.

    For axis X, the trials used are those whose other axes equal ``reference`` (the reference line of
    ``brainray.frontier.axis_effects``); at each value of X, a parcel's r is its :func:`parcel_means`
    averaged over those trials that have a table (seeds: one trial is its own value). Values without a
    table are skipped, so a step joins the consecutive values (sorted) that have one:
    ``delta_r = r(hi_value) - r(lo_value)``, positive when the larger value scores better. An axis with
    fewer than two such values has no step (no marginal mean here: other axes would vary under the map).

    Parameters
    ----------
    trials : DataFrame
        Usable trials with ``trial_id`` and the axis columns.
    reference : mapping of str to value
        The reference value of each axis; every key is an axis.
    read : callable
        ``read(trial_id)`` gives the trial's :func:`parcel_table` or None.

    Returns
    -------
    DataFrame with columns ``axis, lo_value, hi_value, n_lo, n_hi, parcel, r_lo, r_hi, delta_r``: one row
    per step and parcel, ``n_lo``/``n_hi`` the trials averaged at each end.
    """
    cols = ["axis", "lo_value", "hi_value", "n_lo", "n_hi", "parcel", "r_lo", "r_hi", "delta_r"]
    cache: dict[str, pd.Series | None] = {}

    def means(trial_id: str) -> pd.Series | None:
        if trial_id not in cache:
            table = read(trial_id)
            cache[trial_id] = None if table is None else parcel_means(table)
        return cache[trial_id]

    steps = []
    for axis in reference:
        line = np.ones(len(trials), dtype=bool)
        for other, value in reference.items():
            if other != axis:
                line &= (trials[other] == value).to_numpy()
        points = []  # (value, n trials, mean r per parcel)
        for value, g in trials[line].groupby(axis, sort=True):
            found = [m for m in map(means, g["trial_id"]) if m is not None]
            if found:
                points.append((value, len(found), pd.concat(found, axis=1).mean(axis=1)))
        for (lo, n_lo, r_lo), (hi, n_hi, r_hi) in itertools.pairwise(points):
            both = pd.DataFrame({"r_lo": r_lo, "r_hi": r_hi}).dropna()
            both["delta_r"] = both["r_hi"] - both["r_lo"]
            steps.append(both.rename_axis("parcel").reset_index().assign(
                axis=axis, lo_value=lo, hi_value=hi, n_lo=n_lo, n_hi=n_hi))
    return pd.concat(steps, ignore_index=True)[cols] if steps else pd.DataFrame(columns=cols)
