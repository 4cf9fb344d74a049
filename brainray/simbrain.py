"""Simulated brain: parcel BOLD time series driven by known gameplay features.

The embedded default dataset has real emulator video but no real fMRI, so this module
makes parcel time series whose generating process, and hence noise ceiling, is known
exactly. Each parcel belongs to one family (:data:`PARCEL_TYPES`):

- ``visual``: luminance, RMS contrast or motion energy in one receptive field (a cell of a
  ``grid`` x ``grid`` partition of the screen);
- ``predictive``: frame-to-frame surprise in a receptive field (the error of a linear
  extrapolation of the next frame from the previous two) or game events (reward > 0);
- ``motor``: presses of one button;
- with the game's state (:mod:`brainray.gamestate`, :data:`STATE_TYPES`): ``object``,
  ``relation`` and ``anticipation`` (its variables), ``mixed`` (rectified random mixtures of
  them) and ``fast`` (products of two of its frame-rate events);
- ``none``: noise only.

A parcel responds to one feature or a small random positive mix of up to three features of
its type. The generative model for parcel ``p`` in one run is::

    x_j(t)  = per-frame feature j (60 Hz), averaged into 0.1 s bins,
              convolved with the SPM HRF (nilearn) and sampled at (k + 0.5) * tr
    z_j(t)  = (x_j(t) - mean_run x_j) / s_j          s_j: RMS of the centred x_j, pooled over runs
    s_p(t)  = a_p * sum_j w_pj z_j(t)                 a_p: var_pooled(s_p) = snr_p * sigma_n^2
    e_p(t)  = phi * e_p(t-1) + sqrt(1 - phi^2) eps(t) AR(1) noise, stationary variance 1
    d_p(t)  = drift_amplitude * sqrt(2 / K) * sum_{k=1..K} c_pk cos(pi k (t + 1/2) / n_vols)
    bold_p  = s_p + e_p + d_p

with ``eps, c ~ N(0, 1)``, so the expected noise variance is
``sigma_n^2 = 1 + drift_amplitude^2`` (the cosines have mean 0 and mean square 1/2 on the
volume grid). The **noise ceiling** of a parcel is the expected Pearson r between its clean
signal and its measured BOLD, drift counted as noise::

    ceiling_p = sqrt(snr_p / (1 + snr_p))            (0 for noise parcels)

which is the best score any encoding model can expect; :func:`realized_ceiling` gives the
same correlation measured on given data. No feature here depends on brainray's own model
features, so scores are not circular.

Randomness is seeded by ``(config.seed, subject)``: subjects differ, and the same seed and
subject always give the same data.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy.signal import lfilter, oaconvolve

from brainray import gamestate

__all__ = [
    "PARCEL_TYPES",
    "SUBJECTS",
    "Parcel",
    "RunStimulus",
    "SimBrainConfig",
    "SubjectData",
    "feature_type",
    "hrf_features",
    "make_parcels",
    "n_volumes",
    "noise_ceiling",
    "realized_ceiling",
    "run_tr_features",
    "simulate_run",
    "simulate_subject",
    "stimulus_features",
]

SUBJECTS = ("sub-01", "sub-02", "sub-04", "sub-06")  # the CNeuroMod shinobi subjects
PARCEL_TYPES = ("visual", "predictive", "motor", "object", "relation", "anticipation", "mixed", "fast", "none")
#: The families driven by the game's latent state (``brainray.gamestate``), not by pixels.
STATE_TYPES = ("object", "relation", "anticipation", "mixed", "fast")

#: The demo's mix when the stimulus has game state: a pixel-driven floor that every model
#: reaches (V1-like), the game-state families, and noise parcels. Chosen by measurement, on an
#: 8x8 latent grid (``benchmarks/grid32x8.yaml``, 3 seeds, 2026-12-04): the best trained trial
#: minus the untrained reference was +0.045 r for relation, +0.031 fast (seed s.d. 0.019),
#: +0.030 mixed, +0.025 object, +0.022 visual and anticipation, and on every earlier run +0.013
#: for motor and about 0 for predictive, which are left out. Read without noise
#: (``benchmarks/family_screen.py``) the order was fast +0.077, relation +0.057, anticipation
#: +0.053, mixed +0.043: relation and fast have the largest shares.
GAME_FRACTIONS = {
    "visual": 0.10, "predictive": 0.0, "motor": 0.0, "object": 0.10, "relation": 0.25, "anticipation": 0.05,
    "mixed": 0.15, "fast": 0.25, "none": 0.10,
}

_FINE_DT = 0.1  # s; fine time grid for HRF convolution (6 frames at 60 Hz)
_HRF_LENGTH = 32.0  # s; nilearn's default SPM HRF support
_MIX_SIZES = (1, 2, 3)  # number of features a parcel mixes ...
_MIX_PROBS = (0.5, 0.35, 0.15)  # ... and how often
_FEATURE_TYPES = {  # feature name prefix -> parcel type that may use it
    "lum": "visual",
    "contrast": "visual",
    "motion": "visual",
    "surprise": "predictive",
    "event": "predictive",
    "button": "motor",
    **{v: "object" for v in gamestate.OBJECT_VARIABLES if v not in ("threat", "aim")},
    "threat": "relation",
    "aim": "relation",
    **{v: "anticipation" for v in gamestate.ANTICIPATION_VARIABLES},
    "mixed": "mixed",
    "fast": "fast",
}
#: Mixed selectivity (Rigotti et al. 2013, Nature 497:585): a higher-area unit responds to a
#: nonlinear conjunction of task variables, not to one of them. ``mixed-k`` is a rectified
#: random mixture of the standardized game state at frame rate, before the HRF: its TR average
#: is not a linear function of the TR-averaged pixels, unlike the state variables themselves.
_MIXED_UNITS = 16
_MIXED_SEED = 497585  # fixed: the same units for every game, subject and seed
_MIXED_THRESHOLD = 0.5  # in standard deviations of a unit's input: active about 40 % of the time
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32) / 255.0  # ITU-R BT.601, to [0, 1]
_CHUNK_PIXELS = 2**22  # frames are converted to float in chunks of about this many pixels


# --------------------------------------------------------------------------- settings


@dataclass
class SimBrainConfig:
    """Settings of the simulated brain.

    Parameters
    ----------
    n_parcels : int, default=64
        Number of parcels per subject (at least 4).
    tr : float, default=1.49
        Repetition time in seconds (CNeuroMod's).
    snr_range : tuple of float, default=(0.3, 2.0)
        Per-parcel signal-to-noise variance ratio ``var(signal) / E[var(noise)]`` is drawn
        log-uniformly from ``[low, high]``; ``0 < low <= high``.
    fractions : dict of str to float, default={"visual": 0.4, "predictive": 0.2, \
"motor": 0.2, "none": 0.2}
        Share of parcels of each type; keys are among :data:`PARCEL_TYPES` (a missing type
        gets 0), values are non-negative and sum to 1. Counts are rounded by largest
        remainder. The game-state types (:data:`STATE_TYPES`) need a stimulus with
        ``state``; :data:`GAME_FRACTIONS` is the demo's mix.
    ar1 : float, default=0.3
        Lag-one autocorrelation of the noise, in ``[0, 1)``.
    drift_amplitude : float, default=0.5
        Expected standard deviation of the slow cosine drift, relative to the AR(1) noise
        (whose variance is 1). Drift counts as noise in the ceiling.
    drift_order : int, default=3
        Number of cosines in the drift; the slowest has period ``2 * run length``.
    grid : int, default=3
        The screen is split into ``grid x grid`` receptive fields.
    seed : int, default=0
        Base seed; combined with the subject name.
    """

    n_parcels: int = 64
    tr: float = 1.49
    snr_range: tuple[float, float] = (0.3, 2.0)
    fractions: dict[str, float] = field(
        default_factory=lambda: {"visual": 0.4, "predictive": 0.2, "motor": 0.2, "none": 0.2}
    )
    ar1: float = 0.3
    drift_amplitude: float = 0.5
    drift_order: int = 3
    grid: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        for name, low in (("n_parcels", 4), ("drift_order", 1), ("grid", 1)):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
                raise ValueError(
                    f"SimBrainConfig.{name} must be an integer >= {low}; got {value!r}."
                )
        if not isinstance(self.seed, (int, np.integer)) or isinstance(self.seed, bool):
            raise ValueError(f"SimBrainConfig.seed must be an integer; got {self.seed!r}.")
        if not (isinstance(self.tr, (int, float)) and math.isfinite(self.tr) and self.tr > 0):
            raise ValueError(f"SimBrainConfig.tr must be a positive number; got {self.tr!r}.")
        try:
            low, high = (float(v) for v in self.snr_range)
        except (TypeError, ValueError):
            raise ValueError(
                f"SimBrainConfig.snr_range must be a pair (low, high); got {self.snr_range!r}."
            ) from None
        if not (0 < low <= high < math.inf):
            raise ValueError(
                f"SimBrainConfig.snr_range must satisfy 0 < low <= high; got {self.snr_range!r}."
            )
        self.snr_range = (low, high)
        if not isinstance(self.fractions, dict) or not set(self.fractions) <= set(PARCEL_TYPES):
            got = sorted(self.fractions) if isinstance(self.fractions, dict) else self.fractions
            raise ValueError(
                f"SimBrainConfig.fractions must have keys among {list(PARCEL_TYPES)}; "
                f"got {got!r}."
            )
        self.fractions = {k: self.fractions.get(k, 0.0) for k in PARCEL_TYPES}  # a missing type: 0
        if any(not (float(v) >= 0) for v in self.fractions.values()):
            raise ValueError(
                f"SimBrainConfig.fractions must be non-negative; got {self.fractions!r}."
            )
        total = sum(float(v) for v in self.fractions.values())
        if abs(total - 1.0) > 1e-6:
            raise ValueError(
                f"SimBrainConfig.fractions must sum to 1; got {total:g} ({self.fractions!r}). "
                "Rescale the fractions."
            )
        if not (0 <= self.ar1 < 1):
            raise ValueError(f"SimBrainConfig.ar1 must be in [0, 1); got {self.ar1!r}.")
        if not (math.isfinite(self.drift_amplitude) and self.drift_amplitude >= 0):
            raise ValueError(
                "SimBrainConfig.drift_amplitude must be a finite number >= 0; "
                f"got {self.drift_amplitude!r}."
            )

    @property
    def noise_variance(self) -> float:
        """Expected variance of the noise (AR(1) plus drift): ``1 + drift_amplitude**2``."""
        return 1.0 + self.drift_amplitude**2


@dataclass(frozen=True)
class Parcel:
    """One simulated parcel.

    Parameters
    ----------
    label : str
        Unique name, ``"p{index:02d}-{kind}-{main feature}"``, e.g. ``"p03-visual-lum-4"``.
    kind : str
        One of :data:`PARCEL_TYPES`.
    features : tuple of str
        Names of the source features (keys of :func:`stimulus_features`), largest weight
        first; empty for ``kind == "none"``.
    weights : tuple of float
        Positive mixing weights of the standardized features, summing to 1.
    snr : float
        Signal-to-noise variance ratio; 0 for noise parcels.
    """

    label: str
    kind: str
    features: tuple[str, ...]
    weights: tuple[float, ...]
    snr: float

    @property
    def ceiling(self) -> float:
        """Expected Pearson r between the parcel's signal and its BOLD."""
        return float(noise_ceiling(self.snr))


@dataclass
class RunStimulus:
    """What the subject saw and did during one run.

    Either one stream covering the run from ``t = 0`` (``onsets=None``), or several
    replays placed at ``onsets`` with a blank screen (all-zero frames, no presses, no
    reward) between them.

    Parameters
    ----------
    frames : array of shape (n_frames, height, width, 3), uint8, or list of such arrays
        RGB frames at ``fps``; one array per replay when ``onsets`` is given.
    actions : array of shape (n_frames, n_buttons), bool, or list of such arrays
        Buttons held at each frame.
    rewards : array of shape (n_frames,), float, or list of such arrays
        Game reward at each frame; ``reward > 0`` is a game event.
    fps : float, default=60.0
        Frame rate of the streams.
    onsets : sequence of float or None, default=None
        Start time (s) of each replay on the run timeline.
    duration : float or None, default=None
        Run length in seconds; required with ``onsets``, else ``n_frames / fps``. Replays
        that run past the end are cut there.
    state : array of shape (n_frames, len(gamestate.OBJECT_VARIABLES)), or list of such
        arrays, or None, default=None
        The game's object-level state per frame (:func:`brainray.gamestate.object_state`
        of the native frames); it drives the :data:`STATE_TYPES` parcels. All zeros (no
        ship, no enemies) between replays.
    """

    frames: np.ndarray | Sequence[np.ndarray]
    actions: np.ndarray | Sequence[np.ndarray]
    rewards: np.ndarray | Sequence[np.ndarray]
    fps: float = 60.0
    onsets: Sequence[float] | None = None
    duration: float | None = None
    state: np.ndarray | Sequence[np.ndarray] | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.fps, (int, float)) and self.fps > 0):
            raise ValueError(f"RunStimulus.fps must be a positive number; got {self.fps!r}.")
        if self.onsets is None:
            if self.duration is None:
                self.duration = len(self.frames) / self.fps
        elif self.duration is None:
            raise ValueError(
                "RunStimulus.duration is required when onsets are given; pass the run "
                "length in seconds."
            )
        if not self.duration > 0:
            raise ValueError(
                f"RunStimulus.duration must be positive; got {self.duration!r}."
            )

    @property
    def n_frames(self) -> int:
        """Number of frames on the run timeline, ``round(duration * fps)``."""
        return int(round(self.duration * self.fps))

    def n_volumes(self, tr: float) -> int:
        """Number of volumes acquired during the run, ``floor(duration / tr)``."""
        return n_volumes(self.n_frames, self.fps, tr)


