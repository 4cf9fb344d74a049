"""Stop a local Ray instance's processes when its driver dies without shutting it down.

A driver killed with SIGKILL (or by the OOM killer) cannot run ``ray.shutdown``. Ray's
GCS and raylet then exit, but its dashboard and runtime-env agents stay behind, each
holding memory, until someone kills them. ``watch`` starts a small process in its own
session that waits for the driver to end and then stops every Ray process that still
writes into that driver's session folder. Linux only (it reads ``/proc``); elsewhere a no-op.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["watch", "leftovers"]


def watch(driver_pid: int, session_dir: str) -> subprocess.Popen | None:
    """Start the watcher of ``driver_pid``'s Ray session ``session_dir``; returns its process."""
    if not Path("/proc").is_dir():
        return None
    return subprocess.Popen(
        [sys.executable, "-m", "brainray.reaper", str(driver_pid), session_dir],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )


def leftovers(session_dir: str) -> list[int]:
    """Pids of Ray processes (other than this one) with a file open under ``session_dir``."""
    prefix, pids = str(Path(session_dir)) + "/", []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if "ray" not in (proc / "cmdline").read_bytes().decode(errors="replace"):
                continue
            if any(os.readlink(fd).startswith(prefix) for fd in (proc / "fd").iterdir()):
                pids.append(int(proc.name))
        except OSError:  # gone, or not ours to read
            continue
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reap(driver_pid: int, session_dir: str, poll_s: float = 5.0, grace_s: float = 10.0) -> None:
    while _alive(driver_pid):
        if not leftovers(session_dir):
            return  # the driver shut Ray down itself (and may go on with another session)
        time.sleep(poll_s)
    time.sleep(grace_s)  # a driver that shut Ray down itself leaves nothing; give Ray's own exit time
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = leftovers(session_dir)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        if not pids:
            return
        time.sleep(grace_s / 2)


if __name__ == "__main__":
    _reap(int(sys.argv[1]), sys.argv[2])
