"""Sweep specs: one dataclass per concern, YAML overrides, validation before anything runs.

A preset is a YAML file of overrides on these defaults (``brainray/presets/*.yaml``, shipped with the package). Every
problem in a spec is collected and reported at once, naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

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
    "check_address",
    "dataset_root",
    "check_search",
    "SearchSpace",
    "SEARCHES",
    "DATA_SOURCES",
]

PRESETS_DIR = Path(__file__).resolve().parent / "presets"  # package data: found after `pip install .` too
AXES = ("data_frames", "n_embd", "n_layer", "n_head", "dtype", "seed")
#: Bumped when the prepare stage makes different data from the same settings, so that a cached
#: dataset of an older brainray is not reused (2: game-state parcel families, VQ-VAE mean frame;
#: 3: the streaming prepare, training frames regenerated from their bk2; 4: the mixed family;
#: 5: the mixed units on the game's fixed state moments, resting on a blank screen; 6: the fast
#: family, and the demo's new family mix).
DATA_VERSION = 6
#: Control trials: "untrained" scores the reference model with its initial weights; "codes"
#: scores the VQ codes themselves (their share of the screen per step), with no model.
CONTROLS = ("untrained", "codes")
DTYPES = ("fp32", "fp16", "bf16")
DATA_SOURCES = ("simulated", "cneuromod")
DATA_SCHEDULES = ("scratch", "reuse")
SEARCHES = ("grid", "optuna")
# Mirrors of other modules' constants (tests/test_config.py checks them): config imports no emulator.
_POLICIES = ("scripted", "random")  # brainray.gameplay.POLICIES
_SIM_SUBJECTS = 4  # len(brainray.simbrain.SUBJECTS)
_FPS = 60.0  # Hz of the recorded gameplay (brainray.dataset.FPS)


class SpecError(ValueError):
    """A sweep spec is invalid; the message lists every problem found."""


# -- field rules: "'section.key' must be <what>; got VALUE" ---------------------------------------
@dataclass(frozen=True)
class _Rule:
    """What a setting must be: the text for the message, and the test."""

    what: str
    ok: Callable[[Any], bool]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # YAML true is not 1


def _is_real(v: Any) -> bool:
    """A finite int or float: NaN and inf pass no range test worth having."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int(low: int, high: int | None = None, why: str = "") -> _Rule:
    """An integer in ``[low, high]``; ``why`` says in the message where the bound comes from."""
    what = (f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]") + (f" ({why})" if why else "")
    return _Rule(what, lambda v: _is_int(v) and low <= v and (high is None or v <= high))


def _real(low: float, high: float | None = None, *, open_low: bool = False, open_high: bool = False) -> _Rule:
    """A finite number from ``low`` (up to ``high``); ``open_*`` leave that end out."""
    if high is None:
        what = f"a finite number {'>' if open_low else '>='} {low:g}"
    else:
        what = f"in {'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"

    def ok(v: Any) -> bool:
        above = _is_real(v) and (v > low if open_low else v >= low)
        return above and (high is None or (v < high if open_high else v <= high))

    return _Rule(what, ok)


def _one_of(options: tuple[str, ...]) -> _Rule:
    return _Rule(f"one of {list(options)}", lambda v: isinstance(v, str) and v in options)


_TEXT = _Rule("a non-empty string", lambda v: isinstance(v, str) and bool(v.strip()))
_POSITIVE = _real(0, open_low=True)
_NON_NEGATIVE = _real(0)
_FRACTION = _real(0, 1, open_low=True, open_high=True)


def _check(section: str, obj: Any, rules: dict[str, _Rule]) -> list[str]:
    """The message of every field of ``obj`` that breaks its rule (a tuple shown as the YAML list it was)."""
    return [
        f"'{section}.{key}' must be {rule.what}; got {_shown(getattr(obj, key))!r}"
        for key, rule in rules.items() if not rule.ok(getattr(obj, key))
    ]


