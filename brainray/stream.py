"""The prepare stage's streams on Ray Data: bk2 replays -> clips -> VQ-VAE training, and tokens.

A play's source of truth is its ``.bk2`` (a few KB): its frames are regenerated from it, exactly,
whenever its clips are needed, so no stage keeps a training frame. Each play is one block: the
replays run in parallel over the cluster's CPUs, resized while replaying, and only the clips in
flight are held (Ray Data's backpressure, under :data:`OBJECT_STORE_BUDGET`). The order is kept
(``preserve_order``), so a seed fixes every batch: a killed training resumes from its checkpoint
with the batches it would have seen.

- :func:`train_tokenizer` trains the VQ-VAE from the stream, epoch after epoch (each epoch
  replays the training plays in a seeded order, through a seeded shuffle buffer), on a GPU
  worker when the cluster has GPUs (a Ray task that asks for one), else in the calling process;
  it checkpoints every 10 % of the steps.
- :func:`write_tokens` codes every clip with ``map_batches``: on GPU actors where GPUs exist,
  in CPU tasks otherwise, a block at a time. Tokens are written per play, as the clips come back.

This is the only module that imports Ray Data (DESIGN).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.data
from ray.data.expressions import col
import torch

from brainray import gameplay, reaper, video, vqvae
from brainray.devices import pick_device

__all__ = ["Clips", "OBJECT_STORE_BUDGET", "draw", "n_clips", "ray_session", "train_tokenizer", "write_tokens"]

Log = Callable[[str], None]
#: Bytes of Ray's object store that a stream may fill before it waits for its consumer: a few
#: blocks ahead of the VQ-VAE is all it needs (measured: 256 MB let a 16x-larger dataset's
#: clips pile up there, 170 MB more; benchmarks/prepare_scaling.py).
OBJECT_STORE_BUDGET = 64 * 2**20
#: Largest block a replay task emits: a play's clips leave in pieces, not as one block per play.
BLOCK_BYTES = 8 * 2**20
#: Clips that the mean frame and the pixel variance are measured on (a seeded sample).
STATS_CLIPS = 4096
#: Bytes of clips in the training shuffle buffer (at least 4 batches). It is a fixed cost, paid
#: in full once the data is larger than it: 128 MB added 270 MB to a 16x-larger prepare's peak.
SHUFFLE_BYTES = 32 * 2**20
_CODE_BATCH = 64  # clips per tokenizer call


@dataclasses.dataclass(frozen=True)
class Clips:
    """How clips are cut from a play: ``clip_frames`` frames every ``time_downsample`` frames, at
    ``frame_size`` pixels (``video.clip_starts``)."""

    frame_size: int
    clip_frames: int
    time_downsample: int

    @property
    def span(self) -> int:
        return self.clip_frames * self.time_downsample

    @property
    def nbytes(self) -> int:
        return self.clip_frames * self.frame_size**2 * 3


def draw(name: str, index: int) -> float:
    """A number in [0, 1) fixed by a clip's play and index: the same hold-out on every machine."""
    return int(hashlib.sha256(f"{name}:{index}".encode()).hexdigest()[:12], 16) / 16**12


@contextlib.contextmanager
def ray_session() -> Iterator[None]:
    """Ray as it is (a sweep's driver or task), or a local instance for this prepare only
    (dashboard off), shut down after it."""
    if ray.is_initialized():
        yield
        return
    ctx = ray.init(address="local", include_dashboard=False, log_to_driver=True, configure_logging=False)
    reaper.watch(os.getpid(), ctx.address_info["session_dir"])  # a killed prepare leaves no Ray behind
    try:
        yield
    finally:
        ray.shutdown()


def _context() -> None:
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # the seed fixes the order of the clips
    ctx.target_max_block_size = BLOCK_BYTES
    ctx.execution_options.resource_limits = ctx.execution_options.resource_limits.copy(
        object_store_memory=OBJECT_STORE_BUDGET
    )
    logger = logging.getLogger("ray.data")
    logger.setLevel(logging.ERROR)  # not "progress bars disabled"
    ctx.enable_progress_bars = False  # prepare logs its own progress, not one line per stream
    logger.setLevel(logging.WARNING)


