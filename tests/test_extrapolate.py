"""Tests for brainray.extrapolate: the width ladder and the plan's refusals (the run itself: test_sweep)."""

import pandas as pd
import pytest

from brainray import extrapolate, frontier
from brainray.config import load_spec


def test_width_ladder_extends_the_axis_by_its_last_step_in_multiples_of_the_heads():
    assert extrapolate.width_ladder([16, 8], n_head=1, extra=3) == [8, 16, 32, 64, 128]
    assert extrapolate.width_ladder([64], n_head=4, extra=2) == [64, 128, 256]
    assert extrapolate.width_ladder([30, 63], n_head=3, extra=1) == [30, 63, 132]  # 63 * 2.1 = 132.3 -> 132


@pytest.mark.parametrize("k", [1, 0.5, float("nan"), "4"])
def test_a_multiple_not_above_one_is_refused(k):
    with pytest.raises(ValueError, match="must be a number > 1"):
        extrapolate.plan(pd.DataFrame(), load_spec("smoke"), None, k)


@pytest.mark.parametrize("fresh, search", [(True, "grid"), (False, "optuna")])
def test_a_request_that_would_not_add_to_the_log_is_refused_before_ray_starts(fresh, search):
    with pytest.raises(ValueError, match="cannot be combined with --fresh .* or --search optuna"):
        extrapolate.check_request(4, fresh, search)
    with pytest.raises(ValueError, match="must be a number > 1"):
        extrapolate.check_request(1, False, "grid")
    extrapolate.check_request(4.0, False, "grid")


def test_a_log_without_finished_trained_trials_is_refused():
    with pytest.raises(ValueError, match="no finished trained trial to fit; run the sweep first"):
        extrapolate.plan(pd.DataFrame(), load_spec("smoke"), None, 4)


def test_extrapolation_rows_are_left_out_of_the_fit_and_compared_with_their_prediction():
    t = frontier.simulate_trials(seed=0)
    t["role"] = ""
    t.loc[0, ["role", "predicted_val_loss", "predicted_val_loss_lo", "predicted_val_loss_hi"]] = [
        "extrapolation", t.loc[0, "val_loss"] + 0.01, t.loc[0, "val_loss"] - 1, t.loc[0, "val_loss"] + 1]
    usable = frontier.usable_trials(t)
    assert len(usable) == len(t) - 1 and t.loc[0, "trial_id"] not in set(usable["trial_id"])
    checks = frontier.extrapolation_checks(t)
    loss = checks[checks["metric"] == "val_loss"].iloc[0]
    assert loss["trial_id"] == t.loc[0, "trial_id"] and loss["inside"] and loss["error"] == pytest.approx(0.01)
    assert checks[checks["metric"] == "brain_r_mean"]["inside"].isna().all()  # no prediction stored for it
