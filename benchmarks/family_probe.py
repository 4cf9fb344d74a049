"""How much can training show on the simulated brain? Each family's headroom, without noise.

The demo's brain score moves little with training (``brain_sensitivity.md``). This asks why,
before any mix is changed: for the reference model and the sweep's largest corner, trained and
untrained with the same seeds, it reads every driver feature of the simulated brain *without
noise* (HRF-convolved, on the TR grid) from the model's TR features, with the ridge and the
leave-one-run-out split that ``trial.score_brain`` uses. A parcel's measured r is about its
noiseless r times its noise ceiling, so per family:

    predicted gain in r  ~=  (noiseless r trained - noiseless r untrained) x mean ceiling

Beside the models, the same ridge reads the VQ codes themselves, pooled over the screen and
by position: what the input already holds, with no model at all. And the largest gain in
``brain_r_mean`` that *any* mix of these families could show is
bounded by putting every parcel that is neither the pixel floor (``visual``) nor noise into
the family that gains most, at the top of the SNR range.

    python benchmarks/family_probe.py                         # ~10 min on 2 cores
    python benchmarks/family_probe.py --storage results/brain_sensitivity   # the demo sweep's own dataset

Writes ``results/benchmarks/family_probe.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from brainray import encoding, simbrain, trial  # noqa: E402
from brainray.config import dataset_root, load_spec  # noqa: E402
from brainray.prepare import prepare, run_stimulus  # noqa: E402

OUT = REPO / "results" / "benchmarks"
#: Read-outs with no model, beside the models: the codes pooled over the screen, and by position.
TOKEN_READOUTS = {"codes pooled (no model)": False, "codes by position (no model)": True}


def _configs(spec, ds_root: str) -> dict[str, dict]:
    """The reference (two seeds) and the largest corner (widest, most data), trained and untrained."""
    ref = spec.axes.reference
    base = next(t for t in spec.axes.trials() if all(t[k] == ref[k] for k in ref))
    base = {**base, "dataset": ds_root, "train": dataclasses.asdict(spec.train)}
    corner = {"n_embd": max(spec.axes.n_embd), "data_frames": max(spec.axes.data_frames)}
    out = {}
    for name, over in [("reference", {}), ("reference seed 1", {"seed": 1}), ("largest", corner)]:
        out[f"untrained {name}"] = {**base, **over, "control": "untrained"}
        out[f"trained {name}"] = {**base, **over}
    return out


def _features(config: dict, ds) -> tuple[np.ndarray, dict]:
    """Train (or not) one config through ``trial.run``; the TR features the ridge saw, and the metrics.

    The features are the ones ``trial.score_brain`` scored, kept as it hands them to the ridge:
    read again afterwards, the model would be back in training mode (dropout on).
    """
    seen = {}
    score = trial.score_features

    def keep(features, *args, **kwargs):  # the real ridge, with the features kept for the probe
        seen.update(features)
        return score(features, *args, **kwargs)

    trial.score_features = keep
    try:
        metrics = trial.run(config, lambda *a, **k: None)
    finally:
        trial.score_features = score
    X = np.concatenate([seen[k] for k in range(len(ds.manifest["runs"]))]).astype(np.float32)
    return X, {k: metrics[k] for k in ("val_loss", "brain_r_mean")}


def _all_runs(model, ds, layer: int, device) -> np.ndarray:
    """``trial.run_features`` of every stimulus run, stacked: (n_trs, n_embd)."""
    runs = range(len(ds.manifest["runs"]))
    return np.concatenate([trial.run_features(model, ds, k, layer, device) for k in runs]).astype(np.float32)


def _code_histogram(ds, by_position: bool) -> list[np.ndarray]:
    """The clips' VQ codes themselves, no model (``trial.code_shares``: the ``codes`` control's
    features, or by position), per stimulus run, without the codes never used."""
    codes = trial.code_shares(ds, by_position)
    runs = [trial.run_clip_features(ds, k, codes) for k in range(len(ds.manifest["runs"]))]
    used = np.concatenate(runs).std(axis=0) > 0  # codes never used carry nothing
    return [x[:, used].astype(np.float32) for x in runs]


def _targets(ds) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Every driver feature of the demo's families, noiseless at the TR; (n_trs, F), names, groups."""
    cfg = simbrain.SimBrainConfig(tr=ds.manifest["tr"])
    runs = [simbrain.run_tr_features(run_stimulus(ds.root, r, r["n_vols"], cfg.tr), cfg) for r in ds.manifest["runs"]]
    shares = simbrain.GAME_FRACTIONS
    names = [k for k in runs[0] if shares.get(simbrain.feature_type(k), 0) > 0]
    Y = np.concatenate([np.stack([r[k] for k in names], 1) for r in runs])
    groups = np.concatenate([np.full(len(r[names[0]]), k) for k, r in enumerate(runs)])
    varies = np.array([all(np.ptp(Y[groups == g, j]) > 0 for g in np.unique(groups)) for j in range(len(names))])
    return Y[:, varies].astype(np.float32), [n for n, v in zip(names, varies) if v], groups


