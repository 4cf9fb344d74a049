"""Tests for brainray.parcels: the per-parcel table of a trial, its file, its summary and its brain maps."""

from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_tree import mni_atlas
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


# ----------------------------------------------------------------------------- brain maps


def _measured(trial_id: str, r: list[float], subjects: tuple[str, ...] = ("sub-01",)) -> pd.DataFrame:
    """A measured trial's table (parcels p0000...), the same r for every subject."""
    ds = SimpleNamespace(subject=lambda name: SimpleNamespace(ceiling=None))
    return parcels.parcel_table(ds, {s: r for s in subjects}, trial_id=trial_id)


def test_paint_puts_each_parcels_value_inside_its_label():
    atlas = mni_atlas()
    assert list(parcels.atlas_labels(atlas)) == [10, 20, 30, 40]
    values = [0.1, -0.2, 0.3, 0.45]
    img = parcels.paint(atlas, values)
    labels, data = np.asarray(atlas.dataobj), np.asarray(img.dataobj)
    assert data.shape == labels.shape and np.array_equal(img.affine, atlas.affine)
    for label, v in zip((10, 20, 30, 40), values):
        np.testing.assert_allclose(data[labels == label], v, rtol=1e-6)
    with_background = np.where(labels == 40, 0, labels)  # a label image with background voxels
    img = parcels.paint(nib.Nifti1Image(with_background, atlas.affine), values[:3])
    assert (np.asarray(img.dataobj)[labels == 40] == 0).all()
    with pytest.raises(ValueError, match="paint: 3 parcel values for an atlas of 4 labels"):
        parcels.paint(atlas, values[:3])


def test_parcel_means_average_subjects_in_the_dataset_order():
    t = pd.concat([_measured("t", [0.1, 0.2, 0.3], ("sub-01",)), _measured("t", [0.3, 0.0, 0.1], ("sub-02",))])
    m = parcels.parcel_means(t)
    assert list(m.index) == ["p0000", "p0001", "p0002"]
    np.testing.assert_allclose(m, [0.2, 0.1, 0.2])


def test_axis_deltas_step_along_each_axis_at_the_reference():
    trials = pd.DataFrame(
        [("w16", 16, 2), ("w48a", 48, 2), ("w48b", 48, 2), ("w96", 96, 2), ("l1", 48, 1), ("l4", 48, 4),
         ("off", 96, 4)], columns=["trial_id", "n_embd", "n_layer"])
    r = {"w16": [0.1, 0.3], "w48a": [0.2, 0.2], "w48b": [0.4, 0.2], "w96": [0.5, 0.1], "l1": [0.0, 0.0],
         "off": [9.0, 9.0]}  # l4 has no table: n_layer has one step, 1 -> 2
    read = lambda t: _measured(t, r[t]) if t in r else None  # noqa: E731
    d = parcels.axis_deltas(trials, {"n_embd": 48, "n_layer": 2}, read)
    got = {(a, lo, hi, p): v for a, lo, hi, p, v in d[["axis", "lo_value", "hi_value", "parcel", "delta_r"]].values}
    expected = {("n_embd", 16, 48, "p0000"): 0.2, ("n_embd", 16, 48, "p0001"): -0.1,  # 48: mean of two seeds
                ("n_embd", 48, 96, "p0000"): 0.2, ("n_embd", 48, 96, "p0001"): -0.1,
                ("n_layer", 1, 2, "p0000"): 0.3, ("n_layer", 1, 2, "p0001"): 0.2}
    assert got.keys() == expected.keys()  # "off" (n_layer 4) is on neither reference line
    for key, v in expected.items():
        assert got[key] == pytest.approx(v), key
    step = d[(d["axis"] == "n_embd") & (d["lo_value"] == 16)]
    assert (step["n_lo"] == 1).all() and (step["n_hi"] == 2).all()
    assert parcels.axis_deltas(trials, {"n_embd": 48, "n_layer": 2}, lambda t: None).empty


def test_atlas_labels_follow_the_columns_of_nilearns_labels_masker():
    """The painting rule rests on it: column i of NiftiLabelsMasker (fmri.extract_parcels) is label i."""
    from nilearn.maskers import NiftiLabelsMasker

    atlas = mni_atlas()
    lab = np.asarray(atlas.dataobj).astype(np.float32)
    bold = nib.Nifti1Image(np.stack([lab, 2 * lab], axis=-1), atlas.affine)  # every voxel holds its label
    series = NiftiLabelsMasker(atlas, standardize=None).fit_transform(bold)
    np.testing.assert_allclose(series[0], parcels.atlas_labels(atlas))