@dataclass
class SubjectData:
    """Simulated BOLD of one subject, with the ground truth that made it.

    Attributes
    ----------
    subject : str
        Subject name, e.g. ``"sub-01"``.
    bold : list of array of shape (n_vols_run, n_parcels), float32
        Measured BOLD per run (signal + AR(1) noise + drift).
    signal : list of array of shape (n_vols_run, n_parcels), float32
        Clean signal per run (zero for noise parcels).
    parcels : list of Parcel
        Generating spec of each parcel.
    config : SimBrainConfig
        Settings used.
    """

    subject: str
    bold: list[np.ndarray]
    signal: list[np.ndarray]
    parcels: list[Parcel]
    config: SimBrainConfig

    @property
    def ceiling(self) -> np.ndarray:
        """Array of shape (n_parcels,): expected r between signal and BOLD."""
        return noise_ceiling(self.snr)

    @property
    def snr(self) -> np.ndarray:
        """Array of shape (n_parcels,): signal-to-noise variance ratio (0 for noise)."""
        return np.array([p.snr for p in self.parcels], dtype=np.float64)

    @property
    def parcel_types(self) -> list[str]:
        """Type of each parcel, one of :data:`PARCEL_TYPES`."""
        return [p.kind for p in self.parcels]

    @property
    def parcel_labels(self) -> list[str]:
        """Unique label of each parcel, e.g. ``"p03-visual-lum-4"``."""
        return [p.label for p in self.parcels]

    def save(self, directory: str | Path) -> Path:
        """Write ``simbrain.npz`` (arrays) and ``simbrain.json`` (spec) into ``directory``.

        Returns
        -------
        Path
            The directory.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        arrays = {f"bold_{i:03d}": b for i, b in enumerate(self.bold)}
        arrays |= {f"signal_{i:03d}": s for i, s in enumerate(self.signal)}
        np.savez(directory / "simbrain.npz", **arrays)
        meta = {
            "subject": self.subject,
            "n_runs": len(self.bold),
            "config": asdict(self.config),
            "parcels": [asdict(p) for p in self.parcels],
        }
        (directory / "simbrain.json").write_text(json.dumps(meta, indent=1))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> SubjectData:
        """Read what :meth:`save` wrote.

        Raises
        ------
        FileNotFoundError
            If ``simbrain.json`` or ``simbrain.npz`` is missing from ``directory``.
        """
        directory = Path(directory)
        for name in ("simbrain.json", "simbrain.npz"):
            if not (directory / name).is_file():
                raise FileNotFoundError(
                    f"{directory / name} not found; write it with SubjectData.save()."
                )
        meta = json.loads((directory / "simbrain.json").read_text())
        cfg = dict(meta["config"])
        cfg["snr_range"] = tuple(cfg["snr_range"])
        parcels = [
            Parcel(p["label"], p["kind"], tuple(p["features"]), tuple(p["weights"]), p["snr"])
            for p in meta["parcels"]
        ]
        with np.load(directory / "simbrain.npz") as npz:
            bold = [npz[f"bold_{i:03d}"] for i in range(meta["n_runs"])]
            signal = [npz[f"signal_{i:03d}"] for i in range(meta["n_runs"])]
        return cls(meta["subject"], bold, signal, parcels, SimBrainConfig(**cfg))


# --------------------------------------------------------------------------- timing


def n_volumes(n_frames: int, fps: float = 60.0, tr: float = 1.49) -> int:
    """Number of whole volumes in a run of ``n_frames`` frames: ``floor(n_frames / fps / tr)``.

    Examples
    --------
    >>> n_volumes(60 * 149, 60.0, 1.49)
    100
    """
    return int(math.floor(n_frames / fps / tr + 1e-9))


def noise_ceiling(snr: float | np.ndarray) -> np.ndarray:
    """Expected Pearson r between a parcel's clean signal and its BOLD.

    ``ceiling = sqrt(snr / (1 + snr))`` where ``snr = var(signal) / E[var(noise)]`` and the
    noise is AR(1) plus drift. It is 0 for ``snr == 0``.

    Parameters
    ----------
    snr : float or array of shape (n_parcels,)
        Non-negative signal-to-noise variance ratios.

    Returns
    -------
    array of shape (n_parcels,) or float array of shape ()
    """
    snr = np.asarray(snr, dtype=np.float64)
    if np.any(~(snr >= 0)):
        raise ValueError(f"snr must be >= 0; got {snr!r}.")
    return np.sqrt(snr / (1.0 + snr))


def realized_ceiling(signal: np.ndarray, bold: np.ndarray) -> np.ndarray:
    """Pearson r per parcel between the clean signal and the BOLD on given data.

    Parameters
    ----------
    signal, bold : array of shape (n_vols, n_parcels)

    Returns
    -------
    array of shape (n_parcels,)
        Correlation per column; 0 where the signal is constant (noise parcels).
    """
    signal = np.asarray(signal, dtype=np.float64)
    bold = np.asarray(bold, dtype=np.float64)
    if signal.shape != bold.shape or signal.ndim != 2:
        raise ValueError(
            "signal and bold must be 2-D arrays of the same shape (n_vols, n_parcels); "
            f"got {signal.shape} and {bold.shape}."
        )
    s = signal - signal.mean(0)
    b = bold - bold.mean(0)
    denom = np.sqrt((s**2).sum(0) * (b**2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (s * b).sum(0) / denom
    return np.where(denom > 0, r, 0.0)


# --------------------------------------------------------------------------- features


def feature_type(name: str) -> str:
    """Parcel type that may use feature ``name`` (``"lum-4"`` -> ``"visual"``)."""
    prefix = name.split("-")[0]
    if prefix not in _FEATURE_TYPES:
        raise ValueError(
            f"Unknown feature {name!r}; expected a prefix in {sorted(_FEATURE_TYPES)}."
        )
    return _FEATURE_TYPES[prefix]


def _check_streams(frames: np.ndarray, actions: np.ndarray, rewards: np.ndarray) -> None:
    if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(
            "frames must be an array of shape (n_frames, height, width, 3); got "
            f"{getattr(frames, 'shape', type(frames).__name__)}."
        )
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 RGB; got dtype {frames.dtype}.")
    n = len(frames)
    actions = np.asarray(actions)
    rewards = np.asarray(rewards)
    if actions.ndim != 2 or len(actions) != n:
        raise ValueError(
            f"actions must have shape (n_frames={n}, n_buttons); got {actions.shape}."
        )
    if rewards.shape != (n,):
        raise ValueError(f"rewards must have shape (n_frames={n},); got {rewards.shape}.")


def _visual_features(
    get_chunk: Callable[[int, int], np.ndarray],
    n: int,
    height: int,
    width: int,
    grid: int,
    fps: float,
) -> dict[str, np.ndarray]:
    """Per-frame visual and surprise features, streamed over frame chunks.

    The stream is taken to be preceded by blank (black) frames.
    """
    if height < grid or width < grid:
        raise ValueError(
            f"frames of {height}x{width} pixels are too small for a {grid}x{grid} grid; "
            "lower SimBrainConfig.grid or pass larger frames."
        )
    rows = np.cumsum([0] + [len(a) for a in np.array_split(np.arange(height), grid)])
    cols = np.cumsum([0] + [len(a) for a in np.array_split(np.arange(width), grid)])
    area = np.outer(np.diff(rows), np.diff(cols)).reshape(-1).astype(np.float32)  # (G,)

    def window_mean(x: np.ndarray) -> np.ndarray:  # (c, h, w) -> (c, G)
        x = np.add.reduceat(np.add.reduceat(x, rows[:-1], axis=1), cols[:-1], axis=2)
        return x.reshape(len(x), -1) / area

    n_win = grid * grid
    out = {k: np.zeros((n, n_win), np.float32) for k in ("lum", "contrast", "motion", "surprise")}
    history = np.zeros((2, height, width), np.float32)  # blank before the stream
    step = max(1, _CHUNK_PIXELS // (height * width))
    for a in range(0, n, step):
        b = min(n, a + step)
        lum = get_chunk(a, b).astype(np.float32) @ _LUMA  # (c, h, w) in [0, 1]
        ext = np.concatenate([history, lum])  # (c + 2, h, w)
        mean = window_mean(lum)
        out["lum"][a:b] = mean
        out["contrast"][a:b] = np.sqrt(np.maximum(window_mean(lum * lum) - mean * mean, 0))
        out["motion"][a:b] = window_mean(np.abs(ext[2:] - ext[1:-1])) * fps
        out["surprise"][a:b] = window_mean(np.abs(ext[2:] - 2 * ext[1:-1] + ext[:-2])) * fps
        history = ext[-2:]
    return {f"{k}-{g}": v[:, g] for k, v in out.items() for g in range(n_win)}


def _event_motor_features(
    actions: np.ndarray,
    rewards: np.ndarray,
    state: np.ndarray | None = None,
    fps: float = 60.0,
    in_game: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Event and button features, and the game-state features when ``state`` is given.

    ``in_game`` marks the frames with a game on the screen (all of them by default): the
    state-driven units rest on the blank screen between and after replays.
    """
    feats = {"event": (np.asarray(rewards) > 0).astype(np.float32)}
    actions = np.asarray(actions).astype(np.float32)
    feats |= {f"button-{j}": actions[:, j] for j in range(actions.shape[1])}
    if state is None:
        return feats
    state = _check_state(state, len(actions))
    game = np.ones(len(state), bool) if in_game is None else np.asarray(in_game, bool)
    ahead = gamestate.anticipation(state, rewards, fps, game)
    feats |= {v: state[:, j] for j, v in enumerate(gamestate.OBJECT_VARIABLES)}
    feats |= {v: ahead[:, j] for j, v in enumerate(gamestate.ANTICIPATION_VARIABLES)}
    feats |= _mixed_features(np.concatenate([state, ahead], axis=1), game)
    return feats | _fast_features(gamestate.fast_signals(state, rewards, fps, game), game)


