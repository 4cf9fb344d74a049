"""Tests for brainray.report: files written, self-contained HTML, graceful small sweeps."""

import json
import re
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from brainray.frontier import analyze, simulate_trials
from brainray.report import PLOTS, write_report

LOSS = (2.0, 60.0, 400.0, 0.25, 0.40)
BRAIN = (0.25, 6.0, 5.0, 0.25, 0.30)


@pytest.fixture(scope="module")
def trials() -> pd.DataFrame:
    """36 trials from known laws (fp32 and fp16), plus one failed trial."""
    df = simulate_trials(n_embd=(64, 128, 256), n_layer=(2, 4), data_frames=(10_000, 100_000, 1_000_000),
                         dtype=("fp32", "fp16"), loss_law=LOSS, brain_law=BRAIN,
                         loss_noise=0.005, brain_noise=0.002, seed=2)
    failed = df.iloc[[0]].assign(trial_id="crashed", status="ERROR", val_loss=np.nan,
                                 brain_r_mean=np.nan,
                                 error="Traceback\nRuntimeError: worker died")
    return pd.concat([df, failed], ignore_index=True)


@pytest.fixture(scope="module")
def curves(trials) -> pd.DataFrame:
    rows = []
    for _, t in trials[trials["status"] == "TERMINATED"].iloc[::5].iterrows():
        for step in range(1, 11):
            loss = t["val_loss"] * (1 + 2 / step)
            rows.append(dict(trial_id=t["trial_id"], step=step, tokens=t["tokens"] * step / 10,
                             train_loss=loss,
                             val_loss=loss * 1.01 if step % 5 == 0 else np.nan))
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def full_report(tmp_path_factory, trials, curves):
    out = tmp_path_factory.mktemp("report")
    path = write_report(trials, out, curves_df=curves, bootstrap=10, title="test sweep")
    return out, path


def test_report_writes_every_file(full_report):
    out, path = full_report
    assert path == out / "report.html"
    for name in ("fits.json", "allocation.csv", "report.html") + PLOTS:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for name in PLOTS:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_fits_json_parses_and_recovers_law(full_report, trials):
    out, _ = full_report
    d = json.loads((out / "fits.json").read_text())
    assert d["n_trials"] == len(trials) and d["n_usable"] == len(trials) - 1
    fit = d["fits"]["val_loss"]
    assert fit["alpha"] == pytest.approx(LOSS[3], rel=0.05)
    assert fit["beta"] == pytest.approx(LOSS[4], rel=0.05)
    assert set(fit["ci"]) >= {"alpha", "beta", "a", "b"}
    assert d["fits"]["brain_r_mean"]["form"] == "ceiling_gap"
    assert d["left_out"] == [{"trial_id": "crashed", "status": "ERROR",
                              "reason": "status ERROR: RuntimeError: worker died"}]
    assert all(v == "written" for k, v in d["plots"].items() if k != "frontier_families.png")
    assert "no per-family scores" in d["plots"]["frontier_families.png"]  # these trials have no parcel families
    alloc = pd.read_csv(out / "allocation.csv")
    assert set(alloc["metric"]) == {"val_loss", "brain_r_mean"}
    assert (alloc["cost"] <= alloc["budget"]).all()


def _outside_plotly_js(text: str) -> str:
    """The page without the embedded plotly.js library (whose code holds URL strings of its own)."""
    head, rest = text.split("<script id='plotly-js'>", 1)
    return head + rest.split("</script>", 1)[1]


def test_html_is_self_contained(full_report):
    _, path = full_report
    text = path.read_text()
    assert "plotly.js v" in text.split("<script id='plotly-js'>", 1)[1][:400]  # the library itself, inline
    page = _outside_plotly_js(text)
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*https?://""", page, re.I)
    assert "<link" not in page.lower() and not re.search(r"<script[^>]*\ssrc=", page, re.I)
    assert text.count("src='data:image/png;base64,") == len(PLOTS)
    assert "crashed" in text and "RuntimeError: worker died" in text  # left-out row
    for section in ("Fitted scaling laws", "Compute-optimal allocation", "Per-axis effects",
                    "Precision (dtype)", "Trials", "Left out"):
        assert section in text
    assert "L = " in text and "1 - r/c = " in text  # the fitted laws written out
    assert "1.17" in text  # paper's dtype speed-up beside ours


def test_tiny_sweep_still_writes_report(tmp_path, trials):
    tiny = trials[trials["status"] == "TERMINATED"].iloc[:3]
    path = write_report(tiny, tmp_path)
    text = path.read_text()
    assert "No law was fitted" in text and "only 3 usable trial" in text
    d = json.loads((tmp_path / "fits.json").read_text())
    assert d["fits"] == {"val_loss": None, "brain_r_mean": None}
    assert "only 3 usable" in d["fit_errors"]["val_loss"]
    assert (tmp_path / "frontier_loss.png").is_file()
    assert (tmp_path / "allocation.csv").is_file()
    assert "no training curves" in d["plots"]["loss_curves.png"]
    assert not (tmp_path / "loss_curves.png").exists()


