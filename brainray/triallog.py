"""The Parquet trial log: one immutable part file per finished or failed trial, plus curves.

Writes go to a temp name and are renamed into place, so a reader never sees half a file
and a crashed driver never leaves one behind. Files are immutable: a rerun that finishes a
trial whose row is an ``ERROR`` writes a new part and moves the old one to
``trials/_superseded/``, which ``pandas.read_parquet`` and pyarrow skip (a leading ``_``), so a
plain read of the folder and ``read_trials`` agree on one row per ``trial_id``. Readers still
deduplicate (newest row per ``trial_id``; one curve point per ``(trial_id, step)``), which
covers a driver killed between the write and the move. Paths may be local or URIs
(``s3://``, ``gs://``) through pyarrow filesystems.

:class:`TrialRecorder` turns a sweep's trial events into rows and curve points; it knows
nothing of Ray (``brainray.sweep.TrialLogCallback`` feeds it Tune's events as plain values).
:class:`Staged` gives writers of local files only (tensorboardX, the report's plots) one path
for a local or a URI root.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Self

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

import brainray

__all__ = [
    "TRIAL_SCHEMA",
    "CURVE_SCHEMA",
    "write_trial",
    "write_curves",
    "read_trials",
    "read_curves",
    "logged_trial_ids",
    "final_trial_ids",
    "SUPERSEDED",
    "CorruptLogError",
    "filesystem",
    "is_uri",
    "EXPERIMENT",
    "PARCELS",
    "RESULT_ENTRIES",
    "remove_results",
    "branch_id",
    "row_id",
    "is_final",
    "outcome",
    "error_text",
    "TrialRecorder",
    "Staged",
]

_STR, _INT, _FLOAT = pa.string(), pa.int64(), pa.float64()

TRIAL_SCHEMA = pa.schema(
    [
        ("sweep", _STR), ("trial_id", _STR), ("status", _STR), ("error", _STR),
        ("data_frames", _INT), ("tokens", _INT), ("n_embd", _INT), ("n_layer", _INT), ("n_head", _INT),
        ("dtype", _STR), ("seed", _INT), ("lr", _FLOAT), ("batch_size", _INT), ("epochs", _INT),
        ("step", _INT), ("params", _INT), ("params_nonembed", _INT), ("train_flops", _FLOAT),
        ("flops_per_token", _FLOAT), ("n_ctx", _INT), ("wall_s", _FLOAT), ("train_s", _FLOAT),
        ("encode_s", _FLOAT), ("gpu_hours", _FLOAT), ("tokens_per_s", _FLOAT), ("mfu", _FLOAT),
        ("peak_mem_bytes", _INT), ("val_loss", _FLOAT), ("final_val_loss", _FLOAT),
        ("brain_r_mean", _FLOAT), ("brain_r_max", _FLOAT), ("brain_r_top10", _FLOAT),
        ("ceiling_frac", _FLOAT), ("ceiling_mean", _FLOAT), ("device", _STR), ("node", _STR),
        ("num_failures", _INT), ("brainray_version", _STR), ("git_sha", _STR),
        ("started_at", _STR), ("finished_at", _STR), ("config_json", _STR), ("written_at", _FLOAT),
        # data reuse (brainray.schedule): what a row added to the bill, and where it forked off
        ("data_schedule", _STR), ("lr_schedule", _STR), ("parent_trial", _STR), ("branch_step", _INT),
        ("incurred_flops", _FLOAT), ("incurred_gpu_hours", _FLOAT),
        # "untrained": a control (the reference model scored with its initial weights); empty: trained
        ("control", _STR),
        # "extrapolation": a predict-then-verify trial (brainray.extrapolate), with what was predicted for it
        ("role", _STR), ("extrapolate_k", _FLOAT), ("extrapolate_budget", _FLOAT), ("extrapolate_pick", _STR),
        ("predicted_val_loss", _FLOAT), ("predicted_val_loss_lo", _FLOAT), ("predicted_val_loss_hi", _FLOAT),
        ("predicted_brain_r_mean", _FLOAT), ("predicted_brain_r_mean_lo", _FLOAT),
        ("predicted_brain_r_mean_hi", _FLOAT), ("prediction_note", _STR),
    ]
)
# Per-subject columns (r_mean_<subject>, r_max_<subject>) and per parcel family columns
# (brain_r_<family>, ceiling_frac_<family>) are added as float64 at write time.
_SUBJECT_PREFIXES = ("r_mean_", "r_max_", "brain_r_", "ceiling_frac_")

CURVE_SCHEMA = pa.schema(
    [
        ("sweep", _STR), ("trial_id", _STR), ("step", _INT), ("epoch", _INT), ("tokens", _INT),
        ("train_flops", _FLOAT), ("train_loss", _FLOAT), ("val_loss", _FLOAT), ("lr", _FLOAT),
        ("train_s", _FLOAT), ("written_at", _FLOAT),
    ]
)


def is_uri(root: str) -> bool:
    """True for ``s3://``, ``gs://``, ``file://`` ... roots; False for plain paths."""
    return "://" in str(root)