def _mixed_features(x: np.ndarray, in_game: np.ndarray) -> dict[str, np.ndarray]:
    """``mixed-k = max(0, w_k . z(t) / sqrt(3) - 0.5)`` while a game is on the screen, else 0: z the
    state standardized on the game's fixed moments (:data:`gamestate.STATE_MOMENTS`), w_k ~ N(0, I)
    drawn once (:data:`_MIXED_SEED`).

    The moments are fixed, not the run's own: a unit must be the same function of the state in
    every run. Standardizing over each run made one unit's tuning flip in a run that ends on a
    blank screen, and its parcels scored r = -0.5 on every model.
    """
    names = gamestate.OBJECT_VARIABLES + gamestate.ANTICIPATION_VARIABLES
    mean, sd = np.array([gamestate.STATE_MOMENTS[v] for v in names]).T
    z = (np.asarray(x, np.float64) - mean) / sd
    w = np.random.default_rng(_MIXED_SEED).standard_normal((len(names), _MIXED_UNITS)) / math.sqrt(3)
    units = np.maximum(z @ w - _MIXED_THRESHOLD, 0.0) * np.asarray(in_game, bool)[:, None]
    return {f"mixed-{k}": units[:, k].astype(np.float32) for k in range(_MIXED_UNITS)}


