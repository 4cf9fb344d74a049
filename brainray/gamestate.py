"""Game state: object-level variables of Airstriker read from its native-resolution frames.

The low-level features of :mod:`brainray.simbrain` (luminance, contrast, motion per
receptive field) are linear in the pixels, so any random projection of the current tokens
already carries them: every model reaches that floor. A model that has *learned* the game
should also represent its latent state: where the player's ship is, how many enemies and
shots there are, how close the nearest threat is, and what is about to happen. This module
measures that state from the emulator's native 224 x 320 frames, before they are resized,
so the simulated brain can have parcels driven by it. Nothing here depends on a brainray
model: the variables are functions of the stimulus and the game only.

The detector knows Airstriker's palette (the background is black, checked on stable-retro's
``best.bk2``): the player's ship is the large white/grey sprite in the bottom rows, enemy
ships are red sprites of at least 12 pixels (at half resolution), enemy shots are green
dots, the player's shots are small red dots above the ship. Frames are read at half
resolution (every other row and column), which keeps every sprite and costs about 1 ms per
frame.

Per-frame variables (:data:`OBJECT_VARIABLES`, in this order):

- ``ship_x``: the ship's column, 0 (left) to 1 (right); the last seen value while it is
  away (exploding, respawning);
- ``ship_present``: 1 while the ship is on screen;
- ``n_enemies``, ``n_shots``, ``n_bullets``: enemy ships, enemy shots, the player's shots;
- ``enemy_y``: mean row of the enemy ships, 0 (top) to 1 (bottom); 0 when there are none;
- ``threat``: closeness of the nearest enemy or enemy shot to the ship,
  ``1 / (1 + d / 32)`` with ``d`` in native pixels; 0 when there is none or no ship;
- ``aim``: how well the ship lines up under an enemy, ``exp(-|dx| / 16)`` for the nearest
  enemy column ``dx`` away (native pixels); 0 without enemies or ship.

:func:`anticipation` adds what is about to happen, from the whole stream: a reward (an enemy
destroyed) within the next second, and the ship lost within the next two seconds.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = [
    "ANTICIPATION_VARIABLES", "FAST_MOMENTS", "FAST_VARIABLES", "GAMES", "OBJECT_VARIABLES", "STATE_MOMENTS", "Tracker",
    "anticipation", "fast_signals", "object_state",
]

#: The games whose screens this detector reads.
GAMES = ("Airstriker-Genesis-v0",)

OBJECT_VARIABLES = (
    "ship_x", "ship_present", "n_enemies", "n_shots", "n_bullets", "enemy_y", "threat", "aim",
)
ANTICIPATION_VARIABLES = ("reward_ahead", "loss_ahead")
#: Mean and standard deviation of every state variable over Airstriker gameplay: the fixed
#: scale on which the simulated brain's ``mixed`` units read the state, the same in every run
#: and subject, as a neuron's tuning is. Measured over the game frames of the demo's 8 stimulus
#: runs (101,884 frames of the scripted agent, 2026-12-02); a run's own means moved by at most
#: 0.11 sd from these (ship_x).
STATE_MOMENTS = {
    "ship_x": (0.276, 0.156), "ship_present": (0.84, 0.366), "n_enemies": (1.22, 1.35),
    "n_shots": (1.07, 1.34), "n_bullets": (12.1, 6.07), "enemy_y": (0.153, 0.174), "threat": (0.104, 0.148),
    "aim": (0.0279, 0.103), "reward_ahead": (0.325, 0.468), "loss_ahead": (0.322, 0.467),
}

#: The game's fast events: the ship's velocity, the player firing, an enemy firing, an enemy
#: destroyed (reward), an enemy appearing. Each lasts a few frames, far shorter than a TR.
FAST_VARIABLES = ("move", "fire", "enemy_fire", "hit", "spawn")
#: Mean and standard deviation of each of :data:`FAST_VARIABLES` (after the 0.25 s box of
#: :func:`fast_signals`) over the game frames of the demo's stimulus runs: a fixed scale, as for
#: :data:`STATE_MOMENTS`. Measured over the 107,279 game frames of the demo's 8 stimulus runs, 2026-12-04
#: (the scripted agent fires nearly all the time; enemies fire, die and appear in 11-19 % of frames).
FAST_MOMENTS = {
    "move": (-0.00515, 0.449), "fire": (22.6, 14.0), "enemy_fire": (0.652, 1.91), "hit": (0.45, 1.34), "spawn": (1.0, 2.29),
}
_FAST_BOX = 0.25  # s: the window over which a fast event is counted

_NATIVE = (224, 320)  # Genesis frame
_HUD_ROWS = 6  # half-resolution rows of the score line at the top
_SHIP_TOP = 85  # half-resolution row where the ship's band begins (native 170)
_SHIP_MIN = 40  # half-resolution pixels of the ship sprite (it has about 67)
_ENEMY_MIN = 12  # half-resolution red pixels of an enemy ship (about 50 in two halves); shots have 2
_MERGE = 2  # dilation steps that join the parts of one sprite (an enemy ship has two red halves)
_IN_FRAME = np.zeros((3, 3, 3), bool)
_IN_FRAME[1] = True  # 8-connected within a frame, never across frames


def _blobs(mask: np.ndarray, merge: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Blobs of a stack of masks (n, h, w): frame index (k,), size (k,), centre (k, 2)."""
    grown = ndimage.binary_dilation(mask, _IN_FRAME, iterations=merge) if merge else mask
    labels, k = ndimage.label(grown, structure=_IN_FRAME)
    if k == 0:
        return np.zeros(0, np.int64), np.zeros(0), np.zeros((0, 2))
    where = np.nonzero(mask)  # sizes and centres count the sprite's pixels, not the dilation
    lab = labels[where] - 1
    sizes = np.bincount(lab, minlength=k).astype(np.float64)
    keep = sizes > 0
    frame = np.bincount(lab, where[0], minlength=k)[keep] / sizes[keep]
    centres = np.stack([np.bincount(lab, c, minlength=k)[keep] / sizes[keep] for c in where[1:]], axis=1)
    return frame.round().astype(np.int64), sizes[keep], centres


