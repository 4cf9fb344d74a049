"""Ridge encoding: from model features to per-parcel Pearson r on held-out fMRI runs.

A brain-encoding model is a linear map from stimulus features (delayed copies, to absorb
the haemodynamic lag) to parcel time series, fitted by ridge regression with one
penalty per parcel chosen by cross-validation over *runs*, never over shuffled TRs.
For each target j and each penalty alpha the estimator solves

    w_j(alpha) = argmin_w ||y_j - 1 b_j - X_s w||^2 + alpha ||w||^2,

with X_s the features centred (unpenalised intercept b_j) and, by default, scaled to unit
variance on the training part, exactly as ``StandardScaler`` followed by
``sklearn.linear_model.Ridge`` would.

Fast path (all alphas at once). Per fold the standardised training gram X_s^T X_s is
eigendecomposed once, X_s^T X_s = V diag(lam) V^T (or the n x n kernel X_s X_s^T = U
diag(lam) U^T when there are more features than training samples). Then, for every
alpha, W(alpha) = L diag(1 / (lam + alpha)) B with L = V, B = V^T X_s^T Y (primal) or
L = X_s^T U, B = U^T Y (dual), so a penalty costs one (n_val, r) x (r, n_targets)
product. The fold's gram and X^T Y come from the full-data ones minus the held-out run's
(one pass over the data for all folds).

On CPU the primal form skips the eigenvectors (solver 'tridiagonal'): a Householder
reduction X_s^T X_s = Q T Q^T with T tridiagonal (LAPACK sytrd, about 1/3 of eigh's
time) gives (X_s^T X_s + alpha I)^{-1} = Q (T + alpha I)^{-1} Q^T, and the tridiagonal
solve costs O(p) per column; the solves of all alphas run as one vectorised sweep. At
the paper's scale (6000 TRs, 2048 delayed features, 1095 parcels, 11 alphas, 1 thread)
a whole fit takes 11.5 s vs 21.7 s with one eigh per fold (solver 'primal'): 1.9x, 1.6x
at worst (medians of 4 alternating fits on a shared 2-core EPYC, ``benchmarks/ridge.py
--solvers-only``, results/benchmarks/ridge_solvers.json); kept while that is >= 1.3x.

Without per-fold scaling (``standardize=False``) there is a faster exact path: one
eigendecomposition of all the data, and the held-out residuals of each run k from the
block hat matrix, e_k = (I - H_kk)^{-1} (y_k - yhat_k) (solver 'hat'). Per-fold scaling
changes the model in every fold, so the default (standardize=True) cannot use it.

Layout, as himalaya's: the solvers are plain functions registered by name in
``RIDGE_SOLVERS`` (each factors one fold's standardised training data); the
cross-validation around them is plain functions too (``_problem``, ``_training_part``,
``_cv_mse_per_fold``, ``_hat_cv_mse``, ``_weights``); the estimator ``RidgeEncoder``
checks its parameters and data, picks the device and a solver per fold, and calls them.

References: the seed paper's encoding (Ahmadi et al. 2024, arXiv 2410.19810; FIR delays
1-4 TRs, RidgeCV grid below) and himalaya (Dupre la Tour et al. 2022) for the solver
layout.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.linalg
import scipy.linalg.blas
import scipy.linalg.lapack
import scipy.sparse
import torch
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.model_selection import GroupKFold, KFold, LeaveOneGroupOut
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from brainray.devices import pick_device

__all__ = [
    "DEFAULT_ALPHAS",
    "PAPER_ALPHAS",
    "RIDGE_SOLVERS",
    "RidgeEncoder",
    "encode_subject",
    "make_delays",
    "pearson_r",
    "resample_to_tr",
    "summarize_families",
    "summarize_scores",
]

# The grid of the authors' earlier pipeline (Scaling-up-Ridge RidgeCV), kept for
# reproducing the paper. It stops at 1200, below the eigenvalue scale of standardised
# features (each column has squared norm n_TRs, ~6000 per subject), so noisy parcels
# with 2048 delayed features are under-regularised. The default is therefore a log grid
# with half-decade steps that covers the paper's range and four decades above it.
PAPER_ALPHAS: tuple[float, ...] = (0.1, 1.0, 100.0, 200.0, 300.0, 400.0, 600.0, 800.0,
                                   900.0, 1000.0, 1200.0)
DEFAULT_ALPHAS: tuple[float, ...] = tuple(float(a) for a in np.logspace(-1, 5, 13))

_CV_STRINGS = ("group", "kfold")
_KFOLD_SPLITS = 5  # cv="kfold": 5 contiguous blocks, as sklearn's KFold default
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


# ----------------------------------------------------------------------------- checks

def _as_2d_float(A: Any, name: str, *, allow_1d: bool = False) -> tuple[np.ndarray, bool]:
    """Dense float64 copy of ``A``; errors name the array. Returns (array, was_1d)."""
    if scipy.sparse.issparse(A):
        raise TypeError(f"{name} is a sparse matrix; RidgeEncoder needs a dense array. "
                        f"Call {name}.toarray() first.")
    if A is None:
        raise ValueError(f"RidgeEncoder requires {name} to be passed, but the target "
                         f"{name} is None.")
    arr = np.asarray(A)
    was_1d = arr.ndim == 1
    if was_1d and allow_1d:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array of shape (n_samples, n_"
                         f"{'features' if name == 'X' else 'targets'}); got ndim="
                         f"{arr.ndim}, shape {arr.shape}. Reshape your data, e.g. with "
                         f"{name}.reshape(-1, 1) for a single column.")
    arr = check_array(arr, dtype=np.float64, ensure_all_finite=False, input_name=name,
                      ensure_min_samples=1, ensure_min_features=1)
    bad = ~np.isfinite(arr)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(f"{name} contains NaN or inf ({int(bad.sum())} value(s), first "
                         f"at row {row}, column {col}); remove or impute them first.")
    return arr, was_1d


def _check_groups(groups: Any, n_samples: int) -> np.ndarray:
    """Run labels as a 1-D array of length n_samples."""
    g = np.asarray(groups)
    if g.ndim != 1 or g.shape[0] != n_samples:
        raise ValueError(f"groups must be a 1-D array with one run label per sample "
                         f"(length {n_samples}); got shape {g.shape}.")
    if g.dtype.kind == "f" and not np.isfinite(g).all():
        raise ValueError("groups contains NaN or inf; give every sample a run label.")
    return g


def _check_delays(delays: Any) -> tuple[int, ...] | None:
    if delays is None:
        return None
    if isinstance(delays, numbers.Integral):
        raise TypeError(f"'delays' must be None or a sequence of ints such as (1, 2, 3, "
                        f"4); got the int {delays!r}. Wrap it: delays=({delays},).")
    delays = tuple(delays)
    if len(delays) == 0:
        raise ValueError("'delays' is empty; pass None to turn FIR delays off.")
    for d in delays:
        if not isinstance(d, numbers.Integral) or isinstance(d, bool):
            raise TypeError(f"'delays' must hold ints (delays in samples/TRs); got "
                            f"{d!r} in {delays!r}.")
    if len(set(delays)) != len(delays):
        raise ValueError(f"'delays' has repeated values: {delays!r}.")
    return tuple(int(d) for d in delays)


def _check_alphas(alphas: Any) -> np.ndarray:
    a = np.asarray(alphas, dtype=np.float64).ravel()
    if a.size == 0 or not np.all(np.isfinite(a)) or np.any(a <= 0):
        raise ValueError(f"'alphas' must be a non-empty sequence of finite positive "
                         f"numbers; got {alphas!r}.")
    return a


def _check_cv(cv: Any) -> str | int:
    ok = (isinstance(cv, str) and cv in _CV_STRINGS) or (
        isinstance(cv, numbers.Integral) and not isinstance(cv, bool) and cv >= 2)
    if not ok:
        raise ValueError(f"'cv' must be one of {{'group', 'kfold'}} or an int >= 2; "
                         f"got {cv!r}.")
    return cv


def _make_folds(cv: str | int, groups: np.ndarray | None,
                n_samples: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, validation) index pairs. 'group': LeaveOneGroupOut; int k: GroupKFold(k)
    (KFold(k) on contiguous blocks when groups is None); 'kfold': KFold(5) contiguous."""
    dummy = np.zeros((n_samples, 1))
    if cv == "group":
        if groups is None:
            raise ValueError("cv='group' needs run labels: call fit(X, Y, groups=runs), "
                             "or use cv='kfold' for contiguous blocks.")
        n_groups = len(np.unique(groups))
        if n_groups < 2:
            raise ValueError(f"groups has {n_groups} unique value(s); leave-one-group-"
                             f"out needs at least 2 runs.")
        splitter: Any = LeaveOneGroupOut()
    else:
        k = _KFOLD_SPLITS if cv == "kfold" else int(cv)
        if isinstance(cv, numbers.Integral) and groups is not None:
            n_groups = len(np.unique(groups))
            if n_groups < k:
                raise ValueError(f"cv={k} (GroupKFold) needs at least {k} groups; "
                                 f"groups has {n_groups} unique value(s). Lower cv or "
                                 f"use cv='group'.")
            splitter = GroupKFold(n_splits=k)
        else:
            if n_samples < k:
                raise ValueError(f"cv={cv!r} needs at least {k} samples for {k} folds; "
                                 f"got {n_samples} sample(s).")
            splitter = KFold(n_splits=k)
            groups = None
    return [(tr, va) for tr, va in splitter.split(dummy, groups=groups)]


