"""The fused Triton selective scan of Vim (image_classification/ops/selective_scan.py) equals the token-by-token
torch scan: y and the gradients of x, dt, A, B, C, alone and inside Vim's mixer and a whole tiny Vim.

Interpreter cases (tiny shapes, the CPU under TRITON_INTERPRET=1: `make test-triton`); GPU cases at Vim-S shapes
(b=4, L=197, d=768, N=16; skipped without CUDA, run by `pytest -m triton` on a GPU machine); and the scan choice
(`resolve_scan`), which needs no kernel run.
"""
import os

import pytest
import timm
import torch
import torch.nn.functional as F
from conftest import rel_err_max

import image_classification.models_vim as models_vim
from image_classification.models_vim import BiMamba, resolve_scan, selective_scan

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
CUDA = torch.cuda.is_available() and not INTERPRET
needs_interpreter = pytest.mark.skipif(not INTERPRET or models_vim.fused_selective_scan is None,
                                       reason="needs triton and TRITON_INTERPRET=1 (make test-triton)")
needs_gpu = pytest.mark.skipif(not CUDA or models_vim.fused_selective_scan is None, reason="needs CUDA and triton")
GRADS = ("x", "dt", "A", "B", "C")


def sequential_scan(x, dt, A, B, C):
    """The definition, token by token, in the inputs' dtype (no D·x term)."""
    h = x.new_zeros(x.shape[0], x.shape[2], A.shape[1])
    ys = []
    for t in range(x.shape[1]):
        h = torch.exp(dt[:, t, :, None] * A) * h + (dt[:, t] * x[:, t])[..., None] * B[:, t, None, :]
        ys.append((h * C[:, t, None, :]).sum(-1))
    return torch.stack(ys, dim=1)


def scan_inputs(b, L, d, N, dtype=torch.float64, device="cpu", seed=0):
    """x (b, L, d) with the channel stride of the model's conv output; B, C slices of one x_proj output; dt > 0."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, d, L, generator=g).transpose(1, 2)
    proj = torch.randn(b, L, 3 + 2 * N, generator=g)
    B, C = proj[..., 3:3 + N], proj[..., 3 + N:]
    dt = F.softplus(torch.randn(b, L, d, generator=g) - 1)
    A = -torch.exp(torch.randn(d, N, generator=g))
    dy = torch.randn(b, L, d, generator=g)
    return [t.to(device, dtype) for t in (x, dt, A, B, C)], dy.to(device)


def fused(*args, **kw):
    return models_vim.fused_selective_scan(*args, **kw)


def close(x, ref, tol) -> bool:
    """rel_err_max(x, ref) < tol; an all-zero reference (dA at L = 1: h_{−1} = 0) must be matched exactly."""
    return bool((x == 0).all()) if not ref.abs().max() > 0 else rel_err_max(x, ref) < tol


def value_and_grads(fn, inputs, dy):
    inputs = [t.detach().requires_grad_() for t in inputs]
    y = fn(*inputs)
    return y, torch.autograd.grad(y, inputs, dy.to(y.dtype))


# ------------------------------------------------------------------------------------------- interpreter (CPU)
# d=24 is no multiple of the channel block (16 under the interpreter); L=13 with chunk 4 ends on a chunk of one
# token; L=10 with chunk 3 likewise, with N=4 and N=5 (state padded to 8 lanes); chunk None: the default, one chunk.
@pytest.mark.triton
@needs_interpreter
@pytest.mark.parametrize("L,chunk,N", [(13, 4, 16), (13, None, 16), (10, 3, 4), (10, 3, 5), (1, 4, 16)])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
def test_fused_scan_matches_sequential(L, chunk, N, dtype, tol):
    inputs, dy = scan_inputs(2, L, 24, N, dtype)
    ref_y, ref_g = value_and_grads(sequential_scan, [t.double() for t in inputs], dy.double())
    kw = {} if chunk is None else {"chunk": chunk}
    y, grads = value_and_grads(lambda *a: fused(*a, **kw), inputs, dy)
    assert y.dtype == dtype and all(g.dtype == dtype for g in grads)
    assert rel_err_max(y, ref_y) < tol
    for name, grad, ref in zip(GRADS, grads, ref_g):
        assert close(grad, ref, tol), name


@pytest.mark.triton
@needs_interpreter
def test_fused_scan_reads_bf16_inputs_in_fp32():
    """As under autocast: x, B, C in bf16, dt and A in fp32. y is fp32 and exact up to fp32 rounding on the
    bf16 values; the gradients come back in each input's dtype (bf16 rounding)."""
    inputs, dy = scan_inputs(2, 13, 24, 16, torch.float32)
    x, dt, A, B, C = inputs
    inputs = [x.bfloat16(), dt, A, B.bfloat16(), C.bfloat16()]
    ref_y, ref_g = value_and_grads(sequential_scan, [t.double() for t in inputs], dy.double())
    y, grads = value_and_grads(lambda *a: fused(*a, chunk=4), inputs, dy)
    assert y.dtype == torch.float32 and [g.dtype for g in grads] == [t.dtype for t in inputs]
    assert rel_err_max(y, ref_y) < 2e-6
    for name, grad, ref, tol in zip(GRADS, grads, ref_g, (1e-2, 2e-6, 2e-6, 1e-2, 1e-2)):
        assert rel_err_max(grad, ref) < tol, name


@pytest.mark.triton
@needs_interpreter
def test_fused_scan_refuses_bad_shapes():
    (x, dt, A, B, C), _ = scan_inputs(1, 3, 4, 2)
    with pytest.raises(ValueError, match=r"B must have shape \(1, 3, 2\)"):
        fused(x, dt, A, B[:, :2], C)
    with pytest.raises(ValueError, match="chunk must be an integer"):
        fused(x, dt, A, B, C, chunk=0)


