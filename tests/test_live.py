"""The live report: rewritten in the background as rows land, never in the way of the sweep."""

from __future__ import annotations

import pickle
import threading
import time

from brainray import live


def test_a_failing_live_report_says_so_once(tmp_path):
    """Each finished trial refreshes the report; a refresh that keeps failing is one line, not one per trial."""
    said: list[str] = []
    report = live.LiveReport(str(tmp_path), log=said.append)
    for _ in range(3):
        report._write()  # no trial log there: every rewrite fails alike
    assert len(said) == 1 and "live report skipped" in said[0] and "No trial log" in said[0]


def test_refresh_returns_at_once_and_close_waits_for_the_rewrite(tmp_path, monkeypatch):
    started, release, written = threading.Event(), threading.Event(), []

    def slow_frontier(root, bootstrap, log):
        started.set()
        release.wait(10)
        written.append(root)

    monkeypatch.setattr(live, "run_frontier", slow_frontier)
    report = live.LiveReport(str(tmp_path))
    t0 = time.perf_counter()
    report.refresh()
    assert started.wait(10) and time.perf_counter() - t0 < 5  # Tune's loop is not held by the rewrite
    for _ in range(5):  # rows landing during a rewrite: one more rewrite, not one each
        report.refresh()
    assert not live.REPORT_LOCK.acquire(blocking=False)  # the final report waits for it
    release.set()
    deadline = time.time() + 10
    while len(written) < 2 and time.time() < deadline:
        time.sleep(0.01)
    report.close()
    assert written == [str(tmp_path)] * 2 and not report._thread


def test_a_pickled_report_is_an_idle_copy(tmp_path):
    """Tune pickles its callbacks, which hold the live report, into the experiment state."""
    report = live.LiveReport(str(tmp_path), bootstrap=7)
    report.refresh()
    copy = pickle.loads(pickle.dumps(report))
    assert (copy.root, copy.bootstrap, copy._thread) == (str(tmp_path), 7, None)
    copy.close()  # never started: nothing to wait for
    report.close()
