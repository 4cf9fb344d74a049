"""One trial: train a GPT-2 on a data budget of VQ-VAE tokens, then score it against the brain.

``run(config, report)`` is a plain function (no Ray): ``brainray.sweep`` wraps it as a
Tune trainable, tests call it with a list-appending ``report``. It reads top to bottom as
nanoGPT's train.py does: settings, data, model, resume, one training loop (LR, forward,
backward, clip, step, log; evaluate and checkpoint each epoch), then features and
ridge encoding on held-out runs.

Every trial follows a plan of ``schedule.Branch``es, one per data size, and one loop runs
it. A scratch trial (``train.data_schedule: scratch``, the paper) is the one-branch plan of
its data size. With ``train.data_schedule: reuse`` one run serves several data sizes: each
smaller size is a cooldown branch off a shared trunk over the largest one, and is
reported, with ``branch_done: True``, as a trial of its own.

Which weights are scored: each data size is scored with the weights of the lowest
validation loss among the evaluations on its own training path, and that loss is its
``val_loss`` (``final_val_loss`` is the path's last one). A path is evaluated at the end of
every epoch of the trunk (epochs of the largest size; of the only size for a scratch
trial), at every fork on it, and at the end of its own cooldown. For a scratch trial this
is the best epoch's weights.

``report(metrics, checkpoint_dir=None)`` is called every ``log_every`` steps, at each
evaluation of the trunk (with a checkpoint folder), and once per data size with its brain
scores. Every report carries ``val_loss`` (the sweep metric): the last evaluation's, carried
forward between evaluations.
"""

from __future__ import annotations

import copy
import math
import os
import platform
import resource
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from brainray import encoding, gpt, schedule, vqvae
from brainray.config import TrainSpec
from brainray.devices import pick_device, use_tf32
from brainray.dataset import FPS, Dataset, load_dataset
from brainray.video import budget_prefix

__all__ = ["run", "score_brain", "score_features", "run_features", "run_clip_features", "code_shares", "n_pairs", "CHECKPOINT", "PARCEL_R"]

CHECKPOINT = "checkpoint.pt"
PARCEL_R = "_parcel_r"  # key of the per-subject per-parcel r in score_brain's scores (and a trial's final report)
Report = Callable[..., None]


