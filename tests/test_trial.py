import math
import re

import numpy as np
import pytest
import torch
from recorder import Recorder

from brainray import trial
from brainray.prepare import load_dataset


def test_prepared_dataset_is_complete(tiny_dataset, smoke_spec):
    ds = load_dataset(tiny_dataset.root)
    assert ds.train_frames >= smoke_spec.data.train_replays * smoke_spec.data.replay_frames // 2
    assert len(ds.manifest["runs"]) == smoke_spec.data.n_runs
    sub = ds.subject(ds.manifest["subjects"][0])
    assert len(sub.bold) == smoke_spec.data.n_runs
    assert sub.bold[0].shape == (smoke_spec.data.run_vols, smoke_spec.data.n_parcels)
    codes = ds.tokens(ds.replays("train")[0]["name"])
    assert codes.shape[1:] == tuple(ds.latent_shape)
    assert codes.max() < smoke_spec.tokenizer.n_codes


def test_trial_trains_and_scores(trial_config, tmp_path):
    rec = Recorder(tmp_path)
    final = trial.run(trial_config, rec)
    assert all("val_loss" in m for m in rec.metrics)  # the sweep metric is in every report
    assert final["done"] and "error" not in final
    assert math.isfinite(final["val_loss"])
    assert final["val_loss"] < math.log(final["vocab_size"])  # it learned something
    assert final["train_flops"] == pytest.approx(final["flops_per_token"] * final["tokens"])
    assert final["tokens"] == final["step"] * final["batch_size"] * final["n_ctx"]
    for key in ("brain_r_mean", "brain_r_max", "brain_r_top10", "ceiling_frac", "r_mean_sub-01"):
        assert np.isfinite(final[key]), key
    assert final["brain_r_max"] < 1.0 and final["ceiling_frac"] < 1.0
    assert len(rec.checkpoints) == trial_config["train"]["epochs"]


def test_same_seed_same_curve(trial_config, tmp_path):
    a, b = Recorder(tmp_path / "a"), Recorder(tmp_path / "b")
    trial.run(trial_config, a)
    trial.run(trial_config, b)
    assert [m["train_loss"] for m in a.metrics] == [m["train_loss"] for m in b.metrics]
    assert a.metrics[-1]["brain_r_mean"] == b.metrics[-1]["brain_r_mean"]


def test_resume_matches_uninterrupted_run(trial_config, tmp_path):
    cfg = {**trial_config, "train": {**trial_config["train"], "epochs": 2}}
    full = Recorder(tmp_path / "full")
    expected = trial.run(cfg, full)
    resumed = Recorder(tmp_path / "resumed")
    got = trial.run(cfg, resumed, checkpoint_dir=full.checkpoints[0])  # as if moved after epoch 1
    assert got["val_loss"] == expected["val_loss"]
    assert got["step"] == expected["step"]
    assert got["brain_r_mean"] == pytest.approx(expected["brain_r_mean"], abs=1e-6)


def test_checkpoint_loads_with_weights_only(trial_config, tmp_path):
    rec = Recorder(tmp_path)
    trial.run(trial_config, rec)
    ckpt = torch.load(f"{rec.checkpoints[0]}/{trial.CHECKPOINT}", weights_only=True)
    assert {"model", "optimizer", "scaler", "rng_cpu", "step", "best_val_loss", "config"} <= set(ckpt)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_low_precision_runs_on_cpu(trial_config, tmp_path, dtype):
    final = trial.run({**trial_config, "dtype": dtype}, Recorder(tmp_path))
    assert math.isfinite(final["val_loss"]) and "error" not in final


def test_divergence_is_reported_as_failure(trial_config, tmp_path):
    cfg = {**trial_config, "train": {**trial_config["train"], "lr": float("inf"), "warmup_frac": 0.0}}
    rec = Recorder(tmp_path)
    final = trial.run(cfg, rec)
    assert final["error"].startswith("diverged: loss=nan")
    assert rec.metrics[-1] is not None and rec.metrics[-1]["done"]


