"""The users' path: ``python sweeps/scaling.py --preset smoke`` through a real local Ray."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from brainray import parcels, triallog
from brainray.config import load_spec

REPO = Path(__file__).resolve().parent.parent


def _scaling(*args, timeout=900):
    return subprocess.run(
        [sys.executable, str(REPO / "sweeps" / "scaling.py"), *args],
        capture_output=True, text=True, timeout=timeout, cwd=REPO,
    )


def test_relative_storage_is_refused_before_ray_starts():
    out = _scaling("--storage", "results", "--dry-run")
    assert out.returncode == 2
    assert "relative path" in out.stderr


def test_dry_run_prints_the_trial_table():
    out = _scaling("--preset", "paper", "--dry-run")
    assert out.returncode == 0, out.stderr
    spec = load_spec("paper")
    assert len(spec.axes.trials()) == 19  # the paper's grid, plus an untrained control at the reference and per width
    assert f"{len(spec.runs())} trials" in out.stdout and "GPU-hours" in out.stdout
    assert "Prepare (once per dataset" in out.stdout and "VQ-VAE: 150000 steps" in out.stdout  # the data is priced too
    assert out.stdout.count("untrained") == len(spec.axes.control_trials()) - 1  # and the one "codes" control


@pytest.mark.slow
def test_smoke_sweep_end_to_end_then_resume(tmp_path):
    out = _scaling("--preset", "smoke", "--storage", str(tmp_path), "--num-cpus", "2")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    root = tmp_path / "smoke"
    trials = pd.read_parquet(root / "trials")
    expected = load_spec("smoke").runs()
    assert len(trials) == len(expected) == trials["trial_id"].nunique()
    assert (trials["status"] == "TERMINATED").all(), trials[["trial_id", "status", "error"]]
    for axis in ("data_frames", "n_embd", "n_layer", "n_head", "dtype"):
        assert trials[axis].nunique() > 1
    assert trials["brain_r_mean"].notna().all()
    assert trials["val_loss"].isna().eq(trials["control"] == "codes").all()  # the codes control has no model
    assert (trials["brain_r_mean"] < trials["ceiling_mean"]).all()
    assert (trials["train_flops"] == trials["flops_per_token"] * trials["tokens"]).all()
    # the controls (untrained: per seed at the reference and per width; codes: one, no model), never
    # fitted; every row has family scores
    controls = trials[trials["control"] != ""]
    assert sorted(controls["control"]) == sorted(c["control"] for c in load_spec("smoke").axes.control_trials())
    assert (controls["train_flops"] == 0).all()
    assert (controls.loc[controls["control"] == "codes", ["n_embd", "params"]] == 0).all(axis=None)
    for family in ("visual", "object", "relation", "anticipation", "none"):
        assert trials[f"brain_r_{family}"].notna().all(), family
    fits = json.loads((root / "frontier" / "fits.json").read_text())
    assert {r["trial_id"] for r in fits["left_out"]} == set(controls["trial_id"])
    assert fits["training_effect"] and fits["training_effect"][0]["score"] == "brain_r_mean"
    assert fits["training_effect"][0]["codes"] == trials.set_index("control").loc["codes", "brain_r_mean"]
    curves = triallog.read_curves(str(root))
    assert set(curves["trial_id"]) == set(trials["trial_id"])
    for name in ("fits.json", "report.html"):
        assert (root / "frontier" / name).exists(), name
    assert list((root / "frontier").glob("*.png"))
    assert list((root / "tensorboard").rglob("events.out.tfevents.*"))
    assert "Best configuration per training-FLOPs budget" in out.stdout
    # every scored trial (controls too) has its per-parcel table under the trial log's id, and the report maps one
    n_parcels = load_spec("smoke").data.n_parcels
    for trial_id in trials["trial_id"]:
        table = parcels.read_parcel_scores(root, trial_id)
        assert table is not None, trial_id
        assert len(table) == 2 * n_parcels and (table["trial_id"] == trial_id).all()
        assert set(table["family"]) >= {"none"} and table["ceiling"].notna().all()
        mean = table.groupby("subject")["r"].mean()  # the same r as the row's per-subject mean
        row = trials.set_index("trial_id").loc[trial_id]
        for subject, r in mean.items():
            assert r == pytest.approx(row[f"r_mean_{subject}"], abs=1e-9), (trial_id, subject)
    assert fits["parcels"]["trial_id"] in set(trials["trial_id"]) and fits["plots"]["parcels.png"] == "written"
    assert (root / "frontier" / "parcels.png").exists()
    assert f"{2 * n_parcels} parcels over 2 subject(s)" in (root / "frontier" / "report.html").read_text()

    again = _scaling("--preset", "smoke", "--storage", str(tmp_path), "--num-cpus", "2")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming" in again.stdout
    log = triallog.read_trials(str(root))
    assert len(log) == len(expected)
    assert len(list((root / "trials").glob("*.parquet"))) == len(expected)  # nothing re-run or re-written


def test_prepare_only_finds_the_dataset_and_starts_no_trial(tmp_path, tiny_dataset):
    import shutil

    shared = tmp_path / "shared"
    shutil.copytree(tiny_dataset.root, shared / tiny_dataset.root.name)  # prepared before, as on a cluster
    out = _scaling("--preset", "smoke", "--storage", str(tmp_path / "out"), "--data-dir", str(shared),
                   "--prepare-only", "--num-cpus", "2")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "[prepare] cached dataset" in out.stdout and "no trial was started" in out.stdout
    root = tmp_path / "out" / "smoke"
    assert not (root / "trials").exists() and not (root / "frontier").exists()


# -- checks made before any trial starts (no Ray instance needed) ---------------------------------
def _spec(**resources):
    import dataclasses

    spec = load_spec("smoke")
    return dataclasses.replace(spec, resources=dataclasses.replace(spec.resources, **resources))


def test_a_request_no_single_node_can_meet_is_refused_even_if_the_total_could():
    from brainray.sweep import check_resources

    two_small_nodes = [{"CPU": 2.0}, {"CPU": 2.0}]  # 4 CPUs in total, but a trial runs on one node
    with pytest.raises(ValueError, match="asks for 3 CPU and 0 GPU on one node"):
        check_resources(_spec(cpus_per_trial=3, gpus_per_trial=0), two_small_nodes, joined=True)
    check_resources(_spec(cpus_per_trial=2, gpus_per_trial=0), two_small_nodes, joined=True)


def test_gpus_auto_on_a_cluster_with_no_gpu_must_be_made_explicit():
    from brainray.sweep import check_resources

    cpu_nodes = [{"CPU": 8.0}]
    with pytest.raises(ValueError, match="no node of the cluster has a GPU now"):
        check_resources(_spec(gpus_per_trial="auto"), cpu_nodes, joined=True)
    check_resources(_spec(gpus_per_trial="auto"), cpu_nodes, joined=False)  # local instance: CPU trials
    check_resources(_spec(gpus_per_trial=0), cpu_nodes, joined=True)  # CPU on purpose
    with pytest.raises(ValueError, match="asks for 1 CPU and 1 GPU"):
        check_resources(_spec(gpus_per_trial=1), cpu_nodes, joined=True)
    said = []
    check_resources(_spec(gpus_per_trial=1, autoscale=True), cpu_nodes, joined=True, log=said.append)
    assert "waiting for the autoscaler" in said[0]


def test_uri_storage_needs_a_posix_data_dir(tmp_path):
    out = _scaling("--preset", "smoke", "--storage", "s3://bucket/brainray", "--no-report")
    assert out.returncode == 2
    assert "--data-dir" in out.stderr and "POSIX" in out.stderr


@pytest.mark.slow
def test_extrapolate_runs_the_predicted_optimum_and_its_neighbours_into_the_same_log(tmp_path):
    out = _scaling("--preset", "smoke", "--storage", str(tmp_path), "--num-cpus", "2", "--no-report")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    root = tmp_path / "smoke"
    before = triallog.read_trials(str(root))

    # The smoke sweep pins neither law: refused, naming both laws, and nothing is run
    refused = _scaling("--preset", "smoke", "--storage", str(tmp_path), "--num-cpus", "2", "--extrapolate", "4")
    assert refused.returncode == 2, refused.stdout[-3000:] + refused.stderr[-3000:]
    assert "loss law (val_loss) is not identified" in refused.stderr and "brain law (brain_r_mean)" in refused.stderr
    assert "--allow-unidentified" in refused.stderr
    assert len(triallog.read_trials(str(root))) == len(before)

    out = _scaling("--preset", "smoke", "--storage", str(tmp_path), "--num-cpus", "2", "--extrapolate", "4",
                   "--allow-unidentified")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    log = triallog.read_trials(str(root))
    new = log[log["role"] == "extrapolation"]
    assert len(log) == len(before) + len(new) and set(before["trial_id"]) < set(log["trial_id"])
    assert (new["status"] == "TERMINATED").all(), new[["trial_id", "status", "error"]]
    budget = 4 * before.loc[before["control"] == "", "train_flops"].max()
    assert (new["extrapolate_k"] == 4).all() and np.allclose(new["extrapolate_budget"], budget)
    optimum = new[new["extrapolate_pick"].str.contains("val_loss optimum")]
    assert len(optimum) == 1
    # the optimum spends the budget (its exact cost, up to one batch) on a width beyond the axis, at the reference
    assert budget * 0.8 < optimum["train_flops"].iloc[0] <= budget * 1.001
    assert optimum["n_embd"].iloc[0] > max(load_spec("smoke").axes.n_embd)
    ref = load_spec("smoke").axes.reference
    assert (new["n_layer"] == ref["n_layer"]).all() and (new["n_head"] == ref["n_head"]).all()
    widths = sorted(new["n_embd"])  # the optimum and one width step either side
    assert len(widths) == 3 and widths[1] == optimum["n_embd"].iloc[0] and widths[0] * 2 == widths[1] == widths[2] // 2
    for m in ("val_loss", "brain_r_mean"):
        assert new[f"predicted_{m}"].notna().all()
        assert (new[f"predicted_{m}_lo"] <= new[f"predicted_{m}"]).all()
        assert (new[f"predicted_{m}"] <= new[f"predicted_{m}_hi"]).all()
    assert new["prediction_note"].str.contains("--allow-unidentified").all()
    # never fitted, and shown against their predictions in the report
    fits = json.loads((root / "frontier" / "fits.json").read_text())
    left = {r["trial_id"]: r["reason"] for r in fits["left_out"]}
    assert all("extrapolation" in left[t] for t in new["trial_id"])
    page = (root / "frontier" / "report.html").read_text()
    assert "Predict, then verify: extrapolation trials" in page and all(t in page for t in new["trial_id"])
    assert all(parcels.read_parcel_scores(root, t) is not None for t in new["trial_id"])


def test_checkpoint_pruner_deletes_nothing_it_cannot_read(tmp_path):
    """No saved state, or one caught mid-write: every checkpoint stays (keeping files is always safe)."""
    from brainray.sweep import CheckpointPruner

    experiment = tmp_path / "tune"
    pruner = CheckpointPruner(str(experiment))
    assert pruner.prune() == 0  # no experiment folder yet
    trial_dir = experiment / "trainable_abc_00000"
    for i in range(3):
        (trial_dir / f"checkpoint_{i:06d}").mkdir(parents=True)
    assert pruner.prune() == 0  # no state file
    (experiment / "experiment_state-2026-12-04_22-00-00.json").write_text('{"trial_data": [[')  # half written
    assert pruner.prune() == 0
    assert sorted(p.name for p in trial_dir.iterdir()) == [f"checkpoint_{i:06d}" for i in range(3)]
