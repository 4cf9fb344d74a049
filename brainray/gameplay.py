"""Gameplay: play, record and replay stable-retro games as ``.bk2`` movies.

This is the first stage of the data flow (see DESIGN.md). A play of a game is stored
as a ``.bk2`` movie: a zip of the button presses (``Input Log.txt``), a header
(``Header.txt``) and the emulator state at the start (``Core.bin``). Frames are never
stored by this stage; they are made again, bit for bit, by replaying the movie in the
emulator. CNeuroMod's shinobi gamelogs and the plays recorded here (:func:`record_play`)
go through the same :func:`replay`. :func:`record_replay` records a play and returns its
replay from the same emulator pass (the emulator is deterministic), for plays whose frames
are needed at once.

The replay follows stable-retro's ``scripts/playback_movie.py``:

1. open the movie and call ``movie.step()`` once: the first input line is the one
   written by ``env.reset()`` while recording, and the emulator already stepped it;
2. make the env with ``State.NONE``, all buttons (``Actions.ALL``) and no renderer,
   set ``env.initial_state = movie.get_state()`` and ``reset()``;
3. for every remaining input line: ``movie.step()``, read ``movie.get_key(button,
   player)`` for every button and player, and take one ``env.step``. Each step gives
   one frame at 60 Hz.

stable-retro allows one emulator per process, so every function here closes its env,
also on error.

Measured on 2 shared CPU cores (stable-retro 1.0.1, load ~4): 10,000 Airstriker frames
(7 plays of the scripted policy) record in 8.5 s (~1,200 frames/s) and replay in
10.9 s (~900 frames/s, 2.15 GB of native frames) or 9.6 s with ``size=128``. Without
contention the emulator alone runs at ~1,100-2,000 steps/s.

References: stable-retro (Farama Foundation), ``stable_retro/scripts/playback_movie.py``
and ``stable_retro/retro_env.py`` (``record_movie``, ``reset``, ``step``).
"""

from __future__ import annotations

import os
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import stable_retro
from stable_retro import Actions, State

__all__ = [
    "DEFAULT_GAME",
    "POLICIES",
    "Replay",
    "make_env",
    "record_play",
    "record_replay",
    "replay",
    "replay_bk2",
    "resolve_game",
]

DEFAULT_GAME = "Airstriker-Genesis-v0"  # ships with stable-retro: no ROM import needed
POLICIES = ("scripted", "random")
_IMPORT_HINT = "python -m stable_retro.import /path/to/your/roms"
_BK2_ENTRIES = ("Input Log.txt", "Header.txt")  # Core.bin is absent for power-on movies
_CHUNK = 256  # frames resized at once when replay(..., size=...) is used


@dataclass
class Replay:
    """Frames, button presses and rewards of one replayed movie.

    Row ``i`` of every array belongs to emulator step ``i``: ``actions[i]`` are the
    buttons held during the step, ``frames[i]`` is the screen after it and
    ``rewards[i]`` the reward it gave.

    Attributes
    ----------
    frames : ndarray of shape (n_frames, height, width, 3), dtype uint8
        Screens at 60 Hz, native resolution (224 x 320 for Genesis games) unless the
        replay was asked for another ``size``.
    actions : ndarray of shape (n_frames, n_players * n_buttons), dtype bool
        Buttons pressed at each frame, columns in the order of ``buttons``.
    rewards : ndarray of shape (n_frames,), dtype float32
        Reward of each step, from the game's ``scenario.json``.
    buttons : list of str
        Name of each column of ``actions`` (``env.buttons``; with more than one
        player, names are prefixed ``"P1 "``, ``"P2 "``, ...).
    game : str
        The stable-retro game that was replayed, e.g. ``"Airstriker-Genesis-v0"``.
    observed : ndarray of shape (n_frames, ...) or None
        What ``replay(..., observe=...)`` measured on the native frames; None without it.
    """

    frames: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    buttons: list[str] = field(default_factory=list)
    game: str = DEFAULT_GAME
    observed: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.frames)


