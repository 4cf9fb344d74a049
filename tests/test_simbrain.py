"""Tests for brainray.simbrain: features, parcels, noise, ceiling and recovery by ridge."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy.signal import lfilter
from sklearn.linear_model import RidgeCV

from brainray import gamestate, simbrain
from brainray.simbrain import (
    GAME_FRACTIONS,
    PARCEL_TYPES,
    STATE_TYPES,
    SUBJECTS,
    Parcel,
    RunStimulus,
    SimBrainConfig,
    SubjectData,
    feature_type,
    hrf_features,
    make_parcels,
    n_volumes,
    noise_ceiling,
    realized_ceiling,
    run_tr_features,
    simulate_run,
    simulate_subject,
    stimulus_features,
)

N_RUNS, N_VOLS, SIZE, N_BUTTONS = 4, 120, 16, 4
SKIP = 10  # volumes of the run-onset transient (shared by all runs) left out of shuffle tests


# --------------------------------------------------------------------------- fixtures


def _walk(rng: np.random.Generator, n: int, d: int, tau: float) -> np.ndarray:
    """Stationary AR(1) path of shape (n, d), unit variance, time constant ``tau`` frames."""
    a = np.exp(-1.0 / tau)
    e = rng.standard_normal((n, d)) * np.sqrt(1 - a * a)
    e[0] = rng.standard_normal(d)
    return lfilter([1.0], [1.0, -a], e, axis=0)


def _gameplay(rng: np.random.Generator, n: int, size: int = SIZE, n_blobs: int = 3):
    """Moving coloured blobs of varying brightness and width on a slowly changing
    background, persistent random button holds and sparse rewards."""
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    pos = (0.5 + 0.35 * np.tanh(_walk(rng, n, 2 * n_blobs, 90))).reshape(n, n_blobs, 2)
    bright = sig(2 * _walk(rng, n, n_blobs, 120))
    width = 0.08 + 0.1 * sig(_walk(rng, n, n_blobs, 200))
    background = 0.3 * sig(2 * _walk(rng, n, 3, 300))
    grid = (np.arange(size) + 0.5) / size
    dy = grid[None, None, :, None] - pos[:, :, 0, None, None]
    dx = grid[None, None, None, :] - pos[:, :, 1, None, None]
    blobs = bright[:, :, None, None] * np.exp(-(dx**2 + dy**2) / (2 * width[:, :, None, None] ** 2))
    img = background[:, None, None, :] + np.einsum(
        "nbhw,bc->nhwc", blobs, rng.uniform(0.3, 1.0, (n_blobs, 3))
    )
    frames = (np.clip(img, 0, 1) * 255).astype(np.uint8)
    switches = rng.random((n, N_BUTTONS)) < 1 / 90
    actions = np.logical_xor.accumulate(switches, axis=0) ^ (rng.random(N_BUTTONS) < 0.3)
    rewards = (rng.random(n) < 1 / 240).astype(np.float32)
    return frames, actions, rewards


@pytest.fixture(scope="module")
def runs() -> list[RunStimulus]:
    rng = np.random.default_rng(0)
    n_frames = int(np.ceil(N_VOLS * 1.49 * 60))
    return [RunStimulus(*_gameplay(rng, n_frames)) for _ in range(N_RUNS)]


def _state(rng: np.random.Generator, n: int) -> np.ndarray:
    """A synthetic game state (columns of gamestate.OBJECT_VARIABLES): a ship that wanders and
    is sometimes lost, enemy and shot counts that rise and fall, closeness in [0, 1]."""
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    w = _walk(rng, n, 8, 150)
    present = (w[:, 1] > -1.2).astype(np.float32)
    cols = {
        "ship_x": sig(w[:, 0]), "ship_present": present, "n_enemies": np.round(np.clip(2 + 1.5 * w[:, 2], 0, None)),
        "n_shots": np.round(np.clip(1 + 1.5 * w[:, 3], 0, None)), "n_bullets": np.round(np.clip(3 + 2 * w[:, 4], 0, None)),
        "enemy_y": sig(w[:, 5]), "threat": sig(w[:, 6]) * present, "aim": sig(w[:, 7]) * present,
    }
    return np.stack([cols[v] for v in gamestate.OBJECT_VARIABLES], axis=1).astype(np.float32)


@pytest.fixture(scope="module")
def state_runs(runs) -> list[RunStimulus]:
    rng = np.random.default_rng(1)
    return [dataclasses.replace(r, state=_state(rng, len(r.frames))) for r in runs]


@pytest.fixture(scope="module")
def state_subject(state_runs) -> SubjectData:
    return simulate_subject(state_runs, "sub-01", SimBrainConfig(fractions=GAME_FRACTIONS))


@pytest.fixture(scope="module")
def subject(runs) -> SubjectData:
    return simulate_subject(runs, "sub-01", SimBrainConfig())


@pytest.fixture(scope="module")
def tr_features(runs) -> list[dict[str, np.ndarray]]:
    """True generating features, HRF-convolved at the TR, recomputed by the public path."""
    return [
        hrf_features(stimulus_features(r.frames, r.actions, r.rewards), N_VOLS) for r in runs
    ]


def _loro_scores(data, feats, feature_run=lambda i: i, skip=0, own=True) -> np.ndarray:
    """Leave-one-run-out ridge r per parcel (mean over held-out runs).

    Each parcel is fitted on its own generating features (``own``), or on all features
    (noise parcels always get all). ``feature_run(i)`` picks whose features pair with the
    BOLD of run i (identity: true pairing; a derangement: shuffled).
    """
    all_names = list(feats[0])

    def design(names, run):
        x = np.stack([feats[run][f] for f in names], axis=1)[skip:]
        return x - x.mean(0)  # centred per run, like the signal

    scores = np.zeros((N_RUNS, len(data.parcels)))
    for p, parcel in enumerate(data.parcels):
        names = list(parcel.features) if (own and parcel.features) else all_names
        for test in range(N_RUNS):
            train = [i for i in range(N_RUNS) if i != test]
            x = np.concatenate([design(names, feature_run(i)) for i in train])
            y = np.concatenate([data.bold[i][skip:, p] for i in train])
            model = RidgeCV(alphas=np.logspace(-3, 3, 7)).fit(x, y)
            pred = model.predict(design(names, feature_run(test)))
            scores[test, p] = np.corrcoef(pred, data.bold[test][skip:, p])[0, 1]
    return scores.mean(0)


# --------------------------------------------------------------------------- config


def test_config_defaults():
    cfg = SimBrainConfig()
    assert cfg.n_parcels == 64 and cfg.tr == 1.49 and cfg.snr_range == (0.3, 2.0)
    assert set(cfg.fractions) == set(PARCEL_TYPES)
    assert cfg.noise_variance == pytest.approx(1 + cfg.drift_amplitude**2)
    assert SUBJECTS == ("sub-01", "sub-02", "sub-04", "sub-06")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_parcels": 3}, r"n_parcels must be an integer >= 4; got 3"),
        ({"n_parcels": 8.0}, r"n_parcels must be an integer"),
        ({"drift_order": 0}, r"drift_order must be an integer >= 1"),
        ({"grid": 0}, r"grid must be an integer >= 1"),
        ({"seed": "a"}, r"seed must be an integer; got 'a'"),
        ({"tr": 0.0}, r"tr must be a positive number; got 0.0"),
        ({"snr_range": (2.0, 1.0)}, r"snr_range must satisfy 0 < low <= high"),
        ({"snr_range": (0.0, 1.0)}, r"snr_range must satisfy 0 < low <= high"),
        ({"snr_range": 1.0}, r"snr_range must be a pair"),
        ({"fractions": {"visual": 0.5, "colour": 0.5}}, r"fractions must have keys among"),
        (
            {"fractions": {"visual": 0.5, "predictive": 0.2, "motor": 0.2, "none": 0.2}},
            r"fractions must sum to 1; got 1.1",
        ),
        (
            {"fractions": {"visual": 1.2, "predictive": -0.2, "motor": 0.0, "none": 0.0}},
            r"fractions must be non-negative",
        ),
        ({"ar1": 1.0}, r"ar1 must be in \[0, 1\); got 1.0"),
        ({"drift_amplitude": -1.0}, r"drift_amplitude must be a finite number >= 0"),
    ],
)
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SimBrainConfig(**kwargs)


# --------------------------------------------------------------------------- timing, ceiling


def test_n_volumes():
    assert n_volumes(60 * 149, 60.0, 1.49) == 100
    assert n_volumes(60 * 149 - 1, 60.0, 1.49) == 99
    assert RunStimulus(*_gameplay(np.random.default_rng(1), 600)).n_volumes(1.49) == 6


def test_noise_ceiling_closed_form():
    np.testing.assert_allclose(noise_ceiling([0.0, 1.0, 3.0]), [0.0, np.sqrt(0.5), np.sqrt(0.75)])
    with pytest.raises(ValueError, match="snr must be >= 0"):
        noise_ceiling(-1.0)


def test_realized_ceiling():
    rng = np.random.default_rng(0)
    s = rng.standard_normal((500, 3))
    s[:, 2] = 0.0
    b = s + rng.standard_normal((500, 3))
    r = realized_ceiling(s, b)
    assert r[2] == 0.0
    np.testing.assert_allclose(r[:2], np.sqrt(0.5), atol=0.06)
    assert realized_ceiling(s[:, :2], s[:, :2]) == pytest.approx([1.0, 1.0])
    with pytest.raises(ValueError, match="same shape"):
        realized_ceiling(s, b[:10])


# --------------------------------------------------------------------------- features


def _const_frames(n: int, value: np.ndarray) -> np.ndarray:
    return np.broadcast_to(value.astype(np.uint8), (n, *value.shape)).copy()


def test_stimulus_features_static_split_screen():
    img = np.zeros((8, 8, 3), np.uint8)
    img[:, :4] = 255  # left half white, right half black
    img[4:, 4:] = 0
    img[4::2, 4::2] = 255  # bottom-right window: checkerboard, half white
    img[5::2, 5::2] = 255
    n = 5
    f = stimulus_features(_const_frames(n, img), np.zeros((n, 2), bool), np.zeros(n), 60.0, 2)
    assert set(f) == (
        {f"{k}-{g}" for k in ("lum", "contrast", "motion", "surprise") for g in range(4)}
        | {"event", "button-0", "button-1"}
    )
    np.testing.assert_allclose(f["lum-0"], 1.0, atol=1e-6)  # top-left
    np.testing.assert_allclose(f["lum-1"], 0.0, atol=1e-6)  # top-right
    np.testing.assert_allclose(f["lum-3"], 0.5, atol=1e-6)  # bottom-right checkerboard
    np.testing.assert_allclose(f["contrast-0"], 0.0, atol=1e-3)
    np.testing.assert_allclose(f["contrast-3"], 0.5, atol=1e-6)
    # after the blank screen: one onset step in motion, two in surprise, then nothing
    np.testing.assert_allclose(f["motion-0"], [60.0, 0, 0, 0, 0], atol=1e-4)
    np.testing.assert_allclose(f["surprise-0"], [60.0, 60.0, 0, 0, 0], atol=1e-4)
    assert all(v.shape == (n,) for v in f.values())


def test_stimulus_features_ramp_is_predictable():
    """A linear luminance ramp moves (motion > 0) but is perfectly extrapolated."""
    n = 20
    frames = (np.arange(n)[:, None, None, None] * 10 * np.ones((1, 6, 6, 3))).astype(np.uint8)
    f = stimulus_features(frames, np.zeros((n, 1), bool), np.zeros(n), fps=30.0, grid=1)
    np.testing.assert_allclose(f["motion-0"][1:], 10 / 255 * 30, rtol=1e-5)
    np.testing.assert_allclose(f["surprise-0"][2:], 0.0, atol=1e-4)


def test_stimulus_features_chunking_is_seamless(monkeypatch):
    """Frames are streamed in chunks; the result must not depend on the chunk size."""
    import brainray.simbrain as simbrain

    frames, actions, rewards = _gameplay(np.random.default_rng(5), 50)
    whole = stimulus_features(frames, actions, rewards)
    monkeypatch.setattr(simbrain, "_CHUNK_PIXELS", 7 * SIZE * SIZE)  # chunks of 7 frames
    chunked = stimulus_features(frames, actions, rewards)
    for name, value in whole.items():
        np.testing.assert_allclose(chunked[name], value, rtol=1e-6, atol=1e-6, err_msg=name)


def test_stimulus_features_events_and_buttons():
    n = 6
    actions = np.zeros((n, 3), bool)
    actions[2:4, 1] = True
    rewards = np.array([0, 5, 0, -1, 0, 2.0])
    f = stimulus_features(np.zeros((n, 4, 4, 3), np.uint8), actions, rewards, grid=2)
    np.testing.assert_array_equal(f["event"], [0, 1, 0, 0, 0, 1])
    np.testing.assert_array_equal(f["button-1"], [0, 0, 1, 1, 0, 0])
    np.testing.assert_array_equal(f["button-0"], 0)


_OK = np.zeros((4, 4, 4, 3), np.uint8)


@pytest.mark.parametrize(
    ("frames", "actions", "rewards", "grid", "match"),
    [
        (_OK[..., 0], np.zeros((4, 1)), np.zeros(4), 1, r"shape \(n_frames, height"),
        (_OK.astype(float), np.zeros((4, 1)), np.zeros(4), 1, "frames must be uint8"),
        (_OK, np.zeros((3, 1)), np.zeros(4), 1, r"actions must have shape \(n_frames=4"),
        (_OK, np.zeros((4, 1)), np.zeros(5), 1, r"rewards must have shape \(n_frames=4"),
        (_OK, np.zeros((4, 1)), np.zeros(4), 5, "too small for a 5x5 grid"),
    ],
)
def test_stimulus_features_errors(frames, actions, rewards, grid, match):
    with pytest.raises(ValueError, match=match):
        stimulus_features(frames, actions, rewards, grid=grid)


def test_feature_type():
    assert [feature_type(n) for n in ("lum-3", "motion-0", "event", "surprise-2", "button-7")] == [
        "visual", "visual", "predictive", "predictive", "motor"
    ]
    with pytest.raises(ValueError, match="Unknown feature 'gpt-0'"):
        feature_type("gpt-0")


def test_hrf_features_impulse_peaks_near_5s():
    n = 60 * 30
    x = np.zeros(n)
    x[:6] = 1.0  # 0.1 s pulse at t = 0
    h = hrf_features({"x": x}, n_vols=30, tr=1.0)["x"]
    assert h.shape == (30,)
    assert int(np.argmax(h)) in (4, 5)  # volume times (k + 0.5) s; SPM HRF peaks at ~5 s
    assert h[0] < 0.2 * h.max() and abs(h[-1]) < 0.05 * h.max()


# --------------------------------------------------------------------------- parcels


def test_make_parcels_counts_and_reproducible():
    names = ["lum-0", "contrast-1", "motion-2", "surprise-0", "event", "button-0", "button-1"]
    cfg = SimBrainConfig(n_parcels=10)
    parcels = make_parcels("sub-01", names, cfg)
    kinds = [p.kind for p in parcels]
    assert [kinds.count(k) for k in PARCEL_TYPES] == [4, 2, 2, 0, 0, 0, 0, 0, 2]  # no game-state types by default
    assert len({p.label for p in parcels}) == 10
    for p in parcels:
        assert all(feature_type(f) == p.kind for f in p.features)
        if p.kind == "none":
            assert p.features == () and p.snr == 0.0 and p.ceiling == 0.0
        else:
            assert 1 <= len(p.features) <= 3 and sum(p.weights) == pytest.approx(1.0)
            assert cfg.snr_range[0] <= p.snr <= cfg.snr_range[1]
            assert p.label.endswith(f"{p.kind}-{p.features[0]}")
    assert make_parcels("sub-01", names, cfg) == parcels
    assert make_parcels("sub-02", names, cfg) != parcels
    assert make_parcels("sub-01", names, dataclasses.replace(cfg, seed=1)) != parcels


def test_make_parcels_errors():
    match = r"'motor' parcels were asked for .*fractions\['motor'\] = 0"
    with pytest.raises(ValueError, match=match):
        make_parcels("sub-01", ["lum-0", "event"])
    with pytest.raises(ValueError, match="subject must be a non-empty string"):
        make_parcels("", ["lum-0"])


# --------------------------------------------------------------------------- simulation


def test_subject_shapes_and_exact_snr(subject):
    cfg = subject.config
    assert len(subject.bold) == N_RUNS
    for bold, signal in zip(subject.bold, subject.signal):
        assert bold.shape == signal.shape == (N_VOLS, cfg.n_parcels)
        assert bold.dtype == np.float32
        np.testing.assert_allclose(signal.mean(0), 0.0, atol=1e-5)  # centred per run
    none = np.array(subject.parcel_types) == "none"
    assert none.sum() == 13  # 64 * 0.2 = 12.8, rounded by largest remainder
    signal = np.concatenate(subject.signal).astype(np.float64)
    assert np.all(signal[:, none] == 0)
    # pooled signal variance is exactly snr * E[noise variance]
    np.testing.assert_allclose(
        (signal**2).mean(0), subject.snr * cfg.noise_variance, rtol=1e-4, atol=1e-8
    )
    assert subject.ceiling.shape == (cfg.n_parcels,)
    np.testing.assert_array_equal(subject.ceiling[none], 0.0)
    assert subject.parcel_labels[0].startswith("p00-visual-")


def test_realized_ceiling_matches_analytic(subject):
    """(4) On data, r(signal, bold) is close to sqrt(snr / (1 + snr))."""
    realized = np.mean([realized_ceiling(s, b) for s, b in zip(subject.signal, subject.bold)], 0)
    sig = subject.snr > 0
    assert abs(np.mean(realized[sig] - subject.ceiling[sig])) < 0.03
    assert np.max(np.abs(realized[sig] - subject.ceiling[sig])) < 0.15
    np.testing.assert_array_equal(realized[~sig], 0.0)


def test_ridge_on_true_features_reaches_ceiling(subject, tr_features):
    """(1) Ridge on each parcel's true features gets >= 90% of the ceiling on held-out
    runs; (2) noise parcels fitted on all features score about 0."""
    r = _loro_scores(subject, tr_features)
    sig = subject.snr > 0
    frac = r[sig].mean() / subject.ceiling[sig].mean()
    assert frac >= 0.9, frac
    assert np.mean(r[sig] / subject.ceiling[sig]) >= 0.9
    assert abs(r[~sig].mean()) < 0.1


def test_shuffled_features_score_near_zero(subject, tr_features):
    """(3) Features of another run (a derangement of runs) predict nothing. The first
    volumes are left out: every run starts from a blank screen, and that onset response
    is real signal shared by all runs."""
    r = _loro_scores(subject, tr_features, feature_run=lambda i: (i + 1) % N_RUNS, skip=SKIP)
    assert abs(r[subject.snr > 0].mean()) < 0.1
    true = _loro_scores(subject, tr_features, skip=SKIP)
    assert true[subject.snr > 0].mean() > 0.4  # the same scoring does see real signal


def test_reproducible_and_subjects_differ(runs, subject):
    again = simulate_subject(runs, "sub-01", SimBrainConfig())
    for a, b in zip(subject.bold, again.bold):
        np.testing.assert_array_equal(a, b)
    assert again.parcels == subject.parcels
    other = simulate_subject(runs, "sub-02", SimBrainConfig())
    assert other.parcels != subject.parcels
    assert not np.allclose(other.bold[0], subject.bold[0])
    reseeded = simulate_subject(runs, "sub-01", SimBrainConfig(seed=1))
    assert not np.allclose(reseeded.bold[0], subject.bold[0])


def test_save_load_roundtrip(subject, tmp_path):
    subject.save(tmp_path / "sub-01")
    loaded = SubjectData.load(tmp_path / "sub-01")
    assert loaded.subject == "sub-01" and loaded.parcels == subject.parcels
    assert loaded.config == subject.config
    for a, b in zip(subject.bold + subject.signal, loaded.bold + loaded.signal):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(loaded.ceiling, subject.ceiling)
    with pytest.raises(FileNotFoundError, match=r"simbrain.json not found; write it with"):
        SubjectData.load(tmp_path / "nowhere")


def test_noise_is_ar1_plus_drift():
    """Noise-only parcels: variance 1 + drift^2 and lag-1 autocorrelation ar1."""
    n_vols, tr = 4000, 0.1
    frames = np.zeros((int(n_vols * tr * 60), 2, 2, 3), np.uint8)
    acts, rews = np.zeros((len(frames), 1), bool), np.zeros(len(frames))
    only_noise = {"visual": 0.0, "predictive": 0.0, "motor": 0.0, "none": 1.0}
    for drift in (0.0, 1.0):
        cfg = SimBrainConfig(
            n_parcels=40, tr=tr, fractions=only_noise, drift_amplitude=drift, grid=1
        )
        parcels = make_parcels("sub-01", [], cfg)
        bold, signal = simulate_run(
            frames, acts, rews, n_vols, parcels, np.random.default_rng(0), cfg
        )
        assert np.all(signal == 0)
        assert bold.var(0).mean() == pytest.approx(1 + drift**2, rel=0.1)
        if drift == 0.0:
            lag1 = np.mean([np.corrcoef(b[1:], b[:-1])[0, 1] for b in bold.T])
            assert lag1 == pytest.approx(cfg.ar1, abs=0.03)


# --------------------------------------------------------------------------- onsets


def test_onsets_equal_materialized_timeline():
    """Replays at onsets give the same BOLD as one stream with blank frames between."""
    rng = np.random.default_rng(3)
    a, b = _gameplay(rng, 600), _gameplay(rng, 900)
    cfg = SimBrainConfig(n_parcels=12, grid=2)
    n_vols = 20
    full_n = int(round(n_vols * cfg.tr * 60))
    frames = np.zeros((full_n, SIZE, SIZE, 3), np.uint8)
    acts, rews = np.zeros((full_n, N_BUTTONS), bool), np.zeros(full_n)
    for (f, ac, rw), start in ((a, 60), (b, 60 * 15)):
        stop = min(full_n, start + len(f))  # the second replay runs past the end: cut
        frames[start:stop], acts[start:stop], rews[start:stop] = (
            f[: stop - start], ac[: stop - start], rw[: stop - start]
        )
    names = list(stimulus_features(frames, acts, rews, grid=2))
    parcels = make_parcels("sub-04", names, cfg)
    one = simulate_run(frames, acts, rews, n_vols, parcels, np.random.default_rng(0), cfg)
    placed = simulate_run(
        [a[0], b[0]], [a[1], b[1]], [a[2], b[2]], n_vols, parcels,
        np.random.default_rng(0), cfg, onsets=[1.0, 15.0],
    )
    np.testing.assert_allclose(placed[0], one[0], atol=1e-5)
    np.testing.assert_allclose(placed[1], one[1], atol=1e-5)
    assert np.abs(one[1]).max() > 0


def test_run_stimulus_and_simulate_errors(runs, subject):
    f, ac, rw = _gameplay(np.random.default_rng(4), 300)
    with pytest.raises(ValueError, match="duration is required when onsets are given"):
        RunStimulus([f], [ac], [rw], onsets=[0.0])
    with pytest.raises(ValueError, match="fps must be a positive number"):
        RunStimulus(f, ac, rw, fps=0)
    only_visual = {"visual": 1.0, "predictive": 0.0, "motor": 0.0, "none": 0.0}
    cfg = SimBrainConfig(n_parcels=4, grid=2, fractions=only_visual)
    parcels = make_parcels("sub-01", ["lum-0"], cfg)
    rng = np.random.default_rng(0)
    bad = [
        (([f, f], [ac, ac], [rw, rw], [0.0, 2.0]), "must not overlap"),
        (([f], [ac], [rw], [30.0]), r"onsets\[0\] = 30.0 s is outside the run"),
        (([f, f], [ac], [rw, rw], [0.0, 9.0]), "one frames, actions and rewards array per onset"),
        (([], [], [], []), "onsets is empty"),
        (([f, f[:, :8]], [ac, ac], [rw, rw], [0.0, 9.0]), "must share frame shape"),
    ]
    for (frames, acts, rews, onsets), match in bad:
        with pytest.raises(ValueError, match=match):
            simulate_run(frames, acts, rews, 10, parcels, rng, cfg, onsets=onsets)
    with pytest.raises(ValueError, match="n_vols must be an integer >= 2"):
        simulate_run(f, ac, rw, 1, parcels, rng, cfg)
    alien = [Parcel("p00-motor-button-9", "motor", ("button-9",), (1.0,), 1.0)]
    with pytest.raises(ValueError, match=r"features \['button-9'\] that this stimulus does not"):
        simulate_run(f, ac, rw, 3, alien, rng, cfg)
    with pytest.raises(ValueError, match="runs is empty"):
        simulate_subject([], "sub-01")
    with pytest.raises(TypeError, match=r"runs\[0\] must be a RunStimulus; got tuple"):
        simulate_subject([(f, ac, rw)], "sub-01")
    with pytest.raises(ValueError, match=r"runs\[0\] lasts 0.5 s, less than 2 volumes"):
        simulate_subject([RunStimulus(f[:30], ac[:30], rw[:30])], "sub-01")
    with pytest.raises(ValueError, match=r"runs\[1\] has features \['button-3'\]"):
        simulate_subject([RunStimulus(f, ac, rw), RunStimulus(f, ac[:, :3], rw)], "sub-01")


# --------------------------------------------------------------------------- game-state families


def test_state_families_are_drawn_from_the_state(state_subject):
    kinds = state_subject.parcel_types
    for kind in PARCEL_TYPES:
        assert kinds.count(kind) == pytest.approx(GAME_FRACTIONS[kind] * len(kinds), abs=1)
    for p in state_subject.parcels:
        assert all(feature_type(f) == p.kind for f in p.features)
        if p.kind in STATE_TYPES:
            names = set(gamestate.OBJECT_VARIABLES) | set(gamestate.ANTICIPATION_VARIABLES)
            fast = {f"fast-{a}.{b}" for i, a in enumerate(gamestate.FAST_VARIABLES) for b in gamestate.FAST_VARIABLES[i + 1:]}
            assert set(p.features) <= names | {f"mixed-{k}" for k in range(16)} | fast


def test_fast_units_are_conjunctions_of_the_game_s_events():
    """A fast unit is the product of two standardized event rates: it carries their coincidence
    within 0.25 s, which no linear function of either carries; a replay's start is no event."""
    n, fps = 600, 60.0
    state = np.zeros((n, len(gamestate.OBJECT_VARIABLES)), np.float32)
    col = {v: j for j, v in enumerate(gamestate.OBJECT_VARIABLES)}
    state[:, col["ship_present"]] = 1
    state[:, col["n_bullets"]] = 3  # already on screen when the replay starts: no firing event
    state[100:, col["n_bullets"]] = 4  # the player fires at frame 100 ...
    rewards = np.zeros(n, np.float32)
    rewards[104] = 1  # ... and hits 4 frames later
    state[400:, col["n_enemies"]] = 1  # an enemy appears at 400, with no shot near it
    fast = gamestate.fast_signals(state, rewards, fps)
    ev = {v: fast[:, j] for j, v in enumerate(gamestate.FAST_VARIABLES)}
    assert ev["fire"][:90].max() == 0 and ev["fire"][100] == pytest.approx(4.0)  # 1 event per 0.25 s
    assert ev["spawn"][400] > 0 and ev["move"].max() == 0
    units = simbrain._fast_features(fast, np.ones(n, bool))
    assert len(units) == 10 and set(map(feature_type, units)) == {"fast"}
    (ma, sa), (mb, sb) = gamestate.FAST_MOMENTS["fire"], gamestate.FAST_MOMENTS["hit"]
    unit = units["fast-fire.hit"]
    np.testing.assert_allclose(unit, (ev["fire"] - ma) / sa * (ev["hit"] - mb) / sb, rtol=1e-5, atol=1e-6)
    rng = np.random.default_rng(0)  # random events at the game's rates: their coincidences are no linear function
    many = np.repeat(state[:1], 6000, axis=0)
    many[:, col["n_bullets"]] = np.cumsum(rng.random(6000) < 22.6 / fps)
    ev = gamestate.fast_signals(many, (rng.random(6000) < 0.45 / fps).astype(np.float32), fps)
    unit = simbrain._fast_features(ev, np.ones(6000, bool))["fast-fire.hit"]
    x = np.c_[ev[:, 1], ev[:, 3], np.ones(6000)]
    resid = unit - x @ np.linalg.lstsq(x, unit, rcond=None)[0]
    assert resid.var() > 0.2 * unit.var()
    off = np.zeros(n, bool)
    assert all(np.all(u == 0) for u in simbrain._fast_features(fast, off).values())  # at rest on a blank screen


