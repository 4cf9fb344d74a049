"""Tests for brainray.vqvae: shapes, the EMA codebook and its restarts, training, files."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from brainray.vqvae import (
    VQVAE,
    Codebook,
    CorruptCheckpointError,
    VQVAEConfig,
    frame_stats,
    load_vqvae,
    pick_device,
    preprocess,
    read_checkpoint,
    save_reconstructions_png,
    save_vqvae,
    tokenize,
    train_vqvae,
)

torch.set_num_threads(1)

# (4, 16, 16) clips -> (2, 4, 4) codes: small enough to train in seconds on one CPU thread
TINY = dict(
    clip_frames=4, frame_size=16, downsample=(2, 4, 4), n_hiddens=16, n_res_layers=1, n_codes=32, embedding_dim=8
)


def tiny(**kw) -> VQVAEConfig:
    return VQVAEConfig(**{**TINY, **kw})


def moving_squares(n: int, T: int, S: int, seed: int = 0) -> np.ndarray:
    """Clips (n, T, S, S, 3) uint8: one square (red, green or white) per clip moving on black."""
    rng = np.random.default_rng(seed)
    palette = np.array([[255, 64, 64], [64, 255, 64], [255, 255, 255]], np.uint8)
    clips = np.zeros((n, T, S, S, 3), np.uint8)
    for i in range(n):
        s = S // 2
        y, x = rng.integers(0, S - s, 2)
        vy, vx = rng.integers(-1, 2, 2)
        colour = palette[rng.integers(len(palette))]
        for t in range(T):
            yy, xx = np.clip(y + vy * t, 0, S - s), np.clip(x + vx * t, 0, S - s)
            clips[i, t, yy : yy + s, xx : xx + s] = colour
    return clips


def mean_frame_psnr(clips: np.ndarray) -> float:
    """PSNR (pixels in [0, 1]) of predicting every frame by the mean frame of the clips."""
    frames = clips.reshape(-1, *clips.shape[2:]).astype(np.float64) / 255
    return float(10 * np.log10(1 / np.mean((frames - frames.mean(0)) ** 2)))


@pytest.fixture(scope="module")
def squares():
    return moving_squares(80, 4, 16, seed=0)


@pytest.fixture(scope="module")
def trained(squares):
    torch.manual_seed(0)
    calls = []
    model, metrics = train_vqvae(
        squares, tiny(lr=2e-3, axial_attention=False), steps=150, batch_size=16, seed=0, device="cpu",
        progress=lambda step, m: calls.append((step, m)),
    )
    return model, metrics, calls


# ----------------------------------------------------------------------------- config


def test_default_config_is_the_papers():
    c = VQVAEConfig()
    assert (c.clip_frames, c.frame_size, c.downsample) == (16, 128, (4, 16, 16))
    assert (c.n_hiddens, c.n_res_layers, c.n_codes, c.embedding_dim) == (240, 4, 1024, 128)
    assert (c.ema_decay, c.commitment, c.lr) == (0.99, 0.25, 3e-4)
    assert c.latent_shape == (4, 8, 8)
    assert c.tokens_per_clip == 256


@pytest.mark.parametrize(
    "kw, latent",
    [
        (dict(clip_frames=8, frame_size=32, downsample=(4, 8, 8)), (2, 4, 4)),  # the demo
        (dict(clip_frames=4, frame_size=16, downsample=(2, 4, 4)), (2, 4, 4)),
        (dict(clip_frames=4, frame_size=16, downsample=(1, 2, 4)), (4, 8, 4)),
        (dict(clip_frames=16, frame_size=64, downsample=[4, 4, 4]), (4, 16, 16)),  # YAML gives lists
    ],
)
def test_latent_shape(kw, latent):
    c = tiny(**kw)
    assert c.latent_shape == latent
    assert c.tokens_per_clip == int(np.prod(latent))
    assert isinstance(c.downsample, tuple)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(frame_size=18), r"frame_size=18 is not divisible by 4"),
        (dict(clip_frames=3), r"clip_frames=3 is not divisible by 2"),
        (dict(downsample=(3, 4, 4), clip_frames=6), r"downsample=\[3, 4, 4\]: each factor must be a power of 2"),
        (dict(downsample=(2, 4)), r"downsample must be 3 ints"),
        (dict(downsample=(1, 1, 1)), r"must downsample at least one axis"),
        (dict(n_hiddens=15), r"n_hiddens must be even"),
        (dict(n_hiddens=0), r"n_hiddens must be a positive int; got 0"),
        (dict(n_codes=2.5), r"n_codes must be a positive int; got 2.5"),
        (dict(n_codes=40000), r"n_codes must be at most 32768"),
        (dict(n_res_layers=-1), r"n_res_layers must be an int >= 0"),
        (dict(ema_decay=1.0), r"ema_decay must be in \(0, 1\)"),
        (dict(commitment=-0.1), r"commitment must be >= 0"),
        (dict(lr=0.0), r"lr must be > 0"),
    ],
)
def test_config_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        tiny(**kw)


# ----------------------------------------------------------------------------- model


@pytest.mark.parametrize(
    "kw",
    [
        {},
        dict(axial_attention=False),
        dict(downsample=(1, 2, 4), n_res_layers=0),
        dict(clip_frames=8, frame_size=32, downsample=(4, 8, 8), n_hiddens=32, n_codes=128, embedding_dim=32),
    ],
)
def test_forward_shapes(kw):
    c = tiny(**kw)
    model = VQVAE(c)
    x = torch.rand(2, 3, *c.input_shape) - 0.5
    out = model(x)
    assert out["recon"].shape == x.shape
    assert out["codes"].shape == (2, *c.latent_shape) and out["codes"].dtype == torch.int64
    for key in ("recon_loss", "commitment_loss", "loss", "perplexity"):
        assert out[key].shape == () and torch.isfinite(out[key])
    assert torch.allclose(out["recon_loss"], F.mse_loss(out["recon"], x) / 0.06)
    assert torch.allclose(out["loss"], out["recon_loss"] + out["commitment_loss"])
    out["loss"].backward()
    assert model.encoder.convs[0].conv.weight.grad.abs().sum() > 0  # gradients reach the encoder


def test_encoder_strides_follow_videogpt():
    model = VQVAE(VQVAEConfig())  # the paper: (4, 16, 16) -> strides (2,2,2), (2,2,2), (1,2,2), (1,2,2)
    assert [conv.conv.stride for conv in model.encoder.convs] == [(2, 2, 2), (2, 2, 2), (1, 2, 2), (1, 2, 2)]
    assert all(conv.conv.kernel_size == (4, 4, 4) for conv in model.encoder.convs)
    assert [convt.convt.stride for convt in model.decoder.convts] == [(1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2)]


def test_paper_model_size_and_latent_grid():
    """35.8M parameters (encoder 18.7M, decoder 17.1M) as the paper's README; one clip -> 4x8x8 codes."""
    torch.manual_seed(0)
    model = VQVAE(VQVAEConfig()).eval()

    def count(m):
        return sum(p.numel() for p in m.parameters()) / 1e6

    assert count(model) == pytest.approx(35.8, abs=0.05)
    assert count(model.encoder) == pytest.approx(18.7, abs=0.05)
    assert count(model.decoder) == pytest.approx(17.1, abs=0.05)
    x = torch.rand(1, 3, 16, 128, 128) - 0.5
    with torch.inference_mode():
        codes = model.encode(x)
        assert codes.shape == (1, 4, 8, 8)
        assert model.decode(codes).shape == (1, 3, 16, 128, 128)


