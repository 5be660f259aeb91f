"""Fused Triton attention form (lion.ops.triton.naive) against the torch attention form in fp64.

Marked ``triton``: they run on CUDA, or on the CPU under the Triton interpreter (``make test-triton`` sets
TRITON_INTERPRET=1 before triton is imported) with tiny shapes; elsewhere they skip. The GPU-only cases use the
models' shapes (ViT L=197, BERT L=128, d=64).
"""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import CUDA, DEV, FUSED_KERNEL_MARKS, GPU_MODEL_SHAPES, INTERPRET

from lion import curve_permutation, decay_log_gates, lion_attention, selective_log_gates
from lion.masks import gate_arguments, log_mask

pytestmark = FUSED_KERNEL_MARKS
gpu_only = pytest.mark.skipif(not CUDA, reason="model shapes run on the GPU only")
FEATURE = {"Lit": "elu_plus_one", "Decay": "normalized_silu", "Selective": "normalized_silu"}

if INTERPRET or CUDA:
    from lion.ops.triton.common.features import FEATURE_CODES
    from lion.ops.triton.naive import _gate_inputs, attention_fwd, dropout_keep_mask, fused_attention


@pytest.fixture(autouse=True)
def _first_config_only(monkeypatch):
    """Correctness does not depend on the tile sizes: skip autotuning (compiling every config) in tests."""
    if INTERPRET or CUDA:
        import lion.ops.triton.common.launching as launching
        monkeypatch.setattr(launching, "AUTOTUNE", False)


def rel_err(x, ref):
    return ((x.double() - ref.double()).norm() / ref.double().norm()).item()


def make_case(mask, order, B, H, L, D, DV, pad, seed, dtype=torch.float32, per_head=True):
    """Raw q, k, v (strided views of one (B, L, 3, H, d) tensor as the vision model passes them), the gate
    parameters (one per order) and a closure building log_a / orders from them. Decay gates are passed per head,
    (H,), as the vision model does (the kernels' λ^|i−j| path), or with ``per_head=False`` as (B, H, L)."""
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(B, L, 3, H, max(D, DV), generator=g)
    q, k, v = (qkv[..., i, :, :(D if i < 2 else DV)].to(DEV, dtype).transpose(1, 2) for i in range(3))
    leaves = [q.detach().requires_grad_(), k.detach().requires_grad_(), v.detach().requires_grad_()]
    n_orders = 2 if order == "S" else 1
    params = []
    for _ in range(n_orders if mask != "Lit" else 0):
        p = torch.randn(H, generator=g) if mask == "Decay" else 2 * torch.randn(B, L, H, generator=g)
        params.append(p.to(DEV).requires_grad_())
    kpm = None
    if pad:
        kpm = torch.ones(B, L, dtype=torch.bool)
        kpm[0, -3:] = False
        if B > 1:
            kpm[-1, :2] = False
        kpm = kpm.to(DEV)
    perms = None
    if order == "S":
        if int((L - 1) ** 0.5) ** 2 == L - 1:
            perms = [curve_permutation(L, c, 1, DEV) for c in ("s", "sr")]
        else:  # any permutation is a valid order for the kernels
            perms = [torch.randperm(L, generator=g).to(DEV) for _ in range(2)]

    def gates(params):
        def one(p, perm=None):
            if mask == "Decay":
                return decay_log_gates(p) if per_head else decay_log_gates(p, L, B)
            return selective_log_gates(p if perm is None else p[:, perm])
        if mask == "Lit":
            return None, None
        if perms is None:
            return one(params[0]), None
        return None, [(perm, one(p, perm)) for perm, p in zip(perms, params)]
    return leaves, params, kpm, gates


