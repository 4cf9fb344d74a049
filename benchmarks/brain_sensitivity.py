"""Is the demo an instrument? Run it from a fresh storage and check that the brain score follows the model.

It runs ``python sweeps/scaling.py --preset demo --fresh`` (prepare included, timed, on this
machine) and then reads the trial log, the dataset manifest and the frontier fits:

- the tokenizer keeps the game: held-out PSNR against the mean-frame baseline (and on the
  sprites only), perplexity, dead codes;
- training matters: the best trained ``brain_r_mean`` against the untrained controls, by at
  least max(5 seed s.d., 0.05); per family, trained minus untrained at the reference, and
  the best trained trial against the ``codes`` control (the VQ codes alone, no model);
- the score follows the model: Spearman rho(val_loss, brain_r_mean) over the trained trials;
- the frontier rises: the best score in the top quartile of training FLOPs against the best
  in the bottom quartile, and whether the brain law is identified (no parameter at a bound).

    python benchmarks/brain_sensitivity.py                    # ~10 min on 2 idle cores
    python benchmarks/brain_sensitivity.py --reuse            # measure the sweep it ran last time again
    python benchmarks/brain_sensitivity.py --preset my.yaml --out brain_sensitivity_my   # another spec
    python benchmarks/brain_sensitivity.py --preset benchmarks/grid64.yaml --storage /tmp/g64 \
        --data-dir /tmp/g64-data --reuse --out brain_sensitivity_64   # a sweep run by hand

The sweep goes to ``--storage`` (default ``results/brain_sensitivity/``, kept, not committed).

Writes ``results/benchmarks/<--out>.json`` and ``.md`` (default ``brain_sensitivity``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from brainray import frontier, triallog  # noqa: E402
from brainray.config import load_spec  # noqa: E402

OUT = REPO / "results" / "benchmarks"


def _sweep(storage: Path, preset: str, data_dir: Path | None) -> float:
    """Run the sweep from a fresh storage (its prepared data removed too, unless it lives in
    ``data_dir``); its wall seconds."""
    shutil.rmtree(storage / load_spec(preset).name, ignore_errors=True)
    t0 = time.perf_counter()
    cmd = [sys.executable, str(REPO / "sweeps" / "scaling.py"), "--preset", preset, "--storage", str(storage)]
    if data_dir is not None:
        cmd += ["--data-dir", str(data_dir)]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def _dataset(data: Path) -> Path:
    """The newest prepared dataset under ``data``: the one the last sweep used."""
    manifests = sorted(data.glob("*/dataset.json"), key=lambda p: p.stat().st_mtime)
    if not manifests:
        raise FileNotFoundError(f"no prepared dataset under {data}; run the sweep first.")
    return manifests[-1].parent


def _tokenizer(dataset: Path) -> dict:
    tok = json.loads((dataset / "dataset.json").read_text())["tokenizer"]
    m = tok["metrics"]
    return {
        "psnr": m["psnr"], "psnr_baseline": m["psnr_baseline"], "psnr_gain": m["psnr"] - m["psnr_baseline"],
        "psnr_foreground": m.get("psnr_foreground"), "psnr_foreground_baseline": m.get("psnr_foreground_baseline"),
        "perplexity": m["perplexity"], "dead_codes": int(m["dead_codes"]), "n_codes": int(tok["n_codes"]),
        "ok": m["psnr"] >= m["psnr_baseline"] + 3 and m["dead_codes"] <= tok["n_codes"] / 2,
    }


def pixel_share(dataset: Path) -> dict[str, float]:
    """How much of each game-state feature, at the TR after the HRF, the pixel features already carry.

    Leave-one-run-out R^2 of a least-squares fit of each state feature (on the demo's stimulus
    runs) on every pixel-driven feature (luminance, contrast, motion and surprise per receptive
    field): near 1 means any model that keeps the pixels' slow statistics, trained or not, gets it.
    """
    from brainray import gamestate, simbrain
    from brainray.dataset import load_dataset
    from brainray.prepare import run_stimulus

    ds = load_dataset(dataset)
    cfg = simbrain.SimBrainConfig(tr=ds.manifest["tr"])
    runs = [simbrain.run_tr_features(run_stimulus(ds.root, r, r["n_vols"], cfg.tr), cfg) for r in ds.manifest["runs"]]
    pixel = [k for k in runs[0] if simbrain.feature_type(k) in ("visual", "predictive") and k != "event"]
    state = [*gamestate.OBJECT_VARIABLES, *gamestate.ANTICIPATION_VARIABLES]
    state += [k for k in runs[0] if simbrain.feature_type(k) == "fast"]  # the event conjunctions
    X = [np.c_[np.stack([r[k] for k in pixel], 1), np.ones(len(r[pixel[0]]))] for r in runs]
    out = {}
    for v in state:
        err = tot = 0.0
        for k in range(len(runs)):
            Xtr = np.concatenate([x for i, x in enumerate(X) if i != k])
            ytr = np.concatenate([r[v] for i, r in enumerate(runs) if i != k])
            beta = np.linalg.lstsq(Xtr, ytr, rcond=None)[0]
            y = runs[k][v]
            err += ((X[k] @ beta - y) ** 2).sum()
            tot += ((y - ytr.mean()) ** 2).sum()
        out[v] = float(1 - err / tot)
    return out


def calibration(root: Path) -> list[dict]:
    """Per family, on this dataset: each parcel's best r over every trial and control, against its
    noise ceiling. A signal parcel that no read-out predicts (best r about 0 or below) is a flaw
    of the instrument, not of the models: the mixed units standardized per run once gave one
    parcel r = -0.5 on every model."""
    tables = sorted((root / "parcels").glob("*.parquet"))
    if not tables:
        raise FileNotFoundError(f"no per-parcel tables under {root / 'parcels'}; run the sweep first.")
    df = pd.concat([pd.read_parquet(t, columns=["subject", "parcel", "family", "ceiling", "r"]) for t in tables])
    best = df.groupby(["subject", "parcel", "family"], as_index=False).agg(r=("r", "max"), ceiling=("ceiling", "first"))
    out = []
    for family, g in best.groupby("family"):
        signal = g["ceiling"] > 0
        frac = (g["r"] / g["ceiling"]).where(signal)
        out.append({
            "family": family, "parcels": len(g), "best_r_min": float(g["r"].min()),
            "best_r_median": float(g["r"].median()), "ceiling_median": float(g["ceiling"].median()),
            "best_frac_median": float(frac.median()) if signal.any() else None,
            "unreadable": int((signal & (g["r"] < 0.05)).sum()),
        })
    return out


def measure(root: Path) -> dict:
    """Every criterion of the instrument, from a finished demo sweep under ``root``."""
    trials = triallog.read_trials(str(root))
    effect = frontier.training_effect(trials)
    trained = frontier.analyze(trials, bootstrap=0, strict=False)["usable"]  # finished, trained, no controls
    if effect.empty:
        raise ValueError(f"{root}: no untrained control rows; run the demo with axes.controls: [untrained].")
    mean = effect.set_index("score").loc["brain_r_mean"]
    rho = float(spearmanr(trained["val_loss"], trained["brain_r_mean"]).statistic)
    q1, q3 = np.quantile(trained["train_flops"], [0.25, 0.75])
    low = trained[trained["train_flops"] <= q1]["brain_r_mean"].max()
    high = trained[trained["train_flops"] >= q3]["brain_r_mean"].max()
    fits = json.loads((root / "frontier" / "fits.json").read_text())
    law = fits["fits"].get("brain_r_mean") or {}
    return {
        "n_trained": len(trained), "n_controls": int(len(frontier.control_rows(trials, "untrained"))),
        "n_codes_controls": int(len(frontier.control_rows(trials, "codes"))),
        "beats_its_input": {"best": mean["best"], "codes": mean["codes"], "gain": mean["best_over_codes"]},
        "training_matters": {
            "best": mean["best"], "best_trial": mean["best_trial"], "untrained": mean["untrained"],
            "gain": mean["best_gain"], "seed_sd": mean["seed_sd"], "margin": mean["margin"],
            "ok": bool(mean["best_gain"] > mean["margin"]),
        },
        "score_follows_model": {"spearman_val_loss_brain_r_mean": rho, "ok": rho <= -0.7},
        "frontier_rises": {
            "best_top_quartile": float(high), "best_bottom_quartile": float(low), "gain": float(high - low),
            "margin": mean["margin"], "ok": bool(high - low > mean["margin"]),
        },
        "brain_law": {
            "identified": law.get("identified"), "at_bound": law.get("at_bound"),
            "wide_exponents": law.get("wide_exponents"),
            **{k: law.get(k) for k in ("E", "A", "B", "alpha", "beta")},
        },
        "families": effect.to_dict(orient="records"),
        "by_width": frontier.training_by_width(trials).to_dict(orient="records"),
    }


def _md(res: dict) -> str:
    tm, sf, fr, tk, law = (res[k] for k in ("training_matters", "score_follows_model", "frontier_rises",
                                            "tokenizer", "brain_law"))
    yes = {True: "yes", False: "**no**", None: "n/a"}
    lines = [
        "# Brain sensitivity of the demo", "",
        f"`python benchmarks/brain_sensitivity.py --preset {res['preset']}`, {res['when']}, {res['machine']}. "
        f"From a fresh storage: {res['n_trained']} trained trials, {res['n_controls']} untrained controls and "
        f"{res['n_codes_controls']} codes control (the VQ codes alone, no model)"
        + (f", {res['wall_s'] / 60:.1f} min end to end ({'prepare included' if res.get('prepare_included', True) else 'its prepared dataset reused'})."
           if res.get("wall_s") else "."), "",
        "| criterion | measured | passes |", "|---|---|---|",
        f"| tokenizer: PSNR >= mean-frame + 3 dB | {tk['psnr']:.1f} dB vs {tk['psnr_baseline']:.1f} dB "
        f"(+{tk['psnr_gain']:.1f}); sprites {tk['psnr_foreground']:.1f} vs {tk['psnr_foreground_baseline']:.1f} dB; "
        f"perplexity {tk['perplexity']:.0f} of {tk['n_codes']}, {tk['dead_codes']} dead | {yes[tk['ok']]} |",
        f"| training matters: best trained − untrained > max(5 seed s.d., 0.05) | {tm['best']:.3f} − "
        f"{tm['untrained']:.3f} = {tm['gain']:+.3f}; margin {tm['margin']:.3f} (seed s.d. {tm['seed_sd']:.4f}) "
        f"| {yes[tm['ok']]} |",
        f"| score follows the model: Spearman ρ(val_loss, brain_r_mean) ≤ −0.7 | "
        f"{sf['spearman_val_loss_brain_r_mean']:.2f} | {yes[sf['ok']]} |",
        f"| frontier rises: best of top FLOPs quartile − best of bottom quartile > margin | {fr['best_top_quartile']:.3f}"
        f" − {fr['best_bottom_quartile']:.3f} = {fr['gain']:+.3f} | {yes[fr['ok']]} |",
        f"| brain law identified (no parameter at a bound, no exponent CI wider than 10×) | at bound: "
        f"{law['at_bound'] or 'none'}; CI wider than 10×: {law.get('wide_exponents') or 'none'} | "
        f"{yes[law['identified']]} |", "",
        f"Beside the criteria: the VQ codes alone (each code's share of the screen per step, through the same ridge, "
        f"no model) score **{res['beats_its_input']['codes']:.3f}**, so the best trained model adds "
        f"**{res['beats_its_input']['gain']:+.3f}** to its own input.", "",
        "## Per parcel family", "",
        "Untrained: the reference model with its initial weights, mean over seeds. Trained: the reference trained, "
        "same seeds. Gain: trained − untrained (95 % Welch interval). Best: the best trained trial. Codes: the "
        "VQ codes alone, no model.", "",
        "| score | untrained | trained | gain [95 % CI] | seed s.d. | best | best − untrained | separates | codes "
        "| best − codes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for f in res["families"]:
        ci = f"[{f['gain_ci_lo']:+.3f}, {f['gain_ci_hi']:+.3f}]" if f["gain_ci_lo"] is not None and not (
            isinstance(f["gain_ci_lo"], float) and math.isnan(f["gain_ci_lo"])) else ""
        lines.append(
            f"| {f['score']} | {f['untrained']:.3f} | {f['trained']:.3f} | {f['gain']:+.3f} {ci} | {f['seed_sd']:.4f} "
            f"| {f['best']:.3f} | {f['best_gain']:+.3f} | {yes[bool(f['separates'])]} | {f['codes']:.3f} "
            f"| {f['best_over_codes']:+.3f} |"
        )
    lines += ["", "## Calibration on this dataset", "",
              "Each parcel's best r over every trial and control, per family, against its noise ceiling. A signal "
              "parcel that nothing predicts (best r < 0.05: unreadable) is a flaw of the instrument; noise parcels "
              "have ceiling 0 and their best r is the largest of many chance scores.", "",
              "| family | parcels | best r: min | median | ceiling (median) | best / ceiling (median) | unreadable |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {c['family']} | {c['parcels']} | {c['best_r_min']:+.3f} | {c['best_r_median']:+.3f} | "
              f"{c['ceiling_median']:.2f} | " + ("—" if c["best_frac_median"] is None else f"{c['best_frac_median']:.2f}")
              + f" | {c['unreadable']} |" for c in res["calibration"]]
    lines += ["", "## Why the gain is small: the game's state at the TR is mostly its pixels' slow statistics", "",
              "Leave-one-run-out R² of each game-state feature (HRF-convolved, on the TR grid of the stimulus runs) "
              "from a linear fit on the pixel-driven features (luminance, contrast, motion, surprise per receptive "
              "field). What a linear read-out of the pixels already explains, any model that keeps the pixels' slow "
              "statistics gets, trained or not.", "",
              "| feature | R² from pixels |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in res["pixel_share"].items()]
    lines += ["", "How much of each family training can reveal at all, read without noise from the models' "
              "features and from the VQ codes alone, and the largest gain any mix could show: `benchmarks/family_probe.py` "
              "(`family_probe.md`)."]
    lines += ["", "## By width", "", "brain_r_mean of each untrained width against the same config trained (mean over "
              "its seeds).", "", "| n_embd | untrained | trained | gain | trained trials |", "|---|---|---|---|---|"]
    lines += [f"| {w['n_embd']} | {w['untrained']:.3f} | {w['trained']:.3f} | {w['gain']:+.3f} | {w['n_trained']} |"
              for w in res["by_width"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--reuse", action="store_true", help="measure the sweep already in --storage")
    ap.add_argument("--storage", type=Path, default=REPO / "results" / "brain_sensitivity")
    ap.add_argument("--data-dir", type=Path, help="a prepared dataset to reuse (then the wall time leaves out prepare)")
    ap.add_argument("--out", default="brain_sensitivity", help="name of the result files in results/benchmarks/")
    args = ap.parse_args()
    previous = OUT / f"{args.out}.json"
    if args.reuse:  # the sweep is the one measured last time: keep its wall time
        wall = json.loads(previous.read_text()).get("wall_s") if previous.exists() else None
    else:
        wall = _sweep(args.storage, args.preset, args.data_dir)
    root = args.storage / load_spec(args.preset).name
    dataset = _dataset(args.data_dir or root / "data")
    res = {"tokenizer": _tokenizer(dataset), **measure(root), "pixel_share": pixel_share(dataset),
           "calibration": calibration(root), "wall_s": wall, "prepare_included": args.data_dir is None,
           "preset": args.preset,
           "when": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "machine": f"{platform.machine()}, {os.cpu_count()} CPUs"}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{args.out}.json").write_text(json.dumps(frontier._jsonable(res), indent=1))
    md = _md(res)
    (OUT / f"{args.out}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
