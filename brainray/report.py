"""Frontier report: fits.json, allocation.csv, PNG plots and one self-contained report.html.

``write_report(trials_df, out_dir)`` runs :func:`brainray.frontier.analyze` (or takes its
result), then writes into ``out_dir``:

- ``fits.json``: the fitted laws and the analysis summary (:func:`analysis_to_dict`);
- ``allocation.csv``: compute-optimal allocation at several budgets;
- ``frontier_loss.png``: val loss vs training FLOPs, Pareto front, fitted frontier + band;
- ``frontier_brain.png``: brain_r_mean vs training FLOPs and vs GPU-hours;
- ``isoflop.png``: loss vs model size at matched FLOPs, when the grid has such groups;
- ``axis_effects.png``: one panel per axis, mean with 95 % CI;
- ``loss_curves.png``: train/val loss vs tokens, when curves are given;
- ``data_reuse.png``: with reused data axes (``train.data_schedule: reuse``), their FLOPs
  against training each size from scratch, and the loss along the data axis per schedule;
- ``report.html``: one file, images embedded as base64, inline CSS, no external links.

It degrades gracefully: with too few trials for a fit (a smoke sweep has ~4) it still
writes the plots and tables and says in the report why no law was fitted.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never open a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from brainray import reuse  # noqa: E402
from brainray.frontier import (  # noqa: E402
    AXES, PAPER_DTYPE, LawFit, _jsonable, analysis_to_dict, analyze, config_frontier, pareto_front, score_families,
)

__all__ = ["write_report", "PLOTS", "REUSE_PLOT"]

PLOTS = ("frontier_loss.png", "frontier_brain.png", "isoflop.png", "axis_effects.png",
         "loss_curves.png")
REUSE_PLOT = "data_reuse.png"  # only for sweeps with reused data axes
_CURVE_COLUMNS = ("trial_id", "step", "tokens", "train_loss", "val_loss")
_TRIAL_COLUMNS = ("trial_id", "status", "control", "n_embd", "n_layer", "n_head", "data_frames",
                  "dtype", "seed", "params_nonembed", "tokens", "train_flops", "gpu_hours",
                  "tokens_per_s", "val_loss", "brain_r_mean", "brain_r_max", "ceiling_frac")
_LABELS = {"val_loss": "validation loss", "brain_r_mean": "brain score (mean r)",
           "train_flops": "training FLOPs", "gpu_hours": "GPU-hours"}
_DPI = 110


def write_report(trials_df: pd.DataFrame, out_dir: str | Path,
                 curves_df: pd.DataFrame | None = None,
                 analysis: dict[str, Any] | None = None,
                 title: str = "brainray compute-optimal frontier",
                 bootstrap: int = 200, seed: int = 0) -> Path:
    """Write the frontier report of a trial log into ``out_dir``.

    Parameters
    ----------
    trials_df : DataFrame
        The trial log, one row per trial (columns as in DESIGN.md).
    out_dir : str or Path
        Folder for the outputs; created if missing. Existing files are overwritten.
    curves_df : DataFrame, optional
        Training curves with columns ``trial_id, step, tokens, train_loss, val_loss``
        (val_loss NaN on steps without evaluation).
    analysis : dict, optional
        Result of :func:`brainray.frontier.analyze` for ``trials_df``; computed here
        (``strict=False``) when None.
    title : str, default="brainray compute-optimal frontier"
        Title of the HTML report.
    bootstrap : int, default=200
        Bootstrap resamples when the analysis is computed here.
    seed : int, default=0
        Bootstrap seed when the analysis is computed here.

    Returns
    -------
    Path
        Path of ``report.html``.
    """
    if not isinstance(trials_df, pd.DataFrame):
        raise TypeError(f"write_report: trials_df must be a pandas DataFrame; got "
                        f"{type(trials_df).__name__}.")
    if curves_df is not None:
        missing = [c for c in _CURVE_COLUMNS if c not in curves_df.columns]
        if missing:
            raise ValueError(f"write_report: curves_df lacks column(s) {missing}; it has "
                             f"{list(curves_df.columns)}. Read it with brainray.triallog.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if analysis is None:
        analysis = analyze(trials_df, bootstrap=bootstrap, seed=seed, strict=False)

    notes: dict[str, str] = {}
    plotters = {
        "frontier_loss.png": lambda p: _plot_frontier_loss(analysis, p),
        "frontier_brain.png": lambda p: _plot_frontier_brain(analysis, p),
        "isoflop.png": lambda p: _plot_isoflop(analysis, p),
        "axis_effects.png": lambda p: _plot_axis_effects(analysis, p),
        "loss_curves.png": lambda p: _plot_loss_curves(curves_df, analysis, p),
        "frontier_families.png": lambda p: _plot_families(analysis, p),
    }
    reuse_info = _reuse_analysis(trials_df, bootstrap, seed)
    if reuse_info is not None:
        plotters[REUSE_PLOT] = lambda p: _plot_reuse(trials_df, reuse_info, p)
    else:
        (out / REUSE_PLOT).unlink(missing_ok=True)
    for name, plot in plotters.items():
        path = out / name
        why = plot(path)  # None when written, else why not
        if why is None:
            notes[name] = "written"
        else:
            notes[name] = why
            path.unlink(missing_ok=True)  # no stale plot from an earlier run

    summary = analysis_to_dict(analysis)
    if reuse_info is not None:
        summary["data_reuse"] = _reuse_to_dict(reuse_info)
    summary.update(title=title, plots=notes,
                   generated_at=_dt.datetime.now(_dt.timezone.utc).isoformat())
    (out / "fits.json").write_text(json.dumps(summary, indent=1, allow_nan=False))
    analysis["allocation"].to_csv(out / "allocation.csv", index=False)
    report = out / "report.html"
    report.write_text(_html(trials_df, analysis, notes, out, title, reuse_info), encoding="utf-8")
    return report


# ---------------------------------------------------------------------------------------
# Plots (each returns None when written, else the reason it was not)
# ---------------------------------------------------------------------------------------


def _save(fig: plt.Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)


def _front_line(ax: plt.Axes, x: np.ndarray, y: np.ndarray, on: np.ndarray) -> None:
    order = np.argsort(x[on])
    ax.plot(x[on][order], y[on][order], "-", color="crimson", lw=1.5, zorder=3)
    ax.scatter(x[on], y[on], s=90, facecolors="none", edgecolors="crimson", lw=1.6,
               zorder=4, label="Pareto front")


def _scatter_by_size(ax: plt.Axes, df: pd.DataFrame, x: str, y: str) -> Any:
    return ax.scatter(df[x], df[y], c=np.log10(df["params_nonembed"]), cmap="viridis",
                      s=28, edgecolors="k", linewidths=0.3, zorder=2)


def _law_frontier(ax: plt.Axes, fit: LawFit | None, df: pd.DataFrame, label: str) -> None:
    """Fitted frontier over the architectures run (true cost), with a bootstrap band."""
    if fit is None:
        return
    C = np.geomspace(df["train_flops"].min() / 2, df["train_flops"].max() * 10, 80)
    value, lo, hi = config_frontier(fit, df, C, level=0.95)
    ax.plot(C, value, "--", color="k", lw=1.3, label=label, zorder=3)
    if np.isfinite(lo).any():
        ax.fill_between(C, lo, hi, color="0.55", alpha=0.35, lw=0,
                        label="95 % bootstrap band")


def _log_axis(ax: plt.Axes, y: bool = False) -> None:
    """Log x (and y) scale; x labels on decades only (minor labels overlap there)."""
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    if y:
        ax.set_yscale("log")


def _plot_frontier_loss(analysis: dict[str, Any], path: Path) -> str | None:
    df = analysis["usable"]
    if df.empty:
        return "no usable trials"
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    sc = _scatter_by_size(ax, df, "train_flops", "val_loss")
    on = df["trial_id"].isin(analysis["fronts"]["val_loss_vs_train_flops"]["trial_ids"])
    _front_line(ax, df["train_flops"].to_numpy(), df["val_loss"].to_numpy(), on.to_numpy())
    _law_frontier(ax, analysis["fits"].get("val_loss"), df,
                  "fitted frontier (best architecture run, D = C / FLOPs per token)")
    _log_axis(ax, y=True)
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("validation loss")
    ax.set_title("Validation loss vs training compute")
    fig.colorbar(sc, ax=ax, label="log10 params (non-embedding)")
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(True, which="major", alpha=0.3)
    _save(fig, path)
    return None


def _plot_frontier_brain(analysis: dict[str, Any], path: Path) -> str | None:
    df = analysis["usable"]
    if df.empty:
        return "no usable trials"
    costs = [c for c in ("train_flops", "gpu_hours") if c in df.columns]
    fig, axes = plt.subplots(1, len(costs), figsize=(5.2 * len(costs) + 0.8, 4.2),
                             squeeze=False)
    sc = None
    for ax, cost in zip(axes[0], costs):
        sc = _scatter_by_size(ax, df, cost, "brain_r_mean")
        front = analysis["fronts"].get(f"brain_r_mean_vs_{cost}")
        if front:
            on = df["trial_id"].isin(front["trial_ids"]).to_numpy()
            _front_line(ax, df[cost].to_numpy(), df["brain_r_mean"].to_numpy(), on)
        if cost == "train_flops":
            _law_frontier(ax, analysis["fits"].get("brain_r_mean"), df,
                          "fitted frontier (ceiling-gap law)")
        _log_axis(ax)
        ax.set_xlabel(_LABELS[cost])
        ax.set_ylabel("brain score (mean r)")
        ax.set_title(f"Brain score vs {_LABELS[cost]}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.colorbar(sc, ax=list(axes[0]), label="log10 params (non-embedding)")
    fig.savefig(path, dpi=_DPI, bbox_inches="tight")
    plt.close(fig)
    return None


def _plot_families(analysis: dict[str, Any], path: Path) -> str | None:
    """One panel per parcel family: its score against training FLOPs, the front, the control."""
    df = analysis["usable"]
    families = score_families(df)
    if df.empty or not families:
        return "no per-family scores (a simulated brain logs brain_r_<family>)"
    effect = analysis.get("training_effect")
    control = {} if effect is None or effect.empty else effect.set_index("score")[["untrained", "untrained_sd"]].T.to_dict()
    ncols = min(4, len(families))
    nrows = -(-len(families) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols + 0.8, 3.0 * nrows), squeeze=False,
                             layout="constrained")
    sc = None
    for ax, fam in zip(axes.flat, families):
        col = f"brain_r_{fam}"
        sc = _scatter_by_size(ax, df, "train_flops", col)
        y = df[col].to_numpy(float)
        ok = np.isfinite(y)
        if ok.any():
            on = np.zeros(len(df), dtype=bool)
            on[np.flatnonzero(ok)] = pareto_front(df["train_flops"][ok], y[ok], minimize=False)
            _front_line(ax, df["train_flops"].to_numpy(), y, on)
        if col in control:  # the untrained reference: its mean over seeds, +- 1 s.d.
            mean, sd = control[col]["untrained"], control[col]["untrained_sd"]
            ax.axhline(mean, color="0.3", ls="--", lw=1, label="untrained control (reference)")
            if np.isfinite(sd):
                ax.axhspan(mean - sd, mean + sd, color="0.5", alpha=0.15, lw=0)
        _log_axis(ax)
        ax.set_title(fam, fontsize=10)
        ax.set_xlabel("training FLOPs", fontsize=8)
        ax.set_ylabel("mean r", fontsize=8)
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(families):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=7, loc="lower right")
    fig.colorbar(sc, ax=list(axes.flat), label="log10 params (non-embedding)")
    fig.savefig(path, dpi=_DPI, bbox_inches="tight")
    plt.close(fig)
    return None


def _training_section(effect: pd.DataFrame, by_width: pd.DataFrame | None, out: Path, notes: dict[str, str]) -> str:
    """What training adds: trained minus untrained per family, against seed noise."""
    if effect is None or effect.empty:
        return ("<h2>What training adds</h2><p class='note'>No untrained control in this sweep "
                "(<code>axes.controls: [untrained]</code> adds one per seed at the reference), so "
                "nothing here says how much of the brain score training buys.</p>")
    shown = effect.assign(
        separates=effect["separates"].map({True: "yes", False: "no"}),
        gain_ci=[f"[{lo:+.3f}, {hi:+.3f}]" if np.isfinite(lo) else "" for lo, hi in
                 zip(effect["gain_ci_lo"].astype(float), effect["gain_ci_hi"].astype(float))],
    )[["score", "untrained", "trained", "gain", "gain_ci", "seed_sd", "n_seeds", "best", "best_gain", "margin",
       "separates"]]
    return (
        "<h2>What training adds</h2>"
        "<p class='note'><b>untrained</b>: the reference model scored with its initial weights (same "
        "features, same ridge), mean over seeds. <b>trained</b>: the reference trained, mean over the "
        "same seeds; <b>gain</b> is their difference with a 95 % Welch interval, and <b>seed_sd</b> the "
        "s.d. of the trained reference over seeds. <b>best_gain</b>: the best trained trial of the "
        "sweep minus the untrained mean; it <b>separates</b> when it exceeds <b>margin</b> = "
        "max(5 seed s.d., 0.05). Controls are left out of every fit, frontier and allocation.</p>"
        + _table(shown)
        + ("" if by_width is None or by_width.empty else
           "<h3>By width</h3><p class='note'>brain_r_mean of each untrained width against the same "
           "config trained (mean over its seeds): how much training adds depends on how much a random "
           "model of that width already carries.</p>" + _table(by_width))
        + _img(out, "frontier_families.png", notes, "brain score per parcel family vs training FLOPs")
    )


def _isoflop_groups(df: pd.DataFrame, width: float = 0.15) -> list[pd.DataFrame]:
    """Groups of trials within +-width decades of FLOPs with >= 3 distinct model sizes."""
    logc = np.log10(df["train_flops"].to_numpy())
    groups, used = [], np.zeros(len(df), dtype=bool)
    for i in np.argsort(logc):
        if used[i]:
            continue
        sel = (~used) & (np.abs(logc - logc[i]) <= 2 * width) & (logc >= logc[i])
        g = df[sel]
        if g["params_nonembed"].nunique() >= 3:
            groups.append(g)
            used |= sel
    return groups


def _plot_isoflop(analysis: dict[str, Any], path: Path) -> str | None:
    df = analysis["usable"]
    if df.empty:
        return "no usable trials"
    groups = _isoflop_groups(df)
    if not groups:
        return ("the grid has no group of >= 3 model sizes within 0.3 decade of "
                "training FLOPs, so there is no isoFLOP profile to draw")
    if len(groups) > 6:  # keep the plot readable: 6 budgets spread over the range
        groups = [groups[i] for i in np.linspace(0, len(groups) - 1, 6).round().astype(int)]
    fit: LawFit | None = analysis["fits"].get("val_loss")
    # smooth per-token cost of a model size: quadratic in log-log over the trials run
    logn = np.log(df["params_nonembed"].to_numpy(float))
    logcpt = np.log((df["train_flops"] / df["tokens"]).to_numpy(float))
    coef = np.polyfit(logn, logcpt, deg=min(2, len(np.unique(logn)) - 1))
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    colors = plt.cm.plasma(np.linspace(0.05, 0.85, len(groups)))
    for g, col in zip(groups, colors):
        C = float(np.exp(np.log(g["train_flops"]).mean()))
        ax.scatter(g["params_nonembed"], g["val_loss"], color=col, s=30, edgecolors="k",
                   linewidths=0.3, label=f"C ≈ {C:.2g}", zorder=3)
        if fit is not None:
            Ns = np.geomspace(g["params_nonembed"].min() / 2,
                              g["params_nonembed"].max() * 2, 100)
            D = C / np.exp(np.polyval(coef, np.log(Ns)))
            ax.plot(Ns, fit.predict(Ns, D), "-", color=col, lw=1)
    _log_axis(ax)
    ax.set_xlabel("params (non-embedding)")
    ax.set_ylabel("validation loss")
    ax.set_title("IsoFLOP profiles" + (" (lines: fitted law at D = C / cost per token)"
                                     if fit is not None else ""), fontsize=10)
    ax.legend(fontsize=8, title="training FLOPs", title_fontsize=8)
    ax.grid(True, alpha=0.3)
    _save(fig, path)
    return None


def _plot_axis_effects(analysis: dict[str, Any], path: Path) -> str | None:
    metrics = [m for m, e in analysis["effects"].items() if not e.empty]
    if not metrics:
        return "no usable trials"
    axes_present = [a for a in AXES
                    if any((analysis["effects"][m]["axis"] == a).any() for m in metrics)]
    fig, grid = plt.subplots(len(metrics), len(axes_present),
                             figsize=(2.6 * len(axes_present) + 0.6, 2.7 * len(metrics)),
                             squeeze=False)
    for r, metric in enumerate(metrics):
        eff = analysis["effects"][metric]
        for c, ax_name in enumerate(axes_present):
            ax = grid[r, c]
            e = eff[eff["axis"] == ax_name]
            x = np.arange(len(e))
            m = e["mean"].to_numpy(float)
            lo = np.nan_to_num(m - e["ci_lo"].to_numpy(float))
            hi = np.nan_to_num(e["ci_hi"].to_numpy(float) - m)
            ax.errorbar(x, m, yerr=[lo, hi], fmt="o-", color="C0" if r == 0 else "C3",
                        capsize=3, ms=4, lw=1)
            ax.set_xticks(x)
            ax.set_xticklabels([_short(v) for v in e["value"]], fontsize=8, rotation=30)
            held = e["held"].iloc[0] if len(e) else ""
            ax.set_title(f"{ax_name}" + (" (marginal)" if held == "marginal" else ""),
                         fontsize=9)
            ax.grid(True, alpha=0.3)
            if c == 0:
                ax.set_ylabel(_LABELS.get(metric, metric), fontsize=9)
    fig.suptitle("Per-axis effects (mean, 95 % CI; other axes at the reference config)",
                 fontsize=10)
    _save(fig, path)
    return None


def _plot_loss_curves(curves: pd.DataFrame | None, analysis: dict[str, Any],
                      path: Path) -> str | None:
    if curves is None:
        return "no training curves were given (curves_df=None)"
    if curves.empty:
        return "the curves table is empty"
    sizes = dict(zip(analysis["usable"]["trial_id"], analysis["usable"]["params_nonembed"]))
    ids = list(dict.fromkeys(curves["trial_id"]))
    logn = np.array([math.log10(sizes[t]) if t in sizes else np.nan for t in ids])
    finite = np.isfinite(logn)
    lo, hi = (logn[finite].min(), logn[finite].max()) if finite.any() else (0.0, 1.0)
    cmap = plt.cm.viridis
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    use_tokens = curves["tokens"].notna().all()
    xcol = "tokens" if use_tokens else "step"
    for tid, ln in zip(ids, logn):
        g = curves[curves["trial_id"] == tid].sort_values("step")
        col = cmap((ln - lo) / (hi - lo)) if np.isfinite(ln) and hi > lo else "0.4"
        axes[0].plot(g[xcol], g["train_loss"], "-", color=col, lw=0.8, alpha=0.8)
        v = g[g["val_loss"].notna()]
        axes[1].plot(v[xcol], v["val_loss"], "o-", color=col, lw=0.8, ms=2.5, alpha=0.9)
    for ax, name in zip(axes, ("train loss", "validation loss")):
        _log_axis(ax, y=True)
        ax.set_xlabel(xcol)
        ax.set_title(name)
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel("loss")
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(lo, hi))
    fig.colorbar(sm, ax=list(axes), label="log10 params (non-embedding)")
    fig.savefig(path, dpi=_DPI, bbox_inches="tight")
    plt.close(fig)
    return None


# ---------------------------------------------------------------------------------------
# Data reuse (train.data_schedule: reuse)
# ---------------------------------------------------------------------------------------


def _reuse_analysis(trials: pd.DataFrame, bootstrap: int, seed: int) -> dict[str, Any] | None:
    """Savings, agreement with from-scratch trials and beta per schedule; None without reuse rows."""
    if "data_schedule" not in trials.columns or not (trials["data_schedule"] == "reuse").any():
        return None
    arms = set(reuse.arms(trials))
    pairs = [(b, "reuse/wsd") for b in ("scratch/wsd", "scratch/cosine") if b in arms and "reuse/wsd" in arms]
    results = [reuse.agreement(trials, baseline=b, other=o) for b, o in pairs]
    return {"savings": reuse.savings(trials),
            "matched": pd.concat([m for m, _ in results], ignore_index=True) if results else pd.DataFrame(),
            "summary": pd.concat([x for _, x in results], ignore_index=True) if results else pd.DataFrame(),
            "laws": reuse.data_exponents(trials, bootstrap=bootstrap, seed=seed) if len(arms) > 1 else {}}


def _reuse_to_dict(info: dict[str, Any]) -> dict[str, Any]:
    laws = {k: (v.to_dict() if isinstance(v, LawFit) else {"error": v}) for k, v in info["laws"].items()}
    return _jsonable({"savings": info["savings"].to_dict(orient="records"),
                      "agreement": info["summary"].to_dict(orient="records"),
                      "matched": info["matched"].to_dict(orient="records"), "laws": laws})


def _plot_reuse(trials: pd.DataFrame, info: dict[str, Any], path: Path) -> str | None:
    sav = info["savings"]
    runs = sav[sav["n_embd"] != "all"]
    if runs.empty:
        return "no reuse run has finished yet"
    by_model = runs.groupby(list(reuse.MODEL_KEYS), sort=True)[["scratch_flops", "reuse_flops"]].sum().reset_index()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    ax = axes[0]
    x = np.arange(len(by_model))
    ax.bar(x - 0.2, by_model["scratch_flops"], 0.4, label="each size from scratch", color="0.6")
    ax.bar(x + 0.2, by_model["reuse_flops"], 0.4, label="reused (trunk once + cooldowns)", color="C0")
    ax.set_xticks(x, [f"d{int(r.n_embd)} L{int(r.n_layer)}\nH{int(r.n_head)} {r.dtype}" for r in by_model.itertuples()],
                  fontsize=7)
    ax.set_ylabel("training FLOPs of the data axis (all seeds)")
    total = sav.iloc[-1]
    ax.set_title(f"Data-axis compute: reuse = {total['ratio']:.2f}x scratch")
    ax.legend(fontsize=8)
    ax = axes[1]
    ok = trials[trials["status"] == "TERMINATED"].assign(_s=reuse.arms(trials))
    widths = sorted(ok["n_embd"].unique())
    for i, w in enumerate(widths):
        for sched, style in (("scratch/cosine", "o:"), ("scratch/wsd", "^-"), ("reuse/wsd", "s--")):
            g = ok[(ok["n_embd"] == w) & (ok["_s"] == sched)]
            if g.empty:
                continue
            m = g.groupby("data_frames")["val_loss"].agg(["mean", "std"]).reset_index()
            ax.errorbar(m["data_frames"], m["mean"], yerr=m["std"].fillna(0), fmt=style, color=f"C{i}",
                        ms=4, lw=1, capsize=2, label=f"width {w}, {sched}")
    _log_axis(ax, y=True)
    ax.set_xlabel("data size (frames)")
    ax.set_ylabel("validation loss (mean ± sd over seeds)")
    ax.set_title("Loss along the data axis")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    _save(fig, path)
    return None


def _reuse_section(info: dict[str, Any] | None, out: Path, notes: dict[str, str]) -> str:
    if info is None:
        return ""
    parts = ["<h2>Data reuse</h2>",
             "<p class='note'>With <code>train.data_schedule: reuse</code> each model config trains one "
             "warmup-stable-decay run over its largest data size; every smaller size is a cooldown branch off "
             "its stable phase, with as many steps as its from-scratch trial. <b>scratch_flops</b>: the sizes "
             "trained alone (sum of <code>train_flops</code>, the C used by every law above); "
             "<b>reuse_flops</b>: what was spent (the shared trunk once, plus each cooldown).</p>",
             _table(info["savings"], scroll=True), _img(out, REUSE_PLOT, notes, "data reuse: compute and loss")]
    if info["summary"].empty:
        parts.append("<p class='note'>No config was also run from scratch, so agreement is not measured here "
                     "(<code>benchmarks/data_reuse.py</code> measures it).</p>")
    else:
        parts.append("<h3>Agreement with training from scratch</h3><p class='note'>Reused branch minus "
                     "from-scratch trial at the same config and data size (seed means); <i>baseline</i> "
                     "<code>scratch/wsd</code> has the same LR schedule, so the difference is what reuse itself "
                     "changes; against <code>scratch/cosine</code> the schedule's own effect is in it too. "
                     "noise_sd: run-to-run standard deviation over seeds; z: the difference over its standard "
                     "error.</p>")
        parts.append(_table(info["summary"]))
        rows = []
        for name, fit in info["laws"].items():
            if isinstance(fit, LawFit):
                lo, hi = fit.ci.get("beta", (math.nan, math.nan))
                rows.append({"arm": name, "beta": fit.beta, "beta_lo": lo, "beta_hi": hi, "alpha": fit.alpha,
                             "trials": fit.n_used, "error": ""})
            else:
                rows.append({"arm": name, "error": fit})
        if rows:
            parts.append("<p class='note'>Data exponent β of the loss law fitted on each arm alone "
                         "(95 % bootstrap CI).</p>" + _table(pd.DataFrame(rows), left=("arm", "error")))
    return "\n".join(parts)


def _short(v: Any) -> str:
    if isinstance(v, (int, np.integer)) or (isinstance(v, float) and float(v).is_integer()):
        v = int(v)
        for div, suf in ((1_000_000, "M"), (1_000, "K")):
            if v >= div and v % div == 0:
                return f"{v // div}{suf}"
            if v >= 10 * div:
                return f"{v / div:.3g}{suf}"
        return str(v)
    return str(v)


# ---------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------

_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0;
 color:#1d232a;background:#f5f6f8;line-height:1.45}
main{max-width:1100px;margin:0 auto;padding:24px 28px 48px;background:#fff;
 box-shadow:0 0 12px rgba(0,0,0,.06)}
h1{font-size:1.6em;margin:.2em 0 .1em}
h2{font-size:1.2em;margin-top:1.8em;border-bottom:2px solid #e3e6ea;padding-bottom:.2em}
h3{font-size:1.02em;margin:1.2em 0 .3em}
.meta{color:#5b6570;font-size:.9em}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin:14px 0}
.card{background:#f0f3f7;border-radius:6px;padding:8px 14px;min-width:110px}
.card b{display:block;font-size:1.35em}
.card span{color:#5b6570;font-size:.82em}
.law{font-family:"SFMono-Regular",Consolas,monospace;background:#f0f3f7;padding:8px 12px;
 border-left:4px solid #3a6ea5;border-radius:3px;display:inline-block;margin:4px 0}
.warn{background:#fff4e0;border-left:4px solid #e0a030;padding:8px 12px;border-radius:3px}
.note{color:#5b6570;font-size:.88em}
table{border-collapse:collapse;font-size:.85em;margin:6px 0 10px}
th,td{padding:3px 9px;text-align:right;border-bottom:1px solid #e6e8eb;white-space:nowrap}
th{background:#eef1f5;position:sticky;top:0}
td.l,th.l{text-align:left}
tr:nth-child(even) td{background:#fafbfc}
.scroll{max-height:420px;overflow:auto;border:1px solid #e6e8eb}
img{max-width:100%;height:auto;display:block;margin:8px 0;border:1px solid #eceef1}
code{background:#f0f3f7;padding:0 3px;border-radius:2px}
"""


