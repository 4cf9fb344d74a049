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
"""

from __future__ import annotations

import math
import uuid
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from brainray import triallog

__all__ = ["PARCELS", "COLUMNS", "parcel_table", "write_parcel_scores", "read_parcel_scores", "summarize"]

PARCELS = "parcels"  # folder under the sweep root
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