def object_state(frames: np.ndarray, last_x: float = 0.5) -> np.ndarray:
    """Object-level variables of native Airstriker frames.

    Parameters
    ----------
    frames : array of shape (n, 224, 320, 3), uint8
        Native emulator frames (a chunk of a stream is fine).
    last_x : float, default=0.5
        The ship column before the chunk, kept while the ship is away.

    Returns
    -------
    array of shape (n, len(OBJECT_VARIABLES)), float32
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[1:] != (*_NATIVE, 3) or frames.dtype != np.uint8:
        raise ValueError(
            f"object_state needs native Airstriker frames of shape (n, {_NATIVE[0]}, {_NATIVE[1]}, 3) "
            f"uint8; got {frames.shape} {frames.dtype}. Pass the frames before resizing."
        )
    n = len(frames)
    half = frames[:, _HUD_ROWS * 2 :: 2, ::2]  # (n, 106, 160, 3): half resolution, HUD cut
    r, g, b = half[..., 0], half[..., 1], half[..., 2]
    h, w = r.shape[1:]
    top = _SHIP_TOP - _HUD_ROWS
    white = (r > 100) & (g > 100) & (b > 100)  # yellow text has no blue, stars no red
    red = (r > 100) & (g == 0) & (b == 0)
    green = (r == 0) & (g > 100) & (b == 0)

    f, size, centre = _blobs(white[:, top:])
    ship = size >= _SHIP_MIN
    ship_rc = np.full((n, 2), np.nan)
    order = np.argsort(size[ship])  # the largest blob of a frame is written last
    ship_rc[f[ship][order]] = centre[ship][order] + (top, 0)
    present = np.isfinite(ship_rc[:, 0])
    x = np.where(present, ship_rc[:, 1] / (w - 1), np.nan)
    seen = np.maximum.accumulate(np.where(present, np.arange(n), -1))  # last frame with a ship
    x = np.where(seen >= 0, x[np.maximum(seen, 0)], last_x)

    fe, se, ce = _blobs(red[:, :top], merge=_MERGE)
    fe, ce = fe[se >= _ENEMY_MIN], ce[se >= _ENEMY_MIN]
    fs, ss, cs = _blobs(red[:, :top])
    fb = fs[ss < _ENEMY_MIN / 4]  # single shots, not parts of an enemy
    fg, _, cg = _blobs(green, merge=_MERGE)
    n_enemies = np.bincount(fe, minlength=n)
    enemy_y = np.bincount(fe, ce[:, 0], minlength=n) / np.maximum(n_enemies, 1) / (h - 1)

    threat = np.zeros(n)
    aim = np.zeros(n)
    for frame, rc in ((fe, ce), (fg, cg)):
        d = 2 * np.sqrt(((rc - ship_rc[frame]) ** 2).sum(1))  # native pixels; NaN without a ship
        ok = np.isfinite(d)
        np.maximum.at(threat, frame[ok], 1.0 / (1.0 + d[ok] / 32.0))
    dx = 2 * np.abs(ce[:, 1] - ship_rc[fe, 1])
    ok = np.isfinite(dx)
    np.maximum.at(aim, fe[ok], np.exp(-dx[ok] / 16.0))
    return np.stack([
        x, present, n_enemies, np.bincount(fg, minlength=n), np.bincount(fb, minlength=n),
        enemy_y, threat, aim,
    ], axis=1).astype(np.float32)


class Tracker:
    """:func:`object_state` over the consecutive chunks of one stream: the ship's last seen
    column carries over from chunk to chunk. Pass it as ``gameplay.replay(observe=...)``."""

    def __init__(self) -> None:
        self.last_x = 0.5

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        out = object_state(frames, self.last_x)
        if len(out):
            self.last_x = float(out[-1, 0])
        return out


def _streams(who: str, state, rewards, in_game, dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``state`` (n, len(OBJECT_VARIABLES)) and ``rewards`` (n,) as ``dtype``, checked, and the
    game mask (all frames by default)."""
    state = np.asarray(state, dtype)
    rewards = np.asarray(rewards, dtype)
    if state.ndim != 2 or state.shape[1] != len(OBJECT_VARIABLES) or len(rewards) != len(state):
        raise ValueError(
            f"{who} needs state (n, {len(OBJECT_VARIABLES)}) and rewards (n,); got {state.shape} and {rewards.shape}."
        )
    return state, rewards, np.ones(len(state), bool) if in_game is None else np.asarray(in_game, bool)


