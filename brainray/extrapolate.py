"""Predict, then verify: the compute-optimal configuration at K x the largest budget, planned from the log.

After Marin's scaling-law tooling: fit the finished trials of a sweep, predict the best configuration at
``K`` times the largest training FLOPs run so far, run it, and compare. :func:`plan` does the first two
steps without Ray; ``python sweeps/scaling.py --extrapolate K`` checks the request (:func:`check_request`),
plans from the sweep's log (:func:`plan_from_log`), and ``brainray.sweep`` runs the planned trials in the
same trial log with ``role = "extrapolation"``; the report puts each one's prediction beside what it
scored (:func:`brainray.frontier.extrapolation_checks`).

How the configuration is chosen. The candidates keep every axis of the spec's reference (depth, heads,
dtype, seed) and vary the width along the spec's ``n_embd`` axis, extended above its largest value by its
last geometric step (16, 32 -> 64, 128, ...: a larger budget usually wants a wider model than any run).
Each width gets the data that spends the budget ``C = K * max(train_flops)`` at its exact cost per token
(``gpt.train_flops_per_token``), in whole training pairs of the prepared dataset (``trial.n_pairs``), so a
planned cost is the cost the trial will log. A width that would need more frames than the dataset has, or
less than its smallest data, cannot spend the budget and is no candidate for the optimum. For each N, D law
(loss: ``val_loss``; brain: ``brain_r_mean``, ceiling gap) the candidate with the best predicted value is
that law's optimum; it runs with its IsoFLOP neighbours, one width step either side on the ladder, at the
same budget. A neighbour that cannot spend it runs at the data closest to it (all frames, or the smallest
data), its ``extrapolate_pick`` says so, and it still checks the law at its own N and D.
Every planned trial stores both laws' predictions and their interval for one trial
(:func:`brainray.frontier.trial_interval`: the bootstrap band widened by one trial's noise).

A law that is not identified (``LawFit.identified``: a parameter at a bound, or an exponent's 95 % CI
wider than 10x) picks no configuration, as it allocates nothing in the report. When only one law is
identified, it alone picks the trials (the other law's predictions are still stored, with a note). When
neither is, :func:`plan` refuses, naming each law and why, unless ``allow_unidentified=True``: then both
laws pick anyway and every row's ``prediction_note`` says that the laws are not identified, so the run is
a check of a law the sweep does not pin (the smoke preset is such a sweep).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from brainray import frontier, gpt, schedule, triallog
from brainray.config import SweepSpec
from brainray.frontier import EXTRAPOLATION
from brainray.trial import n_pairs

__all__ = ["EXTRAPOLATION", "METRICS", "ExtrapolationPlan", "check_request", "plan", "plan_from_log", "width_ladder"]

METRICS = ("val_loss", "brain_r_mean")
_LAW = {"val_loss": "loss law (val_loss)", "brain_r_mean": "brain law (brain_r_mean)"}
_EXTRA_STEPS = 6  # widths tried above the axis's largest, by its last step
_MAXIMIZE = {"val_loss": False, "brain_r_mean": True}


@dataclass
class ExtrapolationPlan:
    """What :func:`plan` decided.

    Attributes
    ----------
    k, budget : float
        The multiple asked for and the budget it gives, ``k * max(train_flops)`` of the fitted trials.
    fits : dict of str to LawFit
        The N, D law of each metric (fitted on :func:`brainray.frontier.usable_trials`).
    used : list of str
        The metrics whose law picked trials.
    candidates : DataFrame
        One row per width of the ladder: ``n_embd, N, flops_per_token, data_frames, tokens, cost,
        feasible`` (it spends the budget), ``why`` (when not: its data is then the closest the dataset
        allows) and ``predicted_<metric>``, ``_lo``, ``_hi`` per law.
    trials : list of dict
        The trial configs to run (the reference's axes, the width and data, ``role`` and the predictions).
    notes : list of str
        What was said about the laws (not identified, which law picked).
    """

    k: float
    budget: float
    fits: dict[str, frontier.LawFit]
    used: list[str]
    candidates: pd.DataFrame
    trials: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def table(self) -> pd.DataFrame:
        """The planned trials, one row each, for the console."""
        cols = ["n_embd", "data_frames", "extrapolate_pick", "predicted_val_loss", "predicted_brain_r_mean"]
        return pd.DataFrame(self.trials).reindex(columns=cols)

    @property
    def name(self) -> str:
        """The plan's own name (``x<K>``): resuming ``--extrapolate K`` resumes its trials."""
        return f"x{self.k:g}"


def check_request(k: Any, fresh: bool, search: str) -> None:
    """Refuse an ``--extrapolate K`` that cannot run, before Ray starts.

    Raises
    ------
    ValueError
        ``k`` not a number > 1; combined with ``fresh`` or a search other than ``"grid"``.
    """
    _check_k(k)
    if fresh or search != "grid":
        raise ValueError("--extrapolate runs new trials into an existing sweep's log: it cannot be combined with "
                         "--fresh (which deletes that log) or --search optuna.")


def _check_k(k: Any) -> None:
    if not (isinstance(k, (int, float)) and math.isfinite(k) and k > 1):
        raise ValueError(f"--extrapolate K must be a number > 1 (a multiple of the largest budget run); got {k!r}.")


def plan_from_log(root: str, spec: SweepSpec, ds: Any, k: float, allow_unidentified: bool = False,
                  log: Callable[[str], None] = print) -> ExtrapolationPlan:
    """:func:`plan` on the trial log of the sweep at ``root`` (a path or a URI), saying what it decided."""
    p = plan(triallog.read_trials(root), spec, ds, k, allow_unidentified=allow_unidentified)
    log(f"[extrapolate] {k:g} x the largest budget run = {p.budget:.3g} training FLOPs; "
        f"laws that pick: {', '.join(p.used)}")
    for note in p.notes:
        log(f"[extrapolate] {note}")
    log("[extrapolate] planned trials (role = extrapolation):\n" + p.table().to_string(index=False))
    return p


def width_ladder(widths: list[int], n_head: int, extra: int = _EXTRA_STEPS) -> list[int]:
    """The spec's widths, sorted, then ``extra`` more above the largest by the axis's last ratio
    (2 for a one-value axis), each rounded to a multiple of ``n_head``."""
    ladder = sorted({int(w) for w in widths})
    ratio = ladder[-1] / ladder[-2] if len(ladder) > 1 else 2.0
    for _ in range(extra):
        w = max(ladder[-1] + n_head, int(round(ladder[-1] * ratio / n_head)) * n_head)
        ladder.append(w)
    return [w for w in ladder if w % n_head == 0]


def plan(trials: pd.DataFrame, spec: SweepSpec, ds: Any, k: float, allow_unidentified: bool = False,
         bootstrap: int = 200, seed: int = 0) -> ExtrapolationPlan:
    """Fit the finished trials, and plan the compute-optimal trial at ``k`` x their largest budget with
    its IsoFLOP neighbours.

    Parameters
    ----------
    trials : DataFrame
        The sweep's trial log (``triallog.read_trials``). Controls, failed trials and earlier
        extrapolation trials are not fitted.
    spec : SweepSpec
        The sweep's spec: its reference config and width axis, and its training settings.
    ds : brainray.dataset.Dataset
        The prepared dataset: how many frames and pairs a budget can buy.
    k : float
        The budget multiple, > 1.
    allow_unidentified : bool, default=False
        Plan even when neither law is identified by the sweep (see the module docstring).
    bootstrap, seed : int
        Bootstrap re-fits of each law (for the intervals) and their seed.

    Returns
    -------
    ExtrapolationPlan

    Raises
    ------
    ValueError
        ``k`` not > 1; no usable trial, or too few to fit; no width can spend the budget; neither law
        identified without ``allow_unidentified``.
    """
    _check_k(k)
    usable = frontier.usable_trials(trials) if len(trials) else trials
    if usable.empty:
        raise ValueError("--extrapolate: the trial log has no finished trained trial to fit; run the sweep first "
                         "(the same command without --extrapolate).")
    fits = {m: frontier.fit_metric(usable, m, bootstrap=bootstrap, seed=seed) for m in METRICS}
    used, notes = _laws_to_use(fits, allow_unidentified)
    budget = float(k * usable["train_flops"].max())

    cand = _candidates(spec, ds, budget)
    feasible = cand[cand["feasible"]]
    if feasible.empty:
        raise ValueError(
            f"--extrapolate {k:g}: no width of {cand['n_embd'].tolist()} can spend {budget:.3g} FLOPs on this "
            f"dataset ({ds.train_frames} training frames): {'; '.join(cand['why'])}. Prepare more data "
            "(data.train_replays) or ask for a smaller K.")
    for m, fit in fits.items():
        pred, lo, hi, how = frontier.trial_interval(fit, usable, cand["N"].to_numpy(float),
                                                    cand["tokens"].to_numpy(float))
        cand[f"predicted_{m}"], cand[f"predicted_{m}_lo"], cand[f"predicted_{m}_hi"] = pred, lo, hi
        notes.append(f"{_LAW[m]} interval: {how}")
    feasible = cand[cand["feasible"]]

    picks: dict[int, list[str]] = {}  # ladder index -> what picked it
    for m in used:
        best = feasible[f"predicted_{m}"].idxmax() if _MAXIMIZE[m] else feasible[f"predicted_{m}"].idxmin()
        for step, what in ((0, "optimum"), (-1, "narrower"), (1, "wider")):
            i = best + step
            if not 0 <= i < len(cand):
                notes.append(f"{m}: no {what} neighbour (the ladder ends at n_embd {cand.loc[best, 'n_embd']})")
                continue
            picks.setdefault(i, []).append(f"{m} {what}")
    note = "; ".join(n for n in notes if "not identified" in n or "alone" in n)
    configs = []
    for i in sorted(picks):
        row = cand.loc[i]
        config = {**spec.axes.reference, "n_embd": int(row["n_embd"]), "data_frames": int(row["data_frames"]),
                  "role": EXTRAPOLATION, "extrapolate_k": float(k), "extrapolate_budget": budget,
                  "extrapolate_pick": ", ".join(picks[i]) + ("" if row["feasible"] else f" (off the budget: {row['why']})"),
                  "prediction_note": note}
        for m in METRICS:
            for suffix in ("", "_lo", "_hi"):
                config[f"predicted_{m}{suffix}"] = float(row[f"predicted_{m}{suffix}"])
        if spec.train.data_schedule == "reuse":
            config["branches"] = [int(row["data_frames"])]  # one data size: one branch, logged as <id>-d<frames>
        configs.append(config)
    return ExtrapolationPlan(k=float(k), budget=budget, fits=fits, used=used, candidates=cand, trials=configs,
                             notes=notes)


def _laws_to_use(fits: dict[str, frontier.LawFit], allow: bool) -> tuple[list[str], list[str]]:
    """The metrics whose law picks trials, and what to say about the others."""
    notes, weak = [], {}
    for m, fit in fits.items():
        if not fit.identified:
            why = [f"{', '.join(fit.at_bound)} at a bound"] if fit.at_bound else []
            why += [f"{', '.join(fit.wide_exponents)} 95 % CI wider than 10x"] if fit.wide_exponents else []
            weak[m] = f"the {_LAW[m]} is not identified by this sweep ({'; '.join(why)})"
    used = [m for m in fits if m not in weak]
    if not used and not allow:
        raise ValueError(
            "--extrapolate: " + " and ".join(weak.values()) + ", so no law can pick a compute-optimal "
            "configuration. Add trials along the axes at fault (more widths and data sizes, seeds), or pass "
            "--allow-unidentified to run the prediction anyway as a check of laws the sweep does not pin.")
    if not used:
        notes += [f"{w}: used anyway (--allow-unidentified)" for w in weak.values()]
        return list(fits), notes
    notes += [f"{w}: it picks no trial; the {_LAW[used[0]]} alone picks them" for w in weak.values()]
    return used, notes


def _candidates(spec: SweepSpec, ds: Any, budget: float) -> pd.DataFrame:
    """One row per width of the ladder: its cost per token and the data that spends ``budget``."""
    ref, tr = spec.axes.reference, spec.train
    tokens_per_clip = int(np.prod(ds.latent_shape))
    vocab = int(ds.manifest["tokenizer"]["n_codes"])
    n_ctx = 2 * tokens_per_clip

    def tokens(frames: int) -> int:
        pairs = n_pairs(ds, frames)
        return schedule.steps_for(pairs, tr.epochs, tr.batch_size) * tr.batch_size * n_ctx if pairs else 0

    lo_frames = 2 * ds.clip_span  # the first budget with a pair of clips
    rows = []
    for w in width_ladder(spec.axes.n_embd, int(ref["n_head"])):
        cpt = gpt.train_flops_per_token(int(ref["n_layer"]), w, vocab, n_ctx, n_logits=tokens_per_clip)
        row = dict(n_embd=w, N=_params_nonembed(w, int(ref["n_layer"]), int(ref["n_head"]), vocab, tokens_per_clip),
                   flops_per_token=cpt, data_frames=0, tokens=0, cost=0.0, feasible=False, why="")
        need = budget / cpt
        if tokens(ds.train_frames) < need * 0.999:
            frames = ds.train_frames
            row["why"] = f"needs {need:.3g} tokens; all {ds.train_frames} training frames give {tokens(frames)}"
        elif tokens(lo_frames) > need * 1.001:
            frames = lo_frames
            row["why"] = f"needs {need:.3g} tokens; the smallest data ({lo_frames} frames) gives {tokens(frames)}"
        else:
            lo, hi = lo_frames, ds.train_frames  # the largest budget whose tokens fit: tokens(lo) <= need
            while lo < hi:
                mid = (lo + hi + 1) // 2
                lo, hi = (mid, hi) if tokens(mid) <= need * 1.001 else (lo, mid - 1)
            frames, row["feasible"] = lo, True
        row.update(data_frames=frames, tokens=tokens(frames), cost=cpt * tokens(frames))
        rows.append(row)
    return pd.DataFrame(rows)


def _params_nonembed(n_embd: int, n_layer: int, n_head: int, vocab: int, tokens_per_clip: int) -> int:
    """Non-embedding parameters of a width never built: the model on the meta device (no memory)."""
    import torch

    with torch.device("meta"):
        model = gpt.build_model(gpt.GPTSpec(n_embd=n_embd, n_layer=n_layer, n_head=n_head, vocab_size=vocab,
                                            tokens_per_clip=tokens_per_clip))
    return gpt.count_params(model)[1]
