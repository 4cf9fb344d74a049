"""Tests for brainray.prepare with source "cneuromod", on a tiny synthetic BIDS + fMRIPrep tree.

The tree (tests/bids_tree.py) has 1 subject, 1 session and 3 runs whose events point to real
``.bk2`` plays of Airstriker recorded here (the Shinobi ROM is not installed), with the real
quirks (long float onsets, levels 1-0/4-1/5-0, ``Missing file`` and empty rows).
"""

from __future__ import annotations

import dataclasses
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from bids_tree import SUB, TR, bk2_path, build_tree
from brainray import gameplay, trial, video, vqvae
from brainray.config import SpecError, SweepSpec, load_spec
from brainray.prepare import REPLAY_ORDER, Dataset, SubjectBold, _stim_missing, load_dataset, prepare

N_VOLS = 50  # 74.5 s runs; "simple" + global signal confounds are ~31 regressors
PLAY = 450  # frames per recorded play (7.5 s): five clips of 32 frames make a tiny dataset
GAME = "Airstriker-Genesis-v0"


def _row(onset: float, level: str, stim: str) -> tuple:
    return ("gym-retro_game", onset, PLAY / 60 + 0.05, PLAY / 60, level, stim)


EVENTS = {
    1: [_row(2.0138000000000003, "1-0", "rep-000"), _row(14.520600000000002, "4-1", "rep-001"),
        _row(30.0, "5-0", "Missing file")],
    2: [_row(1.5010999999999513, "5-0", "rep-002"), _row(20.02, "1-0", "rep-003")],
    3: [_row(3.0, "4-1", "rep-004"), _row(25.000000000000004, "5-0", "rep-005"), _row(40.0, "1-0", "")],
}
# the paper's order: subject, then level, then repetition (session, run, onset)
ORDER = ["level-1_rep-000", "level-1_rep-003", "level-4_rep-001", "level-4_rep-004",
         "level-5_rep-002", "level-5_rep-005"]

SETTINGS = {
    "name": "cneuromod-test",
    "data": {"source": "cneuromod", "game": GAME, "frame_size": 16, "val_fraction": 0.2},
    "tokenizer": {"clip_frames": 8, "time_downsample": 4, "downsample": [4, 4, 4], "n_hiddens": 16,
                  "n_codes": 32, "embedding_dim": 16, "steps": 30},
    "train": {"epochs": 1, "batch_size": 16, "lr": 0.001, "log_every": 5},
    "axes": {
        "design": "lines", "cross": False,
        "reference": {"data_frames": 900, "n_embd": 16, "n_layer": 1, "n_head": 1, "dtype": "fp32", "seed": 0},
        "data_frames": [450, 900], "n_embd": [16], "n_layer": [1], "n_head": [1], "dtype": ["fp32"],
    },
}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    """The tree with a real bk2 (a scripted Airstriker play) at every stim_file: built once."""
    base = tmp_path_factory.mktemp("bids")
    tree = build_tree(base, EVENTS, N_VOLS)
    seed = 0
    for run, rows in EVENTS.items():
        for *_, level, stim in rows:
            if stim.startswith("rep-"):
                gameplay.record_play(tree["root"] / bk2_path(run, level, stim), PLAY, seed=seed, game=GAME)
                seed += 1
    return base


@pytest.fixture
def tree(recorded, tmp_path) -> dict:
    """A fresh copy of the recorded tree that a test may break."""
    base = tmp_path / "bids"
    shutil.copytree(recorded, base)
    return {"root": base / "shinobi", "atlas": base / "atlas.nii.gz",
            "func": base / "shinobi" / SUB / "ses-001" / "func"}


def _spec(tmp_path: Path, root: Path, atlas: Path, **data) -> SweepSpec:
    """The user's path: a YAML file loaded with load_spec."""
    settings = {**SETTINGS, "data": {**SETTINGS["data"], "bids_root": str(root), "atlas": str(atlas), **data}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(settings))
    return load_spec(str(path))


@pytest.fixture(scope="module")
def prepared(recorded, tmp_path_factory) -> Dataset:
    torch.set_num_threads(1)
    spec = _spec(tmp_path_factory.mktemp("spec"), recorded / "shinobi", recorded / "atlas.nii.gz")
    with pytest.warns(UserWarning, match="has no replay; row skipped"):
        return prepare(spec, tmp_path_factory.mktemp("data") / spec.data_key(), log=lambda msg: None)


# ----------------------------------------------------------------------------- manifest


