"""Screen candidate parcel families against every trial of a finished demo sweep, without noise.

``family_probe.py`` and ``target_probe.py`` retrain four models; this reads the sweep's own
Tune checkpoints instead (each trial's best weights, the ones it was scored with), so a
candidate family is judged on all trained trials at once, as the issue's criteria are:

- **training at a fixed width**: trained (most data) minus untrained, same width;
- **width alone**: untrained widest minus untrained reference (the ridge gets more columns);
- **the score follows the model**: Spearman rho(val loss, noiseless r) over the trained trials.

Each target is an HRF-convolved per-frame function of the stimulus and the game (never of a
model), read without noise by the ridge and leave-one-run-out split of ``trial.score_brain``.
Candidate sets, beside the demo's own driver features:

- ``tuned``: Gaussian tuning curves (0.4 sd wide) on six state variables, centred at -1, 0, 1, 2 sd;
- ``sparse``: 12 rectified random mixtures of the standardized state with a threshold of 2 sd
  (``mixed`` uses 0.5), active a few per cent of the time.

Each demo family is also reported alone (``demo: <family>``). The products of fast events that
this screen found to separate models most on an 8x8 latent grid are now the demo's ``fast``
family.

    python benchmarks/family_screen.py --storage results/brain_sensitivity   # ~5 min on 2 cores
    python benchmarks/family_screen.py --storage results/brain_sensitivity --readout mlp

``--readout mlp`` reads each model's MLP-branch output of the feature block (what the paper
extracts, ``post_fc_dp``) instead of the residual stream the trial reads, pooled the same way.

Writes ``results/benchmarks/<--out>.json`` and ``.md`` (default ``family_screen``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
import family_probe  # noqa: E402  the demo's targets and the code read-out

from brainray import encoding, gamestate, gpt, simbrain, trial, vqvae  # noqa: E402
from brainray.config import dataset_root, load_spec  # noqa: E402
from brainray.prepare import prepare, run_stimulus  # noqa: E402

OUT = family_probe.OUT
FPS = 60.0


def _models(storage: Path, spec, ds) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """TR features of every trained trial (its best weights, from its Tune checkpoint, in the
    trial's own model) and of the untrained control at each width of the sweep (the reference's
    seeds at the reference width), through ``trial.run`` as the sweep runs it."""
    tr, ref = spec.train, spec.axes.reference
    X, meta = {}, {}
    for path in sorted((storage / spec.name / "tune").glob("*/checkpoint_*/checkpoint.pt")):
        ckpt = vqvae.read_checkpoint(str(path), map_location="cpu")
        cfg = ckpt["config"]
        if cfg.get("control") or ckpt.get("best_model") is None:
            continue
        t = trial._Trainer({**cfg, "dataset": str(ds.root), "train": ckpt["train"]}, tr)
        t.model.load_state_dict(ckpt["best_model"])
        t.model.eval()
        name = f"e{cfg['n_embd']} L{cfg['n_layer']} h{cfg['n_head']} D{cfg['data_frames']} {cfg['dtype']} s{cfg['seed']}"
        with torch.no_grad():
            X[name] = family_probe._all_runs(t.model, ds, gpt.feature_layer(t.spec.n_layer, tr.feature_depth), t.device)
        meta[name] = {"trained": True, "val_loss": float(ckpt["best_val_loss"]),
                      **{k: cfg[k] for k in ("n_embd", "n_layer", "n_head", "data_frames", "dtype", "seed")}}
    if not X:
        raise SystemExit(f"{storage / spec.name / 'tune'}: no trial checkpoints; run benchmarks/brain_sensitivity.py there first.")
    control = family_probe._configs(spec, str(ds.root))["untrained reference"]
    for width in spec.axes.n_embd:
        for seed in (spec.axes.seed if width == ref["n_embd"] else [ref["seed"]]):
            name = f"untrained e{width} s{seed}"
            X[name] = family_probe._features({**control, "n_embd": width, "seed": seed}, ds)[0]
            meta[name] = {"trained": False, "n_embd": width, "seed": seed}
    X["codes pooled (no model)"] = np.concatenate(family_probe._code_histogram(ds, False))
    meta["codes pooled (no model)"] = {"trained": False}
    return X, meta


@torch.no_grad()
def _mlp_clip_features(model, seq: torch.Tensor, latent_shape: tuple[int, int, int], layer: int) -> torch.Tensor:
    """``gpt.clip_features`` with the MLP-branch output of block ``layer`` in place of its
    residual stream: what the paper extracts (``attn_nets.4.post_fc_dp``)."""
    out: list[torch.Tensor] = []
    hook = model.transformer.h[layer - 1].mlp.register_forward_hook(lambda _m, _i, o: out.append(o))
    try:
        model.transformer(input_ids=seq)
    finally:
        hook.remove()
    return gpt.pool_next_clip(out[0], latent_shape)


@contextlib.contextmanager
def _readout(kind: str):
    """Every model read through ``gpt.clip_features`` uses ``kind`` while inside."""
    if kind == "residual":
        yield
        return
    saved, gpt.clip_features = gpt.clip_features, _mlp_clip_features
    try:
        yield
    finally:
        gpt.clip_features = saved


def _candidates(ds) -> dict[str, dict[str, np.ndarray]]:
    """Per-frame candidate targets of every stimulus run, on its timeline: set -> name -> list per run."""
    tr = float(ds.manifest["tr"])
    variables, moments = gamestate.OBJECT_VARIABLES, gamestate.STATE_MOMENTS
    mix = np.random.default_rng(1).standard_normal((len(variables), 12)) / math.sqrt(3)
    sets: dict[str, list[dict[str, np.ndarray]]] = {"tuned": [], "sparse": []}
    for run in ds.manifest["runs"]:
        stim = run_stimulus(ds.root, run, run["n_vols"], tr)
        timeline, _, _, state = simbrain._place(stim.frames, stim.actions, stim.rewards, stim.onsets, stim, stim.state)
        game = timeline.in_game()
        s = {v: state[:, j].astype(np.float64) for j, v in enumerate(variables)}
        z = {v: (s[v] - moments[v][0]) / moments[v][1] for v in variables}
        tuned = {f"{v} @ {c:+.0f} sd": np.exp(-0.5 * ((z[v] - c) / 0.4) ** 2) * game
                 for v in ("ship_x", "n_enemies", "n_shots", "n_bullets", "enemy_y", "threat") for c in (-1, 0, 1, 2)}
        units = np.maximum(np.stack([z[v] for v in variables], 1) @ mix - 2.0, 0) * game[:, None]
        sparse = {f"sparse-{k}": units[:, k] for k in range(units.shape[1])}
        for name, feats in (("tuned", tuned), ("sparse", sparse)):
            sets[name].append(simbrain.hrf_features(feats, run["n_vols"], tr, FPS))
    return {name: {k: np.concatenate([r[k] for r in runs]) for k in runs[0]} for name, runs in sets.items()}


def measure(storage: Path, preset: str) -> dict:
    spec = load_spec(preset)
    ds = prepare(spec, dataset_root(str(storage / spec.name), str(storage), None, spec))
    demo, demo_names, groups = family_probe._targets(ds)
    columns = [("demo families", n, demo[:, j]) for j, n in enumerate(demo_names)]
    for set_name, targets in _candidates(ds).items():
        columns += [(set_name, n, v) for n, v in targets.items()]
    varies = [all(np.ptp(v[groups == g]) > 0 for g in np.unique(groups)) for _, _, v in columns]
    columns = [c for c, ok in zip(columns, varies) if ok]
    Y = np.stack([v for _, _, v in columns], 1).astype(np.float32)
    X, meta = _models(storage, spec, ds)
    r = {}
    for name, x in X.items():
        t0 = time.perf_counter()
        r[name] = encoding.encode_subject(x.astype(np.float32), Y, groups, alphas=spec.train.alphas,
                                          delays=spec.train.delays, device="cpu")
        print(f"[screen] {name}: {time.perf_counter() - t0:.0f} s", flush=True)
    ref, widths, most = spec.axes.reference, spec.axes.n_embd, max(spec.axes.data_frames)
    trained = [m for m, v in meta.items() if v["trained"]]
    at = {w: next(m for m in trained if meta[m]["n_embd"] == w and meta[m]["data_frames"] == most
                  and all(meta[m][k] == ref[k] for k in ("n_layer", "n_head", "dtype", "seed"))) for w in widths}
    out = {"models": meta, "sets": {}}
    sets = {name: [j for j, c in enumerate(columns) if c[0] == name] for name in dict.fromkeys(c[0] for c in columns)}
    demo_cols = sets["demo families"]
    for family in dict.fromkeys(simbrain.feature_type(columns[j][1]) for j in demo_cols):  # and each family alone
        sets[f"demo: {family}"] = [j for j in demo_cols if simbrain.feature_type(columns[j][1]) == family]
    for set_name, cols in sets.items():
        m = {k: float(np.mean(v[cols])) for k, v in r.items()}
        untrained = {w: float(np.mean([m[k] for k, v in meta.items() if not v["trained"] and v.get("n_embd") == w]))
                     for w in widths}
        rho = spearmanr([meta[k]["val_loss"] for k in trained], [m[k] for k in trained]).statistic
        best = max(trained, key=m.get)
        out["sets"][set_name] = {
            "n_targets": len(cols), "untrained": untrained, "trained_most_data": {w: m[at[w]] for w in widths},
            "training_gain": {w: m[at[w]] - untrained[w] for w in widths},
            "width_gain_untrained": untrained[max(widths)] - untrained[ref["n_embd"]],
            "best_trained": best, "best_minus_untrained_reference": m[best] - untrained[ref["n_embd"]],
            "rho_val_loss": float(rho), "codes": m["codes pooled (no model)"],
            "targets": {columns[j][1]: {k: float(v[j]) for k, v in r.items()} for j in cols},
        }
    return out


def _md(res: dict, meta: dict) -> str:
    widths = list(next(iter(res["sets"].values()))["untrained"])
    lines = [
        "# Family screen: which candidate parcels would separate the demo's models?", "",
        f"`python benchmarks/family_screen.py --preset {meta['preset']} --readout {meta['readout']}`, {meta['date']}, "
        f"{meta['machine']}, {meta['minutes']:.1f} min, on the sweep's own dataset and checkpoints ({sum(v['trained'] for v in res['models'].values())} trained trials). "
        "Mean noiseless r over each set's targets.", "",
        "| set | targets | " + " | ".join(f"untrained e{w}" for w in widths) + " | "
        + " | ".join(f"trained e{w}, most data" for w in widths)
        + " | training gain per width | width gain (untrained) | best trained − untrained reference | ρ(val loss, r) | codes |",
        "|---|---|" + "---|" * (2 * len(widths) + 5),
    ]
    for name, s in res["sets"].items():
        lines.append(
            f"| {name} | {s['n_targets']} | " + " | ".join(f"{s['untrained'][w]:.3f}" for w in widths) + " | "
            + " | ".join(f"{s['trained_most_data'][w]:.3f}" for w in widths) + " | "
            + ", ".join(f"{s['training_gain'][w]:+.3f}" for w in widths)
            + f" | {s['width_gain_untrained']:+.3f} | {s['best_minus_untrained_reference']:+.3f} | "
            f"{s['rho_val_loss']:+.2f} | {s['codes']:.3f} |"
        )
    lines += ["", "A family that shows what training adds needs a large training gain at a fixed width and ρ near −1; "
              "a gain that the untrained models share (width gain) is the ridge's extra columns, not learning.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--storage", type=Path, required=True, help="where benchmarks/brain_sensitivity.py ran the demo")
    ap.add_argument("--readout", choices=("residual", "mlp"), default="residual",
                    help="residual: the trial's features; mlp: the MLP-branch output of the same block (the paper's)")
    ap.add_argument("--out", default="family_screen", help="name of the result files in results/benchmarks/")
    args = ap.parse_args()
    t0 = time.perf_counter()
    torch.set_num_threads(2)
    with _readout(args.readout):
        res = measure(args.storage, args.preset)
    meta = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": platform.machine(),
            "minutes": (time.perf_counter() - t0) / 60, "preset": args.preset, "readout": args.readout}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{args.out}.json").write_text(json.dumps({"meta": meta, **res}, indent=1, default=str) + "\n")
    (OUT / f"{args.out}.md").write_text(_md(res, meta))
    print((OUT / f"{args.out}.md").read_text())


if __name__ == "__main__":
    main()
