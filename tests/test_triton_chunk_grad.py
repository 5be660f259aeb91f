"""Fused chunk form for training (lion.ops.triton.chunk_grad): forward and the gradients of q, k, v and every gate
parameter against the fp64 attention form (torch).

Marked ``triton``: on CUDA, or on the CPU under the Triton interpreter (``make test-triton``) with tiny shapes (odd
lengths, a last chunk of one token, batch 1, padding, ♮ orders); elsewhere they skip. The GPU-only cases use the
models' shapes (ViT L = 197, BERT L = 128, d = 64) and a long one.
"""

import pytest
import torch
from conftest import CUDA, DEV, FUSED_KERNEL_MARKS, GPU_MODEL_SHAPES, INTERPRET

from lion import curve_permutation, decay_log_gates, lion_attention, selective_log_gates
from lion.masks import gate_arguments

pytestmark = FUSED_KERNEL_MARKS
gpu_only = pytest.mark.skipif(not CUDA, reason="model shapes run on the GPU only")
FEATURE = {"Lit": "elu_plus_one", "Decay": "normalized_silu", "Selective": "normalized_silu"}

if INTERPRET or CUDA:
    from lion.ops.triton.chunk_grad import chunk_attention_trainable


def rel_err(x, ref):
    return ((x.double() - ref.double()).norm() / ref.double().norm()).item()


def make_case(mask, order, B, H, L, D, DV, pad, seed, dtype):
    """Raw q, k, v leaves, the gate parameters (one per order), the padding mask and a closure building
    (log_a, orders) from the parameters (Decay: per head (H,); Selective: per token from (B, L, H))."""
    g = torch.Generator().manual_seed(seed)
    leaves = [torch.randn(B, H, L, d, generator=g).to(DEV, dtype).requires_grad_() for d in (D, D, DV)]
    n_orders = 2 if order == "S" else 1
    params = [(torch.randn(H, generator=g) if mask == "Decay" else 2 * torch.randn(B, L, H, generator=g))
              .to(DEV).requires_grad_() for _ in range(n_orders if mask != "Lit" else 0)]
    kpm = None
    if pad:
        kpm = torch.ones(B, L, dtype=torch.bool)
        kpm[0, -3:] = False
        kpm[-1, :2] = False
        kpm = kpm.to(DEV)
    perms = None
    if order == "S":
        if int((L - 1) ** 0.5) ** 2 == L - 1:
            perms = [curve_permutation(L, c, 1, DEV) for c in ("s", "sr")]
        else:  # any permutation is a valid order
            perms = [torch.randperm(L, generator=g).to(DEV) for _ in range(2)]

    def gates(params):
        def one(p, perm=None):
            if mask == "Decay":
                return decay_log_gates(p)
            return selective_log_gates(p if perm is None else p[:, perm])
        if mask == "Lit":
            return None, None if perms is None else [(p, None) for p in perms]
        if perms is None:
            return one(params[0]), None
        return None, [(perm, one(p, perm)) for perm, p in zip(perms, params)]
    return leaves, params, kpm, gates


def compare(mask, order="Normal", B=2, H=2, L=21, D=8, DV=8, normalize=True, pad=False, dtype=torch.float32,
            tol=1e-5, seed=0, chunk_size=None):
    leaves, params, kpm, gates = make_case(mask, order, B, H, L, D, DV, pad, seed, dtype)
    kw = dict(feature_map=FEATURE[mask], scale=D ** -0.5, normalize=normalize, key_padding_mask=kpm)
    log_a, orders = gates(params)
    y = chunk_attention_trainable(*leaves, **gate_arguments(log_a, orders, B, L), chunk_size=chunk_size, **kw)
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves + params]
    rlog_a, rorders = gates(ref_leaves[3:])
    ref = lion_attention(*ref_leaves[:3], rlog_a, orders=rorders, backend="torch", form="attention", **kw)
    assert y.shape == ref.shape and y.dtype == dtype
    assert rel_err(y, ref) < tol, rel_err(y, ref)
    gy = torch.randn(ref.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64).to(DEV)
    grads = torch.autograd.grad((y.double() * gy).sum(), leaves + params)
    rgrads = torch.autograd.grad((ref * gy).sum(), ref_leaves)
    for name, x, r in zip(["q", "k", "v", "gate0", "gate1"], grads, rgrads):
        assert torch.isfinite(x).all(), name
        assert rel_err(x, r) < tol, (name, rel_err(x, r))


# (mask, order, normalize, pad, L, B, chunk): L = 17 with chunk 16 and L = 33 with 16 end on a chunk of one token
CPU_CASES = [
    ("Lit", "Normal", True, False, 21, 2, 16), ("Lit", "Normal", False, True, 17, 1, 16),
    ("Decay", "Normal", True, True, 37, 1, 16), ("Decay", "Normal", False, False, 21, 2, None),
    ("Selective", "Normal", True, True, 33, 2, 16), ("Selective", "Normal", False, False, 17, 1, 16),
    ("Selective", "Normal", True, False, 35, 2, 8),
    ("Lit", "S", True, False, 17, 1, 16),
    ("Decay", "S", True, False, 17, 2, 16), ("Decay", "S", False, True, 19, 2, 8),
    ("Selective", "S", True, True, 26, 1, 16), ("Selective", "S", False, True, 21, 2, 16),
]