def _shown(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


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
        """Every problem of these settings, as messages naming the field and value.

        Only the fields of the chosen ``source`` are checked: the other source's are unused.
        """
        if self.source not in DATA_SOURCES:
            allowed = "{" + ", ".join(map(repr, DATA_SOURCES)) + "}"
            return [f"'data.source' must be one of {allowed}; got {self.source!r}"]
        # seeds feed numpy's generators, which refuse negative seeds
        p = _check("data", self, {"game": _TEXT, "frame_size": _int(1), "seed": _int(0)})
        if self.source == "simulated":
            p += _check("data", self, {
                "policy": _one_of(_POLICIES),
                "train_replays": _int(1), "replay_frames": _int(1), "val_replays": _int(1),
                "n_subjects": _int(1, _SIM_SUBJECTS, why="the simulated brain's subjects"),
                "n_runs": _int(3, why="run-wise scoring holds one run out and cross-validates on two more"),
                "run_vols": _int(1),
                "n_parcels": _int(4, why="one parcel of each type the simulated brain has"),
                "tr": _POSITIVE,
            })
            if self.policy == "scripted" and not str(self.game).startswith("Airstriker-Genesis"):
                p.append(f"'data.policy' scripted plays only Airstriker-Genesis; got 'data.game' {self.game!r}. "
                         "Use data.policy: random for another game")
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
        return p + _check("data", self, {"task": _TEXT, "val_fraction": _FRACTION})


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
    lr: float = 3e-4  # Adam; the paper's fork uses 3e-4, the small demo tokenizer learns faster at 1e-3
    # Training clips up to this size are replayed once and kept in Ray's object store; larger
    # sets stream from their bk2 at every epoch. It changes where clips wait, not which: not hashed.
    cache_mb: int = 512

    def problems(self) -> list[str]:
        """Every problem of these settings (the rules of ``brainray.vqvae.VQVAEConfig``, by key)."""
        return _check("tokenizer", self, {
            "clip_frames": _int(1), "time_downsample": _int(1),
            "downsample": _Rule(
                "3 powers of 2 for (T, H, W), at least one of them >= 2",
                lambda v: len(v) == 3 and all(_is_int(d) and d >= 1 and not d & (d - 1) for d in v) and max(v) >= 2,
            ),
            "n_hiddens": _Rule("an even integer >= 2 (the residual bottleneck halves it)",
                               lambda v: _is_int(v) and v >= 2 and v % 2 == 0),
            "n_res_layers": _int(0),
            "n_codes": _int(2, 2**15, why="tokens are stored as int16"),
            "embedding_dim": _int(1), "steps": _int(1), "batch_size": _int(1), "lr": _POSITIVE,
            "cache_mb": _int(0),
        })


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
        """Every problem of these settings, as messages naming the field and value."""
        p = _check("train", self, {
            "epochs": _int(1), "batch_size": _int(1),
            "lr": _POSITIVE, "min_lr_frac": _real(0, 1), "warmup_frac": _real(0, 1, open_high=True),
            "weight_decay": _NON_NEGATIVE,
            "grad_clip": _Rule("a number > 0 (inf: no clipping)", lambda v: _POSITIVE.ok(v) or v == math.inf),
            "dropout": _real(0, 1, open_high=True),
            "val_batches": _int(1), "log_every": _int(1), "feature_depth": _real(0, 1, open_low=True),
            "alphas": _Rule("a non-empty list of finite numbers > 0",
                            lambda v: len(v) > 0 and all(_POSITIVE.ok(a) for a in v)),
            "delays": _Rule("a non-empty list of distinct integers >= 0 (in TRs)",
                            lambda v: len(v) > 0 and all(_is_int(d) and d >= 0 for d in v) and len(set(v)) == len(v)),
            "device": _Rule("one of 'auto', 'cpu', 'cuda', 'cuda:N', 'mps'",
                            lambda v: isinstance(v, str) and bool(re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v))),
            "threads": _int(1), "cooldown_frac": _FRACTION,
        })
        if self.data_schedule not in DATA_SCHEDULES:
            p.append(f"'train.data_schedule' must be one of {list(DATA_SCHEDULES)}; got {self.data_schedule!r}")
        if self.lr_schedule not in ("cosine", "wsd"):
            p.append(f"'train.lr_schedule' must be one of ['auto', 'cosine', 'wsd']; got {self.lr_schedule!r}")
        elif self.data_schedule == "reuse" and self.lr_schedule != "wsd":
            p.append(
                "'train.data_schedule' reuse needs 'train.lr_schedule' wsd (branches fork off a constant-LR "
                f"phase); got {self.lr_schedule!r}"
            )
        return p