def _frames(row: dict[str, Any], size: int) -> Iterator[np.ndarray]:
    """A play's 60 Hz frames in pieces: read from its frame store where it has one (stimulus
    plays), else regenerated from its bk2, resized while replaying."""
    if row["frames"]:
        stored = video.FrameStore(row["frames"]).open(row["name"])
        return (stored[i : i + 1024] for i in range(0, len(stored), 1024))
    # 64 native frames at a time: the resize's float copy stays ~50 MB at 224x320
    return (p.frames for p in gameplay.iter_replay(row["bk2"], row["game"], size=size, chunk=64))


def _play_clips(row: dict[str, Any], clips: Clips) -> Iterator[dict[str, Any]]:
    """The clips of one play, each with its :func:`draw`."""
    frames = _frames(row, clips.frame_size)
    for i, clip in enumerate(video.iter_clips(frames, clips.clip_frames, clips.time_downsample)):
        yield {"name": row["name"], "index": i, "draw": draw(row["name"], i), "clip": clip}


def clip_stream(plays: list[dict[str, Any]], clips: Clips) -> ray.data.Dataset:
    """Clips of ``plays`` ({name, bk2, game, frames: a frame store or ""} each) in play order,
    one block per play: a lazy stream, replayed each time it is read."""
    _context()
    ds = ray.data.from_items([{k: str(p.get(k) or "") for k in ("name", "bk2", "game", "frames")} for p in plays],
                             override_num_blocks=max(1, len(plays)))
    return ds.flat_map(_play_clips, fn_kwargs={"clips": clips}, num_cpus=1)


def training_clips(plays: list[dict[str, Any]], clips: Clips, cache_bytes: int, log: Log = print) -> ray.data.Dataset:
    """The clips of the training plays: streamed from their bk2 at every read, or, when they
    fit in ``cache_bytes``, replayed once and kept in Ray's object store (a small dataset such
    as the demo would otherwise replay its plays once per epoch)."""
    n = n_clips(plays, clips)
    ds = clip_stream(plays, clips)
    if n * clips.nbytes > cache_bytes:
        log(f"[tokenizer] {n} training clips ({n * clips.nbytes / 2**30:.2f} GiB) stream from their bk2 at every epoch")
        return ds
    log(f"[tokenizer] {n} training clips ({n * clips.nbytes / 2**20:.0f} MiB, within tokenizer.cache_mb) "
        "are replayed once and kept in Ray's object store")
    return ds.materialize()


def _between(ds: ray.data.Dataset, lo: float, hi: float) -> ray.data.Dataset:
    """The clips whose draw is in [lo, hi)."""
    return ds.filter(expr=(col("draw") >= lo) & (col("draw") < hi))


