"""The prepare stage: gameplay -> frames -> simulated brain -> VQ-VAE tokens, once per dataset.

Everything lands in one folder keyed by the hash of the data and tokenizer settings, with a
``dataset.json`` manifest. A folder whose manifest exists is complete (it is written last)
and is read, not rebuilt. Trials only read from it.

The embedded default dataset is honest about what it is: real emulator frames of plays
recorded as ``.bk2`` and replayed exactly as for CNeuroMod, and a simulated brain whose
noise ceiling is known (``brainray.simbrain``).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brainray import gameplay, simbrain, video, vqvae
from brainray.config import DataSpec, SweepSpec, TokenizerSpec

__all__ = ["Dataset", "prepare", "load_dataset", "MANIFEST"]

MANIFEST = "dataset.json"
FPS = 60.0
Log = Callable[[str], None]
MapFn = Callable[[Callable, Iterable], list]


@dataclass
class Dataset:
    """A prepared dataset on storage: manifest plus lazy access to its arrays."""

    root: Path
    manifest: dict[str, Any]

    def replays(self, split: str) -> list[dict[str, Any]]:
        return [r for r in self.manifest["replays"] if r["split"] == split]

    @property
    def train_frames(self) -> int:
        return sum(r["n_frames"] for r in self.replays("train"))

    def tokens(self, name: str) -> np.ndarray:
        """Codes of the clips of one replay: (n_clips, T', H', W') int16."""
        return np.load(self.root / "tokens" / f"{name}.npy", mmap_mode="r")

    def subject(self, subject: str) -> simbrain.SubjectData:
        return simbrain.SubjectData.load(self.root / "brain" / subject)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return tuple(self.manifest["tokenizer"]["latent_shape"])

    @property
    def clip_span(self) -> int:
        """Raw 60 Hz frames spanned by one clip."""
        tk = self.manifest["tokenizer"]
        return tk["clip_frames"] * tk["time_downsample"]


def load_dataset(root: str | Path) -> Dataset:
    root = Path(root)
    path = root / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: the prepare stage has not finished for {root}.")
    return Dataset(root, json.loads(path.read_text()))


def _record(args: tuple[str, int, int, str, str, int]) -> dict[str, Any]:
    """Record one play, replay it from its bk2, resize and store the frames (one task)."""
    root, seed, n_frames, game, policy, size = args
    root_p = Path(root)
    name = f"play-{seed:04d}"
    bk2 = gameplay.record_play(root_p / "replays" / f"{name}.bk2", n_frames, seed=seed, game=game, policy=policy)
    rep = gameplay.replay(bk2, size=size)  # resized while replaying: native frames are never all held
    frames = rep.frames
    video.FrameStore(root_p / "frames").write(name, frames)
    np.savez(root_p / "actions" / f"{name}.npz", actions=rep.actions, rewards=rep.rewards)
    return {"name": name, "n_frames": int(len(frames)), "bk2": f"replays/{name}.bk2"}


def prepare(
    spec: SweepSpec, root: str | Path, map_fn: MapFn | None = None, log: Log = print
) -> Dataset:
    """Build (or read) the dataset of ``spec`` under ``root``; returns it.

    map_fn: a parallel ``map`` (the sweep passes one backed by Ray tasks); plain ``map``
    by default.
    """
    root = Path(root)
    if (root / MANIFEST).exists():
        log(f"[prepare] cached dataset {root}")
        return load_dataset(root)
    map_fn = map_fn or (lambda f, xs: list(map(f, xs)))
    for sub in ("replays", "frames", "actions", "tokens", "brain"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    d, tk = spec.data, spec.tokenizer
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    replays = _gameplay(d, root, map_fn, log)
    timings["gameplay_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    runs = _runs(d, replays)
    _brain(d, root, runs, log)
    timings["brain_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    tok = _tokenize(tk, d, root, replays, log)
    timings["tokenizer_s"] = time.perf_counter() - t0

    manifest = {
        "version": 1,
        "source": "simulated",
        "game": d.game,
        "frame_size": d.frame_size,
        "fps": FPS,
        "tr": d.tr,
        "data": dataclasses.asdict(d),
        "tokenizer": tok,
        "replays": replays,
        "runs": runs,
        "subjects": list(simbrain.SUBJECTS[: d.n_subjects]),
        "timings": timings,
    }
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.rename(root / MANIFEST)  # written last: its presence marks a complete dataset
    log(
        f"[prepare] done in {sum(timings.values()):.0f} s "
        + " ".join(f"{k}={v:.0f}s" for k, v in timings.items())
    )
    return load_dataset(root)


def _gameplay(d: DataSpec, root: Path, map_fn: MapFn, log: Log) -> list[dict[str, Any]]:
    """Record plays until each split has its frames; a play may end early (game over)."""
    run_frames = int(round(d.run_vols * d.tr * FPS))
    want = {
        "train": d.train_replays * d.replay_frames,
        "val": d.val_replays * d.replay_frames,
        "stim": d.n_runs * run_frames,
    }
    seed = d.seed * 10_000
    out: list[dict[str, Any]] = []
    for split, target in want.items():
        got, rounds, per_play = 0, 0, d.replay_frames
        while got < target:
            n = max(1, -(-(target - got) // per_play))  # a play ends early at game over
            jobs = [(str(root), seed + i, d.replay_frames, d.game, d.policy, d.frame_size) for i in range(n)]
            seed += n
            t0 = time.perf_counter()
            done = map_fn(_record, jobs)
            for r in done:
                r["split"] = split
            got += sum(r["n_frames"] for r in done)
            out.extend(done)
            played = [r["n_frames"] for r in out if r["split"] == split]
            per_play = max(1, int(np.mean(played)))
            rounds += 1
            log(
                f"[gameplay] {split}: {len(done)} plays recorded and replayed, {got}/{target} frames "
                f"({time.perf_counter() - t0:.0f} s)"
            )
            if rounds > 20:
                raise RuntimeError(f"gameplay: could not record {target} {split} frames of {d.game} in 20 rounds")
    return out


def _runs(d: DataSpec, replays: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Place stimulus plays back to back on runs of ``run_vols`` volumes."""
    run_s = d.run_vols * d.tr
    stim = [r for r in replays if r["split"] == "stim"]
    runs, i = [], 0
    for k in range(d.n_runs):
        segments, t = [], 0.0
        while i < len(stim) and t < run_s - 1.0:
            dur = stim[i]["n_frames"] / FPS
            keep = min(stim[i]["n_frames"], int((run_s - t) * FPS))
            segments.append({"replay": stim[i]["name"], "onset": t, "n_frames": keep})
            t += dur
            i += 1
        runs.append({"run": f"run-{k + 1:02d}", "n_vols": d.run_vols, "segments": segments})
    return runs


def _run_stimulus(root: Path, run: dict[str, Any], n_vols: int, tr: float) -> simbrain.RunStimulus:
    """The 60 Hz stimulus of one run: its plays at their onsets, a blank screen between."""
    store = video.FrameStore(root / "frames")
    frames, actions, rewards = [], [], []
    for seg in run["segments"]:
        act = np.load(root / "actions" / f"{seg['replay']}.npz")
        frames.append(np.asarray(store.open(seg["replay"])[: seg["n_frames"]]))
        actions.append(act["actions"][: seg["n_frames"]])
        rewards.append(act["rewards"][: seg["n_frames"]])
    return simbrain.RunStimulus(
        frames=frames, actions=actions, rewards=rewards, fps=FPS,
        onsets=[seg["onset"] for seg in run["segments"]], duration=n_vols * tr,
    )


def _brain(d: DataSpec, root: Path, runs: list[dict[str, Any]], log: Log) -> None:
    stimuli = [_run_stimulus(root, r, d.run_vols, d.tr) for r in runs]
    config = simbrain.SimBrainConfig(n_parcels=d.n_parcels, tr=d.tr, seed=d.seed)
    for subject in simbrain.SUBJECTS[: d.n_subjects]:
        data = simbrain.simulate_subject(stimuli, subject, config)
        data.save(root / "brain" / subject)
        log(
            f"[brain] {subject}: {len(runs)} runs x {d.run_vols} volumes x {d.n_parcels} parcels, "
            f"mean noise ceiling r={float(np.mean(data.ceiling)):.3f}"
        )


def _tokenize(tk: TokenizerSpec, d: DataSpec, root: Path, replays: list[dict[str, Any]], log: Log) -> dict:
    """Train the VQ-VAE once on clips of the training plays, then tokenize every play."""
    store = video.FrameStore(root / "frames")
    config = vqvae.VQVAEConfig(
        clip_frames=tk.clip_frames,
        frame_size=d.frame_size,
        downsample=tuple(tk.downsample),
        n_hiddens=tk.n_hiddens,
        n_res_layers=tk.n_res_layers,
        n_codes=tk.n_codes,
        embedding_dim=tk.embedding_dim,
    )
    span = tk.clip_frames * tk.time_downsample

    def clips_of(name: str) -> np.ndarray:
        frames = store.open(name)
        starts = video.clip_starts(len(frames), tk.clip_frames, tk.time_downsample)
        return video.get_clips(frames, starts, tk.clip_frames, tk.time_downsample)

    train = np.concatenate([clips_of(r["name"]) for r in replays if r["split"] == "train"])
    log(f"[tokenizer] training VQ-VAE on {len(train)} clips of {span} frames for {tk.steps} steps")

    def progress(step: int, m: dict) -> None:
        log(f"[tokenizer] step {step}/{tk.steps} " + " ".join(f"{k}={v:.3g}" for k, v in m.items()))

    model, metrics = vqvae.train_vqvae(
        train, config, steps=tk.steps, batch_size=tk.batch_size, seed=d.seed, progress=progress
    )
    vqvae.save_vqvae(model, root / "vqvae.pt")
    vqvae.save_reconstructions_png(model, train[:: max(1, len(train) // 4)][:4], root / "reconstructions.png")
    for r in replays:
        np.save(root / "tokens" / f"{r['name']}.npy", vqvae.tokenize(model, clips_of(r["name"])))
    log(
        f"[tokenizer] PSNR {metrics['psnr']:.1f} dB, perplexity {metrics['perplexity']:.1f} "
        f"of {tk.n_codes} codes, {metrics['dead_codes']} dead; tokenized {len(replays)} plays"
    )
    return {
        **dataclasses.asdict(tk),
        "latent_shape": list(config.latent_shape),
        "tokens_per_clip": int(config.tokens_per_clip),
        "metrics": {k: float(v) for k, v in metrics.items()},
    }
