"""What a reused data axis saved, and whether it agrees with training from scratch.

With ``train.data_schedule: reuse`` each data size is a cooldown branch off one trunk run
per model config (``brainray.schedule``). Its trial-log row keeps two costs apart:
``train_flops`` is the whole path of that model (what it would cost trained alone, the C
of every scaling law), ``incurred_flops`` what the row added to the bill (its trunk
segment plus its own cooldown), so the trunk is counted once over a run's rows.

Reuse is only worth having if it does not move the answer. When a sweep (or
``benchmarks/data_reuse.py``) has both schedules for the same configs, ``agreement``
compares reused branches with from-scratch trials against the run-to-run noise measured
over seeds, and ``data_exponents`` fits the data exponent beta on each schedule alone.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from brainray.frontier import LawFit, fit_law

__all__ = ["savings", "agreement", "data_exponents", "arms", "MODEL_KEYS"]

MODEL_KEYS = ("n_embd", "n_layer", "n_head", "dtype")


def _schedule(df: pd.DataFrame) -> pd.Series:
    if "data_schedule" not in df.columns:
        return pd.Series("scratch", index=df.index)
    return df["data_schedule"].fillna("scratch")


def arms(df: pd.DataFrame) -> pd.Series:
    """Each row's arm, ``<data_schedule>/<lr_schedule>`` (e.g. ``scratch/cosine``, ``reuse/wsd``).

    Logs from before ``lr_schedule`` was logged read as cosine from scratch, wsd for reuse."""
    sched = _schedule(df)
    lr = df["lr_schedule"] if "lr_schedule" in df.columns else pd.Series(None, index=df.index, dtype=object)
    lr = lr.where(lr.notna(), sched.map({"scratch": "cosine", "reuse": "wsd"}))
    return sched + "/" + lr


def savings(trials: pd.DataFrame) -> pd.DataFrame:
    """Compute of each reuse run's data axis, from scratch vs as run; one row per run plus a total.

    Columns: the model config, ``seed``, ``sizes`` (data sizes scored), ``scratch_flops``
    (sum of ``train_flops``: each size trained alone), ``reuse_flops`` (sum of
    ``incurred_flops``), ``ratio`` (reuse / scratch), and the same for GPU-hours. Only
    finished rows count. Empty when the log has no reuse rows.
    """
    cols = [*MODEL_KEYS, "seed", "sizes", "scratch_flops", "reuse_flops", "ratio",
            "scratch_gpu_hours", "reuse_gpu_hours", "gpu_hours_ratio"]
    ok = trials[(_schedule(trials) == "reuse") & (trials["status"] == "TERMINATED")]
    if ok.empty or "parent_trial" not in ok.columns:
        return pd.DataFrame(columns=cols)
    rows = []
    for _, g in ok.groupby("parent_trial", sort=True):
        rows.append({**{k: g[k].iloc[0] for k in (*MODEL_KEYS, "seed")},
                     "sizes": ", ".join(str(int(d)) for d in sorted(g["data_frames"])),
                     "scratch_flops": g["train_flops"].sum(), "reuse_flops": g["incurred_flops"].sum(),
                     "scratch_gpu_hours": g["gpu_hours"].sum(), "reuse_gpu_hours": g["incurred_gpu_hours"].sum()})
    out = pd.DataFrame(rows)
    total = {"n_embd": "all", "sizes": f"{len(ok)} trials in {len(out)} runs",
             **{c: out[c].sum() for c in ("scratch_flops", "reuse_flops", "scratch_gpu_hours", "reuse_gpu_hours")}}
    out = pd.concat([out, pd.DataFrame([total])], ignore_index=True)
    out["ratio"] = out["reuse_flops"] / out["scratch_flops"]
    out["gpu_hours_ratio"] = out["reuse_gpu_hours"] / out["scratch_gpu_hours"]
    return out.reindex(columns=cols)


def agreement(trials: pd.DataFrame, baseline: str = "scratch/wsd", other: str = "reuse/wsd",
              metrics: tuple[str, ...] = ("val_loss", "brain_r_mean")) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Arm ``other`` vs arm ``baseline`` (see ``arms``) at the same model config and data size.

    The default compares reused branches with from-scratch trials on the same WSD schedule,
    which isolates what reuse changes (the shared trunk, the growing-prefix curriculum);
    against ``scratch/cosine`` the LR schedule's own effect is in the difference too.

    Returns
    -------
    matched : DataFrame
        One row per (config, data size, metric) run both ways: seed means and counts per
        arm (``scratch``: the baseline, ``reuse``: the other), ``diff`` (other - baseline), and ``z``: the difference over its standard
        error under the pooled run-to-run noise.
    summary : DataFrame
        One row per metric: ``n_matched``, ``noise_sd`` (pooled seed standard deviation of
        single runs, both schedules), ``mean_diff`` with its 95 % t interval over matched
        points (a systematic shift), ``mean_abs_diff``, ``max_abs_z`` and ``within_2se``
        (share of matched points with |z| <= 2). Empty when nothing is matched.
    """
    keys = [*MODEL_KEYS, "data_frames"]
    ok = trials[trials["status"] == "TERMINATED"].assign(_schedule=arms(trials))
    ok = ok[ok["_schedule"].isin([baseline, other])].replace({"_schedule": {baseline: "scratch", other: "reuse"}})
    matched, summary = [], []
    for metric in metrics:
        if metric not in ok.columns:
            continue
        g = ok.groupby([*keys, "_schedule"])[metric].agg(["mean", "count", "var"]).reset_index()
        var = g.dropna(subset=["var"])
        dof = (var["count"] - 1).sum()
        noise = math.sqrt(float(((var["count"] - 1) * var["var"]).sum() / dof)) if dof > 0 else math.nan
        wide = g[g["_schedule"] == "scratch"].merge(g[g["_schedule"] == "reuse"], on=keys,
                                                    suffixes=("_scratch", "_reuse"))
        if wide.empty:
            continue
        se = noise * np.sqrt(1 / wide["count_scratch"] + 1 / wide["count_reuse"])
        m = pd.DataFrame({**{k: wide[k] for k in keys}, "metric": metric,
                          "scratch": wide["mean_scratch"], "n_scratch": wide["count_scratch"],
                          "reuse": wide["mean_reuse"], "n_reuse": wide["count_reuse"],
                          "diff": wide["mean_reuse"] - wide["mean_scratch"]})
        m["z"] = m["diff"] / se
        matched.append(m)
        d = m["diff"].to_numpy(float)
        half = (float(stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d)))
                if len(d) > 1 else math.nan)
        summary.append({"baseline": baseline, "other": other, "metric": metric, "n_matched": len(d), "noise_sd": noise, "mean_diff": d.mean(),
                        "mean_diff_lo": d.mean() - half, "mean_diff_hi": d.mean() + half,
                        "mean_abs_diff": np.abs(d).mean(), "max_abs_z": float(np.abs(m["z"]).max()),
                        "within_2se": float((np.abs(m["z"]) <= 2).mean())})
    return (pd.concat(matched, ignore_index=True) if matched else pd.DataFrame(),
            pd.DataFrame(summary))


def data_exponents(trials: pd.DataFrame, bootstrap: int = 200, seed: int = 0
                   ) -> dict[str, LawFit | str]:
    """The loss law fitted on each arm's finished trials alone: arm (``arms``) -> fit (or why not).

    Agreement of beta (the data exponent) within its bootstrap CI is the test that reuse
    leaves the data axis' scaling law where training from scratch puts it.
    """
    ok = trials[trials["status"] == "TERMINATED"].assign(_schedule=arms(trials))
    out: dict[str, LawFit | str] = {}
    for name, g in ok.groupby("_schedule", sort=True):
        try:
            out[name] = fit_law(g["params_nonembed"], g["tokens"], g["val_loss"], bootstrap=bootstrap, seed=seed)
        except ValueError as e:
            out[name] = str(e)
    return out
