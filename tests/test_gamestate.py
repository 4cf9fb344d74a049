"""Tests for brainray.gamestate: Airstriker's object state read from real emulator frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from brainray import gameplay, gamestate

BK2 = Path(__file__).parent / "fixtures" / "airstriker-best.bk2"
COL = {v: i for i, v in enumerate(gamestate.OBJECT_VARIABLES)}


@pytest.fixture(scope="module")
def replayed():
    """stable-retro's best.bk2 replayed natively, with the state read chunk by chunk."""
    rep = gameplay.replay(BK2, observe=gamestate.Tracker())
    return rep


def test_state_of_a_real_play(replayed):
    s = replayed.observed
    assert s.shape == (len(replayed.frames), len(gamestate.OBJECT_VARIABLES)) and s.dtype == np.float32
    present = s[:, COL["ship_present"]]
    assert 0.7 < present.mean() < 1.0  # on screen most of the time, away while it respawns
    assert np.all((s[:, COL["ship_x"]] >= 0) & (s[:, COL["ship_x"]] <= 1))
    assert s[:, COL["n_enemies"]].max() >= 2 and s[:, COL["n_shots"]].max() >= 1
    assert np.all((s[:, COL["threat"]] >= 0) & (s[:, COL["threat"]] <= 1))
    assert np.all(s[present == 0, COL["threat"]] == 0)  # no ship, no threat to it
    # frame 400 of this movie (checked by eye): the ship at the far left, two enemy ships, three shots
    assert s[400, COL["ship_x"]] < 0.15 and s[400, COL["n_enemies"]] == 2 and s[400, COL["n_shots"]] == 3
    assert s[400, COL["enemy_dx"]] > 0  # so the nearest enemy is to its right
    for v in ("enemy_dx", "shot_dx"):
        assert np.all(np.abs(s[:, COL[v]]) <= 1) and (s[:, COL[v]] < 0).any() and (s[:, COL[v]] > 0).any()
    assert np.all(s[present == 0][:, [COL["enemy_dx"], COL["shot_dx"], COL["shots_near"]]] == 0)
    assert np.all(s[s[:, COL["n_enemies"]] == 0, COL["enemy_dx"]] == 0)
    assert np.all(s[:, COL["shots_near"]] <= s[:, COL["n_shots"]]) and s[:, COL["shots_near"]].max() >= 1


def _screen(ship_col: int, enemies=(), shots=()) -> np.ndarray:
    """A native frame drawn in Airstriker's palette: a white ship in the bottom band, red enemy
    ships and green enemy shots at the given (row, column) native pixels."""
    f = np.zeros((1, 224, 320, 3), np.uint8)
    f[0, 180:196, ship_col - 8 : ship_col + 8] = 200
    for r, c in enemies:
        f[0, r - 6 : r + 6, c - 6 : c + 6, 0] = 200
    for r, c in shots:
        f[0, r - 2 : r + 2, c - 2 : c + 2, 1] = 200
    return f


def test_relations_are_signed_and_pick_the_nearest():
    """The nearest enemy is the one closest in distance, not in column; the offset's sign says
    which way it is; only shots within 64 native pixels count as near."""
    f = _screen(160, enemies=[(40, 100), (150, 220)], shots=[(170, 140), (60, 300)])
    s = gamestate.object_state(f)[0]
    # ship centre about (188, 160) native; the enemy at (150, 220) is nearer than (40, 100)
    np.testing.assert_allclose(s[COL["enemy_dx"]], 60 / 318, atol=0.01)
    np.testing.assert_allclose(s[COL["shot_dx"]], -20 / 318, atol=0.01)
    assert s[COL["shots_near"]] == 1 and s[COL["n_shots"]] == 2
    mirrored = gamestate.object_state(f[:, :, ::-1].copy())[0]  # the same scene, left for right
    np.testing.assert_allclose(mirrored[COL["enemy_dx"]], -s[COL["enemy_dx"]], atol=0.01)


def test_chunked_equals_whole(replayed):
    """The Tracker over the replay's chunks gives what one call on every frame gives."""
    whole = gamestate.object_state(replayed.frames)
    np.testing.assert_array_equal(replayed.observed, whole)


def test_resized_replay_reads_the_native_frames():
    rep = gameplay.replay(BK2, size=32, observe=gamestate.Tracker())
    assert rep.frames.shape[1:] == (32, 32, 3)
    assert rep.observed.shape == (len(rep.frames), len(gamestate.OBJECT_VARIABLES))


def test_anticipation_looks_ahead():
    state = np.zeros((300, len(gamestate.OBJECT_VARIABLES)), np.float32)
    state[:200, COL["ship_present"]] = 1  # the ship is lost at frame 200
    rewards = np.zeros(300, np.float32)
    rewards[100] = 10
    ahead = gamestate.anticipation(state, rewards, fps=60)
    reward_ahead, loss_ahead = ahead[:, 0], ahead[:, 1]
    np.testing.assert_array_equal(np.flatnonzero(reward_ahead), np.arange(40, 100))  # the second before it
    np.testing.assert_array_equal(np.flatnonzero(loss_ahead), np.arange(80, 200))  # the two seconds before
    # the same stream, but the replay ends at frame 200 (a blank screen after it): no ship is lost
    ahead = gamestate.anticipation(state, rewards, fps=60, in_game=np.arange(300) < 200)
    np.testing.assert_array_equal(np.flatnonzero(ahead[:, 0]), np.arange(40, 100))
    assert not ahead[:, 1].any()


@pytest.mark.parametrize("frames, match", [
    (np.zeros((2, 32, 32, 3), np.uint8), "native Airstriker frames"),
    (np.zeros((2, 224, 320, 3), np.float32), "native Airstriker frames"),
])
def test_errors(frames, match):
    with pytest.raises(ValueError, match=match):
        gamestate.object_state(frames)
    with pytest.raises(ValueError, match="anticipation needs"):
        gamestate.anticipation(np.zeros((3, 2)), np.zeros(3))
