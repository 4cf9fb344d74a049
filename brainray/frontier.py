"""Scaling-law fits, compute-optimal allocation, Pareto fronts and per-axis effects.

The loss law is Chinchilla's Approach 3 (Hoffmann et al. 2022, arXiv:2203.15556)::

    L(N, D) = E + A / N**alpha + B / D**beta

fitted as in the Epoch AI replication (Besiroglu et al. 2024, arXiv:2404.10102): the
summed Huber loss (delta = 1e-3) of the log residuals ``log L_pred - log y``. The fit is
done by variable projection (Czech et al. 2026, arXiv:2603.22339): for every point of a
grid over (alpha, beta) the linear coefficients (E, A, B) come from a non-negative least
squares fit of the relative residuals; the best few grid points (local minima of the
Huber objective over the grid) start an L-BFGS-B refinement of all five parameters.
Uncertainty comes from a bootstrap with a full re-fit per resample (rows, or groups such
as seeds). Warm-started resamples under-cover badly (reference notes, scaling-laws.md §9.1).

Brain scores are bounded by a noise ceiling c, so they are fitted as the gap to the
ceiling, ``e = 1 - r / c = E + A / N**alpha + B / D**beta`` (``form="ceiling_gap"``).
The compute-optimal allocation has the same closed form for both forms. The exponents, and
so the allocation, depend on c: only on noiseless data does a change of c just rescale
E, A and B. On real scores the log residuals ``log e_pred - log e`` weight each trial by
its gap, which c changes (letting the fit estimate the ceiling moved beta from 0.222 to
0.251 on a real alignment data set), so :func:`ceiling_sensitivity` refits with the other
ceiling and the report shows both where they differ.

References: scaling-laws.md (reference notes) §0-§7; DESIGN.md "Frontier analysis".
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import optimize, stats

try:  # a dependency of scikit-learn, so normally present
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover
    threadpool_limits = None

__all__ = [
    "LawFit",
    "reference_value",
    "short_value",
    "fit_law",
    "fit_compute_law",
    "ComputeLaw",
    "pareto_front",
    "allocation_discrete",
    "config_frontier",
    "axis_effects",
    "control_rows",
    "is_control",
    "dtype_comparison",
    "score_families",
    "training_by_width",
    "training_effect",
    "analyze",
    "analysis_to_dict",
    "axis_contrasts",
    "backtest",
    "ceiling_sensitivity",
    "findings",
    "seed_noise",
    "trial_interval",
    "extrapolation_checks",
    "usable_trials",
    "fit_metric",
    "EXTRAPOLATION",
    "simulate_trials",
    "FORMS",
    "TwoStageFit",
    "fit_two_stage",
    "AXES",
    "PAPER_DTYPE",
    "MIN_TRIALS",
]

FORMS = ("chinchilla", "ceiling_gap")
EXTRAPOLATION = "extrapolation"  # ``role`` of a predict-then-verify trial: checked against its prediction, never fitted
AXES = ("n_embd", "n_layer", "n_head", "data_frames", "dtype")
MIN_TRIALS = 5  # 5 free parameters; fewer rows cannot pin the law
# Ahmadi et al. 2024: fp16 1.17x faster; mean max-r 0.548 (fp16) vs 0.547 (fp32).
PAPER_DTYPE = {"speed_ratio": 1.17, "score_diff": 0.548 - 0.547}

# Variable-projection grid over the exponents. 0.02..2.0 covers every published LM and
# brain-score exponent we know of (0.07..0.8); the L-BFGS-B refinement leaves the grid.
_ALPHA_GRID = np.linspace(0.02, 2.0, 45)
_N_STARTS = 4  # refine this many local minima of the grid objective
_LOG_BOUND = 60.0  # |log E|, |log A|, |log B| bound for L-BFGS-B
_EXP_BOUNDS = (1e-4, 5.0)  # alpha, beta bounds for L-BFGS-B
_GAP_FLOOR = 1e-4  # ceiling gaps below this (score at or above the ceiling) are clipped
_PARAMS = ("E", "A", "B", "alpha", "beta")

_REQUIRED_COLUMNS = ("status", "trial_id", "params_nonembed", "tokens", "train_flops",
                     "val_loss", "brain_r_mean")
_FIT_COLUMNS = ("params_nonembed", "tokens", "train_flops", "val_loss", "brain_r_mean")
_MAXIMIZE = {"brain_r_mean": True, "brain_r_max": True, "brain_r_top10": True,
             "ceiling_frac": True, "val_loss": False}


# ---------------------------------------------------------------------------------------
# The fitted law
# ---------------------------------------------------------------------------------------


@dataclass
class LawFit:
    """A fitted law ``y = E + A / N**alpha + B / D**beta`` (or its ceiling-gap form).

    For ``form="chinchilla"`` the law predicts y (e.g. validation loss) directly. For
    ``form="ceiling_gap"`` it predicts the gap ``e = 1 - r / ceiling`` and
    :meth:`predict` returns the score ``r = ceiling * (1 - e)``.

    Attributes
    ----------
    E, A, B, alpha, beta : float
        Law parameters (A, B, E >= 0).
    form : {"chinchilla", "ceiling_gap"}
        Which quantity the law describes.
    objective : float
        Summed Huber loss (delta) of the log residuals at the optimum.
    n_used : int
        Rows used by the fit.
    ci : dict of str to (float, float)
        95 % percentile bootstrap intervals for ``E, A, B, alpha, beta`` and the
        allocation exponents ``a = beta / (alpha + beta)`` (N_opt ∝ C**a) and
        ``b = alpha / (alpha + beta)`` (D_opt ∝ C**b). Empty without bootstrap.
    delta : float
        Huber threshold used.
    ceiling : float or None
        Noise ceiling used by ``ceiling_gap`` (the mean when given per row).
    ceiling_estimated : bool
        True when the ceiling was not given and was estimated (1.05 x the larger of
        max(r) and the fitted asymptote of r).
    n_clipped : int
        Rows whose score reached the ceiling; their gap was clipped to 1e-4.
    n_bootstrap, n_bootstrap_failed : int
        Resamples asked for, and resamples whose re-fit failed (e.g. a single model size).
    boot : ndarray of shape (n_ok, 5) or None
        Bootstrap estimates of (E, A, B, alpha, beta), one row per successful resample.
    converged : bool
        Whether the best L-BFGS-B refinement reported convergence.
    fit_seconds : float
        Wall time of the point fit (bootstrap excluded).
    """

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    form: str = "chinchilla"
    objective: float = math.nan
    n_used: int = 0
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    delta: float = 1e-3
    ceiling: float | None = None
    ceiling_estimated: bool = False
    n_clipped: int = 0
    n_bootstrap: int = 0
    n_bootstrap_failed: int = 0
    boot: np.ndarray | None = field(default=None, repr=False)
    converged: bool = True
    fit_seconds: float = math.nan

    @property
    def a(self) -> float:
        """Allocation exponent of N_opt(C): ``beta / (alpha + beta)``."""
        return self.beta / (self.alpha + self.beta)

    @property
    def asymptote(self) -> float:
        """Limit of the metric as N, D -> inf: E (loss) or ceiling (1 - E) (score)."""
        return self.ceiling * (1.0 - self.E) if self.form == "ceiling_gap" else self.E

    @property
    def b(self) -> float:
        """Allocation exponent of D_opt(C): ``alpha / (alpha + beta)``."""
        return self.alpha / (self.alpha + self.beta)

    @property
    def at_bound(self) -> list[str]:
        """Parameters the fit pushed to a bound of its search box: an exponent within 1 % of 5
        or below the grid's smallest, 0.02 (a term that is flat over any sweep: N^-0.02 moves
        by 17 % over 4 decades, and E absorbs it), or a coefficient at exp(+-60) (in practice
        E, A or B = 0, or a term the data cannot see). Such a law is not identified."""
        return _at_bound(self, ("alpha", "beta"), ("E", "A", "B"))

    @property
    def identified(self) -> bool:
        """True when no parameter sits at a bound (:attr:`at_bound` is empty) and, with a
        bootstrap, neither exponent's 95 % CI spans more than a factor of 10. A law that is
        not identified is reported, never used for allocation."""
        return not self.at_bound and not self.wide_exponents

    @property
    def wide_exponents(self) -> list[str]:
        """The exponents whose bootstrap 95 % CI spans more than a factor of 10."""
        return _wide(self.ci, ("alpha", "beta"))

    def law(self, N: Any, D: Any) -> np.ndarray:
        """Value of ``E + A / N**alpha + B / D**beta`` (loss, or gap for ceiling_gap).

        Parameters
        ----------
        N, D : array_like, broadcastable
            Model size (parameters) and data size (tokens).

        Returns
        -------
        ndarray of the broadcast shape
        """
        N = np.asarray(N, dtype=float)
        D = np.asarray(D, dtype=float)
        return self.E + self.A * N ** -self.alpha + self.B * D ** -self.beta

    def predict(self, N: Any, D: Any, ceiling: Any = None) -> np.ndarray:
        """Predicted metric: the loss (``chinchilla``) or the score r (``ceiling_gap``).

        Parameters
        ----------
        N, D : array_like, broadcastable
            Model size and data size.
        ceiling : float or array_like, optional
            Ceiling for ``ceiling_gap``; default the fitted one (:attr:`ceiling`).

        Returns
        -------
        ndarray of the broadcast shape
        """
        value = self.law(N, D)
        if self.form == "ceiling_gap":
            c = self.ceiling if ceiling is None else np.asarray(ceiling, dtype=float)
            return c * (1.0 - value)
        return value

    def predict_interval(self, N: Any, D: Any, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """Percentile band of :meth:`predict` over the bootstrap re-fits (NaN without them).

        The band is the law's own uncertainty (its parameters); it leaves out the noise of
        a single trial around the law (seed noise).
        """
        rows = [] if self.boot is None else [LawFit(*row, form=self.form, ceiling=self.ceiling).predict(N, D)
                                             for row in self.boot]
        return _band(rows, np.broadcast(np.asarray(N, float), np.asarray(D, float)).shape, level)

    def allocation(self, C: Any, flops_per_param_token: float = 6.0
                   ) -> tuple[np.ndarray, np.ndarray]:
        """Compute-optimal (N, D) under ``C = k * N * D`` (closed form).

        ``G = (alpha A / (beta B))**(1 / (alpha + beta))``,
        ``N_opt = G (C / k)**a`` and ``D_opt = (C / k)**b / G``, which minimises the law
        (loss, or ceiling gap = maximises the score) subject to ``k N D = C``.

        Parameters
        ----------
        C : float or array_like of shape (n_budgets,)
            Compute budgets (FLOPs).
        flops_per_param_token : float, default=6.0
            k in ``C = k N D`` (6 for the usual 6ND approximation).

        Returns
        -------
        N_opt, D_opt : ndarray of the shape of C
            NaN when A or B is 0 (the law then has no interior optimum).
        """
        C = np.asarray(C, dtype=float)
        if self.A <= 0 or self.B <= 0:
            warnings.warn(
                f"allocation: the fitted law has A={self.A:g}, B={self.B:g}; with a zero "
                "term it has no interior optimum, so N_opt and D_opt are NaN. Add trials "
                "that vary the missing axis.", RuntimeWarning, stacklevel=2)
            nan = np.full_like(C, np.nan)
            return nan, nan.copy()
        s = self.alpha + self.beta
        G = (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / s)
        x = C / flops_per_param_token
        return G * x ** self.a, x ** self.b / G

    def frontier(self, C: Any, flops_per_param_token: float = 6.0,
                 level: float | None = None) -> Any:
        """Predicted metric on the compute-optimal frontier, optionally with a band.

        Parameters
        ----------
        C : array_like of shape (n_budgets,)
            Compute budgets.
        flops_per_param_token : float, default=6.0
            k in ``C = k N D``.
        level : float, optional
            If given (e.g. 0.95) and bootstrap estimates exist, also return the
            percentile band of the frontier over resamples.

        Returns
        -------
        ndarray of shape (n_budgets,), or (value, lo, hi) when ``level`` is given
            lo and hi are NaN when there is no bootstrap.
        """
        C = np.atleast_1d(np.asarray(C, dtype=float))
        N, D = self.allocation(C, flops_per_param_token)
        value = self.predict(N, D)
        if level is None:
            return value
        curves = []
        for row in [] if self.boot is None else self.boot:
            f = LawFit(*row, form=self.form, ceiling=self.ceiling)
            if f.A <= 0 or f.B <= 0:
                continue
            curves.append(f.predict(*f.allocation(C, flops_per_param_token)))
        return (value, *_band(curves, value.shape, level))

    def formula(self, digits: int = 4) -> str:
        """The fitted law written out, e.g. ``L = 1.82 + 482/N^0.348 + 2085/D^0.366``."""
        g = f"{{:.{digits}g}}"
        body = (f"{g.format(self.E)} + {g.format(self.A)}/N^{g.format(self.alpha)}"
                f" + {g.format(self.B)}/D^{g.format(self.beta)}")
        if self.form == "ceiling_gap":
            return f"1 - r/c = {body}   (c = {g.format(self.ceiling)})"
        return f"L = {body}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary (no bootstrap samples, NaN written as None)."""
        out: dict[str, Any] = {
            "form": self.form,
            "law": ("e = 1 - r/ceiling = E + A/N^alpha + B/D^beta"
                    if self.form == "ceiling_gap" else "L = E + A/N^alpha + B/D^beta"),
            "formula": self.formula(),
            "E": self.E, "A": self.A, "B": self.B, "alpha": self.alpha, "beta": self.beta,
            "a": self.a, "b": self.b, "asymptote": self.asymptote,
            "objective": self.objective, "delta": self.delta, "n_used": self.n_used,
            "converged": self.converged, "fit_seconds": self.fit_seconds,
            "at_bound": self.at_bound, "wide_exponents": self.wide_exponents, "identified": self.identified,
            "n_bootstrap": self.n_bootstrap, "n_bootstrap_failed": self.n_bootstrap_failed,
            "ci_level": 0.95 if self.ci else None,
            "ci": {k: [lo, hi] for k, (lo, hi) in self.ci.items()},
        }
        if self.form == "ceiling_gap":
            out.update(ceiling=self.ceiling, ceiling_estimated=self.ceiling_estimated,
                       ceiling_note=("estimated as 1.05 * max(max r, fitted asymptote "
                                     "of r): the scores alone do not identify the "
                                     "ceiling, and on noisy scores the exponents and "
                                     "the allocation move with it (ceiling_sensitivity)"
                                     if self.ceiling_estimated else "given"),
                       n_clipped=self.n_clipped)
        return _jsonable(out)


