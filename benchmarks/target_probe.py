"""Would other parcels separate the models? Future-shifted and conjunctive targets, read without noise.

``family_probe.py`` shows that the VQ codes alone read the demo's simulated brain about as well
as the largest trained model (4 of 6 families at least as well). Two kinds of parcel a trained video model might
read better than its input, tested here before any is built into ``simbrain``:

- **ahead**: every driver feature shifted 1-3 TRs into the future (a parcel that encodes what
  comes next; the ridge's delays only see the past);
- **products**: the products of pairs of the TR-level game-state variables (object, relation,
  anticipation), z-scored: conjunctions no linear map of one variable carries.

Each target is read without noise by the ridge and split of ``trial.score_brain`` from the
untrained and trained reference, the untrained and trained largest corner, and the codes pooled.

    python benchmarks/target_probe.py --storage results/brain_sensitivity   # ~5 min on 2 cores

Writes ``results/benchmarks/target_probe.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import family_probe  # noqa: E402  the probe's models, targets and code read-out

from brainray import encoding, simbrain  # noqa: E402
from brainray.config import dataset_root, load_spec  # noqa: E402
from brainray.prepare import prepare  # noqa: E402

OUT = family_probe.OUT
MODELS = ("untrained reference", "trained reference", "untrained largest", "trained largest")
STATE = ("object", "relation", "anticipation")
AHEAD = (0, 1, 2, 3)


def _ahead(Y: np.ndarray, groups: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows to keep and the targets k TRs later, within each run."""
    keep, target = [], []
    for g in np.unique(groups):
        rows = np.flatnonzero(groups == g)
        keep.append(rows[: len(rows) - k])
        target.append(Y[rows[k:]])
    return np.concatenate(keep), np.concatenate(target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", type=Path, required=True, help="where benchmarks/brain_sensitivity.py ran the demo")
    parser.add_argument("--preset", default="demo")
    args = parser.parse_args()
    start = time.perf_counter()
    spec = load_spec(args.preset)
    ds = prepare(spec, dataset_root(str(args.storage / spec.name), str(args.storage), None, spec))
    Y, names, groups = family_probe._targets(ds)
    tr = spec.train
    configs = family_probe._configs(spec, str(ds.root))
    features = {name: family_probe._features(configs[name], ds)[0] for name in MODELS}
    features["codes pooled (no model)"] = np.concatenate(family_probe._code_histogram(ds, False))

    def read(X: np.ndarray, target: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return encoding.encode_subject(X[rows], target, groups[rows], alphas=tr.alphas, delays=tr.delays, device="cpu")

    rows: dict[str, dict[str, float]] = {}
    for k in AHEAD:
        keep, target = _ahead(Y, groups, k)
        rows[f"every feature, {k} TR ahead"] = {m: float(read(X, target, keep).mean()) for m, X in features.items()}
    state = [j for j, n in enumerate(names) if simbrain.feature_type(n) in STATE]
    Z = (Y[:, state] - Y[:, state].mean(0)) / Y[:, state].std(0)
    products = np.stack([Z[:, a] * Z[:, b] for a, b in itertools.combinations(range(len(state)), 2)], 1)
    everything = np.arange(len(groups))
    rows[f"{len(state)} state variables"] = {m: float(read(X, Y[:, state], everything).mean()) for m, X in features.items()}
    rows[f"their {products.shape[1]} pairwise products"] = {m: float(read(X, products, everything).mean())
                                                           for m, X in features.items()}
    meta = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": platform.machine(),
            "minutes": round((time.perf_counter() - start) / 60, 1)}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "target_probe.json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    cols = list(features)
    lines = [
        "# Target probe: would future-shifted or conjunctive parcels separate the models?", "",
        f"`python benchmarks/target_probe.py`, {meta['date']}, {meta['machine']}, {meta['minutes']} min, on the demo "
        "sweep's own dataset. Mean noiseless r over the targets (ridge and leave-one-run-out split of a trial).", "",
        "| targets | " + " | ".join(cols) + " | codes − trained largest |",
        "|---|" + "---|" * (len(cols) + 1),
    ]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{r[c]:.3f}" for c in cols)
                     + f" | {r['codes pooled (no model)'] - r['trained largest']:+.3f} |")
    lines += ["", "Where the last column is positive, a linear read of the codes alone beats the best model: such "
              "parcels would not show what training adds either.", ""]
    (OUT / "target_probe.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
