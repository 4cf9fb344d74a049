"""A real multi-process Ray cluster on this machine, with token auth, that loses a worker.

``ray start --head`` plus a worker ``ray start --address`` (separate raylets, as on two
machines), the smoke sweep joins it with ``--address``, the worker raylet is SIGKILLed while
trials run, and the sweep still ends with every trial in the log exactly once.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from brainray import triallog
from brainray.config import load_spec

REPO = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pids(pattern: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def _node_ports() -> list[str]:
    """Free ports for one node's agents: two nodes on one machine must not share the defaults."""
    return [f"--dashboard-agent-listen-port={_free_port()}", f"--dashboard-agent-grpc-port={_free_port()}",
            f"--metrics-export-port={_free_port()}", f"--runtime-env-agent-port={_free_port()}"]


@pytest.fixture
def cluster(tmp_path):
    """Head and one worker node, 1 CPU each, token auth on, on free local ports.

    The cluster gets its own temp dir, so teardown stops exactly its processes (``ray stop``
    would stop every Ray instance on the machine).
    """
    token = tmp_path / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    temp_dir = tempfile.mkdtemp(prefix="brt", dir="/tmp")  # short: Unix socket paths are limited
    port, worker_port, dash_port = _free_port(), _free_port(), _free_port()
    head = ["ray", "start", "--head", f"--port={port}", "--num-cpus=1", "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={dash_port}", f"--temp-dir={temp_dir}",
            *_node_ports()]
    try:
        subprocess.run(head, env=env, check=True, capture_output=True, timeout=120)
        worker = ["ray", "start", f"--address=127.0.0.1:{port}", "--num-cpus=1",
                  f"--node-manager-port={worker_port}", "--node-ip-address=127.0.0.1", *_node_ports()]
        subprocess.run(worker, env=env, check=True, capture_output=True, timeout=120)
        yield {"address": f"127.0.0.1:{port}", "env": env, "worker_port": worker_port, "port": port,
               "dashboard": f"http://127.0.0.1:{dash_port}"}
    finally:
        for pid in _pids(temp_dir) + _pids(f"127.0.0.1:{port}") + _pids(f"node_manager_port={worker_port}"):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(temp_dir, ignore_errors=True)


def _ray(cluster, *args, timeout=120):
    return subprocess.run(["ray", *args], env=cluster["env"], capture_output=True, text=True, timeout=timeout)


def _until(fn, timeout_s: float, what: str):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(2)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def _smoke_spec(tmp_path, **train) -> Path:
    """The smoke preset for a joined CPU-only cluster (gpus_per_trial 0: 'auto' is refused there)."""
    smoke = yaml.safe_load((REPO / "brainray" / "presets" / "smoke.yaml").read_text())
    smoke["name"] = "live"
    smoke["train"].update(train)
    smoke["resources"].update(max_failures=3, gpus_per_trial=0)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(smoke))
    return path


@pytest.mark.slow
def test_ray_job_submit_runs_the_sweep(cluster, tmp_path):
    """``ray job submit --working-dir . -- python sweeps/scaling.py ...`` against the cluster:
    the sweep runs as a job of the job server (what the dashboard lists), with its logs."""
    spec = _smoke_spec(tmp_path)
    addr = ["--address", cluster["dashboard"]]
    submit = ["job", "submit", *addr, "--working-dir", str(REPO), "--submission-id", "brainray-smoke",
              "--no-wait", "--", "python", "sweeps/scaling.py", "--preset", str(spec), "--address", "auto",
              "--storage", str(tmp_path / "results"), "--no-report"]

    def submitted():  # the job agent starts a little after the head
        out = _ray(cluster, *submit)
        assert out.returncode == 0 or "No available agent" in out.stderr, out.stderr[-3000:]
        return out.returncode == 0

    _until(submitted, 180, "the job agent")

    def finished():
        text = (_ray(cluster, "job", "status", *addr, "brainray-smoke").stdout).lower()
        return ("succeeded" in text or "failed" in text or "stopped" in text) and text

    status = _until(finished, 600, "the job to finish")
    logs = _ray(cluster, "job", "logs", *addr, "brainray-smoke").stdout
    assert "succeeded" in status, logs[-4000:]
    assert "Best configuration per training-FLOPs budget" in logs
    listed = _ray(cluster, "job", "list", *addr).stdout
    assert "brainray-smoke" in listed
    trials = triallog.read_trials(str(tmp_path / "results" / "live"))
    assert len(trials) == len(load_spec(str(spec)).runs())


@pytest.mark.slow
def test_sweep_survives_losing_a_worker_node(cluster, tmp_path):
    spec_file = _smoke_spec(tmp_path, epochs=4)  # long enough to be caught mid-run
    expected = load_spec(str(spec_file)).runs()

    cmd = [sys.executable, str(REPO / "sweeps" / "scaling.py"), "--preset", str(spec_file),
           "--storage", str(tmp_path / "results"), "--address", cluster["address"], "--no-report"]
    log = open(tmp_path / "driver.log", "w")
    driver = subprocess.Popen(cmd, env=cluster["env"], stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    root = tmp_path / "results" / "live"
    killed = False
    deadline = time.time() + 900
    while driver.poll() is None and time.time() < deadline:
        done = len(list((root / "trials").glob("*.parquet"))) if (root / "trials").exists() else 0
        running = list((root / "tune").glob("trainable_*")) if (root / "tune").exists() else []
        if not killed and done >= 1 and len(running) > done:
            for pid in _pids(f"node_manager_port={cluster['worker_port']}"):
                os.kill(pid, signal.SIGKILL)  # the worker node dies, as a lost machine would
            killed = True
        time.sleep(0.5)
    driver.wait(timeout=60)
    log.close()
    text = (tmp_path / "driver.log").read_text()
    assert killed, "the worker was never killed mid-sweep:\n" + text[-3000:]
    assert driver.returncode == 0, text[-4000:]
    trials = triallog.read_trials(str(root))
    assert len(trials) == len(expected) == trials["trial_id"].nunique()
    assert (trials["status"] == "TERMINATED").all(), "\n".join(trials["error"].dropna())[-3000:]
    assert len(list((root / "trials").glob("*.parquet"))) == len(expected)  # each written once
