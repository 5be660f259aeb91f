"""Fused Triton attention form (lion/ops/triton) against the torch reference (lion.ops.naive_sums, fp64).

Runs only where the kernels can run: on CUDA, or on CPU under TRITON_INTERPRET=1, which must be set before triton
is imported; tests/test_triton_attention.py runs this file in such a subprocess. The GPU-only cases use the
realistic shapes of the models (ViT L=197, BERT L=128, d=64).
"""
import itertools
import os
import subprocess
import sys

import pytest
import torch

import lion
from conftest import log_gates, rel_err_l2
from lion import curve_permutation, decay_log_gates, lion_attention, selective_log_gates
from lion.ops import naive_sums

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
CUDA = torch.cuda.is_available() and not INTERPRET
pytestmark = pytest.mark.skipif(not (INTERPRET or CUDA), reason="needs CUDA or TRITON_INTERPRET=1 (set before import)")
DEV = "cuda" if CUDA else "cpu"
MASKS = ("Lit", "Decay", "Selective")

if INTERPRET or CUDA:
    from lion.ops.triton import attention_sums


def make_inputs(mask, B, H, L, D, DV, dtype, seed):
    g = torch.Generator(device="cpu").manual_seed(seed)
    q, k = (torch.rand(B, H, L, D, generator=g) for _ in range(2))  # positive features, as after φ
    v = torch.randn(B, H, L, DV, generator=g)
    param = {"Lit": None, "Decay": torch.randn(H, generator=g),
             "Selective": 2 * torch.randn(B, L, H, generator=g)}[mask]
    leaves = [t.to(DEV, dtype).requires_grad_() for t in (q, k, v)]
    if param is not None:
        leaves.append(param.to(DEV).requires_grad_())
    return leaves


def check(mask, B, H, L, D, DV, dtype, with_den, tol, lit_kv=None, seed=0):
    leaves = make_inputs(mask, B, H, L, D, DV, dtype, seed)
    q, k, v = leaves[:3]
    param = leaves[3] if len(leaves) > 3 else None
    scale = D ** -0.5
    num, den = attention_sums(q, k, v, log_gates(mask, param, B, L), scale, with_den, 32, lit_kv=lit_kv)
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    rq, rk, rv = ref_leaves[:3]
    rparam = ref_leaves[3] if len(ref_leaves) > 3 else None
    rnum, rden = naive_sums(rq, rk, rv, log_gates(mask, rparam, B, L), scale, with_den)
    assert num.dtype == dtype and num.shape == rnum.shape
    assert rel_err_l2(num, rnum) < tol
    assert (den is None) == (not with_den)
    g = torch.Generator(device="cpu").manual_seed(seed + 1)
    gnum = torch.randn(rnum.shape, generator=g, dtype=torch.float64).to(DEV)
    loss, rloss = (num.double() * gnum).sum(), (rnum * gnum).sum()
    if with_den:
        assert den.dtype == torch.float32 and rel_err_l2(den, rden) < tol
        gden = torch.randn(rden.shape, generator=g, dtype=torch.float64).to(DEV)
        loss, rloss = loss + (den.double() * gden).sum(), rloss + (rden * gden).sum()
    grads = torch.autograd.grad(loss, leaves)
    rgrads = torch.autograd.grad(rloss, ref_leaves)
    for name, x, ref in zip(("q", "k", "v", "gate"), grads, rgrads):
        assert torch.isfinite(x).all(), name
        assert rel_err_l2(x, ref) < tol, (name, rel_err_l2(x, ref))


@pytest.mark.parametrize("mask,L,B,with_den",  # each odd length with batch 1 and 3, with and without den
                         [(m, *c) for m in MASKS for c in [(17, 1, True), (17, 3, False), (33, 1, False), (33, 3, True)]])
def test_kernel_matches_reference(mask, L, B, with_den):
    """Forward and gradients (q, k, v and the gate parameter: LION-D's per-head a, LION-S's per-token z)."""
    check(mask, B, 2, L, 8, 12, torch.float32, with_den, 1e-5, lit_kv=False, seed=L + B)


@pytest.mark.parametrize("L", [33, 47])
def test_steep_gates_stay_finite(L):
    """log a ≈ −6 per token: prefix sums reach −280, so any exp(−P) or exp(+C) would overflow fp32."""
    B, H, D = 2, 2, 8
    torch.manual_seed(L)
    q, k, v = (torch.rand(B, H, L, D, device=DEV, requires_grad=True) for _ in range(3))
    z = (6 + torch.randn(B, L, H, device=DEV)).requires_grad_()
    num, den = attention_sums(q, k, v, selective_log_gates(z), 1.0, True)
    ref = naive_sums(*(t.detach().double() for t in (q, k, v)), selective_log_gates(z.detach().double()), 1.0, True)
    assert rel_err_l2(num, ref[0]) < 1e-5 and rel_err_l2(den, ref[1]) < 1e-5
    grads = torch.autograd.grad(num.sum() + den.sum(), (q, k, v, z))
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("L", [5, 33])
def test_lit_kv_path_matches_reference(L):
    check("Lit", 2, 2, L, 8, 12, torch.float32, True, 1e-5, lit_kv=True, seed=L)