def test_data_budget_too_small_for_a_clip_pair(trial_config, tmp_path):
    with pytest.raises(ValueError, match="data_frames=10 gives no pair of consecutive clips"):
        trial.run({**trial_config, "data_frames": 10}, Recorder(tmp_path))


def test_resume_from_the_last_epoch_checkpoint_only_scores(trial_config, tmp_path):
    """A trial restored after its last epoch (e.g. retried by Tune) skips training and scores."""
    full = Recorder(tmp_path / "full")
    expected = trial.run(trial_config, full)
    again = trial.run(trial_config, Recorder(tmp_path / "again"), checkpoint_dir=full.checkpoints[-1])
    assert again["step"] == expected["step"] and again["val_loss"] == expected["val_loss"]
    assert again["train_loss"] == expected["train_loss"]
    assert again["brain_r_mean"] == pytest.approx(expected["brain_r_mean"], abs=1e-6)


def _truncated(ckpt: dict, path) -> None:
    torch.save(ckpt, path)
    path.write_bytes(path.read_bytes()[:1000])  # as a copy cut short leaves it


def _garbage(ckpt: dict, path) -> None:
    path.write_bytes(b"not a checkpoint\n" * 4)


def _without_optimizer(ckpt: dict, path) -> None:
    """Reads, and its model loads, before the restore fails: a partial restore must be undone."""
    torch.save({k: v for k, v in ckpt.items() if k != "optimizer"}, path)


@pytest.mark.parametrize("damage, why", [
    (_truncated, r"cannot be read: it is corrupt or truncated \(RuntimeError: PytorchStreamReader"),
    (_garbage, r"cannot be read: it is corrupt or truncated \(UnpicklingError\)"),
    (_without_optimizer, r"does not fit this trial \(KeyError: 'optimizer'\)"),
], ids=["truncated", "garbage", "partial"])
@pytest.mark.parametrize("schedule", ["scratch", "reuse"])
def test_a_damaged_checkpoint_restarts_the_trial_from_scratch(trial_config, tmp_path, capsys, damage, why, schedule):
    if schedule == "reuse":
        train = {**trial_config["train"], "data_schedule": "reuse", "lr_schedule": "wsd"}
        trial_config = {**trial_config, "train": train, "data_frames": 2400, "branches": [1200, 2400]}
    cfg = {**trial_config, "train": {**trial_config["train"], "epochs": 2}}
    fresh = Recorder(tmp_path / "fresh")
    expected = trial.run(cfg, fresh)
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    path = damaged / trial.CHECKPOINT
    damage(torch.load(fresh.checkpoints[0] / trial.CHECKPOINT, weights_only=True), path)
    resumed = Recorder(tmp_path / "resumed")
    with pytest.warns(RuntimeWarning, match=rf"{re.escape(str(path))} {why}") as warned:
        got = trial.run(cfg, resumed, checkpoint_dir=str(damaged))
    msg = "\n".join(str(w.message) for w in warned)
    assert "The trial restarts from scratch (step 0)" in msg
    assert "weights_only" not in msg + "".join(capsys.readouterr())  # torch's advice is not passed on
    # from scratch: the same start as a new trial (model, optimiser, RNG and counters)
    assert [(m["step"], m["train_loss"]) for m in resumed.metrics] == [
        (m["step"], m["train_loss"]) for m in fresh.metrics
    ]
    assert got["step"] == expected["step"] and got["val_loss"] == expected["val_loss"]


