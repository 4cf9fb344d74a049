"""File locks that say who holds them: one driver per sweep, one prepare per dataset.

A lock is an ``flock`` on a small file that also records its holder (host, pid, command,
start time). The kernel drops an ``flock`` when its process dies, however it dies, so a
killed driver never leaves a stale lock; on Linux NFS clients ``flock`` is carried by the
server's byte-range locks, so drivers on different nodes of a shared filesystem see each
other. Where the filesystem cannot lock (some FUSE mounts), taking the lock fails with
a message saying so rather than silently running unlocked.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

__all__ = ["LockHeld", "exclusive", "holder"]


class LockHeld(RuntimeError):
    """Another live process holds the lock; the message names it."""


def holder(path: str | os.PathLike) -> dict:
    """What the lock file says of its last holder (``{}`` if unreadable)."""
    try:
        return json.loads(Path(path).read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _describe(info: dict) -> str:
    if not info:
        return "another process (its lock file names no holder)"
    return (f"pid {info.get('pid')} on {info.get('host')}, started {info.get('started')}"
            f" ({info.get('command', '?')})")


@contextlib.contextmanager
def exclusive(
    path: str | os.PathLike, what: str, *, wait: bool = False, log: Callable[[str], None] = print,
    poll_s: float = 2.0,
) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` for the ``with`` block.

    what: what the lock protects, for messages ("the sweep results/demo").
    wait: False refuses at once with ``LockHeld`` naming the holder; True waits for it,
    saying once whom it waits for.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        said = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                info = holder(path)
                if not wait:
                    raise LockHeld(
                        f"{what} is in use by {_describe(info)}. Only one driver may run it at a time: "
                        f"wait for that one to finish or stop it (Ctrl-C), then run the same command again. "
                        f"Lock file: {path}"
                    ) from None
                if not said:
                    log(f"[lock] waiting for {what}, held by {_describe(info)} ({path})")
                    said = True
                time.sleep(poll_s)
            except OSError as e:
                if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise OSError(e.errno, f"{path}: this filesystem does not support file locks, so "
                                  f"{what} cannot be protected from a second driver") from e
                raise
        info = {
            "host": socket.gethostname(), "pid": os.getpid(), "command": " ".join(sys.argv)[:300],
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the flock
