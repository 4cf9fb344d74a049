"""The GPT-2 prior over VQ-VAE codes, and exact accounting of what it costs.

The model is ``transformers.GPT2LMHeadModel`` built from a config (never downloaded).
A sample is ``[previous clip codes, next clip codes]`` flattened in (t, h, w) order;
the loss is on the next clip only, so logits are computed only for the positions that
predict it (half the lm-head cost). ``train_flops_per_token`` counts exactly that.

References: FLOPs per token follow Kaplan et al. 2020 (Table 1) with the attention term
counted dense, as ``torch.utils.flop_counter.FlopCounterMode`` counts it (see
shared/reference/scaling-laws.md, section 3.4 and 9.2); the MFU convention follows
nanoGPT's ``estimate_mfu`` (PaLM appendix B).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel

__all__ = [
    "GPTSpec",
    "build_model",
    "count_params",
    "train_flops_per_token",
    "next_clip_loss",
    "feature_layer",
    "clip_features",
    "peak_flops",
    "autocast_dtype",
    "autocast",
    "build_optimizer",
    "train_step",
]


@dataclass(frozen=True)
class GPTSpec:
    """Architecture of one trial's model: the sweep axes plus what the tokenizer fixes."""

    n_embd: int
    n_layer: int
    n_head: int
    vocab_size: int  # = codebook size of the VQ-VAE
    tokens_per_clip: int  # T' * H' * W'
    dropout: float = 0.1

    @property
    def n_ctx(self) -> int:
        return 2 * self.tokens_per_clip  # [previous clip, next clip]

    def __post_init__(self):
        for name in ("n_embd", "n_layer", "n_head", "vocab_size", "tokens_per_clip"):
            if getattr(self, name) < 1:
                raise ValueError(f"'{name}' must be >= 1; got {getattr(self, name)}.")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"n_head={self.n_head} does not divide n_embd={self.n_embd}; "
                "pick heads that divide the width."
            )


def build_model(spec: GPTSpec) -> GPT2LMHeadModel:
    """A randomly initialised GPT-2 with PyTorch's fused attention where available."""
    config = GPT2Config(
        vocab_size=spec.vocab_size,
        n_positions=spec.n_ctx,
        n_embd=spec.n_embd,
        n_layer=spec.n_layer,
        n_head=spec.n_head,
        resid_pdrop=spec.dropout,
        embd_pdrop=spec.dropout,
        attn_pdrop=spec.dropout,
        bos_token_id=None,
        eos_token_id=None,
    )
    config._attn_implementation = "sdpa"  # fused attention (flash/mem-efficient on CUDA)
    return GPT2LMHeadModel(config)


def count_params(model: GPT2LMHeadModel) -> tuple[int, int]:
    """(total, non-embedding) parameter counts.

    Non-embedding leaves out the token and position embeddings (the lm head is tied to
    the token embedding), as Kaplan et al. do for N.
    """
    total = sum(p.numel() for p in model.parameters())
    emb = model.transformer.wte.weight.numel() + model.transformer.wpe.weight.numel()
    return total, total - emb


def train_flops_per_token(
    n_layer: int, n_embd: int, vocab_size: int, n_ctx: int, n_logits: int | None = None
) -> float:
    """Exact matmul FLOPs of one training step (forward + backward), per context token.

    Per sequence of ``n_ctx`` tokens the forward pass costs

    - ``24 * n_ctx * d^2`` per block (QKV 6d^2, projection 2d^2, MLP 16d^2),
    - ``4 * n_ctx^2 * d`` per block for the attention scores and the weighted sum
      (dense, as the flop counter and the fused kernels count it, no causal halving),
    - ``2 * n_logits * d * V`` for the lm head, on the ``n_logits`` positions that get
      logits (all of them for plain ``GPT2LMHeadModel``; half for brainray's trial).

    Backward costs twice the forward. Element-wise work (softmax, GELU, LayerNorm,
    the optimiser) is left out, as in ``FlopCounterMode`` and the analytic literature.
    """
    n_logits = n_ctx if n_logits is None else n_logits
    d = n_embd
    forward = n_layer * (24 * n_ctx * d * d + 4 * n_ctx * n_ctx * d) + 2 * n_logits * d * vocab_size
    return 3.0 * forward / n_ctx


def next_clip_loss(model: GPT2LMHeadModel, seq: torch.Tensor, tokens_per_clip: int) -> torch.Tensor:
    """Cross-entropy of the next clip given the previous one.

    seq: (B, 2T) codes ``[prev, next]``. Position ``i`` predicts token ``i + 1``, so the
    T logits needed are those of positions T-1 .. 2T-2; only those go through the head.
    """
    T = tokens_per_clip
    hidden = model.transformer(input_ids=seq).last_hidden_state  # (B, 2T, C)
    logits = model.lm_head(hidden[:, T - 1 : 2 * T - 1])  # (B, T, V)
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), seq[:, T:].reshape(-1))


