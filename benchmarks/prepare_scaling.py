"""Does the streaming prepare scale? The same small spec at 1x, 4x and 16x the training frames.

Each size runs ``brainray.prepare.prepare`` in a fresh process (its own local Ray instance), at
64x64 frames, with ``tokenizer.cache_mb: 0`` so that the training clips stream from their bk2 at
every epoch (the path the paper preset takes) and the same VQ-VAE steps. A sampler reads
``/proc/<pid>/smaps_rollup`` of that process and of every process under it (Ray's GCS, raylet,
workers, object store) every 0.25 s and keeps the peak of their summed PSS: shared pages, the
object store included, are counted once. It records the wall time, the peak memory and the disk
of the prepared dataset, and fits the growth: memory and disk against the added training frames,
and the wall-time exponent.

    python benchmarks/prepare_scaling.py              # ~10 min on 2 cores
    python benchmarks/prepare_scaling.py --scales 1 4

Writes ``results/benchmarks/prepare_scaling.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "results" / "benchmarks"
PLAY = 1800  # raw frames per training play at 1x: about one scripted Airstriker game

SPEC = {
    "name": "prepare-scaling",
    "data": {"frame_size": 64, "train_replays": 2, "replay_frames": PLAY, "val_replays": 1, "n_subjects": 1,
             "n_runs": 3, "run_vols": 30, "n_parcels": 16},
    "tokenizer": {"clip_frames": 8, "time_downsample": 4, "downsample": [4, 8, 8], "n_hiddens": 16, "n_codes": 64,
                  "embedding_dim": 16, "steps": 100, "batch_size": 16, "lr": 0.001, "cache_mb": 0},
    "axes": {"design": "lines", "cross": False,
             "reference": {"data_frames": PLAY, "n_embd": 16, "n_layer": 1, "n_head": 1, "dtype": "fp32", "seed": 0},
             "data_frames": [PLAY], "n_embd": [16], "n_layer": [1], "n_head": [1], "dtype": ["fp32"]},
}

_CHILD = """
import json, sys, time, torch
torch.set_num_threads(1)
from brainray.config import load_spec
from brainray.prepare import prepare
spec = load_spec(sys.argv[1])
t0 = time.perf_counter()
ds = prepare(spec, sys.argv[2], log=lambda m: print(m, flush=True))
print("RESULT " + json.dumps({"wall_s": time.perf_counter() - t0, "train_frames": ds.train_frames,
                              "timings": ds.manifest["timings"], "psnr": ds.manifest["tokenizer"]["metrics"]["psnr"]}))
"""


def _tree(root: int) -> list[int]:
    """``root`` and every process under it (by parent pid)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _pss(pids: list[int]) -> dict[str, int]:
    """PSS bytes per process kind (its command name, e.g. ``raylet``, ``ray::IDLE``)."""
    out: dict[str, int] = {}
    for pid in pids:
        try:
            name = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            name = Path(name).name if not name.startswith("ray::") else name.split("(")[0][:40]
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    out[name] = out.get(name, 0) + int(line.split()[1]) * 1024
                    break
        except OSError:
            continue  # ended meanwhile
    return out


def _stage(line: str) -> str:
    """A log line's stage: its bracketed prefix and first word, e.g. ``[tokenizer] step``."""
    words = line.split()
    return " ".join(words[:2]) if words and words[0].startswith("[") else "start"


def _du(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def run_scale(scale: int, work: Path) -> dict:
    spec = json.loads(json.dumps(SPEC))
    spec["data"]["train_replays"] = 2 * scale
    root = work / f"x{scale}"
    path = work / f"x{scale}.yaml"
    path.write_text(json.dumps(spec))  # JSON is YAML
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(path), str(root)], stdout=subprocess.PIPE,
                            text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    lines: list[str] = []
    peak: dict = {"total": 0}
    stages: dict[str, dict] = {}  # the peak of each stage, so that a growth can be placed

    def sample() -> None:
        while proc.poll() is None:
            parts = _pss(_tree(proc.pid))
            total, during = sum(parts.values()), lines[-1] if lines else ""
            if total > peak["total"]:
                peak.update(total=total, by_process=parts, during=during)
            stage = _stage(during)
            if total > stages.get(stage, {}).get("total", 0):
                stages[stage] = {"total": total, "by_process": parts}
            time.sleep(0.25)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    for line in proc.stdout:
        lines.append(line.rstrip())
    proc.wait()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"prepare at {scale}x failed:\n" + "\n".join(lines[-30:]))
    result = json.loads(next(line for line in lines if line.startswith("RESULT "))[7:])
    disk = {sub.name: _du(sub) for sub in root.iterdir() if sub.is_dir()}
    return {"scale": scale, **result, "peak_pss_bytes": peak["total"], "peak_by_process": peak["by_process"],
            "peak_during": peak["during"], "stage_peaks": stages, "disk_bytes": _du(root), "disk_by_folder": disk}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--report-only", action="store_true", help="rewrite the report from the last JSON")
    args = ap.parse_args()
    if args.report_only:
        write_report(json.loads((OUT / "prepare_scaling.json").read_text())["rows"])
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="prepare-scaling-") as tmp:
        for scale in args.scales:
            rows.append(run_scale(scale, Path(tmp)))
            r = rows[-1]
            print(f"{scale:>3}x: {r['train_frames']} training frames, {r['wall_s']:.0f} s, peak PSS "
                  f"{r['peak_pss_bytes'] / 2**20:.0f} MiB, disk {r['disk_bytes'] / 2**20:.1f} MiB", flush=True)
    write_report(rows)


