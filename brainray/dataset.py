"""The reader of a prepared dataset: its manifest, its tokens, its brain, checked when opened.

A prepared dataset (built by ``brainray.prepare``) is a folder with a ``dataset.json``
manifest, written last. Trials only read it, through this module, so a trial worker never
imports the emulator or the fMRI stack. Opening a dataset checks that the manifest reads and
that every file it promises exists (cheap: existence only); a file that exists but cannot be
read is named when it is read.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from brainray import simbrain, video

__all__ = [
    "DAMAGED", "Dataset", "FPS", "MANIFEST", "SubjectBold", "describe_incomplete", "load_dataset", "missing_files",
    "read_manifest", "reading", "why_unreadable",
]

MANIFEST = "dataset.json"
FPS = 60.0  # Hz of the recorded gameplay

# What reading a damaged (corrupt, truncated) file raises: numpy, zipfile (npz) and json
DAMAGED = (OSError, ValueError, EOFError, zipfile.BadZipFile)


def why_unreadable(err: BaseException) -> str:
    """Type and first sentence of a read error (numpy's second one advises unpickling the file)."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text.split('. ')[0]}" if text else type(err).__name__


@contextmanager
def reading(path: Path) -> Iterator[None]:
    """Name ``path`` in the error of a damaged file of a prepared dataset, and say what to do."""
    try:
        yield
    except FileNotFoundError:
        raise  # names the file already
    except DAMAGED as err:
        raise ValueError(
            f"{path} cannot be read ({why_unreadable(err)}): it is corrupt or truncated. Delete it and rerun "
            "prepare, which rebuilds what is missing (or delete the dataset folder)."
        ) from err


@dataclass
class SubjectBold:
    """Measured BOLD of one subject (real data): no ground truth, no known noise ceiling.

    Attributes
    ----------
    subject : str
        Subject name, e.g. ``"sub-01"``.
    bold : list of array of shape (n_vols_run, n_parcels), float32
        Parcel time series per run, in the order of the subject's runs in the manifest.
    runs : list of str
        Run id of each entry of ``bold`` (``"sub-01_ses-001_run-01"``).
    ceiling : None
        The noise ceiling is unknown for measured data (``simbrain.SubjectData.ceiling``
        is its simulated counterpart).
    """

    subject: str
    bold: list[np.ndarray]
    runs: list[str] = field(default_factory=list)
    ceiling: None = None

    def save(self, directory: str | Path) -> Path:
        """Write ``bold.npz`` (one array per run, keyed by run id) into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.savez(directory / "bold.npz", **dict(zip(self.runs, self.bold, strict=True)))
        return directory

    @classmethod
    def load(cls, directory: str | Path, subject: str, runs: list[str]) -> SubjectBold:
        """Read the runs ``runs`` of ``subject`` from what :meth:`save` wrote."""
        path = Path(directory) / "bold.npz"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found; prepare the dataset again.")
        with reading(path), np.load(path) as npz:
            absent = [r for r in runs if r not in npz.files]
            if absent:
                raise KeyError(f"{path} lacks runs {absent}; prepare the dataset again.")
            return cls(subject, [npz[r] for r in runs], list(runs))


@dataclass
class Dataset:
    """A prepared dataset on storage: manifest plus lazy access to its arrays."""

    root: Path
    manifest: dict[str, Any]

    def replays(self, split: str) -> list[dict[str, Any]]:
        return [r for r in self.manifest["replays"] if r["split"] == split]

    @property
    def train_frames(self) -> int:
        return sum(r["n_frames"] for r in self.replays("train"))

    def tokens(self, name: str) -> np.ndarray:
        """Codes of the clips of one replay: (n_clips, T', H', W') int16."""
        path = self.root / "tokens" / f"{name}.npy"
        with reading(path):
            return np.load(path, mmap_mode="r")

    @property
    def subjects(self) -> list[str]:
        return list(self.manifest["subjects"])

    def run_indices(self, subject: str) -> list[int]:
        """Indices into ``manifest["runs"]`` of the runs of ``subject``: its own and the shared ones."""
        return [k for k, r in enumerate(self.manifest["runs"]) if r.get("subject", subject) == subject]

    def subject(self, subject: str) -> simbrain.SubjectData | SubjectBold:
        """BOLD of one subject: ``.bold`` (one array per run of :meth:`run_indices`) and
        ``.ceiling`` (array of shape (n_parcels,), or None when unknown)."""
        if subject not in self.manifest["subjects"]:
            raise KeyError(f"Unknown subject {subject!r}; this dataset has {self.manifest['subjects']}.")
        if self.manifest.get("source", "simulated") == "simulated":
            with reading(self.root / "brain" / subject):
                return simbrain.SubjectData.load(self.root / "brain" / subject)
        runs = [self.manifest["runs"][k]["run"] for k in self.run_indices(subject)]
        return SubjectBold.load(self.root / "brain" / subject, subject, runs)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return tuple(self.manifest["tokenizer"]["latent_shape"])

    @property
    def clip_span(self) -> int:
        """Raw 60 Hz frames spanned by one clip."""
        tk = self.manifest["tokenizer"]
        return tk["clip_frames"] * tk["time_downsample"]


def load_dataset(root: str | Path) -> Dataset:
    """Open the prepared dataset at ``root``, once its manifest reads and its files all exist.

    Only existence is checked (cheap, and a trial is not failed by a damaged file it never
    reads); a file that exists but cannot be read is named when it is read.

    Raises
    ------
    FileNotFoundError
        If the manifest does not exist (prepare has not finished), or files it promises do
        not (the message names them).
    ValueError
        If the manifest is corrupt or truncated (the message names it).
    """
    root = Path(root)
    path = root / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: the prepare stage has not finished for {root}.")
    try:
        manifest = read_manifest(path)
    except (*DAMAGED, LookupError, TypeError) as err:
        raise ValueError(
            f"{path} cannot be read ({why_unreadable(err)}): the cached dataset {root} is damaged. Rerun prepare, "
            "which rebuilds it, or delete the folder."
        ) from err
    missing = missing_files(root, manifest)
    if missing:
        raise FileNotFoundError(
            describe_incomplete(root, missing) + "\nRerun prepare on it, which rebuilds what is missing, or delete the folder."
        )
    return Dataset(root, manifest)


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest at ``path``; raises (json, OS or lookup errors) if it is damaged."""
    manifest = json.loads(path.read_text())
    _promised(manifest)  # the keys that completeness needs are there
    return manifest


def _promised(manifest: dict[str, Any]) -> list[str]:
    """Files (relative to the dataset folder) that a complete dataset has: what trials read,
    and what prepare needs to repair tokens."""
    plays = [r["name"] for r in manifest["replays"]]
    stimuli = dict.fromkeys(seg["replay"] for run in manifest["runs"] for seg in run["segments"])
    simulated = manifest.get("source", "simulated") == "simulated"
    brain = ("simbrain.json", "simbrain.npz") if simulated else ("bold.npz",)
    # frames are kept only where the simulated brain is made from them; others come from their bk2
    frames = [f"frames/{video.FrameStore.MANIFEST}", *(f"frames/{name}.u8" for name in stimuli)] if simulated else []
    return [
        "vqvae.pt", *(f"tokens/{name}.npy" for name in plays), *frames,
        *(f"brain/{subject}/{f}" for subject in manifest["subjects"] for f in brain),
    ]


def missing_files(root: Path, manifest: dict[str, Any]) -> list[str]:
    """The files the manifest promises that are not there (paths relative to ``root``)."""
    return [p for p in _promised(manifest) if not (root / p).is_file()]


def describe_incomplete(root: Path, missing: list[str]) -> str:
    """One message naming the dataset and (up to 10 of) its missing files."""
    more = f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
    return (
        f"The cached dataset {root} is incomplete: {len(missing)} file(s) that its {MANIFEST} lists "
        "do not exist:\n  " + "\n  ".join(missing[:10]) + more
    )
