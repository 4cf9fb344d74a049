"""Learning-rate schedules, and the plan that lets one run serve a whole data axis.

The paper trains every data size from scratch with a cosine schedule, so the 1M-frame run
repeats the first 100K frames' worth of training that the 100K run already did. A
warmup-stable-decay (WSD) schedule (Hägele et al. 2024, "Scaling Laws and Compute-Optimal
Training Beyond Fixed Training Durations") holds the LR constant after warmup, so any
point of the stable phase is a valid starting point for a short cooldown. ``reuse_plan``
lays out one *trunk* run per model config over the largest data size and, for every
smaller size, the step where its cooldown *branch* forks off the trunk.

A branch for data size D must only ever see frames inside the prefix D, so the trunk
draws its batches from the smallest prefix whose fork lies ahead: prefix D_1 until the
first fork, then D_2, and so on (a growing-prefix curriculum, which the from-scratch runs
do not have; ``benchmarks/data_reuse.py`` measures whether it biases the result). Every
branch trains exactly as many steps as the from-scratch trial of its size would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Branch", "reuse_plan", "segment_at", "lr_at", "cosine_lr", "wsd_lr", "steps_for", "warmup_steps",
           "cooldown_start"]


@dataclass(frozen=True)
class Branch:
    """One data size of a reused data axis.

    ``steps`` is the length of this model's whole training path (the same as its
    from-scratch trial); the trunk's steps ``[0, fork)`` are shared, ``[fork, steps)``
    are this branch's own cooldown. ``start`` is where the trunk begins drawing from this
    prefix (the previous branch's fork).
    """

    data_frames: int
    n_pairs: int
    steps: int
    fork: int
    start: int

    @property
    def own_steps(self) -> int:
        """Steps this branch adds to the bill: its trunk segment plus its cooldown."""
        return self.steps - self.start


def steps_for(n_pairs: int, epochs: int, batch_size: int) -> int:
    """Optimiser steps of a trial: ``epochs`` passes over ``n_pairs`` samples (last batch partial)."""
    return epochs * max(1, math.ceil(n_pairs / batch_size))


def warmup_steps(warmup_frac: float, max_steps: int) -> int:
    return int(warmup_frac * max_steps)


def cooldown_start(max_steps: int, cooldown_frac: float) -> int:
    """The step where a WSD run of ``max_steps`` starts its cooldown (at least one step of it)."""
    return max_steps - max(1, round(cooldown_frac * max_steps))


def reuse_plan(
    data_frames: list[int], n_pairs: list[int], epochs: int, batch_size: int, cooldown_frac: float
) -> list[Branch]:
    """Branches in increasing data size; the last one is the trunk's own cooldown.

    A trial trained from scratch is the one-branch plan of its data size: its trunk is its
    whole path (``start`` 0, ``fork`` where a WSD schedule would start cooling down).

    Each branch's cooldown is ``cooldown_frac`` of its own path (at least one step), so a
    branch ends with the same LR decay, relative to its length, whatever its size.
    """
    if len(data_frames) != len(n_pairs) or not data_frames:
        raise ValueError("reuse_plan: give one n_pairs per data size, and at least one size.")
    if not 0 < cooldown_frac < 1:
        raise ValueError(f"'train.cooldown_frac' must be in (0, 1); got {cooldown_frac}.")
    order = sorted(range(len(data_frames)), key=lambda i: data_frames[i])
    branches, start = [], 0
    for i in order:
        steps = steps_for(n_pairs[i], epochs, batch_size)
        fork = max(start, cooldown_start(steps, cooldown_frac))
        branches.append(Branch(int(data_frames[i]), int(n_pairs[i]), steps, fork, start))
        start = fork
    return branches


def segment_at(plan: list[Branch], step: int) -> Branch:
    """The prefix the trunk draws from at ``step``: the first branch whose fork lies ahead."""
    for br in plan[:-1]:
        if step < br.fork:
            return br
    return plan[-1]


def lr_at(kind: str, step: int, branch: Branch, lr: float, warmup: int, min_lr_frac: float) -> float:
    """The LR at ``step`` on ``branch``'s path: ``kind`` 'wsd' (constant until its fork, then its
    cooldown to its end) or 'cosine' (decaying over its whole path; the fork plays no part)."""
    if kind == "wsd":
        return wsd_lr(step, branch.fork, branch.steps, lr, warmup, min_lr_frac)
    if kind == "cosine":
        return cosine_lr(step, branch.steps, lr, warmup, min_lr_frac)
    raise ValueError(f"'train.lr_schedule' must be 'cosine' or 'wsd'; got {kind!r}.")


def cosine_lr(step: int, max_steps: int, lr: float, warmup: int, min_lr_frac: float) -> float:
    """Linear warmup, then cosine decay to ``min_lr_frac * lr`` at ``max_steps``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, max_steps - warmup)
    return lr * (min_lr_frac + (1 - min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress)))


def wsd_lr(step: int, fork: int, max_steps: int, lr: float, warmup: int, min_lr_frac: float) -> float:
    """Linear warmup, constant until ``fork``, then a 1-sqrt cooldown to ``min_lr_frac * lr``.

    The 1-sqrt shape matched or beat cosine at equal length in Hägele et al. (2024), with
    20 % cooldown. The floor is reached on the last step, so even a one-step cooldown decays.
    """
    if step < warmup:
        return lr * (step + 1) / warmup
    if step < fork:
        return lr
    progress = (step - fork + 1) / max(1, max_steps - fork)
    return lr * (min_lr_frac + (1 - min_lr_frac) * (1 - math.sqrt(min(1.0, progress))))