def test_encode_decode_round_trip():
    c = tiny()
    torch.manual_seed(0)
    model = VQVAE(c)
    model(torch.rand(4, 3, *c.input_shape) - 0.5)  # one training forward initialises the codebook
    model.eval()
    x = torch.rand(3, 3, *c.input_shape) - 0.5
    with torch.no_grad():
        codes = model.encode(x)
        assert codes.shape == (3, *c.latent_shape) and codes.dtype == torch.int64
        assert 0 <= int(codes.min()) and int(codes.max()) < c.n_codes
        recon = model.decode(codes)
        out = model(x)
    assert recon.shape == x.shape
    assert torch.equal(out["codes"], codes)
    assert torch.allclose(out["recon"], recon, atol=1e-6)
    emb = model.embed(codes)
    assert emb.shape == (3, *c.latent_shape, c.embedding_dim)
    assert torch.equal(emb, model.codebook.embeddings[codes])


def test_input_and_code_errors():
    c = tiny()
    model = VQVAE(c).eval()
    with pytest.raises(ValueError, match=r"VQVAE input has shape \(2, 4, 16, 16, 3\); expected \(B, 3, 4, 16, 16\)"):
        model(torch.zeros(2, 4, 16, 16, 3))
    with pytest.raises(ValueError, match=r"codes have shape \(2, 2, 4\); expected \(B, 2, 4, 4\)"):
        model.decode(torch.zeros(2, 2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 32\); got values in \[32, 32\]"):
        model.decode(torch.full((1, 2, 4, 4), 32))


# ----------------------------------------------------------------------------- codebook


def test_codebook_initialises_from_encoder_outputs():
    torch.manual_seed(0)
    cb = Codebook(n_codes=16, embedding_dim=4).train()
    z = torch.randn(2, 4, 1, 2, 2)  # 8 vectors < 16 codes: tiled with noise of std 0.01 / sqrt(4)
    cb(z)
    flat = z.movedim(1, -1).reshape(-1, 4)
    dist = torch.cdist(cb.z_avg, flat).min(1).values  # z_avg holds the init (embeddings moved by EMA)
    assert bool(cb.initialized)
    assert dist.max() < 0.05


def test_ema_codebook_update_matches_the_formula():
    torch.manual_seed(0)
    K, D, d = 4, 3, 0.9
    cb = Codebook(K, D, ema_decay=d).train()
    cb.initialized.fill_(True)
    cb.embeddings.copy_(torch.tensor([[0.0, 0, 0], [10, 0, 0], [0, 10, 0], [0, 0, 10]]))
    cb.z_avg.copy_(cb.embeddings * 5)
    cb.N.fill_(5.0)
    z = torch.tensor([[0.1, 0, 0], [9, 0, 0], [11, 1, 0], [0, 0, 12]])  # codes 0, 1, 1, 3
    out = cb(z.t().reshape(1, D, 1, 1, 4))
    assert out["codes"].flatten().tolist() == [0, 1, 1, 3]
    n = torch.tensor([1.0, 2, 0, 1])
    N = d * 5 + (1 - d) * n
    z_avg = d * 5 * torch.tensor([[0.0, 0, 0], [10, 0, 0], [0, 10, 0], [0, 0, 10]])
    z_avg[0] += (1 - d) * z[0]
    z_avg[1] += (1 - d) * (z[1] + z[2])
    z_avg[3] += (1 - d) * z[3]
    weights = (N + 1e-7) / (N.sum() + K * 1e-7) * N.sum()
    assert torch.allclose(cb.N, N)
    assert torch.allclose(cb.z_avg, z_avg)
    assert torch.allclose(cb.embeddings, z_avg / weights[:, None])  # every code alive (N >= 1)
    # the commitment loss and perplexity of this batch
    e = torch.tensor([[0.0, 0, 0], [10, 0, 0], [10, 0, 0], [0, 0, 10]])
    assert out["commitment_loss"].item() == pytest.approx(0.25 * F.mse_loss(z, e).item())
    p = n / 4
    assert out["perplexity"].item() == pytest.approx(float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum())), rel=1e-5)