# --------------------------------------------------------------------------- env


def _has_integration(game: str) -> bool:
    return stable_retro.data.get_file_path(game, "rom.sha") is not None


def resolve_game(game: str) -> str:
    """Map a game name to the name of a stable-retro integration.

    Old gym-retro names (``"Airstriker-Genesis"``, as written in the header of older
    ``.bk2`` files) become the stable-retro 1.0 names (``"Airstriker-Genesis-v0"``):
    ``-v0`` is appended when the plain name is unknown.

    Parameters
    ----------
    game : str
        Game name, with or without the ``-v0`` suffix.

    Returns
    -------
    str
        The integration name.

    Raises
    ------
    FileNotFoundError
        If stable-retro has no integration for the game under either name.
    """
    if _has_integration(game):
        return game
    if _has_integration(game + "-v0"):
        return game + "-v0"
    known = stable_retro.data.list_games()
    close = [g for g in known if game.split("-")[0].lower() in g.lower()][:5]
    hint = f" Similar names: {close}." if close else ""
    raise FileNotFoundError(
        f"stable-retro has no game named {game!r} (nor {game + '-v0'!r}).{hint} "
        "Check the spelling; `stable_retro.data.list_games()` lists all games."
    )


def make_env(
    game: str = DEFAULT_GAME,
    state: str | State | None = None,
    *,
    players: int = 1,
) -> stable_retro.RetroEnv:
    """Make a stable-retro env with every button and no renderer.

    Parameters
    ----------
    game : str, default="Airstriker-Genesis-v0"
        Game name; old names without ``-v0`` are mapped (:func:`resolve_game`).
    state : str or stable_retro.State or None, default=None
        Save state to start from. ``None`` means the game's default state (for
        Airstriker, ``"Level1"``); ``State.NONE`` means power-on.
    players : int, default=1
        Number of players.

    Returns
    -------
    stable_retro.RetroEnv
        Env with ``use_restricted_actions=Actions.ALL`` (a MultiBinary action of
        ``players * len(env.buttons)`` buttons) and ``render_mode=None``. Call
        ``env.close()`` when done: stable-retro allows one emulator per process.

    Raises
    ------
    FileNotFoundError
        If the game is unknown, or its ROM has not been imported (for example
        ``ShinobiIIIReturnOfTheNinjaMaster-Genesis``); the message says how to import it.
    """
    name = resolve_game(game)
    try:
        stable_retro.data.get_romfile_path(name)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"The ROM of game {name!r} is not installed: stable-retro ships only a few "
            f"ROMs (e.g. {DEFAULT_GAME!r}). Import yours with `{_IMPORT_HINT}`; it finds "
            "ROMs by their SHA-1 in rom.sha."
        ) from None
    return stable_retro.make(
        name,
        state=State.DEFAULT if state is None else state,
        use_restricted_actions=Actions.ALL,
        render_mode=None,  # the default "human" opens a pyglet window and fails headless
        players=players,
    )


# ------------------------------------------------------------------------ replay


def _check_bk2(path: Path) -> None:
    """Raise a clear error if ``path`` is missing or not a readable bk2 zip."""
    if not path.is_file():
        raise FileNotFoundError(f"bk2 movie {str(path)!r} does not exist; check the path.")
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"bk2 movie {str(path)!r} is not a zip archive (corrupt or truncated file); "
            "download or record it again."
        )
    try:
        with zipfile.ZipFile(path) as zf:
            missing = [e for e in _BK2_ENTRIES if e not in zf.namelist()]
            bad = zf.testzip()
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as err:
        raise ValueError(
            f"bk2 movie {str(path)!r} cannot be read ({err}); download or record it again."
        ) from err
    if missing:
        raise ValueError(
            f"bk2 movie {str(path)!r} lacks {missing}; a bk2 holds 'Input Log.txt', "
            "'Header.txt' and usually 'Core.bin'. Download or record it again."
        )
    if bad is not None:
        raise ValueError(
            f"bk2 movie {str(path)!r} has a corrupt entry {bad!r} (CRC mismatch); "
            "download or record it again."
        )