def run(config: dict[str, Any], report: Report, checkpoint_dir: str | None = None) -> dict[str, Any]:
    """Train and score one configuration; returns the final metrics (also reported).

    The trunk trains epoch by epoch (evaluated and checkpointed at each epoch end and at
    each fork) up to the next branch's fork. There the trunk's whole state (model,
    optimiser, scaler, RNG, best weights) is snapshotted; the branch cools down on its own
    prefix, is scored, and the trunk goes on from the snapshot, so the trunk is the same
    run whether or not branches were taken. The last branch is the trunk's own path, to its
    end; a scratch trial has only that one. Checkpoints hold the trunk and the branches
    already done.
    """
    tr = TrainSpec(**config["train"])
    if config.get("control"):
        return _run_control(config, tr, report)
    if tr.data_schedule != "reuse" and len(config.get("branches") or []) > 1:
        raise ValueError(f"config lists branches {config['branches']} but train.data_schedule is {tr.data_schedule!r}.")
    t = _Trainer(config, tr)
    path = _Plan(t, config)
    trunk = path.plan[-1]

    # -- resume (a damaged checkpoint: from scratch, with a warning) -------------------------
    ckpt = t.load(checkpoint_dir) if checkpoint_dir else None
    done: list[int] = list(ckpt.get("branches_done", [])) if ckpt else []
    if not math.isfinite(t.state["val_loss"]):
        t.state["val_loss"] = t.val_loss()  # what progress reports carry before the first evaluation

    # -- training loop: the trunk to each fork, then that branch -----------------------------
    every = schedule.steps_for(trunk.n_pairs, 1, tr.batch_size)  # an epoch of the trunk
    for br in path.plan:
        if br.data_frames in done:
            continue
        end = br.steps if br is trunk else br.fork  # the trunk's own path goes to its end
        while t.state["step"] < end:
            loss = path.train(trunk, min(end, (t.state["step"] // every + 1) * every), report, log_last=False)
            t.state["epoch"] = t.state["step"] // every
            val = t.evaluate() if math.isfinite(loss) else loss
            if not math.isfinite(val):  # every size not yet done fails with the trunk
                return _report(report, path.failed(trunk, val, own=br is trunk))
            path.checkpoint(report, done)
        if br is trunk:
            return _report(report, path.scored(trunk))
        # -- the branch: its cooldown on its own prefix, off a snapshot of the trunk ----------
        snapshot = t.snapshot()
        loss = path.train(br, br.steps, report, log_last=True)
        val = t.evaluate() if math.isfinite(loss) else loss
        row = path.scored(br) if math.isfinite(val) else path.failed(br, val, own=True)
        row.pop("done")  # Tune ends a trial on a result with done=True; only the trunk's last one has it
        report(row)
        done.append(br.data_frames)
        t.restore(snapshot)
        t.state["segment_start_s"] = t.state["train_s"]  # the next branch's bill starts at this fork
        path.checkpoint(report, done)
    raise AssertionError("unreachable: the plan ends with the trunk's own branch")


def _run_control(config: dict[str, Any], tr: TrainSpec, report: Report) -> dict[str, Any]:
    """A control trial, scored without training (``config.CONTROLS``).

    ``control="untrained"`` answers what training adds: the model as built (seeded initial
    weights), with the same features and ridge and no optimiser step; its val loss is the
    initial one. ``control="codes"`` answers what a model adds to its input: the clip's own VQ
    codes (:func:`code_shares`) through the same TR grid, delays and ridge, with no model at
    all (no val loss). Neither costs training FLOPs.
    """
    if config["control"] == "codes":
        return _report(report, _codes_control(config, tr))
    if config["control"] != "untrained":
        raise ValueError(f"unknown control {config['control']!r}; brainray knows 'untrained' and 'codes'.")
    t = _Trainer(config, tr)
    t.evaluate()  # its path is its initial weights
    base = {**t.base, "data_frames": int(config["data_frames"]), "max_steps": 0, "train_pairs": 0}
    final = {**base, **t.finish(0), "data_schedule": "scratch", "control": "untrained"}
    final["incurred_flops"], final["incurred_gpu_hours"] = 0.0, final["gpu_hours"]
    return _report(report, final)


def _codes_control(config: dict[str, Any], tr: TrainSpec) -> dict[str, Any]:
    """The ``codes`` control's final metrics: the ridge on the code shares of every stimulus run."""
    t0 = time.perf_counter()
    ds = load_dataset(config["dataset"])
    torch.set_num_threads(max(1, int(tr.threads)))  # as a model's trial: its slot's CPUs only
    device = pick_device(tr.device)
    shares = code_shares(ds)
    scores = score_features({k: run_clip_features(ds, k, shares) for k in _stimulus_runs(ds)}, ds, tr, device)
    encode_s = time.perf_counter() - t0
    return {
        **scores, "data_frames": int(config["data_frames"]), "seed": int(config["seed"]), "dtype": config["dtype"],
        "params": 0, "params_nonembed": 0, "flops_per_token": 0.0, "step": 0, "epoch": 0, "tokens": 0,
        "train_flops": 0.0, "incurred_flops": 0.0, "max_steps": 0, "train_pairs": 0, "val_loss": math.nan,
        "vocab_size": int(ds.manifest["tokenizer"]["n_codes"]), "batch_size": tr.batch_size, "lr": tr.lr,
        "lr_schedule": tr.lr_schedule, "epochs": tr.epochs, "device": str(device), "node": platform.node(),
        "train_s": 0.0, "encode_s": encode_s, "wall_s": encode_s, "gpu_hours": encode_s / 3600.0,
        "incurred_gpu_hours": encode_s / 3600.0, "peak_mem_bytes": _peak_mem(device), "data_schedule": "scratch",
        "control": "codes", "done": True,
    }


def code_shares(ds: Dataset, by_position: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """The clip's own VQ codes as features, with no model: a ``clip_features`` map for
    :func:`run_clip_features`.

    Per latent time step, the share of each code over the screen (``n_codes`` columns), or with
    ``by_position`` the one-hot code of every latent position (``n_codes`` x positions). A pooled
    model's features are a learned (or random) map of the shares: what a ridge on them reads,
    a model has not added to its input.
    """
    t, h, w = ds.latent_shape
    n_codes = int(ds.manifest["tokenizer"]["n_codes"])

    def shares(seq: torch.Tensor) -> torch.Tensor:  # (B, 2T) context + clip -> (B, t, C)
        clip = seq[:, t * h * w :].reshape(len(seq), t, h * w)
        if by_position:
            return torch.nn.functional.one_hot(clip, n_codes).float().reshape(len(seq), t, -1)
        counts = torch.zeros(len(seq), t, n_codes).scatter_add_(2, clip, torch.ones(clip.shape))
        return counts / (h * w)  # a count per code, not a one-hot per position: small at the paper's 1024 codes

    return shares


class _Plan:
    """A trial's plan (``schedule.reuse_plan``: one branch per data size, the trunk last), the
    training pairs of each size (nested prefixes) and the loop's steps along it.

    The order of epoch e over a prefix is a permutation seeded by ``seed * 1000 + e``, plus
    ``7919 * (k + 1)`` for the k-th smallest size of a reused axis (so both schedules draw
    the orders they drew when they had loops of their own).
    """

    def __init__(self, t: _Trainer, config: dict[str, Any]):
        self.t, tr = t, t.tr
        self.reuse = tr.data_schedule == "reuse"
        sizes = sorted({int(d) for d in (config.get("branches") or [config["data_frames"]])}) if self.reuse else [
            int(config["data_frames"])]
        self.seqs = {d: _pairs(t.ds, "train", d) for d in sizes}
        self.plan = schedule.reuse_plan(sizes, [len(self.seqs[d]) for d in sizes], tr.epochs, tr.batch_size,
                                        tr.cooldown_frac)
        self.warmup = schedule.warmup_steps(tr.warmup_frac, self.plan[0].steps)  # shared: sized by the shortest path
        self.salt = {d: 7919 * (k + 1) if self.reuse else 0 for k, d in enumerate(sizes)}
        self._orders: dict[tuple[int, int], torch.Tensor] = {}

    def lr(self, br: schedule.Branch, step: int) -> float:
        tr = self.t.tr
        return schedule.lr_at(tr.lr_schedule, step, br, tr.lr, self.warmup, tr.min_lr_frac)

    def batch(self, br: schedule.Branch, step: int) -> torch.Tensor:
        """Prefix ``br``'s batch at ``step``: epochs over it, counted from where the trunk enters it."""
        bs = self.t.tr.batch_size
        epoch, b = divmod(step - br.start, schedule.steps_for(br.n_pairs, 1, bs))
        key = (br.data_frames, epoch)
        if key not in self._orders:
            self._orders[key] = _epoch_order(br.n_pairs, self.t.seed * 1000 + self.salt[br.data_frames] + epoch)
        return self.seqs[br.data_frames][self._orders[key][b * bs : (b + 1) * bs]]

    def train(self, br: schedule.Branch, until: int, report: Report, log_last: bool) -> float:
        """Steps up to ``until`` on ``br``'s path: its LR schedule, and its own prefix from its fork
        on (before it, the trunk's growing prefix). Reports every ``log_every`` steps, but at
        ``until`` only with ``log_last`` (else an evaluation report follows). Returns the last
        loss; a non-finite one stops there (nothing was updated)."""
        t, loss = self.t, float("nan")
        t.start_clock()
        while t.state["step"] < until:
            step = t.state["step"]
            lr = self.lr(br, step)
            loss = t.step(self.batch(br if step >= br.fork else schedule.segment_at(self.plan, step), step), lr)
            if not math.isfinite(loss):
                break
            if t.state["step"] % t.tr.log_every == 0 and (log_last or t.state["step"] < until):
                t.stop_clock()
                t.start_clock()
                report({**self.metrics(br), "lr": lr})
        t.stop_clock()
        return loss

    def metrics(self, br: schedule.Branch) -> dict[str, Any]:
        """Progress on ``br``'s path; on a reused axis also its fork and ``branch`` (its size once
        past its fork: the steps of its own row, else None: the shared trunk's)."""
        m = {**self.t.base, **self.t.progress(br.steps), "data_schedule": self.t.tr.data_schedule,
             "data_frames": br.data_frames, "train_pairs": br.n_pairs, "max_steps": br.steps}
        if self.reuse:
            m |= {"branch_step": br.fork, "branch": br.data_frames if self.t.state["step"] > br.fork else None}
        return m

    def checkpoint(self, report: Report, done: list[int]) -> None:
        """The trunk's progress (with the LR of its last step), reported with a checkpoint."""
        trunk, step = self.plan[-1], self.t.state["step"]
        self.t.checkpoint(report, {**self.metrics(trunk), "lr": self.lr(trunk, step - 1)}, branches_done=done)

    def scored(self, br: schedule.Branch) -> dict[str, Any]:
        """``br``'s final metrics: its best weights scored against the brain, and its bill."""
        t = self.t
        row = {**self.metrics(br), **t.finish(br.steps)}
        row["incurred_flops"] = t.flops_per_token * (br.own_steps * t.tr.batch_size * t.spec.n_ctx)
        row["incurred_gpu_hours"] = (t.state["train_s"] - t.state["segment_start_s"] + row["encode_s"]) / 3600.0
        return {**row, "branch_done": True} if self.reuse else row

    def failed(self, br: schedule.Branch, value: float, own: bool) -> dict[str, Any]:
        """A diverged path; ``own``: on ``br``'s own steps, so it is that size's row."""
        row = _failed(self.metrics(br), self.t.state["step"], value)
        return {**row, "branch_done": True} if self.reuse and own else row


class _Trainer:
    """One trial's model, optimiser and scaler, and the few things done to them.

    ``state`` holds the counters that a checkpoint carries: step, epoch, the last and the
    best val loss, training seconds, and where the current reuse segment's bill started;
    ``best`` the weights of the best val loss (on the CPU), the ones ``finish`` scores.
    """

    def __init__(self, config: dict[str, Any], tr: TrainSpec):
        self.config, self.tr, self.ds = config, tr, load_dataset(config["dataset"])
        torch.set_num_threads(max(1, int(tr.threads)))
        self.device = pick_device(tr.device)
        self.dtype = config["dtype"]
        self.amp_dtype = gpt.autocast_dtype(self.dtype)
        use_tf32(self.device)
        self.seed = int(config["seed"])
        self.val_seqs = _pairs(self.ds, "val", None)
        self.spec = gpt.GPTSpec(
            n_embd=int(config["n_embd"]), n_layer=int(config["n_layer"]), n_head=int(config["n_head"]),
            vocab_size=int(self.ds.manifest["tokenizer"]["n_codes"]), tokens_per_clip=int(np.prod(self.ds.latent_shape)),
            dropout=tr.dropout,
        )
        self._fresh()
        T = self.spec.tokens_per_clip
        self.flops_per_token = gpt.train_flops_per_token(
            self.spec.n_layer, self.spec.n_embd, self.spec.vocab_size, self.spec.n_ctx, n_logits=T
        )
        self.peak = gpt.peak_flops(self.device, self.dtype)
        n_params, n_params_nonembed = gpt.count_params(self.model)
        self.base = {
            "n_embd": self.spec.n_embd, "n_layer": self.spec.n_layer, "n_head": self.spec.n_head, "dtype": self.dtype,
            "seed": self.seed, "params": n_params, "params_nonembed": n_params_nonembed,
            "flops_per_token": self.flops_per_token, "n_ctx": self.spec.n_ctx, "vocab_size": self.spec.vocab_size,
            "batch_size": tr.batch_size, "lr": tr.lr, "lr_schedule": tr.lr_schedule, "epochs": tr.epochs,
            "device": str(self.device),
            "node": platform.node(),
        }
        self._t0 = 0.0

    def _fresh(self) -> None:
        """Seeded model, optimiser, scaler and counters at step 0: what a new trial starts from."""
        torch.manual_seed(self.seed)
        np.random.seed(self.seed)
        self.model = gpt.build_model(self.spec).to(self.device)
        self.optimizer = gpt.build_optimizer(self.model, self.tr.lr, self.tr.weight_decay)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == "fp16")
        self.state: dict[str, Any] = dict(_STATE)
        self.best: dict[str, torch.Tensor] | None = None

    def step(self, batch: torch.Tensor, lr: float) -> float:
        """One optimiser step at ``lr``; returns the loss (non-finite: nothing was updated)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss = gpt.train_step(self.model, self.optimizer, self.scaler, batch.to(self.device),
                              self.spec.tokens_per_clip, self.amp_dtype, self.tr.grad_clip)
        if math.isfinite(loss):
            self.state["step"] += 1
            self.state["train_loss"] = loss
        return loss

    @torch.no_grad()
    def val_loss(self) -> float:
        self.model.eval()
        losses = []
        bs = self.tr.batch_size
        for b in range(0, min(len(self.val_seqs), self.tr.val_batches * bs), bs):
            with gpt.autocast(self.device.type, self.amp_dtype):
                seq = self.val_seqs[b : b + bs].to(self.device)
                losses.append(gpt.next_clip_loss(self.model, seq, self.spec.tokens_per_clip).item())
        self.model.train()
        return float(np.mean(losses))

    def evaluate(self) -> float:
        """The val loss of the current weights, now the last one; the lowest so far keeps its weights."""
        val = self.val_loss()
        self.state["val_loss"] = val
        if val < self.state["best_val_loss"]:
            self.state["best_val_loss"] = val
            self.best = {k: v.detach().clone().cpu() for k, v in self.model.state_dict().items()}
        return val

    def start_clock(self) -> None:
        self._t0 = time.perf_counter()

    def stop_clock(self) -> None:
        """Add the time since ``start_clock`` to the training seconds (after the GPU finishes)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.state["train_s"] += time.perf_counter() - self._t0

    def progress(self, max_steps: int) -> dict[str, Any]:
        s = self.state
        tokens = s["step"] * self.tr.batch_size * self.spec.n_ctx
        tps = tokens / s["train_s"] if s["train_s"] > 0 else 0.0
        return {
            "step": s["step"], "epoch": s["epoch"], "train_loss": s["train_loss"], "val_loss": s["val_loss"],
            "best_val_loss": s["best_val_loss"], "tokens": tokens, "train_flops": self.flops_per_token * tokens,
            "tokens_per_s": tps, "mfu": self.flops_per_token * tps / self.peak if self.peak else None,
            "train_s": s["train_s"], "eta_s": (max_steps - s["step"]) * s["train_s"] / max(1, s["step"]),
        }

    def finish(self, max_steps: int) -> dict[str, Any]:
        """Score the best weights (``best``, loaded into the model) against the brain; the final
        metrics of a trial (or branch): ``val_loss`` is the best one, ``final_val_loss`` the last."""
        t0 = time.perf_counter()
        self.model.load_state_dict(self.best)
        self.model.eval()
        scores = score_brain(self.model, self.ds, gpt.feature_layer(self.spec.n_layer, self.tr.feature_depth),
                             self.tr, self.device)
        self.model.train()
        encode_s = time.perf_counter() - t0
        return {
            **self.progress(max_steps), **scores, "val_loss": self.state["best_val_loss"],
            "final_val_loss": self.state["val_loss"],
            "wall_s": self.state["train_s"] + encode_s, "encode_s": encode_s,
            # Device-hours of the trial's slot: GPU-hours on CUDA, CPU-slot hours otherwise.
            "gpu_hours": (self.state["train_s"] + encode_s) / 3600.0,
            "peak_mem_bytes": _peak_mem(self.device), "done": True,
        }

    def snapshot(self) -> dict[str, Any]:
        """A deep copy of everything a step changes (weights, optimiser, scaler, RNG, counters, best weights)."""
        return copy.deepcopy({
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(), **_rng_state(self.device), "state": self.state, "best": self.best,
        })

    def restore(self, snap: dict[str, Any]) -> None:
        self.model.load_state_dict(snap["model"])
        self.optimizer.load_state_dict(snap["optimizer"])
        self.scaler.load_state_dict(snap["scaler"])
        _set_rng_state(snap, self.device)
        self.state, self.best = dict(snap["state"]), snap["best"]

    def checkpoint(self, report: Report, metrics: dict[str, Any], **extra: Any) -> None:
        """Report ``metrics`` with a checkpoint of the trial (``save``) in a temporary folder."""
        with tempfile.TemporaryDirectory() as tmp:
            self.save(tmp, **extra)
            report(metrics, checkpoint_dir=tmp)

    def save(self, folder: str, **extra: Any) -> None:
        torch.save(
            {**self.state, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
             "scaler": self.scaler.state_dict(), **_rng_state(self.device), "best_model": self.best, **extra,
             "config": {k: v for k, v in self.config.items() if k != "train"}, "train": dict(self.config["train"])},
            os.path.join(folder, CHECKPOINT),
        )

    def load(self, folder: str) -> dict[str, Any] | None:
        """Restore the checkpoint in ``folder``; None if it is damaged, and the trial starts over.

        Tune hands a trial only the checkpoint its saved state names (the older ones are pruned),
        so a damaged one has no older one to fall back on: the trial restarts from scratch (the
        same start as a new trial), with a warning naming the file, rather than fail.
        """
        path = os.path.join(folder, CHECKPOINT)
        try:
            ckpt = vqvae.read_checkpoint(path, map_location=self.device)  # names the file if damaged
        except (OSError, vqvae.CorruptCheckpointError) as err:
            return self._start_over(str(err))
        try:
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scaler.load_state_dict(ckpt["scaler"])
            _set_rng_state(ckpt, self.device)
        except (LookupError, TypeError, ValueError, RuntimeError) as err:  # read, but not this trial's state
            first = (str(err).splitlines() or [""])[0]
            return self._start_over(f"Checkpoint {path} does not fit this trial ({type(err).__name__}: {first}).")
        self.state = {k: ckpt.get(k, v) for k, v in _STATE.items()}
        self.best = ckpt.get("best_model")
        return ckpt

    def _start_over(self, why: str) -> None:
        """Warn that the trial restarts from scratch, and restart it (a partial restore is undone)."""
        warnings.warn(
            f"{why}\nThe trial restarts from scratch (step 0): Tune resumes a trial only from the checkpoint "
            "its saved state names, so there is no earlier one to resume from.",
            RuntimeWarning, stacklevel=3,
        )
        self._fresh()


_STATE = {"step": 0, "epoch": 0, "val_loss": float("nan"), "best_val_loss": float("inf"), "train_s": 0.0,
          "train_loss": float("nan"), "segment_start_s": 0.0}


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    rng = {"rng_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        rng["rng_cuda"] = torch.cuda.get_rng_state(device)
    return rng


def _set_rng_state(saved: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(saved["rng_cpu"].cpu())
    if device.type == "cuda" and "rng_cuda" in saved:
        torch.cuda.set_rng_state(saved["rng_cuda"].cpu(), device)


def _epoch_order(n: int, seed: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def _clips(ds: Dataset, split: str, data_frames: int | None) -> list[tuple[dict[str, Any], int]]:
    """(play, whole clips inside the nested prefix of ``data_frames``) for each play of ``split``."""
    plays = ds.replays(split)
    takes = budget_prefix([p["n_frames"] for p in plays], data_frames) if data_frames else [p["n_frames"] for p in plays]
    return [(play, take // ds.clip_span) for play, take in zip(plays, takes)]


def n_pairs(ds: Dataset, data_frames: int) -> int:
    """Training pairs of a data budget, without reading a token: the sample count of the trial's epochs."""
    return sum(n - 1 for _, n in _clips(ds, "train", data_frames) if n >= 2)


def _pairs(ds: Dataset, split: str, data_frames: int | None) -> torch.Tensor:
    """(previous clip, next clip) code sequences within each play: (n_pairs, 2T) int64.

    With ``data_frames`` only clips that lie wholly inside the nested prefix count.
    """
    seqs = []
    for play, n_clips in _clips(ds, split, data_frames):
        if n_clips < 2:
            continue
        codes = torch.from_numpy(np.asarray(ds.tokens(play["name"])[:n_clips], dtype=np.int64))
        flat = codes.reshape(n_clips, -1)  # (n_clips, T) in (t, h, w) order
        seqs.append(torch.cat([flat[:-1], flat[1:]], dim=1))
    if not seqs:
        raise ValueError(
            f"data_frames={data_frames} gives no pair of consecutive clips in the {split!r} plays "
            f"(one clip spans {ds.clip_span} frames); use a larger data size."
        )
    return torch.cat(seqs)


@torch.no_grad()
def run_features(model, ds: Dataset, k: int, layer: int, device: torch.device) -> np.ndarray:
    """Features of stimulus run ``k``'s clips at ``layer``, pooled over space, on its TR grid.

    Each clip is read with the clip before it as context (the first clip is its own), as in
    training. This is what the ridge sees; ``benchmarks/family_probe.py`` reads it too.

    Returns
    -------
    array of shape (n_vols, n_embd)
    """
    shape = ds.latent_shape
    return run_clip_features(ds, k, lambda seq: gpt.clip_features(model, seq.to(device), shape, layer).cpu())


def run_clip_features(ds: Dataset, k: int, clip_features: Callable[[torch.Tensor], torch.Tensor]) -> np.ndarray:
    """``clip_features`` of stimulus run ``k``'s clips, on its TR grid.

    ``clip_features`` maps a batch of (context clip, clip) code sequences, (B, 2T), to one
    vector per latent time step of the clip, (B, t, C). A model's features are one such map;
    ``benchmarks/family_probe.py`` passes the code histogram too, a read-out with no model.
    """
    t = ds.latent_shape[0]
    run = ds.manifest["runs"][k]
    times, feats = [], []
    for seg in run["segments"]:
        codes = np.asarray(ds.tokens(seg["replay"]), dtype=np.int64)
        n_clips = min(len(codes), seg["n_frames"] // ds.clip_span)
        if n_clips == 0:
            continue
        flat = torch.from_numpy(codes[:n_clips]).reshape(n_clips, -1)
        prev = torch.cat([flat[:1], flat[:-1]])  # the first clip is its own context
        seq = torch.cat([prev, flat], dim=1)
        f = torch.cat([clip_features(seq[i : i + 256]) for i in range(0, n_clips, 256)])  # (n_clips, t, C)
        step = ds.clip_span / t  # raw frames per latent time step
        starts = np.arange(n_clips)[:, None] * ds.clip_span + (np.arange(t)[None, :] + 0.5) * step
        times.append(seg["onset"] + starts.reshape(-1) / FPS)
        feats.append(f.reshape(n_clips * t, -1).numpy())
    if not feats:
        raise ValueError(
            f"{ds.root}: run {run['run']} has no replay of at least one clip ({ds.clip_span} frames) "
            "inside it, so it has no features; prepare the dataset again without it."
        )
    tr_s = float(run.get("tr", ds.manifest["tr"]))  # per run for real data
    return encoding.resample_to_tr(np.concatenate(times), np.concatenate(feats), tr_s, run["n_vols"])


def score_brain(model, ds: Dataset, layer: int, tr: TrainSpec, device: torch.device) -> dict[str, Any]:
    """Features of every stimulus run on the TR grid, then ridge per subject on held-out runs.

    A subject is scored on its runs (``Dataset.run_indices``): its own runs (real data) or
    the runs shared by every subject (simulated). Each run's features are computed once.

    Returns
    -------
    scores : dict
        ``r_mean_<subject>``, ``r_max_<subject>``; pooled over subjects ``brain_r_mean``,
        ``brain_r_top10``, ``brain_r_max`` (max over parcels, averaged over subjects: the
        paper's score), and ``ceiling_frac``, ``ceiling_mean`` (None when the noise
        ceiling is unknown, as for real data). Simulated parcels add, per family
        (``simbrain.PARCEL_TYPES``), ``brain_r_<family>`` and ``ceiling_frac_<family>``.
        ``_parcel_r`` (private: not a trial-log column) maps each subject to its held-out r
        per parcel, array of shape (n_parcels,), for ``brainray.parcels.parcel_table``.
    """
    features = {k: run_features(model, ds, k, layer, device) for k in _stimulus_runs(ds)}  # shared runs once
    return score_features(features, ds, tr, device)


def _stimulus_runs(ds: Dataset) -> list[int]:
    """The run indices that some subject is scored on, each once."""
    return sorted({k for subject in ds.subjects for k in ds.run_indices(subject)})


def score_features(features: dict[int, np.ndarray], ds: Dataset, tr: TrainSpec, device: torch.device | str) -> dict[str, Any]:
    """:func:`score_brain` of given TR features, one array (n_vols, C) per run index: the ridge
    per subject on held-out runs, and the scores pooled over subjects and per family."""
    out: dict[str, Any] = {}
    parcel_r: dict[str, np.ndarray] = {}
    rs, ceilings, families = [], [], []
    for subject in ds.subjects:
        runs = ds.run_indices(subject)
        sub = ds.subject(subject)
        if len(sub.bold) != len(runs):
            raise ValueError(
                f"{ds.root}: {subject} has {len(sub.bold)} BOLD runs but the manifest lists {len(runs)} runs "
                "for it; prepare the dataset again."
            )
        X = np.concatenate([features[k] for k in runs]).astype(np.float32)
        groups = np.concatenate([np.full(len(features[k]), k) for k in runs])
        Y = np.concatenate(sub.bold).astype(np.float32)
        if len(Y) != len(X):
            raise ValueError(
                f"{ds.root}: {subject} has {len(Y)} BOLD volumes but its runs in the manifest have "
                f"{len(X)}; prepare the dataset again."
            )
        r = encoding.encode_subject(X, Y, groups, alphas=tr.alphas, delays=tr.delays, device=str(device))
        s = encoding.summarize_scores(r, sub.ceiling)
        out[f"r_mean_{subject}"] = s["brain_r_mean"]
        out[f"r_max_{subject}"] = s["brain_r_max"]
        rs.append(r)
        parcel_r[subject] = np.asarray(r, dtype=np.float64)
        ceilings.append(None if sub.ceiling is None else np.broadcast_to(sub.ceiling, r.shape))
        families.append(getattr(sub, "parcel_types", None))  # simulated parcels have a family; real ones do not
    known = all(c is not None for c in ceilings)
    ceiling = np.concatenate(ceilings) if known else None
    pooled = encoding.summarize_scores(np.concatenate(rs), ceiling)
    if all(f is not None for f in families):
        pooled |= encoding.summarize_families(np.concatenate(rs), np.concatenate(families), ceiling)
    # The paper's score is the max over parcels, averaged over subjects.
    pooled["brain_r_max"] = float(np.mean([out[f"r_max_{s}"] for s in ds.subjects]))
    pooled["ceiling_mean"] = float(np.mean(ceiling)) if known else None
    return {**out, **pooled, PARCEL_R: parcel_r}


def _failed(metrics: dict[str, Any], step: int, value: float) -> dict[str, Any]:
    return {**metrics, "done": True, "error": f"diverged: loss={value} at step {step}"}


def _report(report: Report, final: dict[str, Any]) -> dict[str, Any]:
    report(final)
    return final


def _peak_mem(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # Linux reports KiB