def test_report_with_all_trials_failed(tmp_path, trials):
    bad = trials.assign(status="ERROR").iloc[:4]
    path = write_report(bad, tmp_path)
    text = path.read_text()
    assert "only 0 usable" in text and text.count("status ERROR") == 4


def test_report_reuses_given_analysis(tmp_path, trials):
    res = analyze(trials, bootstrap=0)
    write_report(trials, tmp_path, analysis=res)
    d = json.loads((tmp_path / "fits.json").read_text())
    assert d["fits"]["val_loss"]["n_bootstrap"] == 0


def test_report_errors(tmp_path, trials):
    with pytest.raises(TypeError, match="trials_df must be a pandas DataFrame; got list"):
        write_report([1, 2], tmp_path)
    with pytest.raises(ValueError, match=r"curves_df lacks column\(s\) \['train_loss'\]"):
        write_report(trials, tmp_path,
                     curves_df=pd.DataFrame(columns=["trial_id", "step", "tokens",
                                                     "val_loss"]))


def test_report_opens_with_findings_and_carries_the_backtest(full_report):
    out, path = full_report
    text = path.read_text()
    assert text.index("<h2 id='findings'>Findings</h2>") < text.index("What training adds") < text.index(
        "Fitted scaling laws")
    findings = text.split("<ul class='findings'>", 1)[1].split("</ul>", 1)[0]
    assert "Seed noise:" not in findings  # no config of this sweep was run twice
    assert "noise of every effect below is unknown" in findings and "noise unknown" in findings
    assert "fp16 runs at 1.1" in findings and "Backtest: fitted without the largest budget" in findings
    assert "Backtest: fit without the largest budget, predict it" in text and "Sensitivity to the ceiling" in text
    d = json.loads((out / "fits.json").read_text())
    assert d["findings"] and all(set(f) >= {"topic", "text"} for f in d["findings"])
    assert d["backtest"]["error"] is None and len(d["backtest"]["held"]) >= 1
    assert {r["law"] for r in d["backtest"]["table"]} == {"N, D law", "compute law (FLOPs)"}
    assert d["ceiling_sensitivity"]["used"] == "given ceiling"
    assert "do not depend on" not in text


def test_tiny_sweep_says_there_is_no_backtest(tmp_path, trials):
    path = write_report(trials[trials["status"] == "TERMINATED"].iloc[:3], tmp_path)
    text = path.read_text()
    assert "No backtest: without the" in text and "needs at least 5" in text


def _plot_data(text: str, div_id: str) -> list[dict]:
    """The traces handed to Plotly.newPlot for one plot div."""
    call = text.split(f'Plotly.newPlot(                        "{div_id}",', 1)[1]
    return json.JSONDecoder().raw_decode(call.lstrip())[0]


def _values(v) -> np.ndarray:
    """A Plotly data array: a plain list, or base64 ``{"bdata", "dtype"}`` as Plotly 6+ writes numbers."""
    if isinstance(v, dict):
        import base64

        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"])
    return np.asarray(v)


def test_interactive_plots_hold_every_trial_with_its_config(full_report, trials):
    _, path = full_report
    text = path.read_text()
    ok = trials[trials["status"] == "TERMINATED"]
    frontiers = _plot_data(text, "plot-frontiers")
    points = [t for t in frontiers if t.get("name") == "trials"]
    assert len(points) == 4  # loss and brain score, against FLOPs and GPU-hours
    for t in points:
        assert len(_values(t["x"])) == len(ok) and len(t["text"]) == len(ok)
    assert sorted(_values(points[0]["y"])) == pytest.approx(sorted(ok["val_loss"]))
    hover = points[0]["text"][0]
    for key in ("trial_id", "n_embd", "n_layer", "n_head", "data_frames", "dtype", "val_loss", "brain_r_mean"):
        assert f"<b>{key}</b>" in hover
    assert any(t.get("name") == "Pareto front" for t in frontiers)
    assert any(t.get("name") == "95 % bootstrap band" for t in frontiers)
    axes = _plot_data(text, "plot-axes")
    assert any("error_y" in t for t in axes) and any(t.get("name", "").startswith("every trial") for t in axes)
    assert _plot_data(text, "plot-isoflop")