def filesystem(root: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem of ``root`` (a local path or a URI) and the path inside it."""
    root = str(root)
    if is_uri(root):
        return pafs.FileSystem.from_uri(root)
    return pafs.LocalFileSystem(), root


_fs = filesystem

# The sweep folder: what brainray writes under <storage>/<sweep> besides the prepared dataset (data/).
EXPERIMENT = "tune"  # Ray Tune's state and checkpoints; tune-optuna/ and tune-extrapolate/ beside it
PARCELS = "parcels"  # per-parcel r, one table per scored trial (brainray.parcels)
#: What ``remove_results`` (``--fresh``) deletes under a sweep folder: what brainray writes there, nothing else.
RESULT_ENTRIES = (EXPERIMENT, f"{EXPERIMENT}-optuna", f"{EXPERIMENT}-extrapolate", "trials", "curves", PARCELS,
                  "tensorboard", "frontier", "spec.json")


def remove_results(root: str) -> None:
    """Delete ``RESULT_ENTRIES`` under the sweep folder ``root`` (a path or a URI): ``--fresh``. The prepared
    dataset and anything else stay."""
    fs, base = filesystem(root)
    for name in RESULT_ENTRIES:
        info = fs.get_file_info(f"{base}/{name}")
        if info.type == pafs.FileType.Directory:
            fs.delete_dir(info.path)
        elif info.type == pafs.FileType.File:
            fs.delete_file(info.path)


class Staged:
    """``<root>/<sub>`` as a local folder, for writers of local files only (tensorboardX, matplotlib).

    For a local root, ``path`` is that folder itself and :meth:`publish` has nothing to do; for
    a URI, ``path`` is a temporary folder whose files :meth:`publish` copies up through the
    root's pyarrow filesystem. Callers write to ``path`` and publish, whatever the root.
    """

    def __init__(self, root: str, sub: str):
        self.dest = f"{str(root).rstrip('/')}/{sub}"
        self.path = tempfile.mkdtemp(prefix=f"brainray-{sub}-") if is_uri(root) else self.dest

    def publish(self) -> None:
        """Copy the staged files to ``dest``, replacing files of the same name."""
        if self.path == self.dest or not os.path.isdir(self.path):
            return
        fs, base = filesystem(self.dest)
        fs.create_dir(base, recursive=True)
        pafs.copy_files(self.path, base, destination_filesystem=fs)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        """Publish (after an error too, as a local root keeps what was written), then remove a temporary folder."""
        self.publish()
        if self.path != self.dest:
            shutil.rmtree(self.path, ignore_errors=True)


def _table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    extra = sorted({k for r in rows for k in r if k.startswith(_SUBJECT_PREFIXES)} - set(schema.names))
    schema = pa.schema(list(schema) + [(k, _FLOAT) for k in extra])
    cols = {}
    for f in schema:
        values = [r.get(f.name) for r in rows]
        if pa.types.is_floating(f.type):
            values = [None if v is None else float(v) for v in values]
        elif pa.types.is_integer(f.type):
            values = [None if v is None or v != v else int(v) for v in values]
        else:
            values = [None if v is None else str(v) for v in values]
        cols[f.name] = pa.array(values, type=f.type)
    return pa.table(cols, schema=schema)


def _write(root: str, sub: str, name: str, table: pa.Table) -> str:
    fs, base = _fs(root)
    folder = f"{base.rstrip('/')}/{sub}"
    fs.create_dir(folder, recursive=True)
    final = f"{folder}/{name}.parquet"
    tmp = f"{folder}/.{name}.{uuid.uuid4().hex}.tmp"
    pq.write_table(table, tmp, filesystem=fs)
    fs.move(tmp, final)  # atomic rename on POSIX and NFS; object stores PUT whole objects
    return final


def branch_id(trial_id: str, data_frames: int) -> str:
    """The trial-log id of one data size of a reused data axis (its Tune trial is ``trial_id``)."""
    return f"{trial_id}-d{int(data_frames)}"


def row_id(trial_id: str, result: dict[str, Any]) -> str:
    """The trial-log id of a result: the trial's id, or ``<id>-d<frames>`` for a reuse branch's row."""
    return branch_id(trial_id, result["data_frames"]) if result.get("branch_done") else trial_id


SUPERSEDED = "_superseded"  # under trials/: parts replaced by a later row of the same trial


def write_trial(root: str, row: dict[str, Any]) -> str:
    """Write one trial's row as its own part file, superseding its earlier parts; returns the path.

    The new part is in place before the old ones move aside, so a crash in between leaves
    two parts, of which readers take the newer.
    """
    row = {**row, "written_at": time.time()}
    name = f"trial-{row['trial_id']}-{int(row['written_at'] * 1e3)}"
    path = _write(root, "trials", name, _table([row], TRIAL_SCHEMA))
    fs, base = _fs(root)
    folder = f"{base.rstrip('/')}/trials"
    old = [f for f in _parts(fs, folder) if _part_trial_id(f.base_name) == row["trial_id"] and f.path != path]
    if old:
        fs.create_dir(f"{folder}/{SUPERSEDED}", recursive=True)
        for f in old:
            fs.move(f.path, f"{folder}/{SUPERSEDED}/{f.base_name}")
    return path


def _part_trial_id(file_name: str) -> str:
    """``trial-<trial_id>-<ms>.parquet`` -> ``<trial_id>`` (ids contain ``-`` for reuse branches)."""
    return file_name.removeprefix("trial-").removesuffix(".parquet").rsplit("-", 1)[0]


def _parts(fs: pafs.FileSystem, folder: str) -> list[pafs.FileInfo]:
    """The current part files of a log folder (not temp files, not ``_superseded/``)."""
    if fs.get_file_info(folder).type == pafs.FileType.NotFound:
        return []
    return [
        f for f in fs.get_file_info(pafs.FileSelector(folder))
        if f.type == pafs.FileType.File and f.base_name.endswith(".parquet") and not f.base_name.startswith((".", "_"))
    ]


def write_curves(root: str, trial_id: str, rows: Iterable[dict[str, Any]]) -> str | None:
    """Write a batch of curve points (one trial) as one part file."""
    rows = [{**r, "trial_id": trial_id, "written_at": time.time()} for r in rows]
    if not rows:
        return None
    name = f"curve-{trial_id}-{uuid.uuid4().hex[:8]}"
    return _write(root, "curves", name, _table(rows, CURVE_SCHEMA))


class CorruptLogError(ValueError):
    """A trial-log part file that cannot be read (truncated, or not Parquet).

    Raised rather than skipped: a dropped part would silently drop a trial from the record.
    """


def _unreadable(fs: pafs.FileSystem, files: list[str]) -> list[str]:
    """``"path: why"`` for each part that does not read whole (its footer may, its data not)."""
    bad = []
    for f in files:
        try:
            pq.read_table(f, filesystem=fs)
        except (pa.ArrowException, OSError) as err:
            bad.append(f"{f}: {err}")
    return bad


def _read(root: str, sub: str) -> pd.DataFrame:
    fs, base = _fs(root)
    folder = f"{base.rstrip('/')}/{sub}"
    info = fs.get_file_info(folder)
    if info.type == pafs.FileType.NotFound:
        return pd.DataFrame()
    files = [
        f.path for f in fs.get_file_info(pafs.FileSelector(folder))
        if f.path.endswith(".parquet") and not f.base_name.startswith(".")
    ]
    if not files:
        return pd.DataFrame()
    schemas, bad = [], []
    for f in files:  # a truncated part (e.g. a partial copy) has no footer: found here, cheaply
        try:
            schemas.append(pq.read_schema(f, filesystem=fs))
        except (pa.ArrowException, OSError) as err:
            bad.append(f"{f}: {err}")
    if not bad:
        # Part files may differ in their per-subject columns: unify by name.
        schema = pa.unify_schemas(schemas)
        try:
            return pads.dataset(files, schema=schema, filesystem=fs, format="parquet").to_table().to_pandas()
        except (pa.ArrowException, OSError):
            bad = _unreadable(fs, files)
            if not bad:
                raise
    raise CorruptLogError(
        f"{len(bad)} trial-log part file(s) in {folder} cannot be read (truncated or not Parquet):\n  "
        + "\n  ".join(bad)
        + "\nMove each aside (e.g. rename it to end in .parquet.corrupt, which readers skip) and read "
        "again; the row or curve it held is then missing from the log, so re-run that trial if you need it."
    )


def read_trials(root: str) -> pd.DataFrame:
    """One row per trial_id (the newest written), sorted by trial_id.

    root: the sweep folder (``results/<sweep>``) or a URI. Empty frame if nothing is logged.
    """
    df = _read(root, "trials")
    if df.empty:
        return df
    df = df.sort_values("written_at").drop_duplicates("trial_id", keep="last")
    return df.sort_values("trial_id").reset_index(drop=True)


def read_curves(root: str) -> pd.DataFrame:
    """Curve points, one per (trial_id, step), newest kept (steps repeat after a restore)."""
    df = _read(root, "curves")
    if df.empty:
        return df
    df = df.sort_values("written_at").drop_duplicates(["trial_id", "step"], keep="last")
    return df.sort_values(["trial_id", "step"]).reset_index(drop=True)


def logged_trial_ids(root: str) -> set[str]:
    """Trial ids that have a row, of any status."""
    df = read_trials(root)
    return set() if df.empty else set(df["trial_id"])


def final_trial_ids(root: str) -> set[str]:
    """Trial ids whose row is final (``TERMINATED``): a resume never writes them again.

    An ``ERROR`` row is not final: a rerun that finishes the trial supersedes it.
    """
    df = read_trials(root)
    return set() if df.empty else set(df.loc[df["status"] == "TERMINATED", "trial_id"])


# -- rows: what each finished or failed trial writes --------------------------------------------
_CURVE_KEYS = ("step", "epoch", "tokens", "train_flops", "train_loss", "val_loss", "lr", "train_s")
_NOT_SCORED = "the reuse run ended before this data size's branch was scored"


def is_final(result: dict[str, Any] | None) -> bool:
    """The trial's function returned: its last result is final (``done``). Not Tune's status: Tune
    marks a trial it stopped on the way ``TERMINATED`` too, and sets the status after the callbacks."""
    return bool((result or {}).get("done"))


def outcome(result: dict[str, Any] | None) -> tuple[str, str | None]:
    """Status and error of a trial whose function returned: a diverged trial returns with an error."""
    error = (result or {}).get("error")
    return ("ERROR" if error else "TERMINATED"), error


def error_text(error_file: str | None, message: str | None) -> str:
    """The end of a failed trial's error file (its traceback), else its error message."""
    try:
        if error_file and os.path.exists(error_file):
            return Path(error_file).read_text()[-4000:]
    except OSError:
        pass
    return str(message or "trial raised an error (see the Tune trial folder)")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@functools.cache  # once per process: every row of a driver has the same checkout
def _git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], check=False, capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