def _ceilings(ds) -> dict[str, float]:
    """Mean noise ceiling of each family's parcels, over subjects."""
    out: dict[str, list] = {}
    for s in ds.subjects:
        sub = ds.subject(s)
        for kind, c in zip(sub.parcel_types, sub.ceiling):
            out.setdefault(kind, []).append(float(c))
    return {k: float(np.mean(v)) for k, v in out.items()}


def measure(storage: Path, preset: str) -> dict:
    spec = load_spec(preset)
    root = str(storage / spec.name)
    ds = prepare(spec, dataset_root(root, str(storage), None, spec))  # the sweep's own dataset when it ran there
    Y, names, groups = _targets(ds)
    tr = spec.train
    models, r = {}, {}
    for name, config in _configs(spec, str(ds.root)).items():
        t0 = time.perf_counter()
        X, models[name] = _features(config, ds)
        r[name] = encoding.encode_subject(X, Y, groups, alphas=tr.alphas, delays=tr.delays, device="cpu")
        print(f"[probe] {name}: {models[name]}, {time.perf_counter() - t0:.0f} s", flush=True)
    for name, by_position in TOKEN_READOUTS.items():
        X = _code_histogram(ds, by_position)
        r[name] = encoding.encode_subject(np.concatenate(X), Y, groups, alphas=tr.alphas, delays=tr.delays, device="cpu")
        scores = trial.score_features(dict(enumerate(X)), ds, tr, "cpu")
        models[name] = {"val_loss": None, "brain_r_mean": scores["brain_r_mean"]}
        print(f"[probe] {name}: {X[0].shape[1]} columns, {models[name]}", flush=True)
    kinds = np.array([simbrain.feature_type(n) for n in names])
    ceiling = _ceilings(ds)
    families = []
    for kind in sorted(set(kinds)):
        m = {k: float(np.mean(v[kinds == kind])) for k, v in r.items()}
        gains = {
            "reference": m["trained reference"] - m["untrained reference"],
            "reference seed 1": m["trained reference seed 1"] - m["untrained reference seed 1"],
            "largest": m["trained largest"] - m["untrained largest"],
            "largest vs untrained reference": m["trained largest"] - m["untrained reference"],
        }
        families.append({
            "family": kind, "n_features": int((kinds == kind).sum()), "share": simbrain.GAME_FRACTIONS[kind],
            "ceiling": ceiling.get(kind), "noiseless_r": m, "gain": gains,
            "predicted_gain": {k: g * ceiling.get(kind, 0.0) for k, g in gains.items()},
        })
    best_gain = max(f["gain"]["largest vs untrained reference"] for f in families)
    free = 1 - simbrain.GAME_FRACTIONS["visual"] - simbrain.GAME_FRACTIONS["none"]
    top_ceiling = float(simbrain.noise_ceiling(max(simbrain.SimBrainConfig().snr_range)))
    mix = sum(f["share"] * f["predicted_gain"]["largest vs untrained reference"] for f in families)
    return {
        "models": models, "families": families,
        "predicted_brain_r_mean_gain": mix,
        "bound": {
            "free_share": free, "top_ceiling": top_ceiling, "best_noiseless_gain": best_gain,
            "brain_r_mean_gain": free * top_ceiling * best_gain, "criterion": 0.05,
        },
    }