# ------------------------------------------------------------------ features and TRs

def make_delays(X: Any, delays: Sequence[int], groups: Any = None) -> np.ndarray:
    """Finite-impulse-response (FIR) delayed copies of the features.

    Row i of the block for delay d holds ``X[i - d]`` of the same group (run); rows
    whose source lies before the run start (d > 0) or after its end (d < 0) are zero,
    so no information crosses a run boundary. Within a group, rows keep their order.

    Parameters
    ----------
    X : array of shape (n_samples, n_features)
        Features on the TR grid.
    delays : sequence of int
        Delays in samples (TRs); the paper uses (1, 2, 3, 4). 0 keeps the current row.
    groups : array of shape (n_samples,), default=None
        Run label per sample. None treats all samples as one run.

    Returns
    -------
    X_delayed : array of shape (n_samples, n_features * len(delays))
        Blocks ordered as ``delays``: columns ``[k * n_features, (k+1) * n_features)``
        hold delay ``delays[k]``.

    Examples
    --------
    >>> make_delays(np.arange(4.0)[:, None], (1, 2), groups=[0, 0, 1, 1]).tolist()
    [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [2.0, 0.0]]
    """
    X, _ = _as_2d_float(X, "X")
    checked = _check_delays(delays)
    if checked is None:
        raise ValueError("'delays' is None; make_delays needs at least one delay.")
    n, p = X.shape
    labels = np.zeros(n, dtype=int) if groups is None else _check_groups(groups, n)
    out = np.zeros((n, p * len(checked)), dtype=X.dtype)
    for g in np.unique(labels):
        idx = np.flatnonzero(labels == g)
        m = len(idx)
        for k, d in enumerate(checked):
            cols = slice(k * p, (k + 1) * p)
            if abs(d) >= m:
                continue
            if d >= 0:
                out[idx[d:], cols] = X[idx[:m - d]]
            else:
                out[idx[:m + d], cols] = X[idx[-d:]]
    return out


def resample_to_tr(times: Any, features: Any, tr: float, n_vols: int) -> np.ndarray:
    """Average feature rows over the TR windows of an fMRI run.

    Volume k gets the mean of the rows whose timestamp t satisfies
    ``k * tr <= t < (k + 1) * tr``; volumes that no row falls in (gaps between
    gameplay) are zero. Rows before 0 or at/after ``n_vols * tr`` are dropped.

    Parameters
    ----------
    times : array of shape (n_samples,)
        Timestamps in seconds from the run start (any order).
    features : array of shape (n_samples, n_features)
        One feature row per timestamp.
    tr : float
        Repetition time in seconds (CNeuroMod: 1.49).
    n_vols : int
        Number of volumes of the run.

    Returns
    -------
    resampled : array of shape (n_vols, n_features)

    Examples
    --------
    >>> resample_to_tr([0.1, 0.2, 2.5], [[1.0], [3.0], [5.0]], tr=1.0, n_vols=3).ravel()
    array([2., 0., 5.])
    """
    t = np.asarray(times, dtype=np.float64)
    if t.ndim != 1:
        raise ValueError(f"times must be 1-D (one timestamp per feature row); got shape "
                         f"{t.shape}.")
    if not np.all(np.isfinite(t)):
        raise ValueError("times contains NaN or inf; timestamps must be finite seconds.")
    F = np.asarray(features, dtype=np.float64)
    if F.ndim != 2 or F.shape[0] != t.shape[0]:
        raise ValueError(f"features must have shape (len(times), n_features) = "
                         f"({t.shape[0]}, n_features); got {F.shape}.")
    if not np.all(np.isfinite(F)):
        raise ValueError("features contains NaN or inf; clean them before resampling.")
    if not (isinstance(tr, numbers.Real) and np.isfinite(tr) and tr > 0):
        raise ValueError(f"'tr' must be a positive number of seconds; got {tr!r}.")
    if not isinstance(n_vols, numbers.Integral) or n_vols < 1:
        raise ValueError(f"'n_vols' must be an int >= 1; got {n_vols!r}.")
    k = np.floor(t / tr).astype(np.int64)
    # floor(t / tr) can be off by one where t is a rounded multiple of tr: fix it so
    # that the windows are exactly the comparisons k*tr <= t < (k+1)*tr.
    k[t < k * tr] -= 1
    k[t >= (k + 1) * tr] += 1
    keep = (k >= 0) & (k < n_vols)
    sums = np.zeros((n_vols, F.shape[1]))
    np.add.at(sums, k[keep], F[keep])
    counts = np.bincount(k[keep], minlength=n_vols)
    nonzero = counts > 0
    sums[nonzero] /= counts[nonzero, None]
    return sums