def test_manifest_runs_and_segments(prepared):
    m = prepared.manifest
    assert m["source"] == "cneuromod" and m["version"] == 2
    assert m["subjects"] == [SUB] and m["noise_ceiling"] is None
    assert m["tr"] == TR and m["game"] == GAME
    assert [r["run"] for r in m["runs"]] == [f"{SUB}_ses-001_run-0{k}" for k in (1, 2, 3)]
    for run, (k, rows) in zip(m["runs"], EVENTS.items()):
        assert run["subject"] == SUB and run["n_vols"] == N_VOLS and run["tr"] == TR
        played = [r for r in rows if r[-1].startswith("rep-")]  # missing rows are skipped
        assert [s["onset"] for s in run["segments"]] == [r[1] for r in played]  # long floats kept exactly
        assert [s["level"] for s in run["segments"]] == [r[4] for r in played]
        assert all(s["n_frames"] == PLAY for s in run["segments"])  # inside the run: not cut
        assert [s["replay"] for s in run["segments"]] == [
            Path(bk2_path(k, r[4], r[5])).stem for r in played
        ]


def test_manifest_replays_frames_and_tokens(prepared):
    replays = prepared.manifest["replays"]
    assert [r["name"].split("_run-")[1][3:] for r in replays] == ORDER  # level then repetition
    assert prepared.manifest["replay_order"] == list(REPLAY_ORDER)
    assert {r["split"] for r in replays} == {"train", "val"}
    train = prepared.replays("train")
    assert [r["name"] for r in train] == [r["name"] for r in replays if r["split"] == "train"]
    assert prepared.train_frames == PLAY * len(train)
    n_clips = len(video.clip_starts(PLAY, 8, 4))
    model = vqvae.load_vqvae(prepared.root / "vqvae.pt")
    for r in replays:
        assert r["n_frames"] == PLAY
        assert not (prepared.root / "frames" / f"{r['name']}.u8").exists()  # the brain is measured: no frames kept
        bk2 = Path(prepared.manifest["data"]["bids_root"]) / r["bk2"]
        codes = prepared.tokens(r["name"])
        assert codes.shape == (n_clips, *prepared.latent_shape)
        assert codes.max() < 32
        # the streamed tokens are those of the frames the bk2 replays to
        frames = gameplay.replay(bk2, GAME, size=prepared.manifest["frame_size"]).frames
        assert np.array_equal(codes, vqvae.tokenize(model, video.get_clips(frames, video.clip_starts(PLAY, 8, 4), 8, 4)))


def test_subject_bold_has_no_ceiling(prepared):
    sub = prepared.subject(SUB)
    assert isinstance(sub, SubjectBold) and sub.ceiling is None
    assert len(sub.bold) == 3 and all(b.shape == (N_VOLS, 4) for b in sub.bold)
    assert prepared.run_indices(SUB) == [0, 1, 2]
    with pytest.raises(KeyError, match="Unknown subject 'sub-02'"):
        prepared.subject("sub-02")


def test_prepare_is_cached(prepared):
    again = prepare(SweepSpec(), prepared.root, log=lambda msg: None)  # the manifest is there: read
    assert again.manifest == prepared.manifest


def test_run_indices_shared_and_own(tmp_path):
    runs = [{"run": "a"}, {"run": "b", "subject": "sub-01"}, {"run": "c", "subject": "sub-02"}]
    ds = Dataset(tmp_path, {"runs": runs, "subjects": ["sub-01", "sub-02"]})
    assert ds.run_indices("sub-01") == [0, 1] and ds.run_indices("sub-02") == [0, 2]


# ----------------------------------------------------------------------------- trial


def test_trial_on_cneuromod(prepared):
    spec = load_spec("smoke")
    config = {
        **SETTINGS["axes"]["reference"],
        "dataset": str(prepared.root),
        "train": {**dataclasses.asdict(spec.train), **SETTINGS["train"]},
    }
    reports = []
    final = trial.run(config, lambda metrics, checkpoint_dir=None: reports.append(metrics))
    assert final["done"] and "error" not in final
    assert math.isfinite(final["val_loss"])
    for key in ("brain_r_mean", "brain_r_max", "brain_r_top10", f"r_mean_{SUB}", f"r_max_{SUB}"):
        assert np.isfinite(final[key]), key
    assert final["ceiling_frac"] is None and final["ceiling_mean"] is None


# ----------------------------------------------------------------------------- errors


def test_shinobi_rom_not_installed(tree, tmp_path):
    spec = _spec(tmp_path, tree["root"], tree["atlas"], game="ShinobiIIIReturnOfTheNinjaMaster-Genesis")
    msg = r"ROM of game 'ShinobiIIIReturnOfTheNinjaMaster-Genesis-v0' is not installed.*python -m stable_retro.import"
    with pytest.raises(FileNotFoundError, match=msg):
        prepare(spec, tmp_path / "data", log=lambda msg: None)


