"""The log-space masks against brute-force products (docs/lion.md §1)."""
import pytest
import torch
from conftest import brute_force_mask

from lion.masks import decay_log_gates, log_mask, mask, selective_log_gates, selective_log_gates_eps


@pytest.mark.parametrize("L", [1, 2, 17])
def test_selective_mask_equals_products(L):
    torch.manual_seed(L)
    z = 3 * torch.randn(2, L, 3, dtype=torch.float64)
    log_a = selective_log_gates(z)
    a = torch.sigmoid(-z).transpose(1, 2).clone()
    a[..., 0] = 1.0  # the cls gate
    torch.testing.assert_close(mask(log_a), brute_force_mask(a), rtol=1e-12, atol=1e-14)


def test_decay_mask_is_power_of_distance():
    a = torch.tensor([0.3, -1.2], dtype=torch.float64)
    M = mask(decay_log_gates(a, 9, batch=2))
    lam = torch.sigmoid(a)[:, None, None]
    i = torch.arange(9)
    expected = lam ** (i[:, None] - i[None, :]).abs()
    torch.testing.assert_close(M, expected.expand(2, -1, -1, -1), rtol=1e-12, atol=0)


def test_cls_gate_only_affects_forward_direction():
    z = torch.randn(1, 6, 1, dtype=torch.float64)
    M = mask(selective_log_gates(z, first_gate_one=True))
    M_raw = mask(selective_log_gates(z, first_gate_one=False))
    # a_0 enters only M_i0 for i > 0 (the product includes the key's gate, excludes the query's)
    differs = (M - M_raw).abs() > 1e-9
    assert differs[..., 1:, 0].all() and differs.sum() == 5


def test_extreme_gates_stay_finite():
    z = torch.tensor([[-1e4], [1e4], [0.0], [80.0], [-80.0]], dtype=torch.float32).T[None].transpose(1, 2)
    log_a = selective_log_gates(z)
    assert torch.isfinite(log_a).all()
    M = log_mask(log_a).exp()
    assert torch.isfinite(M).all() and (M <= 1).all() and (M >= 0).all()
    assert torch.isfinite(selective_log_gates_eps(z)).all()


def test_mlm_gate_eps_matches_definition():
    z = torch.randn(2, 7, 3, dtype=torch.float64)
    expected = torch.log(1 - torch.sigmoid(z) + 1e-7).transpose(1, 2)
    torch.testing.assert_close(selective_log_gates_eps(z), expected, rtol=1e-12, atol=1e-12)


def test_perm_gathers_before_the_first_gate():
    """perm: the gates of z[:, perm], the first gate (with first_gate_one) being entry 0 of that order."""
    z = torch.randn(2, 7, 3, dtype=torch.float64)
    perm = torch.tensor([3, 0, 6, 1, 5, 2, 4])
    for fn in (selective_log_gates, selective_log_gates_eps):
        torch.testing.assert_close(fn(z, perm=perm), fn(z[:, perm]), rtol=0, atol=0)
    log_a = selective_log_gates(z, perm=perm)
    assert (log_a[..., 0] == 0).all() and (log_a[..., 1:] < 0).all()


def test_mask_math_is_fp32_under_bf16_autocast():
    z = torch.randn(1, 33, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        M = mask(selective_log_gates(z.bfloat16()))
    assert M.dtype == torch.float32