def _fmt(x: Any) -> str:
    """Readable cell: 4 significant digits, e-notation for big/small, '–' for missing."""
    if x is None:
        return "–"
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return f"{int(x):,}" if abs(int(x)) < 10**7 else f"{float(x):.3g}"
    if isinstance(x, (float, np.floating)):
        x = float(x)
        if not math.isfinite(x):
            return "–"
        if x == 0:
            return "0"
        if abs(x) >= 1e6 or abs(x) < 1e-3:
            return f"{x:.3g}"
        if float(x).is_integer():
            return f"{int(x):,}"
        return f"{x:.4g}"
    return str(x)


def _table(df: pd.DataFrame, left: tuple[str, ...] = ("trial_id", "status", "dtype",
                                                          "reason", "axis", "held",
                                                          "reference", "metric"),
           scroll: bool = False) -> str:
    if df is None or df.empty:
        return "<p class='note'>(none)</p>"
    head = "".join(f"<th class='{'l' if c in left else ''}'>{html.escape(str(c))}</th>"
                   for c in df.columns)
    rows = []
    for rec in df.itertuples(index=False):
        cells = "".join(
            f"<td class='{'l' if c in left else ''}'>{html.escape(_fmt(v))}</td>"
            for c, v in zip(df.columns, rec))
        rows.append(f"<tr>{cells}</tr>")
    t = f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    return f"<div class='scroll'>{t}</div>" if scroll else t