def test_missing_stim_bk2(tree, tmp_path):
    missing = tree["root"] / bk2_path(2, "1-0", "rep-003")
    missing.unlink()
    spec = _spec(tmp_path, tree["root"], tree["atlas"])
    msg = (
        r"1 replay\(s\) named in the events of .* do not exist:\n"
        r"  sub-01_ses-001_task-shinobi_run-02_events.tsv, row 1: stim_file '.*_run-02_level-1_rep-003.bk2'"
    )
    with pytest.raises(FileNotFoundError, match=msg):
        prepare(spec, tmp_path / "data", log=lambda msg: None)


def test_corrupt_stim_bk2(tree, tmp_path):
    bad = tree["root"] / bk2_path(3, "4-1", "rep-004")
    bad.write_bytes(b"not a movie")
    spec = _spec(tmp_path, tree["root"], tree["atlas"])
    with pytest.warns(UserWarning, match="row skipped"):
        with pytest.raises(ValueError, match=r"bk2 movie '.*_run-03_level-4_rep-004.bk2' is not a zip archive"):
            prepare(spec, tmp_path / "data", log=lambda msg: None)


def test_events_pointing_outside_the_root(tree, tmp_path):
    events = tree["func"] / f"{SUB}_ses-001_task-shinobi_run-01_events.tsv"
    events.write_text(events.read_text().replace(bk2_path(1, "4-1", "rep-001"), "../x.bk2"))
    spec = _spec(tmp_path, tree["root"], tree["atlas"])
    with pytest.raises(ValueError, match=r"run-01_events.tsv, row 1: stim_file '../x.bk2' points outside"):
        prepare(spec, tmp_path / "data", log=lambda msg: None)


def test_too_few_runs(tree, tmp_path):
    (tree["func"] / f"{SUB}_ses-001_task-shinobi_run-03_events.tsv").unlink()
    spec = _spec(tmp_path, tree["root"], tree["atlas"])
    with pytest.raises(ValueError, match=r"at least 3 runs with a replay per subject; \{'sub-01': 2\}"):
        prepare(spec, tmp_path / "data", log=lambda msg: None)


def test_relative_and_missing_paths_in_the_spec(tree, tmp_path):
    with pytest.raises(SpecError, match=r"'data.bids_root' must be an absolute path; got 'shinobi'"):
        _spec(tmp_path, Path("shinobi"), tree["atlas"])
    with pytest.raises(SpecError, match=r"'data.atlas' '/nope/atlas.nii.gz' is not an existing file"):
        _spec(tmp_path, tree["root"], Path("/nope/atlas.nii.gz"))
    with pytest.raises(SpecError, match=r"'data.val_fraction' must be in \(0, 1\); got 1.0"):
        _spec(tmp_path, tree["root"], tree["atlas"], val_fraction=1.0)
    spec = SweepSpec()  # built in code, not loaded: prepare checks the data settings itself
    spec.data = dataclasses.replace(spec.data, source="cneuromod")
    with pytest.raises(SpecError, match=r"'data.bids_root' is required with data.source 'cneuromod'"):
        prepare(spec, tmp_path / "data", log=lambda msg: None)


def test_cneuromod_preset_needs_the_data():
    with pytest.raises(SpecError) as err:
        load_spec("cneuromod")
    msg = str(err.value)
    assert "'data.bids_root' '/data/cneuromod.shinobi' is not an existing folder" in msg
    assert "'data.atlas' '/data/atlases/MIST_1095.nii.gz' is not an existing file" in msg


# ----------------------------------------------------------------------------- damaged datasets


@pytest.fixture
def copied(tiny_dataset, tmp_path) -> Path:
    """A copy of the session's simulated dataset that a test may damage."""
    root = tmp_path / tiny_dataset.root.name
    shutil.copytree(tiny_dataset.root, root)
    return root


@pytest.mark.parametrize("lost", ["tokens/play-0001.npy", "vqvae.pt", "brain/sub-02/simbrain.npz",
                                  "frames/play-0009.u8"])
def test_a_missing_file_is_named_when_the_dataset_is_opened(copied, lost):
    (copied / lost).unlink()
    msg = rf"cached dataset {re.escape(str(copied))} is incomplete: 1 file\(s\) that its dataset.json lists"
    with pytest.raises(FileNotFoundError, match=rf"{msg} do not exist:\n  {lost}\nRerun prepare on it"):
        load_dataset(copied)


def test_missing_token_files_are_tokenized_again(copied, tiny_dataset, smoke_spec):
    (copied / "tokens" / "play-0001.npy").unlink()
    (copied / "tokens" / "play-0005.npy").unlink()
    vqvae_mtime = (copied / "vqvae.pt").stat().st_mtime_ns
    logs: list[str] = []
    ds = prepare(smoke_spec, copied, log=logs.append)
    assert "is incomplete: 2 file(s)" in logs[0] and "tokenizing them again" in logs[0]
    # only that stage: not played, simulated or trained again
    assert all(line.startswith("[tokenizer] tokeniz") for line in logs[1:]), logs
    assert (copied / "vqvae.pt").stat().st_mtime_ns == vqvae_mtime
    for name in ("play-0001", "play-0005"):
        assert np.array_equal(ds.tokens(name), tiny_dataset.tokens(name))  # the codes they had
    assert not list((copied / "tokens").glob(".*"))  # no temp file left


