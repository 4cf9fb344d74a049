"""Where tensors run: one rule for every stage (VQ-VAE, GPT trials, ridge encoding)."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["pick_device", "use_tf32"]


def pick_device(device: Any = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything torch accepts otherwise.

    Raises a ValueError for a name torch does not know, or for CUDA on a machine without it.
    """
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"'device' must be 'auto', 'cpu', 'cuda' or 'cuda:N'; got {device!r}.") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"'device' is {device!r} but CUDA is not available; use device='auto' or device='cpu'.")
    return dev


def use_tf32(device: torch.device) -> None:
    """fp32 matmuls in TF32 on CUDA, as trials run them (``gpt.peak_flops``'s fp32 peak is
    TF32's, so MFU is measured against the arithmetic actually used)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
