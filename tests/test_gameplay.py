"""Tests of brainray.gameplay: real emulator runs, no mocks.

The fixture ``airstriker-best.bk2`` and its replay facts (1782 steps, reward 200,
terminated on the last step) are documented in ``tests/fixtures/README.md``.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np
import pytest
import stable_retro

from brainray import gameplay, gamestate
from brainray.gameplay import (
    DEFAULT_GAME,
    Replay,
    make_env,
    record_play,
    record_replay,
    replay,
    replay_bk2,
    resolve_game,
)
from brainray.video import resize_frames

FIXTURES = Path(__file__).resolve().parent / "fixtures"  # provenance: fixtures/README.md
BEST = FIXTURES / "airstriker-best.bk2"
SHINOBI = "ShinobiIIIReturnOfTheNinjaMaster-Genesis"
# sha256 of the 1782 native frames of airstriker-best.bk2 with stable-retro 1.0.1
BEST_SHA256 = "2a84079056b4e61639e42f08717983fe904ac27d6aaf8f29be5c9526e630b2ca"



def sha256(frames: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(frames).tobytes()).hexdigest()


def assert_no_emulator_left() -> None:
    """stable-retro allows one emulator per process: making one must work."""
    env = make_env()
    env.close()


@pytest.fixture(scope="module")
def best() -> Replay:
    return replay(BEST)


@pytest.fixture(scope="module")
def best_sha256(best) -> str:
    return sha256(best.frames)


# ------------------------------------------------------------------- replay


def test_replay_fixture_matches_readme(best):
    assert isinstance(best, Replay)
    assert len(best) == 1782  # 1783 input lines, the first used by movie.step()
    assert best.frames.shape == (1782, 224, 320, 3)
    assert best.frames.dtype == np.uint8
    assert best.actions.shape == (1782, 12) and best.actions.dtype == bool
    assert best.rewards.shape == (1782,) and best.rewards.dtype == np.float32
    assert best.rewards.sum() == 200.0
    # README counts steps from 1: 195, 337, ...
    assert (np.flatnonzero(best.rewards) + 1).tolist() == [
        195, 337, 811, 871, 966, 1272, 1356, 1650, 1687, 1753,
    ]
    assert best.buttons == ["B", "A", "MODE", "START", "UP", "DOWN", "LEFT", "RIGHT", "C", "Y", "X", "Z"]
    assert best.game == "Airstriker-Genesis-v0"  # header says Airstriker-Genesis
    assert best.actions[:, best.buttons.index("MODE")].sum() == 0


def test_replay_is_deterministic(best_sha256):
    again = replay_bk2(BEST)  # a second, independent replay
    assert sha256(again) == best_sha256 == BEST_SHA256


def test_replay_resized_on_the_fly(best):
    small = replay(BEST, game="Airstriker-Genesis-v0", size=(64, 48))
    assert small.frames.shape == (1782, 64, 48, 3)
    np.testing.assert_array_equal(small.frames, resize_frames(best.frames, (64, 48)))
    np.testing.assert_array_equal(small.actions, best.actions)


def test_replay_needs_initial_movie_step(best):
    # The README: replaying all 1783 lines (no initial movie.step) goes out of sync.
    movie = stable_retro.Movie(str(BEST))
    env = make_env(state=stable_retro.State.NONE)
    try:
        env.initial_state = movie.get_state()
        env.reset()
        total = 0.0
        while movie.step():
            _, rew, _, _, _ = env.step([movie.get_key(b, 0) for b in range(env.num_buttons)])
            total += rew
    finally:
        env.close()
    assert total != best.rewards.sum()


def test_replay_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.bk2.*does not exist"):
        replay(tmp_path / "nope.bk2")


def test_replay_garbage_bytes(tmp_path):
    bad = tmp_path / "garbage.bk2"
    bad.write_bytes(np.random.default_rng(0).bytes(2000))
    with pytest.raises(ValueError, match=r"garbage\.bk2.*not a zip archive"):
        replay(bad)


def test_replay_truncated(tmp_path):
    bad = tmp_path / "truncated.bk2"
    bad.write_bytes(BEST.read_bytes()[:4000])
    with pytest.raises(ValueError, match=r"truncated\.bk2.*(not a zip|cannot be read|corrupt)"):
        replay(bad)


def test_replay_zip_without_movie_entries(tmp_path):
    bad = tmp_path / "empty.bk2"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("Header.txt", "MovieVersion Retro\n")
    with pytest.raises(ValueError, match=r"empty\.bk2.*lacks \['Input Log.txt'\]"):
        replay(bad)


def test_replay_corrupt_entry(tmp_path):
    data = bytearray(BEST.read_bytes())
    with zipfile.ZipFile(BEST) as zf:
        info = zf.getinfo("Input Log.txt")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    data[start + 100] ^= 0xFF  # flip bits inside the compressed input log
    bad = tmp_path / "crc.bk2"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"crc\.bk2.*(corrupt|cannot be read)"):
        replay(bad)


def test_replay_closes_emulator_on_error():
    with pytest.raises(FileNotFoundError, match=SHINOBI):
        replay(BEST, game=SHINOBI)
    assert_no_emulator_left()


# ---------------------------------------------------------------------- env


def test_resolve_game_maps_old_names():
    assert resolve_game("Airstriker-Genesis") == "Airstriker-Genesis-v0"
    assert resolve_game("Airstriker-Genesis-v0") == "Airstriker-Genesis-v0"


def test_resolve_game_unknown():
    with pytest.raises(FileNotFoundError, match=r"no game named 'Airstrikr-Genesis'"):
        resolve_game("Airstrikr-Genesis")


def test_make_env_defaults():
    env = make_env("Airstriker-Genesis")
    try:
        assert env.gamename == DEFAULT_GAME
        assert env.render_mode is None
        assert env.use_restricted_actions == stable_retro.Actions.ALL
        assert env.statename == "Level1.state"
        obs, _ = env.reset()
        assert obs.shape == (224, 320, 3)
    finally:
        env.close()


@pytest.mark.skipif(
    stable_retro.data.get_file_path(SHINOBI + "-v0", "rom.md") is not None,
    reason="the Shinobi ROM is imported here",
)
def test_make_env_missing_rom():
    with pytest.raises(
        FileNotFoundError,
        match=rf"{SHINOBI}-v0.*not installed.*python -m stable_retro\.import /path/to/your/roms",
    ):
        make_env(SHINOBI)
    assert_no_emulator_left()


# ------------------------------------------------------------------- record


@pytest.mark.parametrize("policy", ["scripted", "random"])
def test_record_play_replays_exactly(tmp_path, policy):
    seen = hashlib.sha256()
    n_seen = []

    def on_frame(frame):
        seen.update(frame.tobytes())
        n_seen.append(1)

    path = record_play(tmp_path / "sub" / f"{policy}.bk2", 600, seed=3, policy=policy, on_frame=on_frame)
    assert path == tmp_path / "sub" / f"{policy}.bk2"
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp file left
    rep = replay(path)
    assert len(rep) == len(n_seen) == 600
    assert sha256(rep.frames) == seen.hexdigest()
    assert rep.game == DEFAULT_GAME
    # the policy plays: it moves, and never pauses
    b = rep.buttons
    assert rep.actions[:, [b.index("LEFT"), b.index("RIGHT")]].any(0).all()
    assert not rep.actions[:, [b.index("START"), b.index("MODE")]].any()
    if policy == "scripted":
        fire = rep.actions[:, b.index("B")]
        assert 0.4 < fire.mean() < 0.6  # tapped: held 4 of every 8 frames
        assert rep.rewards.sum() > 0  # it hits enemies within 10 s


def test_record_replay_is_the_replay_of_its_recording(tmp_path):
    """A stimulus play is emulated once: what record_replay returns while recording is what a
    replay of the written bk2 gives, frames (resized), buttons, rewards and the observed state."""
    got = record_replay(tmp_path / "p.bk2", 700, seed=5, size=32, observe=gamestate.Tracker())
    again = replay(tmp_path / "p.bk2", size=32, observe=gamestate.Tracker())
    assert len(got) == len(again) == 700 and got.frames.shape[1:] == (32, 32, 3)
    for field in ("frames", "actions", "rewards", "observed"):
        np.testing.assert_array_equal(getattr(got, field), getattr(again, field), err_msg=field)
    assert got.buttons == again.buttons and got.game == again.game
    assert got.rewards.sum() > 0 and got.observed[:, 1].any()  # it played: hits, a ship on screen


def test_record_play_seed_changes_play(tmp_path):
    a = replay(record_play(tmp_path / "a.bk2", 300, seed=0)).actions
    b = replay(record_play(tmp_path / "b.bk2", 300, seed=1)).actions
    assert not np.array_equal(a, b)


@pytest.mark.slow
def test_record_play_stops_at_game_over(tmp_path):
    seen = []
    path = record_play(tmp_path / "long.bk2", 10_000, seed=0, on_frame=lambda f: seen.append(1))
    rep = replay(path)
    assert 1000 < len(rep) == len(seen) < 10_000  # 3 lives last about 1,400-1,900 frames
    env = make_env()
    env.close()


def test_record_play_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match=r"'path' must end in '\.bk2'; got '.*play\.mp4'"):
        record_play(tmp_path / "play.mp4", 10)
    with pytest.raises(ValueError, match=r"'n_frames' must be a positive integer; got 0"):
        record_play(tmp_path / "p.bk2", 0)
    with pytest.raises(ValueError, match=r"'policy' must be one of \('scripted', 'random'\); got 'ppo'"):
        record_play(tmp_path / "p.bk2", 10, policy="ppo")
    with pytest.raises(ValueError, match=rf"policy='scripted' is written for .*not '{SHINOBI}-v0'"):
        record_play(tmp_path / "p.bk2", 10, game=SHINOBI)
    assert not list(tmp_path.iterdir())
    assert_no_emulator_left()


def test_record_play_random_on_missing_rom(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"stable_retro\.import"):
        record_play(tmp_path / "p.bk2", 10, game=SHINOBI, policy="random")
    assert not (tmp_path / "p.bk2").exists()


def test_public_names():
    assert set(gameplay.__all__) >= {
        "DEFAULT_GAME", "Replay", "make_env", "replay", "replay_bk2", "record_play",
    }