def anticipation(
    state: np.ndarray, rewards: np.ndarray, fps: float = 60.0, in_game: np.ndarray | None = None
) -> np.ndarray:
    """What is about to happen, per frame: (n, len(ANTICIPATION_VARIABLES)), float32.

    ``reward_ahead``: 1 if a reward comes within the next second (frames t+1 .. t+fps);
    ``loss_ahead``: 1 if the ship disappears within the next two seconds. Both look at the
    stream's own future, which a model that predicts the game may represent and a model of
    the current frame cannot. ``in_game`` (n,) marks the frames with a game on the screen
    (default: all): both are 0 elsewhere, and a replay that ends is not a ship lost.
    """
    state, rewards, game = _streams("anticipation", state, rewards, in_game, np.float32)
    present = state[:, OBJECT_VARIABLES.index("ship_present")]
    lost = np.zeros(len(state), np.float32)
    lost[1:] = (present[:-1] > 0) & (present[1:] == 0) & game[1:]
    ahead = np.stack([_ahead(rewards > 0, int(fps)), _ahead(lost > 0, int(2 * fps))], axis=1)
    return ahead * game[:, None]


def _ahead(events: np.ndarray, window: int) -> np.ndarray:
    """1 where an event happens within the next ``window`` frames (excluding now)."""
    c = np.concatenate([np.cumsum(events[::-1].astype(np.int64))[::-1], [0]])  # c[t] = events from t on
    t = np.arange(len(events))
    count = c[np.minimum(t + 1, len(events))] - c[np.minimum(t + 1 + window, len(events))]
    return (count > 0).astype(np.float32)


def fast_signals(
    state: np.ndarray, rewards: np.ndarray, fps: float = 60.0, in_game: np.ndarray | None = None
) -> np.ndarray:
    """The game's fast events per frame, each counted over a 0.25 s box: (n, len(FAST_VARIABLES)).

    ``move``: the ship's velocity (screen widths per second); ``fire``, ``enemy_fire``,
    ``spawn``: how many of the player's shots, enemy shots and enemy ships appeared;
    ``hit``: rewards (enemies destroyed). A change between two frames counts only when both
    show a game (``in_game``, default all), so a replay's start or end is no event. These are
    events of the frame rate, not of the TR: their conjunctions (``simbrain``'s ``fast``
    parcels) are what the pixels' slow statistics at the TR do not carry.
    """
    state, rewards, game = _streams("fast_signals", state, rewards, in_game, np.float64)
    both = np.zeros(len(state), bool)
    both[1:] = game[1:] & game[:-1]
    col = {v: state[:, j] for j, v in enumerate(OBJECT_VARIABLES)}

    def change(x: np.ndarray) -> np.ndarray:
        d = np.zeros(len(x))
        d[1:] = np.diff(x)
        return d * both

    present = both & (col["ship_present"] > 0) & (np.r_[0.0, col["ship_present"][:-1]] > 0)
    per_frame = np.stack([  # rates: per second
        change(col["ship_x"]) * present,
        np.maximum(change(col["n_bullets"]), 0),
        np.maximum(change(col["n_shots"]), 0),
        (rewards > 0) * game,
        np.maximum(change(col["n_enemies"]), 0),
    ], axis=1) * fps
    width = max(1, int(round(_FAST_BOX * fps)))
    box = np.ones(width) / width  # the mean rate over the window
    out = np.stack([np.convolve(per_frame[:, j], box, mode="same") for j in range(per_frame.shape[1])], axis=1)
    return (out * game[:, None]).astype(np.float32)
