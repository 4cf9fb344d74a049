"""Does the streamed VQ-VAE learn as well as the in-memory one? The demo's tokenizer, both ways.

Takes a prepared dataset (default: the demo's, prepared with ``--prepare-only`` or by a demo run),
whose ``vqvae.pt`` was trained from the stream (``brainray.stream``). It regenerates the same
training clips from their bk2 into memory and trains ``brainray.vqvae.train_vqvae`` on them with
the same config, steps, batch size and seed. Both models are scored on the same held-out clips
(the stream's: ``stream.draw < held``), which the in-memory model never trains on either.

    python sweeps/scaling.py --prepare-only            # the demo's dataset, if it is not there yet
    python benchmarks/tokenizer_parity.py [results/demo/data/<hash>]

Writes ``results/benchmarks/tokenizer_parity.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from brainray import gameplay, stream, video, vqvae  # noqa: E402
from brainray.config import load_spec  # noqa: E402
from brainray.dataset import load_dataset  # noqa: E402

OUT = REPO / "results" / "benchmarks"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    spec = load_spec("demo")
    ap.add_argument("dataset", nargs="?", default=str(REPO / "results" / "demo" / "data" / spec.data_key()))
    root = Path(ap.parse_args().dataset)
    ds = load_dataset(root)
    tk, size = ds.manifest["tokenizer"], ds.manifest["frame_size"]
    span = tk["clip_frames"] * tk["time_downsample"]
    streamed = vqvae.load_vqvae(root / "vqvae.pt")
    t0 = time.perf_counter()
    names, clips = [], []
    for r in ds.replays("train"):
        frames = gameplay.replay(root / r["bk2"], ds.manifest["game"], size=size).frames
        c = video.get_clips(frames, video.clip_starts(len(frames), tk["clip_frames"], tk["time_downsample"]),
                            tk["clip_frames"], tk["time_downsample"])
        clips.append(c)
        names += [(r["name"], i) for i in range(len(c))]
    clips = np.concatenate(clips)
    held = min(0.1, 256 / len(clips))  # as brainray.stream holds out
    is_held = np.array([stream.draw(n, i) < held for n, i in names])
    print(f"{len(clips)} training clips of {span} frames regenerated in {time.perf_counter() - t0:.0f} s; "
          f"{is_held.sum()} held out", flush=True)
    t0 = time.perf_counter()
    memory, _ = vqvae.train_vqvae(clips[~is_held], streamed.config, steps=tk["steps"], batch_size=tk["batch_size"],
                                  seed=ds.manifest["data"]["seed"], holdout=0)
    train_s = time.perf_counter() - t0
    scores = {name: vqvae.evaluate(model, clips[is_held], batch_size=64)
              for name, model in (("stream", streamed), ("in_memory", memory))}
    gap = scores["stream"]["psnr"] - scores["in_memory"]["psnr"]
    meta = {"when": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": platform.machine(),
            "dataset": str(root), "steps": tk["steps"], "batch_size": tk["batch_size"], "held_out_clips": int(is_held.sum()),
            "train_clips": int((~is_held).sum()), "in_memory_train_s": train_s}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "tokenizer_parity.json").write_text(json.dumps({**meta, "scores": scores, "psnr_gap_db": gap}, indent=1))
    rows = ["| metric | streamed (prepare) | in memory |", "|---|---|---|"]
    for k in ("psnr", "psnr_baseline", "psnr_foreground", "psnr_foreground_baseline", "perplexity", "dead_codes"):
        rows.append(f"| {k} | {scores['stream'][k]:.2f} | {scores['in_memory'][k]:.2f} |")
    text = "\n".join([
        "# Tokenizer parity: the streamed VQ-VAE against the in-memory one", "",
        f"`python benchmarks/tokenizer_parity.py`, {meta['when']}, {meta['machine']}. The demo's tokenizer "
        f"({tk['steps']} steps, batch {tk['batch_size']}) trained by the prepare from the stream, and the same "
        f"config trained in memory on the same {meta['train_clips']} clips; both scored on the same "
        f"{meta['held_out_clips']} held-out clips.", "", *rows, "",
        f"PSNR gap (streamed − in memory): {gap:+.2f} dB (criterion: within 0.3 dB).",
    ])
    (OUT / "tokenizer_parity.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
