"""One trial: train a GPT-2 on a data budget of VQ-VAE tokens, then score it against the brain.

``run(config, report)`` is a plain function (no Ray): ``brainray.sweep`` wraps it as a
Tune trainable, tests call it with a list-appending ``report``. It reads top to bottom as
nanoGPT's train.py does: settings, data, model, resume, one training loop (LR, forward,
backward, clip, step, log; evaluate and checkpoint each epoch), then features and
ridge encoding on held-out runs.

``report(metrics, checkpoint_dir=None)`` is called every ``log_every`` steps and at each
epoch end (with a checkpoint folder), and once at the end with the brain scores. Every
report carries ``val_loss`` (the sweep metric), carried forward between evaluations.

With ``train.data_schedule: reuse`` one run serves several data sizes (``_run_reuse``,
planned by ``brainray.schedule``): each size is a cooldown branch off a shared trunk and
is reported, with ``branch_done: True``, as a trial of its own.
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

__all__ = ["run", "score_brain", "CHECKPOINT"]

CHECKPOINT = "checkpoint.pt"
Report = Callable[..., None]


def run(config: dict[str, Any], report: Report, checkpoint_dir: str | None = None) -> dict[str, Any]:
    """Train and score one configuration; returns the final metrics (also reported).

    With ``train.data_schedule: reuse`` every data size in ``config["branches"]`` is trained
    by one run (``_run_reuse``); each size's final metrics are reported with
    ``branch_done: True`` and become a trial-log row of their own.
    """
    tr = TrainSpec(**config["train"])
    if config.get("control"):
        return _run_control(config, tr, report)
    if tr.data_schedule == "reuse":
        return _run_reuse(config, tr, report, checkpoint_dir)
    if len(config.get("branches") or []) > 1:
        raise ValueError(f"config lists branches {config['branches']} but train.data_schedule is {tr.data_schedule!r}.")
    t = _Trainer(config, tr)

    # -- data: nested prefix of the training plays, in raw 60 Hz frames ------------------------
    data_frames = int(config["data_frames"])
    train_seqs = _pairs(t.ds, "train", data_frames)
    n_pairs = len(train_seqs)
    steps_per_epoch = schedule.steps_for(n_pairs, 1, tr.batch_size)
    max_steps = tr.epochs * steps_per_epoch
    warmup = schedule.warmup_steps(tr.warmup_frac, max_steps)
    fork = schedule.cooldown_start(max_steps, tr.cooldown_frac)

    def get_lr(step: int) -> float:
        if tr.lr_schedule == "wsd":
            return schedule.wsd_lr(step, fork, max_steps, tr.lr, warmup, tr.min_lr_frac)
        return schedule.cosine_lr(step, max_steps, tr.lr, warmup, tr.min_lr_frac)

    # -- resume (a damaged checkpoint: from scratch, with a warning) -------------------------
    ckpt = t.load(checkpoint_dir) if checkpoint_dir else None
    best_weights = ckpt["best_model"] if ckpt else None
    state = t.state
    base = {**t.base, "data_frames": data_frames, "max_steps": max_steps, "train_pairs": n_pairs}

    # -- training loop ----------------------------------------------------------------------
    last_val = state["best_val_loss"] if math.isfinite(state["best_val_loss"]) else t.val_loss()
    while state["epoch"] < tr.epochs:
        order = _epoch_order(n_pairs, t.seed * 1000 + state["epoch"])
        t.start_clock()
        for b in range(steps_per_epoch):
            lr = get_lr(state["step"])
            loss = t.step(train_seqs[order[b * tr.batch_size : (b + 1) * tr.batch_size]], lr)
            if not math.isfinite(loss):
                return _report(report, _failed({**base, **t.progress(max_steps, last_val)}, state["step"], loss))
            if state["step"] % tr.log_every == 0 and b < steps_per_epoch - 1:
                t.stop_clock()
                t.start_clock()
                report({**base, **t.progress(max_steps, last_val), "lr": lr})
        t.stop_clock()
        state["epoch"] += 1
        last_val = t.val_loss()
        if not math.isfinite(last_val):
            return _report(report, _failed({**base, **t.progress(max_steps, last_val)}, state["step"], last_val))
        if last_val < state["best_val_loss"]:
            state["best_val_loss"] = last_val
            best_weights = {k: v.detach().clone().cpu() for k, v in t.model.state_dict().items()}
        with tempfile.TemporaryDirectory() as tmp:
            t.save(tmp, best_model=best_weights)
            report({**base, **t.progress(max_steps, last_val), "lr": lr}, checkpoint_dir=tmp)

    # -- brain encoding with the best-val-loss weights ----------------------------------------
    t.model.load_state_dict(best_weights)
    final = {**base, **t.finish(max_steps, last_val), "data_schedule": "scratch"}
    final["incurred_flops"], final["incurred_gpu_hours"] = final["train_flops"], final["gpu_hours"]
    return _report(report, final)


def _run_control(config: dict[str, Any], tr: TrainSpec, report: Report) -> dict[str, Any]:
    """A control trial: the model as built (seeded initial weights), scored without training.

    ``control="untrained"`` answers what training adds: the same architecture, features and
    ridge, with no optimiser step. It costs no training FLOPs; its val loss is the initial one.
    """
    if config["control"] != "untrained":
        raise ValueError(f"unknown control {config['control']!r}; brainray knows 'untrained'.")
    t = _Trainer(config, tr)
    base = {**t.base, "data_frames": int(config["data_frames"]), "max_steps": 0, "train_pairs": 0}
    final = {**base, **t.finish(0, t.val_loss()), "data_schedule": "scratch", "control": "untrained"}
    final["incurred_flops"], final["incurred_gpu_hours"] = 0.0, final["gpu_hours"]
    return _report(report, final)


def _run_reuse(config: dict[str, Any], tr: TrainSpec, report: Report, checkpoint_dir: str | None) -> dict[str, Any]:
    """One trunk over the largest data size; at each smaller size's fork, a cooldown branch.

    The trunk follows the WSD schedule of the largest size and draws from the growing
    prefix (``schedule.segment_at``). At a fork the trunk's whole state (model, optimiser,
    scaler, RNG) is snapshotted; the branch cools down on its own prefix, is evaluated and
    scored with its final weights, and the trunk goes on from the snapshot, so the trunk is
    the same run whether or not branches were taken. Checkpoints (one per epoch of the
    largest size, and after each branch) hold the trunk and the branches already done.
    """
    t = _Trainer(config, tr)
    sizes = sorted({int(d) for d in (config.get("branches") or [config["data_frames"]])})
    seqs = {d: _pairs(t.ds, "train", d) for d in sizes}
    plan = schedule.reuse_plan(sizes, [len(seqs[d]) for d in sizes], tr.epochs, tr.batch_size, tr.cooldown_frac)
    trunk = plan[-1]
    warmup = schedule.warmup_steps(tr.warmup_frac, plan[0].steps)  # shared, so sized by the shortest path
    orders: dict[tuple[int, int], torch.Tensor] = {}

    def batch(br: schedule.Branch, step: int) -> torch.Tensor:
        """Prefix ``br``'s batch at ``step``: epochs over it, counted from where the trunk enters it."""
        epoch, b = divmod(step - br.start, schedule.steps_for(br.n_pairs, 1, tr.batch_size))
        if (br.data_frames, epoch) not in orders:
            seed = t.seed * 1000 + 7919 * (sizes.index(br.data_frames) + 1) + epoch
            orders[br.data_frames, epoch] = _epoch_order(br.n_pairs, seed)
        return seqs[br.data_frames][orders[br.data_frames, epoch][b * tr.batch_size : (b + 1) * tr.batch_size]]

    ckpt = t.load(checkpoint_dir) if checkpoint_dir else None  # damaged: from scratch, with a warning
    done: list[int] = list(ckpt["branches_done"]) if ckpt else []
    state = t.state
    last_val = state["best_val_loss"] if math.isfinite(state["best_val_loss"]) else t.val_loss()

    def metrics(br: schedule.Branch, on_trunk: bool) -> dict[str, Any]:
        m = {**t.base, **t.progress(br.steps, last_val), "data_schedule": "reuse", "data_frames": br.data_frames,
             "train_pairs": br.n_pairs, "max_steps": br.steps, "branch_step": br.fork}
        return {**m, "branch": None if on_trunk else br.data_frames}

    def train(until: int, lr_of: schedule.Branch, data: schedule.Branch | None) -> float:
        """Steps up to ``until`` with ``lr_of``'s schedule, on prefix ``data`` (None: the trunk's); the last loss."""
        loss = float("nan")
        t.start_clock()
        while state["step"] < until:
            lr = schedule.wsd_lr(state["step"], lr_of.fork, lr_of.steps, tr.lr, warmup, tr.min_lr_frac)
            loss = t.step(batch(data or schedule.segment_at(plan, state["step"]), state["step"]), lr)
            if not math.isfinite(loss):
                break
            if state["step"] % tr.log_every == 0:
                t.stop_clock()
                t.start_clock()
                report({**metrics(lr_of, data is None), "lr": lr})
        t.stop_clock()
        return loss

    def checkpoint() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            t.save(tmp, branches_done=done)
            report(metrics(trunk, on_trunk=True), checkpoint_dir=tmp)

    every = schedule.steps_for(trunk.n_pairs, 1, tr.batch_size)  # trunk steps between checkpoints
    for br in plan:
        if br.data_frames in done:
            continue
        # -- the trunk up to this branch's fork ------------------------------------------------
        while state["step"] < br.fork:
            loss = train(min(br.fork, (state["step"] // every + 1) * every), trunk, None)
            if not math.isfinite(loss):  # every size not yet done fails with the trunk
                return _report(report, _failed(metrics(trunk, True), state["step"], loss))
            last_val = t.val_loss()
            checkpoint()
        # -- the branch: its cooldown on its own prefix (the largest size's is the trunk's own) ---
        snapshot = t.snapshot() if br is not trunk else None
        loss = train(br.steps, br, br)
        if math.isfinite(loss):
            last_val = t.val_loss()
            row = {**metrics(br, False), **t.finish(br.steps, last_val)}
            row["incurred_flops"] = t.flops_per_token * br.own_steps * tr.batch_size * t.spec.n_ctx
            row["incurred_gpu_hours"] = (state["train_s"] - state["segment_start_s"] + row["encode_s"]) / 3600.0
        else:
            row = _failed(metrics(br, False), state["step"], loss)
        if br is trunk:
            return _report(report, {**row, "branch_done": True})
        row.pop("done")  # Tune ends a trial on a result with done=True; only the trunk's last one has it
        report({**row, "branch_done": True})
        done.append(br.data_frames)
        t.restore(snapshot)
        state = t.state
        state["segment_start_s"] = state["train_s"]  # the next branch's bill starts at this fork
        last_val = t.val_loss()
        checkpoint()
    raise AssertionError("unreachable: the plan ends with the trunk's own branch")


class _Trainer:
    """One trial's model, optimiser and scaler, and the few things done to them.

    ``state`` holds the counters that a checkpoint carries: step, epoch, best val loss,
    training seconds, and where the current reuse segment's bill started.
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

    def start_clock(self) -> None:
        self._t0 = time.perf_counter()

    def stop_clock(self) -> None:
        """Add the time since ``start_clock`` to the training seconds (after the GPU finishes)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.state["train_s"] += time.perf_counter() - self._t0

    def progress(self, max_steps: int, val_loss: float) -> dict[str, Any]:
        s = self.state
        tokens = s["step"] * self.tr.batch_size * self.spec.n_ctx
        tps = tokens / s["train_s"] if s["train_s"] > 0 else 0.0
        return {
            "step": s["step"], "epoch": s["epoch"], "train_loss": s["train_loss"], "val_loss": val_loss,
            "best_val_loss": s["best_val_loss"], "tokens": tokens, "train_flops": self.flops_per_token * tokens,
            "tokens_per_s": tps, "mfu": self.flops_per_token * tps / self.peak if self.peak else None,
            "train_s": s["train_s"], "eta_s": (max_steps - s["step"]) * s["train_s"] / max(1, s["step"]),
        }

    def finish(self, max_steps: int, last_val: float) -> dict[str, Any]:
        """Score the current weights against the brain; the final metrics of a trial (or branch)."""
        t0 = time.perf_counter()
        self.model.eval()
        scores = score_brain(self.model, self.ds, gpt.feature_layer(self.spec.n_layer, self.tr.feature_depth),
                             self.tr, self.device)
        self.model.train()
        encode_s = time.perf_counter() - t0
        best = min(self.state["best_val_loss"], last_val)
        return {
            **self.progress(max_steps, last_val), **scores, "val_loss": best, "final_val_loss": last_val,
            "wall_s": self.state["train_s"] + encode_s, "encode_s": encode_s,
            # Device-hours of the trial's slot: GPU-hours on CUDA, CPU-slot hours otherwise.
            "gpu_hours": (self.state["train_s"] + encode_s) / 3600.0,
            "peak_mem_bytes": _peak_mem(self.device), "done": True,
        }

    def snapshot(self) -> dict[str, Any]:
        """A deep copy of everything a step changes (weights, optimiser, scaler, RNG, counters)."""
        return copy.deepcopy({
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(), **_rng_state(self.device), "state": self.state,
        })

    def restore(self, snap: dict[str, Any]) -> None:
        self.model.load_state_dict(snap["model"])
        self.optimizer.load_state_dict(snap["optimizer"])
        self.scaler.load_state_dict(snap["scaler"])
        _set_rng_state(snap, self.device)
        self.state = dict(snap["state"])

    def save(self, folder: str, **extra: Any) -> None:
        torch.save(
            {**self.state, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
             "scaler": self.scaler.state_dict(), **_rng_state(self.device), **extra,
             "config": {k: v for k, v in self.config.items() if k != "train"}, "train": dict(self.config["train"])},
            os.path.join(folder, CHECKPOINT),
        )

    def load(self, folder: str) -> dict[str, Any] | None:
        """Restore the checkpoint in ``folder``; None if it is damaged, and the trial starts over.

        Tune keeps one checkpoint per trial, so a damaged one has no older one to fall back
        on: the trial restarts from scratch (the same start as a new trial), with a warning
        naming the file, rather than fail.
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
        return ckpt

    def _start_over(self, why: str) -> None:
        """Warn that the trial restarts from scratch, and restart it (a partial restore is undone)."""
        warnings.warn(
            f"{why}\nThe trial restarts from scratch (step 0): Tune keeps one checkpoint per trial, "
            "so there is no earlier one to resume from.",
            RuntimeWarning, stacklevel=3,
        )
        self._fresh()


_STATE = {"step": 0, "epoch": 0, "best_val_loss": float("inf"), "train_s": 0.0, "train_loss": float("nan"),
          "segment_start_s": 0.0}


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


def _pairs(ds: Dataset, split: str, data_frames: int | None) -> torch.Tensor:
    """(previous clip, next clip) code sequences within each play: (n_pairs, 2T) int64.

    With ``data_frames`` only clips that lie wholly inside the nested prefix count.
    """
    plays = ds.replays(split)
    takes = budget_prefix([p["n_frames"] for p in plays], data_frames) if data_frames else [p["n_frames"] for p in plays]
    seqs = []
    for play, take in zip(plays, takes):
        n_clips = take // ds.clip_span
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
    """
    t, h, w = ds.latent_shape
    features: dict[int, np.ndarray] = {}  # run index -> (n_vols, C), shared runs computed once

    def run_features(k: int) -> np.ndarray:
        """Features of run k's clips at ``layer``, pooled over space, on the TR grid: (n_vols, C)."""
        if k in features:
            return features[k]
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
            f = torch.cat([
                gpt.clip_features(model, seq[i : i + 256].to(device), (t, h, w), layer).cpu()
                for i in range(0, n_clips, 256)
            ])  # (n_clips, t, C)
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
        features[k] = encoding.resample_to_tr(np.concatenate(times), np.concatenate(feats), tr_s, run["n_vols"])
        return features[k]

    out: dict[str, Any] = {}
    rs, ceilings, families = [], [], []
    for subject in ds.subjects:
        runs = ds.run_indices(subject)
        sub = ds.subject(subject)
        if len(sub.bold) != len(runs):
            raise ValueError(
                f"{ds.root}: {subject} has {len(sub.bold)} BOLD runs but the manifest lists {len(runs)} runs "
                "for it; prepare the dataset again."
            )
        X = np.concatenate([run_features(k) for k in runs]).astype(np.float32)
        groups = np.concatenate([np.full(len(run_features(k)), k) for k in runs])
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
    return {**out, **pooled}


def _failed(metrics: dict[str, Any], step: int, value: float) -> dict[str, Any]:
    return {**metrics, "done": True, "error": f"diverged: loss={value} at step {step}"}


def _report(report: Report, final: dict[str, Any]) -> dict[str, Any]:
    report(final)
    return final


def _peak_mem(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # Linux reports KiB