def test_a_corrupt_manifest_is_named_and_the_dataset_rebuilt(copied, tiny_dataset, smoke_spec):
    manifest = copied / "dataset.json"
    manifest.write_text(manifest.read_text()[:200])  # truncated
    msg = rf"{re.escape(str(manifest))} cannot be read \(JSONDecodeError: .*\): the cached dataset .* is damaged"
    with pytest.raises(ValueError, match=msg + ". Rerun prepare, which rebuilds it"):
        load_dataset(copied)
    logs: list[str] = []
    ds = prepare(smoke_spec, copied, log=logs.append)
    assert logs[0].startswith(f"[prepare] the cached dataset {copied} is damaged: {manifest} cannot be read")
    assert logs[0].endswith("rebuilding it") and logs[-1].startswith("[prepare] done")
    for key in ("replays", "runs", "subjects", "data"):
        assert ds.manifest[key] == tiny_dataset.manifest[key], key
    assert load_dataset(copied).manifest == ds.manifest


@pytest.mark.slow  # a second full build: the same path as a corrupt manifest's
def test_a_missing_brain_file_rebuilds_the_dataset(copied, smoke_spec):
    (copied / "brain" / "sub-01" / "simbrain.json").unlink()
    logs: list[str] = []
    ds = prepare(smoke_spec, copied, log=logs.append)
    assert "brain/sub-01/simbrain.json" in logs[0] and logs[0].endswith("rebuilding it")
    assert logs[-1].startswith("[prepare] done")
    assert len(ds.subject("sub-01").bold) == smoke_spec.data.n_runs


def test_a_damaged_file_is_named_when_it_is_read(copied):
    tokens = copied / "tokens" / "play-0001.npy"
    tokens.write_bytes(tokens.read_bytes()[: tokens.stat().st_size // 2])  # header intact, codes cut short
    (copied / "brain" / "sub-02" / "simbrain.npz").write_bytes(b"")
    ds = load_dataset(copied)  # opening checks existence only: a trial that never reads them is not failed
    fix = "it is corrupt or truncated. Delete it and rerun prepare"
    why = r"\(ValueError: mmap length is greater than file size\)"
    with pytest.raises(ValueError, match=rf"{re.escape(str(tokens))} cannot be read {why}: {fix}"):
        ds.tokens("play-0001")
    brain = re.escape(str(copied / "brain" / "sub-02"))
    with pytest.raises(ValueError, match=rf"{brain} cannot be read \(.*\): {fix}"):
        ds.subject("sub-02")
    assert ds.subject("sub-01").bold  # the other files read


# ----------------------------------------------------------------------------- damaged BIDS files


@pytest.mark.parametrize("name, what", [("run-02_bold.json", "a JSON sidecar"),
                                        ("run-02_events.tsv", "a tab-separated events file")])
def test_a_corrupt_bids_file_is_named(tree, tmp_path, name, what):
    bad = tree["func"] / f"{SUB}_ses-001_task-shinobi_{name}"
    bad.write_bytes(b'{"RepetitionTime": 1.4' if name.endswith(".json") else b"\xff\xfe\x00 not text")  # cut, garbage
    spec = _spec(tmp_path, tree["root"], tree["atlas"])
    with pytest.raises(ValueError, match=rf"{re.escape(str(bad))} cannot be read as {what} \(.*\); it is corrupt"):
        prepare(spec, tmp_path / "data", log=lambda msg: None)


def test_stimulus_runs_are_filled_with_gameplay(tiny_dataset, smoke_spec):
    """Gameplay is recorded until every stimulus run is full: a play cut at the end of a run is
    not continued in the next, so the runs need more frames than their length (the demo's last
    run was 40 % blank screen before)."""
    d = smoke_spec.data
    run_frames = int(d.run_vols * d.tr * 60)
    for run in tiny_dataset.manifest["runs"]:
        assert sum(seg["n_frames"] for seg in run["segments"]) >= run_frames - 60, run["run"]
    plays = [{"split": "stim", "name": f"p{i}", "n_frames": 1000} for i in range(4)]
    # 3 runs of 2682 frames take 3 plays each (the third cut): 4 plays fill one run and part of another
    assert _stim_missing(d, plays) == (run_frames - 60 - 1000) + (run_frames - 60)
    assert _stim_missing(d, plays * 3) == 0