def _img(out: Path, name: str, notes: dict[str, str], alt: str) -> str:
    if notes.get(name) != "written":
        return (f"<p class='note'>No <code>{name}</code>: "
                f"{html.escape(notes.get(name, 'not made'))}.</p>")
    data = base64.b64encode((out / name).read_bytes()).decode("ascii")
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'>"


def _fit_section(metric: str, fit: LawFit | None, error: str | None) -> str:
    name = _LABELS.get(metric, metric)
    if fit is None:
        why = error or "not attempted"
        return (f"<h3>{html.escape(name)}</h3><p class='warn'>No law was fitted: "
                f"{html.escape(why)}</p>")
    rows = []
    for p in ("E", "A", "B", "alpha", "beta", "a", "b"):
        lo, hi = fit.ci.get(p, (math.nan, math.nan))
        rows.append(dict(parameter=p, estimate=getattr(fit, p), ci_lo=lo, ci_hi=hi))
    tbl = _table(pd.DataFrame(rows), left=("parameter",))
    what = ("L(N, D) = E + A / N<sup>α</sup> + B / D<sup>β</sup>" if fit.form == "chinchilla"
            else "1 − r / c = E + A / N<sup>α</sup> + B / D<sup>β</sup> "
                 "(gap to the noise ceiling c)")
    extra = []
    if fit.form == "ceiling_gap":
        extra.append(f"ceiling c = {_fmt(fit.ceiling)} "
                     + ("(estimated: 1.05 × the larger of max r and the fitted asymptote; "
                        "the scores alone do not identify it — the exponents and the "
                        "allocation do not depend on it, E, A and B do)"
                        if fit.ceiling_estimated else "(given: mean noise ceiling)"))
        extra.append(f"asymptotic score c(1 − E) = {_fmt(fit.asymptote)}")
        if fit.n_clipped:
            extra.append(f"{fit.n_clipped} score(s) at or above the ceiling were clipped")
    else:
        extra.append(f"irreducible loss E = {_fmt(fit.E)}")
    boot = (f"95 % percentile bootstrap CIs from {fit.n_bootstrap} full re-fits "
            f"({fit.n_bootstrap_failed} failed)" if fit.n_bootstrap
            else "no bootstrap (CIs not computed)")
    why = ([f"{', '.join(fit.at_bound)} sit at a bound of the fit"] if fit.at_bound else []) + (
        [f"the 95 % CI of {', '.join(fit.wide_exponents)} spans more than 10x"] if fit.wide_exponents else [])
    flag = ("" if fit.identified else
            f"<p class='warn'><b>Not identified by this sweep</b>: {html.escape('; '.join(why))}, so the data "
            "do not pin this law; read it as a description of these trials, not as a scaling law. It is not "
            "used for allocation.</p>")
    return (f"<h3>{html.escape(name)}</h3>{flag}<p>{what}</p>"
            f"<div class='law'>{html.escape(fit.formula())}</div>"
            f"<p class='note'>N = non-embedding parameters, D = training tokens; "
            f"a = β/(α+β) = {_fmt(fit.a)} (N<sub>opt</sub> ∝ C<sup>a</sup>), "
            f"b = α/(α+β) = {_fmt(fit.b)}. Huber (δ = {fit.delta:g}) on log residuals, "
            f"objective {_fmt(fit.objective)}, {fit.n_used} trials, "
            f"{'converged' if fit.converged else 'NOT converged'}; {boot}. "
            f"{html.escape('; '.join(extra))}.</p>{tbl}")