class TrialRecorder:
    """Writes one trial-log row per finished or failed trial id, and its curve points.

    The log is the truth about what ran. A row is written when a trial's function returns
    (:meth:`close` with :func:`outcome`: ``TERMINATED``, or ``ERROR`` if it diverged), when it
    fails (``ERROR``), or when one data size of a reuse run reports ``branch_done``. A trial
    stopped on the way or never started gets no row, so running the sweep again resumes it. A
    ``TERMINATED`` row is final and never written again; an ``ERROR`` row is superseded when a
    rerun finishes the trial. Curves are flushed every ``flush_s`` seconds, so a killed driver
    loses at most that much. ``on_row`` is called after each row (the live report).

    ``config`` is a trial's whole config: ``trial`` (its axes) and ``train`` (the settings).
    """

    def __init__(self, root: str, sweep: str, flush_s: float = 30.0, on_row: Callable[[], None] | None = None):
        self.root, self.sweep, self.flush_s, self.on_row = root, sweep, flush_s, on_row
        self.started: dict[str, str] = {}  # trial id -> when this driver started it
        self._curves: dict[str, list[dict[str, Any]]] = {}
        self._last_flush = time.time()
        self._final_ids: set[str] | None = None  # read from the log at the first row
        self._written: set[str] = set()

    def start(self, trial_id: str) -> None:
        self.started.setdefault(trial_id, _now())

    def result(self, trial_id: str, config: dict[str, Any], result: dict[str, Any], num_failures: int) -> None:
        """A reported result: a curve point (a reuse branch's under its own row id), and the row of a
        finished branch."""
        branch = result.get("branch")
        curve_id = branch_id(trial_id, branch) if branch else trial_id
        self._curves.setdefault(curve_id, []).append({"sweep": self.sweep, **{k: result.get(k) for k in _CURVE_KEYS}})
        if result.get("branch_done"):
            self._row(trial_id, row_id(trial_id, result), config, result, *outcome(result), num_failures)
        elif time.time() - self._last_flush > self.flush_s:
            self.flush()

    def close(self, trial_id: str, config: dict[str, Any], result: dict[str, Any], status: str, error: str | None,
              num_failures: int) -> None:
        """Write the rows a trial still owes: its own, or each data size of a reuse run not yet logged.

        A reuse branch has its row from the moment it reports ``branch_done``; sizes left when
        the run ends (its trunk diverged or raised) are logged as errors, without metrics.
        """
        branches = config["trial"].get("branches")
        if not branches:
            self._row(trial_id, trial_id, config, result, status, error, num_failures)
            return
        for d in branches:
            self._row(trial_id, branch_id(trial_id, d), config, {"data_frames": d}, "ERROR", error or _NOT_SCORED,
                      num_failures)

    def flush(self) -> None:
        """Write the curve points gathered since the last flush."""
        for trial_id, rows in self._curves.items():
            write_curves(self.root, trial_id, rows)
        self._curves = {}
        self._last_flush = time.time()

    def _row(self, trial_id: str, row: str, config: dict[str, Any], result: dict[str, Any], status: str,
             error: str | None, num_failures: int) -> None:
        if self._final_ids is None:
            self._final_ids = final_trial_ids(self.root)
        if row in self._final_ids or row in self._written:
            return
        self.flush()
        axes = config["trial"]
        values = {
            **{k: v for k, v in result.items() if not isinstance(v, (dict, list))},
            **axes,
            "sweep": self.sweep, "trial_id": row, "status": status, "error": error,
            "num_failures": num_failures, "brainray_version": brainray.__version__, "git_sha": _git_sha(),
            "started_at": self.started.get(trial_id), "finished_at": _now(),
            "config_json": json.dumps({"trial": axes, "train": config["train"]}, default=str),
            "control": axes.get("control", ""),  # empty: a trained trial
            "role": axes.get("role", ""),  # "extrapolation": a predict-then-verify trial
        }
        if axes.get("branches"):
            values.update(data_frames=result["data_frames"], parent_trial=trial_id, data_schedule="reuse")
        write_trial(self.root, values)  # supersedes an ERROR row of this trial from an earlier run
        self._written.add(row)
        if status == "TERMINATED":
            self._final_ids.add(row)
        if self.on_row:
            self.on_row()