@pytest.mark.triton
@needs_interpreter
def test_fused_scan_op_registrations():
    """torch.library.opcheck: the fake (meta) kernels, the autograd registration and the schema agree with the op."""
    from image_classification.ops.selective_scan import selective_scan_fwd
    (x, dt, A, B, C), _ = scan_inputs(1, 5, 4, 2, torch.float32)
    args = [t.detach().requires_grad_() for t in (x, dt, A, B, C)] + [2]
    torch.library.opcheck(selective_scan_fwd, args, test_utils=("test_schema", "test_autograd_registration",
                                                                "test_faketensor"))


@pytest.mark.triton
@needs_interpreter
def test_bimamba_and_tiny_vim_with_fused_scan_match_sequential():
    """Vim's mixer (d_inner 24: one full and one partial channel block) and a one-block Vim, in fp64: outputs and
    every parameter gradient equal those of the token loop."""
    torch.manual_seed(0)
    mixer = BiMamba(12, d_state=4).double()
    u = torch.randn(2, 7, 12, dtype=torch.float64)
    outs = []
    for scan in ("sequential", "triton"):
        for ssm in (mixer.fwd, mixer.bwd):
            ssm.scan = scan
        mixer.zero_grad()
        y = mixer(u)
        y.square().sum().backward()
        outs.append((y.detach(), {n: p.grad.clone() for n, p in mixer.named_parameters()}))
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-12, atol=1e-13)
    for name, grad in outs[0][1].items():
        torch.testing.assert_close(outs[1][1][name], grad, rtol=1e-10, atol=1e-12, msg=name)

    images = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    grads = []
    for scan in ("sequential", "triton"):
        torch.manual_seed(0)
        model = timm.create_model("vim_tiny_patch16_224", depth=1, img_size=16, patch_size=8, embed_dim=12,
                                  num_classes=3, drop_path_rate=0.0, scan=scan).double()
        model(images).square().sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-10, atol=1e-12, msg=name)


# ---------------------------------------------------------------------------------------------- scan selection
def test_scan_choice_per_device(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_scan("auto", cpu) == "sequential" and resolve_scan("parallel", cuda) == "parallel"
    if models_vim.fused_selective_scan is not None:
        assert resolve_scan("auto", cuda) == "triton"
        if not INTERPRET:
            with pytest.raises(ValueError, match="scan='triton' runs on CUDA, or on the CPU with TRITON_INTERPRET"):
                resolve_scan("triton", cpu)
    with pytest.raises(ValueError, match="scan must be one of"):
        resolve_scan("mamba", cpu)
    monkeypatch.setattr(models_vim, "fused_selective_scan", None)  # as without triton
    assert resolve_scan("auto", cuda) == "parallel"
    with pytest.raises(ValueError, match="scan='triton' needs the triton package"):
        timm.create_model("vim_tiny_patch16_224", depth=1, img_size=16, patch_size=8, embed_dim=12, scan="triton")


# ------------------------------------------------------------------------------------------ GPU, Vim-S shapes
@pytest.mark.triton
@needs_gpu
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 1e-2)])
def test_fused_scan_matches_torch_scan_at_vim_s_shapes(dtype, tol):
    """b=4, L=197, d=768 (Vim-S's d_inner), N=16; x, B, C in ``dtype`` (dt, A fp32, as in the model). Reference:
    the parallel torch scan in fp64 on the same (rounded) inputs; bf16 gradients carry bf16 rounding."""
    inputs, dy = scan_inputs(4, 197, 768, 16, torch.float32, "cuda")
    x, dt, A, B, C = inputs
    inputs = [x.to(dtype), dt, A, B.to(dtype), C.to(dtype)]
    zero_d = torch.zeros(768, device="cuda", dtype=torch.float64)
    ref_y, ref_g = value_and_grads(lambda *a: selective_scan(*a, zero_d, scan="parallel"),
                                   [t.double() for t in inputs], dy.double())
    y, grads = value_and_grads(fused, inputs, dy)
    assert y.dtype == torch.float32
    assert rel_err_max(y, ref_y) < 1e-4
    for name, grad, ref, t in zip(GRADS, grads, ref_g, inputs):
        assert grad.dtype == t.dtype and rel_err_max(grad, ref) < (tol if t.dtype == dtype else 1e-4), name


@pytest.mark.triton
@needs_gpu
@pytest.mark.parametrize("autocast", [False, True])
def test_vim_s_blocks_fused_match_torch_scan(autocast):
    """Two Vim-S blocks at 224 px, triton vs the parallel torch scan (fp32 weights; optionally under bf16
    autocast, where both read the same bf16 activations): logits and gradients."""
    images = torch.randn(2, 3, 224, 224, device="cuda")
    results = []
    for scan in ("parallel", "triton"):
        torch.manual_seed(0)
        model = timm.create_model("vim_small_patch16_224", depth=2, drop_path_rate=0.0, scan=scan).cuda()
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # convs in full fp32 in both runs
            with torch.autocast("cuda", torch.bfloat16, enabled=autocast):
                logits = model(images)
            logits.float().square().mean().backward()
        results.append((logits.float(), {n: p.grad for n, p in model.named_parameters()}))
    tol = 3e-2 if autocast else 1e-4
    assert rel_err_max(results[1][0], results[0][0]) < tol
    for name, grad in results[0][1].items():
        assert rel_err_max(results[1][1][name], grad) < tol, name
