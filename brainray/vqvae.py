"""VQ-VAE video tokenizer, after VideoGPT (Yan et al. 2021, arXiv 2104.10157).

A clip of T frames (B, 3, T, H, W) in [-0.5, 0.5] goes through strided Conv3d layers
(kernel 4, stride 2 per halving of each axis), residual blocks, a 1x1x1 conv to the code
dimension, and a codebook with EMA updates, commitment loss and dead-code restarts. The
decoder mirrors it with ConvTranspose3d. The paper's tokenizer: 16x128x128 -> 4x8x8
codes, 1024 codes of 128 dims, 240 hidden channels, 4 residual blocks.

Difference from VideoGPT, on purpose: residual blocks are BN-ReLU-Conv3d without axial
attention, which costs little quality at these sizes and keeps the CPU demo fast.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "VQVAEConfig",
    "Codebook",
    "VQVAE",
    "preprocess",
    "train_vqvae",
    "tokenize",
    "save_vqvae",
    "load_vqvae",
    "save_reconstructions_png",
    "pick_device",
]


@dataclass
class VQVAEConfig:
    clip_frames: int = 16
    frame_size: int = 128
    downsample: tuple[int, int, int] = (4, 16, 16)  # (T, H, W) factors, powers of 2
    n_hiddens: int = 240
    n_res_layers: int = 4
    n_codes: int = 1024
    embedding_dim: int = 128
    ema_decay: float = 0.99
    commitment: float = 0.25
    lr: float = 3e-4

    def __post_init__(self):
        self.downsample = tuple(int(f) for f in self.downsample)
        if len(self.downsample) != 3:
            raise ValueError(f"'downsample' must have 3 factors (T, H, W); got {self.downsample}.")
        for axis, f, size in zip("THW", self.downsample, (self.clip_frames, self.frame_size, self.frame_size)):
            if f < 1 or f & (f - 1):
                raise ValueError(f"'downsample' factor for {axis} must be a power of 2; got {f}.")
            if size % f:
                raise ValueError(f"'downsample' factor {f} for {axis} does not divide the clip size {size}.")
        for name in ("n_hiddens", "n_codes", "embedding_dim", "clip_frames", "frame_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"'{name}' must be >= 1; got {getattr(self, name)}.")
        if not 0 < self.ema_decay < 1:
            raise ValueError(f"'ema_decay' must be in (0, 1); got {self.ema_decay}.")

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        t, h, w = self.downsample
        return self.clip_frames // t, self.frame_size // h, self.frame_size // w

    @property
    def tokens_per_clip(self) -> int:
        return int(np.prod(self.latent_shape))


class ResBlock(nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.BatchNorm3d(n), nn.ReLU(), nn.Conv3d(n, n // 2, 3, padding=1, bias=False),
            nn.BatchNorm3d(n // 2), nn.ReLU(), nn.Conv3d(n // 2, n, 1, bias=False),
        )

    def forward(self, x):
        return x + self.block(x)


def _halvings(factors: tuple[int, int, int]) -> list[tuple[int, int, int]]:
    """Per-layer strides: one stride-2 conv per halving of each axis (VideoGPT)."""
    n = [int(math.log2(f)) for f in factors]
    return [tuple(2 if i < k else 1 for k in n) for i in range(max(n))]


class Encoder(nn.Module):
    def __init__(self, c: VQVAEConfig):
        super().__init__()
        layers, ch = [], 3
        for stride in _halvings(c.downsample):
            kernel = tuple(4 if s == 2 else 3 for s in stride)
            layers += [nn.Conv3d(ch, c.n_hiddens, kernel, stride=stride, padding=1), nn.ReLU()]
            ch = c.n_hiddens
        if not layers:  # no downsampling at all
            layers = [nn.Conv3d(3, c.n_hiddens, 3, padding=1), nn.ReLU()]
        self.down = nn.Sequential(*layers[:-1])  # no ReLU before the residual stack
        self.res = nn.Sequential(*[ResBlock(c.n_hiddens) for _ in range(c.n_res_layers)],
                                 nn.BatchNorm3d(c.n_hiddens), nn.ReLU())

    def forward(self, x):
        return self.res(self.down(x))


class Decoder(nn.Module):
    def __init__(self, c: VQVAEConfig):
        super().__init__()
        self.res = nn.Sequential(*[ResBlock(c.n_hiddens) for _ in range(c.n_res_layers)],
                                 nn.BatchNorm3d(c.n_hiddens), nn.ReLU())
        strides = _halvings(c.downsample)
        layers = []
        for i, stride in enumerate(strides):
            last = i == len(strides) - 1
            kernel = tuple(4 if s == 2 else 3 for s in stride)
            layers.append(nn.ConvTranspose3d(c.n_hiddens, 3 if last else c.n_hiddens, kernel, stride=stride, padding=1))
            if not last:
                layers.append(nn.ReLU())
        if not layers:
            layers = [nn.Conv3d(c.n_hiddens, 3, 3, padding=1)]
        self.up = nn.Sequential(*layers)

    def forward(self, z):
        return self.up(self.res(z))


class Codebook(nn.Module):
    """Nearest-neighbour codebook with EMA updates and dead-code restarts (VideoGPT)."""

    def __init__(self, n_codes: int, dim: int, decay: float = 0.99):
        super().__init__()
        self.n_codes, self.dim, self.decay = n_codes, dim, decay
        self.register_buffer("embeddings", torch.randn(n_codes, dim))
        self.register_buffer("N", torch.zeros(n_codes))
        self.register_buffer("z_avg", self.embeddings.clone())
        self.register_buffer("initialized", torch.tensor(False))

    def _init_from(self, flat: torch.Tensor) -> None:
        """First batch: codes start at random encoder outputs, so none start dead."""
        picked = flat[torch.randint(0, len(flat), (self.n_codes,), device=flat.device)]
        self.embeddings.copy_(picked)
        self.z_avg.copy_(picked)
        self.N.fill_(1.0)
        self.initialized.fill_(True)

    def codes_of(self, flat: torch.Tensor) -> torch.Tensor:
        dist = (flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.embeddings.t()
                + self.embeddings.pow(2).sum(1)[None])  # (n, K)
        return dist.argmin(1)

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        B, C, T, H, W = z.shape
        flat = z.permute(0, 2, 3, 4, 1).reshape(-1, C)  # (B*T*H*W, C)
        if self.training and not bool(self.initialized):
            self._init_from(flat.detach())
        codes = self.codes_of(flat)
        onehot = F.one_hot(codes, self.n_codes).type(flat.dtype)  # (n, K)
        if self.training:
            with torch.no_grad():
                n = onehot.sum(0)
                self.N.mul_(self.decay).add_(n, alpha=1 - self.decay)
                self.z_avg.mul_(self.decay).add_(onehot.t() @ flat.detach(), alpha=1 - self.decay)
                total = self.N.sum()
                weights = (self.N + 1e-7) / (total + self.n_codes * 1e-7) * total  # Laplace smoothing
                self.embeddings.copy_(self.z_avg / weights[:, None])
                dead = self.N < 1.0  # restart codes no longer used from random encoder outputs
                if dead.any():
                    picked = flat.detach()[torch.randint(0, len(flat), (int(dead.sum()),), device=flat.device)]
                    self.embeddings[dead] = picked
                    self.z_avg[dead] = picked
                    self.N[dead] = 1.0
        q = self.embeddings[codes]
        commitment = F.mse_loss(flat, q.detach())
        q = flat + (q - flat).detach()  # straight-through estimator
        probs = onehot.mean(0)
        perplexity = torch.exp(-(probs * torch.log(probs + 1e-10)).sum())
        return {
            "q": q.reshape(B, T, H, W, C).permute(0, 4, 1, 2, 3),
            "codes": codes.reshape(B, T, H, W),
            "commitment_loss": commitment,
            "perplexity": perplexity,
        }


class VQVAE(nn.Module):
    def __init__(self, config: VQVAEConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.pre_vq = nn.Conv3d(config.n_hiddens, config.embedding_dim, 1)
        self.codebook = Codebook(config.n_codes, config.embedding_dim, config.ema_decay)
        self.post_vq = nn.Conv3d(config.embedding_dim, config.n_hiddens, 1)
        self.decoder = Decoder(config)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: (B, 3, T, H, W) in [-0.5, 0.5]."""
        vq = self.codebook(self.pre_vq(self.encoder(x)))
        recon = self.decoder(self.post_vq(vq["q"]))
        return {
            "recon": recon,
            "recon_loss": F.mse_loss(recon, x) / 0.06,  # VideoGPT's scaling
            "commitment_loss": vq["commitment_loss"],
            "perplexity": vq["perplexity"],
            "codes": vq["codes"],
        }

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) -> codes (B, T', H', W')."""
        z = self.pre_vq(self.encoder(x))  # (B, D, T', H', W')
        B, D, T, H, W = z.shape
        return self.codebook.codes_of(z.permute(0, 2, 3, 4, 1).reshape(-1, D)).reshape(B, T, H, W)

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, T', H', W') -> (B, D, T', H', W')."""
        return self.codebook.embeddings[codes].permute(0, 4, 1, 2, 3)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_vq(self.embed(codes)))


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def preprocess(clips) -> torch.Tensor:
    """(B, T, H, W, 3) uint8 -> (B, 3, T, H, W) float in [-0.5, 0.5]."""
    x = torch.as_tensor(np.asarray(clips)) if not isinstance(clips, torch.Tensor) else clips
    if x.dtype != torch.uint8 or x.dim() != 5 or x.shape[-1] != 3:
        raise ValueError(f"clips must be uint8 of shape (B, T, H, W, 3); got {tuple(x.shape)} {x.dtype}.")
    return x.permute(0, 4, 1, 2, 3).float() / 255.0 - 0.5


def train_vqvae(
    clips: np.ndarray,
    config: VQVAEConfig,
    steps: int,
    batch_size: int = 16,
    seed: int = 0,
    device: str = "auto",
    progress: Callable[[int, dict], None] | None = None,
) -> tuple[VQVAE, dict]:
    """Train on random batches of ``clips`` (n, T, H, W, 3) uint8; returns (model in eval mode, metrics).

    Metrics: ``psnr`` (dB, on up to 256 clips held out from training when there are
    enough, else on training clips), ``perplexity`` and ``dead_codes`` (codes never used
    when tokenizing those clips), ``recon_mse``, ``steps``, ``wall_s``.
    """
    if clips.ndim != 5 or clips.shape[1:] != (config.clip_frames, config.frame_size, config.frame_size, 3):
        raise ValueError(
            f"clips have shape {clips.shape}; the config expects (n, {config.clip_frames}, "
            f"{config.frame_size}, {config.frame_size}, 3)."
        )
    dev = pick_device(device)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    n_hold = min(256, len(clips) // 10)
    order = rng.permutation(len(clips))
    held, train = order[:n_hold], order[n_hold:]
    model = VQVAE(config).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    t0 = time.perf_counter()
    model.train()
    for step in range(1, steps + 1):
        idx = np.sort(rng.choice(train, size=min(batch_size, len(train)), replace=False))
        x = preprocess(clips[idx]).to(dev)
        out = model(x)
        loss = out["recon_loss"] + config.commitment * out["commitment_loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if progress and (step % max(1, steps // 10) == 0 or step == steps):
            progress(step, {"recon_loss": out["recon_loss"].item(), "perplexity": out["perplexity"].item()})
    model.eval()
    metrics = evaluate(model, clips[np.sort(held)] if n_hold else clips[: min(256, len(clips))], dev)
    metrics.update(steps=steps, wall_s=time.perf_counter() - t0)
    return model, metrics


@torch.no_grad()
def evaluate(model: VQVAE, clips: np.ndarray, device: torch.device) -> dict:
    """PSNR of reconstructions, codebook perplexity and dead codes on ``clips``."""
    se, n, counts = 0.0, 0, torch.zeros(model.config.n_codes)
    for b in range(0, len(clips), 32):
        x = preprocess(clips[b : b + 32]).to(device)
        codes = model.encode(x)
        recon = model.decode(codes).clamp(-0.5, 0.5)
        se += float(((recon - x) ** 2).sum())
        n += x.numel()
        counts += torch.bincount(codes.flatten().cpu(), minlength=model.config.n_codes).float()
    mse = se / n
    probs = counts / counts.sum()
    perplexity = float(torch.exp(-(probs * torch.log(probs + 1e-10)).sum()))
    return {"psnr": 10 * math.log10(1.0 / max(mse, 1e-12)), "recon_mse": mse,
            "perplexity": perplexity, "dead_codes": int((counts == 0).sum())}


@torch.no_grad()
def tokenize(model: VQVAE, clips: np.ndarray, batch_size: int = 64, device: str = "auto") -> np.ndarray:
    """(n, T, H, W, 3) uint8 -> codes (n, T', H', W') int16."""
    dev = pick_device(device)
    model = model.to(dev).eval()
    out = [model.encode(preprocess(clips[b : b + batch_size]).to(dev)).cpu()
           for b in range(0, len(clips), batch_size)]
    if not out:
        return np.zeros((0, *model.config.latent_shape), np.int16)
    return torch.cat(out).numpy().astype(np.int16)


def save_vqvae(model: VQVAE, path: str | Path) -> None:
    """State dict and config in one file that ``torch.load(weights_only=True)`` can read."""
    cfg = asdict(model.config)
    cfg["downsample"] = list(cfg["downsample"])
    torch.save({"config": cfg, "state_dict": model.state_dict()}, path)


def load_vqvae(path: str | Path, device: str = "cpu") -> VQVAE:
    blob = torch.load(path, map_location=device, weights_only=True)
    model = VQVAE(VQVAEConfig(**blob["config"]))
    model.load_state_dict(blob["state_dict"])
    return model.to(device).eval()


def save_reconstructions_png(model: VQVAE, clips: np.ndarray, path: str | Path, n: int = 4) -> None:
    """A grid: for each of ``n`` clips, its frames (top) above their reconstruction (bottom)."""
    from PIL import Image

    clips = np.asarray(clips[:n])
    dev = next(model.parameters()).device
    with torch.no_grad():
        x = preprocess(clips).to(dev)
        recon = ((model.decode(model.encode(x)).clamp(-0.5, 0.5) + 0.5) * 255).round().byte()
    recon = recon.permute(0, 2, 3, 4, 1).cpu().numpy()  # (n, T, H, W, 3)
    rows = []
    for orig, rec in zip(clips, recon):
        rows += [np.concatenate(list(orig), axis=1), np.concatenate(list(rec), axis=1)]
    img = np.concatenate(rows, axis=0)
    scale = max(1, 256 // clips.shape[2])
    Image.fromarray(img).resize((img.shape[1] * scale, img.shape[0] * scale), Image.NEAREST).save(path)