def test_eval_mode_and_encode_leave_the_codebook_alone():
    c = tiny()
    torch.manual_seed(0)
    model = VQVAE(c)
    x = torch.rand(4, 3, *c.input_shape) - 0.5
    model(x)  # init + one EMA step
    before = {k: v.clone() for k, v in model.codebook.state_dict().items()}
    model.encode(x)  # train mode, but encode only looks codes up
    model.eval()
    model(x)
    for k, v in model.codebook.state_dict().items():
        assert torch.equal(v, before[k]), k
    model.train()
    model(x)
    assert not torch.equal(model.codebook.embeddings, before["embeddings"])
    assert not torch.equal(model.codebook.N, before["N"])


def test_dead_codes_restart_from_encoder_outputs():
    torch.manual_seed(0)
    K, D = 8, 4
    cb = Codebook(K, D).train()
    cb.initialized.fill_(True)
    cb.embeddings.copy_(torch.full((K, D), 100.0))  # codes 1..7 far from the data ...
    cb.embeddings[0] = 0.0
    cb.z_avg.copy_(cb.embeddings * 10)
    cb.N.copy_(torch.tensor([10.0] + [0.0] * (K - 1)))  # ... and dead (EMA count < 1)
    z = torch.randn(1, D, 4, 4, 4)  # 64 vectors near the origin
    flat = z.movedim(1, -1).reshape(-1, D)
    first = cb(z)
    assert first["codes"].unique().tolist() == [0]  # everything went to the one live code
    assert first["perplexity"].item() == pytest.approx(1.0)
    # each dead code now holds one of the batch's encoder outputs (no noise: 64 >= K)
    dist = torch.cdist(cb.embeddings[1:], flat).min(1).values
    assert dist.max() < 1e-5
    second = cb(z)
    assert len(second["codes"].unique()) > K // 2  # the revived codes are used
    assert second["perplexity"].item() > 3.0