def test_live_report_reloads_while_the_sweep_runs(tmp_path, trials):
    from brainray import locks

    res = analyze(trials, bootstrap=0)
    out = tmp_path / "frontier"
    text = write_report(trials, out, analysis=res).read_text()  # not in a sweep folder: no banner, no reload
    assert "location.reload" not in text and "Sweep running" not in text and "not running" not in text
    with locks.exclusive(tmp_path / ".driver.lock", "the sweep test"):  # what run_sweep holds while trials run
        text = write_report(trials, out, analysis=res).read_text()
        assert "Sweep running: this page reloads itself every 30 s" in text and "location.reload()" in text
        assert json.loads((out / "fits.json").read_text())["sweep_state"] == "running"
    text = write_report(trials, out, analysis=res).read_text()  # the final report, after the driver let go
    assert "location.reload" not in text and "The sweep is not running" in text
    assert json.loads((out / "fits.json").read_text())["sweep_state"] == "ended"
    assert "location.reload()" in write_report(trials, out, analysis=res, live=True).read_text()
    assert not (out / "report.html.tmp").exists()


def _parcel_scores(trial_id: str) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    fams = ["visual"] * 6 + ["object"] * 4 + ["none"] * 2
    ceiling = np.array([0.5] * 10 + [0.0] * 2)
    return pd.DataFrame(dict(
        trial_id=trial_id, subject=np.repeat(["sub-01", "sub-02"], 12), parcel=[f"p{i:02d}" for i in range(12)] * 2,
        family=fams * 2, feature=(["lum-0", "lum-4", "motion-8", "lum-0", "contrast-4", "motion-8"]
                                  + ["ship_x"] * 4 + [""] * 2) * 2,
        receptive_field=(["row 0, col 0", "row 1, col 1", "row 2, col 2"] * 2 + [""] * 6) * 2,
        ceiling=np.tile(ceiling, 2), r=np.tile(ceiling, 2) * 0.6 + 0.01 * rng.standard_normal(24)))