def test_a_trial_worker_imports_neither_the_emulator_nor_the_fmri_stack():
    """Trials read a prepared dataset through ``brainray.dataset`` only."""
    import subprocess
    import sys

    code = ("import sys, brainray.trial; print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('stable_retro', 'retro', 'nilearn', 'nibabel') or m in ('brainray.prepare', 'brainray.gameplay', "
            "'brainray.fmri')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_untrained_control_scores_the_initial_weights(trial_config, tmp_path):
    """A control trains nothing, scores the seeded initial model, and logs a score per parcel family;
    on the game-state families it stays well below what the true signal reaches (the oracle).

    Pooled over those families (22 parcels here): per family, the smoke data's 4 object parcels are
    read from the pixels nearly as well as the oracle reads them (0.56 against 0.8 x oracle 0.59),
    a margin within their noise; the families one by one are measured at the demo's scale
    (``benchmarks/brain_sensitivity.py``)."""
    from brainray import simbrain

    rec = Recorder(tmp_path)
    final = trial.run({**trial_config, "control": "untrained"}, rec)
    assert final["control"] == "untrained" and final["step"] == 0 and final["tokens"] == 0
    assert final["train_flops"] == 0 and final["incurred_flops"] == 0
    assert final["val_loss"] == pytest.approx(math.log(final["vocab_size"]), abs=0.3)  # the initial loss
    assert not rec.checkpoints
    ds = load_dataset(trial_config["dataset"])
    kinds = set(ds.subject("sub-01").parcel_types)
    assert set(simbrain.STATE_TYPES) <= kinds  # the smoke dataset has game state: Airstriker
    for kind in kinds:
        assert np.isfinite(final[f"brain_r_{kind}"]), kind
        assert (final[f"ceiling_frac_{kind}"] is None) == (kind == "none"), kind
    sub = [ds.subject(s) for s in ds.subjects]
    family = np.concatenate([d.parcel_types for d in sub])
    oracle = np.concatenate([np.mean([simbrain.realized_ceiling(sg, b) for sg, b in zip(d.signal, d.bold)], 0) for d in sub])
    n = {kind: np.sum(family == kind) for kind in simbrain.STATE_TYPES}
    untrained = sum(final[f"brain_r_{kind}"] * n[kind] for kind in n) / sum(n.values())
    assert untrained < 0.8 * oracle[np.isin(family, simbrain.STATE_TYPES)].mean(), (untrained, oracle)
    again = trial.run({**trial_config, "control": "untrained"}, Recorder(tmp_path / "again"))
    assert again["brain_r_mean"] == final["brain_r_mean"]  # the seed fixes the initial weights


def test_codes_control_reads_the_codes_alone_through_the_same_ridge(trial_config, tmp_path):
    """The ``codes`` control has no model: no parameters, no FLOPs, no val loss. Its score is the
    ridge on the code shares (the path a model's features take), a calibrated read-out: game-state
    parcels well above 0 and below their ceiling, noise parcels as a null read-out scores.

    The null is the same ridge on fresh draws of the simulator's own noise. On the smoke data's 3 runs
    of 30 volumes one noise parcel's r spreads by about 0.2 (the drift is slow): a fixed ``|r| < 0.1``
    on its 4 noise parcels failed on a sound read-out."""
    from brainray import encoding, simbrain
    from brainray.config import TrainSpec

    rec = Recorder(tmp_path)
    final = trial.run({**trial_config, "n_embd": 0, "n_layer": 0, "n_head": 0, "control": "codes"}, rec)
    assert final["control"] == "codes" and final["params"] == 0 and final["train_flops"] == 0
    assert final["step"] == 0 and math.isnan(final["val_loss"]) and not rec.checkpoints
    ds = load_dataset(trial_config["dataset"])
    features = {k: trial.run_clip_features(ds, k, trial.code_shares(ds)) for k in range(len(ds.manifest["runs"]))}
    scores = trial.score_features(features, ds, TrainSpec(**trial_config["train"]), "cpu")
    assert final["brain_r_mean"] == pytest.approx(scores["brain_r_mean"], abs=1e-6)
    subject = ds.subject(ds.subjects[0])
    runs = ds.run_indices(ds.subjects[0])
    rng = np.random.default_rng(0)
    null = encoding.encode_subject(
        np.concatenate([features[k] for k in runs]),
        np.concatenate([simbrain._noise(len(features[k]), 256, rng, subject.config) for k in runs]),
        np.concatenate([np.full(len(features[k]), k) for k in runs]),
        alphas=trial_config["train"]["alphas"], delays=trial_config["train"]["delays"], device="cpu")
    kinds = np.concatenate([ds.subject(s).parcel_types for s in ds.subjects])
    r = np.concatenate([scores[trial.PARCEL_R][s] for s in ds.subjects])

    def beyond_null(sel: np.ndarray) -> float:
        """How many null standard errors the mean r of the selected parcels sits from the null's mean."""
        return (r[sel].mean() - null.mean()) / (null.std() / math.sqrt(sel.sum()))

    assert abs(beyond_null(kinds == "none")) < 4
    game_state = np.isin(kinds, ("object", "relation", "anticipation", "mixed"))
    assert beyond_null(game_state) > 4  # pooled: 22 parcels here (one family's 4 are too few to judge alone)
    for kind in ("object", "relation"):
        assert 0 < final[f"ceiling_frac_{kind}"] <= 1, kind


def test_unknown_control_is_refused(trial_config, tmp_path):
    with pytest.raises(ValueError, match="unknown control 'shuffled'"):
        trial.run({**trial_config, "control": "shuffled"}, Recorder(tmp_path))


@pytest.mark.parametrize("data_schedule", ["scratch", "reuse"])
def test_each_size_scores_the_best_weights_on_its_own_path(trial_config, tmp_path, data_schedule):
    """The one rule of both schedules: a size's ``val_loss`` is the lowest evaluation on its own path
    (trunk epochs and forks up to its fork, then its cooldown's end), ``final_val_loss`` its last, and
    the weights of ``val_loss`` are the ones scored."""
    from brainray.config import TrainSpec

    train = {**trial_config["train"], "epochs": 3}
    cfg = {**trial_config, "train": train}
    if data_schedule == "reuse":
        cfg = {**cfg, "train": {**train, "data_schedule": "reuse", "lr_schedule": "wsd"}, "data_frames": 2400,
               "branches": [1200, 2400]}
    rec = Recorder(tmp_path)
    last = trial.run(cfg, rec)
    ckpts = [torch.load(c / trial.CHECKPOINT, weights_only=True) for c in rec.checkpoints]
    rows = rec.rows() if data_schedule == "reuse" else [last]
    assert rows[-1] == last and len(ckpts) >= 3
    for row in rows:
        fork = row.get("branch_step", row["step"]) if row is not last else row["step"]
        evaluated = [c["val_loss"] for c in ckpts if c["step"] <= fork] + [row["final_val_loss"]]
        assert row["val_loss"] == min(evaluated), row["data_frames"]
    assert last["final_val_loss"] == ckpts[-1]["val_loss"]
    # finish scores ``best``, whatever the model holds: the first epoch's weights, then the trunk's best
    t = trial._Trainer(cfg, TrainSpec(**cfg["train"]))
    t.best = ckpts[0]["model"]
    first = t.finish(last["step"])["brain_r_mean"]
    t.best = ckpts[-1]["best_model"]
    assert t.finish(last["step"])["brain_r_mean"] == pytest.approx(last["brain_r_mean"], abs=1e-6)
    assert first != pytest.approx(last["brain_r_mean"], abs=1e-6)


def test_run_clip_features_puts_each_clip_on_the_tr_grid(tiny_dataset):
    """The code shares of a run (the ``codes`` control's features), through the path a model's
    features take (``run_features`` calls it): every volume with gameplay holds shares of codes
    that sum to 1, by position one per latent position, and the volumes before the first play
    are 0."""
    ds = load_dataset(tiny_dataset.root)
    t, h, w = ds.latent_shape
    n_codes = int(ds.manifest["tokenizer"]["n_codes"])
    run = ds.manifest["runs"][0]
    X = trial.run_clip_features(ds, 0, trial.code_shares(ds))
    assert X.shape == (run["n_vols"], n_codes)
    total = X.sum(axis=1)
    played = total > 0
    assert played.mean() > 0.5
    np.testing.assert_allclose(total[played], 1.0, rtol=1e-5)
    by_position = trial.run_clip_features(ds, 0, trial.code_shares(ds, by_position=True))
    assert by_position.shape == (run["n_vols"], n_codes * h * w)
    np.testing.assert_allclose(by_position[played].sum(axis=1), h * w, rtol=1e-5)
    np.testing.assert_allclose(by_position.reshape(len(X), h * w, n_codes).mean(axis=1), X, atol=1e-6)
    tr = float(ds.manifest["tr"])
    first = min(seg["onset"] for seg in run["segments"])
    assert not played[: int(first // tr)].any()  # nothing before the first play starts
