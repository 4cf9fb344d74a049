"""A plain ``report`` for trials run without Ray, shared by test_trial and test_reuse."""

from __future__ import annotations

import shutil
from pathlib import Path


class Recorder:
    """Keeps every metrics dict and copies every checkpoint folder (Tune would persist it)."""

    def __init__(self, tmp_path: Path):
        self.metrics, self.checkpoints, self.tmp = [], [], Path(tmp_path)

    def __call__(self, metrics, checkpoint_dir=None):
        self.metrics.append(dict(metrics))
        if checkpoint_dir:
            dest = self.tmp / f"ckpt-{len(self.checkpoints)}"
            shutil.copytree(checkpoint_dir, dest)
            self.checkpoints.append(dest)

    def rows(self) -> list[dict]:
        """The trial-log rows a reuse run reported (one per data size)."""
        return [m for m in self.metrics if m.get("branch_done")]

    def trunk(self) -> list[tuple[int, float]]:
        """(step, train loss) of a reuse run's trunk progress reports."""
        return [(m["step"], m["train_loss"]) for m in self.metrics if m.get("branch") is None and "lr" in m]
