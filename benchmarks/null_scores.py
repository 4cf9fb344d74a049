"""What does the leave-one-run-out read-out score on pure noise?

A noise parcel must score 0, or every score carries an offset that is not the model's. This
runs ``encoding.encode_subject``'s ridge (same alphas, FIR delays and inner CV as a trial) on
random smooth features against the simulated brain's own noise (AR(1) plus cosine drift,
``simbrain._noise``), at the smoke and the demo preset's run geometry, and scores the held-out
predictions two ways:

- **per run** (what ``encode_subject`` returns): r on each held-out run, averaged over runs
  weighted by their volumes;
- **pooled**: one r over the concatenated held-out predictions, each run centred (what it
  returned until 2026-12-03). A fold's prediction depends on every other run's BOLD, so each
  run's noise enters the normalisation of the other runs' terms.

    python benchmarks/null_scores.py            # ~1 min on 2 cores

Writes ``results/benchmarks/null_scores.json`` and ``.md``.
"""

from __future__ import annotations

import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from scipy.signal import lfilter

from brainray import encoding, simbrain
from brainray.config import load_spec

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "results" / "benchmarks"
N_PARCELS = 256  # noise parcels per geometry and seed
SEEDS = (0, 1)
#: name -> (runs, volumes per run, features); features = a model's n_embd (or the codes' count)
GEOMETRIES = {
    "smoke (codes)": (3, 30, 32),
    "demo, n_embd 48": (8, 150, 48),
    "demo, n_embd 96": (8, 150, 96),
}


def _scores(n_runs: int, n_vols: int, n_features: int, seed: int) -> dict[str, np.ndarray]:
    """Per-run and pooled r of every noise parcel, from the same held-out predictions."""
    tr = load_spec("demo").train
    rng = np.random.default_rng(seed)
    X = lfilter([1.0], [1.0, -0.8], rng.standard_normal((n_runs * n_vols, n_features)), axis=0)  # slow, like TR features
    config = simbrain.SimBrainConfig()
    Y = np.concatenate([simbrain._noise(n_vols, N_PARCELS, rng, config) for _ in range(n_runs)])
    groups = np.repeat(np.arange(n_runs), n_vols)
    pred = np.zeros_like(Y)
    for run in range(n_runs):
        test = groups == run
        enc = encoding.RidgeEncoder(alphas=tr.alphas, delays=tr.delays, device="cpu")
        pred[test] = enc.fit(X[~test], Y[~test], groups=groups[~test]).predict(X[test], groups=groups[test])
    centre = lambda a: a - np.stack([a[groups == g].mean(0) for g in groups])  # noqa: E731
    return {
        "per run": encoding.encode_subject(X, Y, groups, alphas=tr.alphas, delays=tr.delays, device="cpu"),
        "pooled": encoding.pearson_r(centre(Y), centre(pred)),
    }


def main() -> None:
    start = time.perf_counter()
    rows = []
    for name, (n_runs, n_vols, n_features) in GEOMETRIES.items():
        got = [_scores(n_runs, n_vols, n_features, seed) for seed in SEEDS]
        for how in ("per run", "pooled"):
            r = np.concatenate([g[how] for g in got])
            rows.append({"geometry": name, "runs": n_runs, "volumes": n_vols, "features": n_features, "score": how,
                         "mean": float(r.mean()), "se": float(r.std() / np.sqrt(r.size)), "sd": float(r.std()),
                         "parcels": int(r.size)})
        print(f"{name}: per run {rows[-2]['mean']:+.4f}, pooled {rows[-1]['mean']:+.4f}", flush=True)
    meta = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": platform.machine(),
            "seconds": round(time.perf_counter() - start, 1)}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "null_scores.json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    lines = [
        "# Null scores: the leave-one-run-out read-out on pure noise",
        "",
        f"`python benchmarks/null_scores.py`, {meta['date']}, {meta['machine']}, {meta['seconds']} s. "
        f"Random smooth features (AR(1) 0.8) against the simulated brain's noise (AR(1) plus drift), "
        f"{N_PARCELS} parcels x {len(SEEDS)} seeds per geometry, the demo's ridge (alphas, delays, inner CV).",
        "",
        "| geometry | runs x volumes | features | score | mean r | s.e. | s.d. per parcel |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['geometry']} | {r['runs']} x {r['volumes']} | {r['features']} | {r['score']} | {r['mean']:+.4f} | "
              f"{r['se']:.4f} | {r['sd']:.3f} |" for r in rows]
    lines += ["", "Per run is what `encoding.encode_subject` returns: 0 within its standard error. Pooled (the "
              "read-out until 2026-12-03) sits below 0 by several standard errors, most on few short runs.", ""]
    (OUT / "null_scores.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