def test_straight_through_gradient():
    torch.manual_seed(0)
    cb = Codebook(8, 4).train()
    z = torch.randn(2, 4, 1, 2, 2, requires_grad=True)
    out = cb(z)
    out["embeddings"].sum().backward()
    assert torch.allclose(z.grad, torch.ones_like(z))  # identity gradient through the quantiser


# ----------------------------------------------------------------------------- data


def test_preprocess():
    clips = np.zeros((2, 4, 16, 16, 3), np.uint8)
    clips[0, 1, 2, 3] = [0, 128, 255]
    x = preprocess(clips)
    assert x.shape == (2, 3, 4, 16, 16) and x.dtype == torch.float32
    assert x[0, :, 1, 2, 3].tolist() == pytest.approx([-0.5, 128 / 255 - 0.5, 0.5], abs=1e-6)
    assert x.min() >= -0.5 and x.max() <= 0.5
    assert torch.equal(preprocess(torch.from_numpy(clips)), x)


def test_preprocess_errors():
    with pytest.raises(ValueError, match=r"clips must be uint8 of shape \(B, T, H, W, 3\); got torch.float32"):
        preprocess(np.zeros((1, 4, 16, 16, 3), np.float32))
    with pytest.raises(ValueError, match=r"got torch.uint8 of shape \(1, 3, 4, 16, 16\)"):
        preprocess(np.zeros((1, 3, 4, 16, 16), np.uint8))
    with pytest.raises(TypeError, match="clips must be a numpy array or a torch tensor; got list"):
        preprocess([[0]])


def test_pick_device():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


# ----------------------------------------------------------------------------- training


def test_training_beats_the_mean_frame(trained, squares):
    model, metrics, _ = trained
    assert not model.training
    assert set(metrics) >= {"psnr", "psnr_baseline", "perplexity", "dead_codes", "recon_mse", "steps", "wall_s"}
    assert metrics["steps"] == 150 and metrics["wall_s"] > 0
    assert metrics["heldout"] and metrics["eval_clips"] == 8  # 10% of 80 clips held out
    assert metrics["psnr"] == pytest.approx(-10 * np.log10(metrics["recon_mse"]))
    # the trivial baseline, computed here independently on all clips (in-sample, so generous)
    baseline = mean_frame_psnr(squares)
    # measured: 12.5 dB vs 9.6 dB after 150 steps (a continuous autoencoder of this size: 14 dB)
    assert metrics["psnr"] > baseline + 2.0, (metrics, baseline)
    assert metrics["perplexity"] > 4.0
    assert 0 <= metrics["dead_codes"] < 32 and isinstance(metrics["dead_codes"], int)


def test_psnr_baseline_is_the_mean_frame():
    clips = moving_squares(12, 4, 16, seed=3)
    _, metrics = train_vqvae(clips, tiny(), steps=1, batch_size=2, device="cpu", holdout=0)
    assert not metrics["heldout"] and metrics["eval_clips"] == 12
    assert metrics["psnr_baseline"] == pytest.approx(mean_frame_psnr(clips), rel=1e-9)


def test_progress_every_tenth(trained):
    _, _, calls = trained
    assert [step for step, _ in calls] == list(range(15, 151, 15))
    assert all(set(m) == {"loss", "recon_loss", "commitment_loss", "perplexity"} for _, m in calls)
    assert calls[-1][1]["recon_loss"] < calls[0][1]["recon_loss"]