def test_mixed_units_are_rectified_random_mixtures_of_the_state(state_runs):
    """Mixed selectivity: each unit is a fixed nonlinear conjunction of the standardized state, the
    same for every stream of the same state, and no linear function of it."""
    r = state_runs[0]
    feats = stimulus_features(r.frames, r.actions, r.rewards, state=r.state)
    units = np.stack([feats[f"mixed-{k}"] for k in range(16)], 1)
    assert units.min() == 0 and 0.1 < (units > 0).mean() < 0.7  # rectified, active part of the time
    again = stimulus_features(r.frames, r.actions, r.rewards, state=r.state)
    assert all(np.array_equal(again[f"mixed-{k}"], units[:, k]) for k in range(16))  # fixed units
    state = np.stack([feats[v] for v in (*gamestate.OBJECT_VARIABLES, *gamestate.ANTICIPATION_VARIABLES)], 1)
    x = np.c_[state, np.ones(len(state))]
    resid = units - x @ np.linalg.lstsq(x, units, rcond=None)[0]
    assert np.mean(resid.var(0) / units.var(0)) > 0.05  # not a linear read-out of the state


def test_mixed_units_are_the_same_function_of_the_state_in_every_run():
    """A unit's tuning is fixed: the same replay drives it alike in a run it fills and in a run that
    ends on a blank screen, where it rests. (Standardizing the state over each run flipped a unit
    in a demo run with a blank tail: its parcels scored r = -0.5 on every model.)"""
    rng = np.random.default_rng(5)
    f, ac, rw = _gameplay(rng, 900)
    state = _state(rng, 900)
    units = [f"mixed-{k}" for k in range(16)]
    n_vols = {"filled": 10, "blank tail": 40}  # 10 volumes: 894 frames of the 900; 40: 30 s blank after
    tr = {}
    for name, n in n_vols.items():
        run = RunStimulus([f], [ac], [rw], onsets=[0.0], duration=n * 1.49, state=[state])
        tr[name] = run_tr_features(run, SimBrainConfig(grid=2))
    early = slice(0, 6)  # volumes whose HRF window the replay's end has not reached
    for u in units:
        np.testing.assert_allclose(tr["blank tail"][u][early], tr["filled"][u][early], rtol=1e-6, atol=1e-9)
    late = tr["blank tail"]
    assert max(np.abs(late[u][-5:]).max() for u in units) < 1e-3 * max(np.abs(late[u]).max() for u in units)


