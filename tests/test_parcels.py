"""Tests for brainray.parcels: the per-parcel table of a trial, its file, and its summary."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from brainray import parcels, simbrain
from brainray.simbrain import Parcel


def _dataset() -> SimpleNamespace:
    """A stand-in for brainray.dataset.Dataset: one simulated subject of 4 parcels, one measured subject."""
    ps = [Parcel("p00-visual-lum-5", "visual", ("lum-5", "motion-1"), (0.7, 0.3), 1.0),
          Parcel("p01-object-ship_x", "object", ("ship_x",), (1.0,), 0.5),
          Parcel("p02-predictive-event", "predictive", ("event",), (1.0,), 0.25),
          Parcel("p03-none", "none", (), (), 0.0)]
    sim = SimpleNamespace(parcels=ps, config=simbrain.SimBrainConfig(grid=3),
                          ceiling=np.array([p.ceiling for p in ps]))
    real = SimpleNamespace(ceiling=None)
    return SimpleNamespace(subject=lambda name: {"sub-01": sim, "sub-02": real}[name])


def test_parcel_table_joins_r_with_family_receptive_field_and_ceiling():
    t = parcels.parcel_table(_dataset(), {"sub-01": [0.5, 0.3, 0.1, 0.0], "sub-02": [0.2, 0.1]}, trial_id="t7")
    assert list(t.columns) == list(parcels.COLUMNS) and (t["trial_id"] == "t7").all()
    sim = t[t["subject"] == "sub-01"].set_index("parcel")
    assert sim.loc["p00-visual-lum-5", "receptive_field"] == "row 1, col 2"  # cell 5 of a 3 x 3 grid
    assert sim.loc["p00-visual-lum-5", "feature"] == "lum-5"  # the largest weight
    assert (sim.loc[["p01-object-ship_x", "p02-predictive-event", "p03-none"], "receptive_field"] == "").all()
    np.testing.assert_allclose(sim["ceiling"], np.sqrt([0.5, 1 / 3, 0.2, 0.0]))  # sqrt(snr / (1 + snr))
    real = t[t["subject"] == "sub-02"]
    assert list(real["parcel"]) == ["p0000", "p0001"] and real["ceiling"].isna().all() and (real["family"] == "").all()
    with pytest.raises(ValueError, match="sub-01 has 4 parcels but 3 scores"):
        parcels.parcel_table(_dataset(), {"sub-01": [0.1, 0.2, 0.3]})


def test_parcel_scores_round_trip_and_summary(tmp_path):
    t = parcels.parcel_table(_dataset(), {"sub-01": [0.5, 0.3, 0.1, 0.0]}, trial_id="t7")
    path = parcels.write_parcel_scores(tmp_path, "t7", t)
    assert path == tmp_path / "parcels" / "t7.parquet" and not path.with_suffix(".parquet.tmp").exists()
    pd.testing.assert_frame_equal(parcels.read_parcel_scores(tmp_path, "t7"), t)
    assert parcels.read_parcel_scores(tmp_path, "other") is None
    s = parcels.summarize(t).set_index("family")
    assert s.loc["visual", "ceiling_frac"] == pytest.approx(0.5 / np.sqrt(0.5))
    assert np.isnan(s.loc["none", "ceiling_frac"]) and s.loc["none", "n"] == 1
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['r'\]"):
        parcels.write_parcel_scores(tmp_path, "t8", t.drop(columns="r"))


def test_parcel_scores_round_trip_through_a_uri(tmp_path):
    t = parcels.parcel_table(_dataset(), {"sub-02": [0.2, 0.1]}, trial_id="0a850_00011")
    root = f"file://{tmp_path}/sweep"
    assert parcels.write_parcel_scores(root, "0a850_00011", t) == f"{root}/parcels/0a850_00011.parquet"
    assert (tmp_path / "sweep" / "parcels" / "0a850_00011.parquet").is_file()
    assert not list((tmp_path / "sweep" / "parcels").glob(".*"))  # no temp file left behind
    pd.testing.assert_frame_equal(parcels.read_parcel_scores(root, "0a850_00011"), t)
    assert parcels.read_parcel_scores(root, "0a850_00012") is None
