"""The fused chunk and RNN inference kernels at real ViT-S shapes on the GPU (skipped without CUDA): the operator
against the attention form in fp32, MLM-style padding and three ♮ orders, and whole models in both user paths
(fp32 weights under autocast, bf16 weights) against the attention form."""
import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)
pytest.importorskip("triton")

import timm  # noqa: E402

import image_classification.models_lion  # noqa: E402,F401  (registers lion_* in timm)
from lion import decay_log_gates, lion_attention, selective_log_gates  # noqa: E402
from lion.curves import curve_permutation  # noqa: E402

pytestmark = pytest.mark.triton


def _rel(x, ref):
    return ((x.float() - ref.float()).norm() / ref.float().norm()).item()


@pytest.mark.parametrize("dtype,tol,mask,L,chunk", [
    (torch.bfloat16, 1e-2, "Decay", 3137, None), (torch.bfloat16, 1e-2, "Selective", 3137, None),
    (torch.bfloat16, 1e-2, "S-orders", 3137, None), (torch.bfloat16, 1e-2, "Selective", 785, 48),
    (torch.float32, 1e-4, "Selective", 3137, None), (torch.float32, 1e-4, "S-orders", 197, 100)])
def test_operator_matches_attention_form(dtype, tol, mask, L, chunk):
    torch.manual_seed(L)
    B, H, d = 2, 6, 64
    qkv = torch.randn(B, L, 3, H, d, device="cuda").to(dtype)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    log_a, orders = None, None
    if mask == "Decay":
        log_a = decay_log_gates(torch.randn(H, device="cuda"), L, B)
    elif mask == "Selective":
        log_a = selective_log_gates(2 * torch.randn(B, L, H, device="cuda"))
    else:
        g = int(round((L - 1) ** 0.5))
        orders = [(curve_permutation(L, c, 1, "cuda"), selective_log_gates(torch.randn(B, L, H, device="cuda")))
                  for c in ("s", "sr")]
        assert g * g == L - 1
    kw = dict(feature_map="normalized_silu", scale=0.125, orders=orders)
    with torch.inference_mode():
        ref = lion_attention(q.float(), k.float(), v.float(), log_a, form="attention", backend="torch", **kw)
        for form in ("chunk", "rnn"):
            y = lion_attention(q, k, v, log_a, form=form, chunk_size=chunk, **kw)
            assert y.dtype == dtype and y.transpose(1, 2).is_contiguous()
            assert _rel(y, ref) < tol, (form, _rel(y, ref))


def test_padding_unnormalised_uneven_value_dim_and_three_orders():
    """MLM use (no feature map, no normaliser, padded keys, dv = 70 ≠ dk: two value blocks) and three ♮ orders."""
    torch.manual_seed(1)
    B, H, L = 2, 4, 1000
    q, k = torch.randn(2, B, H, L, 32, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(B, H, L, 70, device="cuda", dtype=torch.bfloat16)
    keep = torch.ones(B, L, dtype=torch.bool, device="cuda")
    keep[1, 700:] = False
    log_a = selective_log_gates(torch.randn(B, L, H, device="cuda"))
    orders = [(torch.randperm(L, device="cuda"), selective_log_gates(torch.randn(B, L, H, device="cuda")))
              for _ in range(3)]
    cases = [dict(log_a=log_a, normalize=False, key_padding_mask=keep, scale=0.2),
             dict(orders=orders, feature_map="elu_plus_one", scale=0.2)]
    with torch.inference_mode():
        for kw in cases:
            ref = lion_attention(q.float(), k.float(), v.float(), form="attention", backend="torch", **kw)
            for form in ("chunk", "rnn"):
                assert _rel(lion_attention(q, k, v, form=form, chunk_size=50, **kw), ref) < 1e-2, (form, kw.keys())


@pytest.mark.parametrize("mask,order", [("Lit", "Normal"), ("Decay", "S"), ("Selective", "Normal")])
def test_models_in_both_user_paths(mask, order):
    """fp32 weights under autocast, and bf16 weights: Chunk and RNN equal the Attention form at 448 px."""
    torch.manual_seed(0)
    model = timm.create_model("lion_small_patch16_224", img_size=448, mask_type=mask, order=order).cuda().eval()
    x = torch.randn(2, 3, 448, 448, device="cuda")
    for path in ("amp", "bf16"):
        if path == "bf16":
            model, x = model.to(torch.bfloat16), x.to(torch.bfloat16)
        with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16, enabled=path == "amp"):
            model.set_format("Attention")
            ref = model(x)
            for form in ("Chunk", "RNN"):
                model.set_format(form, None)
                assert _rel(model(x), ref) < 2e-2, (path, form)
