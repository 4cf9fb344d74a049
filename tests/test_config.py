import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from brainray import config
from brainray.config import AXES, SearchSpace, SpecError, check_address, check_storage, dataset_root, load_spec
from brainray.summary import dry_run_table

REPO = Path(__file__).resolve().parent.parent


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
    with pytest.raises(SpecError, match=r"'axes.dtype' values must each be one of \['fp32', 'fp16', 'bf16'\]"):
        load_spec(_write(tmp_path, "axes:\n  dtype: [fp32, fp8]\n"))


def test_relative_storage_is_refused():
    with pytest.raises(ValueError, match="relative path; Ray needs an absolute path or a URI"):
        check_storage("results")
    assert check_storage("/tmp/x/") == "/tmp/x"
    assert check_storage("s3://bucket/x") == "s3://bucket/x"


def test_the_dataset_lives_on_a_posix_path_keyed_by_its_settings():
    spec = load_spec("smoke")
    key = spec.data_key()
    assert dataset_root("/r/smoke", "/r", None, spec) == f"/r/smoke/data/{key}"
    assert dataset_root("s3://b/smoke", "s3://b", "/shared/data", spec) == f"/shared/data/{key}"
    with pytest.raises(ValueError, match="is a URI, but the prepared dataset must be on a POSIX path"):
        dataset_root("s3://b/smoke", "s3://b", None, spec)
    for bad in ("data", "s3://b/data"):
        with pytest.raises(ValueError, match="must be an absolute POSIX path shared by every node"):
            dataset_root("/r/smoke", "/r", bad, spec)


def test_an_address_is_checked_before_ray_starts():
    check_address("auto")  # ray.init resolves it
    for bad in ("localhost", "ray://head", "head:port"):
        with pytest.raises(ValueError, match="must be 'auto', HOST:PORT or ray://HOST:PORT"):
            check_address(bad)
    with pytest.raises(ValueError, match=r"nothing answers at 127\.0\.0\.1:1 .*ray start --head"):
        check_address("127.0.0.1:1", timeout_s=2)


def test_data_smaller_than_a_clip_pair(tmp_path):
    with pytest.raises(SpecError, match="data_frames=10 is less than two clips"):
        load_spec(_write(tmp_path, "axes:\n  data_frames: [10, 24000]\n"))


# -- failing fast: every field is checked before anything runs ---------------------------------
NAN, INF = float("nan"), float("inf")
BAD_VALUES = [
    ("tokenizer.clip_frames", 0), ("tokenizer.time_downsample", 0), ("tokenizer.downsample", [4, 8]),
    ("tokenizer.downsample", [3, 8, 8]), ("tokenizer.downsample", [0, 4, 4]), ("tokenizer.downsample", [1, 1, 1]),
    ("tokenizer.n_hiddens", 15), ("tokenizer.n_hiddens", 0), ("tokenizer.n_res_layers", -1),
    ("tokenizer.n_codes", 0), ("tokenizer.n_codes", 1), ("tokenizer.n_codes", 40000), ("tokenizer.embedding_dim", 0),
    ("tokenizer.steps", -5), ("tokenizer.batch_size", 0),
    ("data.tr", -1), ("data.tr", NAN), ("data.tr", INF), ("data.frame_size", 0), ("data.seed", -1),
    ("data.train_replays", 0), ("data.replay_frames", 0), ("data.val_replays", 0), ("data.n_subjects", 0),
    ("data.n_subjects", 5), ("data.n_runs", 2), ("data.run_vols", 0), ("data.run_vols", 4), ("data.n_parcels", 3),
    ("data.policy", "ppo"), ("data.game", ""),
    ("train.epochs", 0), ("train.batch_size", 0), ("train.lr", 0), ("train.lr", INF), ("train.lr", NAN),
    ("train.lr", "fast"), ("train.min_lr_frac", 1.5), ("train.warmup_frac", 1), ("train.weight_decay", -0.1),
    ("train.weight_decay", NAN), ("train.grad_clip", 0), ("train.grad_clip", NAN), ("train.dropout", 5),
    ("train.dropout", 1), ("train.val_batches", 0), ("train.log_every", 0), ("train.feature_depth", 0),
    ("train.alphas", [-1, 0]), ("train.alphas", []), ("train.alphas", [1, NAN]), ("train.alphas", [1, "a"]),
    ("train.delays", [-2]), ("train.delays", []), ("train.delays", [1, 1]), ("train.delays", [1.5]),
    ("train.device", "gpu"), ("train.device", "cuda:x"), ("train.threads", 0), ("train.cooldown_frac", NAN),
    ("resources.cpus_per_trial", 0), ("resources.cpus_per_trial", INF), ("resources.gpus_per_trial", -1),
    ("resources.gpus_per_trial", "lots"), ("resources.gpus_per_trial", True), ("resources.max_concurrent_trials", -1),
    ("resources.max_failures", -5),
    ("axes.n_head", [0]), ("axes.n_layer", [0]), ("axes.n_embd", [0, 16]), ("axes.data_frames", [-1200]),
    ("axes.n_layer", [1.5]), ("axes.seed", [-1]), ("axes.seed", [2**32]), ("axes.n_head", [True]),
]


