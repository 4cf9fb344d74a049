"""Does a reused data axis give the same answer as training every size from scratch, for less?

On the demo's data (real Airstriker plays, simulated brain), for each width and seed it
trains the data axis three ways with the real trial (``brainray.trial.run``, no Ray):

- ``scratch/cosine``: every size from scratch, cosine schedule (the paper's way);
- ``scratch/wsd``: every size from scratch, the WSD schedule that reuse needs;
- ``reuse/wsd``: ``train.data_schedule: reuse`` (one WSD trunk, a cooldown branch per size).

``reuse/wsd`` against ``scratch/wsd`` isolates what reuse itself changes (the shared trunk,
the growing-prefix curriculum); against ``scratch/cosine`` the schedule's effect adds in.
It then measures, with ``brainray.reuse``:

- compute: training FLOPs of the data axis with and without reuse (exact counts);
- agreement: val loss and brain score of each reused branch against its from-scratch twin,
  against the run-to-run noise over seeds;
- the data exponent beta of the loss law fitted on each arm alone, with bootstrap CIs.

Rows are cached per (arm, width, seed) under ``results/data_reuse/rows/``, so an
interrupted run continues (``--fresh`` recomputes).

    python benchmarks/data_reuse.py                  # ~35 min on 2 cores with --jobs 1; --jobs 2 halves it
    python benchmarks/data_reuse.py --widths 16 48 --seeds 0 1 --sizes 3000 6000 12000 24000

Writes ``results/benchmarks/data_reuse.json`` and ``.md``, and the frontier report of the
combined trial table (its "Data reuse" section) to ``results/data_reuse/report.html``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import pandas as pd  # noqa: E402

from brainray import reuse  # noqa: E402
from brainray.config import load_spec  # noqa: E402

OUT = REPO / "results" / "benchmarks"


ARMS = ("scratch/cosine", "scratch/wsd", "reuse/wsd")
ROWS = REPO / "results" / "data_reuse" / "rows"


def _job(args: tuple[dict, str]) -> list[dict]:
    """One width x seed x arm: its trial(s), as trial-log rows (cached as JSON)."""
    import torch

    from brainray import trial, triallog

    config, arm = args
    tag = f"{arm.replace('/', '-')}-w{config['n_embd']}-s{config['seed']}"
    cache = ROWS / f"{tag}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    torch.set_num_threads(1)
    rows: list[dict] = []
    if arm == "control":  # from scratch at the largest size only, with the reuse trunk's warmup
        m = trial.run(config, lambda m, checkpoint_dir=None: None)
        rows.append({**m, "trial_id": f"{tag}-d{config['data_frames']}"})
    elif arm.startswith("reuse"):
        sink: list[dict] = []
        trial.run(config, lambda m, checkpoint_dir=None: sink.append(m) if m.get("branch_done") else None)
        for m in sink:
            rows.append({**m, "trial_id": triallog.branch_id(tag, m["data_frames"]), "parent_trial": tag})
    else:
        for d in config["branches"]:
            m = trial.run({**config, "data_frames": d, "branches": None}, lambda m, checkpoint_dir=None: None)
            rows.append({**m, "trial_id": f"{tag}-d{d}"})
    for r in rows:
        r["status"] = "ERROR" if r.get("error") else "TERMINATED"
    ROWS.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(rows, default=str))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", type=int, nargs="+", default=[16, 48, 96])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--sizes", type=int, nargs="+", default=None, help="data sizes (default: the demo-reuse preset's)")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (one torch thread each)")
    ap.add_argument("--data", default=None, help="prepared dataset folder (default: results/demo/data/<hash>)")
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--fresh", action="store_true", help="ignore the cached rows")
    args = ap.parse_args(argv)
    if args.fresh:
        for f in ROWS.glob("*.json"):
            f.unlink()

    spec = load_spec("demo-reuse")
    from brainray.prepare import prepare

    root = Path(args.data) if args.data else REPO / "results" / "demo" / "data" / spec.data_key()
    prepare(spec, root)
    sizes = sorted(args.sizes or spec.axes.data_frames)
    ref = spec.axes.reference
    def train(arm: str) -> dict:
        data_schedule, lr_schedule = arm.split("/")
        return {**dataclasses.asdict(spec.train), "data_schedule": data_schedule, "lr_schedule": lr_schedule}

    jobs = [({**ref, "n_embd": w, "seed": s, "data_frames": sizes[-1], "branches": sizes, "dataset": str(root),
              "train": train(arm)}, arm)
            for arm in ARMS for w in args.widths for s in args.seeds]
    print(f"[data_reuse] {len(args.widths)} widths x {len(args.seeds)} seeds x {len(sizes)} sizes x {len(ARMS)} arms: "
          f"{len(jobs)} jobs on {args.jobs} process(es)")
    t0 = time.perf_counter()
    rows = []
    with mp.get_context("spawn").Pool(args.jobs) as pool:
        for i, part in enumerate(pool.imap_unordered(_job, jobs)):
            rows += part
            print(f"[data_reuse] {i + 1}/{len(jobs)} done ({time.perf_counter() - t0:.0f} s)", flush=True)
    trials = pd.DataFrame(rows)
    trials["sweep"] = "data_reuse"
    control = _warmup_control(trials, jobs, args.jobs)

    sav = reuse.savings(trials)
    both = [reuse.agreement(trials, baseline=b, other="reuse/wsd") for b in ("scratch/wsd", "scratch/cosine")]
    matched = pd.concat([m for m, _ in both], ignore_index=True)
    agree = pd.concat([a for _, a in both], ignore_index=True)
    laws = reuse.data_exponents(trials, bootstrap=args.bootstrap)
    arm = reuse.arms(trials)
    scratch_axis = trials.loc[arm == "scratch/wsd", "train_flops"].sum()
    reuse_axis = trials.loc[arm == "reuse/wsd", "incurred_flops"].sum()
    beta = {k: ({"beta": v.beta, "ci": list(v.ci.get("beta", (None, None))), "alpha": v.alpha, "trials": v.n_used}
                if not isinstance(v, str) else {"error": v}) for k, v in laws.items()}

    def beta_check(a: str, b: str) -> dict:
        x, y = beta.get(a, {}), beta.get(b, {})
        if "ci" not in x or "ci" not in y:
            return {}
        return {"each_inside_the_others_ci": x["ci"][0] <= y["beta"] <= x["ci"][1] and y["ci"][0] <= x["beta"] <= y["ci"][1],
                "cis_overlap": max(x["ci"][0], y["ci"][0]) <= min(x["ci"][1], y["ci"][1])}

    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.processor() or platform.machine(),
        "widths": args.widths, "seeds": args.seeds, "sizes": sizes, "train": spec.train.__dict__,
        "wall_s": time.perf_counter() - t0,
        "data_axis_flops": {"scratch": scratch_axis, "reuse": reuse_axis, "ratio": reuse_axis / scratch_axis},
        "agreement": agree.to_dict(orient="records"), "beta": beta,
        "beta_reuse_vs_scratch_wsd": beta_check("reuse/wsd", "scratch/wsd"),
        "beta_reuse_vs_scratch_cosine": beta_check("reuse/wsd", "scratch/cosine"),
        "savings": sav.to_dict(orient="records"),
        "warmup_control": control.to_dict(orient="records"),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "data_reuse.json").write_text(json.dumps(result, indent=1, default=str))
    (OUT / "data_reuse.md").write_text(_markdown(result, agree, matched, control))
    from brainray.report import write_report

    report = write_report(trials, REPO / "results" / "data_reuse", title="brainray: data reuse vs from scratch",
                          bootstrap=args.bootstrap)
    print((OUT / "data_reuse.md").read_text())
    print(f"[data_reuse] report: {report}")
    return 0


def _warmup_control(trials: pd.DataFrame, jobs: list, n_jobs: int) -> pd.DataFrame:
    """From scratch (WSD) at the largest size with the warmup the reuse trunk had, per width and seed.

    The trunk's warmup is shared by every branch, so it is sized by the shortest path
    (``warmup_frac`` of the smallest size's steps): shorter than a from-scratch run of the
    largest size gets. This control separates that difference from reuse itself.
    """
    from brainray import reuse as r

    arm = r.arms(trials)
    reused = trials[arm == "reuse/wsd"]
    control_jobs = []
    for config, name in jobs:
        if name != "reuse/wsd":
            continue
        mine = reused[(reused["n_embd"] == config["n_embd"]) & (reused["seed"] == config["seed"])]
        smallest, largest = mine.loc[mine["data_frames"].idxmin()], mine.loc[mine["data_frames"].idxmax()]
        warmup = int(config["train"]["warmup_frac"] * smallest["max_steps"])
        train = {**config["train"], "data_schedule": "scratch", "lr_schedule": "wsd",
                 "warmup_frac": (warmup + 0.5) / largest["max_steps"] if warmup else 0.0}
        control_jobs.append(({**config, "data_frames": int(largest["data_frames"]), "branches": None, "train": train},
                             "control"))
    with mp.get_context("spawn").Pool(n_jobs) as pool:
        rows = [row for part in pool.map(_job, control_jobs) for row in part]
    ctrl = pd.DataFrame(rows)
    d_max = int(ctrl["data_frames"].max())
    out = []
    for w, g in ctrl.groupby("n_embd"):
        entry = {"n_embd": w, "data_frames": d_max, "warmup_steps": int(g["warmup_frac"].iloc[0] * g["max_steps"].iloc[0])
                 if "warmup_frac" in g else None}
        for name, sub in (("scratch/wsd, warmup as reuse", g), *(
                (a, trials[(arm == a) & (trials["n_embd"] == w) & (trials["data_frames"] == d_max)])
                for a in ("scratch/wsd", "reuse/wsd"))):
            entry[f"{name} mean"] = sub["val_loss"].mean()
            entry[f"{name} sd"] = sub["val_loss"].std(ddof=1)
        out.append(entry)
    return pd.DataFrame(out).drop(columns="warmup_steps")


def _markdown(r: dict, agree: pd.DataFrame, matched: pd.DataFrame, control: pd.DataFrame) -> str:
    f = r["data_axis_flops"]
    lines = [
        "# Data reuse vs training every data size from scratch", "",
        f"{r['date']}, {r['machine']}; widths {r['widths']}, seeds {r['seeds']}, data sizes {r['sizes']} frames; "
        f"demo settings (epochs {r['train']['epochs']}, batch {r['train']['batch_size']}, lr {r['train']['lr']}, "
        f"cooldown {r['train']['cooldown_frac']}); wall {r['wall_s'] / 60:.1f} min.", "",
        f"**Data-axis training FLOPs**: from scratch {f['scratch']:.4g}, reused {f['reuse']:.4g} "
        f"= **{f['ratio']:.3f}x**.", "",
        "## Agreement of reused branches with from-scratch trials", "",
        "`other - baseline` at matched (config, data size), seed means; noise_sd: seed standard deviation "
        "of one run; `within_2se`: share of matched points with |z| <= 2.", "",
        _md_table(agree), "",
        "## Data exponent beta per schedule (95 % bootstrap CI)", "",
    ]
    for k, b in r["beta"].items():
        lines.append(f"- {k}: " + (f"beta {b['beta']:.3f} [{b['ci'][0]:.3f}, {b['ci'][1]:.3f}], "
                                   f"alpha {b['alpha']:.3f}, {b['trials']} trials" if "ci" in b else b["error"]))
    lines += ["", f"reuse/wsd vs scratch/wsd: {r['beta_reuse_vs_scratch_wsd']}; "
                  f"reuse/wsd vs scratch/cosine: {r['beta_reuse_vs_scratch_cosine']}.", "",
              "## Control: the shared warmup", "",
              "The reuse trunk's warmup is shared by all its branches, so it is `warmup_frac` of the *smallest* "
              "size's steps. Val loss at the largest size (mean and sd over seeds) from scratch with the same "
              "warmup as the trunk, beside the two arms:", "", _md_table(control), "", "## Matched points", "",
              _md_table(matched), ""]
    return "\n".join(lines)


def _md_table(df: pd.DataFrame) -> str:
    def cell(v) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    head = "| " + " | ".join(map(str, df.columns)) + " |\n|" + "---|" * len(df.columns)
    return "\n".join([head] + ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)])


if __name__ == "__main__":
    sys.exit(main())
