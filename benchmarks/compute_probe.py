"""Does the brain score keep rising with training compute past the demo's budget?

The demo's sweep spans 380x in training FLOPs, and its best trial beats the untrained control by
about 0.02 r, below the 0.05 that issue 16 asks. Two readings: the demo is too small (more
compute would lift the trained models away from the controls), or the simulated brain holds
nothing more that training can find (the score stays at the VQ codes' level whatever the
compute). This trains the demo's largest corner (widest model, most data) for more epochs, and
a wider model, on the sweep's own dataset through ``trial.run``, and sets their brain scores
beside the controls the sweep logged: the untrained reference, the untrained widest, the codes.

    python benchmarks/compute_probe.py --storage results/brain_sensitivity   # ~20 min on 2 cores

Writes ``results/benchmarks/compute_probe.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import family_probe  # noqa: E402  its largest corner, the config trained here for longer
import pandas as pd  # noqa: E402

from brainray import trial  # noqa: E402
from brainray.config import dataset_root, load_spec  # noqa: E402

OUT = REPO / "results" / "benchmarks"
#: name -> overrides of the largest corner: (config keys, train keys)
RUNS = {
    "largest, 6 epochs (the demo's)": ({}, {}),
    "largest, 24 epochs": ({}, {"epochs": 24}),
    "largest, 60 epochs": ({}, {"epochs": 60}),
    "n_embd 192, untrained": ({"n_embd": 192, "n_head": 4, "control": "untrained"}, {}),
    "n_embd 192, 12 epochs": ({"n_embd": 192, "n_head": 4}, {"epochs": 12}),
}
FAMILIES = ("object", "relation", "anticipation", "mixed", "visual", "none")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", type=Path, required=True, help="where benchmarks/brain_sensitivity.py ran the demo")
    parser.add_argument("--preset", default="demo")
    args = parser.parse_args()
    spec = load_spec(args.preset)
    root = args.storage / spec.name
    sweep = pd.read_parquet(root / "trials")
    ds_root = str(dataset_root(str(root), str(args.storage), None, spec))
    ref = spec.axes.reference
    corner = family_probe._configs(spec, ds_root)["trained largest"]
    rows = []

    def control(kind: str, **match) -> float:
        sel = sweep[(sweep["control"] == kind)]
        for k, v in match.items():
            sel = sel[sel[k] == v]
        return float(sel["brain_r_mean"].mean())

    start = time.perf_counter()
    for name, (over, train_over) in RUNS.items():
        config = {**corner, **over, "train": {**corner["train"], **train_over}}
        t0 = time.perf_counter()
        m = trial.run(config, lambda *a, **k: None)
        rows.append({"run": name, "n_embd": config["n_embd"], "epochs": config["train"]["epochs"],
                     "train_flops": m["train_flops"], "val_loss": m["val_loss"], "brain_r_mean": m["brain_r_mean"],
                     **{f: m.get(f"brain_r_{f}") for f in FAMILIES}, "seconds": round(time.perf_counter() - t0, 1)})
        print(f"{name}: val loss {m['val_loss']:.3f}, brain_r_mean {m['brain_r_mean']:.4f} "
              f"({rows[-1]['seconds']} s)", flush=True)
    controls = {"untrained reference": control("untrained", n_embd=ref["n_embd"]),
                "untrained widest (sweep)": control("untrained", n_embd=max(spec.axes.n_embd)),
                "codes (no model)": control("codes"),
                "best trained trial (sweep)": float(sweep.loc[sweep["control"] == "", "brain_r_mean"].max())}
    meta = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": platform.machine(),
            "minutes": round((time.perf_counter() - start) / 60, 1), "dataset": ds_root}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "compute_probe.json").write_text(json.dumps({**meta, "controls": controls, "rows": rows}, indent=2) + "\n")
    lines = [
        "# Compute probe: does the brain score keep rising past the demo's budget?", "",
        f"`python benchmarks/compute_probe.py`, {meta['date']}, {meta['machine']}, {meta['minutes']} min, on the "
        f"demo sweep's own dataset. The largest corner (n_embd {corner['n_embd']}, {corner['n_layer']} layers, "
        f"{corner['data_frames']} frames) trained longer, and a wider model; one seed each (the sweep's seed s.d. "
        "at the reference is about 0.006).", "",
        "| run | n_embd | epochs | train FLOPs | val loss | brain_r_mean | − untrained ref | − codes | "
        + " | ".join(FAMILIES) + " | s |",
        "|---|---|---|---|---|---|---|---|" + "---|" * len(FAMILIES) + "---|",
    ]
    for r in rows:
        lines.append(f"| {r['run']} | {r['n_embd']} | {r['epochs']} | {r['train_flops']:.2e} | {r['val_loss']:.3f} | "
                     f"{r['brain_r_mean']:.3f} | {r['brain_r_mean'] - controls['untrained reference']:+.3f} | "
                     f"{r['brain_r_mean'] - controls['codes (no model)']:+.3f} | "
                     + " | ".join(f"{r[f]:.3f}" for f in FAMILIES) + f" | {r['seconds']} |")
    lines += ["", "Controls logged by the sweep: " + ", ".join(f"{k} {v:.3f}" for k, v in controls.items()) + ".", ""]
    (OUT / "compute_probe.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