def _open_movie(path: Path) -> stable_retro.Movie:
    try:
        return stable_retro.Movie(str(path))
    except RuntimeError as err:
        raise ValueError(f"stable-retro could not load bk2 movie {str(path)!r}: {err}") from err


def _count_steps(path: Path) -> int:
    """Number of env steps in a movie: its input lines minus the first one."""
    movie = _open_movie(path)
    n_lines = 0
    while movie.step():
        n_lines += 1
    movie.close()
    return max(n_lines - 1, 0)


def count_frames(path: str | os.PathLike) -> int:
    """Frames a ``.bk2`` replays to (its input lines minus the first), read without emulating."""
    path = Path(path)
    _check_bk2(path)
    return _count_steps(path)


def iter_replay(
    path: str | os.PathLike,
    game: str | None = None,
    *,
    size: int | tuple[int, int] | None = None,
    observe: Callable[[np.ndarray], np.ndarray] | None = None,
    chunk: int = _CHUNK,
) -> Iterator[Replay]:
    """Replay a ``.bk2`` movie chunk by chunk: consecutive :class:`Replay` pieces of up to
    ``chunk`` steps, in order, so that a stream never holds a whole play.

    The pieces, concatenated, are :func:`replay`'s result (arguments as there); each
    piece's ``observed`` holds its own rows. A movie of no steps gives one empty piece.
    """
    path = Path(path)
    _check_bk2(path)
    n = _count_steps(path)
    movie = _open_movie(path)
    movie.step()  # input line 0 belongs to env.reset() of the recording
    try:
        name = resolve_game(game if game is not None else movie.get_game())
        env = make_env(name, state=State.NONE, players=movie.players)
    except BaseException:
        movie.close()
        raise
    try:
        init = movie.get_state()
        if init:  # empty for a movie recorded from power-on
            env.initial_state = init
        obs, _ = env.reset()
        n_buttons, players = env.num_buttons, movie.players
        buttons = list(env.buttons)
        if players > 1:
            buttons = [f"P{p + 1} {b}" for p in range(players) for b in buttons]
        for first in range(0, max(n, 1), chunk):  # a movie of no steps gives one empty piece
            k = min(chunk, n - first)
            native = np.empty((k, *obs.shape), dtype=np.uint8)
            actions = np.zeros((k, players * n_buttons), dtype=bool)
            rewards = np.zeros(k, dtype=np.float32)
            for j in range(k):
                if not movie.step():
                    raise ValueError(
                        f"bk2 movie {str(path)!r} ended after {first + j} of {n} steps while replaying; "
                        "the file changed during the replay?"
                    )
                for p in range(players):
                    for b in range(n_buttons):
                        actions[j, p * n_buttons + b] = movie.get_key(b, p)
                obs, rew, _, _, _ = env.step(actions[j])
                rewards[j] = np.sum(rew)
                native[j] = obs
            yield _piece(native, actions, rewards, buttons, name, size, observe, obs)
    finally:
        env.close()
        movie.close()


def _piece(
    native: np.ndarray, actions: np.ndarray, rewards: np.ndarray, buttons: list[str], game: str,
    size: int | tuple[int, int] | None, observe: Callable[[np.ndarray], np.ndarray] | None, last: np.ndarray,
) -> Replay:
    """One chunk of a stream as a :class:`Replay`: its native frames resized to ``size`` and passed
    to ``observe`` (``last``: the latest screen, which gives an empty chunk its frame shape)."""
    if size is None:
        frames = native
    else:
        from brainray.video import resize_frames

        frames = resize_frames(native if len(native) else last[None], size)[: len(native)]
    observed = None if observe is None else np.asarray(observe(native))
    return Replay(frames=frames, actions=actions, rewards=rewards, buttons=buttons, game=game, observed=observed)


