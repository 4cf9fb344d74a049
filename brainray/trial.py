"""One trial: train a GPT-2 on a data budget of VQ-VAE tokens, then score it against the brain.

``run(config, report)`` is a plain function (no Ray): ``brainray.sweep`` wraps it as a
Tune trainable, tests call it with a list-appending ``report``. It reads top to bottom as
nanoGPT's train.py does: settings, data, model, resume, one training loop (LR, forward,
backward, clip, step, log; evaluate and checkpoint each epoch), then features and
ridge encoding on held-out runs.

``report(metrics, checkpoint_dir=None)`` is called every ``log_every`` steps and at each
epoch end (with a checkpoint folder), and once at the end with the brain scores. Every
report carries ``val_loss`` (the sweep metric), carried forward between evaluations.
"""

from __future__ import annotations

import math
import os
import platform
import resource
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from brainray import encoding, gpt
from brainray.config import TrainSpec
from brainray.devices import pick_device
from brainray.prepare import FPS, Dataset, load_dataset
from brainray.video import budget_prefix

__all__ = ["run", "TrialDiverged", "CHECKPOINT"]

CHECKPOINT = "checkpoint.pt"
Report = Callable[..., None]


class TrialDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


def run(config: dict[str, Any], report: Report, checkpoint_dir: str | None = None) -> dict[str, Any]:
    """Train and score one configuration; returns the final metrics (also reported)."""
    # -- settings -------------------------------------------------------------------------
    tr = TrainSpec(**config["train"])
    ds = load_dataset(config["dataset"])
    torch.set_num_threads(max(1, int(tr.threads)))
    device = pick_device(tr.device)
    dtype = config["dtype"]
    amp_dtype = gpt.autocast_dtype(dtype)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 trials use TF32 matmuls (peak table assumes it)
    seed = int(config["seed"])
    torch.manual_seed(seed)
    np.random.seed(seed)

    # -- data: nested prefix of the training plays, in raw 60 Hz frames ------------------------
    T = int(np.prod(ds.latent_shape))
    train_seqs = _pairs(ds, "train", int(config["data_frames"]))
    val_seqs = _pairs(ds, "val", None)
    n_pairs = len(train_seqs)
    steps_per_epoch = max(1, math.ceil(n_pairs / tr.batch_size))
    max_steps = tr.epochs * steps_per_epoch

    # -- model and optimiser --------------------------------------------------------------
    spec = gpt.GPTSpec(
        n_embd=int(config["n_embd"]), n_layer=int(config["n_layer"]), n_head=int(config["n_head"]),
        vocab_size=int(ds.manifest["tokenizer"]["n_codes"]), tokens_per_clip=T, dropout=tr.dropout,
    )
    model = gpt.build_model(spec).to(device)
    n_params, n_params_nonembed = gpt.count_params(model)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": tr.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=tr.lr, betas=(0.9, 0.95),
    )
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == "fp16")
    flops_per_token = gpt.train_flops_per_token(spec.n_layer, spec.n_embd, spec.vocab_size, spec.n_ctx, n_logits=T)
    peak = gpt.peak_flops(device, dtype)

    def get_lr(step: int) -> float:
        """Linear warmup, then cosine decay to ``min_lr_frac * lr``."""
        warmup = int(tr.warmup_frac * max_steps)
        if step < warmup:
            return tr.lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, max_steps - warmup)
        return tr.lr * (tr.min_lr_frac + (1 - tr.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress)))

    def autocast():
        return torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)

    @torch.no_grad()
    def estimate_val_loss() -> float:
        model.eval()
        losses = []
        for b in range(0, min(len(val_seqs), tr.val_batches * tr.batch_size), tr.batch_size):
            with autocast():
                losses.append(gpt.next_clip_loss(model, val_seqs[b : b + tr.batch_size].to(device), T).item())
        model.train()
        return float(np.mean(losses))

    # -- resume ---------------------------------------------------------------------------
    state = {"step": 0, "epoch": 0, "best_val_loss": float("inf"), "train_s": 0.0, "train_loss": float("nan")}
    best_weights = None
    if checkpoint_dir:
        ckpt = torch.load(os.path.join(checkpoint_dir, CHECKPOINT), map_location=device, weights_only=True)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        torch.set_rng_state(ckpt["rng_cpu"])
        best_weights = ckpt["best_model"]
        state = {k: ckpt.get(k, v) for k, v in state.items()}

    base = {
        "n_embd": spec.n_embd, "n_layer": spec.n_layer, "n_head": spec.n_head, "dtype": dtype, "seed": seed,
        "data_frames": int(config["data_frames"]), "params": n_params, "params_nonembed": n_params_nonembed,
        "flops_per_token": flops_per_token, "n_ctx": spec.n_ctx, "vocab_size": spec.vocab_size,
        "batch_size": tr.batch_size, "lr": tr.lr, "epochs": tr.epochs, "max_steps": max_steps,
        "train_pairs": n_pairs, "device": str(device), "node": platform.node(),
    }

    def progress(train_loss: float, val_loss: float) -> dict[str, Any]:
        tokens = state["step"] * tr.batch_size * spec.n_ctx
        tps = tokens / state["train_s"] if state["train_s"] > 0 else 0.0
        return {
            **base, "step": state["step"], "epoch": state["epoch"], "train_loss": train_loss,
            "val_loss": val_loss, "best_val_loss": state["best_val_loss"], "tokens": tokens,
            "train_flops": flops_per_token * tokens, "tokens_per_s": tps,
            "mfu": flops_per_token * tps / peak if peak else None, "train_s": state["train_s"],
            "eta_s": (max_steps - state["step"]) * state["train_s"] / max(1, state["step"]),
        }

    # -- training loop ----------------------------------------------------------------------
    model.train()
    last_val = state["best_val_loss"] if math.isfinite(state["best_val_loss"]) else estimate_val_loss()
    while state["epoch"] < tr.epochs:
        order = torch.randperm(n_pairs, generator=torch.Generator().manual_seed(seed * 1000 + state["epoch"]))
        t0 = time.perf_counter()
        for b in range(steps_per_epoch):
            lr = get_lr(state["step"])
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = train_seqs[order[b * tr.batch_size : (b + 1) * tr.batch_size]].to(device)
            with autocast():
                loss = gpt.next_clip_loss(model, batch, T)
            if not torch.isfinite(loss):
                return _diverged(report, progress(loss.item(), last_val), state["step"], loss.item())
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), tr.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            state["step"] += 1
            if state["step"] % tr.log_every == 0 and b < steps_per_epoch - 1:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                state["train_s"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                state["train_loss"] = loss.item()
                report({**progress(state["train_loss"], last_val), "lr": lr})
        if device.type == "cuda":
            torch.cuda.synchronize()
        state["train_s"] += time.perf_counter() - t0
        state["epoch"] += 1
        state["train_loss"] = loss.item()
        last_val = estimate_val_loss()
        if not math.isfinite(last_val):
            return _diverged(report, progress(state["train_loss"], last_val), state["step"], last_val)
        if last_val < state["best_val_loss"]:
            state["best_val_loss"] = last_val
            best_weights = {k: v.detach().clone().cpu() for k, v in model.state_dict().items()}
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(
                {
                    **state, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict(), "rng_cpu": torch.get_rng_state(), "best_model": best_weights,
                    "config": {k: v for k, v in config.items() if k != "train"}, "train": dict(config["train"]),
                },
                os.path.join(tmp, CHECKPOINT),
            )
            report({**progress(state["train_loss"], last_val), "lr": lr}, checkpoint_dir=tmp)

    # -- brain encoding with the best-val-loss weights ----------------------------------------
    t0 = time.perf_counter()
    model.load_state_dict(best_weights)
    model.eval()
    scores = score_brain(model, ds, gpt.feature_layer(spec.n_layer, tr.feature_depth), tr, device)
    final = {
        **progress(state["train_loss"], last_val),
        **scores,
        "val_loss": state["best_val_loss"],
        "final_val_loss": last_val,
        "wall_s": state["train_s"] + (time.perf_counter() - t0),
        "encode_s": time.perf_counter() - t0,
        # Device-hours of the trial's slot: GPU-hours on CUDA, CPU-slot hours otherwise.
        "gpu_hours": (state["train_s"] + time.perf_counter() - t0) / 3600.0,
        "peak_mem_bytes": _peak_mem(device),
        "done": True,
    }
    report(final)
    return final


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
        ceiling is unknown, as for real data).
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
    rs, ceilings = [], []
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
    known = all(c is not None for c in ceilings)
    ceiling = np.concatenate(ceilings) if known else None
    pooled = encoding.summarize_scores(np.concatenate(rs), ceiling)
    # The paper's score is the max over parcels, averaged over subjects.
    pooled["brain_r_max"] = float(np.mean([out[f"r_max_{s}"] for s in ds.subjects]))
    pooled["ceiling_mean"] = float(np.mean(ceiling)) if known else None
    return {**out, **pooled}


def _diverged(report: Report, metrics: dict[str, Any], step: int, value: float) -> dict[str, Any]:
    final = {**metrics, "done": True, "error": f"diverged: loss={value} at step {step}"}
    report(final)
    return final


def _peak_mem(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # Linux reports KiB
