"""Cluster configs: Ray's own validation, security rules, token auth, and the one sweep command.

Covers ``cluster.yaml`` (AWS), ``cluster/onprem.yaml`` (local provider), ``cluster/slurm.sbatch``
and ``.rayignore``. Nothing here launches a cluster: the YAMLs go through the same
``prepare_config`` + ``validate_config`` that ``ray up`` runs, and the AWS security group is
checked through the launcher's own rule builder.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
AWS = REPO / "cluster.yaml"
ONPREM = REPO / "cluster" / "onprem.yaml"
SBATCH = REPO / "cluster" / "slurm.sbatch"
YAMLS = [AWS, ONPREM]
ALL_FILES = [AWS, ONPREM, SBATCH]
SWEEP_CMD = "python sweeps/scaling.py --address auto --storage"


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _prepared(path: Path) -> dict:
    """The config as `ray up` sees it: defaults merged, node types filled in, then validated."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(copy.deepcopy(_load(path)))
    validate_config(config)  # raises jsonschema.ValidationError against ray-schema.json
    return config


def _last_line(path: Path) -> str:
    return [line for line in path.read_text().splitlines() if line.strip()][-1]


def _ray_start_commands(config: dict) -> dict[str, list[str]]:
    return {
        "head": [c for c in config["head_start_ray_commands"] if "ray start" in c],
        "worker": [c for c in config["worker_start_ray_commands"] if "ray start" in c],
    }


# -- Ray's own validation ----------------------------------------------------------------------
@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_yaml_passes_ray_validation(path):
    config = _prepared(path)
    assert config["cluster_name"].startswith("brainray")
    assert config["head_node_type"] in config["available_node_types"]


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_yaml_passes_ray_json_schema_as_written(path):
    """The file itself (before defaults) is valid against the schema shipped in the ray package."""
    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(_load(path), schema)


def test_aws_node_types():
    config = _prepared(AWS)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}, "trials must not land on the head"
    workers = [t for name, t in types.items() if name != config["head_node_type"]]
    assert len(workers) == 1
    gpu = workers[0]
    assert gpu["node_config"]["InstanceType"].startswith(("g5.", "g6.", "g6e.", "p4d.", "p5."))
    assert 0 <= gpu["min_workers"] < gpu["max_workers"] <= config["max_workers"]
    assert config["idle_timeout_minutes"] > 0


# -- security: network ---------------------------------------------------------------------------
def test_aws_security_group_ingress_is_ssh_only():
    """Every rule the launcher would put on the group: intra-group traffic, or TCP 22."""
    pytest.importorskip("boto3")
    from ray.autoscaler._private.aws.config import _create_default_inbound_rules

    config = _prepared(AWS)
    group = config["provider"]["security_group"]
    assert group["GroupName"]
    for node_type in config["available_node_types"].values():
        assert "SecurityGroupIds" not in node_type["node_config"], "a pre-made group bypasses this check"
    rules = _create_default_inbound_rules({"sg-self"}, group.get("IpPermissions", []))
    external = [r for r in rules if r.get("IpRanges") or r.get("Ipv6Ranges") or r.get("PrefixListIds")]
    for rule in rules:
        if rule in external:
            assert (rule["IpProtocol"], rule["FromPort"], rule["ToPort"]) == ("tcp", 22, 22), rule
        else:
            assert [p["GroupId"] for p in rule["UserIdGroupPairs"]] == ["sg-self"], rule
    assert external, "SSH must stay open, or `ray up` cannot reach the nodes"


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: p.name)
def test_no_wildcard_bind_anywhere(path):
    text = path.read_text()
    assert "0.0.0.0" not in text
    assert not re.search(r"dashboard-host[= ]+(?!127\.0\.0\.1\b)", text)


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_dashboard_on_localhost_after_defaults(path):
    """Ray's AWS defaults bind the dashboard to all interfaces; our head command must win."""
    (head,) = _ray_start_commands(_prepared(path))["head"]
    assert "--head --port=6379" in head
    assert "--dashboard-host=127.0.0.1" in head
    assert "--include-dashboard" not in head or "--include-dashboard=false" in head


# -- security: token auth ----------------------------------------------------------------------
@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_token_auth_on_head_and_workers(path):
    config = _prepared(path)
    starts = _ray_start_commands(config)
    assert starts["head"] and starts["worker"]
    for role, commands in starts.items():
        for cmd in commands:
            assert re.search(r"export RAY_AUTH_MODE=token;.*ray start", cmd), f"{role}: {cmd}"
    (worker,) = starts["worker"]
    assert "--address=$RAY_HEAD_IP:6379" in worker
    # The same token file on every node; workers get the head's copy of each file mount.
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    # Shells and drivers on the nodes (ray exec, ray attach, jobs) run in token mode too.
    assert any("export RAY_AUTH_MODE=token" in c and ".bashrc" in c for c in config["setup_commands"])
    assert "RAY_AUTH_MODE=disabled" not in path.read_text()