# ---------------------------------------------------------------------------------------
# Fitting
# ---------------------------------------------------------------------------------------


def _huber(r: np.ndarray, delta: float) -> np.ndarray:
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def _objective(theta: np.ndarray, logN: np.ndarray, logD: np.ndarray, logy: np.ndarray,
               delta: float) -> tuple[float, np.ndarray]:
    """Summed Huber loss / delta of log residuals, and its gradient.

    theta = (log E, log A, log B, alpha, beta); the prediction is
    ``logsumexp(log A - alpha log N, log B - beta log D, log E)`` as in Chinchilla.
    Dividing by delta keeps the objective O(n) so L-BFGS-B's tolerances bite.
    """
    e, a, b, al, be = theta
    t0 = a - al * logN
    t1 = b - be * logD
    t2 = np.full_like(logN, e)
    m = np.maximum(np.maximum(t0, t1), t2)
    w0, w1, w2 = np.exp(t0 - m), np.exp(t1 - m), np.exp(t2 - m)
    s = w0 + w1 + w2
    r = m + np.log(s) - logy
    f = _huber(r, delta).sum() / delta
    g = np.clip(r, -delta, delta) / delta / s
    grad = np.array([(g * w2).sum(), (g * w0).sum(), (g * w1).sum(),
                     -(g * w0 * logN).sum(), -(g * w1 * logD).sum()])
    return float(f), grad


