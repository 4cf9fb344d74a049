"""The live report: while a sweep runs, its frontier report is re-fitted as trials land.

One background thread per sweep driver (:class:`LiveReport`), below the trials' priority, rewrites
``<root>/frontier/`` (``brainray.summary.run_frontier``) after each new trial-log row, so the frontier
forms while the sweep runs and the page (which reloads itself while the driver holds the sweep's lock)
follows it. Tune's event loop only sets a flag: it never waits for a fit or a plot. Rows that land
during a rewrite make one more rewrite, not one each. This module knows nothing of Ray.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

from brainray.summary import run_frontier

__all__ = ["REPORT_LOCK", "LiveReport"]

REPORT_LOCK = threading.Lock()  # one report writer at a time in a process (live rewrites and the final one)


class LiveReport:
    """Rewrites a running sweep's report in the background when asked.

    Parameters
    ----------
    root : str
        The sweep folder (a path or a URI).
    bootstrap : int, default=50
        Bootstrap re-fits per law: fewer than the final report's, a live page is a preview.
    log : callable, default=print
        Where a failed rewrite is said, once: the next ones usually fail alike, and the final
        report at the end of the sweep is written on its own.
    """

    def __init__(self, root: str, bootstrap: int = 50, log: Callable[[str], None] = print):
        self.root, self.bootstrap, self.log = root, bootstrap, log
        self._asked = threading.Event()
        self._closing = False
        self._failed = False
        self._thread: threading.Thread | None = None

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles callbacks, which hold this, into its experiment state: an idle copy, saying to stdout."""
        return {"root": self.root, "bootstrap": self.bootstrap}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    def refresh(self) -> None:
        """Ask for a rewrite and return at once (the thread starts with the first ask)."""
        self._asked.set()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="brainray-live-report", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Wait for a rewrite in progress, then stop; one asked and not started is dropped (the final
        report follows). The interpreter must not exit while matplotlib draws: a daemon thread in
        FreeType at exit aborts the process."""
        if self._thread is None:
            return
        self._closing = True
        self._asked.set()
        self._thread.join()
        self._thread = None

    def _run(self) -> None:
        try:  # below the trials: on a small machine the driver shares cores with them (Linux: per-thread nice)
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        except (AttributeError, OSError):
            pass
        while True:
            self._asked.wait()
            self._asked.clear()
            if self._closing:
                return
            self._write()

    def _write(self) -> None:
        with REPORT_LOCK:
            try:
                run_frontier(self.root, bootstrap=self.bootstrap, log=lambda msg: None)
            except Exception as e:  # a live rewrite must never stop the sweep
                if not self._failed:
                    self._failed = True
                    self.log(f"[frontier] live report skipped: {type(e).__name__}: {e} (said once; the final report "
                             "at the end of the sweep is written on its own)")