def _compute_law_section(laws: dict[str, Any], errors: dict[str, str]) -> str:
    """Each metric's Pareto front against compute alone: its law and the asymptote it implies."""
    if not laws and not errors:
        return ""
    rows = []
    for key, f in laws.items():
        metric, cost = key.split("_vs_")
        ci = lambda k: (f"[{_fmt(f.ci[k][0])}, {_fmt(f.ci[k][1])}]" if k in f.ci else "")  # noqa: E731
        rows.append(dict(metric=metric, cost=cost, law=("1 − y/c = E + A·C^−α" if f.form == "ceiling_gap"
                                                        else "y = E + A·C^−α"),
                         ceiling=f.ceiling, E=f.E, alpha=f.alpha, alpha_ci=ci("alpha"), asymptote=f.asymptote,
                         asymptote_ci=ci("asymptote"), n=f.n_used,
                         identified="yes" if f.identified else "not identified: " + (", ".join(f.at_bound)
                                                                                   or "α CI spans > 10×")))
    body = _table(pd.DataFrame(rows)) if rows else ""
    errs = "".join(f"<p class='note'>{html.escape(k)}: {html.escape(v)}</p>" for k, v in errors.items())
    return ("<h3>Against compute alone (Pareto fronts)</h3><p class='note'>The front of each metric against "
            "training FLOPs and against GPU-hours, fitted as Gokce & Schrimpf (2025) fit alignment: "
            "<b>asymptote</b> is what compute alone reaches (for the brain score: the score ceiling the sweep "
            "implies; with no known noise ceiling, c = 1 and the gap is the misalignment 1 − r). A law whose "
            "parameter sits at a bound, or whose α CI spans more than 10×, is <b>not identified</b> by this "
            "sweep.</p>" + body + errs)


