"""LION-S and LION-D stay finite in bf16 at 16k tokens with gates near 1 and near 0, in every form (CUDA only;
tests/test_faults_vision.py checks the same at 1024 tokens on the CPU). The attention form is checked forward and
backward (the fused training kernel), the chunk and RNN forms forward (the fused inference kernels)."""
import pytest
import torch

from lion import decay_log_gates, lion_attention, selective_log_gates

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

B, H, L, D = 1, 2, 16384, 64


def _inputs(mask, gate):
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(B, H, L, D, device="cuda", generator=g) for _ in range(3))
    value = 30.0 if gate == "open" else -30.0  # Selective: a = sigmoid(-z) -> z = -30 opens; Decay: sigmoid(a)
    pre = torch.full((B, L, H) if mask == "Selective" else (H,), value, device="cuda")
    return q, k, v, pre


def _attention(q, k, v, pre, mask, form, backend=None):
    log_a = selective_log_gates(-pre) if mask == "Selective" else decay_log_gates(pre, L, B)
    return lion_attention(q, k, v, log_a, feature_map="normalized_silu", scale=D ** -0.5, form=form, backend=backend)


@pytest.mark.parametrize("form", ["attention", "chunk", "rnn"])
@pytest.mark.parametrize("mask", ["Selective", "Decay"])
@pytest.mark.parametrize("gate", ["open", "shut"])
def test_finite_in_bf16_at_16k_tokens(form, mask, gate):
    q, k, v, pre = _inputs(mask, gate)
    with torch.no_grad():
        reference = _attention(*(t.double() for t in (q, k, v, pre)), mask, "attention", backend="torch").float()
    train = form == "attention"
    leaves = [t.requires_grad_(train) for t in (q, k, v, pre)]
    with torch.autocast("cuda", dtype=torch.bfloat16), torch.set_grad_enabled(train):
        y = _attention(*leaves, mask, form)
    assert torch.isfinite(y).all(), "y not finite"
    err = (y.float() - reference).abs().max() / reference.abs().max()
    assert err < 0.05, f"relative error {err:.3g}"
    if train:
        y.float().square().mean().backward()
        for name, t in zip(("dq", "dk", "dv", "dgate"), leaves):
            assert torch.isfinite(t.grad).all(), f"{name} not finite"