# -------------------------------------------------------------------------- scoring

def pearson_r(Y_true: Any, Y_pred: Any) -> np.ndarray:
    """Pearson correlation per column.

    Parameters
    ----------
    Y_true, Y_pred : array of shape (n_samples, n_targets) or (n_samples,)

    Returns
    -------
    r : array of shape (n_targets,)
        0.0 where either column has zero variance (r is undefined there).
    """
    a = np.asarray(Y_true, dtype=np.float64)
    b = np.asarray(Y_pred, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"Y_true and Y_pred must have the same shape; got {a.shape} "
                         f"and {b.shape}.")
    if a.ndim == 1:
        a, b = a[:, None], b[:, None]
    a = a - a.mean(0)
    b = b - b.mean(0)
    den = np.sqrt((a * a).sum(0) * (b * b).sum(0))
    num = (a * b).sum(0)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def summarize_scores(r: Any, ceiling: Any = None) -> dict[str, float | None]:
    """Summary statistics of per-parcel encoding scores, as logged per trial.

    Parameters
    ----------
    r : array of shape (n_parcels,)
        Pearson r per parcel.
    ceiling : float or array of shape (n_parcels,), default=None
        Noise ceiling (the best achievable r) per parcel.

    Returns
    -------
    summary : dict
        ``brain_r_mean`` (mean over parcels), ``brain_r_max`` (the paper's metric),
        ``brain_r_top10`` (mean of the top ceil(10%) parcels, at least one) and
        ``ceiling_frac`` (mean over parcels with ceiling > 0 of r / ceiling; None when
        ``ceiling`` is None).

    Examples
    --------
    >>> summarize_scores([0.1, 0.3], ceiling=[0.2, 0.6])["ceiling_frac"]
    0.5
    """
    r = np.asarray(r, dtype=np.float64).ravel()
    if r.size == 0:
        raise ValueError("r is empty; pass one score per parcel.")
    if not np.all(np.isfinite(r)):
        raise ValueError(f"r contains NaN or inf at parcel(s) "
                         f"{np.flatnonzero(~np.isfinite(r))[:10].tolist()}; fix the "
                         f"scores before summarising.")
    k = max(1, int(np.ceil(0.1 * r.size)))
    out: dict[str, float | None] = {
        "brain_r_mean": float(r.mean()),
        "brain_r_max": float(r.max()),
        "brain_r_top10": float(np.sort(r)[-k:].mean()),
        "ceiling_frac": None,
    }
    if ceiling is not None:
        c = np.broadcast_to(np.asarray(ceiling, dtype=np.float64), r.shape)
        ok = np.isfinite(c) & (c > 0)
        if not ok.any():
            raise ValueError("ceiling has no finite positive entry; pass ceiling=None "
                             "when the noise ceiling is unknown.")
        out["ceiling_frac"] = float(np.mean(r[ok] / c[ok]))
    return out


def summarize_families(r: Any, families: Any, ceiling: Any = None) -> dict[str, float | None]:
    """Per parcel family: ``brain_r_<family>`` (mean r over its parcels) and
    ``ceiling_frac_<family>`` (mean r / ceiling over those with a ceiling > 0; None when
    the family has none, as noise parcels, or when ``ceiling`` is None).

    Examples
    --------
    >>> summarize_families([0.1, 0.3, 0.0], ["visual", "object", "none"], [0.2, 0.6, 0.0])["ceiling_frac_object"]
    0.5
    """
    r = np.asarray(r, dtype=np.float64).ravel()
    families = np.asarray(families, dtype=str).ravel()
    if families.shape != r.shape:
        raise ValueError(f"families must name one family per parcel: {r.size} scores, {families.size} families.")
    c = None if ceiling is None else np.broadcast_to(np.asarray(ceiling, dtype=np.float64), r.shape)
    out: dict[str, float | None] = {}
    for fam in dict.fromkeys(families):  # first-seen order
        sel = families == fam
        out[f"brain_r_{fam}"] = float(r[sel].mean())
        ok = sel & np.isfinite(c) & (c > 0) if c is not None else None
        out[f"ceiling_frac_{fam}"] = float(np.mean(r[ok] / c[ok])) if ok is not None and ok.any() else None
    return out


# -------------------------------------------------------------------------- solvers
# A solver is a plain function, registered by name in RIDGE_SOLVERS (as himalaya's
# solve_ridge_* functions are), that factors the standardised training data of one fold
# once so that, for any alpha,
#     W(alpha) = unrotate(shrink(B, alpha)),   W of shape (p, n_targets),
# with B = rotate(X^T Y) and validation predictions shrink(rotate(X_val^T), alpha)^T @ B.
# Signature: solve(X, Y, gram=None, cross=None) -> factors, with X (n, p) standardised, Y
# (n, t) centred, gram = X^T X (p, p), cross = X^T Y (p, t). The gram-form solvers
# (_GRAM_FORM) are given gram and cross (X and Y None), downdated from the full data's;
# any other is given the rows X and Y.

class _Eigen:
    """W(alpha) = left diag(1 / (lam + alpha)) B, from an eigendecomposition."""

    def __init__(self, lam: torch.Tensor, left: torch.Tensor, B: torch.Tensor) -> None:
        self.lam, self.left, self.B = lam, left, B

    def rotate(self, Z: torch.Tensor) -> torch.Tensor:
        return self.left.T @ Z

    def shrink(self, Z: torch.Tensor, alpha: float) -> torch.Tensor:
        return Z / (self.lam + alpha)[:, None]

    def shrink_many(self, Z: torch.Tensor, alphas: Sequence[float]) -> list[torch.Tensor]:
        return [self.shrink(Z, float(a)) for a in alphas]

    def unrotate(self, Z: torch.Tensor) -> torch.Tensor:
        return self.left @ Z