@pytest.mark.parametrize("mask,order,normalize,pad,L,B,chunk", CPU_CASES)
@pytest.mark.skipif(CUDA, reason="on the GPU the model-shape cases cover these variants")
def test_chunk_grad_matches_reference(mask, order, normalize, pad, L, B, chunk):
    """Forward and gradients of q, k, v (raw, through φ) and every gate parameter, fp32, against fp64."""
    compare(mask, order, B=B, L=L, normalize=normalize, pad=pad, seed=L + B, chunk_size=chunk)


# d = 80 > 64: the backward's operators over k-width values run two column blocks (their gate dot products summed)
@pytest.mark.parametrize("mask,order,D,DV", [("Selective", "S", 8, 16), ("Decay", "Normal", 16, 8),
                                           ("Selective", "Normal", 80, 16)])
@pytest.mark.skipif(CUDA, reason="the GPU cases use d = dv = 64")
def test_chunk_grad_key_and_value_widths_differ(mask, order, D, DV):
    compare(mask, order, B=1, L=19, D=D, DV=DV, pad=True, seed=7, chunk_size=8)


def test_lion_attention_trains_the_chunk_form_fused(monkeypatch):
    """form='chunk' with a gradient goes to the fused op (same values as the torch chunk form) and refuses
    attention dropout in training with one clear line."""
    import lion.attention as attention

    calls = []
    fused = attention.chunk_attention_trainable
    monkeypatch.setattr(attention, "chunk_attention_trainable", lambda *a, **kw: calls.append(1) or fused(*a, **kw))
    leaves, params, kpm, gates = make_case("Selective", "Normal", 2, 2, 19, 8, 8, True, 3, torch.float32)
    kw = dict(feature_map="normalized_silu", scale=0.3, key_padding_mask=kpm, form="chunk", chunk_size=8)
    y = lion_attention(*leaves, gates(params)[0], backend="triton", **kw)
    ref = lion_attention(*leaves, gates(params)[0], backend="torch", **kw)
    assert calls == [1] and rel_err(y, ref) < 1e-5
    with pytest.raises(ValueError, match="form='chunk' has no attention matrix to drop out"):
        lion_attention(*leaves, gates(params)[0], backend="triton", dropout_p=0.1, training=True, **kw)


def test_torch_compile_traces_the_custom_op():
    """fullgraph=True: dynamo must not break the graph at the fused chunk op (per-token gates, two orders, padding);
    forward and gradients match eager. One case: compiling under the interpreter takes half a minute."""
    leaves, params, kpm, gates = make_case("Selective", "S", 2, 2, 17, 8, 8, True, 9, torch.float32)

    def f(q, k, v, *p):
        log_a, orders = gates(list(p))
        return lion_attention(q, k, v, log_a, orders=orders, feature_map="normalized_silu", scale=0.5,
                              key_padding_mask=kpm, form="chunk", chunk_size=8, backend="triton")

    compiled = torch.compile(f, fullgraph=True, backend="inductor" if CUDA else "aot_eager")
    y, yc = f(*leaves, *params), compiled(*leaves, *params)
    assert rel_err(yc, y) < 1e-5
    g = torch.autograd.grad(y.sum(), leaves + params)
    gc = torch.autograd.grad(yc.sum(), leaves + params)
    for a, b in zip(gc, g):
        assert rel_err(a, b) < 1e-5


# --- GPU only: the models' shapes, and a long sequence
@gpu_only
@pytest.mark.parametrize("mask,order,normalize,pad,B,H,L,dtype", GPU_MODEL_SHAPES + [
    ("Selective", "S", True, False, 1, 2, 3137, torch.bfloat16),  # long: ViT-S at 896 px, BERT at 2k
    ("Decay", "Normal", False, True, 1, 2, 2048, torch.float32)])
def test_gpu_model_shapes(mask, order, normalize, pad, B, H, L, dtype):
    """fp32 (IEEE dots) ≤ 1e-4, bf16 ≤ 2e-2 against fp64 on the same inputs."""
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    compare(mask, order, B=B, H=H, L=L, D=64, DV=64, normalize=normalize, pad=pad, dtype=dtype, tol=tol,
            seed=B + L)


@gpu_only
def test_gpu_autocast_keeps_dtypes():
    """Under bf16 autocast with fp32 inputs the op computes in bf16 and the gradients keep their dtypes."""
    leaves, params, _, gates = make_case("Selective", "S", 4, 6, 197, 64, 64, False, 11, torch.float32)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = chunk_attention_trainable(*leaves, **gate_arguments(None, gates(params)[1], 4, 197),
                                      feature_map="normalized_silu",
                                      scale=0.125)
    assert y.dtype == torch.bfloat16
    grads = torch.autograd.grad(y.float().sum(), leaves + params)
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
