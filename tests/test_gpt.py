import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from brainray import gpt

CONFIGS = [  # (n_embd, n_layer, n_head, vocab, tokens_per_clip)
    (8, 1, 1, 32, 8), (16, 1, 2, 64, 16), (24, 2, 3, 64, 8), (32, 2, 4, 128, 16), (48, 3, 2, 128, 8),
    (64, 1, 8, 256, 16), (64, 4, 4, 64, 4), (96, 2, 2, 128, 32), (40, 5, 5, 96, 12), (128, 2, 8, 512, 8),
]


def _eager(spec):
    model = gpt.build_model(spec)
    # The fused CPU attention kernel is invisible to FlopCounterMode; eager attention runs the
    # same matmuls as explicit bmm, so the counter sees every FLOP the trial really runs.
    model.config._attn_implementation = "eager"
    return model


@pytest.mark.parametrize("d,L,H,V,T", CONFIGS)
def test_train_flops_match_flop_counter_full_model(d, L, H, V, T):
    model = _eager(gpt.GPTSpec(d, L, H, V, T, dropout=0.0))
    seq = torch.randint(0, V, (2, 2 * T))
    with FlopCounterMode(display=False) as fc:
        model(input_ids=seq, labels=seq).loss.backward()
    assert fc.get_total_flops() / seq.numel() == gpt.train_flops_per_token(L, d, V, 2 * T)


@pytest.mark.parametrize("d,L,H,V,T", CONFIGS)
def test_train_flops_match_flop_counter_next_clip_loss(d, L, H, V, T):
    """What the trial runs: logits only for the T positions that predict the next clip."""
    model = _eager(gpt.GPTSpec(d, L, H, V, T, dropout=0.0))
    seq = torch.randint(0, V, (3, 2 * T))
    with FlopCounterMode(display=False) as fc:
        gpt.next_clip_loss(model, seq, T).backward()
    assert fc.get_total_flops() / seq.numel() == gpt.train_flops_per_token(L, d, V, 2 * T, n_logits=T)


def test_initial_loss_is_log_vocab():
    torch.manual_seed(0)
    V, T = 256, 32
    model = gpt.build_model(gpt.GPTSpec(64, 2, 4, V, T, dropout=0.0)).eval()
    seq = torch.randint(0, V, (16, 2 * T))
    with torch.no_grad():
        loss = gpt.next_clip_loss(model, seq, T).item()
    assert abs(loss - math.log(V)) < 0.05 * math.log(V)


_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("device,dtype", [
    ("cpu", "fp32"), ("cpu", "bf16"), pytest.param("cuda", "fp32", marks=_CUDA),
    pytest.param("cuda", "bf16", marks=_CUDA), pytest.param("cuda", "fp16", marks=_CUDA)])
def test_train_step_learns_and_refuses_non_finite_loss(device, dtype):
    """train_step lowers the loss on a repeated batch; a non-finite loss comes back before
    any parameter or optimiser state changes. Decay applies to matrices only; the fused
    AdamW runs on CUDA, fp16 through the GradScaler."""
    torch.manual_seed(0)
    V, T = 64, 8
    model = gpt.build_model(gpt.GPTSpec(32, 2, 2, V, T, dropout=0.0)).to(device)
    opt = gpt.build_optimizer(model, lr=3e-3, weight_decay=0.1)
    assert {p.dim() >= 2 for p in opt.param_groups[0]["params"]} == {True}
    assert opt.param_groups[1]["weight_decay"] == 0.0
    assert {p.dim() for p in opt.param_groups[1]["params"]} == {1}
    assert opt.defaults["fused"] == (device == "cuda")
    scaler = torch.amp.GradScaler(device, enabled=dtype == "fp16")
    seq = torch.randint(0, V, (8, 2 * T), device=device)
    amp = gpt.autocast_dtype(dtype)
    losses = [gpt.train_step(model, opt, scaler, seq, T, amp, grad_clip=1.0) for _ in range(20)]
    assert losses[-1] < losses[0] - 0.5
    with torch.no_grad():
        model.transformer.wte.weight[0, 0] = float("nan")  # poisons every forward
    before = {k: v.clone() for k, v in model.state_dict().items()}
    steps = [s["step"].item() for s in opt.state.values()]
    assert math.isnan(gpt.train_step(model, opt, scaler, seq, T, amp, grad_clip=1.0))
    after = model.state_dict()
    assert all(torch.equal(before[k].nan_to_num(), after[k].nan_to_num()) for k in before)
    assert [s["step"].item() for s in opt.state.values()] == steps
    assert all(p.grad is None for p in model.parameters())


def test_heads_must_divide_width():
    with pytest.raises(ValueError, match="n_head=3 does not divide n_embd=16"):
        gpt.GPTSpec(16, 1, 3, 32, 8)


def test_param_counts():
    spec = gpt.GPTSpec(32, 2, 4, 64, 8)
    total, nonembed = gpt.count_params(gpt.build_model(spec))
    assert total - nonembed == 64 * 32 + 16 * 32  # wte (tied with the head) + wpe
    assert nonembed == 2 * (12 * 32 * 32 + 13 * 32) + 2 * 32  # blocks + final LayerNorm


def test_feature_layer_and_features():
    assert gpt.feature_layer(8) == 5  # the paper probes block 5 of 8
    assert gpt.feature_layer(1) == 1
    assert gpt.feature_layer(4, 1.0) == 4
    with pytest.raises(ValueError, match="'feature_depth' must be in"):
        gpt.feature_layer(4, 0.0)
    spec = gpt.GPTSpec(16, 2, 2, 32, 8)
    model = gpt.build_model(spec).eval()
    f = gpt.clip_features(model, torch.randint(0, 32, (5, 16)), (2, 2, 2), layer=1)
    assert f.shape == (5, 2, 16)


def test_autocast_dtype_names():
    assert gpt.autocast_dtype("fp32") is None
    assert gpt.autocast_dtype("bf16") is torch.bfloat16
    with pytest.raises(ValueError, match="'dtype' must be one of"):
        gpt.autocast_dtype("fp8")