@pytest.mark.parametrize(("key", "value"), BAD_VALUES, ids=[f"{k}={v!r}" for k, v in BAD_VALUES])
def test_an_impossible_value_is_refused_naming_its_key(key, value):
    with pytest.raises(SpecError) as e:
        load_spec("smoke", {key: value})
    msg = str(e.value)
    assert str(config.PRESETS_DIR / "smoke.yaml") in msg
    assert f"'{key}'" in msg, msg


def test_a_bad_reference_value_is_named():
    ref = {"data_frames": 2400, "n_embd": 16, "n_layer": 1, "n_head": 0, "dtype": "fp32", "seed": 0}
    with pytest.raises(SpecError, match=r"'axes.reference.n_head' must be an integer >= 1; got 0"):
        load_spec("smoke", {"axes.reference": ref})


def test_zero_heads_is_a_spec_error_not_a_division_by_zero():
    with pytest.raises(SpecError, match=r"'axes.n_head' values must each be an integer >= 1; got \[0\]"):
        load_spec("demo", {"axes.n_head": [0]})


def test_messages_say_what_is_allowed_and_what_came_in():
    with pytest.raises(SpecError) as e:
        load_spec("smoke", {"tokenizer.n_codes": 0, "train.alphas": [-1, 0], "resources.max_failures": -5})
    msg = str(e.value)
    assert "'tokenizer.n_codes' must be an integer in [2, 32768] (tokens are stored as int16); got 0" in msg
    assert "'train.alphas' must be a non-empty list of finite numbers > 0; got [-1, 0]" in msg
    assert "'resources.max_failures' must be an integer >= -1 (-1: retry forever); got -5" in msg


def test_runs_too_short_for_the_delays_name_the_minimum():
    with pytest.raises(SpecError, match=r"'data.run_vols' must be at least 9 \(more volumes than the largest of "
                                        r"'train.delays' \[1, 8\]"):
        load_spec("smoke", {"train.delays": [1, 8], "data.run_vols": 8})
    assert load_spec("smoke", {"train.delays": [1, 8], "data.run_vols": 9}).data.run_vols == 9


@pytest.mark.parametrize(("key", "value"), [
    ("train.grad_clip", INF), ("train.warmup_frac", 0), ("train.min_lr_frac", 1), ("train.dropout", 0),
    ("train.delays", (0, 1)), ("train.device", "cuda:1"), ("train.device", "mps"),
    ("resources.max_failures", -1), ("resources.gpus_per_trial", 0.5), ("resources.cpus_per_trial", 0.5),
    ("resources.max_concurrent_trials", 0), ("tokenizer.n_res_layers", 0), ("data.n_subjects", 4),
])
def test_legal_edge_values_are_kept(key, value):
    section, leaf = key.split(".")
    assert getattr(getattr(load_spec("smoke", {key: value}), section), leaf) == value


def test_a_float_written_without_a_dot_is_read_as_a_number(tmp_path):
    assert load_spec(_write(tmp_path, "train:\n  lr: 1e-3\n")).train.lr == 0.001  # PyYAML reads 1e-3 as a string