def compare(mask, order="Normal", B=2, H=2, L=21, D=8, DV=8, normalize=True, pad=False, dtype=torch.float32,
            tol=1e-5, seed=0, lit_kv=None, per_head=True):
    leaves, params, kpm, gates = make_case(mask, order, B, H, L, D, DV, pad, seed, dtype, per_head)
    q, k, v = leaves
    kw = dict(feature_map=FEATURE[mask], scale=D ** -0.5, normalize=normalize, key_padding_mask=kpm)
    log_a, orders = gates(params)
    y = fused_attention(q, k, v, **gate_arguments(log_a, orders, B, L), lit_kv=lit_kv, **kw)
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves + params]
    rq, rk, rv = ref_leaves[:3]
    rlog_a, rorders = gates(ref_leaves[3:])
    ref = lion_attention(rq, rk, rv, rlog_a, orders=rorders, backend="torch", **kw)
    assert y.shape == ref.shape and y.dtype == dtype
    assert y.transpose(1, 2).is_contiguous()  # (B, L, H, dv) storage: the model's reshape is free
    assert torch.isfinite(y).all()
    assert rel_err(y, ref) < tol, rel_err(y, ref)
    gy = torch.randn(ref.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64).to(DEV)
    grads = torch.autograd.grad((y.double() * gy).sum(), leaves + params)
    rgrads = torch.autograd.grad((ref * gy).sum(), ref_leaves)
    names = ["q", "k", "v"] + [f"gate{i}" for i in range(len(params))]
    for name, x, r in zip(names, grads, rgrads):
        assert torch.isfinite(x).all(), name
        assert rel_err(x, r) < tol, (name, rel_err(x, r))


CPU_CASES = [  # (mask, order, normalize, pad, L, B)
    ("Lit", "Normal", True, False, 21, 2), ("Lit", "Normal", False, True, 17, 1),
    ("Decay", "Normal", True, False, 37, 1), ("Decay", "Normal", False, True, 21, 2),
    ("Selective", "Normal", True, True, 33, 2), ("Selective", "Normal", False, False, 17, 1),
    ("Selective", "Normal", True, False, 35, 2),
    ("Decay", "S", True, False, 17, 2), ("Decay", "S", False, True, 19, 2), ("Selective", "S", True, False, 26, 1),
    ("Selective", "S", False, True, 21, 2),
]


@pytest.mark.parametrize("mask,order,normalize,pad,L,B", CPU_CASES)
@pytest.mark.skipif(CUDA, reason="on the GPU the model-shape cases (test_gpu_model_shapes) cover these variants")
def test_fused_matches_reference(mask, order, normalize, pad, L, B):
    """Forward and gradients of q, k, v (raw, through φ) and every gate parameter, fp32, against fp64."""
    compare(mask, order, B=B, L=L, normalize=normalize, pad=pad, seed=L + B, lit_kv=False)


@pytest.mark.parametrize("order,L,B,pad", [("Normal", 22, 2, False), ("S", 17, 1, False), ("Normal", 23, 2, True),
                                           ("S", 17, 2, True)])
@pytest.mark.skipif(CUDA, reason="on the GPU the model-shape cases cover both gate paths")
def test_decay_gates_per_token_match_per_head(order, L, B, pad):
    """LION-D's gates given as (B, H, L) take the prefix-sum path; as (H,) the λ^n path (with padding n counts the
    real tokens between, formed by the prologue kernel): both exact."""
    # per token, d log a sums O(L²) fp32 terms per head into 2 numbers: 1.2e-5 seen under triton 3.6's interpreter
    compare("Decay", order, B=B, L=L, seed=L, per_head=False, lit_kv=False, pad=pad, tol=3e-5)
    compare("Decay", order, B=B, L=L, seed=L, per_head=True, lit_kv=False, pad=pad)
    _, params, kpm, gates = make_case("Decay", order, B, 2, L, 8, 8, pad, seed=L)
    log_a, orders = gates(params)
    P = _gate_inputs(**gate_arguments(log_a, orders, B, L), key_padding_mask=kpm)[0]
    assert P.shape == ((2,) if len(params) == 1 else (2, 2))  # per head (H,) or (orders, H): not expanded


