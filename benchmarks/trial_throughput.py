"""Training throughput of the trial's GPT-2 step: tokens/s and MFU per (width, dtype).

    python benchmarks/trial_throughput.py                 # CPU-sized grid
    python benchmarks/trial_throughput.py --paper         # reference model d=576 L=8 H=4, ctx 512 (GPU)
    python benchmarks/trial_throughput.py --compile       # also torch.compile

Times exactly what a trial runs per step (``gpt.train_step``: forward, the loss read back,
scaled backward, clip, AdamW step, under the trial's optimiser, autocast/GradScaler and
TF32 settings) after warm-up steps, and
writes ``results/benchmarks/trial_throughput.json``. FLOPs are ``train_flops_per_token``
(checked against FlopCounterMode in tests/test_gpt.py); MFU uses the datasheet peak of
``gpt.peak_flops`` and is empty where the peak is unknown (CPUs).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from brainray import cost, gpt
from brainray.devices import pick_device, use_tf32

OUT = Path(__file__).resolve().parent.parent / "results" / "benchmarks" / "trial_throughput.json"


def measure(d: int, L: int, H: int, dtype: str, V: int, T: int, batch: int, steps: int,
            device: torch.device, compile_: bool) -> dict:
    torch.manual_seed(0)
    spec = gpt.GPTSpec(d, L, H, V, T, dropout=0.0)
    model = gpt.build_model(spec).to(device)
    opt = gpt.build_optimizer(model, lr=1e-4, weight_decay=0.1)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == "fp16")
    amp = gpt.autocast_dtype(dtype)
    if compile_:  # the transformer body (all but the head and the loss), as a child module
        model.transformer = torch.compile(model.transformer)
    seq = torch.randint(0, V, (batch, 2 * T), device=device)

    def step():
        gpt.train_step(model, opt, scaler, seq, T, amp, grad_clip=1.0)

    for _ in range(3 if not compile_ else 10):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    tokens_per_s = steps * batch * 2 * T / dt
    fpt = gpt.train_flops_per_token(L, d, V, 2 * T, n_logits=T)
    peak = gpt.peak_flops(device, dtype)
    return {
        "n_embd": d, "n_layer": L, "n_head": H, "dtype": dtype, "compile": compile_, "vocab_size": V,
        "n_ctx": 2 * T, "batch_size": batch, "params": gpt.count_params(model)[0],
        "tokens_per_s": tokens_per_s, "tflops_per_s": fpt * tokens_per_s / 1e12,
        "mfu": fpt * tokens_per_s / peak if peak else None, "step_ms": 1e3 * dt / steps,
    }


def throughput_laws(rows: list[dict]) -> dict[str, dict]:
    """Per dtype, the dry run's step-time law (``brainray.cost.fit_throughput``) fitted to the rows."""
    laws = {}
    for dtype in dict.fromkeys(r["dtype"] for r in rows):
        mine = [r for r in rows if r["dtype"] == dtype and not r["compile"]]
        step_s = np.array([r["step_ms"] / 1e3 for r in mine])
        step_flops = np.array([r["tflops_per_s"] * 1e12 for r in mine]) * step_s
        if len(mine) >= 2:
            laws[dtype] = dataclasses.asdict(cost.fit_throughput(step_flops, step_s))
    return laws


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--paper", action="store_true", help="reference model d=576 L=8 H=4, 256 tokens per clip")
    ap.add_argument("--compile", action="store_true", help="also measure torch.compile")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (a trial uses train.threads)")
    ap.add_argument("--out-suffix", default="", help="added to the output file's name")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = pick_device()
    use_tf32(device)
    if args.paper:
        configs, V, T, batch = [(576, 8, 4), (128, 8, 4)], 1024, 256, 64
    else:
        configs, V, T, batch = [(16, 2, 2), (48, 2, 2), (96, 2, 2), (192, 4, 4)], 128, 32, 32
    dtypes = ["fp32", "bf16", "fp16"]
    steps = args.steps or (20 if device.type == "cuda" else 10)
    rows = []
    for d, L, H in configs:
        for dtype in dtypes:
            for comp in ([False, True] if args.compile else [False]):
                r = measure(d, L, H, dtype, V, T, batch, steps, device, comp)
                rows.append(r)
                mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
                print(f"d={d:4d} L={L} {dtype} compile={comp}: {r['tokens_per_s']:,.0f} tok/s "
                      f"{r['tflops_per_s']:.3f} TFLOP/s MFU {mfu}")
    for d, L, H in configs:
        base = next(r for r in rows if r["n_embd"] == d and r["dtype"] == "fp32" and not r["compile"])
        for r in rows:
            if r["n_embd"] == d:
                r["speedup_vs_fp32"] = r["tokens_per_s"] / base["tokens_per_s"]
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    result = {
        "device": device_name, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "rows": rows, "throughput_law": throughput_laws(rows),
    }
    for dtype, law in result["throughput_law"].items():
        print(f"{dtype}: step = {law['floor_s'] * 1e3:.2f} ms + FLOPs / {law['flops_per_s'] / 1e12:.3g} TFLOP/s "
              "(the --dry-run law, brainray.cost)")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    out = OUT.with_name(OUT.stem + ("_paper" if args.paper else "") + args.out_suffix
                        + f"_{device.type}.json")
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