def _two_stage_section(fit: Any) -> str:
    if fit is None:
        return ""
    pairs = ", ".join(f"L ≤ {_fmt(x)} → r {_fmt(y)}"
                      for x, y in zip(fit.link.X_thresholds_, fit.link.y_thresholds_))
    return ("<h3>Brain score through the loss (two-stage)</h3>"
            "<p>r = g(L(N, D)): the loss law above, then a monotone decreasing link g from "
            "validation loss to mean brain r (isotonic regression; no ceiling needed, no "
            f"extrapolation beyond the losses seen). Spearman ρ(loss, r) = {_fmt(fit.spearman)}"
            f"{' — a lower loss does not go with a higher score here, so read this link with care' if fit.spearman > -0.3 else ''}.</p>"
            f"<p class='note'>Link steps: {html.escape(pairs)}</p>")


def _html(trials: pd.DataFrame, analysis: dict[str, Any], notes: dict[str, str],
          out: Path, title: str, reuse_info: dict[str, Any] | None = None) -> str:
    n_left = len(analysis["left_out"])
    usable = analysis["usable"]
    k = analysis["flops_per_param_token"]
    cards = [("trials", analysis["n_trials"]), ("usable", analysis["n_usable"]),
             ("left out", n_left)]
    if len(usable):
        cards += [("FLOPs range", f"{usable['train_flops'].min():.2g} – "
                                  f"{usable['train_flops'].max():.2g}")]
        if "gpu_hours" in usable:
            cards += [("GPU-hours", _fmt(float(usable["gpu_hours"].sum())))]
    card_html = "".join(f"<div class='card'><b>{html.escape(str(_fmt(v)))}</b>"
                        f"<span>{html.escape(n)}</span></div>" for n, v in cards)

    fits = "".join(_fit_section(m, analysis["fits"].get(m), analysis["fit_errors"].get(m))
                   for m in ("val_loss", "brain_r_mean")) + _two_stage_section(analysis.get("two_stage")) \
        + _compute_law_section(analysis.get("compute_laws", {}), analysis.get("compute_law_errors", {}))

    alloc = analysis["allocation"]
    skipped = "".join(f"<p class='warn'>No allocation from the {html.escape(_LABELS.get(m, m))} law: "
                      f"{html.escape(why)}.</p>" for m, why in analysis.get("allocation_skipped", {}).items())
    if alloc.empty:
        alloc_html = skipped or ("<p class='warn'>No allocation table: no law was fitted (see "
                                 "above).</p>")
    else:
        alloc_html = (
            f"<p class='note'>Per budget C (training FLOPs). <b>N_opt, D_opt</b>: closed "
            f"form of the law under C = k·N·D with k = {_fmt(k)} (median of "
            f"train_flops / (N·D) over the trials; the true per-token cost varies with "
            f"the LM head and attention, so read these as a guide). <b>Discrete pick</b>: "
            f"among the configs actually run whose true cost fits in C, the one with the "
            f"best predicted metric (<i>predicted</i>; <i>observed</i> is its seed mean). "
            f"<b>fill_*</b>: the architecture run that is best when its data is scaled "
            f"to use all of C.</p>" + skipped + _table(alloc, scroll=True))

    effects = "".join(f"<h3>{html.escape(_LABELS.get(m, m))}</h3>" + _table(e)
                      for m, e in analysis["effects"].items() if not e.empty) \
        or "<p class='note'>(no usable trials)</p>"

    dt = analysis["dtype"]
    dtype_html = (_table(dt) if not dt.empty else
                  "<p class='note'>No matched fp32 / half-precision pairs in this sweep "
                  "(the same config must be run in both dtypes).</p>")
    dtype_html += (f"<p class='note'>Paper (Ahmadi et al. 2024): fp16 "
                   f"{PAPER_DTYPE['speed_ratio']}× faster than fp32, mean max-r 0.548 vs "
                   f"0.547 (difference {PAPER_DTYPE['score_diff']:.3f}); rerun noise is "
                   f"about 0.02. Speed ratio here: geometric mean of tokens/s over matched "
                   f"configs.</p>")

    tcols = [c for c in _TRIAL_COLUMNS if c in trials.columns]
    trial_html = _table(trials[tcols], scroll=True)
    left_html = (_table(analysis["left_out"]) if n_left else
                 "<p class='note'>Nothing was left out.</p>")
    fit_errs = sorted(set(analysis["fit_errors"].values()))
    if fit_errs:
        left_html += "<p class='warn'>Fits not done: " + "<br>".join(
            html.escape(e) for e in fit_errs) + "</p>"

    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title><style>{_CSS}</style></head>
