"""Tests for brainray.frontier: law fits, bootstrap, allocation, fronts, effects, analyze."""

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from brainray import frontier
from brainray.frontier import (
    LawFit, allocation_discrete, analysis_to_dict, analyze, axis_effects,
    dtype_comparison, fit_law, pareto_front, simulate_trials,
)

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "chinchilla_runs.csv"  # provenance: fixtures/README.md

# Besiroglu et al. 2024 (arXiv:2404.10102), Table: estimate and bootstrap SE
EPOCH = {"E": (1.817, 0.026), "A": (482.01, 124.52), "B": (2085.43, 1293.28),
         "alpha": (0.3478, 0.0154), "beta": (0.3658, 0.0206)}
# Reference-note truths (scaling-laws.md §9.1, §9.3)
T1 = (1.817, 482.0, 2085.4, 0.3478, 0.3658)
T2 = (2.0, 60.0, 400.0, 0.25, 0.40)
GAP = (0.25, 5.88, 34.5, 0.25, 0.30)
# brain law in the range of simulate_trials' default grid (r in ~0.13..0.38)
BRAIN = (0.25, 6.0, 5.0, 0.25, 0.30)


def _grid(nn: int = 8, nd: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """The 8 x 5 design of scaling-laws.md §9.1 (N 1e5..8.5e7, D 1e7..6e9)."""
    N, D = np.meshgrid(np.geomspace(1e5, 8.5e7, nn), np.geomspace(1e7, 6e9, nd))
    return N.ravel(), D.ravel()


def _law(p, N, D):
    E, A, B, al, be = p
    return E + A * N ** -al + B * D ** -be


def _params(fit: LawFit) -> np.ndarray:
    return np.array([fit.E, fit.A, fit.B, fit.alpha, fit.beta])


# ---------------------------------------------------------------------------------------
# fit_law
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("truth", [T1, T2, GAP])
def test_fit_law_recovers_noiseless_parameters(truth):
    N, D = _grid()
    fit = fit_law(N, D, _law(truth, N, D))
    np.testing.assert_allclose(_params(fit), truth, rtol=1e-3)
    assert fit.form == "chinchilla" and fit.n_used == 40 and fit.converged
    assert fit.objective < 1e-12
    np.testing.assert_allclose(fit.predict(N, D), _law(truth, N, D), rtol=1e-6)


def test_fit_law_recovers_random_design():
    rng = np.random.default_rng(3)
    N = np.exp(rng.uniform(np.log(1e5), np.log(1e8), 30))
    D = np.exp(rng.uniform(np.log(1e7), np.log(1e10), 30))
    fit = fit_law(N, D, _law(T2, N, D))
    np.testing.assert_allclose(_params(fit), T2, rtol=1e-3)


def test_ceiling_gap_with_known_ceiling_recovers_and_predicts_r():
    N, D = _grid()
    c = 0.5
    r = c * (1 - _law(GAP, N, D))
    fit = fit_law(N, D, r, form="ceiling_gap", ceiling=c)
    np.testing.assert_allclose(_params(fit), GAP, rtol=1e-3)
    np.testing.assert_allclose(fit.predict(N, D), r, rtol=1e-6)
    d = fit.to_dict()
    assert d["ceiling"] == c and d["ceiling_estimated"] is False


def test_ceiling_gap_per_row_ceiling():
    N, D = _grid()
    c = np.linspace(0.4, 0.6, N.size)
    r = c * (1 - _law(GAP, N, D))
    fit = fit_law(N, D, r, form="ceiling_gap", ceiling=c)
    np.testing.assert_allclose(_params(fit), GAP, rtol=1e-3)
    np.testing.assert_allclose(fit.predict(N, D, ceiling=c), r, rtol=1e-6)
    assert fit.ceiling == pytest.approx(c.mean())


def test_ceiling_gap_estimated_ceiling_keeps_exponents():
    # For any ceiling c' >= max r the gap law stays exact with E' = 1 - c/c' (1 - E) and
    # A' = A c/c', B' = B c/c': exponents and allocation do not depend on the ceiling.
    N, D = _grid()
    c = 0.5
    r = c * (1 - _law(GAP, N, D))
    fit = fit_law(N, D, r, form="ceiling_gap")
    s_inf = c * (1 - GAP[0])  # asymptote of r, above max(r) on this design
    assert s_inf > r.max()
    c_hat = 1.05 * s_inf
    assert fit.ceiling == pytest.approx(c_hat, rel=1e-3)
    assert fit.asymptote == pytest.approx(s_inf / 1.05 * (1 + 0.05), rel=1e-3)
    assert fit.ceiling_estimated
    assert "estimated" in fit.to_dict()["ceiling_note"]
    np.testing.assert_allclose([fit.alpha, fit.beta], GAP[3:], rtol=1e-3)
    np.testing.assert_allclose([fit.A, fit.B], np.array(GAP[1:3]) * c / fit.ceiling,
                               rtol=1e-3)
    np.testing.assert_allclose(fit.predict(N, D), r, rtol=1e-5)


def test_ceiling_gap_clips_scores_above_ceiling():
    N, D = _grid()
    r = 0.5 * (1 - _law(GAP, N, D))
    r[0] = 0.6  # noise pushed one score above the ceiling
    fit = fit_law(N, D, r, form="ceiling_gap", ceiling=0.5)
    assert fit.n_clipped == 1


def test_allocation_closed_form_is_the_constrained_optimum():
    fit = LawFit(*T1)
    C = np.array([1e18, 5.88e23])
    N_opt, D_opt = fit.allocation(C)
    np.testing.assert_allclose(6 * N_opt * D_opt, C, rtol=1e-10)
    for c, n in zip(C, N_opt):  # brute force along 6 N D = C
        Ns = np.geomspace(n / 100, n * 100, 200001)
        best = Ns[np.argmin(fit.law(Ns, c / (6 * Ns)))]
        assert best == pytest.approx(n, rel=1e-3)
    # exponents: N_opt ∝ C^a
    slope = np.diff(np.log(N_opt)) / np.diff(np.log(C))
    assert slope[0] == pytest.approx(fit.a)
    assert fit.a + fit.b == pytest.approx(1.0)
    # scaling-laws.md §2: Epoch's fit at Chinchilla's budget gives ~18 tokens/param
    assert D_opt[1] / N_opt[1] == pytest.approx(18, abs=1.5)


def test_allocation_without_interior_optimum_warns_and_returns_nan():
    fit = LawFit(E=2.0, A=0.0, B=400.0, alpha=0.3, beta=0.3)
    with pytest.warns(RuntimeWarning, match="no interior optimum"):
        N_opt, D_opt = fit.allocation([1e18])
    assert np.isnan(N_opt).all() and np.isnan(D_opt).all()


def test_bootstrap_ci_and_to_dict_is_json():
    rng = np.random.default_rng(0)
    N, D = _grid()
    y = _law(T1, N, D) * np.exp(0.01 * rng.standard_normal(N.size))
    fit = fit_law(N, D, y, bootstrap=20, seed=1)
    assert set(fit.ci) == {"E", "A", "B", "alpha", "beta", "a", "b"}
    for k in ("alpha", "beta", "a"):
        lo, hi = fit.ci[k]
        assert lo <= getattr(fit, k) <= hi
    assert fit.boot.shape == (20 - fit.n_bootstrap_failed, 5)
    d = json.loads(json.dumps(fit.to_dict()))
    assert d["ci"]["a"][0] <= d["a"] <= d["ci"]["a"][1]
    value, lo, hi = fit.frontier([1e18, 1e20], level=0.95)
    assert np.all(lo <= value) and np.all(value <= hi)
    # same seed, same resamples
    again = fit_law(N, D, y, bootstrap=20, seed=1)
    assert again.ci == fit.ci


def test_bootstrap_over_groups():
    rng = np.random.default_rng(1)
    N, D = _grid()
    N, D = np.tile(N, 3), np.tile(D, 3)
    seeds = np.repeat([0, 1, 2], 40)
    y = _law(T2, N, D) * np.exp(0.01 * rng.standard_normal(N.size))
    fit = fit_law(N, D, y, bootstrap=5, groups=seeds)
    assert fit.n_bootstrap == 5 and len(fit.ci) == 7
    with pytest.raises(ValueError, match="'groups' must have one label per row"):
        fit_law(N, D, y, bootstrap=5, groups=seeds[:-1])


@pytest.mark.slow
def test_bootstrap_ci_coverage():
    """95 % full-refit bootstrap CIs cover the truth in most replicates (T1, 1 % noise)."""
    truth = dict(zip(("E", "A", "B", "alpha", "beta"), T1))
    truth["a"] = T1[4] / (T1[3] + T1[4])
    N, D = _grid()
    hits = {k: 0 for k in ("alpha", "beta", "a")}
    n_rep = 30
    for rep in range(n_rep):
        rng = np.random.default_rng(100 + rep)
        y = _law(T1, N, D) * np.exp(0.01 * rng.standard_normal(N.size))
        fit = fit_law(N, D, y, bootstrap=40, seed=rep)
        for k in hits:
            lo, hi = fit.ci[k]
            hits[k] += lo <= truth[k] <= hi
    coverage = {k: v / n_rep for k, v in hits.items()}
    print("bootstrap coverage (nominal 0.95):", coverage)
    assert min(coverage.values()) >= 0.8, coverage


def test_chinchilla_fixture_reproduces_epoch_fit():
    df = pd.read_csv(FIXTURE)
    assert len(df) == 245
    df = df.sort_values("loss").iloc[:-5]  # drop the 5 highest-loss runs
    N = df["Model Size"].to_numpy()
    D = df["Training FLOP"].to_numpy() / (6 * N)
    y = df["loss"].to_numpy()
    fit = fit_law(N, D, y)  # its speed is measured in benchmarks/frontier_fit.py, not asserted here
    assert fit.n_used == 240
    for k, (pub, se) in EPOCH.items():
        # within a tenth of the published bootstrap SE of each parameter
        assert abs(getattr(fit, k) - pub) < 0.1 * se, (k, getattr(fit, k), pub)
    assert fit.E == pytest.approx(1.817, rel=2e-3)
    assert fit.alpha == pytest.approx(0.3478, rel=5e-3)
    assert fit.beta == pytest.approx(0.3658, rel=5e-3)
    assert fit.A == pytest.approx(482.01, rel=0.02)
    assert fit.B == pytest.approx(2085.43, rel=0.05)
    assert fit.a == pytest.approx(0.513, abs=0.002)
    # our optimum is at least as good as the published parameters on the same objective
    pub = np.array([math.log(1.817), math.log(482.01), math.log(2085.43), 0.3478, 0.3658])
    f_pub, _ = frontier._objective(pub, np.log(N), np.log(D), np.log(y), 1e-3)
    assert fit.objective <= f_pub * 1e-3


@pytest.mark.parametrize("kwargs, match", [
    (dict(form="loglinear"), "'form' must be one of"),
    (dict(delta=0.0), "'delta' must be > 0"),
    (dict(bootstrap=-1), "'bootstrap' must be >= 0"),
])
def test_fit_law_bad_arguments(kwargs, match):
    N, D = _grid()
    with pytest.raises(ValueError, match=match):
        fit_law(N, D, _law(T1, N, D), **kwargs)


def test_fit_law_input_errors():
    N, D = _grid()
    y = _law(T1, N, D)
    with pytest.raises(ValueError, match="N, D and y must have the same length"):
        fit_law(N, D[:-1], y)
    y_nan = y.copy()
    y_nan[3] = np.nan
    with pytest.raises(ValueError, match=r"y has 1 NaN or infinite value\(s\) \(first at row 3\)"):
        fit_law(N, D, y_nan)
    with pytest.raises(ValueError, match="N must be > 0"):
        fit_law(-N, D, y)
    with pytest.raises(ValueError, match="4 rows; the law has 5 parameters"):
        fit_law(N[:4], D[:4], y[:4])
    with pytest.raises(ValueError, match="every row has the same N"):
        fit_law(np.full_like(N, 1e6), D, y)
    with pytest.raises(ValueError, match="every row has the same D"):
        fit_law(N, np.full_like(D, 1e9), y)
    with pytest.raises(ValueError, match="form='chinchilla' needs y > 0"):
        fit_law(N, D, y - 10)
    with pytest.raises(ValueError, match="'ceiling' must be finite and > 0"):
        fit_law(N, D, 0.1 + 0 * y, form="ceiling_gap", ceiling=-1.0)
    with pytest.raises(ValueError, match="every score is <= 0"):
        fit_law(N, D, -0.1 + 0 * y, form="ceiling_gap")


# ---------------------------------------------------------------------------------------
# pareto_front
# ---------------------------------------------------------------------------------------


def _pareto_brute(cost, y, minimize):
    v = np.asarray(y) if minimize else -np.asarray(y)
    out = []
    for i in range(len(cost)):
        dominated = any((cost[j] <= cost[i]) and (v[j] <= v[i])
                        and ((cost[j] < cost[i]) or (v[j] < v[i])) for j in range(len(cost)))
        out.append(not dominated and np.isfinite(v[i]) and np.isfinite(cost[i]))
    return np.array(out)


def test_pareto_front_small_case():
    cost = [1, 2, 3, 4, 2]
    loss = [5, 4, 4.5, 3, 4]
    np.testing.assert_array_equal(pareto_front(cost, loss),
                                  [True, True, False, True, True])
    score = [0.1, 0.3, 0.2, 0.4, np.nan]
    np.testing.assert_array_equal(pareto_front(cost, score, minimize=False),
                                  [True, True, False, True, False])


@pytest.mark.parametrize("minimize", [True, False])
def test_pareto_front_matches_brute_force(minimize):
    rng = np.random.default_rng(0)
    cost = rng.integers(0, 20, 200).astype(float)
    y = rng.integers(0, 20, 200).astype(float)
    np.testing.assert_array_equal(pareto_front(cost, y, minimize),
                                  _pareto_brute(cost, y, minimize))


def test_pareto_front_length_mismatch():
    with pytest.raises(ValueError, match="cost and y must have the same length; got 3 and 2"):
        pareto_front([1, 2, 3], [1, 2])


# ---------------------------------------------------------------------------------------
# allocation_discrete, axis_effects, dtype_comparison
# ---------------------------------------------------------------------------------------


@pytest.fixture
def trials():
    return simulate_trials(loss_law=T2, brain_law=BRAIN)


def test_allocation_discrete_picks_best_affordable_config(trials):
    fit = fit_law(trials["params_nonembed"], trials["tokens"], trials["val_loss"])
    budgets = np.geomspace(trials["train_flops"].min(), trials["train_flops"].max(), 4)
    table = allocation_discrete(trials, budgets, metric="val_loss", fit=fit)
    assert len(table) == 4
    for _, row in table.iterrows():
        affordable = trials[trials["train_flops"] <= row["budget"]]
        assert row["n_candidates"] == len(affordable)
        assert row["cost"] <= row["budget"]
        assert row["predicted"] == pytest.approx(affordable["val_loss"].min(), rel=1e-6)
        assert row["fill_D"] * trials.loc[trials["n_embd"] == row["fill_n_embd"],
                                          "flops_per_token"].iloc[0] > 0
    # brain scores are maximised
    tb = allocation_discrete(trials, budgets[-1:], metric="brain_r_mean")
    assert tb["observed"].iloc[0] == pytest.approx(trials["brain_r_mean"].max(), rel=1e-6)
    with pytest.raises(ValueError, match="metric 'bogus' is not a column"):
        allocation_discrete(trials, budgets, metric="bogus")


def test_axis_effects_holds_other_axes_at_reference(trials):
    eff = axis_effects(trials, "val_loss")
    ref = dict(n_embd=512, n_layer=8, data_frames=6_000_000)  # ties -> largest
    emb = eff[eff["axis"] == "n_embd"]
    assert list(emb["value"]) == [64, 128, 256, 512]
    assert (emb["held"] == "reference").all() and (emb["n"] == 1).all()
    N = 12 * ref["n_layer"] * emb["value"].to_numpy(float) ** 2
    D = 4.0 * ref["data_frames"]
    np.testing.assert_allclose(emb["mean"], _law(T2, N, D), rtol=1e-12)
    # single-valued axes (n_head, dtype) fall back to marginal means
    head = eff[eff["axis"] == "n_head"]
    assert len(head) == 1 and head["held"].iloc[0] == "marginal"
    assert head["n"].iloc[0] == len(trials)
    with pytest.raises(ValueError, match="metric 'nope' is not a column"):
        axis_effects(trials, "nope")


def test_axis_effects_t_interval_over_seeds():
    df = simulate_trials(n_embd=(64, 128), n_layer=(2,), data_frames=(1e4, 1e5),
                         seeds=(0, 1, 2, 3), brain_noise=0.01, brain_law=BRAIN, seed=5)
    eff = axis_effects(df, "brain_r_mean", axes=("n_embd",))
    g = df[df["n_embd"] == 64]["brain_r_mean"]
    row = eff[eff["value"] == 64].iloc[0]
    assert row["n"] == len(g) == 8  # 4 seeds x 2 data sizes (data_frames not held)
    half = stats.t.ppf(0.975, 7) * g.std(ddof=1) / math.sqrt(8)
    assert row["mean"] == pytest.approx(g.mean())
    assert row["ci_hi"] - row["mean"] == pytest.approx(half)


def test_dtype_comparison_recovers_speed_ratio():
    df = simulate_trials(n_embd=(64, 128), n_layer=(2, 4), data_frames=(1e4, 1e5),
                         dtype=("fp32", "fp16"), half_speedup=1.3, brain_law=BRAIN)
    out = dtype_comparison(df)
    assert list(out["dtype"]) == ["fp16"]
    row = out.iloc[0]
    assert row["n_matched"] == 8
    assert row["speed_ratio"] == pytest.approx(1.3, rel=0.03)  # 2 % throughput jitter
    assert row["brain_r_mean_diff"] == pytest.approx(0.0, abs=1e-12)
    assert row["paper_speed_ratio"] == 1.17
    assert row["paper_score_diff"] == pytest.approx(0.001)
    assert dtype_comparison(df[df["dtype"] == "fp32"]).empty


# ---------------------------------------------------------------------------------------
# analyze
# ---------------------------------------------------------------------------------------


def _with_bad_rows(df: pd.DataFrame) -> pd.DataFrame:
    failed = df.iloc[[0]].assign(trial_id="failed", status="ERROR",
                                 error="Traceback ...\nRuntimeError: CUDA out of memory",
                                 val_loss=np.nan, brain_r_mean=np.nan)
    nan = df.iloc[[1]].assign(trial_id="nanrow", val_loss=np.nan)
    return pd.concat([df, failed, nan], ignore_index=True)


def test_analyze_recovers_laws_and_lists_left_out(trials):
    res = analyze(_with_bad_rows(trials), bootstrap=0)
    assert res["n_trials"] == len(trials) + 2 and res["n_usable"] == len(trials)
    left = res["left_out"].set_index("trial_id")["reason"]
    assert "status ERROR: RuntimeError: CUDA out of memory" == left["failed"]
    assert left["nanrow"] == "NaN val_loss"
    np.testing.assert_allclose(_params(res["fits"]["val_loss"]), T2, rtol=1e-3)
    brain = res["fits"]["brain_r_mean"]
    assert brain.form == "ceiling_gap" and not brain.ceiling_estimated
    np.testing.assert_allclose(_params(brain), BRAIN, rtol=1e-3)
    assert set(res["fronts"]) == {"val_loss_vs_train_flops", "val_loss_vs_gpu_hours",
                                  "brain_r_mean_vs_train_flops",
                                  "brain_r_mean_vs_gpu_hours"}
    alloc = res["allocation"]
    assert set(alloc["metric"]) == {"val_loss", "brain_r_mean"}
    assert len(alloc) == 2 * len(res["budgets"])
    assert res["fit_errors"] == {}
    d = json.loads(json.dumps(analysis_to_dict(res)))
    assert d["n_left_out"] == 2 and d["fits"]["val_loss"]["alpha"] == pytest.approx(0.25)


def test_analyze_with_bootstrap_gives_cis(trials):
    res = analyze(trials, bootstrap=8)
    assert "a" in res["fits"]["val_loss"].ci and "a" in res["fits"]["brain_r_mean"].ci


def test_analyze_too_few_trials(trials):
    few = _with_bad_rows(trials.iloc[:3])
    with pytest.raises(ValueError, match="only 3 usable trial"):
        analyze(few)
    res = analyze(few, strict=False)
    assert res["fits"] == {"val_loss": None, "brain_r_mean": None}
    assert "only 3 usable" in res["fit_errors"]["val_loss"]
    assert len(res["left_out"]) == 2 and res["allocation"].empty


def test_analyze_single_axis_value(trials):
    one_size = simulate_trials(n_embd=(256,), n_layer=(4,), seeds=(0, 1), brain_law=BRAIN)
    with pytest.raises(ValueError, match="same params_nonembed .* n_embd or n_layer"):
        analyze(one_size)
    one_data = trials[trials["data_frames"] == 100_000]
    with pytest.raises(ValueError, match="same tokens .* data_frames"):
        analyze(one_data)


def test_analyze_bad_input(trials):
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['val_loss'\]"):
        analyze(trials.drop(columns="val_loss"))
    with pytest.raises(TypeError, match="must be a pandas DataFrame; got dict"):
        analyze({"a": 1})


def test_analyze_estimates_ceiling_when_absent(trials):
    res = analyze(trials.drop(columns="ceiling"), bootstrap=0)
    brain = res["fits"]["brain_r_mean"]
    assert brain.ceiling_estimated
    np.testing.assert_allclose([brain.alpha, brain.beta], BRAIN[3:], rtol=1e-3)


def test_two_stage_recovers_a_known_link():
    """Loss from a known law, score a known decreasing function of loss: r = g(L(N, D))."""
    from brainray.frontier import fit_two_stage

    rng = np.random.default_rng(0)
    N = np.repeat([1e5, 3e5, 1e6, 3e6], 5)
    D = np.tile([1e7, 3e7, 1e8, 3e8, 1e9], 4)
    loss = 1.5 + 400 / N**0.34 + 900 / D**0.28
    score = 0.6 * np.exp(-(loss - 1.5))  # decreasing in loss
    fit = fit_two_stage(N, D, loss, score)
    assert fit.loss_law.alpha == pytest.approx(0.34, rel=1e-3)
    assert fit.spearman == pytest.approx(-1.0)
    # in-range predictions follow the generating link
    Nq, Dq = np.array([5e5, 2e6]), np.array([5e7, 2e8])
    truth = 0.6 * np.exp(-(400 / Nq**0.34 + 900 / Dq**0.28))
    assert np.allclose(fit.predict(Nq, Dq), truth, atol=0.02)
    with pytest.raises(ValueError, match="score has NaN"):
        fit_two_stage(N, D, loss, np.where(rng.random(len(N)) < 0.2, np.nan, score))


def test_training_effect_against_controls_and_seed_noise(trials):
    """Controls are never fitted; what training adds is the trained reference minus the controls,
    with the seed noise of the trained reference and a Welch interval; a family with a known
    gain of 0.1 separates, one with no gain does not."""
    from brainray.frontier import training_by_width, training_effect

    rng = np.random.default_rng(0)
    ref = trials.iloc[0]
    config = {k: ref[k] for k in ("data_frames", "n_embd", "n_layer", "n_head", "dtype")}
    seeds = [ref.to_dict() | {"seed": s, "trial_id": f"ref-{s}"} for s in range(4)]
    base = pd.DataFrame(seeds)
    noise = np.array([-0.006, -0.002, 0.003, 0.005])  # seed noise, s.d. about 0.005
    base["brain_r_object"] = 0.6 + noise
    base["brain_r_visual"] = 0.5 + noise
    ctrl = base.assign(trial_id=[f"ctrl-{s}" for s in range(4)], control="untrained", train_flops=0.0, tokens=0,
                       brain_r_object=0.5 + rng.permutation(noise), brain_r_visual=0.5 + rng.permutation(noise))
    df = pd.concat([trials.drop(index=0), base, ctrl], ignore_index=True)
    df["control"] = df["control"].fillna("")
    df["brain_r_mean"] = df["brain_r_mean"].astype(float)
    effect = training_effect(df).set_index("score")
    obj, vis = effect.loc["brain_r_object"], effect.loc["brain_r_visual"]
    assert obj["gain"] == pytest.approx(0.1, abs=0.02) and obj["gain_ci_lo"] > 0.05 and obj["separates"]
    assert abs(vis["gain"]) < 0.02 and vis["gain_ci_lo"] < 0 < vis["gain_ci_hi"] and not vis["separates"]
    assert obj["n_seeds"] == 4 and obj["seed_sd"] == pytest.approx(np.std(base["brain_r_object"], ddof=1))
    result = analyze(df, strict=False)
    assert not result["usable"]["trial_id"].str.startswith("ctrl").any()
    assert set(result["left_out"]["trial_id"]) >= {f"ctrl-{s}" for s in range(4)}
    assert training_by_width(df, "brain_r_object")["gain"].iloc[0] == pytest.approx(obj["gain"])
    assert training_effect(trials).empty  # no controls: nothing to say
    assert effect["codes"].isna().all()  # no codes control: nothing to say of it
    # the codes control (the VQ codes alone, no model) is compared with the best trial, never averaged
    # into the untrained controls, and never fitted
    codes = ctrl.iloc[:1].assign(trial_id="codes", control="codes", n_embd=0, n_layer=0, n_head=0, val_loss=np.nan,
                                 brain_r_object=0.65, brain_r_visual=0.45)
    with_codes = pd.concat([df, codes], ignore_index=True)
    both = training_effect(with_codes).set_index("score")
    pd.testing.assert_frame_equal(both.drop(columns=["codes", "best_over_codes"]),
                                  effect.drop(columns=["codes", "best_over_codes"]))
    assert both.loc["brain_r_object", "codes"] == 0.65 and both.loc["brain_r_visual", "codes"] == 0.45
    assert both.loc["brain_r_object", "best_over_codes"] == pytest.approx(obj["best"] - 0.65)
    assert training_by_width(with_codes, "brain_r_object").equals(training_by_width(df, "brain_r_object"))
    assert "codes" in set(analyze(with_codes, strict=False)["left_out"]["trial_id"])


def test_a_law_at_a_bound_is_not_identified():
    assert LawFit(E=1.8, A=400.0, B=2000.0, alpha=0.34, beta=0.37).identified
    degenerate = LawFit(E=0.0, A=400.0, B=1e30, alpha=0.34, beta=5.0)
    assert degenerate.at_bound == ["beta", "E", "B"] and not degenerate.identified
    assert degenerate.to_dict()["identified"] is False


# ---------------------------------------------------------------------------------------
# fit_compute_law
# ---------------------------------------------------------------------------------------

COMPUTE = np.geomspace(1e9, 1e13, 12)


@pytest.mark.parametrize("form, ceiling, truth", [
    ("power", None, (1.7, 300.0, 0.23)),
    ("ceiling_gap", 0.5, (0.4, 50.0, 0.15)),
    ("ceiling_gap", None, (0.45, 20.0, 0.12)),  # Gokce & Schrimpf: the misalignment 1 - y
])
def test_compute_law_recovers_noiseless_parameters(form, ceiling, truth):
    from brainray.frontier import fit_compute_law

    E, A, alpha = truth
    gap = E + A * COMPUTE ** -alpha
    y = gap if form == "power" else (ceiling or 1.0) * (1 - gap)
    fit = fit_compute_law(COMPUTE, y, form=form, ceiling=ceiling)
    for got, want in zip((fit.E, fit.A, fit.alpha), truth):
        assert got == pytest.approx(want, rel=1e-6)
    np.testing.assert_allclose(fit.predict(COMPUTE), y, rtol=1e-6)
    want_asymptote = E if form == "power" else (ceiling or 1.0) * (1 - E)
    assert fit.asymptote == pytest.approx(want_asymptote, rel=1e-6) and fit.identified
    assert json.dumps(fit.to_dict())


@pytest.mark.slow
def test_compute_law_ci_coverage_is_near_nominal():
    """95 % bootstrap intervals (full re-fits) on 40 noisy sets hold the true alpha and asymptote
    about 95 % of the time."""
    from brainray.frontier import fit_compute_law

    rng = np.random.default_rng(0)
    E, A, alpha = 1.7, 300.0, 0.23
    C = np.geomspace(1e9, 1e13, 20)
    hits = {"alpha": 0, "asymptote": 0}
    n = 40
    for i in range(n):
        y = (E + A * C ** -alpha) * np.exp(rng.normal(0, 0.01, len(C)))
        fit = fit_compute_law(C, y, bootstrap=80, seed=i)
        hits["alpha"] += fit.ci["alpha"][0] <= alpha <= fit.ci["alpha"][1]
        hits["asymptote"] += fit.ci["asymptote"][0] <= E <= fit.ci["asymptote"][1]
    for k, v in hits.items():
        assert 0.8 <= v / n <= 1.0, (k, v / n)


def test_compute_law_flags_and_errors():
    from brainray.frontier import fit_compute_law

    flat = fit_compute_law(COMPUTE, np.full(len(COMPUTE), 2.0) * (1 + 1e-9 * np.arange(len(COMPUTE))))
    assert not flat.identified  # nothing falls with compute: A or alpha sits at a bound
    with pytest.raises(ValueError, match="'form' must be one of"):
        fit_compute_law(COMPUTE, COMPUTE, form="chinchilla")
    with pytest.raises(ValueError, match="below the ceiling 0.5"):
        fit_compute_law(COMPUTE, np.full(len(COMPUTE), 0.6), form="ceiling_gap", ceiling=0.5)
    with pytest.raises(ValueError, match="single value"):
        fit_compute_law(np.ones(5), np.arange(1, 6.0))
    with pytest.raises(ValueError, match="needs y > 0"):
        fit_compute_law(COMPUTE, -np.ones(len(COMPUTE)))


def test_a_law_that_is_not_identified_allocates_nothing(trials):
    """Brain scores that do not move with N or D pin no law: it is flagged, and only the loss law allocates."""
    flat = trials.assign(brain_r_mean=0.4 + 1e-4 * np.random.default_rng(0).standard_normal(len(trials)))
    result = analyze(flat, bootstrap=0, strict=False)
    assert result["fits"]["val_loss"].identified
    assert not result["fits"]["brain_r_mean"].identified
    assert set(result["allocation"]["metric"]) == {"val_loss"}
    assert "not identified by this sweep" in result["allocation_skipped"]["brain_r_mean"]
    assert analysis_to_dict(result)["allocation_skipped"] == result["allocation_skipped"]


# ---------------------------------------------------------------------------------------
# Ceiling sensitivity, seed noise, backtest, findings
# ---------------------------------------------------------------------------------------


def _with_controls(df: pd.DataFrame, gain: float = 0.05) -> pd.DataFrame:
    """Untrained controls at the reference config of ``df`` (its largest model, smallest data), one per seed,
    scoring ``gain`` below the trained reference."""
    ref = df[(df["n_embd"] == df["n_embd"].max()) & (df["n_layer"] == df["n_layer"].max())
             & (df["data_frames"] == df["data_frames"].min())]
    return pd.concat([df.assign(control=""),
                      ref.assign(control="untrained", trial_id=ref["trial_id"] + "-u",
                                 brain_r_mean=ref["brain_r_mean"] - gain)], ignore_index=True)


def test_ceiling_sensitivity_is_exact_on_noiseless_scores_and_moves_on_noisy_ones():
    """The docstring's old claim holds only without noise: there the gap law with another ceiling is the same
    law rescaled; with noise the exponents move (here alpha by 6 %), and the report must show both."""
    u = simulate_trials(loss_law=T2, brain_law=BRAIN)
    cs = frontier.ceiling_sensitivity(u, frontier._metric_fit(u, "brain_r_mean"))
    assert (cs["used"], cs["other"]) == ("given ceiling", "fitted ceiling")
    assert cs["ceilings"][0] == pytest.approx(0.6) and cs["ceilings"][1] != pytest.approx(0.6)
    np.testing.assert_allclose(cs["table"]["rel_diff"], 0, atol=1e-6)
    assert not cs["differs"]
    noisy = simulate_trials(brain_noise=0.01, seed=1)
    cs = frontier.ceiling_sensitivity(noisy, frontier._metric_fit(noisy, "brain_r_mean"))
    assert cs["differs"] and abs(cs["table"].set_index("parameter").loc["alpha", "rel_diff"]) > 0.03
    estimated = fit_law(noisy["params_nonembed"], noisy["tokens"], noisy["brain_r_mean"], form="ceiling_gap")
    cs = frontier.ceiling_sensitivity(noisy, estimated)  # no ceiling known: the other fit takes c = 1
    assert (cs["used"], cs["other"], cs["ceilings"][1]) == ("fitted ceiling", "ceiling 1", 1.0)
    with pytest.raises(ValueError, match="must be form='ceiling_gap'"):
        frontier.ceiling_sensitivity(noisy, frontier._metric_fit(noisy, "val_loss"))


def test_seed_noise_pools_the_configs_run_at_several_seeds():
    df = simulate_trials(n_embd=(64, 128), n_layer=(2,), data_frames=(10_000, 100_000), seeds=(0, 1, 2),
                         brain_noise=0.01, seed=3)
    sd, dof = frontier.seed_noise(df, "brain_r_mean")
    groups = [g["brain_r_mean"].to_numpy() for _, g in df.groupby(["n_embd", "data_frames"])]
    pooled = math.sqrt(sum(((g - g.mean()) ** 2).sum() for g in groups) / sum(len(g) - 1 for g in groups))
    assert dof == 8 and sd == pytest.approx(pooled, rel=1e-12)
    assert 0.005 < sd < 0.02  # the simulated seed noise is 0.01
    sd, dof = frontier.seed_noise(df[df["seed"] == 0], "brain_r_mean")
    assert math.isnan(sd) and dof == 0


def test_axis_contrasts_state_each_effect_against_seed_noise():
    """Width and data move the score; heads do not (the simulated law has no head term): within seed noise."""
    df = simulate_trials(n_embd=(64, 256), n_layer=(4,), n_head=(2, 4), data_frames=(10_000, 1_000_000),
                         seeds=(0, 1, 2), loss_law=T2, brain_law=BRAIN, brain_noise=0.003, loss_noise=0.003, seed=7)
    c = frontier.axis_contrasts(df, "brain_r_mean").set_index("axis")
    assert set(c.index) == {"n_embd", "n_head", "data_frames"}  # one depth: no contrast; dtype: its own table
    assert c.loc["n_embd", "verdict"] == "up" and c.loc["data_frames", "verdict"] == "up"
    assert c.loc["n_head", "verdict"] == "within seed noise"
    assert c.loc["n_head", "ci_lo"] < 0 < c.loc["n_head", "ci_hi"]
    N, D = 12 * 4 * np.array([64.0, 256.0]) ** 2, 4.0 * 10_000
    truth = 0.6 * -np.diff(BRAIN[1] * N ** -BRAIN[3])[0]  # the law's width effect at the reference data size
    assert c.loc["n_embd", "ci_lo"] < truth < c.loc["n_embd", "ci_hi"]
    one = frontier.axis_contrasts(df[df["seed"] == 0], "brain_r_mean")
    assert set(one["verdict"]) == {"noise unknown"} and one["ci_lo"].isna().all()


def test_backtest_predicts_the_held_out_budget_of_a_noiseless_sweep():
    df = simulate_trials(loss_law=T2, brain_law=BRAIN)
    bt = frontier.backtest(df, bootstrap=20)
    assert bt["error"] is None and bt["errors"] == {}
    held = df[np.log10(df["train_flops"]) > np.log10(df["train_flops"].max()) - frontier.BACKTEST_WIDTH]
    assert sorted(bt["held"]) == sorted(held["trial_id"]) and bt["n_fit"] == len(df) - len(held)
    law = bt["table"][bt["table"]["law"] == "N, D law"]
    assert len(law) == 2 * len(held) and set(law["metric"]) == {"val_loss", "brain_r_mean"}
    np.testing.assert_allclose(law["rel_error"], 0, atol=1e-5)  # the law is exact: so is its extrapolation
    assert law["inside"].all()
    assert set(bt["table"]["law"]) == {"N, D law", "compute law (FLOPs)"}


def test_backtest_flags_a_bad_extrapolation():
    """Scores that jump at the largest budget are not what the rest predicts: outside the interval."""
    df = simulate_trials(loss_law=T2, brain_law=BRAIN, brain_noise=0.002, loss_noise=0.002, seed=5)
    top = np.log10(df["train_flops"]) > np.log10(df["train_flops"].max()) - frontier.BACKTEST_WIDTH
    df.loc[top, "val_loss"] *= 1.3
    t = frontier.backtest(df, bootstrap=20)["table"]
    law = t[(t["law"] == "N, D law") & (t["metric"] == "val_loss")]
    assert (law["rel_error"] < -0.2).all() and not law["inside"].any()
    ok = t[(t["law"] == "N, D law") & (t["metric"] == "brain_r_mean")]
    assert ok["inside"].all()


def test_backtest_says_when_the_sweep_is_too_small():
    df = simulate_trials(n_embd=(64, 128), n_layer=(2,), data_frames=(10_000, 100_000))
    bt = frontier.backtest(df)
    assert bt["table"].empty and "largest budget" in bt["error"] and "needs at least 5" in bt["error"]
    assert frontier.backtest(df.iloc[:0])["error"] == "no usable trials"


def test_findings_state_numbers_cis_and_noise():
    df = simulate_trials(n_embd=(64, 256), n_layer=(4,), n_head=(2, 4), data_frames=(10_000, 1_000_000),
                         dtype=("fp32", "fp16"), seeds=(0, 1, 2), loss_law=T2, brain_law=BRAIN, brain_noise=0.003,
                         loss_noise=0.003, seed=7)
    found = analyze(_with_controls(df, gain=0.05), bootstrap=10)["findings"]
    text = {f["topic"]: f["text"] for f in found}
    assert text["seed noise"].startswith("Seed noise: the brain score varies by 0.00")
    training = [f for f in found if f["topic"] == "training"][0]
    assert training["value"] == pytest.approx(0.05, abs=1e-9)  # controls are the reference minus 0.05 exactly
    assert 0 < training["ci_lo"] < 0.05 < training["ci_hi"]  # Welch over the seeds of both sides
    assert training["text"].startswith("Training adds +0.050 r [+0.0")
    assert "within seed noise" in text["axis n_head"] and text["axis n_head"].startswith("Heads 2→4")
    assert re.search(r"Width 64→256: brain score \+0\.\d+ r \[\+0\.\d+, \+0\.\d+\]; loss -", text["axis n_embd"])
    assert text["data vs width"].startswith("Over the ranges swept, data moves the brain score")
    assert "fp16 runs at 1.1" in text["dtype"] and "within seed noise" in text["dtype"]
    assert text["backtest"].startswith("Backtest: fitted without the largest budget")
    assert "codes" not in text  # no codes control in this sweep
    controls = _with_controls(df, gain=0.05)
    ref = controls[controls["control"] == "untrained"].iloc[:1]
    best = df["brain_r_mean"].max()
    for codes, verdict in [(best + 0.01, "no model here beats its own input"),
                           (best - 0.01, "below the margin 0.050"), (best - 0.2, "beyond the margin 0.050")]:
        row = ref.assign(control="codes", trial_id="codes", n_embd=0, n_layer=0, n_head=0, brain_r_mean=codes)
        said = {f["topic"]: f for f in analyze(pd.concat([controls, row]), bootstrap=0)["findings"]}["codes"]
        assert said["text"].startswith(f"The VQ codes alone, with no model, score {codes:.3f}")
        assert verdict in said["text"] and said["value"] == pytest.approx(best - codes)
    alone = {f["topic"]: f["text"] for f in analyze(pd.concat([df.assign(control=""), row]), bootstrap=0)["findings"]}
    assert "No untrained control" in alone["training"] and "beyond the margin 0.050" in alone["codes"]  # codes alone
    no_seeds = {f["topic"]: f["text"] for f in analyze(df[df["seed"] == 0], bootstrap=0)["findings"]}
    assert "noise of every effect below is unknown" in no_seeds["seed noise"]
    assert "noise unknown" in no_seeds["axis n_embd"]
    assert "No untrained control" in no_seeds["training"]


def test_findings_name_the_laws_that_are_not_identified(trials):
    flat = trials.assign(brain_r_mean=0.4 + 1e-4 * np.random.default_rng(0).standard_normal(len(trials)))
    text = {f["topic"]: f["text"] for f in analyze(flat, bootstrap=0, strict=False)["findings"]}
    assert text["laws"].startswith("Not identified by this sweep") and "the brain score law" in text["laws"]
    assert "the loss law" not in text["laws"]
    tiny = {f["topic"]: f["text"] for f in analyze(trials.iloc[:3], bootstrap=0, strict=False)["findings"]}
    assert "No backtest" in tiny["backtest"]


def test_law_prediction_bands_come_from_the_bootstrap():
    N, D = _grid()
    rng = np.random.default_rng(0)
    y = _law(T2, N, D) * np.exp(0.01 * rng.standard_normal(N.size))
    fit = fit_law(N, D, y, bootstrap=30)
    lo, hi = fit.predict_interval(N[:3], D[:3])
    assert np.all(lo < fit.predict(N[:3], D[:3])) and np.all(fit.predict(N[:3], D[:3]) < hi)
    assert np.isnan(fit_law(N, D, y).predict_interval(N[:3], D[:3])[0]).all()
    law = frontier.fit_compute_law(COMPUTE, 2 + 50 * COMPUTE ** -0.2 * np.exp(0.01 * rng.standard_normal(12)),
                                   bootstrap=30)
    assert law.boot.shape == (30 - law.n_bootstrap_failed, 3)
    lo, hi = law.predict_interval(COMPUTE)
    assert np.all(lo <= law.predict(COMPUTE) + 1e-12) and np.all(law.predict(COMPUTE) <= hi + 1e-12)


def test_axis_contrast_intervals_cover_a_null_effect_at_the_nominal_rate():
    """Heads have no effect in the simulated law: 95 % of sweeps must call them within seed noise."""
    hits = 0
    for s in range(100):
        df = simulate_trials(n_embd=(64,), n_layer=(4,), n_head=(2, 4), data_frames=(10_000,), seeds=(0, 1, 2),
                             loss_law=T2, brain_law=BRAIN, brain_noise=0.003, seed=100 + s)
        hits += frontier.axis_contrasts(df, "brain_r_mean", axes=("n_head",))["verdict"].iloc[0] == "within seed noise"
    assert 88 <= hits <= 99
