"""Tests of brainray.video."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from brainray import video
from brainray.video import FrameStore, budget_prefix, clip_starts, get_clips, resize_frames


@pytest.fixture
def frames(rng):
    return rng.integers(0, 256, size=(5, 24, 32, 3), dtype=np.uint8)


# ------------------------------------------------------------------- resize


@pytest.mark.parametrize("method, resample", [("bilinear", Image.BILINEAR), ("bicubic", Image.BICUBIC)])
def test_resize_matches_pil(rng, method, resample):
    x = rng.integers(0, 256, size=(3, 224, 320, 3), dtype=np.uint8)
    y = resize_frames(x, 128, method=method)
    assert y.shape == (3, 128, 128, 3) and y.dtype == np.uint8
    ref = np.stack([np.asarray(Image.fromarray(f).resize((128, 128), resample)) for f in x])
    assert np.abs(y.astype(int) - ref).max() <= 1


def test_resize_area_is_block_mean(frames):
    y = resize_frames(frames, (12, 8), method="area")  # 24x32 -> 12x8: 2x4 blocks
    ref = frames.reshape(5, 12, 2, 8, 4, 3).mean((2, 4))
    np.testing.assert_array_equal(y, np.round(ref).astype(np.uint8))


@pytest.mark.parametrize("method", video.RESIZE_METHODS)
def test_resize_keeps_constant_frames(method):
    x = np.full((2, 224, 320, 3), 77, dtype=np.uint8)
    y = resize_frames(x, (64, 96), method=method)
    assert y.shape == (2, 64, 96, 3)
    assert (y == 77).all()


def test_resize_same_size_is_a_copy(frames):
    y = resize_frames(frames, (24, 32))
    np.testing.assert_array_equal(y, frames)
    assert not np.shares_memory(y, frames)


def test_resize_many_frames_in_chunks(rng):
    x = rng.integers(0, 256, size=(video._CHUNK + 3, 8, 8, 3), dtype=np.uint8)
    y = resize_frames(x, 4)
    np.testing.assert_array_equal(y[-3:], resize_frames(x[-3:], 4))


def test_resize_errors(frames):
    with pytest.raises(ValueError, match=r"'frames' must have shape \(n_frames, height, width, 3\); got \(24, 32, 3\)"):
        resize_frames(frames[0], 8)
    with pytest.raises(TypeError, match="'frames' must be uint8; got float32"):
        resize_frames(frames.astype(np.float32), 8)
    with pytest.raises(ValueError, match=r"'method' must be one of \('bilinear', 'bicubic', 'area'\); got 'nearest'"):
        resize_frames(frames, 8, method="nearest")
    with pytest.raises(ValueError, match=r"'size' must be positive; got \(0, 8\)"):
        resize_frames(frames, (0, 8))
    with pytest.raises(ValueError, match=r"'size' must be an int or \(height, width\); got \(1, 2, 3\)"):
        resize_frames(frames, (1, 2, 3))
    with pytest.raises(TypeError, match=r"'size' must be an int or \(height, width\); got 1.5"):
        resize_frames(frames, 1.5)


# --------------------------------------------------------------- FrameStore


def test_framestore_round_trip(tmp_path, frames):
    store = FrameStore(tmp_path / "store")
    assert store.names() == [] and len(store) == 0
    path = store.write("sub-01_rep-01", frames)
    store.write("b", frames[:2, :4, :6])
    assert path == tmp_path / "store" / "sub-01_rep-01.u8"
    assert path.stat().st_size == frames.nbytes
    assert store.names() == ["b", "sub-01_rep-01"]
    assert "b" in store and "c" not in store
    assert store.n_frames("sub-01_rep-01") == 5 and store.n_frames("b") == 2
    mm = store.open("sub-01_rep-01")
    assert isinstance(mm, np.memmap) and mm.shape == (5, 24, 32, 3) and mm.dtype == np.uint8
    np.testing.assert_array_equal(mm, frames)
    np.testing.assert_array_equal(store.open("b"), frames[:2, :4, :6])
    with pytest.raises(ValueError, match="read-only"):
        mm[0, 0, 0, 0] = 1
    manifest = json.loads((tmp_path / "store" / "frames.json").read_text())
    assert manifest["b"] == {"file": "b.u8", "n_frames": 2, "height": 4, "width": 6}
    # a second store on the same folder sees the same entries; no temp files left
    assert FrameStore(tmp_path / "store").names() == ["b", "sub-01_rep-01"]
    assert sorted(p.name for p in (tmp_path / "store").iterdir() if not p.name.startswith(".frames.lock")) == [
        "b.u8", "frames.json", "sub-01_rep-01.u8",
    ]


def test_framestore_overwrite(tmp_path, frames):
    store = FrameStore(tmp_path)
    store.write("a", frames)
    store.write("a", frames[:1])
    assert store.n_frames("a") == 1
    np.testing.assert_array_equal(store.open("a"), frames[:1])


def test_framestore_unknown_name(tmp_path, frames):
    store = FrameStore(tmp_path)
    store.write("a", frames)
    with pytest.raises(KeyError, match=r"No frames named 'zz' in .*; known names: \['a'\]"):
        store.open("zz")
    with pytest.raises(KeyError, match="known names"):
        store.n_frames("zz")


def test_framestore_write_errors(tmp_path, frames):
    store = FrameStore(tmp_path)
    with pytest.raises(ValueError, match=r"name must be letters, digits.*got '\.\./x'"):
        store.write("../x", frames)
    with pytest.raises(ValueError, match=r"frames for 'a' are empty"):
        store.write("a", frames[:0])
    with pytest.raises(TypeError, match="'frames' must be uint8; got int64"):
        store.write("a", frames.astype(np.int64))
    assert store.names() == []


def test_framestore_damaged_files(tmp_path, frames):
    store = FrameStore(tmp_path)
    store.write("a", frames)
    (tmp_path / "a.u8").write_bytes(b"short")
    with pytest.raises(ValueError, match=r"a\.u8' has 5 bytes but .*frames\.json' says shape \(5, 24, 32, 3\)"):
        store.open("a")
    (tmp_path / "frames.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"manifest .*frames\.json' is not valid JSON"):
        store.names()


# ------------------------------------------------------------ budget_prefix


def test_budget_prefix_example():
    assert budget_prefix([100, 50, 80], 170) == [100, 50, 20]
    assert budget_prefix([100, 50, 80], 0) == [0, 0, 0]
    assert budget_prefix([100, 50, 80], 230) == [100, 50, 80]
    assert budget_prefix([100, 50, 80], 150) == [100, 50, 0]


def test_budget_prefix_is_nested(rng):
    lengths = rng.integers(0, 5000, size=12).tolist()
    budgets = sorted(rng.integers(0, sum(lengths) + 1, size=30).tolist())
    takes = [budget_prefix(lengths, d) for d in budgets]
    for d, take in zip(budgets, takes):
        assert sum(take) == d
        assert all(0 <= k <= n for k, n in zip(take, lengths))
        # full replays, then at most one partial one, then nothing
        partial = [i for i, (k, n) in enumerate(zip(take, lengths)) if 0 < k < n]
        assert len(partial) <= 1
        used = [i for i, k in enumerate(take) if k > 0]
        if used:
            assert all(take[i] == lengths[i] for i in range(used[-1]))
    for small, big in zip(takes, takes[1:]):
        assert all(a <= b for a, b in zip(small, big))


def test_budget_prefix_errors():
    lengths = [8230] * 11 + [8235]
    assert sum(lengths) == 98765
    with pytest.raises(
        ValueError,
        match=r"data_frames=120000 is more than the 98765 frames in the 12 training replays",
    ):
        budget_prefix(lengths, 120_000)
    with pytest.raises(ValueError, match=r"'data_frames' must be a non-negative integer; got -1"):
        budget_prefix(lengths, -1)
    with pytest.raises(ValueError, match=r"replay lengths must be >= 0; got \[5, -2\]"):
        budget_prefix([5, -2], 1)


# ------------------------------------------------------------------- clips


def test_clip_starts():
    # paper: 16 frames every 4th raw frame -> span 64
    np.testing.assert_array_equal(clip_starts(200, 16, 4), [0, 64, 128])
    np.testing.assert_array_equal(clip_starts(192, 16, 4), [0, 64, 128])
    np.testing.assert_array_equal(clip_starts(200, 16, 4, stride=32), [0, 32, 64, 96, 128])
    assert clip_starts(63, 16, 4).shape == (0,)
    assert clip_starts(0, 16, 4).dtype == np.int64


def test_clip_starts_errors():
    with pytest.raises(ValueError, match=r"'clip_frames' must be a positive integer; got 0"):
        clip_starts(100, 0, 4)
    with pytest.raises(ValueError, match=r"'time_downsample' must be a positive integer; got 2.5"):
        clip_starts(100, 4, 2.5)
    with pytest.raises(ValueError, match=r"'stride' must be a positive integer or None; got 0"):
        clip_starts(100, 4, 2, stride=0)
    with pytest.raises(ValueError, match=r"'n_frames' must be >= 0; got -1"):
        clip_starts(-1, 4, 2)


def test_get_clips(tmp_path, rng):
    x = rng.integers(0, 256, size=(100, 6, 5, 3), dtype=np.uint8)
    store = FrameStore(tmp_path)
    store.write("r", x)
    starts = clip_starts(len(x), 4, 3, stride=10)
    for src in (x, store.open("r")):
        clips = get_clips(src, starts, 4, 3)
        assert clips.shape == (len(starts), 4, 6, 5, 3) and clips.dtype == np.uint8
        assert not isinstance(clips, np.memmap)
        for c, s in enumerate(starts):
            for j in range(4):
                np.testing.assert_array_equal(clips[c, j], x[s + 3 * j])
    assert get_clips(x, [], 4, 3).shape == (0, 4, 6, 5, 3)


def test_get_clips_out_of_range(frames):
    with pytest.raises(ValueError, match=r"clips starting at \[3\] need frames outside 0\.\.4"):
        get_clips(frames, [0, 3], 2, 2)


def test_public_names():
    assert set(video.__all__) >= {"resize_frames", "FrameStore", "budget_prefix", "clip_starts", "get_clips"}