def test_the_mirrored_constants_match_their_modules():
    from brainray import gameplay, prepare, simbrain

    assert config._POLICIES == gameplay.POLICIES
    assert config._SIM_SUBJECTS == len(simbrain.SUBJECTS)
    assert config._FPS == prepare.FPS


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n# and another\n"])
def test_an_empty_spec_file_is_refused(tmp_path, text):
    path = _write(tmp_path, text)
    with pytest.raises(SpecError, match="the sweep spec is empty") as e:
        load_spec(path)
    assert path in str(e.value)


@pytest.mark.parametrize("name", ["..", ".", "", "   ", "a/b", "/abs", "a\\b", ".hidden"])
def test_a_name_that_is_not_a_plain_folder_name_is_refused(tmp_path, name):
    path = _write(tmp_path, yaml.safe_dump({"name": name}))
    with pytest.raises(SpecError, match="'name' must be a plain folder name") as e:
        load_spec(path)
    assert path in str(e.value) and repr(name) in str(e.value)


def test_a_name_must_be_a_string(tmp_path):
    with pytest.raises(SpecError, match=r"'name' must be a string \(quote it in YAML\); got None"):
        load_spec(_write(tmp_path, "name:\n"))
    assert load_spec("smoke", {"name": "my-sweep_2"}).name == "my-sweep_2"


def test_storage_that_is_a_file_or_under_one_is_refused(tmp_path):
    f = tmp_path / "results.txt"
    f.write_text("")
    with pytest.raises(ValueError, match=r"--storage '.*results.txt' is a file, not a folder"):
        check_storage(str(f))
    with pytest.raises(ValueError, match=r"is under .*results.txt, which is a file"):
        check_storage(str(f / "sub" / "dir"))
    assert check_storage(str(tmp_path / "new" / "folder")) == str(tmp_path / "new" / "folder")


def test_storage_whose_folder_cannot_be_written_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path)  # root may write anywhere
    with pytest.raises(ValueError, match=rf"--storage '{tmp_path}/out': {tmp_path} is not writable"):
        check_storage(str(tmp_path / "out"))


# -- --dry-run: the spec's errors and the Optuna space, without Ray ----------------------------
def _scaling(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "sweeps" / "scaling.py"), *args],
                          capture_output=True, text=True, timeout=300, check=False)


def test_a_bad_spec_or_storage_is_one_error_line_and_exit_2(tmp_path):
    bad = _write(tmp_path, "name: bad\ntokenizer:\n  n_codes: 0\ntrain:\n  delays: [-2]\n")
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    for args, key in (((), "'tokenizer.n_codes'"), (("--storage", str(a_file)), "is a file, not a folder")):
        out = _scaling("--preset", bad, "--dry-run", *args)
        assert out.returncode == 2, out
        assert out.stderr.startswith("error: ") and key in out.stderr, out.stderr
        assert "Traceback" not in out.stderr and out.stdout == ""
    assert len(out.stderr.strip().splitlines()) == 1  # the storage error: one line


def test_optuna_dry_run_prints_the_space_not_the_grid():
    out = _scaling("--preset", "demo", "--search", "optuna", "--samples", "5", "--dry-run")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "Optuna search, 5 trials" in text
    assert "n_embd in [16, 96] (multiples of n_head=2), data_frames in [3000, 54000]" in text
    assert "held at axes.reference: n_layer=2, n_head=2, dtype='fp32', seed=0" in text
    assert "training FLOPs for 5 trials" in text
    n_grid = len(load_spec("demo").runs())
    assert f": {n_grid} trials" not in text and len(text.splitlines()) < 10, text


def test_optuna_dry_run_bounds_the_cost_by_its_smallest_and_largest_trial():
    spec = load_spec("demo")
    grid = dry_run_table(spec)
    text = dry_run_table(spec, search="optuna", samples=5)
    assert text != grid
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.startswith(("smallest", "largest"))}
    assert rows["smallest"][1:3] == ["3000", "16"] and rows["largest"][1:3] == ["54000", "96"]


@pytest.mark.parametrize(("preset", "samples", "match"), [
    ("demo-reuse", 8, "an Optuna search draws each data size on its own"),
    ("demo", 0, "samples must be >= 1"),
])
def test_optuna_dry_run_refuses_what_the_search_would(preset, samples, match):
    with pytest.raises(ValueError, match=match):
        dry_run_table(load_spec(preset), search="optuna", samples=samples)