@pytest.mark.parametrize("L", [5, 33])
def test_lit_kv_path_matches_reference(L):
    compare("Lit", L=L, lit_kv=True, pad=True, B=2, seed=L)


@pytest.mark.parametrize("T", [32, 80])
@pytest.mark.parametrize("B,L,pad", [(1, 65, False), (2, 67, True)])
def test_lit_kv_split_sums_match_reference(monkeypatch, B, L, pad, T):
    """Slices of T tokens per program. T = 32: three slices, the last of 1 or 3 tokens (2 row blocks each under the
    interpreter): the partial sums of S, z (forward) and dS, dz (backward) over the slices must add up to the
    reference. T = 80: one slice, each pass in one launch (the state summed in the output kernel, dk, dv in dq's)."""
    import lion.ops.triton.lit as lit
    monkeypatch.setattr(lit, "_split", lambda BH, L, device: (T, -(-L // T)))
    compare("Lit", B=B, L=L, lit_kv=True, pad=pad, seed=L)


def assert_matches(y, ref, leaves, ref_leaves, tol=1e-5):
    """y and the gradients of (q, k, v, z) for a random output gradient match the fp64 reference."""
    assert rel_err(y, ref) < tol
    gy = torch.randn(ref.shape, dtype=torch.float64, device=DEV)
    grads = torch.autograd.grad((y.double() * gy).sum(), leaves)
    rgrads = torch.autograd.grad((ref * gy).sum(), ref_leaves)
    for name, x, r in zip(("q", "k", "v", "z"), grads, rgrads):
        assert rel_err(x, r) < tol, (name, rel_err(x, r))


def _dropout_reference(q, k, v, log_a, kpm, keep, p, scale, normalize, eps=1e-6):
    """fp64 attention with the kernel's keep mask: dropout on A for the numerator only."""
    phi = F.normalize(F.silu(q) + 0.5, dim=-1), F.normalize(F.silu(k) + 0.5, dim=-1)
    A = scale * phi[0] @ (phi[1] * kpm[:, None, :, None]).transpose(-1, -2)
    if log_a is not None:
        A = A * log_mask(log_a.masked_fill(~kpm[:, None, :], 0.0)).exp()
    num = (A * keep / (1 - p)) @ v
    return num / (A.sum(-1, keepdim=True) + eps) if normalize else num


@pytest.mark.parametrize("normalize", [False, True])
def test_dropout_matches_reference_with_kernel_mask(normalize):
    """Dropout with the kernel's own keep mask (regenerated in the backward): forward and gradients."""
    B, H, L, D, p = 2, 2, 19, 8, 0.3
    leaves, params, kpm, gates = make_case("Selective", "Normal", B, H, L, D, D, True, seed=3)
    log_a, _ = gates(params)
    seed = torch.tensor([1234], device=DEV)
    P, C, R = _gate_inputs(log_a, None, None, kpm)
    y, _ = attention_fwd(*leaves, P, C, R, kpm, seed, D ** -0.5, 1e-6, FEATURE_CODES["normalized_silu"], normalize,
                         p)
    keep = dropout_keep_mask(seed, B, H, L, p)
    assert 0.5 < keep.float().mean().item() < 0.9  # p = 0.3
    groups = keep[..., :16].reshape(B, H, L, 4, 4).float().mean(-1)  # one Philox draw serves 4 keys
    assert ((groups > 0) & (groups < 1)).float().mean() > 0.5  # … with 4 different numbers (≈ 0.75 for p = 0.3)
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves + params]
    rlog_a, _ = gates(ref_leaves[3:])
    ref = _dropout_reference(*ref_leaves[:3], rlog_a, kpm, keep.double(), p, D ** -0.5, normalize)
    assert_matches(y, ref, leaves + params, ref_leaves)


def test_dropout_p_zero_is_exact_and_training_draws_new_masks():
    leaves, params, kpm, gates = make_case("Decay", "Normal", 1, 2, 17, 8, 8, False, seed=5)
    log_a, _ = gates(params)
    kw = dict(feature_map="normalized_silu", scale=0.3, normalize=False)
    y0 = fused_attention(*leaves, g_gamma=log_a, **kw)
    ref = lion_attention(*leaves, log_a, backend="torch", **kw)
    assert rel_err(y0, ref) < 1e-5
    y1, y2 = (fused_attention(*leaves, g_gamma=log_a, dropout_p=0.5, **kw) for _ in range(2))
    assert not torch.allclose(y1, y2)
    assert rel_err(y1, ref) > 0.05  # dropout did act


@pytest.mark.parametrize("pad", [False, True])
@pytest.mark.skipif(CUDA, reason="the interpreter covers this kernel path; the GPU runs the models' two orders")
def test_one_permuted_order_matches_reference(pad):
    """A single token order other than the natural one (per-token gates in its own indexing, ranks in-kernel)."""
    B, H, L, D = 2, 2, 19, 8
    leaves, params, kpm, gates = make_case("Selective", "Normal", B, H, L, D, D, pad, seed=11)
    perm = torch.randperm(L, generator=torch.Generator().manual_seed(4)).to(DEV)
    kw = dict(feature_map="normalized_silu", scale=D ** -0.5, key_padding_mask=kpm)
    z = params[0]
    y = fused_attention(*leaves, [selective_log_gates(z[:, perm])], perms=[perm], **kw)
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves + params]
    ref = lion_attention(*ref_leaves[:3], orders=[(perm, selective_log_gates(ref_leaves[3][:, perm]))],
                         backend="torch", **kw)
    assert_matches(y, ref, leaves + params, ref_leaves)


def test_more_than_two_orders_fail_clearly():
    leaves, params, _, _ = make_case("Decay", "Normal", 1, 2, 9, 8, 8, False, seed=2)
    orders = [(torch.randperm(9).to(DEV), decay_log_gates(params[0])) for _ in range(3)]
    with pytest.raises(ValueError, match="one or two token orders, got 3.*backend='torch'"):
        fused_attention(*leaves, **gate_arguments(None, orders, 1, 9), feature_map="normalized_silu")


@pytest.mark.parametrize("L", [33, 40])
def test_steep_gates_stay_finite(L):
    """log a ≈ −6 per token: prefix sums reach −240, so any exp(−P) or exp(+C) would overflow fp32."""
    B, H, D = 2, 2, 8
    torch.manual_seed(L)
    q, k, v = (torch.randn(B, H, L, D, device=DEV, requires_grad=True) for _ in range(3))
    z = (6 + torch.randn(B, L, H, device=DEV)).requires_grad_()
    kw = dict(feature_map="normalized_silu", scale=1.0)
    y = fused_attention(q, k, v, selective_log_gates(z), **kw)
    ref = lion_attention(*(t.detach().double() for t in (q, k, v)), selective_log_gates(z.detach().double()),
                         backend="torch", **kw)
    assert rel_err(y, ref) < 1e-5
    assert all(torch.isfinite(g).all() for g in torch.autograd.grad(y.sum(), (q, k, v, z)))


def test_dispatch_picks_the_fused_kernel():
    x = torch.randn(1, 1, 4, 8, device=DEV)
    y = lion_attention(x, x, x, torch.zeros(1, 1, 4, device=DEV), feature_map="normalized_silu", backend="triton")
    assert y.transpose(1, 2).is_contiguous()  # the fused op's (B, L, H, dv) storage, not the torch path's
    with pytest.raises(ValueError, match="backend"):
        lion_attention(x, x, x, backend="cuda")


@pytest.mark.parametrize("mask,order", [("Selective", "Normal"), ("Decay", "S")])
def test_torch_compile_traces_the_custom_op(mask, order):
    """fullgraph=True: dynamo must not break the graph at the fused op (nor at the ♮ ranks); forward and gradients
    match eager. Selective: per-token gates (prefix sums in the prologue kernel); Decay ♮: per-head gates and two
    orders."""
    leaves, params, _, gates = make_case(mask, order, 2, 2, 17, 8, 8, False, seed=9)

    def f(q, k, v, *p):
        log_a, orders = gates(list(p))
        return lion_attention(q, k, v, log_a, orders=orders, feature_map="normalized_silu", scale=0.5,
                              backend="triton")

    # inductor once (on the GPU); the ♮ case only needs dynamo's tracing, which aot_eager checks as well, faster
    backend = "inductor" if CUDA and order == "Normal" else "aot_eager"
    compiled = torch.compile(f, fullgraph=True, backend=backend)
    y, yc = f(*leaves, *params), compiled(*leaves, *params)
    assert rel_err(yc, y) < 1e-5
    g = torch.autograd.grad(y.sum(), leaves + params)
    gc = torch.autograd.grad(yc.sum(), leaves + params)
    for a, b in zip(gc, g):
        assert rel_err(a, b) < 1e-5


def test_natural_orders_made_in_inference_mode():
    """♮ permutations created under inference_mode (as a model builds its orders on its first eval forward) carry
    no version counter: the fused op must not rely on one, and must equal the torch form."""
    leaves, params, _, gates = make_case("Decay", "S", 2, 2, 17, 8, 8, False, seed=10)
    with torch.inference_mode():
        log_a, orders = gates(list(p.detach().clone() for p in params))
        orders = [(p.clone(), la) for p, la in orders]
        assert orders[0][0].is_inference()
        kw = dict(orders=orders, feature_map="normalized_silu", scale=0.5)
        q, k, v = (t.detach() for t in leaves)
        for _ in range(2):  # the second call would hit a cache keyed on versions
            y = lion_attention(q, k, v, log_a, backend="triton", **kw)
            assert rel_err(y, lion_attention(q, k, v, log_a, backend="torch", **kw)) < 1e-5


def test_cpu_without_interpreter_fails_clearly():
    """In a process without TRITON_INTERPRET, backend='triton' on CPU tensors names the fix instead of crashing."""
    code = ("import torch, pytest, lion\n"
            "x = torch.rand(1, 1, 4, 8)\n"
            "with pytest.raises(ValueError, match=\"backend='torch'\"):\n"
            "    lion.lion_attention(x, x, x, torch.zeros(1, 1, 4), backend='triton')\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    assert subprocess.run([sys.executable, "-c", code], env=env, timeout=120).returncode == 0


# --- GPU only: the models' shapes
@gpu_only
@pytest.mark.parametrize("mask,order,normalize,pad,B,H,L,dtype", GPU_MODEL_SHAPES + [
    ("Selective", "S", False, True, 2, 6, 197, torch.bfloat16),
    ("Decay", "S", True, False, 2, 6, 197, torch.float32)])
def test_gpu_model_shapes(mask, order, normalize, pad, B, H, L, dtype):
    """fp32 (IEEE dots) ≤ 1e-4, bf16 ≤ 2e-2 against fp64 on the same inputs."""
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    compare(mask, order, B=B, H=H, L=L, D=64, DV=64, normalize=normalize, pad=pad, dtype=dtype, tol=tol,
            seed=B + L, lit_kv=False)
    if mask == "Lit" and normalize:
        compare(mask, order, B=B, H=H, L=L, D=64, DV=64, dtype=dtype, tol=tol, seed=B + L, lit_kv=True)


@gpu_only
def test_gpu_autocast_keeps_dtypes():
    """Under bf16 autocast with fp32 inputs the op computes in bf16 and the gradients keep their dtypes."""
    leaves, params, _, gates = make_case("Selective", "S", 4, 6, 197, 64, 64, False, seed=11)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = fused_attention(*leaves, **gate_arguments(None, gates(params)[1], 4, 197), feature_map="normalized_silu",
                            scale=0.125)
    assert y.dtype == torch.bfloat16
    grads = torch.autograd.grad(y.float().sum(), leaves + params)
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
