"""VQ-VAE tokenizer: video clips -> a grid of discrete codes (VideoGPT, Yan et al. 2021).

Fourth stage of the data flow (see DESIGN.md): the VQ-VAE is trained once on clips of
the training plays, frozen, and every clip is tokenized once; the GPTs of the trials
only see its codes.

A compact, faithful version of VideoGPT's ``videogpt/vqvae.py``
(https://github.com/wilson1yan/VideoGPT), with the settings of the paper's trained
checkpoint (Ahmadi et al. 2024, reference section 2a):

- input clips (B, 3, T, H, W) scaled to [-0.5, 0.5]; the paper uses 16 x 128 x 128;
- encoder: ``log2(factor)`` "same"-padded Conv3d layers of kernel 4 and stride 2 per
  axis (axes that are done downsampling take stride 1; paper (4, 16, 16): strides
  (2,2,2), (2,2,2), (1,2,2), (1,2,2)), a kernel-3 Conv3d, ``n_res_layers`` residual
  blocks, BN-ReLU;
- pre-VQ 1x1x1 conv to ``embedding_dim``; a codebook of ``n_codes`` vectors learned by
  EMA (decay 0.99) with dead-code restarts from random encoder outputs, and a
  commitment loss 0.25 * ||z - sg(e)||^2; straight-through gradients;
- post-VQ 1x1x1 conv, the mirrored decoder (residual blocks, BN-ReLU, ConvTranspose3d of
  kernel 4 and stride 2);
- loss = MSE(recon, x) / 0.06 + commitment, Adam (lr 3e-4 in the paper's fork).

The residual block is VideoGPT's ``AttentionResidualBlock``: BN-ReLU-Conv3d(3^3, n -> n/2)
-BN-ReLU-Conv3d(1^3, n/2 -> n)-BN-ReLU-axial attention (2 heads, summed over the T, H and
W axes). With ``axial_attention=False`` the branch stops after the 1^3 conv (a plain
bottleneck residual block). With the paper's settings the model has 35.8M parameters
(encoder 18.7M, decoder 17.1M), as the paper's README reports.

Two small departures from VideoGPT, neither of which changes the maths: the codebook's
"initialised" flag is a buffer, so a loaded model does not re-initialise its codebook
when training goes on; and :meth:`VQVAE.encode` only looks codes up, so tokenizing never
moves the codebook (VideoGPT's ``encode`` updates it when the model is in train mode).

Measured on a shared 2-core CPU, one thread (torch 2.13): the demo config (8 x 32 x 32
clips -> 2 x 4 x 4 codes, n_hiddens 32, 1 residual block, 128 codes of 32 dims, 358K
parameters) takes 0.1-0.2 s per step of batch 16, so 300 steps take 35-60 s; axial
attention adds under 10% here. Convolution backward dominates.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from brainray.devices import pick_device

__all__ = [
    "Codebook",
    "VQVAE",
    "VQVAEConfig",
    "CorruptCheckpointError",
    "load_vqvae",
    "preprocess",
    "read_checkpoint",
    "save_reconstructions_png",
    "save_vqvae",
    "tokenize",
    "train_vqvae",
]

RECON_LOSS_SCALE = 0.06  # VideoGPT divides the pixel MSE by 0.06 (about the data variance)
#: A pixel is foreground where a channel differs from the training mean frame by more than
#: this (in [0, 1] units, about 25 of 255): the sprites, not the static screen.
FOREGROUND = 0.1
_FORMAT = "brainray.vqvae/1"


# -----------------------------------------------------------------------------
# settings


@dataclass
class VQVAEConfig:
    """Settings of the VQ-VAE. The defaults are the paper's trained checkpoint.

    Parameters
    ----------
    clip_frames : int, default=16
        Frames per clip, T.
    frame_size : int, default=128
        Height and width of the (square) frames, H = W.
    downsample : tuple of 3 int, default=(4, 16, 16)
        Downsampling factors along (T, H, W); each a power of 2 that divides its axis.
        The latent grid is ``(T / d_t, H / d_h, W / d_w)``.
    n_hiddens : int, default=240
        Channels of the encoder and decoder (even: the residual bottleneck halves it).
    n_res_layers : int, default=4
        Residual blocks in the encoder and again in the decoder.
    n_codes : int, default=1024
        Codebook size, the GPT's vocabulary (at most 32768: tokens are stored as int16).
    embedding_dim : int, default=128
        Dimension of a code vector.
    ema_decay : float, default=0.99
        Decay of the EMA codebook update, in (0, 1).
    commitment : float, default=0.25
        Weight beta of the commitment loss.
    lr : float, default=3e-4
        Adam learning rate (the paper's fork; VideoGPT's default is 7e-4).
    axial_attention : bool, default=True
        Axial attention (2 heads) at the end of each residual block, as VideoGPT and the
        paper. False gives plain bottleneck residual blocks.
    """

    clip_frames: int = 16
    frame_size: int = 128
    downsample: tuple[int, int, int] = (4, 16, 16)
    n_hiddens: int = 240
    n_res_layers: int = 4
    n_codes: int = 1024
    embedding_dim: int = 128
    ema_decay: float = 0.99
    commitment: float = 0.25
    lr: float = 3e-4
    axial_attention: bool = True

    def __post_init__(self) -> None:
        for name in ("clip_frames", "frame_size", "n_hiddens", "n_codes", "embedding_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"VQVAEConfig.{name} must be a positive int; got {value!r}.")
        if isinstance(self.n_res_layers, bool) or not isinstance(self.n_res_layers, int) or self.n_res_layers < 0:
            raise ValueError(f"VQVAEConfig.n_res_layers must be an int >= 0; got {self.n_res_layers!r}.")
        ds = tuple(self.downsample)
        if len(ds) != 3 or not all(isinstance(d, int) and not isinstance(d, bool) for d in ds):
            raise ValueError(f"VQVAEConfig.downsample must be 3 ints (T, H, W); got {self.downsample!r}.")
        if not all(d >= 1 and d & (d - 1) == 0 for d in ds):
            raise ValueError(f"VQVAEConfig.downsample={list(ds)}: each factor must be a power of 2 (1, 2, 4, ...).")
        if max(ds) < 2:
            raise ValueError(f"VQVAEConfig.downsample={list(ds)} must downsample at least one axis by 2 or more.")
        self.downsample = ds
        for axis, size, d in zip(("clip_frames", "frame_size", "frame_size"), self.input_shape, ds):
            if size % d:
                raise ValueError(
                    f"VQVAEConfig.downsample={list(ds)} must divide (clip_frames, frame_size, frame_size)="
                    f"{self.input_shape}; {axis}={size} is not divisible by {d}."
                )
        if self.n_hiddens % 2:
            raise ValueError(
                f"VQVAEConfig.n_hiddens must be even (the residual bottleneck halves it); got {self.n_hiddens}."
            )
        if self.n_codes > 2**15:
            raise ValueError(f"VQVAEConfig.n_codes must be at most 32768 (tokens are int16); got {self.n_codes}.")
        if not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"VQVAEConfig.ema_decay must be in (0, 1); got {self.ema_decay!r}.")
        if self.commitment < 0:
            raise ValueError(f"VQVAEConfig.commitment must be >= 0; got {self.commitment!r}.")
        if not self.lr > 0:
            raise ValueError(f"VQVAEConfig.lr must be > 0; got {self.lr!r}.")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(T, H, W) of an input clip."""
        return (self.clip_frames, self.frame_size, self.frame_size)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(T', H', W') of the code grid of one clip."""
        return tuple(s // d for s, d in zip(self.input_shape, self.downsample))  # type: ignore[return-value]

    @property
    def tokens_per_clip(self) -> int:
        """Codes per clip, T' * H' * W'."""
        return math.prod(self.latent_shape)


# -----------------------------------------------------------------------------
# layers


def _same_pad(kernel: int, stride: tuple[int, int, int]) -> tuple[int, ...]:
    """F.pad widths (last axis first) that make a conv of this kernel and stride keep size / stride."""
    pad: list[int] = []
    for s in reversed(stride):
        p = kernel - s
        pad += [p // 2 + p % 2, p // 2]
    return tuple(pad)


class SamePadConv3d(nn.Module):
    """Conv3d whose output is ``input / stride`` along each axis (VideoGPT's padding)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: tuple[int, int, int] = (1, 1, 1), bias: bool = True):
        super().__init__()
        self.pad = _same_pad(kernel, stride)
        self.conv = nn.Conv3d(c_in, c_out, kernel, stride=stride, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, self.pad))


class SamePadConvTranspose3d(nn.Module):
    """ConvTranspose3d whose output is ``input * stride`` along each axis (VideoGPT's padding)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: tuple[int, int, int]):
        super().__init__()
        self.pad = _same_pad(kernel, stride)
        self.convt = nn.ConvTranspose3d(c_in, c_out, kernel, stride=stride, padding=kernel - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convt(F.pad(x, self.pad))


class AxialAttention(nn.Module):
    """Multi-head self-attention along one axis of a channel-last (B, T, H, W, C) tensor."""

    def __init__(self, n_hiddens: int, n_head: int, axis: int):
        super().__init__()
        assert n_hiddens % n_head == 0
        self.n_head, self.axis = n_head, axis
        self.qkv = nn.Linear(n_hiddens, 3 * n_hiddens, bias=False)  # VideoGPT's w_qs, w_ks, w_vs
        self.proj = nn.Linear(n_hiddens, n_hiddens)  # VideoGPT's fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.movedim(self.axis, -2)  # (B, ..., L, C): the attended axis next to channels
        lead, (L, C) = x.shape[:-2], x.shape[-2:]
        qkv = self.qkv(x).reshape(-1, L, 3, self.n_head, C // self.n_head)  # (N, L, 3, nh, hs)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (N, nh, L, hs)
        y = F.scaled_dot_product_attention(q, k, v)  # (N, nh, L, hs)
        y = y.transpose(1, 2).reshape(*lead, L, C)  # (B, ..., L, C)
        return self.proj(y).movedim(-2, self.axis)


class AxialBlock(nn.Module):
    """Sum of self-attention along T, H and W (VideoGPT's ``AxialBlock``)."""

    def __init__(self, n_hiddens: int, n_head: int = 2):
        super().__init__()
        self.attn = nn.ModuleList([AxialAttention(n_hiddens, n_head, axis) for axis in (1, 2, 3)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.movedim(1, -1)  # (B, T, H, W, C)
        x = sum(attn(x) for attn in self.attn)
        return x.movedim(-1, 1)  # (B, C, T, H, W)


class ResidualBlock(nn.Module):
    """x + BN-ReLU-Conv(3^3, n -> n/2)-BN-ReLU-Conv(1^3, n/2 -> n)[-BN-ReLU-axial attention]."""

    def __init__(self, n_hiddens: int, axial_attention: bool = True):
        super().__init__()
        layers: list[nn.Module] = [
            nn.BatchNorm3d(n_hiddens),
            nn.ReLU(),
            SamePadConv3d(n_hiddens, n_hiddens // 2, 3, bias=False),
            nn.BatchNorm3d(n_hiddens // 2),
            nn.ReLU(),
            SamePadConv3d(n_hiddens // 2, n_hiddens, 1, bias=False),
        ]
        if axial_attention:
            layers += [nn.BatchNorm3d(n_hiddens), nn.ReLU(), AxialBlock(n_hiddens, n_head=2)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


def _strides(downsample: tuple[int, int, int]) -> list[tuple[int, int, int]]:
    """Per-layer strides: stride 2 on an axis until it has been halved log2(factor) times."""
    halvings = [int(math.log2(d)) for d in downsample]
    return [tuple(2 if h > i else 1 for h in halvings) for i in range(max(halvings))]  # type: ignore[misc]


def _res_stack(config: VQVAEConfig) -> nn.Sequential:
    blocks = [ResidualBlock(config.n_hiddens, config.axial_attention) for _ in range(config.n_res_layers)]
    return nn.Sequential(*blocks, nn.BatchNorm3d(config.n_hiddens), nn.ReLU())


class Encoder(nn.Module):
    """(B, 3, T, H, W) -> (B, n_hiddens, T', H', W')."""

    def __init__(self, config: VQVAEConfig):
        super().__init__()
        n = config.n_hiddens
        strides = _strides(config.downsample)
        self.convs = nn.ModuleList(
            [SamePadConv3d(3 if i == 0 else n, n, 4, stride=s) for i, s in enumerate(strides)]
        )
        self.conv_last = SamePadConv3d(n, n, 3)
        self.res_stack = _res_stack(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x  # (B, 3, T, H, W)
        for conv in self.convs:
            h = F.relu(conv(h))  # each halves the axes that still need it
        return self.res_stack(self.conv_last(h))  # (B, n_hiddens, T', H', W')


class Decoder(nn.Module):
    """(B, n_hiddens, T', H', W') -> (B, 3, T, H, W)."""

    def __init__(self, config: VQVAEConfig):
        super().__init__()
        n = config.n_hiddens
        strides = _strides(config.downsample)[::-1]
        self.res_stack = _res_stack(config)
        self.convts = nn.ModuleList(
            [SamePadConvTranspose3d(n, 3 if i == len(strides) - 1 else n, 4, s) for i, s in enumerate(strides)]
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = self.res_stack(h)  # (B, n_hiddens, T', H', W')
        for i, convt in enumerate(self.convts):
            h = convt(h)  # each doubles the axes that were halved there
            if i < len(self.convts) - 1:
                h = F.relu(h)
        return h  # (B, 3, T, H, W)


# -----------------------------------------------------------------------------
# codebook


class Codebook(nn.Module):
    """Vector quantiser with an EMA-learned codebook and dead-code restarts (VideoGPT).

    Each latent vector z goes to its nearest code, k = argmin_j ||z - e_j||^2. In training
    mode every forward updates, with N_j the number of vectors assigned to code j in the
    batch and S_j their sum::

        N_j <- decay * N_j + (1 - decay) * n_j          (EMA cluster size)
        m_j <- decay * m_j + (1 - decay) * S_j          (EMA cluster sum)
        e_j <- m_j / N~_j                               (N~: Laplace-smoothed N)

    then every code whose EMA count fell below 1 ("dead") is replaced by a random
    encoder output of the batch. The first training batch also initialises the codebook
    from random encoder outputs. Gradients pass straight through (z + sg(e - z)).

    Parameters
    ----------
    n_codes : int
        Number of codes K.
    embedding_dim : int
        Dimension D of each code.
    ema_decay : float, default=0.99
        The EMA decay.
    commitment : float, default=0.25
        Weight beta of the commitment loss beta * mean((z - sg(e))^2).

    Attributes
    ----------
    embeddings : Tensor of shape (K, D)
        The codes.
    N : Tensor of shape (K,)
        EMA count of the vectors assigned to each code.
    z_avg : Tensor of shape (K, D)
        EMA sum of the vectors assigned to each code.
    initialized : bool Tensor
        Whether the first training batch has initialised the codebook.
    """

    def __init__(self, n_codes: int, embedding_dim: int, ema_decay: float = 0.99, commitment: float = 0.25):
        super().__init__()
        self.n_codes, self.embedding_dim = n_codes, embedding_dim
        self.ema_decay, self.commitment = ema_decay, commitment
        self.register_buffer("embeddings", torch.randn(n_codes, embedding_dim))
        self.register_buffer("N", torch.zeros(n_codes))
        self.register_buffer("z_avg", self.embeddings.clone())
        self.register_buffer("initialized", torch.tensor(False))

    def _random_vectors(self, flat: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """K rows of ``flat`` (N, D), tiled with a little noise when N < K. (K, D).

        Uniformly at random, or with probability proportional to ``weights`` (N,).
        """
        if len(flat) < self.n_codes:
            reps = (self.n_codes + len(flat) - 1) // len(flat)
            flat = flat.repeat(reps, 1)
            flat = flat + torch.randn_like(flat) * 0.01 / math.sqrt(self.embedding_dim)
            weights = None if weights is None else weights.repeat(reps)
        if weights is None or not bool(weights.sum() > 0):
            return flat[torch.randperm(len(flat), device=flat.device)[: self.n_codes]]
        return flat[torch.multinomial(weights, self.n_codes, replacement=False)]

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """Nearest codes of latent vectors, without updating anything.

        Parameters
        ----------
        z : Tensor of shape (B, D, T', H', W')

        Returns
        -------
        LongTensor of shape (B, T', H', W')
        """
        return self._nearest(z.movedim(1, -1).reshape(-1, self.embedding_dim))[0].view(z.shape[0], *z.shape[2:])

    def _nearest(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest code (N,) of each row of ``flat`` (N, D) and its squared distance (N,)."""
        distances = (
            (flat**2).sum(1, keepdim=True) - 2 * flat @ self.embeddings.t() + (self.embeddings**2).sum(1)[None]
        )  # (N, K)
        best, codes = distances.min(1)
        return codes, best.clamp_(min=0)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Code vectors, channel last: (...) -> (..., D)."""
        return F.embedding(codes, self.embeddings)

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, onehot: torch.Tensor, distances: torch.Tensor) -> None:
        d = self.ema_decay
        self.N.mul_(d).add_(onehot.sum(0), alpha=1 - d)  # (K,)
        self.z_avg.mul_(d).add_(onehot.t() @ flat, alpha=1 - d)  # (K, D)
        n = self.N.sum()
        weights = (self.N + 1e-7) / (n + self.n_codes * 1e-7) * n  # Laplace smoothing
        self.embeddings.copy_(self.z_avg / weights[:, None])
        # Dead-code restart: codes whose EMA count fell below 1 take an encoder output of the
        # batch, drawn with probability proportional to its squared distance to its nearest
        # code (as k-means++ seeds). Uniform draws (VideoGPT) mostly pick the black background
        # of a game screen, which the live codes already cover, so the restarted codes die again.
        alive = (self.N >= 1).float()[:, None]  # (K, 1)
        if bool(alive.all()):
            return
        self.embeddings.mul_(alive).add_(self._random_vectors(flat, distances) * (1 - alive))

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Quantise latents (and, in training mode, update the codebook).

        Parameters
        ----------
        z : Tensor of shape (B, D, T', H', W')
            Pre-quantisation latents.

        Returns
        -------
        dict
            ``embeddings`` (B, D, T', H', W'): straight-through quantised latents;
            ``codes`` (B, T', H', W') int64; ``commitment_loss``: scalar;
            ``perplexity``: exp of the entropy of the batch's code usage (scalar).
        """
        flat = z.movedim(1, -1).reshape(-1, self.embedding_dim).detach()  # (N, D)
        if self.training and not bool(self.initialized):
            with torch.no_grad():
                init = self._random_vectors(flat)
                self.embeddings.copy_(init)
                self.z_avg.copy_(init)
                self.N.fill_(1.0)
                self.initialized.fill_(True)
        flat_codes, distances = self._nearest(flat)
        codes = flat_codes.view(z.shape[0], *z.shape[2:])  # (B, T', H', W')
        onehot = F.one_hot(flat_codes, self.n_codes).type_as(flat)  # (N, K)
        e = self.lookup(codes).movedim(-1, 1)  # (B, D, T', H', W'), before this step's update
        commitment_loss = self.commitment * F.mse_loss(z, e.detach())
        if self.training:
            self._ema_update(flat, onehot, distances)
        avg_probs = onehot.mean(0)  # (K,)
        perplexity = torch.exp(-(avg_probs * torch.log(avg_probs + 1e-10)).sum())
        return {
            "embeddings": z + (e - z).detach(),
            "codes": codes,
            "commitment_loss": commitment_loss,
            "perplexity": perplexity,
        }


# -----------------------------------------------------------------------------
# model


class VQVAE(nn.Module):
    """VideoGPT's VQ-VAE: clips (B, 3, T, H, W) in [-0.5, 0.5] <-> codes (B, T', H', W').

    Parameters
    ----------
    config : VQVAEConfig
        The settings; ``config.latent_shape`` is the code grid of one clip.

    Examples
    --------
    >>> cfg = VQVAEConfig(clip_frames=4, frame_size=16, downsample=(2, 4, 4), n_hiddens=8,
    ...                   n_res_layers=1, n_codes=16, embedding_dim=4)
    >>> model = VQVAE(cfg).eval()
    >>> codes = model.encode(torch.zeros(2, 3, 4, 16, 16))
    >>> tuple(codes.shape), tuple(model.decode(codes).shape)
    ((2, 2, 4, 4), (2, 3, 4, 16, 16))
    """

    def __init__(self, config: VQVAEConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.pre_vq_conv = SamePadConv3d(config.n_hiddens, config.embedding_dim, 1)
        self.codebook = Codebook(config.n_codes, config.embedding_dim, config.ema_decay, config.commitment)
        self.post_vq_conv = SamePadConv3d(config.embedding_dim, config.n_hiddens, 1)
        self.decoder = Decoder(config)
        # The training clips' mean frame (preprocessed, (1, 3, 1, H, W)); the encoder sees
        # each clip minus it and the decoder adds it back, so the codes are spent on what
        # moves, not on the static screen (a game's score line, its black background).
        # Zeros: VideoGPT's plain model. train_vqvae sets it.
        self.register_buffer("mean_frame", torch.zeros(1, 3, 1, config.frame_size, config.frame_size))
        # The variance that scales the reconstruction loss: VideoGPT divides the MSE by its
        # data's variance (0.06). A game screen varies far less (about 0.002 for Airstriker
        # at 32 x 32), and with 0.06 the commitment loss wins: the encoder collapses to a
        # constant and nothing but the mean frame is reconstructed. train_vqvae sets it to
        # the training clips' variance around the mean frame.
        self.register_buffer("data_variance", torch.tensor(RECON_LOSS_SCALE))

    def _check_input(self, x: torch.Tensor) -> None:
        want = (3, *self.config.input_shape)
        if x.ndim != 5 or tuple(x.shape[1:]) != want:
            raise ValueError(
                f"VQVAE input has shape {tuple(x.shape)}; expected (B, {', '.join(map(str, want))}) "
                "(B, 3, T, H, W) float in [-0.5, 0.5]. Use preprocess() on (B, T, H, W, 3) uint8 clips."
            )

    def _check_codes(self, codes: torch.Tensor) -> None:
        want = self.config.latent_shape
        if codes.ndim != 4 or tuple(codes.shape[1:]) != want:
            raise ValueError(f"codes have shape {tuple(codes.shape)}; expected (B, {', '.join(map(str, want))}).")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.config.n_codes):
            raise ValueError(
                f"codes must lie in [0, {self.config.n_codes}); got values in "
                f"[{int(codes.min())}, {int(codes.max())}]."
            )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Reconstruct clips through the codebook (updating it in training mode).

        Parameters
        ----------
        x : Tensor of shape (B, 3, T, H, W)
            Clips in [-0.5, 0.5].

        Returns
        -------
        dict
            ``recon`` (B, 3, T, H, W); ``recon_loss`` = MSE(recon, x) / 0.06;
            ``commitment_loss``; ``loss`` = recon_loss + commitment_loss (what is
            minimised); ``perplexity`` of the batch's codes; ``codes`` (B, T', H', W').
        """
        self._check_input(x)
        z = self.pre_vq_conv(self.encoder(x - self.mean_frame))  # (B, D, T', H', W')
        vq = self.codebook(z)
        recon = self.decoder(self.post_vq_conv(vq["embeddings"])) + self.mean_frame  # (B, 3, T, H, W)
        recon_loss = F.mse_loss(recon, x) / self.data_variance
        return {
            "recon": recon,
            "recon_loss": recon_loss,
            "commitment_loss": vq["commitment_loss"],
            "loss": recon_loss + vq["commitment_loss"],
            "perplexity": vq["perplexity"],
            "codes": vq["codes"],
        }

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Codes of clips (B, 3, T, H, W) in [-0.5, 0.5] -> LongTensor (B, T', H', W').

        Never updates the codebook; call in eval mode so BatchNorm uses its running stats.
        """
        self._check_input(x)
        return self.codebook.quantize(self.pre_vq_conv(self.encoder(x - self.mean_frame)))

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """Code vectors, channel last: (...) int -> (..., embedding_dim), e.g. (B, T', H', W', D)."""
        return self.codebook.lookup(codes)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Clips from codes: (B, T', H', W') int -> (B, 3, T, H, W), roughly in [-0.5, 0.5]."""
        self._check_codes(codes)
        h = self.embed(codes).movedim(-1, 1)  # (B, D, T', H', W')
        return self.decoder(self.post_vq_conv(h)) + self.mean_frame


# -----------------------------------------------------------------------------
# data


def _tensor(a: np.ndarray) -> torch.Tensor:
    """A tensor over a clip array. Ray Data hands batches out as read-only views of its object
    store, which torch may only wrap as a copy; a writable contiguous array is not copied."""
    a = np.ascontiguousarray(a)
    return torch.from_numpy(a if a.flags.writeable else a.copy())


def preprocess(clips: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 clips (B, T, H, W, 3) -> float32 (B, 3, T, H, W) in [-0.5, 0.5].

    ``x = pixel / 255 - 0.5``, as VideoGPT. A tensor stays on its device (so copy uint8
    to the GPU first, then preprocess there).
    """
    x = _tensor(clips) if isinstance(clips, np.ndarray) else clips
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"clips must be a numpy array or a torch tensor; got {type(clips).__name__}.")
    if x.dtype != torch.uint8 or x.ndim != 5 or x.shape[-1] != 3:
        raise ValueError(
            f"clips must be uint8 of shape (B, T, H, W, 3); got {x.dtype} of shape {tuple(x.shape)}."
        )
    return x.permute(0, 4, 1, 2, 3).float().div_(255.0).sub_(0.5)  # (B, 3, T, H, W)


def _check_clips(clips: np.ndarray, config: VQVAEConfig, name: str = "clips") -> np.ndarray:
    clips = np.asarray(clips)
    want = (*config.input_shape, 3)
    if clips.dtype != np.uint8 or clips.ndim != 5 or tuple(clips.shape[1:]) != want:
        raise ValueError(
            f"{name} must be uint8 of shape (n, {', '.join(map(str, want))}) to match the VQVAEConfig "
            f"(clip_frames, frame_size, frame_size, 3); got {clips.dtype} of shape {tuple(clips.shape)}."
        )
    return clips


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def _reconstruct_batch(model: VQVAE, clips: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(recon clamped to [-0.5, 0.5], codes) of uint8 clips with a model in eval mode."""
    x = preprocess(_tensor(clips).to(_model_device(model)))
    codes = model.encode(x)
    return model.decode(codes).clamp_(-0.5, 0.5), codes


@torch.inference_mode()
def evaluate(model: VQVAE, clips: np.ndarray, batch_size: int) -> dict[str, float]:
    """Reconstruction and code-usage metrics of a model in eval mode over clips (n, T, H, W, 3)."""
    dev = _model_device(model)
    sq_err = 0.0
    counts = torch.zeros(model.config.n_codes, dtype=torch.float64, device=dev)
    pix_sum = np.zeros(clips.shape[2:], dtype=np.float64)  # (H, W, 3), for the mean-frame baseline
    pix_sq = np.zeros(clips.shape[2:], dtype=np.float64)
    fg_err = fg_base = fg_n = 0.0  # the foreground: pixels that differ from the training mean frame
    for i in range(0, len(clips), batch_size):
        batch = clips[i : i + batch_size]
        recon, codes = _reconstruct_batch(model, batch)
        x = preprocess(_tensor(batch).to(dev))
        sq = (recon - x) ** 2
        sq_err += float(sq.double().sum())
        fg = ((x - model.mean_frame).abs().amax(dim=1, keepdim=True) > FOREGROUND).expand_as(x)
        fg_err += float(sq[fg].double().sum())
        fg_base += float(((x - model.mean_frame)[fg] ** 2).double().sum())
        fg_n += float(fg.sum())
        counts += torch.bincount(codes.reshape(-1), minlength=model.config.n_codes).double()
        frames = batch.reshape(-1, *batch.shape[2:]).astype(np.float64) / 255.0
        pix_sum += frames.sum(0)
        pix_sq += (frames**2).sum(0)
    n_frames = clips.shape[0] * clips.shape[1]
    mse = sq_err / (n_frames * math.prod(clips.shape[2:]))
    baseline = float(np.mean(pix_sq / n_frames - (pix_sum / n_frames) ** 2))  # MSE of the mean frame
    p = counts / counts.sum()
    perplexity = float(torch.exp(-(p * torch.log(p + 1e-10)).sum()))
    return {
        "recon_mse": mse,
        "psnr": 10 * math.log10(1.0 / max(mse, 1e-12)),
        "psnr_baseline": 10 * math.log10(1.0 / max(baseline, 1e-12)),
        "psnr_foreground": 10 * math.log10(fg_n / max(fg_err, 1e-12)) if fg_n else math.nan,
        "psnr_foreground_baseline": 10 * math.log10(fg_n / max(fg_base, 1e-12)) if fg_n else math.nan,
        "foreground_frac": fg_n / max(1.0, n_frames * math.prod(clips.shape[2:])),
        "perplexity": perplexity,
        "dead_codes": int((counts == 0).sum()),
    }


# -----------------------------------------------------------------------------
# training and tokenizing


def train_vqvae(
    clips: np.ndarray,
    config: VQVAEConfig,
    steps: int,
    batch_size: int = 16,
    seed: int = 0,
    device: str = "auto",
    progress: Callable[[int, dict], None] | None = None,
    holdout: int = 256,
) -> tuple[VQVAE, dict]:
    """Train a VQ-VAE from scratch on uint8 clips: Adam, random batches, a fixed seed.

    Each step draws ``batch_size`` of the non-held-out clips at random (with
    replacement) and minimises
    ``MSE(recon, x) / 0.06 + commitment * ||z - sg(e)||^2``; the codebook learns by EMA.

    Parameters
    ----------
    clips : ndarray of shape (n, clip_frames, frame_size, frame_size, 3), dtype uint8
        Training clips (a memmap works too).
    config : VQVAEConfig
    steps : int
        Optimiser steps (>= 1).
    batch_size : int, default=16
    seed : int, default=0
        Seeds the model init, the batches and the codebook restarts (torch's global RNG).
    device : str, default="auto"
        "auto" picks CUDA when present.
    progress : callable (step, metrics) -> None, optional
        Called about every 10% of the steps with the training means since the last call:
        ``loss``, ``recon_loss``, ``commitment_loss``, ``perplexity``.
    holdout : int, default=256
        The final metrics use ``min(holdout, n // 10)`` random clips held out from
        training; when that is 0 (fewer than 10 clips, or ``holdout=0``) they use up to
        1024 of the training clips instead.

    Returns
    -------
    model : VQVAE
        In eval mode, on ``device``.
    metrics : dict
        Over the evaluated clips (``eval_clips`` of them, ``heldout`` says whether they
        were held out), with the reconstructions clamped to [-0.5, 0.5]:
        ``psnr`` = 10 log10(1 / recon_mse) in dB (pixels scaled to [0, 1]);
        ``psnr_baseline``: the PSNR of predicting the mean frame, the trivial baseline;
        ``psnr_foreground`` and ``psnr_foreground_baseline``: the same two on the
        foreground only, the pixels more than :data:`FOREGROUND` away from the training
        mean frame (what moves: sprites), and ``foreground_frac``, their share;
        ``recon_mse``; ``perplexity`` = exp(entropy of the code histogram);
        ``dead_codes``: codes never used when tokenizing those clips; ``steps``;
        ``wall_s``: seconds for training and evaluation.
    """
    clips = _check_clips(clips, config)
    if len(clips) == 0:
        raise ValueError("clips is empty; train_vqvae needs at least one clip.")
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"'{name}' must be a positive int; got {value!r}.")
    if isinstance(holdout, bool) or not isinstance(holdout, int) or holdout < 0:
        raise ValueError(f"'holdout' must be an int >= 0; got {holdout!r}.")
    t0 = time.perf_counter()
    dev = pick_device(device)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(clips))
    n_held = min(holdout, len(clips) // 10)
    held, train = np.sort(order[:n_held]), order[n_held:]
    chunks = (clips[np.sort(train[i : i + 256])] for i in range(0, len(train), 256))
    model, optimizer = start_training(config, frame_stats(chunks), dev)

    def batches() -> Iterator[np.ndarray]:
        while True:
            yield clips[np.sort(train[rng.integers(0, len(train), size=batch_size)])]

    fit_steps(model, optimizer, batches(), 1, steps, progress)
    model.eval()
    evaluated = held if n_held else np.sort(train[:1024])
    metrics = evaluate(model, clips[evaluated], batch_size=max(batch_size, 16))
    metrics.update(eval_clips=len(evaluated), heldout=bool(n_held), steps=steps, wall_s=time.perf_counter() - t0)
    return model, metrics


def start_training(config: VQVAEConfig, stats: tuple[torch.Tensor, float], device: torch.device) -> tuple[VQVAE, torch.optim.Adam]:
    """A fresh model (the torch RNG seeds it) that knows its data's mean frame and variance, and its optimiser."""
    model = VQVAE(config).to(device).train()
    mean, variance = stats
    model.mean_frame.copy_(mean.to(device))
    model.data_variance.fill_(max(variance, 1e-6))
    return model, torch.optim.Adam(model.parameters(), lr=config.lr, betas=(0.9, 0.999))


def fit_steps(
    model: VQVAE, optimizer: torch.optim.Optimizer, batches: Iterable[np.ndarray], first: int, last: int,
    progress: Callable[[int, dict], None] | None = None, after_step: Callable[[int], None] | None = None,
) -> None:
    """Optimiser steps ``first..last`` on uint8 clip batches, in order (one batch per step).

    Both tokenizer paths run this loop: in memory (:func:`train_vqvae`) and from a stream of
    replays (``brainray.stream``). ``progress`` gets the training means about every 10 % of
    the steps; ``after_step(step)`` runs after each one (the stream checkpoints there).
    """
    dev = _model_device(model)
    every = max(1, round(last / 10))
    keys = ("loss", "recon_loss", "commitment_loss", "perplexity")
    running = dict.fromkeys(keys, 0.0)
    n_running = 0
    for step, clips in zip(range(first, last + 1), batches):
        x = preprocess(_tensor(clips).to(dev))  # (B, 3, T, H, W)
        out = model(x)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        optimizer.step()
        if progress is not None:
            for k in keys:
                running[k] += float(out[k].detach())
            n_running += 1
            if step % every == 0 or step == last:
                progress(step, {k: v / n_running for k, v in running.items()})
                running, n_running = dict.fromkeys(keys, 0.0), 0
        if after_step is not None:
            after_step(step)


_STATS_PIECE = 16  # clips per float64 pass of frame_stats (a 256-clip chunk at 64x64 was 200 MB)


def frame_stats(chunks: Iterable[np.ndarray]) -> tuple[torch.Tensor, float]:
    """Mean preprocessed frame (1, 3, 1, H, W) of uint8 clips that arrive in chunks, and the
    pixels' variance around it (a float): one pass, in float64."""
    total = squares = None
    n = 0
    for chunk in chunks:
        for i in range(0, len(chunk), _STATS_PIECE):  # float64 is 32x a uint8 clip: a piece at a time
            x = preprocess(_tensor(chunk[i : i + _STATS_PIECE])).double()
            s, q = x.sum(dim=(0, 2)), (x**2).sum(dim=(0, 2))  # x: (B, 3, T, H, W)
            total, squares = (s, q) if total is None else (total + s, squares + q)
            n += x.shape[0] * x.shape[2]
    if total is None:
        raise ValueError("frame_stats got no clips.")
    mean = total / n  # (3, H, W)
    variance = float((squares / n - mean**2).mean())
    return mean[None, :, None].float(), variance


def tokenize(model: VQVAE, clips: np.ndarray, batch_size: int = 64, device: str = "auto") -> np.ndarray:
    """Codes of uint8 clips (n, T, H, W, 3) -> int16 array (n, T', H', W').

    Runs in eval mode under ``torch.inference_mode`` (the model is moved to ``device``
    and its train/eval mode is restored afterwards).
    """
    clips = _check_clips(clips, model.config)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"'batch_size' must be a positive int; got {batch_size!r}.")
    was_training = model.training
    model.to(pick_device(device)).eval()
    out = np.empty((len(clips), *model.config.latent_shape), dtype=np.int16)
    try:
        for i in range(0, len(clips), batch_size):
            x = preprocess(_tensor(clips[i : i + batch_size]).to(_model_device(model)))
            with torch.inference_mode():
                out[i : i + batch_size] = model.encode(x).cpu().numpy()
    finally:
        model.train(was_training)
    return out


# -----------------------------------------------------------------------------
# files


def save_vqvae(model: VQVAE, path: str | Path) -> Path:
    """Write the weights and config in one torch file (tensors and plain Python only).

    The file is a dict ``{"format", "config", "state_dict"}`` that :func:`load_vqvae`
    reads with ``torch.load(weights_only=True)``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = dataclasses.asdict(model.config)
    config["downsample"] = list(config["downsample"])
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"format": _FORMAT, "config": config, "state_dict": state}, path)
    return path


class CorruptCheckpointError(ValueError):
    """A torch file that exists but cannot be read: corrupt, truncated, or not a torch file."""


def _why(err: Exception) -> str:
    """Type and first sentence of a torch load error, without torch's advice to unpickle unsafely
    (for a damaged file that advice repairs nothing, and it would let the file run code)."""
    text = str(err).strip()
    first = text.split(". ")[0].splitlines()[0] if text else ""
    if not first or "weights_only" in first.lower().replace(" ", "_"):
        return type(err).__name__
    return f"{type(err).__name__}: {first}"


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", fix: str = "") -> Any:
    """``torch.load(path, weights_only=True)`` whose errors name the file and say what is wrong.

    fix: what to do about a damaged file, appended to the error message.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    CorruptCheckpointError
        If it cannot be read (torch raises RuntimeError, EOFError, UnpicklingError, ... for
        a corrupt or truncated file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {path} does not exist. {fix}".strip())
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch has no one error type for a damaged file
        raise CorruptCheckpointError(
            f"Checkpoint {path} cannot be read: it is corrupt or truncated ({_why(err)}). {fix}".strip()
        ) from None  # torch's message, which a chained traceback would show, gives unsafe advice


def load_vqvae(path: str | Path, device: str = "cpu") -> VQVAE:
    """Read a file written by :func:`save_vqvae`; returns the model in eval mode on ``device``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VQ-VAE checkpoint {path} does not exist; train one with train_vqvae + save_vqvae.")
    ckpt = read_checkpoint(
        path, fix="Write it again with save_vqvae (a prepared dataset's vqvae.pt: delete the dataset "
        "folder and rerun prepare)."
    )
    if not isinstance(ckpt, dict) or ckpt.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a brainray VQ-VAE checkpoint (expected format {_FORMAT!r}).")
    fields = {f.name for f in dataclasses.fields(VQVAEConfig)}
    unknown = sorted(set(ckpt["config"]) - fields)
    if unknown:
        raise ValueError(f"{path}: unknown VQVAEConfig keys {unknown}; valid keys are {sorted(fields)}.")
    config = VQVAEConfig(**{**ckpt["config"], "downsample": tuple(ckpt["config"]["downsample"])})
    model = VQVAE(config)
    state = dict(ckpt["state_dict"])
    state.setdefault("mean_frame", model.mean_frame)  # written before the mean frame existed: zeros
    model.load_state_dict(state)
    return model.to(pick_device(device)).eval()


def save_reconstructions_png(model: VQVAE, clips: np.ndarray, path: str | Path, n: int = 4) -> Path:
    """Save a PNG grid: for each of the first ``n`` clips, a row of its frames, then a row
    of their reconstructions (the model in eval mode, on its current device).

    Parameters
    ----------
    model : VQVAE
    clips : ndarray of shape (n_clips, T, H, W, 3), dtype uint8
    path : str or Path
        The PNG to write (parents are created).
    n : int, default=4
        Clips to show (fewer if fewer are given).

    Returns
    -------
    Path
        The image: ``2 * n`` rows of ``T`` frames of H x W, with 2-pixel gaps.
    """
    from PIL import Image

    clips = _check_clips(clips, model.config)[:n]
    if len(clips) == 0:
        raise ValueError("clips is empty; save_reconstructions_png needs at least one clip.")
    was_training = model.training
    model.eval()
    try:
        recon, _ = _reconstruct_batch(model, clips)
    finally:
        model.train(was_training)
    recon = ((recon + 0.5) * 255).round().byte().permute(0, 2, 3, 4, 1).cpu().numpy()  # (n, T, H, W, 3)
    rows = np.stack([clips, recon], axis=1).reshape(-1, *clips.shape[1:])  # (2n, T, H, W, 3): orig, recon, ...
    R, T, H, W, _ = rows.shape
    gap = 2
    grid = np.full((R * (H + gap) - gap, T * (W + gap) - gap, 3), 255, dtype=np.uint8)
    for r in range(R):
        for t in range(T):
            grid[r * (H + gap) : r * (H + gap) + H, t * (W + gap) : t * (W + gap) + W] = rows[r, t]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
    return path