def test_search_space_without_a_width_that_the_heads_divide():
    spec = load_spec("smoke", {"axes.design": "grid", "axes.n_embd": [8, 16], "axes.n_head": [1],
                               "axes.reference": {"data_frames": 2400, "n_embd": 64, "n_layer": 1, "n_head": 32,
                                                  "dtype": "fp32", "seed": 0}})
    with pytest.raises(ValueError, match=r"no multiple of n_head=32 lies in axes.n_embd's range \[8, 16\]"):
        SearchSpace(spec)
    assert SearchSpace(load_spec("demo")).n_embd_range == (16, 96)


def test_presets_are_found_in_an_installed_wheel(tmp_path):
    """`pip install .` (not editable) ships the presets as package data."""
    repo = Path(__file__).resolve().parent.parent
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", str(repo), "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "whl")],
                   check=True, capture_output=True, timeout=600)
    wheel = next((tmp_path / "whl").glob("brainray-*.whl"))
    subprocess.run([*pip, "install", "--no-deps", "--target", str(tmp_path / "site"), str(wheel)],
                   check=True, capture_output=True, timeout=600)
    code = "import brainray.config as c; print(c.__file__); print(c.load_spec('smoke').name, c.load_spec('paper').name)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(tmp_path / "site")})
    assert out.returncode == 0, out.stderr[-2000:]
    where, names = out.stdout.splitlines()
    assert where.startswith(str(tmp_path / "site")) and names == "smoke paper"


def test_the_paper_preset_keeps_the_papers_widths_with_heads_that_divide_them():
    spec = load_spec("paper")
    assert spec.axes.n_embd == [6, 15, 30, 63, 126, 255, 576, 1024]
    trials = spec.axes.trials()
    assert all(t["n_embd"] % t["n_head"] == 0 for t in trials)
    assert {t["n_head"] for t in trials if t["n_embd"] < 576} == {3}
    assert sorted(t["n_head"] for t in trials if t["n_embd"] == 576 and t["n_layer"] == 8
                  and t["data_frames"] == 6_000_000 and t["dtype"] == "fp16") == [1, 2, 4, 8]  # the heads line


def test_heads_for_width_must_divide_the_width(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("axes:\n  n_embd: [15, 48]\n  heads_for_width: {15: 2}\n")
    with pytest.raises(SpecError, match="heads_for_width.*15: 2"):
        load_spec(str(path))
    path.write_text("axes:\n  n_embd: [15, 48]\n  heads_for_width: {15: 5}\n")
    assert {(t["n_embd"], t["n_head"]) for t in load_spec(str(path)).axes.trials()} >= {(15, 5), (48, 2)}


def test_controls_at_the_reference_per_seed_and_per_width():
    spec = load_spec("demo")
    controls = spec.axes.control_trials()
    ref = {k: v for k, v in spec.axes.reference.items() if k != "seed"}
    untrained = [c for c in controls if c["control"] == "untrained"]
    at_ref = [c for c in untrained if c["n_embd"] == ref["n_embd"]]
    assert [c["seed"] for c in at_ref] == spec.axes.seed == [0, 1, 2]
    assert {c["n_embd"] for c in untrained} == set(spec.axes.n_embd)
    assert all(c["data_frames"] == ref["data_frames"] for c in controls)
    codes = [c for c in controls if c["control"] == "codes"]  # one, with no model
    assert codes == [{**spec.axes.reference, "n_embd": 0, "n_layer": 0, "n_head": 0, "control": "codes"}]
    assert len(controls) == len(untrained) + 1
    assert spec.runs()[-len(controls):] == controls  # they run after the trained trials
    assert load_spec("demo", {"axes": {"controls": []}}).axes.control_trials() == []
    with pytest.raises(SpecError, match="'axes.controls' must be a list of"):
        load_spec("demo", {"axes": {"controls": ["shuffled"]}})
    assert all(c["control"] == "codes" for c in load_spec("demo", {"axes": {"controls": ["codes"]}}).axes.control_trials())


def test_dry_run_prices_controls_at_zero():
    from brainray.summary import dry_run_table

    text = dry_run_table(load_spec("smoke"))
    control_lines = [line for line in text.splitlines() if line.rstrip().endswith(("untrained", "codes"))]
    assert len(control_lines) == len(load_spec("smoke").axes.control_trials())
    assert all(" 0 " in line for line in control_lines)