def test_oracle_reaches_the_ceiling_in_every_family(state_subject, state_runs):
    """The true features of each parcel (the oracle) reach >= 90 % of its ceiling, family by
    family; noise parcels score about 0; no parcel beats the r its own clean signal gets."""
    feats = [
        hrf_features(stimulus_features(r.frames, r.actions, r.rewards, state=r.state), N_VOLS) for r in state_runs
    ]
    r = _loro_scores(state_subject, feats)
    kinds = np.array(state_subject.parcel_types)
    ceiling = state_subject.ceiling
    for kind in [k for k in PARCEL_TYPES[:-1] if GAME_FRACTIONS[k] > 0]:
        sel = kinds == kind
        assert sel.any(), kind
        assert np.mean(r[sel]) / np.mean(ceiling[sel]) >= 0.9, kind
    assert abs(r[kinds == "none"].mean()) < 0.1
    realized = np.mean([realized_ceiling(sg, b) for sg, b in zip(state_subject.signal, state_subject.bold)], 0)
    assert np.all(r[kinds != "none"] <= realized[kinds != "none"] + 0.02)


def test_state_without_frames_shape_is_refused(runs):
    bad = dataclasses.replace(runs[0], state=np.zeros((len(runs[0].frames), 3), np.float32))
    with pytest.raises(ValueError, match="state must have shape"):
        simulate_subject([bad], "sub-01", SimBrainConfig(fractions=GAME_FRACTIONS))


def test_state_families_need_a_state(runs):
    with pytest.raises(ValueError, match="'object' parcels were asked for"):
        simulate_subject(runs, "sub-01", SimBrainConfig(fractions=GAME_FRACTIONS))
