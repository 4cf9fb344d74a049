"""Tests for brainray.encoding: RidgeEncoder against a scikit-learn reference loop.

scikit-learn 1.9's RidgeCV refuses ``alpha_per_target=True`` with an explicit ``cv``
("cv!=None and alpha_per_target=True are incompatible"), so the reference is the plain
loop the estimator promises to reproduce: for every fold (LeaveOneGroupOut / GroupKFold /
KFold) and alpha, ``StandardScaler`` + ``Ridge`` fitted on the training part, validation
MSE averaged over folds, best alpha per target, refit on all samples. For one target
and standardize=False that loop equals ``RidgeCV(alphas, cv=folds)``, also checked.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import Ridge, RidgeCV
from sklearn.model_selection import GroupKFold, KFold, LeaveOneGroupOut
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from brainray.encoding import (
    DEFAULT_ALPHAS,
    PAPER_ALPHAS,
    RIDGE_SOLVERS,
    RidgeEncoder,
    encode_subject,
    make_delays,
    pearson_r,
    resample_to_tr,
    summarize_scores,
)

ALPHAS = (0.1, 1.0, 10.0, 100.0, 1000.0)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def _data(rng, n_runs=4, n_per_run=30, p=6, t=5, constant_col=True):
    """Targets from a few features plus noise; one constant feature column."""
    n = n_runs * n_per_run
    X = rng.standard_normal((n, p)) * rng.uniform(0.5, 3.0, p) + rng.normal(0, 2, p)
    if constant_col:
        X[:, 0] = 2.5
    W = rng.standard_normal((p, t)) * (rng.random((p, t)) < 0.5)
    Y = X @ W + rng.standard_normal((n, t)) * rng.uniform(0.5, 5.0, t)
    groups = np.repeat(np.arange(n_runs), n_per_run)
    return X, Y, groups


def _reference(X, Y, folds, alphas, standardize=True):
    """sklearn loop: per fold, per alpha, scaler + Ridge on the training part."""
    def model(alpha):
        scaler = StandardScaler(with_std=standardize)
        return make_pipeline(scaler, Ridge(alpha=alpha))

    mse = np.zeros((len(alphas), Y.shape[1]))
    for train, val in folds:
        for k, alpha in enumerate(alphas):
            pred = model(alpha).fit(X[train], Y[train]).predict(X[val])
            mse[k] += ((Y[val] - pred) ** 2).mean(0) / len(folds)
    best = np.asarray(alphas)[mse.argmin(0)]
    return best, model(best).fit(X, Y), -mse


# ---------------------------------------------------------------- vs scikit-learn

@pytest.mark.parametrize("solver", ["auto", "primal", "dual", "tridiagonal"])
@pytest.mark.parametrize("n_runs,n_per_run,p,t", [
    (4, 30, 6, 5),     # p << n
    (3, 20, 45, 4),    # p close to n_train
    (3, 12, 80, 3),    # p > n: kernel form under 'auto'
])
def test_matches_sklearn_loop_logo(rng, solver, n_runs, n_per_run, p, t):
    X, Y, groups = _data(rng, n_runs, n_per_run, p, t)
    folds = list(LeaveOneGroupOut().split(X, Y, groups))
    best, ref, ref_scores = _reference(X, Y, folds, ALPHAS)
    enc = RidgeEncoder(alphas=ALPHAS, delays=None, dtype="float64", device="cpu",
                       solver=solver).fit(X, Y, groups=groups)
    np.testing.assert_array_equal(enc.alpha_, best)
    np.testing.assert_allclose(enc.cv_scores_, ref_scores, rtol=1e-6)
    X_new = rng.standard_normal((17, p)) * 2
    np.testing.assert_allclose(enc.predict(X_new), ref.predict(X_new), atol=1e-4)
    coef = ref[-1].coef_ / ref[0].scale_
    np.testing.assert_allclose(enc.coef_, coef, atol=1e-6)
    np.testing.assert_allclose(enc.score(X_new, Y[:17]),
                               pearson_r(Y[:17], ref.predict(X_new)), atol=1e-4)
    assert enc.n_features_in_ == p and enc.n_splits_ == n_runs


@pytest.mark.parametrize("cv,splitter", [(2, GroupKFold(2)), (3, GroupKFold(3))])
def test_matches_sklearn_loop_group_kfold(rng, cv, splitter):
    X, Y, groups = _data(rng, n_runs=5, n_per_run=18, p=8, t=6)
    folds = list(splitter.split(X, Y, groups))
    best, ref, _ = _reference(X, Y, folds, ALPHAS)
    enc = RidgeEncoder(alphas=ALPHAS, cv=cv, delays=None, dtype="float64",
                       device="cpu").fit(X, Y, groups=groups)
    np.testing.assert_array_equal(enc.alpha_, best)
    np.testing.assert_allclose(enc.predict(X), ref.predict(X), atol=1e-4)


def test_kfold_contiguous_and_unscaled(rng):
    X, Y, _ = _data(rng, n_runs=5, n_per_run=20, p=7, t=4)
    folds = list(KFold(5).split(X))
    best, ref, _ = _reference(X, Y, folds, ALPHAS, standardize=False)
    enc = RidgeEncoder(alphas=ALPHAS, cv="kfold", delays=None, standardize=False,
                       dtype="float64", device="cpu").fit(X, Y)
    np.testing.assert_array_equal(enc.alpha_, best)
    np.testing.assert_allclose(enc.predict(X), ref.predict(X), atol=1e-4)


def test_single_target_matches_sklearn_ridgecv(rng):
    """Unscaled, one target: the loop is exactly RidgeCV with the same folds."""
    X, Y, groups = _data(rng, n_runs=4, n_per_run=25, p=6, t=1, constant_col=False)
    y = Y[:, 0]
    folds = list(LeaveOneGroupOut().split(X, y, groups))
    ref = RidgeCV(alphas=ALPHAS, cv=folds, scoring="neg_mean_squared_error").fit(X, y)
    enc = RidgeEncoder(alphas=ALPHAS, delays=None, standardize=False, dtype="float64",
                       device="cpu").fit(X, y, groups=groups)
    assert isinstance(enc.alpha_, float) and enc.alpha_ == ref.alpha_
    assert enc.coef_.shape == (6,) and isinstance(enc.intercept_, float)
    np.testing.assert_allclose(enc.predict(X), ref.predict(X), atol=1e-6)
    assert isinstance(enc.score(X, y), float)


def test_delays_inside_fit_match_sklearn_on_delayed_features(rng):
    """Delays applied per run inside fit = sklearn loop on make_delays features."""
    X, Y, groups = _data(rng, n_runs=4, n_per_run=25, p=4, t=3)
    delays = (1, 2, 3, 4)
    Xd = make_delays(X, delays, groups)
    folds = list(LeaveOneGroupOut().split(Xd, Y, groups))
    best, ref, _ = _reference(Xd, Y, folds, ALPHAS)
    enc = RidgeEncoder(alphas=ALPHAS, delays=delays, dtype="float64",
                       device="cpu").fit(X, Y, groups=groups)
    np.testing.assert_array_equal(enc.alpha_, best)
    np.testing.assert_allclose(enc.predict(X, groups=groups), ref.predict(Xd), atol=1e-4)
    assert enc.coef_.shape == (3, 16) and enc.n_features_in_ == 4


def test_float32_close_to_float64(rng):
    X, Y, groups = _data(rng, n_runs=4, n_per_run=40, p=10, t=6)
    e64 = RidgeEncoder(alphas=ALPHAS, dtype="float64", device="cpu").fit(X, Y, groups)
    e32 = RidgeEncoder(alphas=ALPHAS, dtype="float32", device="cpu").fit(X, Y, groups)
    assert e32.coef_.dtype == np.float32
    np.testing.assert_allclose(e32.cv_scores_, e64.cv_scores_, rtol=1e-3)
    np.testing.assert_allclose(e32.predict(X, groups), e64.predict(X, groups),
                               atol=1e-3 * np.abs(Y).max())


def test_target_chunk_does_not_change_result(rng):
    X, Y, groups = _data(rng, t=7)
    kw = dict(alphas=ALPHAS, delays=None, dtype="float64", device="cpu")
    a = RidgeEncoder(target_chunk=None, **kw).fit(X, Y, groups)
    b = RidgeEncoder(target_chunk=2, **kw).fit(X, Y, groups)
    np.testing.assert_array_equal(a.alpha_, b.alpha_)
    np.testing.assert_allclose(a.coef_, b.coef_, atol=1e-10)


def test_recovers_known_weights(rng):
    """Low noise: predictions track the generating model."""
    n, p = 300, 5
    X = rng.standard_normal((n, p))
    W = rng.standard_normal((p, 3))
    Y = X @ W + 0.01 * rng.standard_normal((n, 3)) + 4.0
    enc = RidgeEncoder(alphas=ALPHAS, delays=None, dtype="float64", device="cpu")
    enc.fit(X, Y, groups=np.repeat(np.arange(3), 100))
    np.testing.assert_allclose(enc.coef_, W.T, atol=0.01)
    np.testing.assert_allclose(enc.intercept_, 4.0, atol=0.01)
    assert enc.alpha_.min() == 0.1


def test_defaults_and_registry():
    assert len(PAPER_ALPHAS) == 11 and PAPER_ALPHAS[-1] == 1200
    assert DEFAULT_ALPHAS[0] == pytest.approx(0.1) and DEFAULT_ALPHAS[-1] == pytest.approx(1e5)
    assert set(RIDGE_SOLVERS) == {"primal", "dual", "tridiagonal"}
    enc = RidgeEncoder()
    assert enc.get_params()["delays"] == (1, 2, 3, 4)
    assert enc.set_params(cv=3).cv == 3


def test_a_solver_registered_by_name_is_what_fit_uses(rng, monkeypatch):
    """fit looks solvers up in RIDGE_SOLVERS: a plain function registered under a new name
    (not of the gram form, so it is given each training part's rows) factors every fold and
    the refit, and gives what the built-in solver it wraps gives."""
    from brainray.encoding import _solve_primal

    shapes = []

    def counted(X, Y, gram=None, cross=None):
        shapes.append(tuple(X.shape))
        return _solve_primal(X, Y)

    monkeypatch.setitem(RIDGE_SOLVERS, "counted", counted)
    X, Y, groups = _data(rng)
    kw = dict(alphas=ALPHAS, delays=None, dtype="float64", device="cpu")
    enc = RidgeEncoder(solver="counted", **kw).fit(X, Y, groups)
    ref = RidgeEncoder(solver="primal", **kw).fit(X, Y, groups)
    assert enc.solver_ == "counted" and shapes == [(90, 6)] * 4 + [(120, 6)]
    np.testing.assert_array_equal(enc.alpha_, ref.alpha_)
    np.testing.assert_allclose(enc.cv_scores_, ref.cv_scores_, rtol=1e-9)
    np.testing.assert_allclose(enc.coef_, ref.coef_, atol=1e-9)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu(rng):
    X, Y, groups = _data(rng, t=6)
    kw = dict(alphas=ALPHAS, dtype="float64")
    cpu = RidgeEncoder(device="cpu", **kw).fit(X, Y, groups)
    gpu = RidgeEncoder(device="cuda", **kw).fit(X, Y, groups)
    assert gpu.device_.startswith("cuda")
    np.testing.assert_array_equal(cpu.alpha_, gpu.alpha_)
    np.testing.assert_allclose(cpu.coef_, gpu.coef_, atol=1e-8)


# ---------------------------------------------------------------- delays and TRs

def _delays_loop(X, delays, groups):
    n, p = X.shape
    out = np.zeros((n, p * len(delays)))
    for i in range(n):
        for k, d in enumerate(delays):
            j = i - d
            if 0 <= j < n and groups[j] == groups[i]:
                out[i, k * p:(k + 1) * p] = X[j]
    return out


@pytest.mark.parametrize("delays", [(1, 2, 3, 4), (0,), (-1, 0, 2), (7,)])
def test_make_delays_matches_loop(rng, delays):
    X = rng.standard_normal((23, 3))
    groups = np.repeat([5, 1, 9], [10, 6, 7])  # contiguous runs, unsorted labels
    np.testing.assert_array_equal(make_delays(X, delays, groups),
                                  _delays_loop(X, delays, groups))
    np.testing.assert_array_equal(make_delays(X, delays),
                                  _delays_loop(X, delays, np.zeros(23)))


def test_make_delays_zero_at_run_start(rng):
    X = rng.standard_normal((8, 2)) + 10
    out = make_delays(X, (1,), groups=[0] * 4 + [1] * 4)
    assert np.all(out[[0, 4]] == 0) and np.all(out[[1, 2, 3, 5, 6, 7]] != 0)


def _resample_loop(times, F, tr, n_vols):
    out = np.zeros((n_vols, F.shape[1]))
    for k in range(n_vols):
        rows = [i for i, t in enumerate(times) if k * tr <= t < (k + 1) * tr]
        if rows:
            out[k] = F[rows].mean(0)
    return out


def test_resample_to_tr_matches_loop(rng):
    tr, n_vols = 1.49, 40
    times = np.concatenate([np.arange(0, 20, 1 / 15), np.arange(35, 70, 1 / 15),
                            [k * tr for k in range(n_vols) if not 14 <= k <= 22],  # exact edges
                            [-1.0, 100.0]])
    rng.shuffle(times)
    F = rng.standard_normal((times.size, 4))
    out = resample_to_tr(times, F, tr, n_vols)
    np.testing.assert_allclose(out, _resample_loop(times, F, tr, n_vols), atol=1e-12)
    assert np.all(out[14:23] == 0) and np.all(out[[13, 23]] != 0)  # gap 20-35 s


# ---------------------------------------------------------------- scores

def test_pearson_r_matches_numpy(rng):
    a, b = rng.standard_normal((50, 4)), rng.standard_normal((50, 4))
    b[:, 3] = 1.0
    expected = [np.corrcoef(a[:, j], b[:, j])[0, 1] for j in range(3)] + [0.0]
    np.testing.assert_allclose(pearson_r(a, b), expected, atol=1e-12)


def test_summarize_scores():
    r = np.linspace(-0.1, 0.8, 25)
    s = summarize_scores(r)
    assert s["brain_r_mean"] == pytest.approx(r.mean())
    assert s["brain_r_max"] == pytest.approx(0.8)
    assert s["brain_r_top10"] == pytest.approx(np.sort(r)[-3:].mean())  # ceil(2.5)
    assert s["ceiling_frac"] is None
    ceiling = np.full(25, 0.9)
    ceiling[0] = 0.0
    frac = summarize_scores(r, ceiling)["ceiling_frac"]
    assert frac == pytest.approx(np.mean(r[1:] / 0.9))
    assert summarize_scores([0.3])["brain_r_top10"] == pytest.approx(0.3)


def test_encode_subject_is_outer_leave_one_run_out(rng):
    X, Y, groups = _data(rng, n_runs=4, n_per_run=25, p=5, t=3)
    kw = dict(alphas=ALPHAS, delays=(0, 1), dtype="float64", device="cpu")
    r = encode_subject(X, Y, groups, **kw)
    pred = np.zeros_like(Y)
    for train, test in LeaveOneGroupOut().split(X, Y, groups):
        enc = RidgeEncoder(**kw).fit(X[train], Y[train], groups=groups[train])
        pred[test] = enc.predict(X[test], groups=groups[test])
    per_run = np.stack([pearson_r(Y[groups == g], pred[groups == g]) for g in np.unique(groups)])
    np.testing.assert_allclose(r, per_run.mean(0), atol=1e-10)  # equal runs: the plain mean of per-run r
    assert r.shape == (3,) and np.all(r > 0.3)


def test_runs_are_weighted_by_their_volumes(rng):
    X, Y, groups = _data(rng, n_runs=3, n_per_run=30, p=5, t=2)
    groups = np.repeat([0, 1, 2], [20, 30, 40])
    kw = dict(alphas=ALPHAS, delays=(0,), device="cpu")
    pred = np.zeros_like(Y)
    for train, test in LeaveOneGroupOut().split(X, Y, groups):
        pred[test] = RidgeEncoder(**kw).fit(X[train], Y[train], groups=groups[train]).predict(X[test], groups=groups[test])
    per_run = np.stack([pearson_r(Y[groups == g], pred[groups == g]) for g in (0, 1, 2)])
    np.testing.assert_allclose(encode_subject(X, Y, groups, **kw), np.array([20, 30, 40]) @ per_run / 90, atol=1e-10)


def test_noise_parcels_score_zero_not_below(rng):
    """Pure noise with a run baseline scores 0 within its standard error. Pooling the held-out
    predictions into one r (each run centred) reads the same noise below 0: a fold's prediction
    depends on the other runs' BOLD, which couples each run's noise to the others' normalisation."""
    n_runs, n = 3, 30
    groups = np.repeat(np.arange(n_runs), n)
    X = rng.standard_normal((n_runs * n, 16))
    Y = rng.standard_normal((n_runs * n, 400)) + rng.standard_normal((n_runs, 400)).repeat(n, axis=0)
    kw = dict(alphas=ALPHAS, delays=(0, 1), device="cpu")
    r = encode_subject(X, Y, groups, **kw)
    assert abs(r.mean()) < 4 * r.std() / np.sqrt(r.size), (r.mean(), r.std())
    pred = np.zeros_like(Y)
    for train, test in LeaveOneGroupOut().split(X, Y, groups):
        pred[test] = RidgeEncoder(**kw).fit(X[train], Y[train], groups=groups[train]).predict(X[test], groups=groups[test])
    assert pearson_r(Y, pred).mean() < -0.3  # uncentred, the run baselines bias r far below 0
    centre = lambda a: a - np.stack([a[groups == g].mean(0) for g in groups])  # noqa: E731  per run
    pooled = pearson_r(centre(Y), centre(pred))
    assert pooled.mean() < -4 * pooled.std() / np.sqrt(pooled.size), (pooled.mean(), pooled.std())


# ---------------------------------------------------------------- errors

def test_errors(rng):
    X, Y, groups = _data(rng)
    enc = RidgeEncoder(delays=None, device="cpu")
    with pytest.raises(ValueError, match=r"'cv' must be one of \{'group', 'kfold'\} or an "
                                         r"int >= 2; got 'loo'\."):
        RidgeEncoder(cv="loo").fit(X, Y, groups)
    with pytest.raises(ValueError, match="'cv' must be one of"):
        RidgeEncoder(cv=1).fit(X, Y, groups)
    with pytest.raises(ValueError, match="same number of samples; got X with 120 and y "
                                         "with 119"):
        enc.fit(X, Y[:-1], groups)
    Xn = X.copy()
    Xn[3, 2] = np.nan
    with pytest.raises(ValueError, match=r"X contains NaN or inf .* row 3, column 2"):
        enc.fit(Xn, Y, groups)
    Yn = Y.copy()
    Yn[5, 1] = np.inf
    with pytest.raises(ValueError, match="y contains NaN or inf"):
        enc.fit(X, Yn, groups)
    with pytest.raises(ValueError, match="groups has 1 unique value"):
        enc.fit(X, Y, np.zeros(len(X)))
    with pytest.raises(ValueError, match="cv='group' needs run labels"):
        enc.fit(X, Y)
    with pytest.raises(ValueError, match=r"groups must be a 1-D array .* \(length 120\)"):
        enc.fit(X, Y, groups[:-1])
    with pytest.raises(ValueError, match=r"cv=5 \(GroupKFold\) needs at least 5 groups"):
        RidgeEncoder(cv=5).fit(X, Y, groups)
    Yc = Y.copy()
    Yc[:, 2] = 1.0
    with pytest.raises(ValueError, match=r"y has 1 constant target\(s\) \(columns \[2\]\)"):
        enc.fit(X, Yc, groups)
    with pytest.raises(ValueError, match="'alphas' must be a non-empty sequence"):
        RidgeEncoder(alphas=[1.0, -1.0]).fit(X, Y, groups)
    with pytest.raises(ValueError, match="'dtype' must be one of"):
        RidgeEncoder(dtype="float16").fit(X, Y, groups)
    with pytest.raises(ValueError, match="'solver' must be 'auto', 'hat' or one of"):
        RidgeEncoder(solver="svd").fit(X, Y, groups)
    with pytest.raises(ValueError, match="'target_chunk' must be None or an int >= 1"):
        RidgeEncoder(target_chunk=0).fit(X, Y, groups)
    with pytest.raises(ValueError, match="'device' must be 'auto', 'cpu'"):
        RidgeEncoder(device="tpu!").fit(X, Y, groups)
    with pytest.raises(ValueError, match="X must be a 2-D array"):
        enc.fit(X[:, 0], Y, groups)
    with pytest.raises(ValueError, match="X has 1 sample"):
        RidgeEncoder(cv="kfold").fit(X[:1], Y[:1])
    with pytest.raises(ValueError, match=r"cv='kfold' needs at least 5 samples"):
        RidgeEncoder(cv="kfold").fit(X[:3], Y[:3])
    with pytest.raises(TypeError, match="X is a sparse matrix"):
        import scipy.sparse
        enc.fit(scipy.sparse.csr_matrix(X), Y, groups)
    fitted = RidgeEncoder(delays=None, device="cpu").fit(X, Y, groups)
    with pytest.raises(ValueError, match="X has 5 features, but RidgeEncoder is expecting"):
        fitted.predict(X[:, :5])
    with pytest.raises(ValueError, match=r"y has shape \(120, 2\) but the model predicts"):
        fitted.score(X, Y[:, :2])


def test_delay_errors(rng):
    X = rng.standard_normal((10, 2))
    with pytest.raises(TypeError, match="got the int 3. Wrap it"):
        RidgeEncoder(delays=3).fit(X, X[:, 0], np.repeat([0, 1], 5))
    with pytest.raises(ValueError, match="'delays' is empty"):
        make_delays(X, ())
    with pytest.raises(TypeError, match=r"'delays' must hold ints .* got 1.5"):
        make_delays(X, (1.5,))
    with pytest.raises(ValueError, match="'delays' has repeated values"):
        make_delays(X, (1, 1))
    with pytest.raises(ValueError, match="'delays' is None"):
        make_delays(X, None)


def test_resample_errors():
    F = np.ones((3, 2))
    with pytest.raises(ValueError, match="'tr' must be a positive number"):
        resample_to_tr([0, 1, 2], F, 0.0, 4)
    with pytest.raises(ValueError, match="'n_vols' must be an int >= 1"):
        resample_to_tr([0, 1, 2], F, 1.0, 0)
    with pytest.raises(ValueError, match=r"features must have shape \(len\(times\)"):
        resample_to_tr([0, 1], F, 1.0, 4)
    with pytest.raises(ValueError, match="times must be 1-D"):
        resample_to_tr(np.zeros((3, 1)), F, 1.0, 4)
    with pytest.raises(ValueError, match="times contains NaN"):
        resample_to_tr([0, np.nan, 2], F, 1.0, 4)
    with pytest.raises(ValueError, match="features contains NaN"):
        resample_to_tr([0, 1, 2], F * np.nan, 1.0, 4)


def test_score_errors(rng):
    with pytest.raises(ValueError, match="r contains NaN or inf at parcel"):
        summarize_scores([0.1, np.nan])
    with pytest.raises(ValueError, match="r is empty"):
        summarize_scores([])
    with pytest.raises(ValueError, match="ceiling has no finite positive entry"):
        summarize_scores([0.1, 0.2], ceiling=0.0)
    with pytest.raises(ValueError, match="Y_true and Y_pred must have the same shape"):
        pearson_r(np.zeros(3), np.zeros(4))
    X, Y, groups = _data(rng, n_runs=2, n_per_run=10)
    with pytest.raises(ValueError, match="needs at least 3 runs .* groups has 2"):
        encode_subject(X, Y, groups)
    with pytest.raises(ValueError, match="encode_subject needs groups"):
        encode_subject(X, Y, None)


# ---------------------------------------------------------------- sklearn contract
# All checks pass on a KFold instance without delays. The default instance cannot be
# checked: the checks call fit(X, y) without groups (cv='group' needs them), and several
# predict on subsets or permutations of rows, which FIR delays (they read the previous
# rows) legitimately change.


@parametrize_with_checks([RidgeEncoder(cv=3, delays=None, device="cpu", dtype="float64")])
def test_sklearn_compatible(estimator, check):
    check(estimator)


@pytest.mark.parametrize("n_runs,n_per_run,p,t", [(4, 30, 6, 5), (3, 12, 80, 3)])
def test_hat_solver_matches_sklearn_loop(rng, n_runs, n_per_run, p, t):
    """Unscaled: one factorisation of all data + block hat matrix = the fold loop."""
    X, Y, groups = _data(rng, n_runs, n_per_run, p, t)
    folds = list(LeaveOneGroupOut().split(X, Y, groups))
    best, ref, ref_scores = _reference(X, Y, folds, ALPHAS, standardize=False)
    for solver in ("hat", "primal", "tridiagonal"):
        enc = RidgeEncoder(alphas=ALPHAS, delays=None, standardize=False, dtype="float64",
                           device="cpu", solver=solver).fit(X, Y, groups=groups)
        assert enc.solver_ == solver
        np.testing.assert_array_equal(enc.alpha_, best)
        np.testing.assert_allclose(enc.cv_scores_, ref_scores, rtol=1e-6)
        np.testing.assert_allclose(enc.predict(X), ref.predict(X), atol=1e-4)
    auto = RidgeEncoder(alphas=ALPHAS, delays=None, standardize=False, device="cpu")
    assert auto.fit(X, Y, groups).solver_ == ("hat" if n_per_run <= p else "tridiagonal")


def test_hat_uses_the_smaller_gram(rng, monkeypatch):
    """n > p: the hat path factors the (p, p) gram, never the (n, n) kernel."""
    X, Y, groups = _data(rng, n_runs=3, n_per_run=10, p=12, t=2)
    sizes = []
    eigh = torch.linalg.eigh
    monkeypatch.setattr(torch.linalg, "eigh", lambda A: sizes.append(A.shape[0]) or eigh(A))
    enc = RidgeEncoder(alphas=ALPHAS, delays=None, standardize=False, device="cpu")
    assert enc.fit(X, Y, groups).solver_ == "hat" and sizes == [12]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("p", [1, 5, 130, 300])  # 300 > n: singular gram
def test_tridiagonal_as_accurate_as_eigh(rng, dtype, p):
    """Q (T + alpha I)^{-1} Q^T X^T Y = (G + alpha I)^{-1} X^T Y, over several WY blocks,
    with an error no larger than the eigendecomposition's (float64 solve as reference)."""
    from brainray.encoding import _solve_primal, _solve_tridiagonal

    Xn = rng.standard_normal((200, p)) * rng.uniform(0.5, 3, p)
    if p > 1:
        Xn[:, 1] = 0.0  # zero column: a reflector with tau = 0
    Yn, Zn = rng.standard_normal((200, 7)), rng.standard_normal((p, 4))
    X, Y, Z = (torch.as_tensor(a, dtype=getattr(torch, dtype)) for a in (Xn, Yn, Zn))
    eig, tri = _solve_primal(X, Y), _solve_tridiagonal(X, Y)
    eps = torch.finfo(X.dtype).eps
    np.testing.assert_allclose(tri.unrotate(tri.rotate(Z)).numpy(), Zn, atol=100 * eps)
    for alpha in (1e-2, 1.0, 1e3):
        direct = np.linalg.solve(Xn.T @ Xn + alpha * np.eye(p), Xn.T @ Yn)
        err = {name: np.abs(fac.unrotate(fac.shrink(fac.B, alpha)).double().numpy()
                            - direct).max() for name, fac in (("eig", eig), ("tri", tri))}
        assert err["tri"] <= 10 * max(err["eig"], eps * np.abs(direct).max()), err
        val = (tri.shrink(tri.rotate(Z), alpha).T @ tri.B).double().numpy()  # val form
        assert np.abs(val - Zn.T @ direct).max() <= 10 * max(
            err["eig"], eps * np.abs(direct).max()) * np.abs(Zn).sum(0).max()


@pytest.mark.parametrize("standardize", [True, False])
def test_downdated_gram_equals_per_fold_fit(rng, standardize):
    """Fold grams from the full gram minus the held-out run = fitting each fold alone."""
    X, Y, groups = _data(rng, n_runs=4, n_per_run=40, p=12, t=3)
    kw = dict(alphas=ALPHAS, delays=None, dtype="float64", device="cpu",
              standardize=standardize)
    downdated = RidgeEncoder(solver="tridiagonal", **kw).fit(X, Y, groups)
    direct = RidgeEncoder(solver="dual", **kw).fit(X, Y, groups)  # per fold from its rows
    np.testing.assert_array_equal(downdated.alpha_, direct.alpha_)
    np.testing.assert_allclose(downdated.cv_scores_, direct.cv_scores_, rtol=1e-9)
    np.testing.assert_allclose(downdated.coef_, direct.coef_, atol=1e-9)


def test_tridiagonal_is_cpu_only(rng):
    X, Y, groups = _data(rng)
    with pytest.raises(ValueError, match="runs on CPU only"):
        RidgeEncoder(solver="tridiagonal", device="meta").fit(X, Y, groups)


def test_hat_needs_unscaled(rng):
    X, Y, groups = _data(rng)
    with pytest.raises(ValueError, match="solver='hat' needs standardize=False"):
        RidgeEncoder(solver="hat").fit(X, Y, groups)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tridiagonal_shrink_many_matches_lapack(rng, dtype, monkeypatch):
    """The batched (T + a I)^{-1} (one row sweep for all alphas and columns) equals the
    per-alpha LAPACK solves, in several alpha batches, with the pivoted-LU fallback for
    an alpha where T + a I is not positive definite (an indefinite 'gram')."""
    from brainray.encoding import _Tridiagonal

    p, m = 150, 7
    M = rng.standard_normal((p, p))
    gram = torch.as_tensor(M + M.T, dtype=getattr(torch, dtype.__name__))  # indefinite
    tri = _Tridiagonal(gram, torch.zeros((p, 1), dtype=gram.dtype))
    Z = torch.as_tensor(rng.standard_normal((p, m)), dtype=gram.dtype)
    alphas = [0.5, 1e3, 2e3, 5e3, 1e4]  # 0.5: not PD (eigenvalues down to ~ -2 sqrt(p))
    assert tri._pttrf(tri.d + 0.5, tri.e)[2] != 0 and tri._pttrf(tri.d + 1e4, tri.e)[2] == 0
    monkeypatch.setattr(_Tridiagonal, "batch_min", 0)
    monkeypatch.setattr(_Tridiagonal, "batch_max_elements", 2 * p * m)  # batches of 2
    many = tri.shrink_many(Z, alphas)
    eps = np.finfo(dtype).eps
    for a, S in zip(alphas, many):
        ref = tri.shrink(Z, a).numpy()
        assert S.shape == (p, m)
        np.testing.assert_allclose(S.numpy(), ref, rtol=0, atol=1e3 * eps * np.abs(ref).max())
    # the solves are the real inverse: Q (T + a I)^{-1} Q^T z = (G + a I)^{-1} z
    z = Z.numpy().astype(np.float64)
    x = tri.unrotate(tri.shrink_many(tri.rotate(Z), [1e4])[0]).numpy()
    np.testing.assert_allclose(x, np.linalg.solve(M + M.T + 1e4 * np.eye(p), z),
                               atol=1e2 * eps * np.abs(z).max() / 1e4)


def test_fit_with_batched_shrink_equals_per_alpha(rng, monkeypatch):
    """The fit gives the same alphas, scores and weights whether the alphas' tridiagonal
    solves run batched (paper-scale path) or one LAPACK call per alpha (small data)."""
    from brainray.encoding import _Tridiagonal

    X, Y, groups = _data(rng, n_runs=4, n_per_run=40, p=12, t=3)
    kw = dict(alphas=ALPHAS, delays=(1, 2), dtype="float64", device="cpu",
              solver="tridiagonal")
    per_alpha = RidgeEncoder(**kw).fit(X, Y, groups)
    monkeypatch.setattr(_Tridiagonal, "batch_min", 0)
    monkeypatch.setattr(_Tridiagonal, "batch_max_elements", 3 * 24 * 40)  # 2 batches
    batched = RidgeEncoder(**kw).fit(X, Y, groups)
    np.testing.assert_array_equal(batched.alpha_, per_alpha.alpha_)
    np.testing.assert_allclose(batched.cv_scores_, per_alpha.cv_scores_, rtol=1e-12)
    np.testing.assert_allclose(batched.coef_, per_alpha.coef_, rtol=1e-12, atol=1e-14)


def test_tridiagonal_keeps_the_callers_gram(rng):
    """Only overwrite_gram=True lets the reduction work in place on the gram."""
    from brainray.encoding import _solve_tridiagonal

    Xn = rng.standard_normal((50, 9))
    G = torch.as_tensor(Xn.T @ Xn)
    G0 = G.clone()
    _solve_tridiagonal(None, None, gram=G, cross=torch.zeros((9, 1), dtype=G.dtype))
    torch.testing.assert_close(G, G0, rtol=0, atol=0)