def test_training_is_deterministic(squares):
    def run(seed):
        model, metrics = train_vqvae(squares, tiny(), steps=3, batch_size=4, seed=seed, device="cpu")
        return model.state_dict(), metrics

    a, ma = run(0)
    b, mb = run(0)
    c, _ = run(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert ma["psnr"] == mb["psnr"]
    assert not torch.equal(a["codebook.embeddings"], c["codebook.embeddings"])


def test_train_errors(squares):
    with pytest.raises(ValueError, match=r"clips must be uint8 of shape \(n, 8, 16, 16, 3\)"):
        train_vqvae(squares, tiny(clip_frames=8), steps=1)
    with pytest.raises(ValueError, match="clips is empty"):
        train_vqvae(squares[:0], tiny(), steps=1)
    with pytest.raises(ValueError, match="'steps' must be a positive int; got 0"):
        train_vqvae(squares, tiny(), steps=0)
    with pytest.raises(ValueError, match="'batch_size' must be a positive int; got 0"):
        train_vqvae(squares, tiny(), steps=1, batch_size=0)
    with pytest.raises(ValueError, match="'holdout' must be an int >= 0; got -1"):
        train_vqvae(squares, tiny(), steps=1, holdout=-1)


# ----------------------------------------------------------------------------- tokenize and files


def test_tokenize(trained, squares):
    model, _, _ = trained
    tokens = tokenize(model, squares[:10], batch_size=4, device="cpu")
    assert tokens.shape == (10, 2, 4, 4) and tokens.dtype == np.int16
    with torch.no_grad():
        codes = model.encode(preprocess(squares[:10]))
    assert np.array_equal(tokens, codes.numpy())
    assert tokenize(model, squares[:0], device="cpu").shape == (0, 2, 4, 4)
    model.train()
    tokenize(model, squares[:2], device="cpu")
    assert model.training  # mode restored
    model.eval()
    with pytest.raises(ValueError, match=r"clips must be uint8 of shape \(n, 4, 16, 16, 3\)"):
        tokenize(model, squares[:, :2])
    with pytest.raises(ValueError, match="'batch_size' must be a positive int; got 0"):
        tokenize(model, squares, batch_size=0)


def test_save_load_round_trip(trained, squares, tmp_path):
    model, _, _ = trained
    path = save_vqvae(model, tmp_path / "sub" / "vqvae.pt")
    ckpt = torch.load(path, weights_only=True)  # plain types and tensors only
    assert ckpt["config"] == {**dataclasses.asdict(model.config), "downsample": [2, 4, 4]}
    loaded = load_vqvae(path)
    assert not loaded.training and loaded.config == model.config
    assert bool(loaded.codebook.initialized)
    x = preprocess(squares[:4])
    with torch.no_grad():
        assert torch.equal(loaded.encode(x), model.encode(x))
        assert torch.equal(loaded(x)["recon"], model(x)["recon"])
    assert np.array_equal(tokenize(loaded, squares, device="cpu"), tokenize(model, squares, device="cpu"))


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="VQ-VAE checkpoint .*missing.pt does not exist"):
        load_vqvae(tmp_path / "missing.pt")
    torch.save({"model": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt is not a brainray VQ-VAE checkpoint"):
        load_vqvae(tmp_path / "other.pt")
    torch.save({"format": "brainray.vqvae/1", "config": {"n_layer": 2}, "state_dict": {}}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"unknown VQVAEConfig keys \['n_layer'\]"):
        load_vqvae(tmp_path / "bad.pt")



@pytest.mark.parametrize("damage", ["truncated", "zeroed", "not torch", "empty"])
def test_a_damaged_checkpoint_is_named_without_unsafe_advice(tmp_path, damage):
    path = save_vqvae(VQVAE(tiny()), tmp_path / "vqvae.pt")
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "zeroed": bytes(len(data)),
                      "not torch": b"not a torch file\n" * 9, "empty": b""}[damage])
    with pytest.raises(CorruptCheckpointError, match=r"Checkpoint .*vqvae.pt cannot be read: it is corrupt") as err:
        load_vqvae(path)
    msg = str(err.value)
    assert "delete the dataset folder and rerun prepare" in msg
    assert "weights_only" not in msg and err.value.__suppress_context__  # torch's advice is not passed on
    with pytest.raises(FileNotFoundError, match=r"Checkpoint .*nope.pt does not exist"):
        read_checkpoint(tmp_path / "nope.pt")

def test_save_reconstructions_png(trained, squares, tmp_path):
    from PIL import Image

    model, _, _ = trained
    path = save_reconstructions_png(model, squares[:3], tmp_path / "recon.png", n=2)
    with Image.open(path) as im:
        assert im.size == (4 * 18 - 2, 4 * 18 - 2)  # 4 frames across; 2 clips x (original, recon) down
        grid = np.asarray(im)
    assert np.array_equal(grid[:16, :16], squares[0, 0])  # top-left: the first original frame
    with pytest.raises(ValueError, match="clips is empty"):
        save_reconstructions_png(model, squares[:0], tmp_path / "none.png")


def test_read_only_clips_are_read_without_a_warning():
    """Ray Data hands out read-only batches; torch warns on wrapping them, so they are copied."""
    rng = np.random.default_rng(0)
    clips = rng.integers(0, 256, (5, 4, 16, 16, 3), dtype=np.uint8)
    locked = clips.copy()
    locked.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a UserWarning here fails the test
        mean, var = frame_stats([locked])
        x = preprocess(locked)
    ref_mean, ref_var = frame_stats([clips])
    torch.testing.assert_close(mean, ref_mean)
    assert var == pytest.approx(ref_var)
    torch.testing.assert_close(x, preprocess(clips))
