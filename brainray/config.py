"""Sweep specs: one dataclass per concern, YAML overrides, validation before anything runs.

A preset is a YAML file of overrides on these defaults (``sweeps/presets/*.yaml``). Every
problem in a spec is collected and reported at once, naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "DataSpec",
    "TokenizerSpec",
    "TrainSpec",
    "AxesSpec",
    "ResourcesSpec",
    "SweepSpec",
    "SpecError",
    "load_spec",
    "preset_path",
    "PRESETS_DIR",
    "AXES",
    "stable_hash",
    "check_storage",
    "DATA_SOURCES",
]

PRESETS_DIR = Path(__file__).resolve().parent.parent / "sweeps" / "presets"
AXES = ("data_frames", "n_embd", "n_layer", "n_head", "dtype", "seed")
DTYPES = ("fp32", "fp16", "bf16")
DATA_SOURCES = ("simulated", "cneuromod")
DATA_SCHEDULES = ("scratch", "reuse")


class SpecError(ValueError):
    """A sweep spec is invalid; the message lists every problem found."""


@dataclass
class DataSpec:
    """Where the frames and the brain come from: ``source`` picks one of two datasets.

    ``"simulated"`` (the embedded default): plays of ``game`` recorded by a ``policy``, and a
    simulated brain with a known noise ceiling (``brainray.simbrain``); the fields from
    ``train_replays`` to ``tr`` size it. ``"cneuromod"``: the CNeuroMod shinobi BIDS dataset
    at ``bids_root`` with its fMRIPrep derivatives, parcellated with the labels atlas
    ``atlas`` (``brainray.fmri``); every replay of the runs is replayed in ``game`` (the
    paper's ``ShinobiIIIReturnOfTheNinjaMaster-Genesis``, whose ROM the user imports), and
    ``val_fraction`` of them validate the GPT instead of training it.
    """

    source: str = "simulated"  # "simulated" | "cneuromod"
    game: str = "Airstriker-Genesis-v0"
    policy: str = "scripted"
    frame_size: int = 32  # the paper resizes to 128; 32 keeps the CPU demo fast
    seed: int = 0
    # -- source: simulated
    train_replays: int = 6
    replay_frames: int = 9000  # 150 s of 60 Hz gameplay per training play
    val_replays: int = 1
    n_subjects: int = 2
    n_runs: int = 4  # stimulus runs shared by the simulated subjects
    run_vols: int = 100  # volumes per run at TR 1.49 s (the paper's runs have ~425)
    n_parcels: int = 64
    tr: float = 1.49
    # -- source: cneuromod (paths absolute; TR and run lengths come from the files)
    bids_root: str = ""
    derivatives_root: str = ""  # "": <bids_root>/derivatives/fmriprep
    atlas: str = ""  # labels NIfTI, e.g. MIST_1095 (the paper's MIST ATOM)
    subjects: list[str] = field(default_factory=list)  # [] = every subject; "01" or "sub-01"
    task: str = "shinobi"
    # Replays whose name hashes below this fraction validate the GPT (at least one does);
    # the paper held out 21 of 661 repetitions (~3%).
    val_fraction: float = 0.05

    def problems(self) -> list[str]:
        """Every problem of these settings, as messages naming the field and value."""
        p: list[str] = []
        if self.source not in DATA_SOURCES:
            allowed = "{" + ", ".join(map(repr, DATA_SOURCES)) + "}"
            return [f"'data.source' must be one of {allowed}; got {self.source!r}"]
        if self.frame_size < 1:
            p.append(f"'data.frame_size' must be >= 1; got {self.frame_size}")
        if self.source == "simulated":
            if self.n_runs < 3:
                p.append(f"'data.n_runs'={self.n_runs}: run-wise scoring needs at least 3 runs per subject")
            if self.n_subjects < 1:
                p.append(f"'data.n_subjects' must be >= 1; got {self.n_subjects}")
            return p
        for name, required, kind, what in (
            ("bids_root", True, "folder", "your CNeuroMod shinobi BIDS dataset"),
            ("derivatives_root", False, "folder", "its fMRIPrep derivatives (empty: <bids_root>/derivatives/fmriprep)"),
            ("atlas", True, "file", "a labels atlas NIfTI (e.g. MIST_1095.nii.gz)"),
        ):
            value = getattr(self, name)
            fix = f"set it to the absolute path of {what}"
            if not value:
                if required:
                    p.append(f"'data.{name}' is required with data.source 'cneuromod'; {fix}")
            elif not os.path.isabs(value):
                p.append(f"'data.{name}' must be an absolute path; got {value!r}. {fix[0].upper()}{fix[1:]}")
            elif not (os.path.isdir(value) if kind == "folder" else os.path.isfile(value)):
                p.append(f"'data.{name}' {value!r} is not an existing {kind}; {fix}")
        if any(not isinstance(s, str) or not s for s in self.subjects):
            p.append(
                f"'data.subjects' must be a list of names such as 'sub-01' or '01' (quote them in YAML); "
                f"got {self.subjects!r}"
            )
        if not 0 < self.val_fraction < 1:
            p.append(f"'data.val_fraction' must be in (0, 1); got {self.val_fraction!r}")
        return p


@dataclass
class TokenizerSpec:
    """VQ-VAE settings (VideoGPT). The paper: 16x128x128 clips -> 4x8x8 codes, 1024 codes."""

    clip_frames: int = 8
    time_downsample: int = 4  # 60 Hz -> 15 fps, as the paper
    downsample: tuple[int, int, int] = (4, 8, 8)
    n_hiddens: int = 32
    n_res_layers: int = 1
    n_codes: int = 128
    embedding_dim: int = 32
    steps: int = 300
    batch_size: int = 16


@dataclass
class TrainSpec:
    """Per-trial training and scoring settings shared by every trial of a sweep."""

    epochs: int = 2
    batch_size: int = 32
    lr: float = 3e-4
    min_lr_frac: float = 0.1
    warmup_frac: float = 0.05
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    dropout: float = 0.1
    val_batches: int = 8
    log_every: int = 10  # steps between progress reports
    feature_depth: float = 0.625  # block nearest 5/8 of depth, as the paper probes 5 of 8
    alphas: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5)
    delays: tuple[int, ...] = (1, 2, 3, 4)
    device: str = "auto"
    threads: int = 1  # torch CPU threads per trial; match resources.cpus_per_trial
    # "scratch": every data size trained from scratch (the paper). "reuse": one run per model
    # config over the largest size, each smaller size a cooldown branch off it (brainray.schedule).
    data_schedule: str = "scratch"
    lr_schedule: str = "auto"  # auto: cosine for scratch, wsd (warmup-stable-decay) for reuse
    cooldown_frac: float = 0.2  # wsd: share of each run's steps spent decaying the LR

    def __post_init__(self):
        if self.lr_schedule == "auto":
            self.lr_schedule = "wsd" if self.data_schedule == "reuse" else "cosine"

    def problems(self) -> list[str]:
        p = []
        if self.data_schedule not in DATA_SCHEDULES:
            p.append(f"'train.data_schedule' must be one of {list(DATA_SCHEDULES)}; got {self.data_schedule!r}")
        if self.lr_schedule not in ("cosine", "wsd"):
            p.append(f"'train.lr_schedule' must be one of ['auto', 'cosine', 'wsd']; got {self.lr_schedule!r}")
        elif self.data_schedule == "reuse" and self.lr_schedule != "wsd":
            p.append(
                "'train.data_schedule' reuse needs 'train.lr_schedule' wsd (branches fork off a constant-LR "
                f"phase); got {self.lr_schedule!r}"
            )
        if not 0 < self.cooldown_frac < 1:
            p.append(f"'train.cooldown_frac' must be in (0, 1); got {self.cooldown_frac}")
        return p


@dataclass
class AxesSpec:
    """The five sweep axes (plus seed).

    ``design: grid`` is the full product. ``design: lines`` varies one axis at a time
    around ``reference`` (the paper's design), plus the full ``data_frames x n_embd``
    grid when ``cross: true`` so that the joint law L(N, D) can be fitted.
    """

    design: str = "lines"
    cross: bool = True
    reference: dict[str, Any] = field(
        default_factory=lambda: {
            "data_frames": 24000, "n_embd": 48, "n_layer": 2, "n_head": 2, "dtype": "fp32", "seed": 0,
        }
    )
    data_frames: list[int] = field(default_factory=lambda: [3000, 8000, 24000, 54000])
    n_embd: list[int] = field(default_factory=lambda: [16, 48, 96])
    n_layer: list[int] = field(default_factory=lambda: [1, 2, 4])
    n_head: list[int] = field(default_factory=lambda: [1, 2, 4])
    dtype: list[str] = field(default_factory=lambda: ["fp32", "bf16"])
    seed: list[int] = field(default_factory=lambda: [0])

    def trials(self) -> list[dict[str, Any]]:
        """The trial configs (axis values only), in a stable order, without repeats."""
        if self.design == "grid":
            combos = itertools.product(*(getattr(self, a) for a in AXES))
            rows = [dict(zip(AXES, c)) for c in combos]
        else:
            rows = []
            if self.cross:
                for df, w in itertools.product(self.data_frames, self.n_embd):
                    rows.append({**self.reference, "data_frames": df, "n_embd": w})
            for axis in AXES:
                for v in getattr(self, axis):
                    rows.append({**self.reference, axis: v})
        seen, out = set(), []
        for r in rows:
            key = tuple(r[a] for a in AXES)
            if key not in seen:
                seen.add(key)
                out.append(r)
        return out


@dataclass
class ResourcesSpec:
    """What each trial asks of the cluster."""

    cpus_per_trial: float = 1
    gpus_per_trial: float | str = "auto"  # auto: a fraction of a GPU sized by the model
    max_concurrent_trials: int = 0  # 0: as many as fit
    max_failures: int = 2
    # true: the cluster has an autoscaler, so a request that no node can meet *now* (e.g. GPUs on a
    # cluster scaled to zero) waits for a new node instead of being refused before the sweep starts.
    autoscale: bool = False


@dataclass
class SweepSpec:
    name: str = "demo"
    data: DataSpec = field(default_factory=DataSpec)
    tokenizer: TokenizerSpec = field(default_factory=TokenizerSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    axes: AxesSpec = field(default_factory=AxesSpec)
    resources: ResourcesSpec = field(default_factory=ResourcesSpec)
    source: str = "<defaults>"  # file the spec came from, for error messages

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("source")
        return d

    def runs(self) -> list[dict[str, Any]]:
        """What Tune runs: one config per trial; with ``train.data_schedule: reuse`` one per model
        config, with its data sizes in ``branches`` (``data_frames`` is the largest)."""
        trials = self.axes.trials()
        if self.train.data_schedule != "reuse":
            return trials
        groups: dict[tuple, dict[str, Any]] = {}
        for t in trials:
            group = groups.setdefault(tuple(t[a] for a in AXES if a != "data_frames"), {**t, "branches": []})
            group["branches"] = sorted({*group["branches"], t["data_frames"]})
            group["data_frames"] = group["branches"][-1]
        return list(groups.values())

    def data_key(self) -> str:
        """Hash of everything the prepared dataset and tokens depend on."""
        return stable_hash({"data": dataclasses.asdict(self.data), "tokenizer": dataclasses.asdict(self.tokenizer)})

    def validate(self, max_data_frames: int | None = None) -> None:
        """Raise SpecError listing every problem, or return None."""
        problems = _validate(self, max_data_frames)
        if problems:
            raise SpecError(f"{self.source}: invalid sweep spec:\n  - " + "\n  - ".join(problems))


def stable_hash(obj: Any, n: int = 12) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def preset_path(name_or_file: str) -> Path:
    """A preset name (demo, smoke, paper) or a YAML file path."""
    p = Path(name_or_file)
    if p.suffix in (".yaml", ".yml"):
        if not p.exists():
            raise FileNotFoundError(f"Sweep spec {p} does not exist.")
        return p
    p = PRESETS_DIR / f"{name_or_file}.yaml"
    if not p.exists():
        known = sorted(q.stem for q in PRESETS_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"Unknown preset {name_or_file!r}; known presets: {known}, or pass a .yaml file.")
    return p


def load_spec(name_or_file: str = "demo", overrides: dict[str, Any] | None = None) -> SweepSpec:
    """Load a preset or YAML file onto the defaults, then validate it."""
    path = preset_path(name_or_file)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: a sweep spec must be a mapping of sections; got {type(raw).__name__}.")
    for key, value in (overrides or {}).items():
        section, _, leaf = key.partition(".")
        raw.setdefault(section, {})[leaf] = value
    spec, problems = _from_dict(raw, str(path))
    if problems:
        raise SpecError(f"{path}: invalid sweep spec:\n  - " + "\n  - ".join(problems))
    spec.validate()
    return spec


_SECTIONS = {
    "data": DataSpec,
    "tokenizer": TokenizerSpec,
    "train": TrainSpec,
    "axes": AxesSpec,
    "resources": ResourcesSpec,
}


def _from_dict(raw: dict[str, Any], source: str) -> tuple[SweepSpec, list[str]]:
    problems: list[str] = []
    kwargs: dict[str, Any] = {"source": source}
    for key, value in raw.items():
        if key == "name":
            kwargs["name"] = str(value)
            continue
        if key not in _SECTIONS:
            problems.append(f"unknown section {key!r}; known: {['name', *_SECTIONS]}")
            continue
        cls = _SECTIONS[key]
        if not isinstance(value, dict):
            problems.append(f"section {key!r} must be a mapping; got {value!r}")
            continue
        fields = {f.name: f for f in dataclasses.fields(cls)}
        defaults = cls()
        section = {}
        for k, v in value.items():
            if k not in fields:
                problems.append(f"unknown key '{key}.{k}'; known: {sorted(fields)}")
                continue
            default = getattr(defaults, k)
            coerced, err = _coerce(v, default)
            if err:
                problems.append(f"'{key}.{k}' {err}; got {v!r}")
            else:
                section[k] = coerced
        kwargs[key] = cls(**section)
    return SweepSpec(**kwargs), problems


def _coerce(value: Any, default: Any) -> tuple[Any, str | None]:
    """Coerce a YAML value to the type of the field's default (nanoGPT's configurator rule)."""
    if isinstance(default, bool):
        return (value, None) if isinstance(value, bool) else (None, "must be true or false")
    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)):
            return None, "must be a list"
        return tuple(value), None
    if isinstance(default, list) or isinstance(default, dict):
        ok = isinstance(value, type(default))
        return (value, None) if ok else (None, f"must be a {type(default).__name__}")
    if isinstance(default, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value), None
    if isinstance(default, int) and isinstance(value, int) and not isinstance(value, bool):
        return value, None
    if isinstance(default, str) and isinstance(value, str):
        return value, None
    if isinstance(default, (float, str)) and isinstance(value, (int, float, str)):  # e.g. gpus "auto" | 0.5
        return value, None
    return None, f"must be of type {type(default).__name__}"


def _validate(spec: SweepSpec, max_data_frames: int | None) -> list[str]:
    p: list[str] = []
    ax = spec.axes
    if ax.design not in ("grid", "lines"):
        p.append(f"'axes.design' must be one of {{'grid', 'lines'}}; got {ax.design!r}")
    for axis in AXES:
        values = getattr(ax, axis)
        if not values:
            p.append(f"'axes.{axis}' is empty; give at least one value")
        if axis not in ax.reference:
            p.append(f"'axes.reference' lacks {axis!r}")
    unknown_ref = set(ax.reference) - set(AXES)
    if unknown_ref:
        p.append(f"unknown keys in 'axes.reference': {sorted(unknown_ref)}; known: {list(AXES)}")
    if p:
        return p
    for t in ax.trials():
        if t["n_embd"] % t["n_head"]:
            p.append(f"n_head={t['n_head']} does not divide n_embd={t['n_embd']} (trial {t})")
        if t["dtype"] not in DTYPES:
            p.append(f"dtype {t['dtype']!r} is not one of {list(DTYPES)}")
        for k in ("data_frames", "n_embd", "n_layer", "n_head"):
            if not isinstance(t[k], int) or t[k] < 1:
                p.append(f"'{k}' must be a positive integer; got {t[k]!r}")
    d = spec.data
    p.extend(d.problems())
    simulated = d.source == "simulated"
    largest = max(max(ax.data_frames), ax.reference["data_frames"])
    # cneuromod: the training frames are known once the replays are played (sweep re-validates)
    limit = max_data_frames or (d.train_replays * d.replay_frames if simulated else None)
    if limit is not None and largest > limit:
        source = (
            f"data.train_replays={d.train_replays} x data.replay_frames={d.replay_frames}"
            if simulated else f"the training replays of {d.bids_root}"
        )
        p.append(f"data_frames={largest} is more than the {limit} frames of training gameplay ({source})")
    tk = spec.tokenizer
    span = tk.clip_frames * tk.time_downsample
    smallest = min(min(ax.data_frames), ax.reference["data_frames"])
    if smallest < 2 * span:
        p.append(
            f"data_frames={smallest} is less than two clips ({2 * span} frames of "
            f"{tk.clip_frames} x {tk.time_downsample}): a trial needs at least one (previous, next) pair"
        )
    if simulated and d.replay_frames < 2 * span:
        p.append(f"'data.replay_frames'={d.replay_frames} is shorter than two clips ({2 * span} frames)")
    if tk.clip_frames % tk.downsample[0] or d.frame_size % tk.downsample[1] or d.frame_size % tk.downsample[2]:
        p.append(
            f"tokenizer.downsample={list(tk.downsample)} must divide (clip_frames, frame_size, frame_size)="
            f"({tk.clip_frames}, {d.frame_size}, {d.frame_size})"
        )
    tr = spec.train
    p.extend(tr.problems())
    if tr.epochs < 1 or tr.batch_size < 1:
        p.append("'train.epochs' and 'train.batch_size' must be >= 1")
    if not 0 < tr.feature_depth <= 1:
        p.append(f"'train.feature_depth' must be in (0, 1]; got {tr.feature_depth}")
    if not (tr.lr > 0 and 0 <= tr.warmup_frac < 1):
        p.append("'train.lr' must be > 0 and 'train.warmup_frac' in [0, 1)")
    r = spec.resources
    if r.cpus_per_trial <= 0:
        p.append(f"'resources.cpus_per_trial' must be > 0; got {r.cpus_per_trial}")
    if not (r.gpus_per_trial == "auto" or isinstance(r.gpus_per_trial, (int, float)) and r.gpus_per_trial >= 0):
        p.append(f"'resources.gpus_per_trial' must be 'auto' or a number >= 0; got {r.gpus_per_trial!r}")
    return p


def check_storage(storage: str) -> str:
    """An absolute path or a URI (Ray requires it); relative paths are refused, not guessed."""
    if "://" in storage:
        return storage.rstrip("/")
    if not os.path.isabs(storage):
        raise ValueError(
            f"--storage {storage!r} is a relative path; Ray needs an absolute path or a URI. "
            f"Did you mean {os.path.abspath(storage)!r}?"
        )
    return storage.rstrip("/")