def _varpro_grid(N: np.ndarray, D: np.ndarray, y: np.ndarray, delta: float,
                 grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NNLS of (E, A, B) on relative residuals for every (alpha, beta) of the grid.

    Returns coefficients of shape (n_grid, n_grid, 3) and the summed Huber objective of
    the log residuals of shape (n_grid, n_grid). The 3-column NNLS is solved exactly by
    enumerating the 7 supports: the optimum is the feasible support solution with the
    smallest residual.
    """
    g = grid
    n = len(y)
    X1 = np.exp(-np.outer(g, np.log(N)))  # (n_grid, n)   N**-alpha
    X2 = np.exp(-np.outer(g, np.log(D)))  # (n_grid, n)   D**-beta
    w = 1.0 / y
    w2 = w * w
    k = len(g)
    # Gram matrix of columns (1/y, N^-a/y, D^-b/y) and right-hand side (target 1)
    G = np.empty((k, k, 3, 3))
    G[..., 0, 0] = w2.sum()
    G[..., 0, 1] = G[..., 1, 0] = (X1 @ w2)[:, None]
    G[..., 1, 1] = ((X1 * X1) @ w2)[:, None]
    G[..., 0, 2] = G[..., 2, 0] = (X2 @ w2)[None, :]
    G[..., 2, 2] = ((X2 * X2) @ w2)[None, :]
    G[..., 1, 2] = G[..., 2, 1] = (X1 * w2) @ X2.T
    h = np.empty((k, k, 3))
    h[..., 0] = w.sum()
    h[..., 1] = (X1 @ w)[:, None]
    h[..., 2] = (X2 @ w)[None, :]
    # normalise columns for conditioning
    sc = np.sqrt(np.einsum("...ii->...i", G))
    Gn = G / (sc[..., :, None] * sc[..., None, :])
    hn = h / sc
    best_sse = np.full((k, k), np.inf)
    best = np.zeros((k, k, 3))
    for support in ((0, 1, 2), (0, 1), (0, 2), (1, 2), (0,), (1,), (2,)):
        idx = np.array(support)
        Gs = Gn[..., idx[:, None], idx[None, :]] + 1e-12 * np.eye(len(idx))
        x = np.linalg.solve(Gs, hn[..., idx][..., None])[..., 0]
        sse = n - (x * hn[..., idx]).sum(-1)
        ok = np.all(x >= 0, axis=-1) & (sse < best_sse)
        best_sse = np.where(ok, sse, best_sse)
        full = np.zeros((k, k, 3))
        full[..., idx] = x
        best = np.where(ok[..., None], full, best)
    coef = best / sc
    pred = (coef[..., 0:1] + coef[..., 1:2] * X1[:, None, :]
            + coef[..., 2:3] * X2[None, :, :])  # (k, k, n)
    r = np.log(np.maximum(pred, 1e-300)) - np.log(y)
    obj = _huber(r, delta).sum(-1)
    return coef, obj


def _local_minima(obj: np.ndarray, n: int) -> list[tuple[int, int]]:
    """Indices of the n best local minima (8-neighbourhood) of a 2-D array."""
    p = np.pad(obj, 1, constant_values=np.inf)
    k0, k1 = obj.shape
    is_min = np.ones_like(obj, dtype=bool)
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            if di or dj:
                is_min &= obj <= p[1 + di:1 + di + k0, 1 + dj:1 + dj + k1]
    cand = np.argwhere(is_min)
    order = np.argsort(obj[is_min])
    picked = [tuple(c) for c in cand[order[:n]]]
    if not picked:  # flat objective: fall back to the global minimum
        picked = [np.unravel_index(np.argmin(obj), obj.shape)]
    return picked


def _fit_core(N: np.ndarray, D: np.ndarray, y: np.ndarray, delta: float,
              n_starts: int = _N_STARTS) -> tuple[np.ndarray, float, bool]:
    """VarPro grid + L-BFGS-B refinement. Returns (E, A, B, alpha, beta), objective, ok."""
    logN, logD, logy = np.log(N), np.log(D), np.log(y)
    coef, obj = _varpro_grid(N, D, y, delta, _ALPHA_GRID)
    floor = 1e-12 * float(np.min(y))
    bounds = [(-_LOG_BOUND, _LOG_BOUND)] * 3 + [_EXP_BOUNDS] * 2
    best_theta, best_f, best_ok = None, np.inf, False
    for i, j in _local_minima(obj, n_starts):
        E, A, B = np.maximum(coef[i, j], floor)
        x0 = np.array([np.log(E), np.log(A), np.log(B), _ALPHA_GRID[i], _ALPHA_GRID[j]])
        x0[:3] = np.clip(x0[:3], -_LOG_BOUND, _LOG_BOUND)
        res = optimize.minimize(_objective, x0, args=(logN, logD, logy, delta), jac=True,
                                method="L-BFGS-B", bounds=bounds,
                                options={"ftol": 1e-15, "gtol": 1e-11, "maxiter": 2000})
        if res.fun < best_f:
            best_theta, best_f, best_ok = res.x, float(res.fun), bool(res.success)
    e, a, b, al, be = best_theta
    params = np.array([np.exp(e), np.exp(a), np.exp(b), al, be])
    params[:3][params[:3] <= floor * 1.0000001] = 0.0  # report pinned terms as zero
    return params, best_f * delta, best_ok


def _one_blas_thread() -> contextlib.AbstractContextManager:
    """Run BLAS single-threaded: the fit's arrays are tiny, and with busy cores
    OpenBLAS threads spinning on 3x3 solves made one fit 10-40x slower (measured)."""
    if threadpool_limits is None:  # pragma: no cover
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _check_inputs(N: Any, D: Any, y: Any, form: str) -> tuple[np.ndarray, ...]:
    if form not in FORMS:
        raise ValueError(f"fit_law: 'form' must be one of {FORMS}; got {form!r}.")
    N = np.asarray(N, dtype=float).ravel()
    D = np.asarray(D, dtype=float).ravel()
    y = np.asarray(y, dtype=float).ravel()
    if not (len(N) == len(D) == len(y)):
        raise ValueError(f"fit_law: N, D and y must have the same length; got "
                         f"{len(N)}, {len(D)} and {len(y)}.")
    for name, v in (("N", N), ("D", D), ("y", y)):
        bad = ~np.isfinite(v)
        if bad.any():
            raise ValueError(f"fit_law: {name} has {int(bad.sum())} NaN or infinite "
                             f"value(s) (first at row {int(np.argmax(bad))}); drop those "
                             "rows first (analyze() does this and lists them).")
    for name, v in (("N", N), ("D", D)):
        if np.any(v <= 0):
            raise ValueError(f"fit_law: {name} must be > 0; got {v[v <= 0][0]!r} at row "
                             f"{int(np.argmax(v <= 0))}.")
    if len(y) < MIN_TRIALS:
        raise ValueError(f"fit_law: {len(y)} rows; the law has 5 parameters and needs at "
                         f"least {MIN_TRIALS} rows. Run more trials.")
    for name, v in (("N", N), ("D", D)):
        if np.unique(v).size < 2:
            raise ValueError(f"fit_law: every row has the same {name} ({v[0]:g}); the law "
                             f"needs at least 2 distinct values of {name} to separate its "
                             "terms. Add trials at other "
                             f"{'model sizes' if name == 'N' else 'data sizes'}.")
    return N, D, y


def _estimate_ceiling(N: np.ndarray, D: np.ndarray, r: np.ndarray, delta: float) -> float:
    """1.05 x the larger of max(r) and the fitted asymptote of r.

    The scores alone do not identify the ceiling c: for any c >= s_inf (the asymptote of
    r = s_inf - A' N^-alpha - B' D^-beta) the gap law is exact with the same exponents on
    noiseless scores. On noisy scores the fitted exponents move with c (the log residuals
    weight trials by their gap), so the choice is a convention, not a fact of the data:
    :func:`ceiling_sensitivity` shows how much it matters. 1.05 max(r) alone can sit below s_inf when the sweep is far from saturation, and
    the gap law would then need E < 0. So s_inf is fitted first, as the Chinchilla law of
    K - r with K = max(2, 3 max|r|) (so that K - s_inf = E >= 0), and the ceiling is set
    5 % above the larger of the two; Pearson r cannot exceed 1, so it is capped there.
    """
    K = max(2.0, 3.0 * float(np.max(np.abs(r))))
    params, _, _ = _fit_core(N, D, K - r, delta)
    s_inf = K - params[0]
    c = 1.05 * max(float(np.max(r)), s_inf)
    return min(c, 1.0) if np.max(r) < 1.0 / 1.05 else c


def _gap(N: np.ndarray, D: np.ndarray, y: np.ndarray, ceiling: Any, delta: float
         ) -> tuple[np.ndarray, np.ndarray, bool, int]:
    """Ceiling gap e = 1 - r/c, the ceiling per row, whether estimated, rows clipped."""
    estimated = ceiling is None
    if estimated:
        top = float(np.max(y))
        if top <= 0:
            raise ValueError(f"fit_law: form='ceiling_gap' with no ceiling, but every "
                             f"score is <= 0 (max {top:g}); pass ceiling= (the noise "
                             "ceiling) or check the brain scores.")
        c = np.full_like(y, _estimate_ceiling(N, D, y, delta))
    else:
        c = np.broadcast_to(np.asarray(ceiling, dtype=float), y.shape).astype(float)
        if not np.all(np.isfinite(c)) or np.any(c <= 0):
            raise ValueError(f"fit_law: 'ceiling' must be finite and > 0; got "
                             f"{c[~(np.isfinite(c) & (c > 0))][0]!r}.")
    e = 1.0 - y / c
    clipped = e < _GAP_FLOOR
    return np.maximum(e, _GAP_FLOOR), c, estimated, int(clipped.sum())


def fit_law(N: Any, D: Any, y: Any, form: str = "chinchilla", delta: float = 1e-3,
            bootstrap: int = 0, seed: int = 0, ceiling: Any = None,
            groups: Any = None) -> LawFit:
    r"""Fit ``y = E + A / N**alpha + B / D**beta`` by Huber regression on log residuals.

    Minimises over (E, A, B >= 0, alpha, beta)

    .. math:: \sum_i \mathrm{Huber}_\delta\big(\log(E + A N_i^{-\alpha} + B D_i^{-\beta})
              - \log y_i\big)

    by variable projection (grid over alpha, beta in [0.02, 2]; exact 3-column NNLS for
    E, A, B on relative residuals; L-BFGS-B refinement of all five parameters from the
    4 best local minima of the grid).

    Parameters
    ----------
    N : array_like of shape (n_trials,)
        Model sizes (parameters, > 0).
    D : array_like of shape (n_trials,)
        Data sizes (tokens, > 0).
    y : array_like of shape (n_trials,)
        Loss (``chinchilla``, > 0) or brain score r (``ceiling_gap``).
    form : {"chinchilla", "ceiling_gap"}, default="chinchilla"
        ``ceiling_gap`` fits ``e = 1 - r / ceiling`` with the same law.
    delta : float, default=1e-3
        Huber threshold on log residuals.
    bootstrap : int, default=0
        Number of bootstrap resamples, each with a full re-fit; gives :attr:`LawFit.ci`.
    seed : int, default=0
        Seed of the bootstrap.
    ceiling : float or array_like of shape (n_trials,), optional
        Noise ceiling for ``ceiling_gap``. If None it is estimated as 1.05 x the larger
        of max(r) and the fitted asymptote of r, and the fit says so
        (``ceiling_estimated``). The exponents and the allocation depend on the ceiling
        (see :func:`ceiling_sensitivity`), so pass the noise ceiling when it is known.
        Scores at or above the ceiling get a gap of 1e-4 and are counted in ``n_clipped``.
    groups : array_like of shape (n_trials,), optional
        Cluster labels (e.g. seeds) for the bootstrap: whole groups are resampled.

    Returns
    -------
    LawFit

    Examples
    --------
    >>> import numpy as np
    >>> N, D = np.meshgrid(np.geomspace(1e6, 1e9, 6), np.geomspace(1e8, 1e11, 6))
    >>> y = 1.8 + 480 / N ** 0.35 + 2000 / D ** 0.37
    >>> fit = fit_law(N.ravel(), D.ravel(), y.ravel())
    >>> round(fit.alpha, 3), round(fit.beta, 3)
    (0.35, 0.37)
    """
    N, D, y = _check_inputs(N, D, y, form)
    if not delta > 0:
        raise ValueError(f"fit_law: 'delta' must be > 0; got {delta!r}.")
    if bootstrap < 0:
        raise ValueError(f"fit_law: 'bootstrap' must be >= 0; got {bootstrap!r}.")
    ceil_value, estimated, n_clipped = None, False, 0
    if form == "ceiling_gap":
        with _one_blas_thread():
            target, c, estimated, n_clipped = _gap(N, D, y, ceiling, delta)
        ceil_value = float(np.mean(c))
    else:
        if np.any(y <= 0):
            raise ValueError(f"fit_law: form='chinchilla' needs y > 0 (it is fitted on "
                             f"log y); got {y[y <= 0][0]!r} at row "
                             f"{int(np.argmax(y <= 0))}. For scores use "
                             "form='ceiling_gap'.")
        target = y
    if groups is not None:
        groups = np.asarray(groups).ravel()
        if len(groups) != len(y):
            raise ValueError(f"fit_law: 'groups' must have one label per row; got "
                             f"{len(groups)} labels for {len(y)} rows.")
    with _one_blas_thread():
        t0 = time.perf_counter()
        params, obj, ok = _fit_core(N, D, target, delta)
        fit_s = time.perf_counter() - t0
        boot, failed = (_bootstrap(N, D, target, delta, bootstrap, seed, groups)
                        if bootstrap else (None, 0))
    fit = LawFit(*map(float, params), form=form, objective=obj, n_used=len(y),
                 delta=delta, ceiling=ceil_value, ceiling_estimated=estimated,
                 n_clipped=n_clipped, converged=ok, fit_seconds=fit_s)
    if bootstrap:
        fit.n_bootstrap, fit.n_bootstrap_failed = bootstrap, failed
        if len(boot) >= 2:
            fit.boot = boot
            fit.ci = _percentile_ci(boot)
    return fit


def _bootstrap(N: np.ndarray, D: np.ndarray, y: np.ndarray, delta: float, n_boot: int,
               seed: int, groups: np.ndarray | None) -> tuple[np.ndarray, int]:
    rng = np.random.default_rng(seed)
    if groups is None:
        members = [np.array([i]) for i in range(len(y))]
    else:
        _, inv = np.unique(groups, return_inverse=True)
        members = [np.flatnonzero(inv == g) for g in range(inv.max() + 1)]
    out, failed = [], 0
    for _ in range(n_boot):
        pick = rng.integers(0, len(members), len(members))
        idx = np.concatenate([members[p] for p in pick])
        if np.unique(N[idx]).size < 2 or np.unique(D[idx]).size < 2:
            failed += 1
            continue
        try:
            params, _, _ = _fit_core(N[idx], D[idx], y[idx], delta)
        except (np.linalg.LinAlgError, ValueError, FloatingPointError):
            failed += 1
            continue
        out.append(params)
    return np.array(out).reshape(-1, 5), failed


def _percentile_ci(boot: np.ndarray, level: float = 0.95) -> dict[str, tuple[float, float]]:
    q = 100 * (1 - level) / 2
    al, be = boot[:, 3], boot[:, 4]
    cols = dict(zip(_PARAMS, boot.T))
    cols["a"] = be / (al + be)
    cols["b"] = al / (al + be)
    return {k: (float(np.percentile(v, q)), float(np.percentile(v, 100 - q)))
            for k, v in cols.items()}


# ---------------------------------------------------------------------------------------
# Compute-only law (Gokce & Schrimpf 2025)
# ---------------------------------------------------------------------------------------

COMPUTE_FORMS = ("power", "ceiling_gap")


@dataclass
class ComputeLaw:
    """A fitted law of a metric against compute alone: ``y = E + A * C**-alpha`` (``power``),
    or ``1 - y / ceiling = E + A * C**-alpha`` (``ceiling_gap``, for scores).

    Attributes
    ----------
    E, A, alpha : float
        Law parameters (E, A >= 0).
    form : {"power", "ceiling_gap"}
    ceiling : float or None
        ``ceiling_gap`` only: the ceiling given, or 1 when none was (the gap is then the
        misalignment ``1 - y``, as Gokce & Schrimpf fit it, and :attr:`asymptote` = 1 - E is
        the score compute alone reaches).
    ci : dict of str to (float, float)
        95 % percentile bootstrap intervals (full re-fits) of E, A, alpha and the asymptote.
    n_used, n_bootstrap, n_bootstrap_failed : int
    objective : float
        Summed Huber loss of the log residuals at the optimum.
    """

    E: float
    A: float
    alpha: float
    form: str = "power"
    ceiling: float | None = None
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    n_used: int = 0
    n_bootstrap: int = 0
    n_bootstrap_failed: int = 0
    objective: float = math.nan
    delta: float = 1e-3
    boot: np.ndarray | None = field(default=None, repr=False)  # (n_ok, 3): E, A, alpha per resample

    @property
    def asymptote(self) -> float:
        """Limit as C -> inf: E (power), or ceiling * (1 - E) (ceiling_gap)."""
        return self.ceiling * (1.0 - self.E) if self.form == "ceiling_gap" else self.E

    @property
    def at_bound(self) -> list[str]:
        """Parameters at a bound of the fit (see :attr:`LawFit.at_bound`)."""
        return _at_bound(self, ("alpha",), ("E", "A"))

    @property
    def identified(self) -> bool:
        """No parameter at a bound, and (with a bootstrap) alpha's 95 % CI within a factor of 10."""
        return not self.at_bound and not _wide(self.ci, ("alpha",))

    def predict(self, C: Any) -> np.ndarray:
        """The metric at compute C: the loss (power) or the score (ceiling_gap)."""
        value = self.E + self.A * np.asarray(C, dtype=float) ** -self.alpha
        return self.ceiling * (1.0 - value) if self.form == "ceiling_gap" else value

    def predict_interval(self, C: Any, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """Percentile band of :meth:`predict` over the bootstrap re-fits (NaN without them)."""
        rows = [] if self.boot is None else [ComputeLaw(*row, form=self.form, ceiling=self.ceiling).predict(C)
                                             for row in self.boot]
        return _band(rows, np.shape(np.asarray(C, float)), level)

    def to_dict(self) -> dict[str, Any]:
        law = "1 - y/ceiling = E + A*C^-alpha" if self.form == "ceiling_gap" else "y = E + A*C^-alpha"
        return _jsonable({
            "form": self.form, "law": law, "E": self.E, "A": self.A, "alpha": self.alpha, "ceiling": self.ceiling,
            "asymptote": self.asymptote, "ci": {k: [lo, hi] for k, (lo, hi) in self.ci.items()},
            "at_bound": self.at_bound, "identified": self.identified, "n_used": self.n_used,
            "n_bootstrap": self.n_bootstrap, "n_bootstrap_failed": self.n_bootstrap_failed,
            "objective": self.objective, "delta": self.delta,
        })


def _band(curves: list[np.ndarray], shape: tuple[int, ...], level: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile band of bootstrap predictions; NaN with fewer than 2 of them."""
    if len(curves) < 2:
        return np.full(shape, np.nan), np.full(shape, np.nan)
    q = 100 * (1 - level) / 2
    lo, hi = np.nanpercentile(np.array(curves), [q, 100 - q], axis=0)
    return lo, hi


def _at_bound(fit: Any, exponents: tuple[str, ...], coefficients: tuple[str, ...]) -> list[str]:
    """The parameters of ``fit`` at a bound of the search box (see :attr:`LawFit.at_bound`)."""
    out = [k for k in exponents if getattr(fit, k) < _ALPHA_GRID[0] or getattr(fit, k) >= _EXP_BOUNDS[1] * 0.99]
    return out + [k for k in coefficients
                  if not getattr(fit, k) > 0 or abs(math.log(getattr(fit, k))) >= _LOG_BOUND - 1]


def _wide(ci: dict[str, tuple[float, float]], exponents: tuple[str, ...]) -> list[str]:
    """The exponents whose 95 % CI spans more than a factor of 10 (or reaches 0)."""
    out = []
    for k in exponents:
        lo, hi = ci.get(k, (math.nan, math.nan))
        if math.isfinite(lo) and math.isfinite(hi) and (lo <= 0 or hi / lo > 10):
            out.append(k)
    return out


def fit_compute_law(C: Any, y: Any, form: str = "power", ceiling: float | None = None, delta: float = 1e-3,
                    bootstrap: int = 0, seed: int = 0) -> ComputeLaw:
    """Fit a metric against compute alone, as Gokce & Schrimpf (2025) fit alignment.

    ``form="power"``: ``y = E + A C^-alpha`` (a loss, or a misalignment the caller computed).
    ``form="ceiling_gap"``: ``1 - y / ceiling = E + A C^-alpha`` (a brain score), with the
    ceiling given or, when None, 1: the gap is the misalignment ``1 - y`` and the score that
    compute alone reaches is ``1 - E``, with its CI. Fitted like :func:`fit_law`: Huber
    (``delta``) on log residuals, a grid over alpha with the exact non-negative least squares
    of (E, A) at each (variable projection), then L-BFGS-B from the best grid points.

    Parameters
    ----------
    C : array_like of shape (n,)
        Compute (training FLOPs or GPU-hours), > 0.
    y : array_like of shape (n,)
        The metric: > 0 for ``power``; below the ceiling for ``ceiling_gap``.
    bootstrap : int, default=0
        Resamples of the rows, each with a full re-fit; gives ``ci``.

    Returns
    -------
    ComputeLaw
    """
    if form not in COMPUTE_FORMS:
        raise ValueError(f"fit_compute_law: 'form' must be one of {COMPUTE_FORMS}; got {form!r}.")
    C = np.asarray(C, dtype=float).ravel()
    y = np.asarray(y, dtype=float).ravel()
    if len(C) != len(y) or len(C) < 3:
        raise ValueError(f"fit_compute_law: C and y need the same length, at least 3; got {len(C)} and {len(y)}.")
    if not (np.all(np.isfinite(C)) and np.all(np.isfinite(y)) and np.all(C > 0)):
        raise ValueError("fit_compute_law: C must be finite and > 0, and y finite; drop the other rows first.")
    if np.unique(C).size < 2:
        raise ValueError("fit_compute_law: C has a single value; a law against compute needs several.")
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, (int, np.integer)) or bootstrap < 0:
        raise ValueError(f"fit_compute_law: 'bootstrap' must be an int >= 0; got {bootstrap!r}.")
    c = None
    target = y
    if form == "ceiling_gap":
        c = 1.0 if ceiling is None else float(ceiling)
        if not c > 0 or np.any(y >= c):
            raise ValueError(f"fit_compute_law: every score must lie below the ceiling {c:g}; the largest is "
                             f"{float(y.max()):g}. Pass the noise ceiling (or none: 1).")
        target = 1.0 - y / c
    elif np.any(y <= 0):
        raise ValueError("fit_compute_law: form='power' needs y > 0 (a loss); use 'ceiling_gap' for scores.")
    with _one_blas_thread():
        params, obj = _fit_power(C, target, delta)
        fit = ComputeLaw(*map(float, params), form=form, ceiling=c, n_used=len(y), objective=obj, delta=delta)
        if bootstrap:
            rng = np.random.default_rng(seed)
            boot, failed = [], 0
            for _ in range(bootstrap):
                idx = rng.integers(0, len(y), len(y))
                if np.unique(C[idx]).size < 2:
                    failed += 1
                    continue
                boot.append(_fit_power(C[idx], target[idx], delta)[0])
            fit.n_bootstrap, fit.n_bootstrap_failed = bootstrap, failed
            if len(boot) >= 2:
                b = fit.boot = np.array(boot)
                cols = {"E": b[:, 0], "A": b[:, 1], "alpha": b[:, 2]}
                cols["asymptote"] = c * (1 - b[:, 0]) if form == "ceiling_gap" else b[:, 0]
                fit.ci = {k: (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))) for k, v in cols.items()}
    return fit


def _fit_power(C: np.ndarray, y: np.ndarray, delta: float) -> tuple[np.ndarray, float]:
    """(E, A, alpha) of ``y = E + A C^-alpha`` and the Huber objective: grid + NNLS, then L-BFGS-B."""
    logC, logy = np.log(C), np.log(y)
    X = np.exp(-np.outer(_ALPHA_GRID, logC))  # (k, n): C^-alpha
    w = 1.0 / y  # relative residuals (E + A x) / y - 1
    best = []
    for k, x in enumerate(X):
        cols = np.stack([w, x * w], axis=1)  # (n, 2)
        sol = np.zeros(2)
        coef, *_ = np.linalg.lstsq(cols, np.ones_like(y), rcond=None)
        if np.all(coef >= 0):
            sol = coef
        else:  # one of E, A is 0: the better of the two one-column fits
            fits = [max(0.0, float(cols[:, j] @ np.ones_like(y) / (cols[:, j] @ cols[:, j]))) for j in (0, 1)]
            sse = [((cols[:, j] * fits[j] - 1) ** 2).sum() for j in (0, 1)]
            j = int(np.argmin(sse))
            sol[j] = fits[j]
        pred = np.maximum(sol[0] + sol[1] * x, 1e-300)
        best.append((float(_huber(np.log(pred) - logy, delta).sum()), k, sol))
    best.sort(key=lambda t: t[0])
    floor = 1e-12 * float(np.min(y))
    bounds = [(-_LOG_BOUND, _LOG_BOUND)] * 2 + [_EXP_BOUNDS]

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        e, a, al = theta
        t0, t1 = np.full_like(logC, e), a - al * logC
        m = np.maximum(t0, t1)
        w0, w1 = np.exp(t0 - m), np.exp(t1 - m)
        r = m + np.log(w0 + w1) - logy
        g = np.clip(r, -delta, delta) / delta / (w0 + w1)
        return float(_huber(r, delta).sum() / delta), np.array([(g * w0).sum(), (g * w1).sum(), -(g * w1 * logC).sum()])

    top = min(len(best), _N_STARTS)
    result, f_best = None, np.inf
    for _, k, sol in best[:top]:
        x0 = np.clip([np.log(max(sol[0], floor)), np.log(max(sol[1], floor)), _ALPHA_GRID[k]],
                     [-_LOG_BOUND, -_LOG_BOUND, _EXP_BOUNDS[0]], [_LOG_BOUND, _LOG_BOUND, _EXP_BOUNDS[1]])
        res = optimize.minimize(objective, x0, jac=True, method="L-BFGS-B", bounds=bounds,
                                options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 2000})
        if res.fun < f_best:
            result, f_best = res.x, float(res.fun)
    params = np.array([np.exp(result[0]), np.exp(result[1]), result[2]])
    params[:2][params[:2] <= floor * 1.0000001] = 0.0
    return params, f_best * delta


# ---------------------------------------------------------------------------------------
# Fronts, allocation, effects
# ---------------------------------------------------------------------------------------


def pareto_front(cost: Any, y: Any, minimize: bool = True) -> np.ndarray:
    """Mask of the Pareto-optimal points: no other point is cheaper and at least as good.

    A point is on the front when every point with lower or equal cost has a worse y
    (strictly; ties in both cost and y keep both points). NaN rows are never on it.

    Parameters
    ----------
    cost : array_like of shape (n,)
        Cost (training FLOPs, GPU-hours); lower is better.
    y : array_like of shape (n,)
        Metric; lower is better when ``minimize`` (loss), higher otherwise (score).
    minimize : bool, default=True
        Direction of y.

    Returns
    -------
    ndarray of bool, shape (n,)
    """
    cost = np.asarray(cost, dtype=float).ravel()
    y = np.asarray(y, dtype=float).ravel()
    if cost.shape != y.shape:
        raise ValueError(f"pareto_front: cost and y must have the same length; got "
                         f"{cost.size} and {y.size}.")
    v = y if minimize else -y
    mask = np.zeros(cost.size, dtype=bool)
    ok = np.flatnonzero(np.isfinite(cost) & np.isfinite(v))
    order = ok[np.lexsort((v[ok], cost[ok]))]
    best = np.inf
    i = 0
    while i < order.size:  # walk groups of equal cost
        j = i
        while j < order.size and cost[order[j]] == cost[order[i]]:
            j += 1
        group = order[i:j]
        gmin = v[group].min()
        if gmin < best:
            mask[group[v[group] == gmin]] = True
            best = gmin
        i = j
    return mask


def _config_keys(df: pd.DataFrame) -> list[str]:
    """Columns that identify a config (seeds are averaged over); a reused data size is not the same
    trial as its from-scratch twin, so the schedules count where a log has several."""
    keys = [a for a in AXES if a in df.columns]
    keys += [c for c in ("data_schedule", "lr_schedule") if c in df.columns and df[c].nunique(dropna=False) > 1]
    return keys


def _metric_fit(df: pd.DataFrame, metric: str, bootstrap: int = 0, seed: int = 0
                ) -> LawFit:
    """Fit the law of ``metric`` on a usable trial table (loss: chinchilla; score: gap)."""
    N = df["params_nonembed"].to_numpy(float)
    D = df["tokens"].to_numpy(float)
    y = df[metric].to_numpy(float)
    if _MAXIMIZE.get(metric, False):
        if metric == "ceiling_frac":
            ceiling = 1.0
        elif metric == "brain_r_mean" and _ceiling_column(df):
            ceiling = df[_ceiling_column(df)].to_numpy(float)
        else:
            ceiling = None
        return fit_law(N, D, y, form="ceiling_gap", ceiling=ceiling, bootstrap=bootstrap,
                       seed=seed)
    return fit_law(N, D, y, form="chinchilla", bootstrap=bootstrap, seed=seed)


def compute_laws(usable: pd.DataFrame, fronts: dict[str, Any], bootstrap: int = 0, seed: int = 0
                 ) -> tuple[dict[str, ComputeLaw], dict[str, str]]:
    """The compute-only law of each metric on its Pareto front, against FLOPs and GPU-hours apart.

    ``val_loss`` takes the ``power`` form; ``brain_r_mean`` the ``ceiling_gap`` form with the
    known noise ceiling (its mean over the front's rows), or 1 when it is unknown (the
    asymptote is then the score compute alone reaches). Returns (laws, why-not per key).
    """
    laws, errors = {}, {}
    for key, front in fronts.items():
        rows = usable[usable["trial_id"].isin(front["trial_ids"])]
        metric, cost = front["metric"], front["cost"]
        if len(rows) < 3 or rows[cost].nunique() < 3:
            errors[key] = f"{len(rows)} trial(s) on the front of {metric} vs {cost}; a compute law needs 3 or more"
            continue
        col = _ceiling_column(rows) if metric != "val_loss" else None
        form = "power" if metric == "val_loss" else "ceiling_gap"
        ceiling = float(rows[col].mean()) if col else None
        try:
            laws[key] = fit_compute_law(rows[cost], rows[metric], form=form, ceiling=ceiling,
                                        bootstrap=bootstrap, seed=seed)
        except ValueError as err:
            errors[key] = str(err)
    return laws, errors


def _ceiling_column(df: pd.DataFrame) -> str | None:
    """The known noise ceiling of each row's mean score: ``ceiling``, or the trial log's
    ``ceiling_mean`` (mean over parcels of the simulated brain's exact ceiling)."""
    for col in ("ceiling", "ceiling_mean"):
        if col in df.columns and df[col].notna().all() and (df[col] > 0).all():
            return col
    return None


@dataclass
class TwoStageFit:
    """Brain score through the loss: r = g(L(N, D)), g monotone decreasing.

    Stage one is the Chinchilla loss law; stage two an isotonic (monotone, non-parametric)
    link from validation loss to brain score. It asks only that a lower loss never predicts
    a lower score, so it needs no ceiling; it does not extrapolate beyond the losses seen
    (predictions are clipped to the range of the fitted link).
    """

    loss_law: LawFit
    link: Any  # sklearn.isotonic.IsotonicRegression, decreasing
    spearman: float  # rank correlation of loss and score over the trials (sign check)

    def predict(self, N: Any, D: Any) -> np.ndarray:
        return self.link.predict(np.atleast_1d(self.loss_law.predict(N, D)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "form": "two_stage", "loss_law": self.loss_law.to_dict(), "spearman_loss_score": self.spearman,
            "link_loss": self.link.X_thresholds_.tolist(), "link_score": self.link.y_thresholds_.tolist(),
        }


def fit_two_stage(N: Any, D: Any, loss: Any, score: Any, delta: float = 1e-3) -> TwoStageFit:
    """Fit the loss law, then a monotone decreasing link from loss to brain score.

    Parameters
    ----------
    N, D : array_like of shape (n_trials,)
        Non-embedding parameters and training tokens.
    loss : array_like of shape (n_trials,)
        Validation loss of each trial.
    score : array_like of shape (n_trials,)
        Brain score (e.g. mean Pearson r) of each trial.
    """
    from scipy.stats import spearmanr
    from sklearn.isotonic import IsotonicRegression

    law = fit_law(N, D, loss, form="chinchilla", delta=delta)
    loss = np.asarray(loss, float)
    score = np.asarray(score, float)
    if not np.isfinite(score).all():
        raise ValueError("fit_two_stage: score has NaN or infinite values; drop those trials first.")
    link = IsotonicRegression(increasing=False, out_of_bounds="clip").fit(loss, score)
    return TwoStageFit(law, link, float(spearmanr(loss, score).statistic))


def _cost_per_token(df: pd.DataFrame) -> np.ndarray:
    if "flops_per_token" in df.columns and df["flops_per_token"].notna().all():
        return df["flops_per_token"].to_numpy(float)
    return df["train_flops"].to_numpy(float) / df["tokens"].to_numpy(float)


def allocation_discrete(trials_df: pd.DataFrame, budgets: Any, metric: str = "val_loss",
                        fit: LawFit | None = None) -> pd.DataFrame:
    """Best configuration actually run within each compute budget, by the fitted law.

    For each budget C, the candidates are the configurations of the trial log (rows
    averaged over seeds) whose true cost ``tokens * flops_per_token`` is <= C; the pick is
    the one with the best *predicted* metric (the law smooths seed noise). The "fill"
    columns give, over the model architectures run, the best one when its data is scaled
    to use the whole budget (D = C / flops_per_token), i.e. the law's advice beyond the
    grid's data sizes.

    Parameters
    ----------
    trials_df : DataFrame
        Usable trials, with ``params_nonembed, tokens, train_flops`` (or
        ``flops_per_token``), ``metric`` and the axis columns present.
    budgets : array_like of shape (n_budgets,)
        Compute budgets in FLOPs.
    metric : str, default="val_loss"
        ``val_loss`` (minimised) or a brain score (maximised, ceiling-gap law).
    fit : LawFit, optional
        Law to use; fitted here when None.

    Returns
    -------
    DataFrame with one row per budget: ``budget, n_candidates``, the axis columns of the
    pick, ``N, D, cost, predicted, observed`` (seed mean), and ``fill_n_embd,
    fill_n_layer, fill_N, fill_D, fill_predicted``.
    """
    if metric not in trials_df.columns:
        raise ValueError(f"allocation_discrete: metric {metric!r} is not a column of the "
                         f"trial table; columns are {list(trials_df.columns)}.")
    if fit is None:
        fit = _metric_fit(trials_df, metric)
    maximize = _MAXIMIZE.get(metric, False)
    keys = _config_keys(trials_df)
    df = trials_df.assign(_cpt=_cost_per_token(trials_df))
    by = keys or ["params_nonembed", "tokens"]
    cfg = (df.groupby(by, dropna=False, sort=True)
           .agg(N=("params_nonembed", "mean"), D=("tokens", "mean"), cpt=("_cpt", "mean"),
                observed=(metric, "mean"))
           .reset_index())
    cfg["cost"] = cfg["D"] * cfg["cpt"]
    cfg["predicted"] = fit.predict(cfg["N"].to_numpy(), cfg["D"].to_numpy())
    arch_keys = [k for k in ("n_embd", "n_layer") if k in cfg.columns] or ["N"]
    arch = cfg.groupby(arch_keys).agg(N=("N", "mean"), cpt=("cpt", "mean")).reset_index()
    rows = []
    for C in np.atleast_1d(np.asarray(budgets, dtype=float)):
        row: dict[str, Any] = {"budget": C}
        cand = cfg[cfg["cost"] <= C]
        row["n_candidates"] = len(cand)
        if len(cand):
            k = cand["predicted"].idxmax() if maximize else cand["predicted"].idxmin()
            pick = cand.loc[k]
            for col in keys + ["N", "D", "cost", "predicted", "observed"]:
                row[col] = pick[col]
        fill_D = C / arch["cpt"].to_numpy()
        fill_pred = fit.predict(arch["N"].to_numpy(), fill_D)
        kk = int(np.argmax(fill_pred) if maximize else np.argmin(fill_pred))
        for col in ("n_embd", "n_layer"):
            if col in arch.columns:
                row[f"fill_{col}"] = arch[col].iloc[kk]
        row.update(fill_N=arch["N"].iloc[kk], fill_D=fill_D[kk],
                   fill_predicted=fill_pred[kk])
        rows.append(row)
    cols = (["budget", "n_candidates"] + keys + ["N", "D", "cost", "predicted", "observed",
                                                 "fill_n_embd", "fill_n_layer", "fill_N",
                                                 "fill_D", "fill_predicted"])
    return pd.DataFrame(rows).reindex(columns=cols)  # NaN where no config fits C


def _architectures(trials_df: pd.DataFrame) -> pd.DataFrame:
    """Unique model architectures run: N and mean training FLOPs per token."""
    df = trials_df.assign(_cpt=_cost_per_token(trials_df))
    keys = [k for k in ("n_embd", "n_layer") if k in df.columns] or ["params_nonembed"]
    return (df.groupby(keys).agg(N=("params_nonembed", "mean"), cpt=("_cpt", "mean"))
            .reset_index())


def config_frontier(fit: LawFit, trials_df: pd.DataFrame, budgets: Any,
                    level: float | None = None) -> Any:
    """Predicted metric at the best architecture run for each budget, at its true cost.

    For every architecture of the trial log (``n_embd, n_layer``) the data that a budget
    C buys is ``D = C / flops_per_token``; the frontier is the best predicted metric over
    architectures. Unlike :meth:`LawFit.frontier` (closed form under C = k N D) it uses
    the true per-token cost, which for small GPT-2s is dominated by the LM head.

    Parameters
    ----------
    fit : LawFit
        Fitted law of the metric.
    trials_df : DataFrame
        Usable trials (``params_nonembed, tokens, train_flops`` or ``flops_per_token``).
    budgets : array_like of shape (n_budgets,)
        Compute budgets (FLOPs).
    level : float, optional
        If given and the fit has bootstrap estimates, also return the percentile band.

    Returns
    -------
    ndarray of shape (n_budgets,), or (value, lo, hi) when ``level`` is given.
    """
    arch = _architectures(trials_df)
    C = np.atleast_1d(np.asarray(budgets, dtype=float))
    N = arch["N"].to_numpy()[None, :]
    D = C[:, None] / arch["cpt"].to_numpy()[None, :]
    pick = np.max if fit.form == "ceiling_gap" else np.min

    def best(f: LawFit) -> np.ndarray:
        return pick(f.predict(N, D), axis=1)

    value = best(fit)
    if level is None:
        return value
    curves = [best(LawFit(*row, form=fit.form, ceiling=fit.ceiling)) for row in ([] if fit.boot is None else fit.boot)]
    return (value, *_band(curves, value.shape, level))


def reference_value(s: pd.Series) -> Any:
    """The reference value of an axis: its most common value; ties go to the largest (the reference is usually big)."""
    counts = s.value_counts(dropna=True)
    top = counts[counts == counts.max()].index
    try:
        return max(top)
    except TypeError:
        return top[0]


def _mean_ci(v: np.ndarray, level: float = 0.95) -> tuple[float, float, float, float]:
    v = v[np.isfinite(v)]
    n = v.size
    if n == 0:
        return math.nan, math.nan, math.nan, math.nan
    m = float(v.mean())
    if n < 2:
        return m, math.nan, math.nan, math.nan
    se = float(v.std(ddof=1) / math.sqrt(n))
    t = float(stats.t.ppf(0.5 + level / 2, n - 1))
    return m, m - t * se, m + t * se, se


def axis_effects(trials_df: pd.DataFrame, metric: str,
                 axes: Sequence[str] = AXES, reference: dict[str, Any] | None = None
                 ) -> pd.DataFrame:
    """Mean metric per value of each axis, other axes held at the reference config.

    For axis X the rows used are those whose other axes equal the reference config (by
    default the most common value of each axis; ties go to the largest value). When that
    leaves fewer than 2 values of X, all rows are used (a marginal mean) and ``held`` says
    so. CIs are t-based 95 % intervals over trials (seeds and any unheld axes).

    Parameters
    ----------
    trials_df : DataFrame
        Usable trials with ``metric`` and the axis columns.
    metric : str
        Column to summarise (e.g. ``brain_r_mean``, ``val_loss``).
    axes : sequence of str, default=AXES
        Axis columns; those missing from the table are skipped.
    reference : dict, optional
        Reference value per axis, overriding the most common value.

    Returns
    -------
    DataFrame with columns ``axis, value, n, mean, ci_lo, ci_hi, se, held, reference``.
    """
    if metric not in trials_df.columns:
        raise ValueError(f"axis_effects: metric {metric!r} is not a column of the trial "
                         f"table; columns are {list(trials_df.columns)}.")
    axes = [a for a in axes if a in trials_df.columns]
    ref = {a: reference_value(trials_df[a]) for a in axes if trials_df[a].notna().any()}
    ref.update(reference or {})
    rows = []
    for ax in axes:
        others = [o for o in axes if o != ax and o in ref]
        sel = np.ones(len(trials_df), dtype=bool)
        for o in others:
            sel &= (trials_df[o] == ref[o]).to_numpy()
        sub, held = trials_df[sel], "reference"
        if sub[ax].nunique() < 2:
            sub, held = trials_df, "marginal"
        ref_txt = ", ".join(f"{o}={ref[o]}" for o in others) if held == "reference" \
            else "all rows (too few at the reference config)"
        for val, g in sub.groupby(ax, sort=True):
            m, lo, hi, se = _mean_ci(g[metric].to_numpy(float))
            rows.append(dict(axis=ax, value=val, n=len(g), mean=m, ci_lo=lo, ci_hi=hi,
                             se=se, held=held, reference=ref_txt))
    return pd.DataFrame(rows, columns=["axis", "value", "n", "mean", "ci_lo", "ci_hi",
                                       "se", "held", "reference"])


_SUMMARY_SCORES = ("brain_r_mean", "brain_r_max", "brain_r_top10")


def score_families(trials_df: pd.DataFrame) -> list[str]:
    """The parcel families with a ``brain_r_<family>`` column (simulated brains), in column order."""
    return [c.removeprefix("brain_r_") for c in trials_df.columns
            if c.startswith("brain_r_") and c not in _SUMMARY_SCORES]


def training_effect(trials_df: pd.DataFrame) -> pd.DataFrame:
    """What training adds to the brain score, per parcel family, against seed noise.

    Compares the untrained controls (``control == "untrained"``: the reference model with
    its initial weights, one per seed) with the trained trials: the same config trained, at
    the same seeds, and the best trained trial of the sweep. The seed noise is the standard
    deviation over the seeds of the trained reference (ddof 1; NaN with fewer than 2 seeds).

    Returns
    -------
    DataFrame, one row per score (``brain_r_mean`` first, then each family), with columns
    ``score, untrained, untrained_sd, trained, seed_sd, n_seeds, gain, gain_ci_lo,
    gain_ci_hi, best, best_trial, best_gain, margin, separates, codes, best_over_codes``:
    ``gain`` is trained minus untrained at the reference (95 % Welch interval over seeds),
    ``best_gain`` the best trained trial minus the untrained mean, ``margin`` = max(5 seed
    s.d., 0.05), and ``separates`` says whether ``best_gain`` exceeds it. ``codes`` is the
    ``codes`` control's score (the VQ codes alone, no model; NaN without one) and
    ``best_over_codes`` the best trained trial minus it: what a model adds to its input.
    Empty without untrained control rows.
    """
    cols = ["score", "untrained", "untrained_sd", "trained", "seed_sd", "n_seeds", "gain",
            "gain_ci_lo", "gain_ci_hi", "best", "best_trial", "best_gain", "margin", "separates",
            "codes", "best_over_codes"]
    controls = control_rows(trials_df, "untrained")
    codes = control_rows(trials_df, "codes")
    usable, _ = _split_usable(trials_df)
    if controls.empty or usable.empty:
        return pd.DataFrame(columns=cols)
    keys = _control_keys(controls)
    ref = controls.groupby(keys).size().idxmax()  # the reference: the control config with the most seeds
    ref = dict(zip(keys, ref if isinstance(ref, tuple) else (ref,)))
    controls = controls[_same(controls, ref)]
    matched = usable[_same(usable, ref)]
    rows = []
    for score in ["brain_r_mean"] + [f"brain_r_{f}" for f in score_families(trials_df)]:
        c = controls[score].to_numpy(float)
        t = matched[score].to_numpy(float) if score in matched else np.array([])
        c, t = c[np.isfinite(c)], t[np.isfinite(t)]
        if not len(c) or not usable[score].notna().any():
            continue
        sd = float(np.std(t, ddof=1)) if len(t) >= 2 else math.nan
        gain = float(t.mean() - c.mean()) if len(t) else math.nan
        lo, hi = _welch_ci(t, c)
        best_i = usable[score].idxmax()
        best = float(usable.loc[best_i, score])
        margin = max(5 * sd, 0.05) if math.isfinite(sd) else 0.05
        code = float(codes[score].mean()) if score in codes and codes[score].notna().any() else math.nan
        rows.append(dict(
            score=score, untrained=float(c.mean()), untrained_sd=float(np.std(c, ddof=1)) if len(c) >= 2 else math.nan,
            trained=float(t.mean()) if len(t) else math.nan, seed_sd=sd, n_seeds=len(t), gain=gain,
            gain_ci_lo=lo, gain_ci_hi=hi, best=best, best_trial=str(usable.loc[best_i, "trial_id"]),
            best_gain=best - float(c.mean()), margin=margin, separates=bool(best - c.mean() > margin),
            codes=code, best_over_codes=best - code,
        ))
    return pd.DataFrame(rows, columns=cols)


def _control_keys(df: pd.DataFrame) -> list[str]:
    """The axes that match a control with its trained twin (a control has no data schedule)."""
    return [a for a in ("data_frames", "n_embd", "n_layer", "n_head", "dtype") if a in df.columns]


def _same(df: pd.DataFrame, config: dict[str, Any]) -> np.ndarray:
    sel = np.ones(len(df), dtype=bool)
    for k, v in config.items():
        sel &= (df[k] == v).to_numpy()
    return sel


def training_by_width(trials_df: pd.DataFrame, score: str = "brain_r_mean") -> pd.DataFrame:
    """Trained minus untrained per width: each untrained control config against the trained trials
    of the same config (every seed of each). Columns ``n_embd, untrained, trained, gain, n_trained``."""
    cols = ["n_embd", "untrained", "trained", "gain", "n_trained"]
    controls = control_rows(trials_df, "untrained")
    usable, _ = _split_usable(trials_df)
    if controls.empty or usable.empty or score not in controls:
        return pd.DataFrame(columns=cols)
    keys = _control_keys(controls)
    rows = []
    for config, group in controls.groupby(keys):
        config = dict(zip(keys, config if isinstance(config, tuple) else (config,)))
        t = usable.loc[_same(usable, config), score].to_numpy(float)
        if len(t):
            u = float(group[score].mean())
            rows.append(dict(n_embd=config["n_embd"], untrained=u, trained=float(t.mean()),
                             gain=float(t.mean()) - u, n_trained=len(t)))
    return pd.DataFrame(rows, columns=cols).sort_values("n_embd").reset_index(drop=True)


def _welch_ci(a: np.ndarray, b: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Welch t interval of mean(a) - mean(b); NaN when either has fewer than 2 values."""
    if len(a) < 2 or len(b) < 2:
        return math.nan, math.nan
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        d = float(a.mean() - b.mean())
        return d, d
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    h = float(stats.t.ppf(0.5 + level / 2, dof)) * se
    d = float(a.mean() - b.mean())
    return d - h, d + h


def dtype_comparison(trials_df: pd.DataFrame, baseline: str = "fp32") -> pd.DataFrame:
    """Speed ratio and score difference of half precision vs fp32 at matched configs.

    Configs are matched on ``n_embd, n_layer, n_head, data_frames`` (and ``seed`` when
    both dtypes share seeds, else seed means are compared). The speed ratio is the
    geometric mean over matched configs of ``tokens_per_s(half) / tokens_per_s(fp32)``;
    score differences are arithmetic means of ``half - fp32``. The paper's numbers
    (Ahmadi et al. 2024: fp16 1.17x faster, max-r 0.548 vs 0.547) sit beside ours.

    Parameters
    ----------
    trials_df : DataFrame
        Usable trials with ``dtype`` and ``tokens_per_s``.
    baseline : str, default="fp32"
        The reference dtype.

    Returns
    -------
    DataFrame with one row per non-baseline dtype: ``dtype, n_matched, speed_ratio,
    speed_ratio_min, speed_ratio_max, brain_r_max_diff, brain_r_mean_diff,
    val_loss_diff, paper_speed_ratio, paper_score_diff``. Empty when nothing matches.
    """
    cols = ["dtype", "n_matched", "speed_ratio", "speed_ratio_min", "speed_ratio_max",
            "brain_r_max_diff", "brain_r_mean_diff", "val_loss_diff",
            "paper_speed_ratio", "paper_score_diff"]
    if "dtype" not in trials_df.columns or "tokens_per_s" not in trials_df.columns:
        return pd.DataFrame(columns=cols)
    keys = [k for k in ("n_embd", "n_layer", "n_head", "data_frames") if k in trials_df]
    metrics = [m for m in ("tokens_per_s", "brain_r_max", "brain_r_mean", "val_loss")
               if m in trials_df.columns]
    mean = trials_df.groupby(keys + ["dtype"], dropna=False)[metrics].mean().reset_index()
    base = mean[mean["dtype"] == baseline]
    rows = []
    for dt in sorted(set(mean["dtype"]) - {baseline}):
        m = mean[mean["dtype"] == dt].merge(base, on=keys, suffixes=("", "_base"))
        ok = m[(m["tokens_per_s"] > 0) & (m["tokens_per_s_base"] > 0)]
        if ok.empty:
            continue
        ratio = ok["tokens_per_s"] / ok["tokens_per_s_base"]
        row = dict(dtype=dt, n_matched=len(ok),
                   speed_ratio=float(np.exp(np.log(ratio).mean())),
                   speed_ratio_min=float(ratio.min()), speed_ratio_max=float(ratio.max()))
        for met in ("brain_r_max", "brain_r_mean", "val_loss"):
            row[f"{met}_diff"] = float((ok[met] - ok[f"{met}_base"]).mean()) \
                if met in ok.columns else math.nan
        row.update(paper_speed_ratio=PAPER_DTYPE["speed_ratio"],
                   paper_score_diff=round(PAPER_DTYPE["score_diff"], 6))
        rows.append(row)
    return pd.DataFrame(rows, columns=cols)


# ---------------------------------------------------------------------------------------
# Honest findings: seed noise, ceiling sensitivity, backtest
# ---------------------------------------------------------------------------------------

_DIFFERS = 0.02  # relative change of an exponent (or the asymptote) that the report calls a difference
BACKTEST_WIDTH = 0.3  # decades of training FLOPs below the largest run that count as "the largest budget"


def seed_noise(trials_df: pd.DataFrame, metric: str) -> tuple[float, int]:
    """Pooled standard deviation of ``metric`` over seeds, and its degrees of freedom.

    Rows are grouped by config (the axes, not the seed); every group with two or more
    finite values adds ``n - 1`` degrees of freedom. ``(nan, 0)`` when no config was run
    at more than one seed: the noise of every effect is then unknown.
    """
    keys = _config_keys(trials_df)
    if not keys or metric not in trials_df.columns:
        return math.nan, 0
    ss, dof = 0.0, 0
    for _, g in trials_df.groupby(keys, dropna=False):
        v = g[metric].to_numpy(float)
        v = v[np.isfinite(v)]
        if len(v) >= 2:
            ss += float(((v - v.mean()) ** 2).sum())
            dof += len(v) - 1
    return (math.sqrt(ss / dof), dof) if dof else (math.nan, 0)


def _noise_ci(diff: float, se: float, dof: int, level: float = 0.95) -> tuple[float, float]:
    if not (math.isfinite(se) and dof > 0):
        return math.nan, math.nan
    h = float(stats.t.ppf(0.5 + level / 2, dof)) * se
    return diff - h, diff + h


def axis_contrasts(trials_df: pd.DataFrame, metric: str, axes: Sequence[str] = AXES) -> pd.DataFrame:
    """Effect of each axis from its smallest to its largest value, against seed noise.

    The means come from :func:`axis_effects` (other axes at the reference). The interval of
    the difference uses the pooled seed noise (:func:`seed_noise`):
    ``se = sd_seed * sqrt(1 / n_lo + 1 / n_hi)`` with its t quantile; without seeds it is
    NaN and ``verdict`` says the noise is unknown. ``verdict`` is ``"within seed noise"``
    when the 95 % interval holds 0, else ``"up"`` or ``"down"``.

    Returns
    -------
    DataFrame with columns ``axis, lo_value, hi_value, n_lo, n_hi, diff, ci_lo, ci_hi,
    seed_sd, seed_dof, verdict, held``; dtype is left to :func:`dtype_comparison`.
    """
    cols = ["axis", "lo_value", "hi_value", "n_lo", "n_hi", "diff", "ci_lo", "ci_hi", "seed_sd", "seed_dof",
            "verdict", "held"]
    if metric not in trials_df.columns or trials_df.empty:
        return pd.DataFrame(columns=cols)
    sd, dof = seed_noise(trials_df, metric)
    effects = axis_effects(trials_df, metric, axes=[a for a in axes if a != "dtype"])
    rows = []
    for ax, e in effects.groupby("axis", sort=False):
        e = e[np.isfinite(e["mean"].to_numpy(float))]
        if len(e) < 2:
            continue
        lo, hi = e.iloc[0], e.iloc[-1]
        diff = float(hi["mean"] - lo["mean"])
        ci = _noise_ci(diff, sd * math.sqrt(1 / lo["n"] + 1 / hi["n"]), dof)
        verdict = ("noise unknown" if not math.isfinite(ci[0]) else "within seed noise" if ci[0] <= 0 <= ci[1]
                   else "up" if diff > 0 else "down")
        rows.append(dict(axis=ax, lo_value=lo["value"], hi_value=hi["value"], n_lo=int(lo["n"]), n_hi=int(hi["n"]),
                         diff=diff, ci_lo=ci[0], ci_hi=ci[1], seed_sd=sd, seed_dof=dof, verdict=verdict,
                         held=lo["held"]))
    return pd.DataFrame(rows, columns=cols)


def ceiling_sensitivity(usable: pd.DataFrame, fit: LawFit) -> dict[str, Any]:
    """The brain law refitted with the other ceiling: does the answer move with it?

    With a known noise ceiling the other fit estimates it (``ceiling=None``); with an
    estimated ceiling the other fit takes c = 1, the bound of Pearson r. No bootstrap.

    Returns
    -------
    dict with ``used`` and ``other`` (labels), ``ceilings`` (the two values), ``table``
    (DataFrame ``parameter, used, other, rel_diff`` for alpha, beta, a, b and the
    asymptote), ``differs`` (an exponent or the asymptote moves by more than 2 %),
    ``other_identified`` and ``other_fit`` (the :class:`LawFit`).
    """
    if fit.form != "ceiling_gap":
        raise ValueError(f"ceiling_sensitivity: the fit must be form='ceiling_gap'; got {fit.form!r}.")
    used, other = ("fitted ceiling", "ceiling 1") if fit.ceiling_estimated else ("given ceiling", "fitted ceiling")
    N, D = usable["params_nonembed"].to_numpy(float), usable["tokens"].to_numpy(float)
    alt = fit_law(N, D, usable["brain_r_mean"].to_numpy(float), form="ceiling_gap", delta=fit.delta,
                  ceiling=1.0 if fit.ceiling_estimated else None)
    rows = []
    for p in ("alpha", "beta", "a", "b", "asymptote"):
        a, b = float(getattr(fit, p)), float(getattr(alt, p))
        rows.append(dict(parameter=p, used=a, other=b, rel_diff=(b - a) / abs(a) if a else math.nan))
    table = pd.DataFrame(rows)
    moved = table["rel_diff"].abs().to_numpy(float)
    return dict(used=used, other=other, ceilings=(fit.ceiling, alt.ceiling), table=table,
                differs=bool(np.any(~np.isfinite(moved) | (moved > _DIFFERS))), other_identified=alt.identified,
                other_fit=alt)


def backtest(usable: pd.DataFrame, bootstrap: int = 100, seed: int = 0, level: float = 0.95,
             width: float = BACKTEST_WIDTH) -> dict[str, Any]:
    """Fit the laws without the largest budget's trials, then predict those trials.

    The held-out trials are those within ``width`` decades of the largest training FLOPs.
    On the rest the N, D law of ``val_loss`` and ``brain_r_mean`` is fitted (as in
    :func:`analyze`, with ``bootstrap`` re-fits) and so is each metric's compute law on its
    Pareto front against training FLOPs. Each held-out trial is then predicted; the
    interval is the law's bootstrap band, widened in quadrature by the noise of a single
    trial, ``1.96 sd``: ``sd`` is the seed noise (:func:`seed_noise`), or without seeds the
    residual scatter of the fitted trials about the N, D law. The compute law predicts the
    frontier, so it is checked on the best held-out trial only.

    Returns
    -------
    dict with ``held`` (trial ids), ``n_fit``, ``cut`` (the FLOPs above which trials were
    held out), ``table`` (DataFrame, one row per law and held-out trial: ``law, metric,
    trial_id, train_flops, observed, predicted, lo, hi, error, rel_error, inside,
    interval``) and ``errors`` (law -> why it was not backtested). When the sweep is too
    small, ``error`` says why and the table is empty.
    """
    cols = ["law", "metric", "trial_id", "train_flops", "observed", "predicted", "lo", "hi", "error",
            "rel_error", "inside", "interval"]
    out: dict[str, Any] = dict(held=[], n_fit=0, cut=math.nan, table=pd.DataFrame(columns=cols), errors={},
                               error=None)
    if usable.empty:
        out["error"] = "no usable trials"
        return out
    logc = np.log10(usable["train_flops"].to_numpy(float))
    out["cut"] = cut = float(10 ** (logc.max() - width))
    held_mask = logc > logc.max() - width
    fit_df, held = usable[~held_mask], usable[held_mask]
    out["held"], out["n_fit"] = held["trial_id"].tolist(), len(fit_df)
    try:
        _check_fit_axes(fit_df)
    except ValueError as err:
        out["error"] = (f"without the {len(held)} trial(s) of the largest budget (train_flops > {cut:.3g}) "
                        f"{str(err).removeprefix('analyze: ')}")
        return out
    rows = []
    for metric in ("val_loss", "brain_r_mean"):
        try:
            fit = _metric_fit(fit_df, metric, bootstrap=bootstrap, seed=seed)
        except ValueError as err:
            out["errors"][f"{metric} (N, D law)"] = str(err)
            continue
        noise, how = _trial_noise(usable, fit_df, fit, metric)
        N, D = held["params_nonembed"].to_numpy(float), held["tokens"].to_numpy(float)
        pred, (lo, hi) = fit.predict(N, D), fit.predict_interval(N, D, level)
        rows += _backtest_rows("N, D law", metric, held, pred, lo, hi, noise, how)
        front = fit_df[pareto_front(fit_df["train_flops"], fit_df[metric], minimize=not _MAXIMIZE[metric])]
        best = held.loc[[held[metric].idxmax() if _MAXIMIZE[metric] else held[metric].idxmin()]]
        laws, why = compute_laws(fit_df, {"front": dict(metric=metric, cost="train_flops",
                                                        trial_ids=front["trial_id"].tolist())},
                                 bootstrap=bootstrap, seed=seed)
        if "front" not in laws:
            out["errors"][f"{metric} (compute law)"] = why["front"] + " (without the largest budget)"
            continue
        law = laws["front"]
        C = best["train_flops"].to_numpy(float)
        rows += _backtest_rows("compute law (FLOPs)", metric, best, law.predict(C), *law.predict_interval(C, level),
                               noise, how)
    out["table"] = pd.DataFrame(rows, columns=cols)
    return out


def _trial_noise(usable: pd.DataFrame, fit_df: pd.DataFrame, fit: LawFit, metric: str) -> tuple[float, str]:
    """``1.96 sd`` of one trial about the law, and how ``sd`` was found: the seed noise of ``usable``, or
    without seeds the residual scatter of the fitted trials ``fit_df`` about ``fit``."""
    sd, _ = seed_noise(usable, metric)
    if math.isfinite(sd):
        return 1.96 * sd, "law band + seed noise"
    resid = fit_df[metric].to_numpy(float) - fit.predict(fit_df["params_nonembed"], fit_df["tokens"])
    sd = float(np.sqrt((resid ** 2).sum() / max(1, len(resid) - len(_PARAMS))))
    return 1.96 * sd, "law band + residual scatter (no seeds)"


def _widen(pred: np.ndarray, lo: np.ndarray, hi: np.ndarray, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """The band's half-widths, each widened in quadrature by one trial's noise."""
    return pred - np.hypot(pred - lo, noise), pred + np.hypot(hi - pred, noise)


def trial_interval(fit: LawFit, usable: pd.DataFrame, N: Any, D: Any, level: float = 0.95
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Where one new trial at (N, D) should land: the law's prediction and an interval for a single trial.

    The interval is the law's bootstrap band (:meth:`LawFit.predict_interval`) widened in quadrature by one
    trial's noise, as in :func:`backtest`: ``1.96 sd``, ``sd`` the seed noise of ``usable`` (the trials the
    law was fitted on), or without seeds their residual scatter about the law.

    Returns
    -------
    predicted, lo, hi : ndarray of the broadcast shape of N and D
    how : str
        Which noise widened the band.
    """
    metric = "val_loss" if fit.form == "chinchilla" else "brain_r_mean"
    noise, how = _trial_noise(usable, usable, fit, metric)
    pred = fit.predict(N, D)
    return (pred, *_widen(pred, *fit.predict_interval(N, D, level), noise), how)


def _backtest_rows(law: str, metric: str, held: pd.DataFrame, pred: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                   noise: float, how: str) -> list[dict[str, Any]]:
    obs = held[metric].to_numpy(float)
    lo, hi = _widen(pred, lo, hi, noise)
    return [dict(law=law, metric=metric, trial_id=t, train_flops=c, observed=o, predicted=p, lo=a, hi=b,
                 error=p - o, rel_error=(p - o) / abs(o) if o else math.nan,
                 inside=bool(a <= o <= b) if np.isfinite(a) else None, interval=how)
            for t, c, o, p, a, b in zip(held["trial_id"], held["train_flops"], obs, pred, lo, hi)]


_AXIS_NAMES = {"n_embd": "width", "n_layer": "depth", "n_head": "heads", "data_frames": "data (frames)"}


def _pm(x: float, digits: int = 3) -> str:
    """Signed, with one more digit when the value would round to zero."""
    return f"{x:+.{digits + 1 if abs(x) < 0.5 * 10 ** -digits else digits}f}"


def _with_ci(x: float, lo: float, hi: float, unit: str = "", digits: int = 3) -> str:
    ci = f" [{_pm(lo, digits)}, {_pm(hi, digits)}]" if math.isfinite(lo) else ""
    return f"{_pm(x, digits)}{unit}{ci}"


def short_value(v: Any) -> str:
    """An axis value for a label: 10000 -> 10K, 6000000 -> 6M, 55063 -> 55.1K."""
    if isinstance(v, (int, np.integer)) or (isinstance(v, (float, np.floating)) and float(v).is_integer()):
        v = int(v)
        for div, suf in ((1_000_000, "M"), (1_000, "K")):
            if v >= div and v % div == 0:
                return f"{v // div}{suf}"
            if v >= 10 * div:
                return f"{v / div:.3g}{suf}"
    return str(v)


def findings(analysis: dict[str, Any]) -> list[dict[str, Any]]:
    """Plain sentences on what a sweep found, each with its number and 95 % CI.

    Every effect is stated against seed noise (:func:`seed_noise`); where no config was run
    at more than one seed, the sentence says that the noise is unknown. In order: seed
    noise, what training adds (:func:`training_effect`), each axis from its smallest to its
    largest value (:func:`axis_contrasts`, brain score and loss), data against width, the
    dtype speed ratio and score difference, the laws the sweep does not identify, the
    backtest and the ceiling sensitivity.

    Returns
    -------
    list of dict with ``topic`` and ``text`` (and the numbers: ``value, ci_lo, ci_hi``
    where there is one).
    """
    out: list[dict[str, Any]] = []

    def say(topic: str, text: str, value: float = math.nan, lo: float = math.nan, hi: float = math.nan) -> None:
        out.append(dict(topic=topic, text=text, value=value, ci_lo=lo, ci_hi=hi))

    usable = analysis["usable"]
    if usable.empty:
        say("trials", "No usable trial: nothing to report yet.")
        return out
    sd, dof = seed_noise(usable, "brain_r_mean")
    if dof:
        say("seed noise", f"Seed noise: the brain score varies by {sd:.4f} r (s.d.) between seeds of the same "
                          f"config ({dof} degree(s) of freedom); every interval below uses it.", sd)
    else:
        say("seed noise", "No config was run at more than one seed, so the noise of every effect below is unknown "
                          "(add seeds at the reference: axes.seeds).")

    effect = analysis.get("training_effect")
    if effect is not None and not effect.empty:
        e = effect.iloc[0]
        verdict = ("" if not math.isfinite(e["gain_ci_lo"]) else ", within seed noise"
                   if e["gain_ci_lo"] <= 0 <= e["gain_ci_hi"] else "")
        noise = "" if math.isfinite(e["gain_ci_lo"]) else " (fewer than 2 seeds on a side: noise unknown)"
        say("training", f"Training adds {_with_ci(e['gain'], e['gain_ci_lo'], e['gain_ci_hi'], ' r')} to the mean "
                        f"brain score at the reference (untrained {e['untrained']:.3f} → trained {e['trained']:.3f}, "
                        f"{int(e['n_seeds'])} seed(s)){verdict}{noise}; the best trial adds {_pm(e['best_gain'])} r.",
            e["gain"], e["gain_ci_lo"], e["gain_ci_hi"])
        fam = effect.iloc[1:].dropna(subset=["gain"])
        if len(fam):
            top = fam.loc[fam["gain"].idxmax()]
            say("training", f"Its largest gain is in the {top['score'].removeprefix('brain_r_')} parcels: "
                            f"{_with_ci(top['gain'], top['gain_ci_lo'], top['gain_ci_hi'], ' r')}.",
                top["gain"], top["gain_ci_lo"], top["gain_ci_hi"])
    else:
        say("training", "No untrained control, so what training adds is not measured (axes.controls: [untrained]).")
    controls = analysis.get("controls")
    codes = control_rows(controls, "codes") if controls is not None and len(controls) else pd.DataFrame()
    if len(codes) and codes["brain_r_mean"].notna().any() and usable["brain_r_mean"].notna().any():
        code, best = float(codes["brain_r_mean"].mean()), float(usable["brain_r_mean"].max())
        over = best - code
        margin = (effect.iloc[0]["margin"] if effect is not None and not effect.empty
                  else max(5 * sd, 0.05) if dof else 0.05)  # training_effect's margin
        said = f"the margin {margin:.3f} (5 seed s.d., at least 0.05)"
        verdict = ("so no model here beats its own input" if over <= 0 else
                   f"below {said}: the models add little to their input" if over <= margin else
                   f"beyond {said}: the models add to their input")
        say("codes", f"The VQ codes alone, with no model, score {code:.3f}; the best trained trial "
                     f"{best:.3f} ({_pm(over)} r), {verdict}.", over)

    contrasts = {m: axis_contrasts(usable, m) for m in ("brain_r_mean", "val_loss")}
    loss = contrasts["val_loss"].set_index("axis") if len(contrasts["val_loss"]) else None
    for c in contrasts["brain_r_mean"].itertuples():
        name = _AXIS_NAMES.get(c.axis, c.axis)
        span = f"{short_value(c.lo_value)}→{short_value(c.hi_value)}"
        what = (f"within seed noise ({_with_ci(c.diff, c.ci_lo, c.ci_hi, ' r')})" if c.verdict == "within seed noise"
                else f"{_with_ci(c.diff, c.ci_lo, c.ci_hi, ' r')}" + (", noise unknown" if c.verdict == "noise unknown"
                                                                      else ""))
        extra = ""
        if loss is not None and c.axis in loss.index:
            lc = loss.loc[c.axis]
            extra = f"; loss {_with_ci(lc['diff'], lc['ci_lo'], lc['ci_hi'])}"
        held = "" if c.held == "reference" else " (marginal: all trials, not the reference line)"
        say(f"axis {c.axis}", f"{name[0].upper() + name[1:]} {span}: brain score {what}{extra}{held}.",
            c.diff, c.ci_lo, c.ci_hi)
    by = contrasts["brain_r_mean"].set_index("axis") if len(contrasts["brain_r_mean"]) else None
    if by is not None and {"data_frames", "n_embd"} <= set(by.index):
        d, w = by.loc["data_frames", "diff"], by.loc["n_embd", "diff"]
        more = "more" if abs(d) > abs(w) else "less"
        say("data vs width", f"Over the ranges swept, data moves the brain score {more} than width "
                             f"({_pm(d)} vs {_pm(w)} r).")

    dt = analysis.get("dtype")
    if dt is not None and not dt.empty:
        for r in dt.itertuples():
            n = int(r.n_matched)
            diff = r.brain_r_mean_diff
            lo, hi = _noise_ci(diff, sd * math.sqrt(2 / n), dof) if dof else (math.nan, math.nan)
            score = ("within seed noise" if math.isfinite(lo) and lo <= 0 <= hi else
                     "noise unknown" if not math.isfinite(lo) else "beyond seed noise")
            say("dtype", f"{r.dtype} runs at {r.speed_ratio:.2f}× the speed of fp32 (range {r.speed_ratio_min:.2f}–"
                         f"{r.speed_ratio_max:.2f} over {n} matched config(s); paper {PAPER_DTYPE['speed_ratio']}×); "
                         f"brain score {_with_ci(diff, lo, hi, ' r')}, {score}.", r.speed_ratio)

    weak = [f"the {_LAW_NAMES.get(m, m)} law" for m, f in analysis["fits"].items() if f is not None and not f.identified]
    weak += [f"the compute law of {_LAW_NAMES[k.split('_vs_')[0]]} vs {_LAW_NAMES[k.split('_vs_')[1]]}"
             for k, f in analysis.get("compute_laws", {}).items() if not f.identified]
    if weak:
        say("laws", "Not identified by this sweep (a parameter at a bound, or an exponent CI wider than 10×): "
                    + ", ".join(weak) + ". They describe these trials; none is used for allocation.")
    elif any(f is not None for f in analysis["fits"].values()):
        say("laws", "Every fitted law is identified by this sweep.")

    bt = analysis.get("backtest")
    if bt is not None:
        if bt["error"]:
            say("backtest", f"No backtest: {bt['error']}.")
        else:
            parts = []
            for (law, metric), g in bt["table"].groupby(["law", "metric"], sort=False):
                judged = g["inside"].dropna()
                inside = f" ({int(judged.sum())} of {len(judged)} inside the 95 % interval)" if len(judged) else ""
                kind = "law" if law == "N, D law" else "compute law"
                parts.append(f"{_LAW_NAMES.get(metric, metric)} {kind} "
                             f"{100 * float(np.median(g['rel_error'])):+.1f} %{inside}")
            say("backtest", f"Backtest: fitted without the largest budget ({len(bt['held'])} trial(s)), the laws "
                            f"predict it with median errors of {'; '.join(parts)}; a compute law is checked on "
                            "the best of those trials." if parts else f"No backtest: {'; '.join(bt['errors'].values())}.")

    cs = analysis.get("ceiling_sensitivity")
    if cs is not None and cs["differs"]:
        tb = cs["table"].set_index("parameter")
        say("ceiling", f"The brain law depends on its ceiling: with the {cs['other']} ({cs['ceilings'][1]:.3g}) "
                       f"instead of the {cs['used']} ({cs['ceilings'][0]:.3g}), β moves from "
                       f"{tb.loc['beta', 'used']:.3f} to {tb.loc['beta', 'other']:.3f} and α from "
                       f"{tb.loc['alpha', 'used']:.3f} to {tb.loc['alpha', 'other']:.3f}"
                       + ("" if cs["other_identified"] else " (that fit is not identified)") + ".")
    return out


_LAW_NAMES = {"val_loss": "loss", "brain_r_mean": "brain score", "train_flops": "FLOPs", "gpu_hours": "GPU-hours"}


# ---------------------------------------------------------------------------------------
# The whole analysis
# ---------------------------------------------------------------------------------------


def is_control(df: pd.DataFrame) -> pd.Series:
    """Mask of the control rows of a trial table (``control`` non-empty; trained rows have "")."""
    if "control" not in df.columns:
        return pd.Series(False, index=df.index)
    return df["control"].map(lambda c: isinstance(c, str) and bool(c))


def control_rows(df: pd.DataFrame, kind: str | None = None) -> pd.DataFrame:
    """The finished control trials (``control`` non-empty, TERMINATED) of a trial table; with
    ``kind`` only those of that control (``"untrained"``, ``"codes"``)."""
    rows = is_control(df) & (df["status"] == "TERMINATED")
    if kind is not None and "control" in df.columns:
        rows &= df["control"] == kind
    return df[rows].reset_index(drop=True)


def extrapolation_checks(trials: pd.DataFrame) -> pd.DataFrame:
    """Predicted against observed for the extrapolation trials of a log: one row per trial and metric.

    Returns
    -------
    DataFrame with ``trial_id, status, extrapolate_k, n_embd, data_frames, train_flops, pick, metric,
    predicted, lo, hi, observed, error, inside, note``; empty when the log has no extrapolation trial.
    """
    cols = ["trial_id", "status", "extrapolate_k", "n_embd", "data_frames", "train_flops", "pick", "metric",
            "predicted", "lo", "hi", "observed", "error", "inside", "note"]
    if "role" not in trials.columns:
        return pd.DataFrame(columns=cols)
    rows = []
    for _, t in trials[trials["role"] == EXTRAPOLATION].iterrows():
        for m in ("val_loss", "brain_r_mean"):
            obs, pred = _as_float(t.get(m)), _as_float(t.get(f"predicted_{m}"))
            lo, hi = _as_float(t.get(f"predicted_{m}_lo")), _as_float(t.get(f"predicted_{m}_hi"))
            rows.append(dict(trial_id=t["trial_id"], status=t["status"], extrapolate_k=t.get("extrapolate_k"),
                             n_embd=t.get("n_embd"), data_frames=t.get("data_frames"),
                             train_flops=t.get("train_flops"), pick=t.get("extrapolate_pick"), metric=m,
                             predicted=pred, lo=lo, hi=hi, observed=obs, error=pred - obs,
                             inside=bool(lo <= obs <= hi) if math.isfinite(lo + hi + obs) else None,
                             note=t.get("prediction_note") or ""))
    return pd.DataFrame(rows, columns=cols)


def usable_trials(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of a trial log that the laws are fitted on: finished, trained (no control), not an
    extrapolation check, with finite positive cost and scores (:func:`analyze` lists the others)."""
    return _split_usable(df)[0]


def fit_metric(usable: pd.DataFrame, metric: str, bootstrap: int = 0, seed: int = 0) -> LawFit:
    """The N, D law of ``metric`` on usable trials, as :func:`analyze` fits it: ``chinchilla`` for
    ``val_loss``, ``ceiling_gap`` (with the logged ceiling when there is one) for a brain score."""
    return _metric_fit(usable, metric, bootstrap=bootstrap, seed=seed)


def _split_usable(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Usable rows, and a table (trial_id, status, reason) of the rows left out."""
    missing = [c for c in _REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"analyze: the trial table lacks column(s) {missing}; it has "
                         f"{list(df.columns)}. Read it with brainray.triallog.")
    reasons = []
    keep = np.ones(len(df), dtype=bool)
    for i, (_, row) in enumerate(df.iterrows()):
        why = []
        control = row.get("control", None)
        if isinstance(control, str) and control:
            why.append(f"control ({control}): compared with the trained trials, never fitted")
        elif row.get("role", None) == EXTRAPOLATION:
            why.append("extrapolation: checks the prediction it was run for, never fitted")
        elif row["status"] != "TERMINATED":
            err = row.get("error", None)
            err = "" if err is None or (isinstance(err, float) and math.isnan(err)) \
                else f": {str(err).strip().splitlines()[-1][:160]}" if str(err).strip() \
                else ""
            why.append(f"status {row['status']}{err}")
        else:
            nan = [c for c in _FIT_COLUMNS if not np.isfinite(_as_float(row[c]))]
            if nan:
                why.append("NaN " + ", ".join(nan))
            bad = [c for c in ("params_nonembed", "tokens", "train_flops", "val_loss")
                   if c not in nan and _as_float(row[c]) <= 0]
            if bad:
                why.append("non-positive " + ", ".join(bad))
        if why:
            keep[i] = False
            reasons.append(dict(trial_id=row["trial_id"], status=row["status"],
                                reason="; ".join(why)))
    left = pd.DataFrame(reasons, columns=["trial_id", "status", "reason"])
    return df[keep].reset_index(drop=True), left


def _as_float(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _check_fit_axes(df: pd.DataFrame) -> None:
    if len(df) < MIN_TRIALS:
        raise ValueError(f"analyze: only {len(df)} usable trial(s); a scaling-law fit "
                         f"needs at least {MIN_TRIALS}. Run a larger sweep (the smoke "
                         "preset is too small to fit a law; write_report still writes "
                         "plots and tables).")
    for col, axes in (("params_nonembed", "n_embd or n_layer"), ("tokens", "data_frames")):
        vals = df[col].unique()
        if len(vals) < 2:
            raise ValueError(f"analyze: all {len(df)} usable trials have the same {col} "
                             f"({vals[0]:g}); the law needs at least 2 values. Sweep more "
                             f"than one value of {axes}.")


def analyze(trials_df: pd.DataFrame, budgets: Any = None, bootstrap: int = 200,
            seed: int = 0, strict: bool = True) -> dict[str, Any]:
    """Run the frontier analysis on a trial log.

    Leaves out failed trials (status other than TERMINATED) and rows with NaN or
    non-positive values in ``params_nonembed, tokens, train_flops, val_loss,
    brain_r_mean`` (listed with reasons), then fits the loss law (N = params_nonembed,
    D = tokens) and the brain ceiling-gap law (ceiling: the ``ceiling`` column when
    present, else estimated), finds Pareto fronts, per-axis effects, the dtype
    comparison and the compute-optimal allocation at several budgets.

    Parameters
    ----------
    trials_df : DataFrame
        The trial log (one row per trial; see DESIGN.md for the columns).
    budgets : array_like, optional
        Compute budgets (FLOPs) for the allocation table; default 5 log-spaced budgets
        from the smallest to the largest ``train_flops`` run, plus 10x the largest.
    bootstrap : int, default=200
        Bootstrap resamples for the CIs of each fit.
    seed : int, default=0
        Bootstrap seed.
    strict : bool, default=True
        If True, too few usable trials (< 5) or a single value of N or D raises
        ValueError. If False these are recorded in ``fit_errors`` and the rest of the
        analysis (fronts, effects, tables) is still done, as the report needs.

    Returns
    -------
    dict with keys
        ``n_trials, n_usable`` (int); ``usable`` (DataFrame); ``left_out`` (DataFrame:
        trial_id, status, reason); ``fits`` (dict metric -> LawFit or None);
        ``fit_errors`` (dict metric -> message); ``fronts`` (dict name -> {cost, metric,
        minimize, trial_ids}); ``effects`` (dict metric -> DataFrame); ``dtype``
        (DataFrame); ``budgets`` (ndarray); ``flops_per_param_token`` (float, median of
        train_flops / (N D), used by the closed-form allocation); ``allocation``
        (DataFrame, one row per budget and metric); ``training_effect``,
        ``training_by_width`` (DataFrames); ``compute_laws``, ``compute_law_errors``;
        ``backtest`` (:func:`backtest`); ``ceiling_sensitivity`` (:func:`ceiling_sensitivity`,
        None without a brain law); ``findings`` (:func:`findings`).

    Raises
    ------
    ValueError
        Missing columns; with ``strict``, too few usable trials or a single N or D.
    """
    if not isinstance(trials_df, pd.DataFrame):
        raise TypeError(f"analyze: trials_df must be a pandas DataFrame; got "
                        f"{type(trials_df).__name__}.")
    usable, left_out = _split_usable(trials_df)
    out: dict[str, Any] = dict(n_trials=len(trials_df), n_usable=len(usable),
                               usable=usable, left_out=left_out, fits={}, fit_errors={},
                               controls=control_rows(trials_df))
    try:
        _check_fit_axes(usable)
        fit_error = None
    except ValueError as err:
        if strict:
            raise
        fit_error = str(err)
    for metric in ("val_loss", "brain_r_mean"):
        out["fits"][metric] = None
        if fit_error is not None:
            out["fit_errors"][metric] = fit_error
            continue
        try:
            out["fits"][metric] = _metric_fit(usable, metric, bootstrap=bootstrap, seed=seed)
        except ValueError as err:
            if strict:
                raise
            out["fit_errors"][metric] = str(err)

    out["two_stage"] = None
    if fit_error is None and out["fits"].get("val_loss") is not None:
        out["two_stage"] = fit_two_stage(usable["params_nonembed"], usable["tokens"],
                                         usable["val_loss"], usable["brain_r_mean"])

    fronts = {}
    for metric, minimize in (("val_loss", True), ("brain_r_mean", False)):
        for cost in ("train_flops", "gpu_hours"):
            if cost in usable.columns and len(usable):
                mask = pareto_front(usable[cost], usable[metric], minimize=minimize)
                fronts[f"{metric}_vs_{cost}"] = dict(
                    cost=cost, metric=metric, minimize=minimize,
                    trial_ids=usable.loc[mask, "trial_id"].tolist())
    out["fronts"] = fronts
    out["effects"] = {m: axis_effects(usable, m) for m in ("val_loss", "brain_r_mean")}
    out["dtype"] = dtype_comparison(usable)
    out["training_effect"] = training_effect(trials_df)
    out["training_by_width"] = training_by_width(trials_df)
    out["compute_laws"], out["compute_law_errors"] = compute_laws(usable, fronts, min(bootstrap, 100), seed)
    out["backtest"] = backtest(usable, min(bootstrap, 100), seed)
    brain = out["fits"].get("brain_r_mean")
    out["ceiling_sensitivity"] = ceiling_sensitivity(usable, brain) if brain is not None else None

    if len(usable):
        ratio = usable["train_flops"] / (usable["params_nonembed"] * usable["tokens"])
        k = float(np.median(ratio))
        if budgets is None:
            lo, hi = usable["train_flops"].min(), usable["train_flops"].max()
            budgets = np.append(np.geomspace(lo, hi, 5) if hi > lo else [lo], 10 * hi)
    else:
        k = math.nan
        budgets = np.array([]) if budgets is None else budgets
    out["flops_per_param_token"] = k
    out["budgets"] = np.atleast_1d(np.asarray(budgets, dtype=float))
    tables = []
    out["allocation_skipped"] = {}
    for metric, fit in out["fits"].items():
        if fit is None:
            continue
        if not fit.identified:  # a law the sweep does not pin allocates nothing
            why = [f"{', '.join(fit.at_bound)} at a bound"] if fit.at_bound else []
            why += [f"{', '.join(fit.wide_exponents)} 95 % CI spans more than 10x"] if fit.wide_exponents else []
            out["allocation_skipped"][metric] = "not identified by this sweep: " + "; ".join(why)
            continue
        t = allocation_discrete(usable, out["budgets"], metric=metric, fit=fit)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            n_opt, d_opt = fit.allocation(out["budgets"], flops_per_param_token=k)
        t.insert(1, "metric", metric)
        t.insert(2, "N_opt", n_opt)
        t.insert(3, "D_opt", d_opt)
        t.insert(4, "predicted_opt", fit.predict(n_opt, d_opt))
        tables.append(t)
    out["allocation"] = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(
        columns=["budget", "metric", "N_opt", "D_opt", "predicted_opt"])
    out["findings"] = findings(out)
    return out


def analysis_to_dict(analysis: dict[str, Any]) -> dict[str, Any]:
    """JSON-serialisable summary of :func:`analyze`'s result (NaN written as None)."""
    return _jsonable({
        "n_trials": analysis["n_trials"],
        "n_usable": analysis["n_usable"],
        "n_left_out": len(analysis["left_out"]),
        "left_out": analysis["left_out"].to_dict(orient="records"),
        "fits": {m: (f.to_dict() if f is not None else None)
                 for m, f in analysis["fits"].items()},
        "fit_errors": analysis["fit_errors"],
        "two_stage": analysis["two_stage"].to_dict() if analysis.get("two_stage") else None,
        "flops_per_param_token": analysis["flops_per_param_token"],
        "flops_per_param_token_note": ("median train_flops / (params_nonembed * tokens); "
                                       "used only by the closed-form N_opt, D_opt"),
        "budgets": list(analysis["budgets"]),
        "allocation": analysis["allocation"].to_dict(orient="records"),
        "allocation_skipped": analysis.get("allocation_skipped", {}),
        "fronts": analysis["fronts"],
        "effects": {m: e.to_dict(orient="records") for m, e in analysis["effects"].items()},
        "dtype": analysis["dtype"].to_dict(orient="records"),
        **{k: analysis[k].to_dict(orient="records") if k in analysis else []
           for k in ("training_effect", "training_by_width")},
        "compute_laws": {k: f.to_dict() for k, f in analysis.get("compute_laws", {}).items()},
        "compute_law_errors": analysis.get("compute_law_errors", {}),
        "backtest": _backtest_to_dict(analysis.get("backtest")),
        "ceiling_sensitivity": _sensitivity_to_dict(analysis.get("ceiling_sensitivity")),
        "findings": analysis.get("findings", []),
        "paper_dtype": PAPER_DTYPE,
    })


def _backtest_to_dict(bt: dict[str, Any] | None) -> dict[str, Any] | None:
    if bt is None:
        return None
    return {**{k: bt[k] for k in ("held", "n_fit", "cut", "errors", "error")},
            "table": bt["table"].to_dict(orient="records")}


def _sensitivity_to_dict(cs: dict[str, Any] | None) -> dict[str, Any] | None:
    if cs is None:
        return None
    return {"used": cs["used"], "other": cs["other"], "ceilings": list(cs["ceilings"]), "differs": cs["differs"],
            "other_identified": cs["other_identified"], "table": cs["table"].to_dict(orient="records"),
            "other_fit": cs["other_fit"].to_dict()}


def _jsonable(x: Any) -> Any:
    """Plain-Python copy of x for json.dumps: numpy scalars unwrapped, NaN/inf -> None."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return [_jsonable(v) for v in x.tolist()]
    if isinstance(x, (np.bool_, bool)):
        return bool(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return x if math.isfinite(x) else None
    if x is None or isinstance(x, (int, str)):
        return x
    if x is pd.NA or x is pd.NaT:
        return None
    return str(x)


# ---------------------------------------------------------------------------------------
# Synthetic trial logs (tests, benchmarks, demos)
# ---------------------------------------------------------------------------------------


def simulate_trials(n_embd: Iterable[int] = (64, 128, 256, 512),
                    n_layer: Iterable[int] = (2, 4, 8),
                    data_frames: Iterable[int] = (10_000, 100_000, 1_000_000, 6_000_000),
                    n_head: Iterable[int] = (4,), dtype: Iterable[str] = ("fp32",),
                    seeds: Iterable[int] = (0,),
                    loss_law: tuple[float, ...] = (2.0, 60.0, 400.0, 0.25, 0.40),
                    brain_law: tuple[float, ...] = (0.25, 6.0, 35.0, 0.25, 0.30),
                    ceiling: float = 0.6, loss_noise: float = 0.0, brain_noise: float = 0.0,
                    tokens_per_frame: float = 4.0, vocab_size: int = 1024, n_ctx: int = 512,
                    tokens_per_s_fp32: float = 1.5e5, half_speedup: float = 1.17,
                    seed: int = 0) -> pd.DataFrame:
    """A synthetic trial log drawn from known laws (full grid over the axes).

    ``val_loss = E + A N^-alpha + B D^-beta`` times log-normal noise (sd ``loss_noise``)
    and ``brain_r_mean = ceiling (1 - e)`` with ``e`` the gap law plus Gaussian noise
    (sd ``brain_noise``, absolute r), with ``N = 12 n_layer n_embd**2`` and
    ``D = tokens_per_frame * data_frames``. Training FLOPs per token follow the exact
    GPT-2 count ``72 L d^2 + 6 d V + 12 L T d`` (reference notes §3.4).

    Returns
    -------
    DataFrame with one row per (n_embd, n_layer, n_head, data_frames, dtype, seed) and
    the trial-log columns used by :func:`analyze`.
    """
    rng = np.random.default_rng(seed)
    rows = []
    grid = [(d, L, h, f, dt, s) for d in n_embd for L in n_layer for h in n_head
            for f in data_frames for dt in dtype for s in seeds]
    for i, (d, L, h, f, dt, s) in enumerate(grid):
        N = 12.0 * L * d * d
        D = tokens_per_frame * f
        fpt = 72.0 * L * d * d + 6.0 * d * vocab_size + 12.0 * L * n_ctx * d
        E, A, B, al, be = loss_law
        loss = (E + A * N ** -al + B * D ** -be) * math.exp(loss_noise * rng.standard_normal())
        E, A, B, al, be = brain_law
        r = ceiling * (1 - (E + A * N ** -al + B * D ** -be)) \
            + brain_noise * rng.standard_normal()
        tps = tokens_per_s_fp32 * (half_speedup if dt != "fp32" else 1.0) \
            * math.exp(0.02 * rng.standard_normal())
        rows.append(dict(
            trial_id=f"t{i:04d}", status="TERMINATED", error=None, n_embd=d, n_layer=L,
            n_head=h, data_frames=f, dtype=dt, seed=s, params_nonembed=N, tokens=D,
            flops_per_token=fpt, train_flops=fpt * D, tokens_per_s=tps, wall_s=D / tps,
            gpu_hours=D / tps / 3600.0, val_loss=loss, brain_r_mean=r,
            brain_r_max=min(r * 1.6, 0.99), ceiling_frac=r / ceiling, ceiling=ceiling))
    return pd.DataFrame(rows)


if __name__ == "__main__":  # pragma: no cover - quick look at the fixture fit
    import sys

    df = pd.read_csv(sys.argv[1])
    df = df.sort_values("loss").iloc[:-5]
    N = df["Model Size"].to_numpy()
    fit = fit_law(N, df["Training FLOP"].to_numpy() / (6 * N), df["loss"].to_numpy())
    print(json.dumps(fit.to_dict(), indent=1))