def n_clips(plays: list[dict[str, Any]], clips: Clips) -> int:
    """Clips that the plays (with their ``n_frames``) hold."""
    return sum(int(p["n_frames"]) // clips.span for p in plays)


def _gpus() -> int:
    return int(ray.cluster_resources().get("GPU", 0)) if ray.is_initialized() else 0


# ----------------------------------------------------------------------------- training


def train_tokenizer(
    base: ray.data.Dataset, n_clips: int, clips: Clips, config: vqvae.VQVAEConfig, steps: int, batch_size: int,
    seed: int, checkpoint: Path, log: Log = print, holdout: int = 256,
) -> tuple[vqvae.VQVAE, dict[str, Any], np.ndarray]:
    """Train the VQ-VAE on the ``n_clips`` clips of ``base`` (:func:`training_clips`).

    Where the cluster has GPUs it trains in a Ray task that holds one, so it never trains on a
    CPU-only head; otherwise here. About ``holdout`` clips (at most a tenth, by :func:`draw`)
    are held out and give the metrics of :func:`vqvae.train_vqvae`. ``checkpoint`` is written
    every 10 % of the steps; an existing one (same config, batch and seed) is resumed.

    Returns the model (eval mode, on the CPU), its metrics and up to 4 held-out clips.
    """
    if n_clips == 0:
        raise ValueError(f"the training plays hold no clip of {clips.span} frames; the VQ-VAE has nothing to learn from.")
    gpus = _gpus()
    args = (base, n_clips, clips, config, steps, batch_size, seed, str(checkpoint), log, holdout)
    if not gpus:
        return _train(*args)
    log(f"[tokenizer] training on a GPU worker ({gpus} GPU(s) in the cluster)")
    return ray.get(ray.remote(num_gpus=1, num_cpus=1)(_train).remote(*args))


def _train(
    base: ray.data.Dataset, n: int, clips: Clips, config: vqvae.VQVAEConfig, steps: int, batch_size: int,
    seed: int, checkpoint: str, log: Log, holdout: int,
) -> tuple[vqvae.VQVAE, dict[str, Any], np.ndarray]:
    t0 = time.perf_counter()
    dev = pick_device("auto")
    held = min(0.1, holdout / n)  # clips with draw < held are held out
    node = ray.get_runtime_context().get_node_id()[:12]
    log(f"[tokenizer] training the VQ-VAE on {n} clips of {clips.span} frames for {steps} steps on {dev.type} "
        f"(node {node})")
    state = _load_checkpoint(Path(checkpoint), config, batch_size, seed, steps)
    torch.manual_seed(seed)
    sample = _between(base, held, held + (1 - held) * min(1.0, STATS_CLIPS / n))
    stats = vqvae.frame_stats(b["clip"] for b in sample.iter_batches(batch_size=64, batch_format="numpy"))
    model, optimizer = vqvae.start_training(config, stats, dev)
    first, position = 1, {"epoch": 0, "batch": 0}
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        first, position = state["step"] + 1, {"epoch": state["epoch"], "batch": state["batch"]}
        log(f"[tokenizer] resuming from {checkpoint} at step {state['step']}/{steps}")
    train = _between(base, held, 1.0)

    def batches() -> Iterator[np.ndarray]:
        while True:  # an epoch: the plays in a seeded order, through a seeded shuffle buffer
            epoch = position["epoch"]
            stream = train.randomize_block_order(seed=seed * 100_003 + epoch).iter_batches(
                batch_size=batch_size, batch_format="numpy", drop_last=True,
                local_shuffle_buffer_size=max(4 * batch_size, SHUFFLE_BYTES // clips.nbytes),
                local_shuffle_seed=seed * 100_003 + epoch,
            )
            for k, batch in enumerate(stream):
                if k >= position["batch"]:  # earlier ones were consumed before the checkpoint
                    position["batch"] = k + 1
                    yield batch["clip"]
            if position["batch"] == 0:
                raise ValueError(f"the training plays hold fewer than {batch_size} clips (one batch).")
            position["epoch"], position["batch"] = epoch + 1, 0

    every = max(1, round(steps / 10))

    def after_step(step: int) -> None:
        if step % every == 0 and step < steps:
            _save_checkpoint(Path(checkpoint), model, optimizer, config, batch_size, seed, step, position)

    def progress(step: int, m: dict) -> None:
        log(f"[tokenizer] step {step}/{steps} " + " ".join(f"{k}={v:.3g}" for k, v in m.items()))

    vqvae.fit_steps(model, optimizer, batches(), first, steps, progress, after_step)
    model.eval()
    evaluated = _collect(_between(base, 0.0, held))
    heldout = len(evaluated) > 0
    if not heldout:  # too few clips to hold any out: measure on (up to 1024) training clips
        evaluated = _collect(train, limit=1024)
    metrics = vqvae.evaluate(model, evaluated, batch_size=max(batch_size, 16))
    metrics.update(eval_clips=len(evaluated), heldout=heldout, steps=steps, wall_s=time.perf_counter() - t0)
    return model.cpu(), metrics, evaluated[:: max(1, len(evaluated) // 4)][:4]


def _collect(ds: ray.data.Dataset, limit: int | None = None) -> np.ndarray:
    """The clips of a (small) stream in one array."""
    out: list[np.ndarray] = []
    for batch in ds.iter_batches(batch_size=64, batch_format="numpy"):
        out.append(batch["clip"])
        if limit is not None and sum(map(len, out)) >= limit:
            break
    return np.concatenate(out)[:limit] if out else np.empty((0,))


def _save_checkpoint(
    path: Path, model: vqvae.VQVAE, optimizer: torch.optim.Optimizer, config: vqvae.VQVAEConfig,
    batch_size: int, seed: int, step: int, position: dict[str, int],
) -> None:
    """Everything a resumed training needs, to a temp name then renamed: never half written."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({
        "config": dataclasses.asdict(config), "batch_size": batch_size, "seed": seed, "step": step,
        "epoch": position["epoch"], "batch": position["batch"], "model": model.state_dict(),
        "optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
    }, tmp)
    tmp.replace(path)


def _load_checkpoint(path: Path, config: vqvae.VQVAEConfig, batch_size: int, seed: int, steps: int) -> dict | None:
    """The checkpoint at ``path`` if it belongs to this training, else None."""
    if not path.is_file():
        return None
    try:
        state = vqvae.read_checkpoint(path)
    except vqvae.CorruptCheckpointError:
        return None  # a damaged checkpoint is started over, not trusted
    same = (state.get("config") == dataclasses.asdict(config) and state.get("batch_size") == batch_size
            and state.get("seed") == seed and state.get("step", steps) < steps)
    return state if same else None


# ----------------------------------------------------------------------------- tokens


_CODERS: dict[str, vqvae.VQVAE] = {}  # per worker process: the model is read once


def _code(batch: dict[str, np.ndarray], path: str) -> dict[str, np.ndarray]:
    """Codes of a batch of clips (the clips are dropped: only the codes travel on)."""
    if path not in _CODERS:
        _CODERS[path] = vqvae.load_vqvae(path, device=str(pick_device("auto")))
    clips = np.require(batch["clip"], requirements="W")  # Ray's batches are read-only; torch wants to own them
    return {"name": batch["name"], "index": batch["index"], "codes": vqvae.tokenize(_CODERS[path], clips)}


class _GPUCoder:
    """A tokenizer actor that holds its GPU and its model."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return _code(batch, self.path)


def write_tokens(
    ds: ray.data.Dataset, plays: list[dict[str, Any]], model_path: Path, save: Callable[[str, np.ndarray], None],
    latent_shape: tuple[int, int, int], log: Log = print,
) -> None:
    """Code every clip of ``ds`` (the clips of ``plays``, in play order) with the VQ-VAE at
    ``model_path``; ``save(name, codes)`` once per play, as soon as its last clip is coded (a
    play without a clip gets an empty array)."""
    t0 = time.perf_counter()
    gpus = _gpus()
    if gpus:
        ds = ds.map_batches(_GPUCoder, fn_constructor_kwargs={"path": str(model_path)}, batch_size=_CODE_BATCH,
                            num_gpus=1, concurrency=min(gpus, 8), batch_format="numpy")
    else:  # a block per call: Ray Data fuses it into a replay task where it follows one directly (not a union)
        ds = ds.map_batches(_code, fn_kwargs={"path": str(model_path)}, batch_size=None, num_cpus=1,
                            batch_format="numpy")
    where = f"{min(gpus, 8)} GPU actor(s)" if gpus else "CPU tasks"
    log(f"[tokenizer] tokenizing {len(plays)} plays on {where}")
    pending: dict[str, list[np.ndarray]] = {}
    saved: set[str] = set()

    def flush(name: str) -> None:
        parts = pending.pop(name, [])
        save(name, np.concatenate(parts) if parts else np.empty((0, *latent_shape), np.int16))
        saved.add(name)

    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for name in dict.fromkeys(batch["name"]):  # in order: a play's clips are contiguous
            for other in [n for n in pending if n != name]:
                flush(other)
            pending.setdefault(name, []).append(batch["codes"][batch["name"] == name].astype(np.int16))
    for name in list(pending):
        flush(name)
    for p in plays:  # plays shorter than a clip
        if p["name"] not in saved:
            flush(p["name"])
    log(f"[tokenizer] tokenized {len(plays)} plays in {time.perf_counter() - t0:.0f} s")
