"""What a sweep costs before it runs (``--dry-run``): the prepare stage, and each trial's GPU time.

Trials are priced with a throughput model that has a per-step floor, ``step_s = floor_s +
flops / flops_per_s``: small models cannot fill a GPU (DESIGN: width 126 reaches under 2 % MFU),
so a flat MFU would price them 10-50x too cheap. :func:`fit_throughput` fits the two constants
to measured steps (``benchmarks/trial_throughput.py`` writes them); :data:`H100` holds the fit to
the H100 figures in DESIGN.md. The prepare stage is counted from the spec: frames to replay,
VQ-VAE steps (FLOPs from ``torch.utils.flop_counter`` on a meta-device model), tokens and disk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from brainray import gpt
from brainray.config import SweepSpec

__all__ = ["Throughput", "fit_throughput", "H100", "prepare_cost", "REPLAY_FRAMES_PER_CPU_S"]

#: Emulator frames replayed per second per CPU, resized (brainray.gameplay: 900-2,000 measured).
REPLAY_FRAMES_PER_CPU_S = 1000.0
#: Bytes of bk2 per 60 Hz frame: tests/fixtures/airstriker-best.bk2 holds 1,782 frames in 8,483 B.
BK2_BYTES_PER_FRAME = 8483 / 1782
#: Assumed VQ-VAE throughput on a GPU: 3-D convolutions in TF32 at 30 % of an H100's 495 TFLOP/s.
#: Not measured yet (no GPU figure in results/benchmarks); stated in the dry run.
VQVAE_FLOPS_PER_S = 0.3 * 495e12


@dataclass(frozen=True)
class Throughput:
    """Seconds per optimiser step: a fixed floor (kernel launches, the optimiser, the data) plus
    the step's FLOPs at a sustained rate."""

    floor_s: float
    flops_per_s: float

    def seconds(self, steps: float, flops: float) -> float:
        """Time of ``steps`` steps that together cost ``flops``."""
        return steps * self.floor_s + flops / self.flops_per_s


def fit_throughput(step_flops: np.ndarray, step_s: np.ndarray) -> Throughput:
    """Least squares of ``step_s = floor + step_flops / rate`` with floor >= 0 and rate > 0."""
    x, y = np.asarray(step_flops, float), np.asarray(step_s, float)
    if len(x) < 2 or np.ptp(x) == 0:
        raise ValueError("fit_throughput needs at least two steps of different FLOPs.")
    slope, floor = np.polyfit(x, y, 1)
    if floor < 0:  # the floor is not resolved: a pure rate through the origin
        floor, slope = 0.0, float(x @ y / (x @ x))
    if slope <= 0:
        raise ValueError("fit_throughput: step time does not grow with FLOPs; check the measurements.")
    return Throughput(float(floor), float(1.0 / slope))


def _design_h100() -> dict[str, Throughput]:
    """The fit to DESIGN.md's H100 figures (HF GPT-2, 8 layers, ctx 512, batch 64, 1,024 codes):
    width 576 at 431K tokens/s in bf16 and 148K in fp32, width 126 at 1.1M tokens/s (bf16).
    fp32 has one point: it keeps bf16's floor."""
    tokens = 512 * 64

    def step_flops(d: int) -> float:
        return gpt.train_flops_per_token(8, d, 1024, 512) * tokens

    bf16 = fit_throughput(np.array([step_flops(126), step_flops(576)]),
                          np.array([tokens / 1.1e6, tokens / 431e3]))
    fp32_rate = step_flops(576) / (tokens / 148e3 - bf16.floor_s)
    return {"bf16": bf16, "fp16": bf16, "fp32": Throughput(bf16.floor_s, fp32_rate)}


H100 = _design_h100()


