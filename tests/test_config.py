import pytest

from brainray.config import AXES, SpecError, check_storage, load_spec


def _write(tmp_path, text):
    p = tmp_path / "spec.yaml"
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize("preset", ["demo", "smoke", "paper"])
def test_presets_load_and_cover_all_axes(preset):
    spec = load_spec(preset)
    trials = spec.axes.trials()
    for axis in ("data_frames", "n_embd", "n_layer", "n_head", "dtype"):
        assert len({t[axis] for t in trials}) > 1, f"{preset} does not vary {axis}"
    assert len({tuple(t[a] for a in AXES) for t in trials}) == len(trials)


def test_demo_has_at_least_16_trials_and_a_data_width_grid():
    trials = load_spec("demo").axes.trials()
    assert len(trials) >= 16
    spec = load_spec("demo").axes
    pairs = {(t["data_frames"], t["n_embd"]) for t in trials}
    assert {(d, w) for d in spec.data_frames for w in spec.n_embd} <= pairs


def test_every_problem_is_listed_at_once(tmp_path):
    path = _write(
        tmp_path,
        "axes:\n  n_head: [3]\n  bogus: 1\ntrain:\n  epochs: many\nwhatever: {}\n",
    )
    with pytest.raises(SpecError) as e:
        load_spec(path)
    msg = str(e.value)
    assert path in msg
    assert "unknown key 'axes.bogus'" in msg
    assert "'train.epochs' must be of type int; got 'many'" in msg
    assert "unknown section 'whatever'" in msg


def test_heads_that_do_not_divide_width(tmp_path):
    path = _write(tmp_path, "axes:\n  n_head: [1, 5]\n")
    with pytest.raises(SpecError, match="n_head=5 does not divide n_embd=48"):
        load_spec(path)


def test_data_larger_than_dataset(tmp_path):
    path = _write(tmp_path, "axes:\n  data_frames: [1000, 99999999]\n")
    with pytest.raises(SpecError, match="data_frames=99999999 is more than the 54000 frames"):
        load_spec(path)


def test_bad_yaml_and_unknown_preset(tmp_path):
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(_write(tmp_path, "axes: [unclosed\n"))
    with pytest.raises(FileNotFoundError, match="Unknown preset 'nope'"):
        load_spec("nope")


def test_bad_dtype(tmp_path):
    with pytest.raises(SpecError, match="dtype 'fp8' is not one of"):
        load_spec(_write(tmp_path, "axes:\n  dtype: [fp32, fp8]\n"))


def test_relative_storage_is_refused():
    with pytest.raises(ValueError, match="relative path; Ray needs an absolute path or a URI"):
        check_storage("results")
    assert check_storage("/tmp/x/") == "/tmp/x"
    assert check_storage("s3://bucket/x") == "s3://bucket/x"


def test_data_smaller_than_a_clip_pair(tmp_path):
    with pytest.raises(SpecError, match="data_frames=10 is less than two clips"):
        load_spec(_write(tmp_path, "axes:\n  data_frames: [10, 24000]\n"))