def write_report(rows: list[dict]) -> None:
    """The JSON and the Markdown table of measured rows (``--report-only`` rewrites them from the JSON)."""
    first, last = rows[0], rows[-1]
    added = last["train_frames"] - first["train_frames"]
    frames = np.array([r["train_frames"] for r in rows], float)
    exponent = float(np.polyfit(np.log(frames), np.log([r["wall_s"] for r in rows]), 1)[0])
    def training_disk(r: dict) -> int:  # the stimulus runs' frames do not depend on the training frames
        return r["disk_bytes"] - r["disk_by_folder"].get("frames", 0)

    summary = {
        "memory_growth_bytes": last["peak_pss_bytes"] - first["peak_pss_bytes"],
        "disk_bytes_per_added_frame": (last["disk_bytes"] - first["disk_bytes"]) / added if added else None,
        "disk_bytes_per_added_frame_without_stimulus": (training_disk(last) - training_disk(first)) / added
        if added else None,
        "wall_exponent": exponent,
    }
    meta = {"when": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": platform.machine(),
            "cpus": os.cpu_count(), "spec": SPEC}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "prepare_scaling.json").write_text(json.dumps({**meta, "rows": rows, "summary": summary}, indent=1))
    lines = [
        "# Prepare scaling: the streaming prepare at 1x, 4x and 16x the training frames", "",
        f"`python benchmarks/prepare_scaling.py`, {meta['when']}, {meta['machine']}, {meta['cpus']} CPUs. The same "
        "small spec at 64x64 frames; only `data.train_replays` changes. `tokenizer.cache_mb: 0`: the training "
        "clips stream from their bk2 at every epoch; 100 VQ-VAE steps at every size. Peak memory: the summed PSS "
        "of the prepare process and every process under it (Ray's GCS, raylet, workers, object store).", "",
        "| scale | training frames | wall s | gameplay s | tokenizer s | peak PSS MiB | disk MiB | tokens KiB | replays KiB | frames MiB | PSNR dB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        d = r["disk_by_folder"]
        lines.append(
            f"| {r['scale']}x | {r['train_frames']} | {r['wall_s']:.0f} | {r['timings']['gameplay_s']:.0f} | "
            f"{r['timings']['tokenizer_s']:.0f} | {r['peak_pss_bytes'] / 2**20:.0f} | {r['disk_bytes'] / 2**20:.2f} | "
            f"{d.get('tokens', 0) / 2**10:.0f} | {d.get('replays', 0) / 2**10:.0f} | {d.get('frames', 0) / 2**20:.2f} | "
            f"{r['psnr']:.1f} |"
        )
    lines += [
        "", f"- Peak memory grows by {summary['memory_growth_bytes'] / 2**20:.0f} MiB from {first['scale']}x to "
        f"{last['scale']}x (criterion: at most 150 MB).",
        f"- Disk grows by {summary['disk_bytes_per_added_frame']:.1f} bytes per added training frame (criterion: at "
        f"most 64), {summary['disk_bytes_per_added_frame_without_stimulus']:.1f} without the stimulus runs' frames: "
        "a training frame costs its bk2 and its tokens; only the stimulus keeps frames. (The stimulus plays are "
        "recorded after the training plays, with the next seeds, so their lengths, hence their frames, differ "
        "a little from size to size.)",
        *(f"- Peak at {r['scale']}x, during `{r.get('peak_during', '')[:70]}`: "
          + ", ".join(f"{k} {v / 2**20:.0f}" for k, v in sorted(r.get("peak_by_process", {}).items(),
                                                             key=lambda kv: -kv[1])[:4]) + " MiB"
          for r in rows),
        f"- Wall time grows as frames^{exponent:.2f}. The VQ-VAE's steps are the same at every size, so its "
        "training is a fixed cost; recording, replaying and tokenizing grow with the frames.",
    ]
    (OUT / "prepare_scaling.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