def _vqvae_flops(spec: SweepSpec) -> tuple[float, float]:
    """(encoder, decoder) forward FLOPs of one clip, counted on a meta-device model (no memory)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from brainray import vqvae

    tk, d = spec.tokenizer, spec.data
    config = vqvae.VQVAEConfig(clip_frames=tk.clip_frames, frame_size=d.frame_size, downsample=tuple(tk.downsample),
                               n_hiddens=tk.n_hiddens, n_res_layers=tk.n_res_layers, n_codes=tk.n_codes,
                               embedding_dim=tk.embedding_dim)
    with torch.device("meta"):
        model = vqvae.VQVAE(config)
        x = torch.zeros(1, 3, tk.clip_frames, d.frame_size, d.frame_size)
        with FlopCounterMode(display=False) as enc:
            h = model.encoder(x)
        with FlopCounterMode(display=False) as dec:
            model.decoder(h)
    return float(enc.get_total_flops()), float(dec.get_total_flops())


def prepare_cost(spec: SweepSpec) -> dict[str, Any]:
    """The prepare stage of a simulated spec, counted: frames replayed (and CPU-hours), VQ-VAE
    steps, FLOPs and GPU-hours, tokenization, and the disk of the prepared dataset.

    Returns an empty dict for cneuromod, whose replays are only known once its events are read.
    """
    d, tk = spec.data, spec.tokenizer
    if d.source != "simulated":
        return {}
    span = tk.clip_frames * tk.time_downsample
    run_frames = int(round(d.run_vols * d.tr * 60))
    train, val, stim = d.train_replays * d.replay_frames, d.val_replays * d.replay_frames, d.n_runs * run_frames
    clips = train // span
    clip_bytes = tk.clip_frames * d.frame_size**2 * 3
    cached = clips * clip_bytes <= tk.cache_mb * 2**20
    epochs = math.ceil(tk.steps * tk.batch_size / max(1, clips))
    # record everything, replay the stimulus (frames and game state), then the training clips:
    # once into the cache or at every epoch (+ the stats sample and the held-out clips), then
    # the tokens of the training and validation plays (the stimulus is read from its frames)
    training_passes = 1 if cached else epochs + 2
    replayed = train + val + stim + stim + training_passes * train + (0 if cached else train) + val
    enc, dec = _vqvae_flops(spec)
    vq_flops = 3 * (enc + dec) * tk.steps * tk.batch_size
    n_clips_all = (train + val + stim) // span
    latent = (tk.clip_frames // tk.downsample[0]) * (d.frame_size // tk.downsample[1]) * (d.frame_size // tk.downsample[2])
    disk = {
        "bk2": (train + val + stim) * BK2_BYTES_PER_FRAME,
        "tokens": n_clips_all * latent * 2,
        "stimulus_frames": stim * d.frame_size**2 * 3,
    }
    return {
        "frames_recorded": train + val + stim, "frames_replayed": replayed,
        "replay_cpu_hours": replayed / REPLAY_FRAMES_PER_CPU_S / 3600,
        "vqvae_steps": tk.steps, "vqvae_epochs": epochs, "vqvae_cached": cached,
        "vqvae_train_flops": vq_flops, "vqvae_gpu_hours": vq_flops / VQVAE_FLOPS_PER_S / 3600,
        "tokenize_flops": enc * n_clips_all, "tokenize_gpu_hours": enc * n_clips_all / VQVAE_FLOPS_PER_S / 3600,
        "disk_bytes": disk, "disk_per_training_frame": BK2_BYTES_PER_FRAME + latent * 2 / span,
    }


def describe_prepare(spec: SweepSpec) -> str:
    """The prepare stage's cost in a few lines for ``--dry-run``."""
    c = prepare_cost(spec)
    if not c:
        return ("Prepare: the cneuromod replays are counted when their events are read; every bk2 is "
                "replayed once per VQ-VAE epoch and once for its tokens (see README, Run on a cluster).")
    gib = {k: v / 2**30 for k, v in c["disk_bytes"].items()}
    how = ("replayed once and kept in Ray's object store (within tokenizer.cache_mb)" if c["vqvae_cached"]
           else f"streamed from their bk2 at each of {c['vqvae_epochs']} epochs")
    return "\n".join([
        "Prepare (once per dataset; cached and resumable):",
        f"  gameplay: {c['frames_recorded']:.3g} frames recorded, {c['frames_replayed']:.3g} replayed in all: "
        f"{c['replay_cpu_hours']:.3g} CPU-hours at {REPLAY_FRAMES_PER_CPU_S:.0f} frames/s per CPU (divide by the workers)",
        f"  VQ-VAE: {c['vqvae_steps']} steps, {c['vqvae_train_flops']:.3g} FLOPs, {c['vqvae_gpu_hours']:.3g} GPU-hours "
        f"(assumed {VQVAE_FLOPS_PER_S / 1e12:.0f} TFLOP/s); its training clips are {how}",
        f"  tokens: {c['tokenize_flops']:.3g} FLOPs, {c['tokenize_gpu_hours']:.3g} GPU-hours",
        f"  disk: {sum(gib.values()):.3g} GiB (bk2 {gib['bk2']:.3g}, tokens {gib['tokens']:.3g}, stimulus frames "
        f"{gib['stimulus_frames']:.3g}); {c['disk_per_training_frame']:.1f} bytes per training frame",
    ])
