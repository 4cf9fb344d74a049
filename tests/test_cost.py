"""The dry run's cost model: a throughput law with a per-step floor, and the prepare stage counted."""

from __future__ import annotations

import math

import numpy as np
import pytest

from brainray import cost, gpt
from brainray.config import load_spec


def test_fit_throughput_recovers_a_floor_and_a_rate():
    flops = np.array([1e9, 1e11, 3e11, 1e12])
    law = cost.fit_throughput(flops, 0.02 + flops / 2e14)
    assert law.floor_s == pytest.approx(0.02, rel=1e-9) and law.flops_per_s == pytest.approx(2e14, rel=1e-9)
    assert law.seconds(10, 1e13) == pytest.approx(10 * 0.02 + 1e13 / 2e14)
    with pytest.raises(ValueError, match="at least two steps"):
        cost.fit_throughput(np.array([1e9]), np.array([0.1]))


def test_the_h100_model_reproduces_the_measured_steps_it_was_fitted_to():
    tokens = 512 * 64
    for d, dtype, tokens_per_s in ((576, "bf16", 431e3), (126, "bf16", 1.1e6), (576, "fp32", 148e3)):
        flops = gpt.train_flops_per_token(8, d, 1024, 512) * tokens
        assert tokens / cost.H100[dtype].seconds(1, flops) == pytest.approx(tokens_per_s, rel=1e-6)
    # the floor prices small models far above a flat MFU: width 126 is under 2 % of the bf16 peak
    small = gpt.train_flops_per_token(8, 126, 1024, 512) * tokens
    assert small / cost.H100["bf16"].seconds(1, small) / 989e12 < 0.02


def test_the_prepare_stage_is_counted():
    demo, paper = cost.prepare_cost(load_spec("demo")), cost.prepare_cost(load_spec("paper"))
    assert demo["vqvae_cached"] and not paper["vqvae_cached"]  # 77 GB of paper clips stream
    tk, d = load_spec("paper").tokenizer, load_spec("paper").data
    clips = d.train_replays * d.replay_frames // (tk.clip_frames * tk.time_downsample)
    assert paper["vqvae_epochs"] == math.ceil(tk.steps * tk.batch_size / clips)
    assert paper["frames_replayed"] > paper["vqvae_epochs"] * d.train_replays * d.replay_frames
    assert 0 < paper["vqvae_gpu_hours"] < 100 and paper["vqvae_train_flops"] > 1e18
    assert paper["disk_per_training_frame"] <= 64  # a training frame costs its bk2 and its tokens
    text = cost.describe_prepare(load_spec("paper"))
    assert "VQ-VAE: 150000 steps" in text and "streamed from their bk2 at each of" in text