def build_optimizer(model: GPT2LMHeadModel, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with decay on the weight matrices only (nanoGPT's ``configure_optimizers``),
    betas (0.9, 0.95); the fused kernel on CUDA (one launch per step instead of several
    per parameter tensor)."""
    params = list(model.parameters())
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), fused=params[0].is_cuda)


def train_step(model: GPT2LMHeadModel, optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, seq: torch.Tensor, tokens_per_clip: int,
               amp_dtype: torch.dtype | None, grad_clip: float) -> float:
    """One optimiser step on ``seq`` (B, 2T): autocast forward, scaled backward, gradient
    clipping, step. Returns the loss; a non-finite loss returns before anything is updated.

    Reading the loss is the step's only host sync, taken right after the forward pass so
    the check costs no second wait at the end of the step.
    """
    with autocast(seq.device.type, amp_dtype):
        loss = next_clip_loss(model, seq, tokens_per_clip)
    value = loss.item()
    if not math.isfinite(value):
        return value
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return value


def feature_layer(n_layer: int, relative_depth: float = 5 / 8) -> int:
    """Index into ``hidden_states`` of the block nearest ``relative_depth`` of the depth.

    ``hidden_states[0]`` is the embedding output, ``hidden_states[k]`` the output of block k;
    the paper probes block 5 of 8 (5/8), and 1.0 means the last block.
    """
    if not 0 < relative_depth <= 1:
        raise ValueError(f"'feature_depth' must be in (0, 1]; got {relative_depth}.")
    return min(n_layer, max(1, round(relative_depth * n_layer)))


@torch.no_grad()
def clip_features(
    model: GPT2LMHeadModel, seq: torch.Tensor, latent_shape: tuple[int, int, int], layer: int
) -> torch.Tensor:
    """Hidden state of block ``layer`` at the next-clip positions, pooled over space.

    seq: (B, 2T) codes. Returns (B, T', C): one feature vector per latent time step.
    """
    out = model.transformer(input_ids=seq, output_hidden_states=True)
    return pool_next_clip(out.hidden_states[layer], latent_shape)


def pool_next_clip(hidden: torch.Tensor, latent_shape: tuple[int, int, int]) -> torch.Tensor:
    """(B, 2T, C) activations -> (B, T', C): the next clip's positions, averaged over space."""
    t, h, w = latent_shape
    nxt = hidden[:, t * h * w :]
    return nxt.reshape(nxt.size(0), t, h * w, -1).float().mean(dim=2)


# Dense peak throughput per device and dtype, in FLOP/s (vendor datasheets, no sparsity).
# fp32 on Ampere/Hopper assumes TF32 matmuls, which the trial enables on CUDA.
_PEAK_FLOPS = {
    "H200": {"bf16": 989e12, "fp16": 989e12, "fp32": 495e12},
    "H100": {"bf16": 989e12, "fp16": 989e12, "fp32": 495e12},
    "A100": {"bf16": 312e12, "fp16": 312e12, "fp32": 156e12},
    "L40S": {"bf16": 362e12, "fp16": 362e12, "fp32": 183e12},
    "A10": {"bf16": 125e12, "fp16": 125e12, "fp32": 62.5e12},
    "V100": {"bf16": None, "fp16": 125e12, "fp32": 15.7e12},
    "T4": {"bf16": None, "fp16": 65e12, "fp32": 8.1e12},
}


def peak_flops(device: torch.device, dtype: str) -> float | None:
    """Datasheet peak for this device and dtype, or None where unknown (CPUs)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device).upper()
    for key, peaks in _PEAK_FLOPS.items():
        if key in name:
            return peaks.get(dtype)
    return None


_AUTOCAST = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def autocast_dtype(dtype: str) -> torch.dtype | None:
    """The autocast dtype of a sweep dtype name (None means plain fp32)."""
    if dtype not in _AUTOCAST:
        raise ValueError(f"'dtype' must be one of {sorted(_AUTOCAST)}; got {dtype!r}.")
    return _AUTOCAST[dtype]


def autocast(device_type: str, amp_dtype: torch.dtype | None) -> torch.autocast:
    """The autocast context of a trial's dtype (``autocast_dtype``); off for fp32."""
    return torch.autocast(device_type, dtype=amp_dtype, enabled=amp_dtype is not None)