@dataclass
class AxesSpec:
    """The five sweep axes (plus seed).

    ``design: grid`` is the full product. ``design: lines`` varies one axis at a time
    around ``reference`` (the paper's design), plus the full ``data_frames x n_embd``
    grid when ``cross: true`` so that the joint law L(N, D) can be fitted.

    ``heads_for_width`` gives the head count of a width that the reference's ``n_head`` does
    not divide (the paper's widths 6, 15, 30, ... with its 4 heads): trials at that width
    outside the heads line use it, and log it in ``n_head``.

    ``controls`` adds control trials, left out of every fit, frontier and allocation; their
    rows have ``control`` set. ``"untrained"``, at the reference, one per seed, and one per
    other width: the model with its initial weights (same features, same ridge), so that the
    report can say what training adds. ``"codes"``, one row: the VQ codes themselves through
    the same ridge, no model (``n_embd``, ``n_layer``, ``n_head`` are 0), so that it can say
    what a model adds to its input.
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
    heads_for_width: dict[int, int] = field(default_factory=dict)
    controls: list[str] = field(default_factory=lambda: ["untrained", "codes"])

    _RULES: ClassVar[dict[str, _Rule]] = {  # what each value of an axis must be
        **{a: _int(1) for a in ("data_frames", "n_embd", "n_layer", "n_head")},
        "dtype": _one_of(DTYPES),
        "seed": _int(0, 2**32 - 1, why="numpy's seed range"),
    }

    def problems(self) -> list[str]:
        """Every problem of the axes: each value on its own first, then each trial (``n_head``
        divides ``n_embd``), so a bad value is named instead of failing a division."""
        p: list[str] = []
        if self.design not in ("grid", "lines"):
            p.append(f"'axes.design' must be one of {{'grid', 'lines'}}; got {self.design!r}")
        for axis, rule in self._RULES.items():
            values = getattr(self, axis)
            if not values:
                p.append(f"'axes.{axis}' is empty; give at least one value")
            elif not all(rule.ok(v) for v in values):
                p.append(f"'axes.{axis}' values must each be {rule.what}; got {values!r}")
            if axis not in self.reference:
                p.append(f"'axes.reference' lacks {axis!r}")
            elif not rule.ok(self.reference[axis]):
                p.append(f"'axes.reference.{axis}' must be {rule.what}; got {self.reference[axis]!r}")
        if not isinstance(self.controls, list) or not set(self.controls) <= set(CONTROLS):
            p.append(f"'axes.controls' must be a list of {list(CONTROLS)} (or []); got {self.controls!r}")
        for w, h in self.heads_for_width.items():
            if not (_int(1).ok(w) and _int(1).ok(h) and w % h == 0):
                p.append(f"'axes.heads_for_width' maps widths to head counts that divide them; got {w!r}: {h!r}")
        unknown_ref = set(self.reference) - set(AXES)
        if unknown_ref:
            p.append(f"unknown keys in 'axes.reference': {sorted(unknown_ref)}; known: {list(AXES)}")
        if p:
            return p
        for t in self.trials():
            if t["n_embd"] % t["n_head"]:
                p.append(f"n_head={t['n_head']} does not divide n_embd={t['n_embd']} (trial {t})")
        return p

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
        if self.design == "lines":  # the heads line keeps its own head counts
            rows = [
                {**r, "n_head": self.heads_for_width.get(r["n_embd"], r["n_head"])}
                if r["n_head"] == self.reference["n_head"] else r
                for r in rows
            ]
        seen, out = set(), []
        for r in rows:
            key = tuple(r[a] for a in AXES)
            if key not in seen:
                seen.add(key)
                out.append(r)
        return out

    def control_trials(self) -> list[dict[str, Any]]:
        """The control configs, per control. ``untrained``: the reference (with its width's heads)
        at each seed, then every other width of the ``n_embd`` axis at the reference seed (how
        much training adds depends on the width: a narrow model's random features lose more).
        ``codes``: one config, with no model (its ridge has no seed to vary)."""
        ref = dict(self.reference)
        ref["n_head"] = self.heads_for_width.get(ref["n_embd"], ref["n_head"])
        out = []
        for c in self.controls:
            if c == "codes":
                out.append({**ref, "n_embd": 0, "n_layer": 0, "n_head": 0, "control": c})
                continue
            out += [{**ref, "seed": s, "control": c} for s in dict.fromkeys(self.seed)]
            for w in dict.fromkeys(self.n_embd):
                heads = self.heads_for_width.get(w, ref["n_head"])
                if w != ref["n_embd"] and w % heads == 0:
                    out.append({**ref, "n_embd": w, "n_head": heads, "control": c})
        return out


@dataclass
class ResourcesSpec:
    """What each trial asks of the cluster."""

    cpus_per_trial: float = 1.0
    gpus_per_trial: float | str = "auto"  # auto: a fraction of a GPU sized by the model
    max_concurrent_trials: int = 0  # 0: as many as fit
    max_failures: int = 2
    # true: the cluster has an autoscaler, so a request that no node can meet *now* (e.g. GPUs on a
    # cluster scaled to zero) waits for a new node instead of being refused before the sweep starts.
    autoscale: bool = False

    def problems(self) -> list[str]:
        """Every problem of these settings, as messages naming the field and value."""
        return _check("resources", self, {
            "cpus_per_trial": _POSITIVE,
            "gpus_per_trial": _Rule("'auto' or a finite number >= 0", lambda v: v == "auto" or _NON_NEGATIVE.ok(v)),
            "max_concurrent_trials": _int(0, why="0: as many as fit"),
            "max_failures": _int(-1, why="-1: retry forever"),
        })


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
        controls = self.axes.control_trials()  # never trained, so never grouped for reuse
        if self.train.data_schedule != "reuse":
            return trials + controls
        groups: dict[tuple, dict[str, Any]] = {}
        for t in trials:
            group = groups.setdefault(tuple(t[a] for a in AXES if a != "data_frames"), {**t, "branches": []})
            group["branches"] = sorted({*group["branches"], t["data_frames"]})
            group["data_frames"] = group["branches"][-1]
        return list(groups.values()) + controls

    def data_key(self) -> str:
        """Hash of everything the prepared dataset and tokens depend on."""
        tokenizer = {k: v for k, v in dataclasses.asdict(self.tokenizer).items() if k != "cache_mb"}
        return stable_hash({"data": dataclasses.asdict(self.data), "tokenizer": tokenizer, "version": DATA_VERSION})

    def validate(self, max_data_frames: int | None = None) -> None:
        """Raise SpecError listing every problem, or return None."""
        problems = _validate(self, max_data_frames)
        if problems:
            raise SpecError(f"{self.source}: invalid sweep spec:\n  - " + "\n  - ".join(problems))


class SearchSpace:
    """What an Optuna search draws: ``n_embd`` and ``data_frames`` on a log scale over the
    ranges of their axes, every other axis held at ``axes.reference``.

    ``n_embd`` is drawn as a whole number ``k`` of heads (``n_embd = k * n_head``, ``k`` in
    ``k_range``), so ``n_head`` always divides it. Free of Ray, so that ``--dry-run`` shows it;
    ``brainray.sweep`` adds the Optuna call.
    """

    def __init__(self, spec: SweepSpec):
        ax = spec.axes
        self.reference = dict(ax.reference)
        self.n_head = int(self.reference["n_head"])
        self.k_range = (math.ceil(min(ax.n_embd) / self.n_head), max(ax.n_embd) // self.n_head)
        self.frames_range = (min(ax.data_frames), max(ax.data_frames))
        if self.k_range[0] > self.k_range[1]:
            raise ValueError(
                f"{spec.source}: no multiple of n_head={self.n_head} lies in axes.n_embd's range "
                f"[{min(ax.n_embd)}, {max(ax.n_embd)}]; widen axes.n_embd or change axes.reference.n_head."
            )

    @property
    def n_embd_range(self) -> tuple[int, int]:
        return self.k_range[0] * self.n_head, self.k_range[1] * self.n_head

    def __repr__(self) -> str:
        lo, hi = self.n_embd_range
        return f"n_embd in [{lo}, {hi}] (multiples of n_head={self.n_head}), data_frames in {list(self.frames_range)}"


def check_search(spec: SweepSpec, search: str, samples: int) -> None:
    """Refuse a search that this spec cannot run, before anything starts (``--dry-run`` included)."""
    if search not in SEARCHES:
        raise ValueError(f"search must be one of {SEARCHES}; got {search!r}.")
    if search == "optuna" and spec.train.data_schedule == "reuse":
        raise ValueError(
            f"{spec.source}: train.data_schedule 'reuse' shares one run across a grid of data sizes; an Optuna "
            "search draws each data size on its own. Use the grid search, or train.data_schedule: scratch."
        )
    if search == "optuna" and samples < 1:
        raise ValueError(f"samples must be >= 1 for an Optuna search; got {samples}.")


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
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: not valid YAML: {e}") from e
    if raw is None:  # read as "all defaults" it would run a sweep nobody asked for
        raise SpecError(
            f"{path}: the sweep spec is empty (or only comments); give at least its name and the sections "
            f"that differ from the defaults, e.g. a copy of a preset in {PRESETS_DIR}."
        )
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: a sweep spec must be a mapping of sections; got {type(raw).__name__}.")
    for key, value in (overrides or {}).items():
        section, _, leaf = key.partition(".")
        if leaf:
            raw.setdefault(section, {})[leaf] = value
        else:  # a top-level key: name
            raw[key] = value
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
            if isinstance(value, str):
                kwargs["name"] = value
            else:
                problems.append(f"'name' must be a string (quote it in YAML); got {value!r}")
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
    if isinstance(default, float) and isinstance(value, str):
        try:  # PyYAML reads 1e-3 (no dot) as a string
            return float(value), None
        except ValueError:
            pass
    if isinstance(default, str) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return value, None  # e.g. gpus "auto" | 0.5; each section's problems() checks the value
    return None, f"must be of type {type(default).__name__}"


def _validate(spec: SweepSpec, max_data_frames: int | None) -> list[str]:
    p = _name_problems(spec.name)
    for section in (spec.data, spec.tokenizer, spec.train, spec.axes, spec.resources):
        p.extend(section.problems())
    if p:
        return p  # the checks across sections below need sound values (no division by zero)
    ax, d, tk = spec.axes, spec.data, spec.tokenizer
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
    span = tk.clip_frames * tk.time_downsample
    smallest = min(min(ax.data_frames), ax.reference["data_frames"])
    if smallest < 2 * span:
        p.append(
            f"data_frames={smallest} is less than two clips ({2 * span} frames of "
            f"{tk.clip_frames} x {tk.time_downsample}): a trial needs at least one (previous, next) pair"
        )
    if simulated:
        if d.replay_frames < 2 * span:
            p.append(f"'data.replay_frames'={d.replay_frames} is shorter than two clips ({2 * span} frames)")
        # prepare places plays on a run only while more than 1 s of it is left, and a run's
        # features need one whole clip; the ridge's longest delay needs more volumes than it.
        need = max(max(spec.train.delays) + 1, math.floor(1.0 / d.tr) + 1, math.ceil(span / (_FPS * d.tr)))
        if d.run_vols < need:
            p.append(
                f"'data.run_vols' must be at least {need} (more volumes than the largest of 'train.delays' "
                f"{list(spec.train.delays)}, and a run of over 1 s that holds a {span}-frame clip at "
                f"'data.tr'={d.tr} s); got {d.run_vols}"
            )
    if tk.clip_frames % tk.downsample[0] or d.frame_size % tk.downsample[1] or d.frame_size % tk.downsample[2]:
        p.append(
            f"tokenizer.downsample={list(tk.downsample)} must divide (clip_frames, frame_size, frame_size)="
            f"({tk.clip_frames}, {d.frame_size}, {d.frame_size})"
        )
    return p


def _name_problems(name: str) -> list[str]:
    """The sweep's folder is ``<storage>/<name>``, and ``--fresh`` empties it: a name that is a
    path (``..``, ``a/b``, empty) would empty some other folder."""
    if isinstance(name, str) and name.strip() and not name.startswith(".") and not {"/", "\\"} & set(name):
        return []
    return [(
        "'name' must be a plain folder name: not empty, no '/' or '\\', not starting with '.' "
        f"(the results go to <storage>/<name>); got {name!r}"
    )]


def check_storage(storage: str, writable: bool = True) -> str:
    """An absolute path or a URI (Ray requires it); relative paths are refused, not guessed.

    A local path must be a folder, or one that can be made: a file in its place, or (with
    ``writable``) a nearest existing folder that cannot be written, is refused now rather
    than once Ray has started. A dry run writes nothing, so it plans for a path of another machine.
    """
    if "://" in storage:
        return storage.rstrip("/")
    if not os.path.isabs(storage):
        raise ValueError(
            f"--storage {storage!r} is a relative path; Ray needs an absolute path or a URI. "
            f"Did you mean {os.path.abspath(storage)!r}?"
        )
    path = Path(storage)
    existing = next(q for q in (path, *path.parents) if q.exists())  # "/" exists
    if not existing.is_dir():
        where = "is a file" if existing == path else f"is under {existing}, which is a file"
        raise ValueError(f"--storage {storage!r} {where}, not a folder; pass a folder for the results.")
    if writable and not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"--storage {storage!r}: {existing} is not writable; pass a folder you can write to.")
    return storage.rstrip("/") or "/"


def dataset_root(root: str, storage: str, data_dir: str | None, spec: SweepSpec) -> str:
    """Where the prepared dataset of ``spec`` lives, for the sweep folder ``root`` (``<storage>/<name>``):
    ``<root>/data/<key>``, or ``<data_dir>/<key>``. A POSIX folder, because trials memory-map its arrays,
    so a URI ``storage`` needs a ``data_dir``."""
    if data_dir is None:
        if "://" in root:
            raise ValueError(
                f"--storage {storage!r} is a URI, but the prepared dataset must be on a POSIX path that "
                "every node can read (trials memory-map it). Pass --data-dir /shared/path (NFS, EFS, "
                "Lustre) for the dataset; the other outputs still go to the URI."
            )
        return f"{root}/data/{spec.data_key()}"
    if not os.path.isabs(data_dir) or "://" in data_dir:
        raise ValueError(f"--data-dir {data_dir!r} must be an absolute POSIX path shared by every node.")
    return str(Path(data_dir) / spec.data_key())


def check_address(address: str, timeout_s: float = 10.0) -> None:
    """Refuse a Ray address whose GCS port does not answer (``ray.init`` would retry it for minutes)."""
    if address == "auto":
        return  # ray.init finds the local cluster's address or says that none runs
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--address {address!r} must be 'auto', HOST:PORT or ray://HOST:PORT.")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise ValueError(
            f"--address {address}: nothing answers at {host}:{port} ({e}). Check that the head node runs "
            "`ray start --head` (GCS port 6379 by default; 10001 for ray://), that this machine can reach "
            "that port, and that RAY_AUTH_MODE and the auth token match the cluster's."
        ) from None