def _md(res: dict, meta: dict) -> str:
    cols = ["untrained reference", "trained reference", "untrained largest", "trained largest", *TOKEN_READOUTS]
    lines = [
        "# Family probe: how much can training show on the simulated brain?", "",
        f"`python benchmarks/family_probe.py`, {meta['date']}, {meta['machine']}, {meta['minutes']:.1f} min. "
        "Every driver feature of the demo's parcels, read *without noise* from each model's TR features "
        "(ridge and leave-one-run-out split of `trial.score_brain`). Reference: "
        "the preset's reference config; largest: its widest model on its most data.", "",
        "| model | val loss | brain_r_mean (measured, with noise) |", "|---|---|---|",
        *[f"| {k} | {'—' if v['val_loss'] is None else format(v['val_loss'], '.3f')} | {v['brain_r_mean']:.3f} |"
          for k, v in res["models"].items()], "",
        "## Noiseless r per family", "",
        "Gain: trained − untrained, same config and seed. Predicted: gain × the family's mean noise ceiling, "
        "what the gain in measured r should be.", "",
        "| family | share | features | ceiling | " + " | ".join(cols)
        + " | gain ref (seed 0, 1) | gain largest | largest − untrained ref | predicted |",
        "|---|---|---|---|" + "---|" * len(cols) + "---|---|---|---|",
    ]
    for f in res["families"]:
        g = f["gain"]
        lines.append(
            f"| {f['family']} | {f['share']:.2f} | {f['n_features']} | {f['ceiling']:.2f} | "
            + " | ".join(f"{f['noiseless_r'][c]:.3f}" for c in cols)
            + f" | {g['reference']:+.3f}, {g['reference seed 1']:+.3f} | {g['largest']:+.3f} | "
            f"{g['largest vs untrained reference']:+.3f} | {f['predicted_gain']['largest vs untrained reference']:+.3f} |"
        )
    fams = res["families"]
    pooled, by_pos = TOKEN_READOUTS
    above = [f["family"] for f in fams if f["noiseless_r"][pooled] >= f["noiseless_r"]["trained largest"]]
    lines += [
        "", "## The codes alone", "",
        "- A ridge on the codes themselves, with no model (the share of each VQ code on the screen per latent step), "
        f"reads {len(above)} of {len(fams)} families at least as well as the largest trained model"
        + (f" ({', '.join(above)})" if above else "") + "; by position, "
        f"{sum(f['noiseless_r'][by_pos] >= f['noiseless_r']['trained largest'] for f in fams)} of {len(fams)}.",
        "- Every model's features are pooled over the screen, n_embd numbers per step: a random (untrained) or "
        "learned map of that histogram. Where the codes alone read a family better than any model, what the "
        "parcels need is already in the model's input: training can only recover part of it, not add to it.",
        f"- With noise, on the demo's parcels: the codes pooled score brain_r_mean "
        f"**{res['models'][pooled]['brain_r_mean']:.3f}** and by position **{res['models'][by_pos]['brain_r_mean']:.3f}**, "
        f"against {res['models']['untrained reference']['brain_r_mean']:.3f} untrained and "
        f"{res['models']['trained largest']['brain_r_mean']:.3f} for the largest trained model.",
    ]
    b = res["bound"]
    lines += [
        "", "## What any mix could show", "",
        f"- This mix: the shares times the predicted gains give **{res['predicted_brain_r_mean_gain']:+.3f}** "
        "in brain_r_mean for the largest model over the untrained reference.",
        f"- Any mix that keeps the pixel floor and the noise parcels: {b['free_share']:.2f} of the parcels in the "
        f"family that gains most (+{b['best_noiseless_gain']:.3f} noiseless), all at the top of the SNR range "
        f"(ceiling {b['top_ceiling']:.2f}), gives at most **{b['brain_r_mean_gain']:+.3f}** "
        f"(criterion {b['criterion']}). "
        + ("Below the criterion: at this training scale no choice of these families can meet it."
           if b["brain_r_mean_gain"] < b["criterion"] else "Above the criterion: a mix could meet it."),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--storage", type=Path, default=REPO / "results" / "brain_sensitivity")
    args = ap.parse_args()
    t0 = time.perf_counter()
    res = measure(args.storage, args.preset)
    meta = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "minutes": (time.perf_counter() - t0) / 60, "preset": args.preset,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "family_probe.json").write_text(json.dumps({"meta": meta, **res}, indent=2) + "\n")
    (OUT / "family_probe.md").write_text(_md(res, meta))
    print((OUT / "family_probe.md").read_text())


if __name__ == "__main__":
    main()
