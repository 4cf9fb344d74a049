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