class _Tridiagonal:
    """gram = Q T Q^T by Householder reduction (LAPACK sytrd), T tridiagonal; CPU only.

    (gram + alpha I)^{-1} = Q (T + alpha I)^{-1} Q^T, and a tridiagonal solve costs O(p)
    per column, so all alphas share the reduction without the eigenvectors (the
    divide-and-conquer and back-transformation steps are about 2/3 of eigh's time).
    Q is never formed: it is applied in blocks I - V S V^T (compact WY), S from the UT
    transform S^{-1} = diag(1 / tau) + strict_upper(V^T V) (Joffrain et al. 2006). The
    blocked products go through numpy, whose BLAS (OpenBLAS) is faster on them than
    torch's here; threadpoolctl sets its threads.
    """

    block = 128  # reflectors per block: large enough for efficient BLAS-3 products

    def __init__(self, gram: torch.Tensor, cross: torch.Tensor,
                 overwrite_gram: bool = False) -> None:
        G = gram.numpy()
        sytrd, sytrd_lwork = scipy.linalg.lapack.get_lapack_funcs(
            ("sytrd", "sytrd_lwork"), (G,))
        lwork, _ = sytrd_lwork(G.shape[0], lower=0)
        # G is symmetric, so its transpose (Fortran order, no copy) is the same matrix;
        # with overwrite_gram sytrd works in place instead of copying it. The upper
        # triangle: OpenBLAS's ssymv, half of sytrd's work, runs ~10% faster on it.
        H, self.d, self.e, tau, info = sytrd(G.T, lower=0, lwork=int(lwork),
                                             overwrite_a=int(overwrite_gram))
        assert info == 0, f"sytrd failed (info={info})"
        self._pttrf, self._pttrs, self._gtsv = scipy.linalg.lapack.get_lapack_funcs(
            ("pttrf", "pttrs", "gtsv"), (G,))
        # Reflector q (q = 0 .. p-2) is v with v[q] = 1, v[:q] = H[:q, q + 1], zero
        # below, and Q^T = H_0 H_1 ... H_{p-2}. A block of k of them touches rows
        # [0, j + k) and is I - V S V^T with V = H[:j + k, j + 1:j + k + 1], made unit
        # upper triangular in its bottom (k, k) rows.
        self.blocks = []  # (last row + 1, V (row, k), S (k, k)), in reflector order
        p = G.shape[0]
        for j in range(0, p - 1, self.block):
            k = min(self.block, p - 1 - j)
            V = H[:j + k, j + 1:j + k + 1].copy()
            V[j:][np.tril_indices(k, -1)] = 0.0  # T's and G's own entries
            V[j + np.arange(k), np.arange(k)] = 1.0
            t = tau[j:j + k].copy()
            V[:, t == 0] = 0.0  # tau = 0 is the identity; v = 0 keeps the transform exact
            t[t == 0] = 1.0
            S_inv = np.triu(V.T @ V, 1) + np.diag(1.0 / t)
            S = scipy.linalg.solve_triangular(S_inv, np.eye(k, dtype=G.dtype))
            self.blocks.append((j + k, V, S))
        self.B = self.rotate(cross)

    def rotate(self, Z: torch.Tensor) -> torch.Tensor:
        """Q^T Z = (I - V_1 S_1 V_1^T) ... (I - V_m S_m V_m^T) Z."""
        return self._apply(Z, self.blocks[::-1], transpose=False)

    def unrotate(self, Z: torch.Tensor) -> torch.Tensor:
        """Q Z = (I - V_m S_m^T V_m^T) ... (I - V_1 S_1^T V_1^T) Z."""
        return self._apply(Z, self.blocks, transpose=True)

    @staticmethod
    def _apply(Z: torch.Tensor, blocks: list, transpose: bool) -> torch.Tensor:
        """Applies each block's I - V S V^T (I - V S^T V^T with transpose) in turn.

        Works on a C-ordered copy A of Z (p, m): the rows a block touches, A[:r1], are
        contiguous, so their transpose is a Fortran-ordered (m, r1) view and BLAS gemm
        subtracts W V^T from it in place (no (m, r1) temporary)."""
        A = np.array(Z.numpy(), order="C")  # (p, m), updated in place
        gemm = scipy.linalg.blas.get_blas_funcs("gemm", (A,))
        for r1, V, S in blocks:
            At = A[:r1].T  # (m, r1), Fortran-contiguous view
            W = (At @ V) @ (S if transpose else S.T)  # (m, k)
            out = gemm(-1.0, W, V, beta=1.0, c=At, trans_b=1, overwrite_c=1)
            if not np.may_share_memory(out, A):  # f2py made a copy: write it back
                At[...] = out
        return torch.from_numpy(A)

    def shrink(self, Z: torch.Tensor, alpha: float) -> torch.Tensor:
        """(T + alpha I)^{-1} Z: Cholesky (pttrf) if positive definite, else pivoted LU."""
        if self.d.size == 1:  # scipy's pttrf wrapper rejects n = 1
            return Z / float(self.d[0] + alpha)
        A = np.asfortranarray(Z.numpy())
        df, ef, info = self._pttrf(self.d + alpha, self.e)
        if info == 0:
            X, info = self._pttrs(df, ef, A)
        else:  # T + alpha I not numerically positive definite (alpha below rounding)
            _, _, _, X, info = self._gtsv(self.e, self.d + alpha, self.e, A)
        assert info == 0, f"tridiagonal solve failed (info={info})"
        return torch.from_numpy(X)

    # shrink_many batches when n_alphas * n_columns reaches this (below it the p-step
    # Python loop costs more than LAPACK's serial per-column recurrences)
    batch_min = 1024
    batch_max_elements = 1 << 25  # alphas per batch: at most this many p x m entries

    def shrink_many(self, Z: torch.Tensor, alphas: Sequence[float]) -> list[torch.Tensor]:
        """[(T + a I)^{-1} Z for a in alphas], vectorised over alphas and columns.

        LAPACK's pttrs runs one serial recurrence per column (latency-bound); here the
        same L D L^T factors (pttrf) and the same arithmetic (forward substitution,
        division by D, back substitution, as pttrs) sweep the p rows once for all
        alphas and columns, each step a SIMD update of n_alphas * m numbers. An alpha
        whose T + a I is not numerically positive definite falls back to shrink()."""
        alphas = [float(a) for a in alphas]
        Zn = np.ascontiguousarray(Z.numpy())  # (p, m)
        p, m = Zn.shape
        if p == 1 or len(alphas) * m < self.batch_min:
            return [self.shrink(Z, a) for a in alphas]
        out: list[torch.Tensor | None] = [None] * len(alphas)
        good = []
        for k, a in enumerate(alphas):
            df, ef, info = self._pttrf(self.d + a, self.e)
            if info == 0:
                good.append((k, df, ef))
            else:
                out[k] = self.shrink(Z, a)
        per = max(1, self.batch_max_elements // (p * m))
        for g0 in range(0, len(good), per):
            batch = good[g0:g0 + per]
            D = np.stack([df for _, df, _ in batch], axis=1)[:, :, None]  # (p, K, 1)
            L = np.stack([ef for _, _, ef in batch], axis=1)[:, :, None]  # (p-1, K, 1)
            U = np.empty((p, len(batch), m), dtype=Zn.dtype)  # row i: all alphas
            tmp = np.empty(U.shape[1:], dtype=Zn.dtype)
            U[0] = Zn[0]
            for i in range(1, p):  # L y = z
                np.multiply(U[i - 1], L[i - 1], out=tmp)
                np.subtract(Zn[i], tmp, out=U[i])
            U /= D
            for i in range(p - 2, -1, -1):  # L^T x = D^{-1} y
                np.multiply(U[i + 1], L[i], out=tmp)
                np.subtract(U[i], tmp, out=U[i])
            for j, (k, _, _) in enumerate(batch):
                out[k] = torch.from_numpy(U[:, j, :])  # (p, m), row stride K * m
        return out  # type: ignore[return-value]


def _solve_primal(X: torch.Tensor | None, Y: torch.Tensor | None,
                  gram: torch.Tensor | None = None, cross: torch.Tensor | None = None
                  ) -> _Eigen:
    """Eigendecomposition of the (p, p) gram: left = V (p, p), B = V^T X^T Y (p, t)."""
    if gram is None:
        gram = X.T @ X
    if cross is None:
        cross = X.T @ Y
    lam, V = torch.linalg.eigh(gram)
    return _Eigen(lam.clamp_min(0), V, V.T @ cross)


def _solve_dual(X: torch.Tensor | None, Y: torch.Tensor | None,
                gram: torch.Tensor | None = None, cross: torch.Tensor | None = None
                ) -> _Eigen:
    """Eigendecomposition of the (n, n) kernel: left = X^T U (p, n), B = U^T Y (n, t)."""
    lam, U = torch.linalg.eigh(X @ X.T)
    return _Eigen(lam.clamp_min(0), X.T @ U, U.T @ Y)


def _solve_tridiagonal(X: torch.Tensor | None, Y: torch.Tensor | None,
                       gram: torch.Tensor | None = None, cross: torch.Tensor | None = None,
                       overwrite_gram: bool = False) -> _Tridiagonal:
    """Householder tridiagonal reduction of the (p, p) gram (CPU): see _Tridiagonal.
    overwrite_gram: the reduction may destroy ``gram`` (a temporary of the caller)."""
    if gram is None:
        gram, overwrite_gram = _gram(X), True
    if cross is None:
        cross = X.T @ Y
    return _Tridiagonal(gram, cross, overwrite_gram=overwrite_gram)


RIDGE_SOLVERS = {"primal": _solve_primal, "dual": _solve_dual,
                 "tridiagonal": _solve_tridiagonal}
_GRAM_FORM = ("primal", "tridiagonal")  # factor a fold's (p, p) gram, downdated from the full one
_CPU_ONLY_SOLVERS = ("tridiagonal",)


def _gram(X: torch.Tensor) -> torch.Tensor:
    """X^T X. On CPU through numpy, whose matmul calls BLAS syrk for a.T @ a (half the
    flops of a general product)."""
    if X.device.type != "cpu":
        return X.T @ X
    A = X.numpy()
    return torch.from_numpy(A.T @ A)


def _matmul(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """A @ B. On CPU through numpy: its OpenBLAS sgemm ran these shapes 9-40% faster
    than torch's MKL on the benchmark machine (AMD EPYC, 1 thread)."""
    if A.device.type != "cpu":
        return A @ B
    return torch.from_numpy(A.numpy() @ B.numpy())


def _hat_cv_mse(Xc: torch.Tensor, Yc: torch.Tensor, folds: list, alphas: torch.Tensor,
                chunk: int, kind: str) -> tuple[torch.Tensor, _Eigen]:
    """Held-out MSE of every fold from one factorisation of the full data.

    With an unpenalised intercept and no per-fold scaling, the hat matrix of the full
    fit is H = 11^T / n + F diag(h) F^T, and the residuals of the model refitted
    without block k are exactly e_k = (I - H_kk)^{-1} (y_k - yhat_k). Here F = Xc V,
    h = 1 / (lam + alpha) (primal, eigh of Xc^T Xc) or F = U, h = lam / (lam + alpha)
    (dual, eigh of Xc Xc^T). Xc (n, p) and Yc (n, t) are centred on all samples.

    Returns mse of shape (n_folds, n_alphas, n_targets) and the full-data factors
    for the refit.
    """
    n, t = Yc.shape
    if kind == "primal":
        lam, V = torch.linalg.eigh(Xc.T @ Xc)
        lam = lam.clamp_min(0)
        F, num, left = Xc @ V, torch.ones_like(lam), V  # (n, p)
    else:
        lam, U = torch.linalg.eigh(Xc @ Xc.T)
        lam = lam.clamp_min(0)
        F, num, left = U, lam, Xc.T @ U
    B = F.T @ Yc  # (r, t): V^T Xc^T Y (primal) or U^T Y (dual)
    mse = torch.zeros((len(folds), len(alphas), t), dtype=Xc.dtype, device=Xc.device)
    for f, (_, val) in enumerate(folds):
        Fk, Yk = F[val], Yc[val]  # (n_k, r), (n_k, t)
        eye = torch.eye(len(val), dtype=Xc.dtype, device=Xc.device)
        for k, alpha in enumerate(alphas):
            Fh = Fk * (num / (lam + alpha))  # (n_k, r)
            I_H = eye - 1.0 / n - Fh @ Fk.T  # (n_k, n_k), SPD: eigenvalues in (0, 1]
            L, info = torch.linalg.cholesky_ex(I_H)
            for c0 in range(0, t, chunk):
                cols = slice(c0, c0 + chunk)
                resid = Yk[:, cols] - Fh @ B[:, cols]  # full-fit residuals of block k
                E = (torch.cholesky_solve(resid, L) if info.item() == 0
                     else torch.linalg.solve(I_H, resid))  # held-out residuals
                mse[f, k, cols] = (E ** 2).mean(0)
    return mse, _Eigen(lam, left, B)


def _is_constant(var: torch.Tensor, mean: torch.Tensor, n: int) -> torch.Tensor:
    """Zero-variance test of sklearn's StandardScaler (_is_constant_feature)."""
    eps = torch.finfo(var.dtype).eps
    return var <= n * eps * var + (n * mean.abs() * eps) ** 2


# ------------------------------------------------------------------ cross-validation
# Plain functions between the estimator and the solvers: the fit's data on the solver's
# device, each fold's standardised training part factored by a solver of RIDGE_SOLVERS,
# the validation MSE of every alpha, and the refit with each target's alpha.

@dataclass
class _Problem:
    """One fit's data on the solver's device.

    X (n, p) and Y (n, t) are centred on all samples in float64 before the cast, so the
    per-fold sums below stay accurate; ``x_mean`` (p,) is the mean taken off X (for the
    constant-feature test). With ``downdate`` (a gram-form solver in some fold) ``held``
    has each validation part's gram and X^T Y; the parts partition the samples, so these
    sum to the full ``gram`` and ``cross``, and a fold's are the full ones minus its own.
    """

    X: torch.Tensor
    Y: torch.Tensor
    x_mean: torch.Tensor
    x_mean0: np.ndarray  # (p,) the same in float64, and Y's (t,), for the intercept
    y_mean0: np.ndarray
    folds: list[tuple[np.ndarray, np.ndarray]]
    standardize: bool
    held: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    gram: torch.Tensor | None = None  # (p, p)
    cross: torch.Tensor | None = None  # (p, t)
    sum_x: torch.Tensor | None = None  # (p,)
    sum_y: torch.Tensor | None = None  # (t,)


def _problem(Xd: np.ndarray, Y: np.ndarray, folds: list, standardize: bool, dtype: torch.dtype,
             device: torch.device, downdate: bool) -> _Problem:
    x_mean, y_mean = Xd.mean(0), Y.mean(0)
    pb = _Problem(X=torch.as_tensor(Xd - x_mean, dtype=dtype, device=device),
                  Y=torch.as_tensor(Y - y_mean, dtype=dtype, device=device),
                  x_mean=torch.as_tensor(x_mean, dtype=dtype, device=device),
                  x_mean0=x_mean, y_mean0=y_mean, folds=folds, standardize=standardize)
    if downdate:
        assert sum(len(va) for _, va in folds) == len(Xd)
        pb.held = [(_gram(pb.X[va]), _matmul(pb.X[va].T, pb.Y[va])) for _, va in folds]
        pb.gram, pb.cross = sum(g for g, _ in pb.held), sum(c for _, c in pb.held)
        pb.sum_x, pb.sum_y = pb.X.sum(0), pb.Y.sum(0)
    return pb


def _scale(pb: _Problem, var: torch.Tensor, m: torch.Tensor, n_t: int) -> torch.Tensor:
    """Per-feature scale of a training part: its standard deviation (1 for a constant
    feature, as StandardScaler), or 1 everywhere without ``standardize``."""
    if not pb.standardize:
        return torch.ones_like(var)
    keep = ~_is_constant(var, m + pb.x_mean, n_t)
    return torch.where(keep, var.clamp_min(0).sqrt(), torch.ones_like(var))


def _training_part(pb: _Problem, name: str, f: int | None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Any]:
    """Mean m (p,), y-mean my (t,) and scale s (p,) of the training part of fold ``f``
    (None: all samples, the refit), and solver ``name``'s factors of it, standardised.

    The kernel form ("dual") takes the part's rows; the gram form takes its gram and X^T Y,
    downdated from the full ones and centred and scaled in place (they are temporaries)."""
    n = pb.X.shape[0]
    train, val = (np.arange(n), None) if f is None else pb.folds[f]
    if name not in _GRAM_FORM:
        Xt, Yt = pb.X[train], pb.Y[train]
        m, my = Xt.mean(0), Yt.mean(0)
        s = _scale(pb, Xt.var(0, correction=0), m, len(train))
        return m, my, s, RIDGE_SOLVERS[name]((Xt - m) / s, Yt - my)
    n_t, g, c, sx, sy = n, pb.gram, pb.cross, pb.sum_x, pb.sum_y
    own = val is not None  # g and c are temporaries of this fold
    if own:
        n_t = n - len(val)
        g, c = pb.gram - pb.held[f][0], pb.cross - pb.held[f][1]
        sx, sy = pb.sum_x - pb.X[val].sum(0), pb.sum_y - pb.Y[val].sum(0)
    m, my = sx / n_t, sy / n_t
    C = g.addr_(m, m, alpha=-n_t) if own else g.addr(m, m, alpha=-n_t)  # centred training gram
    s = _scale(pb, torch.diagonal(C) / n_t, m, n_t)
    Rs = (c.addr_(m, my, alpha=-n_t) if own else c.addr(m, my, alpha=-n_t)).div_(s[:, None])
    C.div_(s[:, None]).div_(s)  # standardised; the solver may overwrite it
    kw = {"overwrite_gram": True} if name == "tridiagonal" else {}
    return m, my, s, RIDGE_SOLVERS[name](None, None, gram=C, cross=Rs, **kw)


def _cv_mse_per_fold(pb: _Problem, names: list[str], alphas: np.ndarray,
                     chunk: int) -> torch.Tensor:
    """Validation MSE of every fold, alpha and target: (n_folds, n_alphas, n_targets); fold f
    factored by solver ``names[f]``, all alphas from that one factorisation."""
    t = pb.Y.shape[1]
    mse = torch.zeros((len(pb.folds), len(alphas), t), dtype=pb.X.dtype, device=pb.X.device)
    for f, (_, val) in enumerate(pb.folds):
        m, my, s, fac = _training_part(pb, names[f], f)
        Sv = fac.rotate(((pb.X[val] - m) / s).T)  # (r, n_val)
        Yv = pb.Y[val] - my  # (n_val, t)
        # all alphas' (lam + alpha)^{-1} or (T + alpha I)^{-1} on Sv in one call
        for k, Sk in enumerate(fac.shrink_many(Sv, alphas.tolist())):
            Sa = Sk.T  # (n_val, r)
            for c0 in range(0, t, chunk):
                cols = slice(c0, c0 + chunk)
                P = _matmul(Sa, fac.B[:, cols])  # (n_val, chunk)
                mse[f, k, cols] = ((Yv[:, cols] - P) ** 2).mean(0)
    return mse


def _weights(fac: Any, best: torch.Tensor, alphas: np.ndarray) -> torch.Tensor:
    """W (p, t) of the factored data, target j with penalty alphas[best[j]]."""
    Z = torch.empty_like(fac.B)
    for k in torch.unique(best).tolist():
        cols = best == k
        Z[:, cols] = fac.shrink(fac.B[:, cols], float(alphas[k]))
    return fac.unrotate(Z)


# ---------------------------------------------------------------------- estimator

class RidgeEncoder(RegressorMixin, BaseEstimator):
    """Multi-target ridge with one penalty per target, chosen by cross-validation over runs.

    For every alpha and fold the model ``Y ~ 1 b + X_s W`` is fitted on the training
    folds, where X_s is X after FIR delays, centred (and scaled with ``standardize``) on
    that training part:

        W(alpha) = argmin_W ||Y - 1 b - X_s W||_F^2 + alpha ||W||_F^2.

    Each target keeps the alpha with the lowest validation mean squared error averaged
    over folds (ties: the first alpha in ``alphas``), then the model is refitted on all
    samples with that alpha. All alphas of a fold share one factorisation (see ``solver``).

    Parameters
    ----------
    alphas : sequence of float, default=DEFAULT_ALPHAS
        Penalties to try (13 values, 10^-1 to 10^5; ``PAPER_ALPHAS`` is the paper grid).
    cv : {'group', 'kfold'} or int, default='group'
        'group': leave one group (run) out. int k: ``GroupKFold(k)`` over the groups
        (``KFold(k)`` on contiguous blocks when no groups are given). 'kfold':
        ``KFold(5)`` on contiguous blocks, ignoring groups.
    delays : sequence of int or None, default=(1, 2, 3, 4)
        FIR delays in samples, applied per group inside fit and predict (see
        :func:`make_delays`). None uses the features as they are.
    standardize : bool, default=True
        Scale features to unit variance on each training part (zero-variance features
        keep scale 1, as ``StandardScaler``). Features are always centred.
    device : str or torch.device, default='auto'
        'auto' picks CUDA when available, else CPU.
    dtype : {'float32', 'float64'}, default='float32'
        Compute precision of the solver.
    target_chunk : int or None, default=2048
        Targets per block in the alpha loop; bounds the temporaries to
        (n_validation_samples, target_chunk) per alpha. None: all targets at once.
    solver : {'auto', 'primal', 'dual', 'tridiagonal', 'hat'}, default='auto'
        'primal' or 'dual' (keys of ``RIDGE_SOLVERS``): one eigendecomposition per fold.
        'tridiagonal' (CPU only): one tridiagonal reduction of the primal gram per fold.
        'hat': one of the full data, exact held-out residuals through the block hat
        matrix; needs ``standardize=False`` (per-fold scaling changes the model in every
        fold). 'auto' uses 'hat' when standardize is False and no validation fold is
        larger than min(n_samples, n_features); otherwise 'dual' when a training part
        has fewer samples than features, else 'tridiagonal' on CPU and 'primal' on GPU.

    Attributes
    ----------
    alpha_ : array of shape (n_targets,) or float
        Chosen penalty per target (a float when Y was 1-D).
    coef_ : array of shape (n_targets, n_features_in_ * n_delays) or (n_features,)
        Weights on the raw delayed features (delay-major blocks as in make_delays).
    intercept_ : array of shape (n_targets,) or float
    cv_scores_ : array of shape (n_alphas, n_targets) or (n_alphas,)
        Negative validation MSE averaged over folds (higher is better).
    n_features_in_ : int
        Number of features of X before delays.
    n_splits_ : int
        Number of CV folds.
    solver_ : str
        Cross-validation path used: 'primal', 'dual', 'tridiagonal' or 'hat'.
    device_ : str
        Device the solver ran on.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((120, 3)); runs = np.repeat([0, 1, 2], 40)
    >>> Y = X @ rng.standard_normal((3, 2)) + 0.1 * rng.standard_normal((120, 2))
    >>> enc = RidgeEncoder(delays=None, dtype="float64").fit(X, Y, groups=runs)
    >>> bool(np.all(enc.score(X, Y) > 0.9))
    True
    """

    def __init__(self, alphas: Sequence[float] = DEFAULT_ALPHAS, cv: str | int = "group",
                 delays: Sequence[int] | None = (1, 2, 3, 4), standardize: bool = True,
                 device: str | torch.device = "auto", dtype: str = "float32",
                 target_chunk: int | None = 2048, solver: str = "auto") -> None:
        self.alphas = alphas
        self.cv = cv
        self.delays = delays
        self.standardize = standardize
        self.device = device
        self.dtype = dtype
        self.target_chunk = target_chunk
        self.solver = solver

    def __sklearn_tags__(self):  # noqa: D105
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        tags.input_tags.allow_nan = False
        return tags

    # -- helpers
    def _check_params(self) -> tuple[np.ndarray, tuple[int, ...] | None, torch.dtype]:
        alphas = _check_alphas(self.alphas)
        _check_cv(self.cv)
        delays = _check_delays(self.delays)
        if self.dtype not in _DTYPES:
            raise ValueError(f"'dtype' must be one of {set(_DTYPES)}; got {self.dtype!r}.")
        if self.solver not in ("auto", "hat") and self.solver not in RIDGE_SOLVERS:
            raise ValueError(f"'solver' must be 'auto', 'hat' or one of "
                             f"{sorted(RIDGE_SOLVERS)}; got {self.solver!r}.")
        if self.solver == "hat" and self.standardize:
            raise ValueError("solver='hat' needs standardize=False: per-fold scaling "
                             "changes the model in every fold. Use solver='auto'.")
        if self.target_chunk is not None and not (
                isinstance(self.target_chunk, numbers.Integral) and self.target_chunk >= 1):
            raise ValueError(f"'target_chunk' must be None or an int >= 1; got "
                             f"{self.target_chunk!r}.")
        return alphas, delays, _DTYPES[self.dtype]

    def _validate_X(self, X: Any, reset: bool) -> np.ndarray:
        """2-D float64 X; records or checks n_features_in_ (and feature names)."""
        if not scipy.sparse.issparse(X) and X is not None and np.asarray(X).ndim != 2:
            _as_2d_float(X, "X")  # raises the ndim error
        validate_data(self, X, reset=reset, skip_check_array=True)
        return _as_2d_float(X, "X")[0]

    def _delayed(self, X: np.ndarray, groups: Any, delays: tuple[int, ...] | None
                 ) -> np.ndarray:
        return X if delays is None else make_delays(X, delays, groups)

    def _pick_solver(self, n_train: int, n_features: int, device: torch.device) -> str:
        if self.solver in RIDGE_SOLVERS:
            return self.solver
        if n_features > n_train:
            return "dual"
        return "tridiagonal" if device.type == "cpu" else "primal"

    def _uses_hat(self, folds: list, n_samples: int, n_features: int) -> bool:
        return self.solver == "hat" or (self.solver == "auto" and not self.standardize and max(
            len(va) for _, va in folds) <= min(n_samples, n_features))

    def _check_fit_data(self, X: Any, y: Any, groups: Any
                        ) -> tuple[np.ndarray, np.ndarray, bool, np.ndarray | None]:
        """X (n, p) and Y (n, t) as float64, whether y was 1-D, and the checked groups."""
        X = self._validate_X(X, reset=True)
        Y, y_1d = _as_2d_float(y, "y", allow_1d=True)
        n = X.shape[0]
        if Y.shape[0] != n:
            raise ValueError(f"X and y must have the same number of samples; got X with "
                             f"{n} and y with {Y.shape[0]}.")
        if n < 2:
            raise ValueError(f"X has {n} sample(s); RidgeEncoder needs at least 2 samples "
                             f"(n_samples = {n}) to cross-validate.")
        if groups is not None:
            groups = _check_groups(groups, n)
        const = np.flatnonzero(np.ptp(Y, axis=0) == 0)
        if const.size:
            raise ValueError(f"y has {const.size} constant target(s) (columns "
                             f"{const[:10].tolist()}); Pearson r is undefined for them. "
                             f"Drop them before fitting.")
        return X, Y, y_1d, groups

    # -- API
    def fit(self, X: Any, y: Any, groups: Any = None) -> RidgeEncoder:
        """Choose alpha per target by CV over groups, then refit on all samples.

        Parameters
        ----------
        X : array of shape (n_samples, n_features)
            Features on the TR grid (before delays).
        y : array of shape (n_samples, n_targets) or (n_samples,)
            Targets (parcel time series).
        groups : array of shape (n_samples,), default=None
            Run label per sample; required for cv='group'.

        Returns
        -------
        self : RidgeEncoder
        """
        alphas, delays, tdtype = self._check_params()
        X, Y, y_1d, groups = self._check_fit_data(X, y, groups)
        folds = _make_folds(self.cv, groups, X.shape[0])
        device = pick_device(self.device)  # device chosen once, here
        if self.solver in _CPU_ONLY_SOLVERS and device.type != "cpu":
            raise ValueError(f"solver={self.solver!r} runs on CPU only; got device "
                             f"{str(device)!r}. Use solver='auto' or device='cpu'.")
        Xd = self._delayed(X, groups, delays)
        (n, p), t = Xd.shape, Y.shape[1]
        names = [self._pick_solver(len(tr), p, device) for tr, _ in folds] + [
            self._pick_solver(n, p, device)]  # per fold, and for the refit
        use_hat = self._uses_hat(folds, n, p)
        pb = _problem(Xd, Y, folds, self.standardize, tdtype, device,
                      downdate=not use_hat and any(name in _GRAM_FORM for name in names))
        chunk = t if self.target_chunk is None else int(self.target_chunk)
        if use_hat:  # X and Y are centred on all samples, and not scaled
            kind = "dual" if names[-1] == "dual" else "primal"  # gram form for the hat
            mse, fac = _hat_cv_mse(pb.X, pb.Y, folds, torch.as_tensor(
                alphas, dtype=tdtype, device=device), chunk, kind)
            m, my, s = pb.X.new_zeros(p), pb.Y.new_zeros(t), pb.X.new_ones(p)
        else:
            mse = _cv_mse_per_fold(pb, names[:-1], alphas, chunk)
            m, my, s, fac = _training_part(pb, names[-1], None)  # all samples, for the refit
        mean_mse = mse.mean(0)  # (n_alphas, t): mean over folds, as GridSearchCV
        best = torch.argmin(mean_mse, dim=0)  # first minimum on ties
        W = _weights(fac, best, alphas)  # (p, t) on the standardised features
        coef = (W / s[:, None]).T.cpu().double().numpy()  # (t, p) on raw features
        intercept = pb.y_mean0 + my.cpu().double().numpy() - coef @ (
            pb.x_mean0 + m.cpu().double().numpy())

        np_dtype = np.float32 if tdtype == torch.float32 else np.float64
        self.alpha_ = alphas[best.cpu().numpy()]
        self.coef_ = coef.astype(np_dtype)
        self.intercept_ = intercept.astype(np_dtype)
        self.cv_scores_ = -mean_mse.cpu().double().numpy()
        if y_1d:
            self.alpha_ = float(self.alpha_[0])
            self.coef_ = self.coef_[0]
            self.intercept_ = float(self.intercept_[0])
            self.cv_scores_ = self.cv_scores_[:, 0]
        self.n_splits_ = len(folds)
        self.solver_ = "hat" if use_hat else names[-1]
        self.device_ = str(device)
        self._delays = delays
        return self

    def predict(self, X: Any, groups: Any = None) -> np.ndarray:
        """Predicted time series.

        Parameters
        ----------
        X : array of shape (n_samples, n_features)
        groups : array of shape (n_samples,), default=None
            Run label per sample, so delays do not cross runs; None: one run.

        Returns
        -------
        Y_pred : array of shape (n_samples, n_targets) or (n_samples,)
        """
        check_is_fitted(self)
        X = self._validate_X(X, reset=False)
        if groups is not None:
            groups = _check_groups(groups, X.shape[0])
        Xd = self._delayed(X, groups, self._delays)
        return Xd @ self.coef_.T.astype(np.float64) + self.intercept_

    def score(self, X: Any, y: Any, groups: Any = None) -> np.ndarray | float:
        """Pearson r between predictions and ``y`` per target (not R^2).

        Parameters
        ----------
        X : array of shape (n_samples, n_features)
        y : array of shape (n_samples, n_targets) or (n_samples,)
        groups : array of shape (n_samples,), default=None

        Returns
        -------
        r : array of shape (n_targets,), or float when Y is 1-D
            0.0 for a target or prediction with zero variance.
        """
        Y, y_1d = _as_2d_float(y, "y", allow_1d=True)
        pred = self.predict(X, groups=groups)
        pred = pred[:, None] if pred.ndim == 1 else pred
        if pred.shape != Y.shape:
            raise ValueError(f"y has shape {Y.shape} but the model predicts "
                             f"{pred.shape}; pass the targets it was fitted on.")
        r = pearson_r(Y, pred)
        return float(r[0]) if y_1d else r


# ------------------------------------------------------------------ per subject

def encode_subject(X: Any, Y: Any, groups: Any, **encoder_kwargs: Any) -> np.ndarray:
    """Leave-one-run-out encoding score per parcel.

    For each run, a :class:`RidgeEncoder` (its own inner CV over the other runs picks
    the alphas) is fitted on all other runs and predicts the held-out run; r per parcel is
    the Pearson correlation on each held-out run, averaged over runs weighted by their
    volumes. Each run's r is centred on that run: a run's baseline is not a response.

    Why per run, not one r over the concatenated predictions: a fold's prediction depends on
    every other run's BOLD, so pooled, each run's noise enters the normalisation of the
    others' terms, and r on the simulated brain's noise sits below 0 (-0.030 on the demo's 8 runs
    x 150 volumes, -0.067 on 3 x 30; ``benchmarks/null_scores.py``). The prediction of one run
    never sees that run's BOLD, so each run's r, and their mean, is 0 on noise.

    Parameters
    ----------
    X : array of shape (n_trs, n_features)
        Features on the TR grid, all runs stacked.
    Y : array of shape (n_trs, n_parcels)
    groups : array of shape (n_trs,)
        Run label per TR; at least 3 runs (1 held out, >= 2 for the inner CV).
    **encoder_kwargs
        Passed to :class:`RidgeEncoder` (alphas, cv, delays, device, dtype, ...).

    Returns
    -------
    r : array of shape (n_parcels,)
    """
    X, _ = _as_2d_float(X, "X")
    Y, _ = _as_2d_float(Y, "Y", allow_1d=True)
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"X and Y must have the same number of samples; got X with "
                         f"{X.shape[0]} and Y with {Y.shape[0]}.")
    if groups is None:
        raise ValueError("encode_subject needs groups (one run label per TR).")
    groups = _check_groups(groups, X.shape[0])
    runs = np.unique(groups)
    if len(runs) < 3:
        raise ValueError(f"encode_subject needs at least 3 runs (1 held out, >= 2 for "
                         f"the inner CV); groups has {len(runs)}.")
    r_runs, n_vols = [], []
    for run in runs:
        test = groups == run
        enc = RidgeEncoder(**encoder_kwargs).fit(X[~test], Y[~test], groups=groups[~test])
        r_runs.append(pearson_r(Y[test], enc.predict(X[test], groups=groups[test]).reshape(Y[test].shape)))
        n_vols.append(int(test.sum()))
    return np.average(np.stack(r_runs), axis=0, weights=n_vols)