def test_sbatch_token_auth():
    text = SBATCH.read_text()
    body = text[text.index("set -euo pipefail"):]
    assert body.index("export RAY_AUTH_MODE=token") < body.index("ray symmetric-run")
    assert "export RAY_AUTH_TOKEN_PATH=" in body and "umask 077" in body
    assert "RAY_AUTH_MODE=disabled" not in text


# -- installation --------------------------------------------------------------------------------
@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_setup_installs_pinned_brainray(path):
    config = _prepared(path)
    setup = "\n".join(config["setup_commands"])
    assert setup.index("pip install -q torch==2.13.0") < setup.index("-e ~/brainray")
    assert '"ray[default,tune]==2.60.0"' in setup
    assert config["file_mounts"]["~/brainray"] == "."
    head_setup = "\n".join(config["head_setup_commands"])
    assert "tensorboard" in head_setup
    if config["provider"]["type"] == "aws":
        assert "boto3" in head_setup, "the autoscaler on the head needs boto3"


def test_ray_pins_agree_across_files():
    pins = {p.name: set(re.findall(r"ray\[[a-z,]+\]==([\d.]+)", p.read_text())) for p in ALL_FILES}
    assert set.union(*pins.values()) == {"2.60.0"}, pins


# -- the one sweep command -------------------------------------------------------------------------
@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: p.name)
def test_every_file_ends_in_the_sweep_command(path):
    assert SWEEP_CMD in _last_line(path)


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_yaml_sweep_command_parses(path, capsys):
    """The command in the file is one scaling.py accepts: absolute storage, a known preset."""
    line = _last_line(path)
    inner = shlex.split(line.lstrip("# "))[-1]  # ray exec <file> --tmux "<this>"
    argv = shlex.split(inner.split(" && ")[-1])
    assert argv[:2] == ["python", "sweeps/scaling.py"]
    storage = argv[argv.index("--storage") + 1]
    assert storage.startswith("/shared/")
    sys.path.insert(0, str(REPO / "sweeps"))
    try:
        import scaling
    finally:
        sys.path.remove(str(REPO / "sweeps"))
    assert scaling.main(argv[2:] + ["--dry-run"]) == 0
    assert "trials" in capsys.readouterr().out


# -- Slurm ----------------------------------------------------------------------------------------
def test_sbatch_syntax():
    bash = shutil.which("bash")
    assert bash
    out = subprocess.run([bash, "-n", str(SBATCH)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_sbatch_shellcheck():
    if not shutil.which("shellcheck"):
        pytest.skip("shellcheck is not installed")
    out = subprocess.run(["shellcheck", "-S", "warning", str(SBATCH)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


def test_sbatch_directives_and_launch():
    lines = SBATCH.read_text().splitlines()
    first_command = next(i for i, l in enumerate(lines) if l.strip() and not l.startswith("#"))
    directives = [i for i, l in enumerate(lines) if l.startswith("#SBATCH")]
    assert directives and max(directives) < first_command, "sbatch ignores #SBATCH after the first command"
    text = "\n".join(lines)
    assert "--nodes=" in text and "--exclusive" in text
    assert 'ray symmetric-run --address "${head_ip}:${PORT}" --min-nodes "$SLURM_JOB_NUM_NODES"' in text
    assert '--num-cpus="$CPUS" --num-gpus="$GPUS"' in text
    assert f'-- {SWEEP_CMD} "$STORAGE"' in text


def test_symmetric_run_exists_and_rejects_our_flags_nowhere():
    """Ray 2.60 has `ray symmetric-run`; it refuses --head, --port, --node-ip-address, --block."""
    from ray.scripts.scripts import cli

    assert "symmetric-run" in cli.commands
    launch = SBATCH.read_text().split("ray symmetric-run", 1)[1].split(" -- ", 1)[0]
    for flag in ("--head", "--port", "--node-ip-address", "--block"):
        assert flag not in launch


# -- Ray Jobs upload -------------------------------------------------------------------------------
def test_rayignore_keeps_outputs_out_of_job_uploads(tmp_path):
    """`ray job submit --working-dir .` zips the checkout with Ray's rules: .gitignore + .rayignore."""
    from ray._private.runtime_env.packaging import _zip_files

    src = tmp_path / "repo"
    files = [
        "brainray/sweep.py", "sweeps/scaling.py", "brainray/presets/paper.yaml", "cluster.yaml",
        "results/demo/trials/part-0.parquet", "results/README.md", "results/benchmarks/ridge.json",
        ".venv/bin/python", "brainray/__pycache__/sweep.cpython-311.pyc", "data/shinobi/x.nii.gz",
    ]
    for name in files:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text("x")
    for ignore in (".gitignore", ".rayignore"):
        shutil.copy(REPO / ignore, src / ignore)
    out = tmp_path / "pkg.zip"
    # RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1 turns .gitignore off; .rayignore alone must still hold.
    _zip_files(str(src), [], str(out), include_gitignore=False)
    names = set(zipfile.ZipFile(out).namelist())
    for kept in ("brainray/sweep.py", "sweeps/scaling.py", "brainray/presets/paper.yaml", "cluster.yaml"):
        assert kept in names
    assert not [n for n in names if n.startswith(("results/", ".venv/", "data/")) or "__pycache__" in n], names