def _concat(pieces: list[Replay]) -> Replay:
    """The pieces of one stream, in order, as one :class:`Replay`."""
    observed = [p.observed for p in pieces if p.observed is not None]
    return Replay(
        frames=np.concatenate([p.frames for p in pieces]),
        actions=np.concatenate([p.actions for p in pieces]),
        rewards=np.concatenate([p.rewards for p in pieces]),
        buttons=pieces[0].buttons, game=pieces[0].game,
        observed=np.concatenate(observed) if observed else None,
    )


def replay(
    path: str | os.PathLike,
    game: str | None = None,
    *,
    size: int | tuple[int, int] | None = None,
    observe: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Replay:
    """Replay a ``.bk2`` movie in the emulator, exactly as it was recorded.

    Parameters
    ----------
    path : str or path-like
        The ``.bk2`` file.
    game : str or None, default=None
        Game to replay it in. ``None`` takes the name in the movie's header (old
        names such as ``"Airstriker-Genesis"`` are mapped to ``"...-v0"``).
    size : int or (int, int) or None, default=None
        If given, frames are resized on the fly with
        :func:`brainray.video.resize_frames` to ``(size, size)`` or ``(height,
        width)``, so a long movie never holds its native frames in memory.
    observe : callable or None, default=None
        Called on consecutive chunks of native frames, (k, height, width, 3) uint8, in
        order; it returns one row per frame, (k, ...). The rows, concatenated, are
        ``Replay.observed``: what is measured on the native screen before resizing
        (``brainray.gamestate.object_state``, for example).

    Returns
    -------
    Replay
        ``n_frames`` equals the number of input lines minus one (one env step per
        recorded frame after the initial ``movie.step()``); for the fixture
        ``airstriker-best.bk2`` that is 1782 frames of shape (224, 320, 3).

    Raises
    ------
    FileNotFoundError
        If the file is missing, the game is unknown or its ROM is not imported.
    ValueError
        If the file is not a readable bk2 (not a zip, truncated, entries missing).
    """
    return _concat(list(iter_replay(path, game, size=size, observe=observe)))


def record_replay(
    path: str | os.PathLike,
    n_frames: int,
    seed: int = 0,
    game: str = DEFAULT_GAME,
    policy: str = "scripted",
    *,
    size: int | tuple[int, int] | None = None,
    observe: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Replay:
    """Record a play as :func:`record_play` does and return ``replay(path, size=size,
    observe=observe)`` from the same emulator pass.

    The emulator is deterministic, so the screens seen while recording are the replay's, bit for
    bit (``tests/test_gameplay.py`` checks it): a stimulus play need not be emulated twice, which
    takes 0.71x the time (``benchmarks/stimulus_pass.py``). Native frames are held one chunk at a time, as in a replay.
    """
    pieces: list[Replay] = []
    native: list[np.ndarray] = []
    steps: list[tuple[np.ndarray, float]] = []
    meta: dict = {}

    def flush() -> None:
        actions = np.array([a for a, _ in steps], bool).reshape(len(steps), len(meta["buttons"]))
        rewards = np.array([r for _, r in steps], np.float32)
        stack = np.stack(native) if native else np.empty((0, *meta["last"].shape), np.uint8)
        pieces.append(_piece(stack, actions, rewards, meta["buttons"], meta["game"], size, observe, meta["last"]))
        native.clear()
        steps.clear()

    def on_step(frame: np.ndarray, step, buttons: list[str], name: str) -> None:
        meta.update(buttons=buttons, game=name, last=frame)
        if step is None:
            return
        native.append(frame.copy())
        steps.append(step)
        if len(native) == _CHUNK:
            flush()

    record_play(path, n_frames, seed=seed, game=game, policy=policy, on_step=on_step)
    if native or not pieces:
        flush()
    return _concat(pieces)


def replay_bk2(path: str | os.PathLike, game: str | None = None) -> np.ndarray:
    """Frames of a replayed ``.bk2``: ``replay(path, game).frames``.

    Returns
    -------
    ndarray of shape (n_frames, height, width, 3), dtype uint8
    """
    return replay(path, game).frames


# ----------------------------------------------------------------------- policies


class _RandomPersistent:
    """Random buttons, each combination held for 4 to 30 frames.

    START and MODE are never pressed: they pause the game or change its mode.
    """

    def __init__(self, buttons: list[str], seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.allowed = np.array([b not in ("START", "MODE") for b in buttons])
        self.action = np.zeros(len(buttons), dtype=bool)
        self.left = 0

    def __call__(self, t: int, obs: np.ndarray) -> np.ndarray:
        if self.left == 0:
            self.action = (self.rng.random(len(self.allowed)) < 0.3) & self.allowed
            self.left = int(self.rng.integers(4, 31))
        self.left -= 1
        return self.action


def _bright(rgb: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8 -> (h, w) bool: any channel above 60 (the background is black).

    ``np.maximum`` over the channels is 25x faster than ``rgb.max(-1)``.
    """
    return np.maximum(np.maximum(rgb[..., 0], rgb[..., 1]), rgb[..., 2]) > 60


class _ScriptedAirstriker:
    """A player for Airstriker that fires, wanders and dodges.

    - Fire: B is tapped (held 4 frames of every 8; holding it does not re-fire).
    - Wander: a goal column is drawn at random (seeded) every 30 to 120 frames and
      the ship steers to it, so plays of different seeds differ and keep moving.
    - Dodge: the ship is found on screen (bright pixels in rows 178-210, the
      densest 20-pixel-wide window) and anything bright in the 78 rows above it
      is a threat; if a threat is over the ship, it moves toward the clearest
      column within 60 pixels.

    With this policy a game lasts about 1,400 to 1,900 frames (3 lives), with a
    score of 180 to 400, like stable-retro's example movie ``best.bk2`` (1782
    frames, 200 points). The random policy dies about as fast but scores 40 to 80.
    """

    _SHIP_ROWS = slice(178, 210)
    _THREAT_ROWS = slice(100, 178)

    def __init__(self, buttons: list[str], seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.idx = {b: i for i, b in enumerate(buttons)}
        self.n = len(buttons)
        self.phase = int(self.rng.integers(0, 8))
        self.goal, self.next_goal, self.x = 160, 0, 160

    def __call__(self, t: int, obs: np.ndarray) -> np.ndarray:
        a = np.zeros(self.n, dtype=bool)
        a[self.idx["B"]] = (t + self.phase) % 8 < 4
        width = obs.shape[1]
        ship = _bright(obs[self._SHIP_ROWS]).sum(0)  # (W,)
        dens = np.convolve(ship, np.ones(20), "same")
        if dens.max() > 20:  # else the ship is exploding or respawning: keep last x
            self.x = int(np.argmax(dens))
        if t >= self.next_goal:
            self.goal = int(self.rng.integers(30, width - 30))
            self.next_goal = t + int(self.rng.integers(30, 121))
        threat = _bright(obs[self._THREAT_ROWS]).sum(0)  # (W,)
        threat = np.convolve(threat, np.ones(28), "same")
        if threat[self.x] > 3:
            lo, hi = max(24, self.x - 60), min(width - 24, self.x + 61)
            target = lo + int(np.argmin(threat[lo:hi]))
        else:
            target = self.goal
        if target < self.x - 4:
            a[self.idx["LEFT"]] = True
        elif target > self.x + 4:
            a[self.idx["RIGHT"]] = True
        return a


def _make_policy(policy: str, buttons: list[str], seed: int):
    """Policy object ``act(t, obs) -> (n_buttons,) bool`` by name (``POLICIES``)."""
    if policy == "random":
        return _RandomPersistent(buttons, seed)
    if policy == "scripted":
        return _ScriptedAirstriker(buttons, seed)
    raise ValueError(f"'policy' must be one of {POLICIES}; got {policy!r}.")


# ------------------------------------------------------------------------ record


def record_play(
    path: str | os.PathLike,
    n_frames: int,
    seed: int = 0,
    game: str = DEFAULT_GAME,
    state: str | State | None = None,
    policy: str = "scripted",
    *,
    on_frame: Callable[[np.ndarray], None] | None = None,
    on_step: Callable | None = None,
) -> Path:
    """Play a game with a policy and record the play as a ``.bk2`` movie.

    ``replay(path)`` gives back exactly the frames seen while recording. The play
    stops after ``n_frames`` steps or when the game is over (``terminated``),
    whichever comes first: a bk2 cannot hold an env reset, so a play never spans two
    games. Read the actual length from ``len(replay(path))``. With the scripted
    policy an Airstriker game lasts about 1,400 to 1,900 frames; record several
    seeds for more.

    Parameters
    ----------
    path : str or path-like
        Output ``.bk2`` file. Its folder is created. The movie is written to a
        temporary name and renamed when complete, so ``path`` is never half written.
    n_frames : int
        Maximum number of steps (frames at 60 Hz), at least 1.
    seed : int, default=0
        Seed of the policy; the emulator itself is deterministic.
    game : str, default="Airstriker-Genesis-v0"
        Game to play (see :func:`make_env`).
    state : str or stable_retro.State or None, default=None
        Save state to start from; ``None`` is the game's default state.
    policy : {"scripted", "random"}, default="scripted"
        ``"scripted"``: fires, wanders (seeded) and dodges what it sees on screen
        (Airstriker only). ``"random"``: random buttons held 4 to 30 frames each,
        never START or MODE.
    on_frame : callable or None, default=None
        Called with each frame, array of shape (height, width, 3), as it is
        recorded; e.g. to hash or store the frames.
    on_step : callable or None, default=None
        Called as ``on_step(frame, step, buttons, game)``: first with ``step=None`` and the
        screen after reset, then after each step with ``step = (buttons held, reward)``.
        :func:`record_replay` builds the replay from it.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ValueError
        If ``n_frames < 1``, ``path`` does not end in ``.bk2``, ``policy`` is
        unknown, or ``policy="scripted"`` is asked for a game other than Airstriker.
    FileNotFoundError
        If the game is unknown or its ROM is not imported.
    """
    path = Path(path)
    if path.suffix != ".bk2":
        raise ValueError(f"'path' must end in '.bk2'; got {str(path)!r}.")
    if int(n_frames) != n_frames or n_frames < 1:
        raise ValueError(f"'n_frames' must be a positive integer; got {n_frames!r}.")
    if policy not in POLICIES:
        raise ValueError(f"'policy' must be one of {POLICIES}; got {policy!r}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.partial.bk2")
    name = resolve_game(game)
    if policy == "scripted" and not name.startswith("Airstriker-Genesis"):
        raise ValueError(
            f"policy='scripted' is written for {DEFAULT_GAME!r}, not {name!r}; "
            "use policy='random' for other games."
        )
    env = make_env(name, state)
    try:
        buttons = list(env.buttons)
        act = _make_policy(policy, buttons, seed)
        env.record_movie(str(tmp))
        obs, _ = env.reset()  # writes input line 0, as replay() expects
        if on_step is not None:
            on_step(obs, None, buttons, name)  # the screen before the first step
        for t in range(int(n_frames)):
            action = act(t, obs)
            obs, rew, terminated, truncated, _ = env.step(action)
            if on_frame is not None:
                on_frame(obs)
            if on_step is not None:
                on_step(obs, (np.asarray(action, bool), float(np.sum(rew))), buttons, name)
            if terminated or truncated:
                break
        env.stop_record()  # writes the zip
        os.replace(tmp, path)
    finally:
        env.stop_record()  # no-op after success; on error, releases the movie
        env.close()
        tmp.unlink(missing_ok=True)
    return path
