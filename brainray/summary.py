"""Console views of a sweep: its cost before it runs, its answer after, and the report step."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from brainray import cost, gpt, schedule, triallog
from brainray.config import AXES, SearchSpace, SweepSpec, check_search

__all__ = ["dry_run_table", "final_summary", "run_frontier", "best_per_budget"]


def dry_run_table(spec: SweepSpec, search: str = "grid", samples: int = 8) -> str:
    """What a sweep would run, with estimated tokens, FLOPs and GPU-hours, and the totals.

    ``search="grid"``: every trial of the spec. With ``train.data_schedule: reuse`` each row
    also gets ``incurred_flops`` (its trunk segment plus its cooldown,
    ``brainray.schedule.reuse_plan``) and the total says what the reused data axes cost
    against training every size from scratch. ``search="optuna"``: the space the ``samples``
    trials are drawn from (``brainray.config.SearchSpace``) and the cost of its smallest and
    largest trial, which bound the search's cost.
    """
    check_search(spec, search, samples)
    if search == "optuna":
        return _optuna_plan(spec, samples)
    reuse = spec.train.data_schedule == "reuse"
    runs = spec.runs()
    df = pd.DataFrame([row for run in runs for row in _cost_rows(spec, run)])
    if "control" in df:
        df["control"] = df["control"].fillna("")
    total = f"{df['tokens'].sum():.3g} tokens, {df['train_flops'].sum():.3g} training FLOPs"
    if reuse:
        total = (f"{df['incurred_flops'].sum():.3g} training FLOPs with data reuse, against "
                 f"{df['train_flops'].sum():.3g} from scratch ({df['incurred_flops'].sum() / df['train_flops'].sum():.2f}x; "
                 f"{len(runs)} runs)")
    return (
        f"Sweep {spec.name!r} ({spec.source}): {len(df)} trials\n{_table(df)}\n"
        f"Total: {total}, {df['gpu_hours'].sum():.3g} GPU-hours ({_ASSUMPTION}).\n"
        + cost.describe_prepare(spec)
    )


def _optuna_plan(spec: SweepSpec, samples: int) -> str:
    """The search space and budget of an Optuna search, instead of the grid it does not run."""
    space = SearchSpace(spec)
    held = ", ".join(f"{a}={space.reference[a]!r}" for a in AXES if a not in ("n_embd", "data_frames"))
    corners = [{**space.reference, "n_embd": w, "data_frames": d}
               for w, d in zip(space.n_embd_range, space.frames_range)]
    df = pd.DataFrame([_cost_rows(spec, c)[0] for c in corners], index=["smallest", "largest"])
    lo, hi = samples * df["train_flops"]
    return (
        f"Sweep {spec.name!r} ({spec.source}): Optuna search, {samples} trials (FIFO), minimising val_loss\n"
        f"  {space!r}, both on a log scale\n"
        f"  held at axes.reference: {held}\n"
        f"The smallest and the largest trial it can draw:\n{_table(df, index=True)}\n"
        f"Total: {lo:.3g} to {hi:.3g} training FLOPs for {samples} trials, at most "
        f"{samples * df['gpu_hours'].max():.3g} GPU-hours ({_ASSUMPTION})."
    )


_ASSUMPTION = (f"H100 estimate: {cost.H100['bf16'].floor_s * 1e3:.0f} ms per step plus the FLOPs at "
               f"{cost.H100['bf16'].flops_per_s / 1e12:.0f} TFLOP/s in bf16, "
               f"{cost.H100['fp32'].flops_per_s / 1e12:.0f} in fp32 (fitted to DESIGN's measured steps)")


def _cost_rows(spec: SweepSpec, run: dict) -> list[dict]:
    """One row per trial of ``run`` (one, or one per branch of a reuse run): its axes and its
    estimated tokens, training FLOPs (``incurred_flops`` with reuse) and GPU-hours."""
    tk, tr = spec.tokenizer, spec.train
    span = tk.clip_frames * tk.time_downsample
    T = (tk.clip_frames // tk.downsample[0]) * (spec.data.frame_size // tk.downsample[1]) * (
        spec.data.frame_size // tk.downsample[2]
    )
    sizes = run.get("branches") or [run["data_frames"]]
    pairs = [max(1, d // span - 1) for d in sizes]  # one play: an upper bound on the real pairs
    reuse = tr.data_schedule == "reuse" and not run.get("control")
    plan = schedule.reuse_plan(sizes, pairs, tr.epochs, tr.batch_size, tr.cooldown_frac) if reuse else None
    fpt = gpt.train_flops_per_token(run["n_layer"], run["n_embd"], tk.n_codes, 2 * T, n_logits=T)
    rows = []
    for i, (d, n) in enumerate(zip(sizes, pairs)):
        steps = 0 if run.get("control") else schedule.steps_for(n, tr.epochs, tr.batch_size)  # a control never trains
        tokens = steps * tr.batch_size * 2 * T
        row = {**{k: v for k, v in run.items() if k != "branches"}, "data_frames": d, "tokens": tokens,
               "train_flops": fpt * tokens}
        own = steps
        if plan:
            own = plan[i].own_steps
            row["incurred_flops"] = fpt * own * tr.batch_size * 2 * T
        row["gpu_hours"] = cost.H100[run["dtype"]].seconds(own, row.get("incurred_flops", row["train_flops"])) / 3600
        rows.append(row)
    return rows


def _table(df: pd.DataFrame, index: bool = False) -> str:
    with pd.option_context("display.width", 160, "display.float_format", "{:.3g}".format):
        return df.to_string(index=index)


def best_per_budget(trials: pd.DataFrame) -> pd.DataFrame:
    """Best finished trial per decade of training FLOPs, by val loss and by brain score."""
    from brainray.frontier import is_control

    ok = trials[(trials["status"] == "TERMINATED") & trials["train_flops"].gt(0) & ~is_control(trials)].copy()
    if ok.empty:
        return pd.DataFrame()
    ok["budget"] = 10 ** np.floor(np.log10(ok["train_flops"]))
    rows = []
    cols = ["data_frames", "n_embd", "n_layer", "n_head", "dtype"]
    for budget, g in ok.groupby("budget"):
        lo = g.loc[g["val_loss"].idxmin()]
        row = {"FLOPs <": f"{budget * 10:.0e}", "trials": len(g), "best loss": round(lo["val_loss"], 3),
               "at (frames,width,layers,heads,dtype)": tuple(lo[c] for c in cols)}
        if g["brain_r_mean"].notna().any():
            br = g.loc[g["brain_r_mean"].idxmax()]
            row["best brain r"] = round(br["brain_r_mean"], 3)
            row["at"] = tuple(br[c] for c in cols)
        rows.append(row)
    return pd.DataFrame(rows)


def _training_lines(trials: pd.DataFrame) -> list[str]:
    """One line on what training adds to brain_r_mean, against the controls and seed noise."""
    from brainray.frontier import training_effect

    effect = training_effect(trials)
    if effect.empty:
        return []
    e = effect.iloc[0]  # brain_r_mean
    sd = f", seed s.d. {e['seed_sd']:.4f}" if np.isfinite(e["seed_sd"]) else ""
    codes = f", VQ codes alone (no model) {e['codes']:.3f}" if np.isfinite(e["codes"]) else ""
    return ["", f"What training adds (brain r mean): untrained control {e['untrained']:.3f}, trained reference "
                f"{e['trained']:.3f} ({e['gain']:+.3f}{sd}), best trained {e['best']:.3f} ({e['best_gain']:+.3f})"
                f"{codes}; per family in the report"]


def run_frontier(root: str | Path, bootstrap: int = 200, log: Callable[[str], None] = print) -> str:
    """Fit the laws and write ``<root>/frontier/`` (fits.json, allocation.csv, plots, report.html).

    ``root`` may be a URI: the report is drawn into a local folder (``triallog.Staged``) and
    published through the root's pyarrow filesystem. Returns ``<root>/frontier``.
    """
    from brainray import report

    root = str(root).rstrip("/")
    trials = triallog.read_trials(root)
    if trials.empty:
        raise FileNotFoundError(f"No trial log under {root}/trials: run the sweep first.")
    log(f"[frontier] fitting scaling laws on {len(trials)} trials -> {root}/frontier")
    with triallog.Staged(root, "frontier") as out:
        path = report.write_report(
            trials, out.path, curves_df=triallog.read_curves(root), title=f"brainray sweep {root.rsplit('/', 1)[-1]}",
            bootstrap=bootstrap, parcels_root=root,
        )
    log(f"[frontier] report: {out.dest}/{Path(path).name}")
    return out.dest


def final_summary(root: str | Path, elapsed_s: float | None = None) -> str:
    root = Path(root)
    trials = triallog.read_trials(str(root))
    lines = ["", "=" * 78, f"Sweep {root.name}: {len(trials)} trials"]
    if not trials.empty:
        lines.append("  status: " + ", ".join(f"{k} {v}" for k, v in trials["status"].value_counts().items()))
        failed = trials[trials["status"] != "TERMINATED"]
        for _, r in failed.iterrows():
            lines.append(f"  failed {r['trial_id']}: {str(r['error']).strip().splitlines()[-1][:120]}")
        best = best_per_budget(trials)
        if not best.empty:
            with pd.option_context("display.width", 200, "display.max_colwidth", 60):
                lines += ["", "Best configuration per training-FLOPs budget:", best.to_string(index=False)]
        lines += _training_lines(trials)
    lines += [
        "",
        "Written:",
        f"  trial log   {root / 'trials'}  (pandas.read_parquet reads the folder)",
        f"  curves      {root / 'curves'}",
        f"  tensorboard {root / 'tensorboard'}  (tensorboard --logdir {root / 'tensorboard'})",
        f"  frontier    {root / 'frontier'}",
        f"  report      {root / 'frontier' / 'report.html'}",
    ]
    if elapsed_s is not None:
        lines.append(f"Total wall time {elapsed_s / 60:.1f} min")
    return "\n".join(lines)
