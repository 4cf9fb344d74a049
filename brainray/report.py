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
- ``parcels.png``: the best trial's r against the noise ceiling per parcel, by family and
  receptive field, when its per-parcel table is there (:mod:`brainray.parcels`);
- ``brainmap_r.png`` and ``brainmap_delta_<axis>.png``: on measured data with a labels atlas
  (CNeuroMod: ``data.atlas``), ``nilearn.plotting`` maps of the best trial's r per parcel and of
  the change of r per parcel at each step along each axis (:func:`_map_analysis` gives the rule);
- ``report.html``: one file that opens offline: images embedded as base64, inline CSS, and
  interactive Plotly versions of the frontier, IsoFLOP and per-axis plots (hover a point for
  its trial's configuration and scores; drag to zoom) with plotly.js embedded. It opens with
  the *Findings* (:func:`brainray.frontier.findings`) and carries the backtest. While the
  sweep runs (its driver holds ``<root>/.driver.lock``) the page reloads itself; the report
  written when the sweep has ended does not.

It degrades gracefully: with too few trials for a fit (a smoke sweep has ~4) it still
writes the plots and tables and says in the report why no law was fitted.
"""

from __future__ import annotations

import base64
import datetime as _dt
import fcntl
import html
import json
import math
import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never open a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow.fs as pafs  # noqa: E402

from brainray import frontier, parcels, reuse, triallog  # noqa: E402
from brainray.frontier import (  # noqa: E402
    AXES, PAPER_DTYPE, LawFit, _jsonable, analysis_to_dict, analyze, config_frontier, control_rows, pareto_front,
    score_families,
)
from brainray.frontier import reference_value, short_value  # noqa: E402

__all__ = ["write_report", "PLOTS", "REUSE_PLOT", "PARCEL_PLOT", "BRAIN_MAP"]

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
                 bootstrap: int = 200, seed: int = 0, live: bool | None = None,
                 parcels_df: pd.DataFrame | None = None, parcels_root: str | Path | None = None,
                 atlas: Any = None) -> Path:
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
    live : bool, optional
        True: the page reloads itself every 30 s (a sweep is running); False: it does not
        and says the sweep has ended. None: True while a driver holds the sweep's lock
        ``<out_dir>/../.driver.lock``, False when that lock file is free, and neither
        (no banner) when there is no such file.
    parcels_df : DataFrame, optional
        Per-parcel scores of the best trial (:func:`brainray.parcels.parcel_table`); read
        from ``<parcels_root>/parcels/<best trial>.parquet`` when None.
    parcels_root : str or Path, optional
        The sweep folder (a path or a URI) whose ``parcels/`` holds the per-parcel tables;
        default ``<out_dir>/..``.
    atlas : Niimg-like, optional
        Labels atlas the parcels were extracted with (path or image); with it the report draws
        brain maps. None: ``data.atlas`` of ``<parcels_root>/spec.json`` when its ``data.source``
        is ``"cneuromod"``, else no maps (a simulated brain has no atlas).

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
    state = _sweep_state(out) if live is None else ("running" if live else "ended")
    best = _best_trial(analysis)
    root = out.parent if parcels_root is None else parcels_root
    if parcels_df is None and best is not None:
        parcels_df = parcels.read_parcel_scores(root, best)
    maps = _map_analysis(parcels_df, best, analysis["usable"], root, _sweep_atlas(root) if atlas is None else atlas)

    notes: dict[str, str] = {}
    plotters = {
        "frontier_loss.png": lambda p: _plot_frontier_loss(analysis, p),
        "frontier_brain.png": lambda p: _plot_frontier_brain(analysis, p),
        "isoflop.png": lambda p: _plot_isoflop(analysis, p),
        "axis_effects.png": lambda p: _plot_axis_effects(analysis, p),
        "loss_curves.png": lambda p: _plot_loss_curves(curves_df, analysis, p),
        "frontier_families.png": lambda p: _plot_families(analysis, p),
    }
    if parcels_df is not None:
        plotters[PARCEL_PLOT] = lambda p: _plot_parcels(parcels_df, best, p)
    else:
        (out / PARCEL_PLOT).unlink(missing_ok=True)
    map_plots = _map_plotters(maps)
    for stale in out.glob("brainmap_*.png"):
        if stale.name not in map_plots:
            stale.unlink()
    plotters.update(map_plots)
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
    if parcels_df is not None:
        summary["parcels"] = {"trial_id": best, "summary": parcels.summarize(parcels_df).to_dict(orient="records")}
    if maps is not None:
        summary["brain_maps"] = _maps_to_dict(maps)
    summary.update(title=title, plots=notes, sweep_state=state,
                   generated_at=_dt.datetime.now(_dt.timezone.utc).isoformat())
    summary = _jsonable(summary)
    (out / "fits.json").write_text(json.dumps(summary, indent=1, allow_nan=False))
    analysis["allocation"].to_csv(out / "allocation.csv", index=False)
    report = out / "report.html"
    page = _html(trials_df, analysis, notes, out, title, reuse_info, state=state,
                 parcel_html=_parcel_section(parcels_df, best, out, notes) + _map_section(maps, out, notes))
    tmp = report.with_suffix(".html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(report)  # a browser reloading the live page never reads half a file
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
    control = ({} if effect is None or effect.empty else
               effect.set_index("score")[["untrained", "untrained_sd"]].T.to_dict())
    controls = analysis.get("controls")
    codes = control_rows(controls, "codes") if controls is not None and len(controls) else pd.DataFrame()
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
        if col in codes and codes[col].notna().any():  # the codes control: the model's input, read by the same ridge
            ax.axhline(float(codes[col].mean()), color="black", ls=":", lw=1.4, label="VQ codes alone (no model)")
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
       "separates", "codes", "best_over_codes"]]
    if shown["codes"].isna().all():  # no codes control in this sweep
        shown = shown.drop(columns=["codes", "best_over_codes"])
    return (
        "<h2>What training adds</h2>"
        "<p class='note'><b>untrained</b>: the reference model scored with its initial weights (same "
        "features, same ridge), mean over seeds. <b>trained</b>: the reference trained, mean over the "
        "same seeds; <b>gain</b> is their difference with a 95 % Welch interval, and <b>seed_sd</b> the "
        "s.d. of the trained reference over seeds. <b>best_gain</b>: the best trained trial of the "
        "sweep minus the untrained mean; it <b>separates</b> when it exceeds <b>margin</b> = "
        "max(5 seed s.d., 0.05). <b>codes</b>: the VQ codes themselves (each code's share of the "
        "screen per step) through the same ridge, with no model; <b>best_over_codes</b> is what the "
        "best trained model adds to its own input. Controls are left out of every fit, frontier and "
        "allocation.</p>"
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
            ax.set_xticklabels([short_value(v) for v in e["value"]], fontsize=8, rotation=30)
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


# ---------------------------------------------------------------------------------------
# Per-parcel scores of the best trial
# ---------------------------------------------------------------------------------------

PARCEL_PLOT = "parcels.png"  # only when the best trial's per-parcel scores are there


def _best_trial(analysis: dict[str, Any]) -> str | None:
    df = analysis["usable"]
    ok = df[np.isfinite(df["brain_r_mean"].to_numpy(float))] if len(df) else df
    return None if ok.empty else str(ok.loc[ok["brain_r_mean"].idxmax(), "trial_id"])


def _plot_parcels(table: pd.DataFrame, trial_id: str, path: Path) -> str | None:
    """r against ceiling per parcel, coloured by family; r / ceiling per family; per receptive field."""
    known = table[np.isfinite(table["ceiling"].to_numpy(float))]
    if known.empty:
        return "the parcels have no known ceiling (measured data)"
    families = list(dict.fromkeys(known["family"]))
    rf = known[known["receptive_field"] != ""]
    fig, axes = plt.subplots(1, 3 if len(rf) else 2, figsize=(15 if len(rf) else 10.5, 4.2))
    ax = axes[0]
    for i, fam in enumerate(families):
        g = known[known["family"] == fam]
        ax.scatter(g["ceiling"], g["r"], s=16, color=f"C{i}", label=fam, alpha=0.8, edgecolors="none")
    top = float(max(known["ceiling"].max(), known["r"].max(), 0.05))
    ax.plot([0, top], [0, top], ":", color="0.4", lw=1, label="r = ceiling")
    ax.set_xlabel("noise ceiling")
    ax.set_ylabel("held-out r")
    ax.set_title(f"Every parcel, best trial {trial_id}", fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(True, alpha=0.3)
    ax = axes[1]
    signal = known[known["ceiling"] > 0]  # noise parcels have no fraction of a ceiling of 0
    shown = [f for f in families if (signal["family"] == f).any()]
    for i, fam in enumerate(shown):
        v = (signal["r"] / signal["ceiling"])[signal["family"] == fam].to_numpy(float)
        ax.scatter(np.full(len(v), i) + np.linspace(-0.2, 0.2, len(v)), v, s=10, color=f"C{families.index(fam)}",
                   alpha=0.7)
        ax.plot([i - 0.3, i + 0.3], [v.mean()] * 2, color="k", lw=2)
    ax.set_xticks(range(len(shown)), shown, fontsize=8, rotation=30)
    ax.axhline(0, color="0.5", lw=0.8)
    ax.set_ylabel("r / ceiling")
    ax.set_title("Fraction of the ceiling per family (bar: mean)", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    if len(rf):
        ax = axes[2]
        cells = sorted(set(rf["receptive_field"]))
        rf_fams = list(dict.fromkeys(rf["family"]))
        frac = rf.assign(_f=rf["r"] / rf["ceiling"]).pivot_table(index="family", columns="receptive_field",
                                                               values="_f", aggfunc="mean")
        frac = frac.reindex(index=rf_fams, columns=cells)
        im = ax.imshow(frac.to_numpy(float), cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(cells)), cells, fontsize=7, rotation=45, ha="right")
        ax.set_yticks(range(len(rf_fams)), rf_fams, fontsize=8)
        ax.set_title("Mean r / ceiling per receptive field", fontsize=10)
        fig.colorbar(im, ax=ax)
    _save(fig, path)
    return None


def _parcel_section(table: pd.DataFrame | None, trial_id: str | None, out: Path, notes: dict[str, str]) -> str:
    head = "<h2>Per-parcel scores</h2>"
    if trial_id is None:
        return head + "<p class='note'>No usable trial yet.</p>"
    if table is None:
        return head + (f"<p class='note'>No per-parcel scores for the best trial (<code>{html.escape(trial_id)}"
                       f"</code>): the trial log keeps the per-family means only. A table written with "
                       f"<code>brainray.parcels.write_parcel_scores</code> to <code>&lt;sweep&gt;/parcels/"
                       f"{html.escape(trial_id)}.parquet</code> is mapped here.</p>")
    summary = parcels.summarize(table)
    return (head + f"<p class='note'>Best trial by brain score: <code>{html.escape(trial_id)}</code>, "
            f"{len(table)} parcels over {table['subject'].nunique()} subject(s). A parcel on the dotted line "
            "reaches its noise ceiling; noise parcels (ceiling 0) must sit near r = 0. Receptive field: the screen "
            "cell of the parcel's main pixel feature.</p>"
            + _img(out, PARCEL_PLOT, notes, "per-parcel r against the noise ceiling")
            + _table(summary, left=("family", "receptive_field"), scroll=True))


# ---------------------------------------------------------------------------------------
# Brain maps (measured data with a labels atlas; nilearn.plotting on its bundled MNI template)
# ---------------------------------------------------------------------------------------

BRAIN_MAP = "brainmap_r.png"  # the best trial's r per parcel; brainmap_delta_<axis>.png beside it
_MAP_CUTS = 7  # axial slices per row, evenly spaced over the atlas


def _delta_map(axis: str) -> str:
    return f"brainmap_delta_{axis}.png"


def _sweep_atlas(root: str | Path) -> str | None:
    """``data.atlas`` of the sweep's ``spec.json`` (the dataset manifest records the same ``data``) when the
    data are CNeuroMod; None for a simulated brain or a folder that no sweep wrote."""
    fs, base = triallog.filesystem(str(root))
    path = f"{base.rstrip('/')}/spec.json"
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        data = json.loads(f.read()).get("data", {})
    return (data.get("atlas") or None) if data.get("source") == "cneuromod" else None


def _map_analysis(table: pd.DataFrame | None, best: str | None, usable: pd.DataFrame, root: str | Path,
                  atlas: Any) -> dict[str, Any] | None:
    """What the brain maps show; None without an atlas.

    ``r``: the best trial's r per parcel, its mean over subjects. ``deltas``:
    :func:`brainray.parcels.axis_deltas` on the usable trials, with the reference config of the per-axis
    effects (the most common value of each axis); so the map of a step such as ``n_embd 16 -> 48`` is,
    per parcel, the r of the trials at width 48 minus that of the trials at width 16 (each the mean over
    their seeds), every other axis at the reference. ``error`` says why there is no map.
    """
    if atlas is None:
        return None
    import nibabel as nib
    from nilearn.image import load_img

    info: dict[str, Any] = {"atlas": str(atlas) if isinstance(atlas, (str, Path)) else "(image)", "trial_id": best,
                            "error": None, "reference": {}}
    if table is None:
        info["error"] = "no per-parcel scores for the best trial"
        return info
    try:
        info["img"] = load_img(atlas)
        n_labels = len(parcels.atlas_labels(info["img"]))
    except (OSError, ValueError, nib.filebasedimages.ImageFileError) as err:
        info["error"] = f"the atlas {info['atlas']} cannot be read ({type(err).__name__}: {err})"
        return info
    info["r"] = parcels.parcel_means(table)
    if len(info["r"]) != n_labels:
        info["error"] = (f"the best trial has {len(info['r'])} parcels but the atlas {info['atlas']} has {n_labels} "
                         "labels: its scores come from another atlas")
        return info
    info["reference"] = {a: reference_value(usable[a]) for a in AXES if a in usable.columns and usable[a].notna().any()}
    info["deltas"] = parcels.axis_deltas(
        usable, info["reference"], lambda t: table if t == best else parcels.read_parcel_scores(root, t))
    return info


def _map_steps(deltas: pd.DataFrame) -> pd.DataFrame:
    """One row per axis step: the trials at each end and how its parcels moved."""
    g = deltas.assign(_up=deltas["delta_r"] > 0).groupby(["axis", "lo_value", "hi_value"], sort=False)
    return g.agg(n_lo=("n_lo", "first"), n_hi=("n_hi", "first"), n_parcels=("parcel", "size"),
                 mean_delta_r=("delta_r", "mean"), parcels_up=("_up", "sum"),
                 max_abs_delta_r=("delta_r", lambda d: d.abs().max())).reset_index()


def _maps_to_dict(info: dict[str, Any]) -> dict[str, Any]:
    return {"atlas": info["atlas"], "trial_id": info["trial_id"], "error": info["error"],
            "reference": info["reference"],
            "steps": [] if info["error"] else _map_steps(info["deltas"]).to_dict(orient="records")}


def _map_plotters(info: dict[str, Any] | None) -> dict[str, Any]:
    """The map files of the report and how to draw each (the plotters of :func:`write_report`)."""
    if info is None:
        return {}
    if info["error"] is not None:
        return {BRAIN_MAP: lambda p: info["error"]}
    plots = {BRAIN_MAP: lambda p: _plot_r_map(info, p)}
    for axis in dict.fromkeys(info["deltas"]["axis"]):
        plots[_delta_map(axis)] = lambda p, axis=axis: _plot_delta_map(info, axis, p)
    return plots


def _map_rows(info: dict[str, Any], rows: list[tuple[str, pd.Series]], path: Path) -> None:
    """One row of axial slices per (title, r per parcel), on one colour scale symmetric about 0."""
    from nibabel.affines import apply_affine
    from nilearn import plotting

    img = info["img"]
    z = apply_affine(img.affine, np.argwhere(np.asarray(img.dataobj) != 0))[:, 2]  # labelled voxels, mm
    cuts = np.linspace(z.min(), z.max(), _MAP_CUTS + 2)[1:-1]
    vmax = max(float(max(v.abs().max() for _, v in rows)), 1e-6)
    fig, axes = plt.subplots(len(rows), 1, figsize=(12, 2.3 * len(rows)), squeeze=False)
    for ax, (title, values) in zip(axes[:, 0], rows):
        painted = parcels.paint(img, values.reindex(info["r"].index).fillna(0.0).to_numpy())
        display = plotting.plot_stat_map(painted, display_mode="z", cut_coords=cuts, axes=ax, vmax=vmax,
                                         symmetric_cbar=True, cmap="RdBu_r", black_bg=False,
                                         resampling_interpolation="nearest")  # parcels keep their edges
        display.title(title, size=10, color="k", bgcolor="w")
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)


def _plot_r_map(info: dict[str, Any], path: Path) -> str | None:
    r = info["r"]
    _map_rows(info, [(f"r per parcel, best trial {info['trial_id']} (mean {r.mean():.3f}, over subjects)", r)], path)
    return None


def _plot_delta_map(info: dict[str, Any], axis: str, path: Path) -> str | None:
    d = info["deltas"][info["deltas"]["axis"] == axis]
    rows = [(f"{axis} {short_value(lo)} → {short_value(hi)}: Δr per parcel (mean {g['delta_r'].mean():+.3f})",
             g.set_index("parcel")["delta_r"]) for (lo, hi), g in d.groupby(["lo_value", "hi_value"], sort=False)]
    _map_rows(info, rows, path)
    return None


def _map_section(info: dict[str, Any] | None, out: Path, notes: dict[str, str]) -> str:
    if info is None:
        return ("<p class='note'>No brain maps: they need the labels atlas of measured data (CNeuroMod's "
                "<code>data.atlas</code>, or <code>write_report(atlas=...)</code>); this dataset has none.</p>")
    head = f"<h3>Brain maps</h3><p class='note'>Atlas <code>{html.escape(info['atlas'])}</code>. "
    if info["error"] is not None:
        return head + "</p>" + _img(out, BRAIN_MAP, notes, "r per parcel of the best trial")
    steps = _map_steps(info["deltas"])
    ref = ", ".join(f"{a}={short_value(v)}" for a, v in info["reference"].items())
    parts = [head + "Each parcel painted with its held-out r, mean over subjects, on nilearn's MNI template.</p>",
             _img(out, BRAIN_MAP, notes, "r per parcel of the best trial"),
             f"<p class='note'>Change of r per parcel at each step along an axis, from a value to the next "
             f"(red: r rises), every other axis at the reference ({html.escape(ref)}); each end is the mean over "
             "its trials (seeds). Axes with fewer than two values on that line, or without per-parcel scores, have no map.</p>"]
    parts += [_img(out, _delta_map(a), notes, f"delta r per parcel along {a}") for a in dict.fromkeys(steps["axis"])]
    return "\n".join(parts) + _table(steps, left=("axis", "lo_value", "hi_value"))


# ---------------------------------------------------------------------------------------
# Interactive plots (Plotly; plotly.js is embedded once in the page, so it opens offline)
# ---------------------------------------------------------------------------------------

_HOVER = ("trial_id", "n_embd", "n_layer", "n_head", "data_frames", "dtype", "seed", "params_nonembed",
          "train_flops", "gpu_hours", "val_loss", "brain_r_mean", "brain_r_max", "ceiling_frac")
_PLOTLY_CONFIG = {"displaylogo": False, "responsive": True, "scrollZoom": True}


def _hover(df: pd.DataFrame) -> list[str]:
    """One hover label per trial: its configuration and scores."""
    cols = [c for c in _HOVER if c in df.columns]
    return ["<br>".join(f"<b>{c}</b> {html.escape(_fmt(v))}" for c, v in zip(cols, row))
            for row in df[cols].itertuples(index=False)]


def _trial_trace(df: pd.DataFrame, x: str, y: str, showscale: bool = True, name: str = "trials") -> Any:
    import plotly.graph_objects as go

    return go.Scatter(
        x=df[x], y=df[y], mode="markers", name=name, text=_hover(df), hovertemplate="%{text}<extra></extra>",
        marker=dict(size=9, color=np.log10(df["params_nonembed"].to_numpy(float)), colorscale="Viridis",
                    line=dict(width=0.5, color="black"), showscale=showscale,
                    colorbar=dict(title="log10 N", len=0.8)))


def _front_trace(df: pd.DataFrame, x: str, y: str, ids: list[str]) -> Any:
    import plotly.graph_objects as go

    on = df[df["trial_id"].isin(ids)].sort_values(x)
    return go.Scatter(x=on[x], y=on[y], mode="lines", name="Pareto front", hoverinfo="skip",
                      line=dict(color="crimson", width=2))


def _law_traces(fit: LawFit | None, df: pd.DataFrame, label: str) -> list[Any]:
    """The fitted frontier over the architectures run and its 95 % bootstrap band (cf. :func:`_law_frontier`)."""
    import plotly.graph_objects as go

    if fit is None:
        return []
    C = np.geomspace(df["train_flops"].min() / 2, df["train_flops"].max() * 10, 80)
    value, lo, hi = config_frontier(fit, df, C, level=0.95)
    out = [go.Scatter(x=C, y=value, mode="lines", name=label, line=dict(color="black", dash="dash"),
                      hovertemplate="C %{x:.3g}<br>predicted %{y:.4g}<extra></extra>")]
    if np.isfinite(lo).any():
        out.append(go.Scatter(x=np.concatenate([C, C[::-1]]), y=np.concatenate([hi, lo[::-1]]), fill="toself",
                              fillcolor="rgba(120,120,120,0.25)", line=dict(width=0), hoverinfo="skip",
                              name="95 % bootstrap band"))
    return out


def _div(fig: Any, div_id: str, height: int = 460) -> str:
    import plotly.io as pio

    fig.update_layout(height=height, margin=dict(l=60, r=20, t=50, b=50), template="plotly_white",
                      legend=dict(font=dict(size=10)), hoverlabel=dict(font=dict(size=11)))
    return pio.to_html(fig, include_plotlyjs=False, full_html=False, div_id=div_id, config=_PLOTLY_CONFIG)


def _interactive_frontiers(analysis: dict[str, Any]) -> str:
    """Loss and brain score against FLOPs and GPU-hours: every trial (hover: config and scores), the front, the law."""
    from plotly.subplots import make_subplots

    df = analysis["usable"]
    if df.empty:
        return ""
    costs = [c for c in ("train_flops", "gpu_hours") if c in df.columns]
    metrics = [("val_loss", "validation loss"), ("brain_r_mean", "brain score (mean r)")]
    fig = make_subplots(rows=2, cols=len(costs), horizontal_spacing=0.08, vertical_spacing=0.12,
                        subplot_titles=[f"{label} vs {_LABELS[c]}" for _, label in metrics for c in costs])
    for r, (metric, label) in enumerate(metrics, start=1):
        for c, cost in enumerate(costs, start=1):
            first = r == 1 and c == 1
            fig.add_trace(_trial_trace(df, cost, metric, showscale=first).update(showlegend=first), r, c)
            front = analysis["fronts"].get(f"{metric}_vs_{cost}")
            if front:
                fig.add_trace(_front_trace(df, cost, metric, front["trial_ids"]).update(showlegend=first), r, c)
            if cost == "train_flops":
                for t in _law_traces(analysis["fits"].get(metric), df, "fitted frontier"):
                    fig.add_trace(t.update(showlegend=r == 1), r, c)
            fig.update_xaxes(type="log", title_text=_LABELS[cost], row=r, col=c)
            fig.update_yaxes(title_text=label, type="log" if metric == "val_loss" else "linear", row=r, col=c)
    return _div(fig, "plot-frontiers", height=820)


def _interactive_isoflop(analysis: dict[str, Any]) -> str:
    import plotly.graph_objects as go

    df = analysis["usable"]
    groups = _isoflop_groups(df) if len(df) else []
    if not groups:
        return ""
    fig = go.Figure()
    for g in groups[-6:]:
        C = float(np.exp(np.log(g["train_flops"]).mean()))
        g = g.sort_values("params_nonembed")
        fig.add_trace(go.Scatter(x=g["params_nonembed"], y=g["val_loss"], mode="markers+lines", name=f"C ≈ {C:.2g}",
                                 text=_hover(g), hovertemplate="%{text}<extra></extra>"))
    fig.update_xaxes(type="log", title_text="params (non-embedding)")
    fig.update_yaxes(type="log", title_text="validation loss")
    fig.update_layout(title="IsoFLOP profiles (trials within 0.3 decade of FLOPs)")
    return _div(fig, "plot-isoflop")


def _interactive_axes(analysis: dict[str, Any]) -> str:
    """Per-axis means with 95 % CI, and every trial behind them (hover: config and scores)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    metrics = [m for m, e in analysis["effects"].items() if not e.empty]
    if not metrics:
        return ""
    df = analysis["usable"]
    axes = [a for a in AXES if any((analysis["effects"][m]["axis"] == a).any() for m in metrics)]
    fig = make_subplots(rows=len(metrics), cols=len(axes), subplot_titles=[a for _ in metrics for a in axes],
                        horizontal_spacing=0.05, vertical_spacing=0.14)
    for r, metric in enumerate(metrics, start=1):
        eff = analysis["effects"][metric]
        for c, ax in enumerate(axes, start=1):
            e = eff[eff["axis"] == ax]
            labels = [short_value(v) for v in e["value"]]
            m = e["mean"].to_numpy(float)
            fig.add_trace(go.Scatter(
                x=labels, y=m, mode="markers+lines", name="mean, 95 % CI", showlegend=r == c == 1,
                marker=dict(size=9, color="#1f77b4" if r == 1 else "#d62728"),
                error_y=dict(type="data", symmetric=False, array=np.nan_to_num(e["ci_hi"].to_numpy(float) - m),
                             arrayminus=np.nan_to_num(m - e["ci_lo"].to_numpy(float))),
                customdata=np.stack([e["n"], e["ci_lo"], e["ci_hi"], e["held"]], axis=1),
                hovertemplate=(f"{ax} %{{x}}<br>mean %{{y:.4g}} [%{{customdata[1]:.4g}}, %{{customdata[2]:.4g}}]"
                               "<br>n %{customdata[0]} (%{customdata[3]})<extra></extra>")), r, c)
            t = df[df[ax].isin(e["value"])]
            fig.add_trace(go.Scatter(x=[short_value(v) for v in t[ax]], y=t[metric], mode="markers",
                                     name="every trial at that value (other axes vary)",
                                     showlegend=r == c == 1, marker=dict(size=5, color="rgba(90,90,90,0.45)"),
                                     text=_hover(t), hovertemplate="%{text}<extra></extra>"), r, c)
            fig.update_xaxes(type="category", categoryorder="array", categoryarray=labels, row=r, col=c)
        fig.update_yaxes(title_text=_LABELS.get(metric, metric), row=r, col=1)
    return _div(fig, "plot-axes", height=330 * len(metrics) + 60)


def _plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    return f"<script id='plotly-js'>{get_plotlyjs()}</script>"


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
ul.findings{background:#f3f8f3;border-left:4px solid #4a9a5a;padding:10px 14px 10px 32px;border-radius:3px}
ul.findings li{margin:3px 0}
.live{background:#e8f1fb;border-left:4px solid #3a6ea5;padding:8px 12px;border-radius:3px;margin:8px 0}
.done{color:#5b6570;font-size:.9em;border-left:4px solid #b9c0c8;padding:4px 10px}
details summary{cursor:pointer;color:#3a6ea5;margin:6px 0}
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


def _fit_section(metric: str, fit: LawFit | None, error: str | None, sensitivity: dict[str, Any] | None = None
                 ) -> str:
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
                        "the scores alone do not identify it, and the exponents and the "
                        "allocation move with it: see the sensitivity below)"
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
            f"{html.escape('; '.join(extra))}.</p>{tbl}"
            + (_ceiling_section(sensitivity) if fit.form == "ceiling_gap" else ""))


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
          out: Path, title: str, reuse_info: dict[str, Any] | None = None, state: str | None = None,
          parcel_html: str = "") -> str:
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

    fits = "".join(_fit_section(m, analysis["fits"].get(m), analysis["fit_errors"].get(m),
                                analysis.get("ceiling_sensitivity"))
                   for m in ("val_loss", "brain_r_mean")) + _two_stage_section(analysis.get("two_stage")) \
        + _compute_law_section(analysis.get("compute_laws", {}), analysis.get("compute_law_errors", {})) \
        + _backtest_section(analysis.get("backtest")) + _extrapolation_section(trials)

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
<title>{html.escape(title)}</title><style>{_CSS}</style>{_plotly_js()}</head>
<body><main>
<h1>{html.escape(title)}</h1>
{_live_banner(state, trials, stamp)}
<p class="meta">brainray frontier report, generated {stamp}. Compute C is the logged
training FLOPs (exact count); GPU-hours are kept separate because dtype changes time,
not FLOPs. The interactive plots show every trial: hover a point for its configuration and
scores, drag to zoom, double-click to reset; the PNGs below them are the same, for papers.</p>
<div class="cards">{card_html}</div>

{_findings_section(analysis.get("findings", []))}

{_training_section(analysis.get("training_effect"), analysis.get("training_by_width"), out, notes)}

<h2>Fitted scaling laws</h2>
{fits}

<h2>Compute-optimal allocation</h2>
{alloc_html}

<h2>Frontiers</h2>
{_interactive_frontiers(analysis)}
{_interactive_isoflop(analysis)}
<details><summary>Static plots (PNG)</summary>
{_img(out, "frontier_loss.png", notes, "validation loss vs training FLOPs")}
{_img(out, "frontier_brain.png", notes, "brain score vs FLOPs and GPU-hours")}
{_img(out, "isoflop.png", notes, "isoFLOP profiles")}
</details>

{parcel_html}

{_reuse_section(reuse_info, out, notes)}
<h2>Per-axis effects</h2>
<p class="note">Mean over trials at each value of one axis with the other axes at the
reference config (their most common values); "marginal" means too few trials there, so
all trials were averaged. 95 % t intervals over seeds / trials.</p>
{_interactive_axes(analysis)}
<details><summary>Static plot (PNG)</summary>
{_img(out, "axis_effects.png", notes, "per-axis effects")}
</details>
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


def _findings_section(items: list[dict[str, Any]]) -> str:
    """The Findings that open the report: one plain sentence each, with its number and CI."""
    if not items:
        return ""
    lis = "".join(f"<li>{html.escape(f['text'])}</li>" for f in items)
    return ("<h2 id='findings'>Findings</h2><ul class='findings'>" + lis + "</ul>"
            "<p class='note'>Intervals are 95 %. Effects with one trial per point take their noise from the seeds "
            "of repeated configs (pooled s.d.); \"within seed noise\" means the interval holds 0.</p>")


def _backtest_section(bt: dict[str, Any] | None) -> str:
    if bt is None:
        return ""
    head = ("<h3>Backtest: fit without the largest budget, predict it</h3><p class='note'>The laws are fitted again "
            f"without the trials within {frontier.BACKTEST_WIDTH:g} decade of the largest training FLOPs, then "
            "predict those trials. <b>lo, hi</b>: the refitted law's 95 % bootstrap band, widened by one trial's "
            "noise (1.96 s.d. over seeds, or without seeds of the fitted trials about the law); <b>inside</b>: "
            "whether the observed value falls in it. The compute law predicts the frontier, so it is checked on the best held-out trial.</p>")
    if bt["error"]:
        return head + f"<p class='warn'>No backtest: {html.escape(bt['error'])}.</p>"
    errs = "".join(f"<p class='note'>{html.escape(k)}: {html.escape(v)}</p>" for k, v in bt["errors"].items())
    return (head + f"<p class='note'>{len(bt['held'])} trial(s) held out (train_flops &gt; {bt['cut']:.3g}), "
            f"{bt['n_fit']} fitted.</p>" + _table(bt["table"], left=("law", "metric", "trial_id", "interval")) + errs)


def _extrapolation_section(trials: pd.DataFrame) -> str:
    """Predict, then verify: each extrapolation trial's prediction (made before it ran) against its score."""
    checks = frontier.extrapolation_checks(trials)
    if checks.empty:
        return ""
    notes = sorted({n for n in checks["note"] if n})
    return ("<h3>Predict, then verify: extrapolation trials</h3><p class='note'>Run with "
            "<code>python sweeps/scaling.py --extrapolate K</code>: the laws fitted on the trials before them "
            "picked the compute-optimal width at K× the largest budget and its IsoFLOP neighbours "
            "(<code>brainray.extrapolate</code>). <b>predicted, lo, hi</b>: the prediction stored on the row "
            "before the trial ran, with its interval for one trial; <b>inside</b>: whether the observed value "
            "falls in it. These trials are never fitted.</p>"
            + "".join(f"<p class='warn'>{html.escape(n)}</p>" for n in notes)
            + _table(checks.drop(columns="note"), left=("trial_id", "status", "pick", "metric"), scroll=True))


def _ceiling_section(cs: dict[str, Any] | None) -> str:
    """The brain law with the other ceiling, side by side: the answer moves with the ceiling."""
    if cs is None:
        return ""
    c_used, c_other = cs["ceilings"]
    table = cs["table"].rename(columns={"used": f"{cs['used']} ({_fmt(c_used)})",
                                        "other": f"{cs['other']} ({_fmt(c_other)})"})
    verdict = (f"<p class='warn'>The exponents or the asymptote move by more than 2 % with the ceiling: read the "
               f"allocation with both in mind{'' if cs['other_identified'] else ' (the other fit is not identified)'}"
               ".</p>" if cs["differs"] else
               "<p class='note'>Both ceilings give the same exponents and asymptote within 2 %.</p>")
    return ("<h4>Sensitivity to the ceiling</h4><p class='note'>The ceiling-gap law refitted with the other ceiling "
            "(no bootstrap). On noisy scores the exponents and the allocation depend on the ceiling, because the "
            "log residuals weight each trial by its gap 1 − r/c.</p>" + verdict
            + _table(table, left=("parameter",)))


_RELOAD_S = 30  # seconds between reloads of a live report


def _sweep_state(out: Path) -> str | None:
    """"running" while the sweep's driver holds ``<root>/.driver.lock`` (root: the folder above the report's),
    "ended" when the lock file is there and free, None when the report is not in a sweep folder."""
    lock = out.parent / ".driver.lock"
    if not lock.is_file():
        return None
    fd = os.open(lock, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # released at once, below
    except BlockingIOError:
        return "running"
    except OSError:
        return None  # a filesystem without locks: say nothing rather than guess
    finally:
        os.close(fd)
    return "ended"


def _live_banner(state: str | None, trials: pd.DataFrame, stamp: str) -> str:
    """While the sweep runs: a banner and a script that reloads the page (keeping the scroll position) every
    30 s, with a pause box. It gives up when the page has not changed for 3x the longest trial (at least an
    hour): a driver killed without a final report leaves a live page behind. Finished: a plain line."""
    if state is None:
        return ""
    if state == "ended":
        return (f"<p class='done'>The sweep is not running (finished or stopped); this report, written {stamp}, "
                "no longer reloads itself.</p>")
    wall = pd.to_numeric(trials.get("wall_s", pd.Series(dtype=float)), errors="coerce").max()
    stale_s = max(3600.0, 3 * float(wall)) if np.isfinite(wall) else 3600.0
    written_ms = int(_dt.datetime.now(_dt.timezone.utc).timestamp() * 1000)
    return f"""<div class='live' id='live'>Sweep running: this page reloads itself every {_RELOAD_S} s
(written {stamp}). <label><input type='checkbox' id='live-pause'> pause reloading</label>
<span id='live-stale'></span></div>
<script id='live-reload'>(function() {{
  var box = document.getElementById('live-pause'), key = 'brainray-report-';
  var written = {written_ms}, staleMs = {int(stale_s * 1000)};
  box.checked = sessionStorage.getItem(key + 'pause') === '1';
  box.onchange = function() {{ sessionStorage.setItem(key + 'pause', box.checked ? '1' : '0'); }};
  var y = sessionStorage.getItem(key + 'scroll');
  if (y !== null) window.addEventListener('load', function() {{ window.scrollTo(0, +y); }});
  setInterval(function() {{
    if (box.checked) return;
    if (Date.now() - written > staleMs) {{
      document.getElementById('live-stale').textContent = ' No update for ' + Math.round(staleMs / 60000)
        + ' min: the sweep may have stopped, so reloading has stopped.';
      return;
    }}
    sessionStorage.setItem(key + 'scroll', String(window.scrollY));
    location.reload();
  }}, {_RELOAD_S * 1000});
}})();</script>"""
