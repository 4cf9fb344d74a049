"""What does emulating a stimulus play once save?

A stimulus play is recorded as a bk2 and its resized frames and native-screen game state are
stored. Until stop 32 the prepare replayed the bk2 for them, a second emulator pass;
``gameplay.record_replay`` takes them from the recording pass instead (bit for bit the replay's,
``tests/test_gameplay.py``). This times both ways on the same plays, alternating, in one process:

- ``record + replay``: ``record_play`` then ``replay(size=..., observe=gamestate.Tracker())``;
- ``record_replay``: one pass.

and checks that both give the same frames, buttons, rewards and state.

    python benchmarks/stimulus_pass.py            # ~1 min on one core
    python benchmarks/stimulus_pass.py --plays 6 --frames 2000

Writes ``results/benchmarks/stimulus_pass.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from brainray import gameplay, gamestate

OUT = Path(__file__).resolve().parents[1] / "results" / "benchmarks"


def measure(plays: int, frames: int, size: int) -> dict:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(plays):
            t0 = time.perf_counter()
            bk2 = gameplay.record_play(Path(tmp) / f"a{seed}.bk2", frames, seed=seed)
            two = gameplay.replay(bk2, size=size, observe=gamestate.Tracker())
            t_two = time.perf_counter() - t0
            t0 = time.perf_counter()
            one = gameplay.record_replay(Path(tmp) / f"b{seed}.bk2", frames, seed=seed, size=size,
                                         observe=gamestate.Tracker())
            t_one = time.perf_counter() - t0
            same = all(np.array_equal(getattr(one, f), getattr(two, f)) for f in ("frames", "actions", "rewards", "observed"))
            rows.append({"seed": seed, "frames": len(one), "record_and_replay_s": t_two, "record_replay_s": t_one,
                         "identical": same})
            print(f"[stimulus_pass] play {seed}: {len(one)} frames, two passes {t_two:.2f} s, one {t_one:.2f} s, "
                  f"identical {same}", flush=True)
    n = sum(r["frames"] for r in rows)
    two, one = sum(r["record_and_replay_s"] for r in rows), sum(r["record_replay_s"] for r in rows)
    return {"rows": rows, "frames": n, "two_passes_ms_per_frame": 1e3 * two / n, "one_pass_ms_per_frame": 1e3 * one / n,
            "ratio": one / two, "identical": all(r["identical"] for r in rows)}


def _md(res: dict, meta: dict) -> str:
    return "\n".join([
        "# One emulator pass per stimulus play", "",
        f"`python benchmarks/stimulus_pass.py --plays {meta['plays']} --frames {meta['frames']}`, {meta['date']}, "
        f"{meta['machine']}, one process. {res['frames']} frames of the scripted Airstriker agent, resized to "
        f"{meta['size']}×{meta['size']} with the game state read from the native screens.", "",
        "| way | ms per frame |", "|---|---|",
        f"| record_play, then replay | {res['two_passes_ms_per_frame']:.2f} |",
        f"| record_replay (one pass) | {res['one_pass_ms_per_frame']:.2f} |", "",
        f"One pass takes **{res['ratio']:.2f}×** the time of two; frames, buttons, rewards and state identical: "
        f"{res['identical']}.", "",
    ])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plays", type=int, default=4)
    ap.add_argument("--frames", type=int, default=1500)
    ap.add_argument("--size", type=int, default=32)
    args = ap.parse_args()
    res = measure(args.plays, args.frames, args.size)
    meta = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": platform.machine(),
            "plays": args.plays, "frames": args.frames, "size": args.size}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "stimulus_pass.json").write_text(json.dumps({"meta": meta, **res}, indent=1) + "\n")
    (OUT / "stimulus_pass.md").write_text(_md(res, meta))
    print((OUT / "stimulus_pass.md").read_text())


if __name__ == "__main__":
    main()
