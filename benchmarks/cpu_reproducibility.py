"""Is the demo's tokenizer bit-reproducible across CPUs? Which CPU kernel dispatch changes its bits?

Two fresh prepares of the demo on two machines gave tokenizers that differ in the last bits
(PSNR 32.56 and 32.6 dB), and the models trained on their tokens then ranked differently on
the simulated brain (``brain_sensitivity.md``). A prepare trains the VQ-VAE in a one-CPU Ray
task, so the thread count is the same everywhere; what differs between x86 machines is which
instruction set each library dispatches to: ATen's own kernels (``ATEN_CPU_CAPABILITY``),
oneDNN's convolutions (``ONEDNN_MAX_CPU_ISA``) and MKL's matrix products (``MKL_CBWR``).

Each setting trains the demo's VQ-VAE config for a few steps on the same synthetic clips and
seed, on one thread unless it says 2, in a fresh process, and hashes the weights. Within one machine a setting
that changes the hash is a dispatch that changes the bits. Across machines, the same hash for
the same setting means that setting reproduces there: compare this file's table with the one
committed from another machine.

    python benchmarks/cpu_reproducibility.py            # ~2 min on 2 cores

Writes ``results/benchmarks/cpu_reproducibility.json`` and ``.md``.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "results" / "benchmarks"
STEPS = 40
#: name -> environment of the process; "pinned" holds every library to AVX2 (any x86 CPU since 2013).
SETTINGS = {
    "default": {},
    "ATen AVX2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "oneDNN AVX2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
    "MKL AVX2": {"MKL_CBWR": "AVX2"},
    "pinned (all AVX2)": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"},
    # the driver's thread count: a prepare run in-process (family_probe) trains the VQ-VAE on 2 threads
    "default, 2 threads": {"BRAINRAY_BENCH_THREADS": "2"},
}


def _train_and_hash() -> dict:
    """In this process: the demo's VQ-VAE trained on fixed synthetic clips; its weights' hash."""
    import numpy as np
    import torch

    sys.path.insert(0, str(REPO))
    from brainray import vqvae
    from brainray.config import load_spec

    torch.set_num_threads(int(os.environ.get("BRAINRAY_BENCH_THREADS", "1")))  # 1: the prepare's one-CPU Ray task
    spec = load_spec("demo")
    tk, size = spec.tokenizer, spec.data.frame_size
    rng = np.random.default_rng(0)
    background = rng.integers(0, 255, size=(1, 1, size, size, 3))
    clips = np.clip(background + rng.integers(-20, 20, size=(64, tk.clip_frames, size, size, 3)), 0, 255)
    config = vqvae.VQVAEConfig(clip_frames=tk.clip_frames, frame_size=size, downsample=tuple(tk.downsample),
                               n_hiddens=tk.n_hiddens, n_res_layers=tk.n_res_layers, n_codes=tk.n_codes,
                               embedding_dim=tk.embedding_dim, lr=tk.lr)
    t0 = time.perf_counter()
    model, metrics = vqvae.train_vqvae(clips.astype(np.uint8), config, steps=STEPS, batch_size=8, seed=0,
                                       device="cpu", holdout=0)
    wall = time.perf_counter() - t0
    weights = b"".join(p.detach().cpu().numpy().tobytes() for p in model.state_dict().values())
    return {"hash": hashlib.sha256(weights).hexdigest()[:16], "psnr": metrics["psnr"], "wall_s": wall,
            "aten_capability": torch.backends.cpu.get_cpu_capability()}


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    rows = {}
    for name, env in SETTINGS.items():
        threads = env.get("BRAINRAY_BENCH_THREADS", "1")
        out = subprocess.run([sys.executable, __file__, "--child"], env={**os.environ, "OMP_NUM_THREADS": threads, **env},
                             capture_output=True, text=True, timeout=900)
        if out.returncode:
            raise RuntimeError(f"setting {name!r} failed:\n{out.stderr[-3000:]}")
        rows[name] = {**json.loads(out.stdout.strip().splitlines()[-1]), "env": env}
        print(f"[cpu] {name}: {rows[name]}", flush=True)
    again = json.loads(subprocess.run([sys.executable, __file__, "--child"], env={**os.environ, "OMP_NUM_THREADS": "1"},
                                      capture_output=True, text=True, timeout=900, check=True).stdout.splitlines()[-1])
    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else []
    res = {
        "when": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "cpu": _cpu_model(),
        "isa": sorted({f for f in flags if f in ("avx2", "avx512f", "amx_bf16", "amx_tile")}),
        "cpus": os.cpu_count(), "steps": STEPS, "settings": rows,
        "default_repeats": again["hash"] == rows["default"]["hash"],
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "cpu_reproducibility.json").write_text(json.dumps(res, indent=1))
    base = rows["default"]
    lines = [
        "# CPU reproducibility of the tokenizer", "",
        f"`python benchmarks/cpu_reproducibility.py`, {res['when']}, {res['cpu']} ({', '.join(res['isa'])}), "
        f"{res['cpus']} CPUs. The demo's VQ-VAE, {STEPS} steps on fixed synthetic clips, seed 0, one thread unless "
        "the setting says 2, "
        f"one fresh process per setting. The default run again in a new process gives "
        f"{'the same' if res['default_repeats'] else 'a **different**'} hash.", "",
        "| setting | ATen kernels | weights hash | same as default | PSNR dB | wall s (× default) |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['aten_capability']} | `{r['hash']}` | {'yes' if r['hash'] == base['hash'] else 'no'} "
                     f"| {r['psnr']:.6f} | {r['wall_s']:.1f} ({r['wall_s'] / base['wall_s']:.2f}×) |")
    lines += ["", "A setting whose hash differs from the default is a dispatch that changes the bits on this CPU. "
              "Another machine reproduces this one for a setting when its hash for that setting is the same."]
    (OUT / "cpu_reproducibility.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    if sys.argv[1:] == ["--child"]:
        print(json.dumps(_train_and_hash()))
    else:
        main()