def test_report_maps_the_best_trials_parcels(tmp_path, trials):
    from brainray import parcels

    res = analyze(trials, bootstrap=0)
    best = res["usable"].loc[res["usable"]["brain_r_mean"].idxmax(), "trial_id"]
    out = tmp_path / "frontier"
    text = write_report(trials, out, analysis=res).read_text()
    assert f"No per-parcel scores for the best trial (<code>{best}</code>)" in text
    assert not (out / "parcels.png").exists()
    parcels.write_parcel_scores(tmp_path, best, _parcel_scores(best))  # where the report looks for it
    text = write_report(trials, out, analysis=res).read_text()
    assert (out / "parcels.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"Best trial by brain score: <code>{best}</code>, 24 parcels over 2 subject(s)" in text
    assert "row 1, col 1" in text
    summary = {(r["family"], r["receptive_field"]): r for r in json.loads((out / "fits.json").read_text())
               ["parcels"]["summary"]}
    assert summary[("object", "")]["n"] == 8 and summary[("object", "")]["ceiling_frac"] == pytest.approx(0.6, abs=0.02)
    assert summary[("none", "")]["ceiling_frac"] is None  # no ceiling, no fraction
    assert "No brain maps: they need the labels atlas" in text  # a simulated brain has no atlas
    assert not list(out.glob("brainmap_*.png")) and "brain_maps" not in json.loads((out / "fits.json").read_text())
    atlas = _atlas(tmp_path)  # 4 labels for 12 parcels: said, and no map drawn
    text = write_report(trials, out, analysis=res, atlas=atlas).read_text()
    assert f"the best trial has 12 parcels but the atlas {atlas} has 4 labels" in text
    assert not list(out.glob("brainmap_*.png"))


def _atlas(folder) -> str:
    """:func:`bids_tree.mni_atlas` as a NIfTI file."""
    import nibabel as nib

    from bids_tree import mni_atlas

    path = folder / "atlas.nii.gz"
    nib.save(mni_atlas(), path)
    return str(path)


def test_the_atlas_comes_from_the_sweeps_spec_json(tmp_path):
    from brainray.report import _sweep_atlas

    assert _sweep_atlas(tmp_path) is None  # no sweep wrote this folder
    (tmp_path / "spec.json").write_text(json.dumps({"data": {"source": "simulated", "atlas": ""}}))
    assert _sweep_atlas(tmp_path) is None
    spec = {"data": {"source": "cneuromod", "atlas": "/data/MIST_1095.nii.gz"}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    assert _sweep_atlas(tmp_path) == _sweep_atlas(f"file://{tmp_path}") == "/data/MIST_1095.nii.gz"  # URI sweeps too


WEIGHTS = np.array([1.0, 0.5, -1.0, 2.0])  # a parcel's r is brain_r_mean times its weight


def test_report_draws_brain_maps_for_cneuromod_with_an_atlas(tmp_path, trials):
    from brainray import parcels

    res = analyze(trials, bootstrap=0)
    ds = SimpleNamespace(subject=lambda name: SimpleNamespace(ceiling=None))  # measured: no ceiling
    for t in res["usable"].itertuples():
        r = t.brain_r_mean * WEIGHTS
        parcels.write_parcel_scores(tmp_path, t.trial_id, parcels.parcel_table(
            ds, {"sub-01": r - 0.01, "sub-02": r + 0.01}, trial_id=t.trial_id))
    (tmp_path / "spec.json").write_text(json.dumps({"data": {"source": "cneuromod", "atlas": _atlas(tmp_path)}}))
    out = tmp_path / "frontier"
    (out / "brainmap_delta_gone.png").parent.mkdir()
    (out / "brainmap_delta_gone.png").write_bytes(b"stale")
    text = write_report(trials, out, analysis=res).read_text()  # the atlas comes from the sweep's spec.json

    d = json.loads((out / "fits.json").read_text())["brain_maps"]
    assert d["error"] is None and d["atlas"] == str(tmp_path / "atlas.nii.gz")
    assert d["reference"] == {"n_embd": 256, "n_layer": 4, "n_head": 4, "data_frames": 1_000_000, "dtype": "fp32"}
    steps = {(s["axis"], s["lo_value"], s["hi_value"]): s for s in d["steps"]}
    assert set(steps) == {("n_embd", 64, 128), ("n_embd", 128, 256), ("n_layer", 2, 4),
                          ("data_frames", 10_000, 100_000), ("data_frames", 100_000, 1_000_000),
                          ("dtype", "fp16", "fp32")}  # n_head has one value: no step
    ref = res["usable"].set_index(["n_embd", "n_layer", "data_frames", "dtype"])["brain_r_mean"]
    gain = ref.loc[(128, 4, 1_000_000, "fp32")] - ref.loc[(64, 4, 1_000_000, "fp32")]
    s = steps[("n_embd", 64, 128)]
    assert s["n_lo"] == s["n_hi"] == 1 and s["n_parcels"] == 4
    assert s["mean_delta_r"] == pytest.approx(gain * WEIGHTS.mean())
    assert s["parcels_up"] == (3 if gain > 0 else 1)  # the sign follows each parcel's weight

    names = ["brainmap_r.png"] + [f"brainmap_delta_{a}.png" for a in ("n_embd", "n_layer", "data_frames", "dtype")]
    assert sorted(p.name for p in out.glob("brainmap_*.png")) == sorted(names)  # the stale map is gone
    for name in names:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert "<h3>Brain maps</h3>" in text and "No brain maps" not in text
    section = text.split("<h3>Brain maps</h3>", 1)[1].split("<h2", 1)[0]
    assert section.count("src='data:image/png;base64,") == len(names)  # embedded: the page opens offline
    assert "from a value to the next (red: r rises)" in section and "mean_delta_r" in section


@pytest.mark.slow
def test_report_renders_offline_in_headless_chromium(full_report, tmp_path):
    """The page draws its Plotly plots with the network off: every script it needs is in the file."""
    import shutil
    import subprocess

    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no Chromium on this machine (apt-get install -y chromium)")
    _, path = full_report
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--proxy-server=127.0.0.1:9",
           '--host-resolver-rules=MAP * ~NOTFOUND', "--virtual-time-budget=15000", f"--user-data-dir={tmp_path}",
           "--dump-dom", path.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=300).stdout
    assert "<h2 id=\"findings\">Findings</h2>" in dom
    for div in ("plot-frontiers", "plot-isoflop", "plot-axes"):
        drawn = dom.split(f'id="{div}"', 1)[1][:200000]
        assert "main-svg" in drawn and 'class="point"' in drawn, div  # Plotly drew its points


def test_family_panels_draw_the_codes_control_without_untrained_controls(tmp_path, trials, monkeypatch):
    """A sweep with ``axes.controls: [codes]`` alone still draws the codes line in every family panel."""
    from brainray import report

    df = trials[trials["status"] == "TERMINATED"].assign(control="", brain_r_visual=lambda d: d["brain_r_mean"] + 0.1)
    codes = df.iloc[[0]].assign(trial_id="codes", control="codes", n_embd=0, n_layer=0, n_head=0, params=0,
                                params_nonembed=0, train_flops=0.0, val_loss=np.nan, brain_r_mean=0.2,
                                brain_r_visual=0.3)
    figures = []
    monkeypatch.setattr(report.plt, "close", figures.append)
    assert report._plot_families(analyze(pd.concat([df, codes], ignore_index=True), bootstrap=0), tmp_path / "f.png") is None
    lines = [line for ax in figures[0].axes for line in ax.get_lines() if line.get_label() == "VQ codes alone (no model)"]
    assert len(lines) == 1 and lines[0].get_ydata()[0] == pytest.approx(0.3)