<body><main>
<h1>{html.escape(title)}</h1>
<p class="meta">brainray frontier report, generated {stamp}. Compute C is the logged
training FLOPs (exact count); GPU-hours are kept separate because dtype changes time,
not FLOPs.</p>
<div class="cards">{card_html}</div>

{_training_section(analysis.get("training_effect"), analysis.get("training_by_width"), out, notes)}

<h2>Fitted scaling laws</h2>
{fits}

<h2>Compute-optimal allocation</h2>
{alloc_html}

<h2>Frontiers</h2>
{_img(out, "frontier_loss.png", notes, "validation loss vs training FLOPs")}
{_img(out, "frontier_brain.png", notes, "brain score vs FLOPs and GPU-hours")}
{_img(out, "isoflop.png", notes, "isoFLOP profiles")}

{_reuse_section(reuse_info, out, notes)}
<h2>Per-axis effects</h2>
<p class="note">Mean over trials at each value of one axis with the other axes at the
reference config (their most common values); "marginal" means too few trials there, so
all trials were averaged. 95 % t intervals over seeds / trials.</p>
{_img(out, "axis_effects.png", notes, "per-axis effects")}
{effects}

<h2>Precision (dtype)</h2>
{dtype_html}

<h2>Training curves</h2>
{_img(out, "loss_curves.png", notes, "training and validation loss curves")}

<h2>Trials</h2>
{trial_html}

<h2>Left out</h2>
{left_html}
</main></body></html>
"""