@pytest.mark.parametrize("mask,normalize", list(itertools.product(MASKS, [True, False])))
def test_lion_attention_backends_agree(mask, normalize):
    """Through the dispatcher: both ♮ orders, key padding, strided q/k/v (as the models pass them), batch 3."""
    B, H, L, D = 3, 2, 17, 8
    torch.manual_seed(7)
    qkv = torch.randn(B, L, 3, H, D, device=DEV).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0].sigmoid(), qkv[1].sigmoid(), qkv[2]
    pad = torch.ones(B, L, dtype=torch.bool, device=DEV)
    pad[1, -5:] = False
    pad[2, :3] = False
    z = torch.randn(B, L, H, device=DEV)
    a = torch.randn(H, device=DEV)
    perms = [curve_permutation(L, c, 1, DEV) for c in ("s", "sr")]
    for orders in (None, "S"):
        kw = dict(scale=D ** -0.5, normalize=normalize, key_padding_mask=pad)
        if orders == "S" and mask != "Lit":
            kw["orders"] = [(p, decay_log_gates(a, L, B) if mask == "Decay" else selective_log_gates(z[:, p]))
                            for p in perms]
            la = None
        else:
            la = log_gates(mask, a if mask == "Decay" else z, B, L)
        y = lion_attention(q, k, v, la, backend="triton", **kw)
        kw64 = {**kw, "orders": [(p, g.double()) for p, g in kw["orders"]]} if "orders" in kw else kw
        ref = lion_attention(q.double(), k.double(), v.double(), None if la is None else la.double(),
                             backend="torch", **kw64)
        assert rel_err_l2(y, ref) < 1e-5


def test_cpu_without_interpreter_fails_clearly():
    """In a process without TRITON_INTERPRET, backend='triton' on CPU tensors names the fix instead of crashing."""
    code = ("import torch, pytest, lion\n"
            "x = torch.rand(1, 1, 4, 8)\n"
            "with pytest.raises(ValueError, match=\"backend='torch'\"):\n"
            "    lion.lion_attention(x, x, x, torch.zeros(1, 1, 4), backend='triton')\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    assert subprocess.run([sys.executable, "-c", code], env=env, timeout=120).returncode == 0


def test_registered_and_dispatched():
    assert lion.attention.FUSED["attention"] is attention_sums
    with pytest.raises(ValueError, match="backend"):
        lion_attention(torch.rand(1, 1, 4, 8), torch.rand(1, 1, 4, 8), torch.rand(1, 1, 4, 8), backend="cuda")


def test_torch_compile_traces_the_custom_op():
    """fullgraph=True: dynamo must not break the graph at the fused op; forward and gradients match eager."""
    B, H, L, D = 2, 2, 17, 8
    q, k, v = (torch.rand(B, H, L, D, device=DEV, requires_grad=True) for _ in range(3))
    z = torch.randn(B, L, H, device=DEV, requires_grad=True)

    def f(q, k, v, z):
        return lion_attention(q, k, v, selective_log_gates(z), scale=0.5, backend="triton")

    compiled = torch.compile(f, fullgraph=True, backend="inductor" if CUDA else "aot_eager")
    y, yc = f(q, k, v, z), compiled(q, k, v, z)
    assert rel_err_l2(yc, y) < 1e-5
    g, gc = torch.autograd.grad(y.sum(), (q, k, v, z)), torch.autograd.grad(yc.sum(), (q, k, v, z))
    for a, b in zip(gc, g):
        assert rel_err_l2(a, b) < 1e-5


# --- GPU only: the models' shapes, fp32 (IEEE dots) ≤ 1e-4 and bf16 ≤ 1e-2 against fp64 on the same inputs
GPU_SHAPES = [(8, 6, 197, True), (128, 12, 197, True), (64, 12, 128, False)]  # the last: BERT MLM, no normaliser


@pytest.mark.skipif(not CUDA, reason="autocast shapes run on the GPU only")
def test_gpu_autocast_mixed_dtypes():
    """As in the models under bf16 autocast: fp32 features (normalised φ) with bf16 v; grads keep their dtypes."""
    B, H, L, D = 16, 6, 197, 64
    q, k = (torch.rand(B, H, L, D, device=DEV, requires_grad=True) for _ in range(2))
    v = torch.randn(B, H, L, D, device=DEV, dtype=torch.bfloat16, requires_grad=True)
    z = torch.randn(B, L, H, device=DEV, requires_grad=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        num, den = attention_sums(q, k, v, selective_log_gates(z), D ** -0.5, True)
    ref = naive_sums(q.double(), k.double(), v.double(), selective_log_gates(z.double()), D ** -0.5, True)
    assert num.dtype == torch.bfloat16 and rel_err_l2(num, ref[0]) < 1e-2 and rel_err_l2(den, ref[1]) < 1e-2
    dq, dz = torch.autograd.grad(num.float().sum() + den.sum(), (q, z))
    rdq, rdz = torch.autograd.grad(ref[0].sum() + ref[1].sum(), (q, z))
    assert dq.dtype == torch.float32 and rel_err_l2(dq, rdq) < 1e-2 and rel_err_l2(dz, rdz) < 1e-2


@pytest.mark.skipif(not CUDA, reason="realistic shapes run on the GPU only")
@pytest.mark.parametrize("B,H,L,with_den", GPU_SHAPES)
@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 1e-2)])
def test_gpu_realistic_shapes(B, H, L, with_den, mask, dtype, tol):
    check(mask, B, H, L, 64, 64, dtype, with_den, tol, seed=B + H + L)
    if mask == "Lit":
        check(mask, B, H, L, 64, 64, dtype, with_den, tol, lit_kv=False, seed=B + H + L)