def _fast_features(x: np.ndarray, in_game: np.ndarray) -> dict[str, np.ndarray]:
    """``fast-a.b = z_a(t) * z_b(t)`` while a game is on the screen, else 0: the conjunction of two
    of the game's fast events (:func:`gamestate.fast_signals`), each standardized on the game's
    fixed moments (:data:`gamestate.FAST_MOMENTS`), at frame rate, before the HRF.

    An event lasts a few frames; the TR average of a product of two events is not a function of
    the TR averages of either, nor of the pixels' slow statistics. A model that predicts the
    game's next clip must represent the events; the screen's mean statistics do not carry their
    coincidences (``benchmarks/family_screen.py``: on an 8x8 latent grid, training added +0.08
    noiseless r at width 96, the most of any family).
    """
    names = gamestate.FAST_VARIABLES
    mean, sd = np.array([gamestate.FAST_MOMENTS[v] for v in names]).T
    z = (np.asarray(x, np.float64) - mean) / sd * np.asarray(in_game, bool)[:, None]
    return {
        f"fast-{a}.{b}": (z[:, i] * z[:, j]).astype(np.float32)
        for i, a in enumerate(names) for j, b in enumerate(names) if i < j
    }


def _check_state(state: np.ndarray, n: int) -> np.ndarray:
    state = np.asarray(state, np.float32)
    if state.shape != (n, len(gamestate.OBJECT_VARIABLES)):
        raise ValueError(
            f"state must have shape (n_frames={n}, {len(gamestate.OBJECT_VARIABLES)}) with the columns "
            f"{list(gamestate.OBJECT_VARIABLES)} (brainray.gamestate.object_state); got {state.shape}."
        )
    return state


def stimulus_features(
    frames: np.ndarray,
    actions: np.ndarray,
    rewards: np.ndarray,
    fps: float = 60.0,
    grid: int = 3,
    state: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Per-frame stimulus features that drive the simulated parcels.

    With ``L_t`` the luminance image of frame ``t`` (BT.601 luma in ``[0, 1]``), the
    receptive fields ``g = 0 .. grid**2 - 1`` the cells of a ``grid x grid`` split of the
    screen (row-major), and ``<.>_g`` the mean over cell ``g``:

    - ``lum-g`` (visual): ``<L_t>_g``;
    - ``contrast-g`` (visual): RMS contrast, ``sqrt(<L_t^2>_g - <L_t>_g^2)``;
    - ``motion-g`` (visual): motion energy, ``<|L_t - L_{t-1}|>_g * fps`` (per second);
    - ``surprise-g`` (predictive): error of the linear extrapolation
      ``2 L_{t-1} - L_{t-2}`` of frame ``t``, ``<|L_t - 2 L_{t-1} + L_{t-2}|>_g * fps``;
    - ``event`` (predictive): 1 where ``reward > 0``, else 0;
    - ``button-j`` (motor): 1 where button ``j`` is held, else 0;
    - with ``state``, the game's latent state (:mod:`brainray.gamestate`): ``ship_x``,
      ``ship_present``, ``n_enemies``, ``n_shots``, ``n_bullets``, ``enemy_y`` (object);
      ``threat``, ``aim`` (relation: the ship and the others); ``reward_ahead``,
      ``loss_ahead`` (anticipation: what happens in the next 1 or 2 s).

    The stream is taken to follow a blank (black) screen, so the first frames carry an
    onset response. None of these depend on brainray's models.

    Parameters
    ----------
    frames : array of shape (n_frames, height, width, 3), uint8
    actions : array of shape (n_frames, n_buttons), bool
    rewards : array of shape (n_frames,), float
    fps : float, default=60.0
        Frame rate; motion and surprise are rates per second.
    grid : int, default=3
        Receptive fields per side.
    state : array of shape (n_frames, len(gamestate.OBJECT_VARIABLES)) or None
        :func:`brainray.gamestate.object_state` of the native frames.

    Returns
    -------
    dict of str to array of shape (n_frames,), float32
    """
    _check_streams(frames, actions, rewards)
    n, h, w, _ = frames.shape
    feats = _visual_features(lambda a, b: frames[a:b], n, h, w, grid, fps)
    return feats | _event_motor_features(actions, rewards, state, fps)


def _timeline_features(run: RunStimulus, grid: int) -> dict[str, np.ndarray]:
    """Per-frame features on the run timeline, blank between replays; (n_frames,) each."""
    if run.onsets is None:
        _check_streams(run.frames, run.actions, run.rewards)
        streams = ([run.frames], [run.actions], [run.rewards], [0.0])
        states = None if run.state is None else [run.state]
    else:
        streams = (run.frames, run.actions, run.rewards, run.onsets)
        states = run.state
    timeline, actions, rewards, state = _place(*streams, run, states)
    h, w, _ = timeline.shape
    feats = _visual_features(lambda a, b: timeline[a:b], len(timeline), h, w, grid, run.fps)
    return feats | _event_motor_features(actions, rewards, state, run.fps, timeline.in_game())


class _Timeline:
    """Lazy uint8 frame array of a run: replays at their start frames, zeros elsewhere."""

    def __init__(self, segments: list[tuple[int, np.ndarray]], n: int, shape: tuple) -> None:
        self.segments, self.n, self.shape = segments, n, shape
        self.ndim, self.dtype = 4, np.dtype(np.uint8)

    def __len__(self) -> int:
        return self.n

    def in_game(self) -> np.ndarray:
        """(n,) bool: the frames a replay covers, not the blank screen around them."""
        out = np.zeros(self.n, bool)
        for start, seg in self.segments:
            out[start : start + len(seg)] = True
        return out

    def __getitem__(self, key: slice) -> np.ndarray:
        a, b, _ = key.indices(self.n)
        out = np.zeros((b - a, *self.shape), np.uint8)
        for start, seg in self.segments:
            lo, hi = max(a, start), min(b, start + len(seg))
            if lo < hi:
                out[lo - a : hi - a] = seg[lo - start : hi - start]
        return out


def _place(frames, actions, rewards, onsets, run: RunStimulus, states=None):
    """Put replays on the run timeline; returns (lazy frames, actions, rewards, state or None)."""
    if not (len(frames) == len(actions) == len(rewards) == len(onsets)):
        raise ValueError(
            "RunStimulus needs one frames, actions and rewards array per onset; got "
            f"{len(frames)}, {len(actions)}, {len(rewards)} for {len(onsets)} onsets."
        )
    if states is not None and len(states) != len(onsets):
        raise ValueError(f"RunStimulus.state needs one array per onset; got {len(states)} for {len(onsets)} onsets.")
    if len(onsets) == 0:
        raise ValueError("RunStimulus.onsets is empty; give at least one replay.")
    n = run.n_frames
    for f, a, r in zip(frames, actions, rewards):
        _check_streams(f, a, r)
    shapes = {f.shape[1:] for f in frames}
    buttons = {np.asarray(a).shape[1] for a in actions}
    if len(shapes) > 1 or len(buttons) > 1:
        raise ValueError(
            f"All replays of a run must share frame shape and button count; got frame "
            f"shapes {sorted(shapes)} and button counts {sorted(buttons)}."
        )
    starts = [int(round(float(o) * run.fps)) for o in onsets]
    order = np.argsort(starts, kind="stable")
    segments = []
    tl_actions = np.zeros((n, buttons.pop()), bool)
    tl_rewards = np.zeros(n, np.float32)
    tl_state = None if states is None else np.zeros((n, len(gamestate.OBJECT_VARIABLES)), np.float32)
    prev_end = -1
    for i in order:
        start, onset = starts[i], onsets[i]
        if start < 0 or start >= n:
            raise ValueError(
                f"RunStimulus.onsets[{i}] = {onset!r} s is outside the run [0, {run.duration} s)."
            )
        if start < prev_end:
            raise ValueError(
                f"RunStimulus.onsets[{i}] = {onset!r} s starts before the previous replay "
                "ends; replays must not overlap."
            )
        stop = min(n, start + len(frames[i]))
        segments.append((start, frames[i][: stop - start]))
        tl_actions[start:stop] = np.asarray(actions[i])[: stop - start]
        tl_rewards[start:stop] = np.asarray(rewards[i])[: stop - start]
        if tl_state is not None:
            tl_state[start:stop] = _check_state(states[i], len(frames[i]))[: stop - start]
        prev_end = start + len(frames[i])
    return _Timeline(segments, n, shapes.pop()), tl_actions, tl_rewards, tl_state


def hrf_features(
    features: dict[str, np.ndarray], n_vols: int, tr: float = 1.49, fps: float = 60.0
) -> dict[str, np.ndarray]:
    """HRF-convolved features sampled at the volume times.

    Each per-frame feature is averaged into 0.1 s bins, convolved with nilearn's SPM HRF
    at that resolution and linearly interpolated at the middle of each volume,
    ``t_k = (k + 1/2) * tr``. Time beyond the stream counts as blank (0).

    Parameters
    ----------
    features : dict of str to array of shape (n_frames,)
        As returned by :func:`stimulus_features`.
    n_vols : int
        Number of volumes.
    tr : float, default=1.49
    fps : float, default=60.0

    Returns
    -------
    dict of str to array of shape (n_vols,), float64
    """
    names = list(features)
    if not names:
        return {}
    x = np.stack([np.asarray(features[k], np.float64) for k in names], axis=1)  # (n, F)
    n = len(x)
    bins = (np.arange(n) / fps / _FINE_DT + 1e-9).astype(np.int64)
    n_fine = max(int(bins[-1]) + 1 if n else 0, int(math.ceil(n_vols * tr / _FINE_DT)) + 2)
    counts = np.bincount(bins, minlength=n_fine).astype(np.float64)
    fine = np.zeros((n_fine, x.shape[1]))
    np.add.at(fine, bins, x)
    fine /= np.maximum(counts, 1)[:, None]  # (n_fine, F) bin means
    from nilearn.glm.first_level import spm_hrf  # here, not at import: trials load this module, never the HRF

    hrf = spm_hrf(_FINE_DT, oversampling=1, time_length=_HRF_LENGTH)
    conv = oaconvolve(fine, hrf[:, None], axes=0)[:n_fine]  # (n_fine, F)
    pos = ((np.arange(n_vols) + 0.5) * tr) / _FINE_DT - 0.5  # in fine-bin-centre units
    i0 = np.clip(np.floor(pos).astype(np.int64), 0, n_fine - 2)
    frac = (pos - i0)[:, None]
    sampled = (1 - frac) * conv[i0] + frac * conv[i0 + 1]  # (n_vols, F)
    return {k: sampled[:, j] for j, k in enumerate(names)}


# --------------------------------------------------------------------------- parcels


def _seed_sequence(subject: str, seed: int, stream: int) -> np.random.SeedSequence:
    digest = int.from_bytes(hashlib.sha256(subject.encode()).digest()[:8], "little")
    return np.random.SeedSequence([int(seed), digest], spawn_key=(stream,))


def _type_counts(fractions: dict[str, float], n: int) -> dict[str, int]:
    """Parcels per type, rounded by largest remainder (ties in PARCEL_TYPES order)."""
    raw = {k: float(fractions[k]) * n for k in PARCEL_TYPES}
    counts = {k: int(math.floor(v + 1e-9)) for k, v in raw.items()}
    order = sorted(PARCEL_TYPES, key=lambda k: -(raw[k] - counts[k]))
    for k in order[: n - sum(counts.values())]:
        counts[k] += 1
    return counts


def make_parcels(
    subject: str, feature_names: Sequence[str], config: SimBrainConfig | None = None
) -> list[Parcel]:
    """Draw the parcels of one subject.

    Types come from ``config.fractions`` in :data:`PARCEL_TYPES` order. Each signal parcel
    mixes 1, 2 or 3 (probabilities 0.5, 0.35, 0.15) distinct features of its type with
    Dirichlet(1) weights and gets a log-uniform SNR in ``config.snr_range``.

    Parameters
    ----------
    subject : str
        Subject name; seeds the draw together with ``config.seed``.
    feature_names : sequence of str
        Features that may drive parcels (keys of :func:`stimulus_features`).
    config : SimBrainConfig, default=SimBrainConfig()

    Returns
    -------
    list of Parcel, length ``config.n_parcels``

    Raises
    ------
    ValueError
        If a type has parcels but no feature of that type is available.
    """
    config = SimBrainConfig() if config is None else config
    if not isinstance(subject, str) or not subject:
        raise ValueError(f"subject must be a non-empty string such as 'sub-01'; got {subject!r}.")
    rng = np.random.default_rng(_seed_sequence(subject, config.seed, 0))
    pools = {k: sorted(f for f in feature_names if feature_type(f) == k) for k in PARCEL_TYPES}
    counts = _type_counts(config.fractions, config.n_parcels)
    lo, hi = np.log(config.snr_range)
    parcels: list[Parcel] = []
    for kind in PARCEL_TYPES:
        if kind != "none" and counts[kind] and not pools[kind]:
            raise ValueError(
                f"{counts[kind]} '{kind}' parcels were asked for but the stimulus has no "
                f"varying {kind} feature; set SimBrainConfig.fractions['{kind}'] = 0 or use "
                "a stimulus that drives it."
            )
        for _ in range(counts[kind]):
            idx = len(parcels)
            if kind == "none":
                parcels.append(Parcel(f"p{idx:02d}-none", "none", (), (), 0.0))
                continue
            pool = pools[kind]
            k = min(int(rng.choice(_MIX_SIZES, p=_MIX_PROBS)), len(pool))
            feats = rng.choice(len(pool), size=k, replace=False)
            weights = rng.dirichlet(np.ones(k))
            order = np.argsort(-weights, kind="stable")
            names = tuple(pool[feats[i]] for i in order)
            snr = float(np.exp(rng.uniform(lo, hi)))
            parcels.append(
                Parcel(
                    f"p{idx:02d}-{kind}-{names[0]}",
                    kind,
                    names,
                    tuple(float(weights[i]) for i in order),
                    snr,
                )
            )
    return parcels


# --------------------------------------------------------------------------- simulation


def _noise(n_vols: int, n_parcels: int, rng: np.random.Generator, config: SimBrainConfig):
    """AR(1) noise of stationary variance 1 plus cosine drift; (n_vols, n_parcels)."""
    phi = config.ar1
    eps = rng.standard_normal((n_vols, n_parcels))
    eps[0] /= math.sqrt(1 - phi**2)  # first sample drawn from the stationary law
    ar = lfilter([math.sqrt(1 - phi**2)], [1.0, -phi], eps, axis=0)
    order = min(config.drift_order, max(n_vols - 1, 1))
    t = np.arange(n_vols) + 0.5
    cosines = np.cos(np.pi * np.outer(t, np.arange(1, order + 1)) / n_vols)  # (n_vols, K)
    coef = rng.standard_normal((order, n_parcels))
    drift = config.drift_amplitude * math.sqrt(2.0 / order) * cosines @ coef
    return ar + drift


def _signals(
    tr_feats: list[dict[str, np.ndarray]], parcels: list[Parcel], config: SimBrainConfig
) -> list[np.ndarray]:
    """Clean signal per run, each (n_vols_run, n_parcels), scaled on the pooled runs."""
    used = sorted({f for p in parcels for f in p.features})
    col = {f: j for j, f in enumerate(used)}
    runs = []
    for feats in tr_feats:
        n_vols = len(next(iter(feats.values())))
        x = np.stack([feats[f] for f in used], axis=1) if used else np.zeros((n_vols, 0))
        runs.append(x - x.mean(0))  # centred per run: BOLD has no absolute baseline
    n_total = sum(len(x) for x in runs)
    scale = np.sqrt(sum((x**2).sum(0) for x in runs) / n_total)  # pooled RMS, (F,)
    scale[scale == 0] = 1.0
    weights = np.zeros((len(used), len(parcels)))
    for p_i, p in enumerate(parcels):
        for f, w in zip(p.features, p.weights):
            weights[col[f], p_i] = w / scale[col[f]]
    raw = [x @ weights for x in runs]  # (n_vols_run, P) each
    power = sum((r**2).sum(0) for r in raw) / n_total  # (P,)
    snr = np.array([p.snr for p in parcels])
    with np.errstate(divide="ignore", invalid="ignore"):
        gain = np.where(power > 0, np.sqrt(snr * config.noise_variance / power), 0.0)
    return [r * gain for r in raw]


def run_tr_features(run: RunStimulus, config: SimBrainConfig) -> dict[str, np.ndarray]:
    """Every feature of one run (:func:`stimulus_features` on its timeline), HRF-convolved at its
    volume times; (n_vols,) each. What the parcels of that run are made from."""
    feats = _timeline_features(run, config.grid)
    return hrf_features(feats, run.n_volumes(config.tr), config.tr, run.fps)


def _simulate(
    runs: list[RunStimulus], parcels: list[Parcel], rngs: list[np.random.Generator],
    config: SimBrainConfig, tr_feats: list[dict[str, np.ndarray]] | None = None,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    if tr_feats is None:
        tr_feats = [run_tr_features(r, config) for r in runs]
    missing = sorted({f for p in parcels for f in p.features} - set(tr_feats[0]))
    if missing:
        raise ValueError(
            f"parcels use features {missing} that this stimulus does not have; draw the "
            "parcels with make_parcels() from this stimulus's feature names."
        )
    signals = _signals(tr_feats, parcels, config)
    bolds = [s + _noise(len(s), len(parcels), g, config) for s, g in zip(signals, rngs)]
    return [b.astype(np.float32) for b in bolds], [s.astype(np.float32) for s in signals]


def simulate_run(
    frames: np.ndarray | Sequence[np.ndarray],
    actions: np.ndarray | Sequence[np.ndarray],
    rewards: np.ndarray | Sequence[np.ndarray],
    n_vols: int,
    parcels: list[Parcel],
    rng: np.random.Generator,
    config: SimBrainConfig | None = None,
    onsets: Sequence[float] | None = None,
    fps: float = 60.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Simulate one run on its own.

    The signal is scaled on this run alone (so ``var(signal) = snr * (1 + drift^2)``
    exactly here); :func:`simulate_subject` scales on all runs of a subject instead, so
    that a parcel's gain is the same in every run.

    Parameters
    ----------
    frames, actions, rewards
        As in :class:`RunStimulus` (one stream, or one array per replay with ``onsets``).
    n_vols : int
        Number of volumes; the run lasts ``n_vols * tr`` seconds.
    parcels : list of Parcel
        From :func:`make_parcels`.
    rng : numpy.random.Generator
        Source of the noise.
    config : SimBrainConfig, default=SimBrainConfig()
        Gives ``tr``, ``grid``, ``ar1``, ``drift_amplitude``, ``drift_order``.
    onsets : sequence of float or None, default=None
        Replay start times (s); blank screen between replays.
    fps : float, default=60.0

    Returns
    -------
    bold : array of shape (n_vols, n_parcels), float32
    signal : array of shape (n_vols, n_parcels), float32
    """
    config = SimBrainConfig() if config is None else config
    if not isinstance(n_vols, (int, np.integer)) or n_vols < 2:
        raise ValueError(f"n_vols must be an integer >= 2; got {n_vols!r}.")
    run = RunStimulus(frames, actions, rewards, fps, onsets, n_vols * config.tr)
    bold, signal = _simulate([run], parcels, [rng], config)
    return bold[0], signal[0]


def simulate_subject(
    runs: list[RunStimulus], subject: str, config: SimBrainConfig | None = None
) -> SubjectData:
    """Simulate all runs of one subject.

    Parcels are drawn by :func:`make_parcels` from the features that vary over these runs
    (a button never pressed drives no parcel). Each run has ``floor(duration / tr)``
    volumes and its own noise stream; the seed is ``(config.seed, subject, run index)``.

    Parameters
    ----------
    runs : list of RunStimulus
    subject : str
        E.g. one of :data:`SUBJECTS`.
    config : SimBrainConfig, default=SimBrainConfig()

    Returns
    -------
    SubjectData
    """
    config = SimBrainConfig() if config is None else config
    if not runs:
        raise ValueError("runs is empty; pass at least one RunStimulus.")
    for i, run in enumerate(runs):
        if not isinstance(run, RunStimulus):
            raise TypeError(f"runs[{i}] must be a RunStimulus; got {type(run).__name__}.")
        if run.n_volumes(config.tr) < 2:
            raise ValueError(
                f"runs[{i}] lasts {run.duration:g} s, less than 2 volumes at tr={config.tr}; "
                "give longer runs."
            )
    tr_feats = [run_tr_features(r, config) for r in runs]
    for i, feats in enumerate(tr_feats[1:], start=1):
        if set(feats) != set(tr_feats[0]):
            raise ValueError(
                f"runs[{i}] has features {sorted(set(feats) ^ set(tr_feats[0]))} that runs[0] "
                "lacks or the reverse; give every run the same number of buttons."
            )
    live = [f for f in tr_feats[0] if any(np.ptp(t[f]) > 0 for t in tr_feats)]
    parcels = make_parcels(subject, live, config)
    rngs = [
        np.random.default_rng(_seed_sequence(subject, config.seed, 1 + i)) for i in range(len(runs))
    ]
    bold, signal = _simulate(runs, parcels, rngs, config, tr_feats)
    return SubjectData(subject, bold, signal, parcels, config)
