"""Python entry points of the inference kernels: argument checks, buffers, launch (see ``kernels``)."""
from __future__ import annotations

import os

import torch
import triton

from lion.checks import check_chunk_size
from lion.ops.chunk import chunk_sums
from lion.ops.recurrent import recurrent_sums
from lion.ops.triton_inference.kernels import _chunk_fwd_kernel, _rnn_fwd_kernel
from lion.ops.triton_inference.parallel import _chunk_output, _chunk_states, _scan_states

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Launch settings, measured on an H200 (benchmarks/RESULTS.md). algorithm 'parallel': states per chunk, a scan
# over chunks, outputs per chunk (parallel.py); 'sequential': one program per (batch, head) carries the state
# through the chunks (kernels.py; two_pass, num_stages and min_programs apply to it only: min_programs splits the
# value columns into blocks, down to 16, until the grid has that many programs). lowp: bf16/fp16 operands for the
# value products, fp32 accumulation (as flash attention does).
CHUNK_CONFIG = dict(algorithm="parallel", lowp=True, num_warps=8, two_pass=True, num_stages=2, min_programs=264)
RNN_CONFIG = dict(num_warps=1, block_dv=16, min_programs=264)


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _check(q, k, v, log_a):
    if not (q.is_cuda or _interpreting()):
        raise ValueError("the triton inference kernels need CUDA tensors (or TRITON_INTERPRET=1); "
                         "use backend='torch' on the CPU")
    if q.dim() != 4 or k.shape != q.shape or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"q, k must be (B, H, L, dk) and v (B, H, L, dv); got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if log_a is not None and tuple(log_a.shape) != tuple(q.shape[:3]):
        raise ValueError(f"log_a must be (B, H, L) = {tuple(q.shape[:3])}, got {tuple(log_a.shape)}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dtype not in _DTYPES:
            raise ValueError(f"{name} must be float32, bfloat16 or float16, got {t.dtype}")


def _block_dv(B, H, DV, widest, min_programs):
    block = min(widest, max(16, triton.next_power_of_2(DV)))
    while block > 16 and B * H * 2 * triton.cdiv(DV, block) < min_programs:
        block //= 2
    return block


def _launch(kernel, q, k, v, log_a, scale, with_den, two_pass, block_dv, **meta):
    _check(q, k, v, log_a)
    B, H, L, DK = q.shape
    DV = v.shape[-1]
    if k.dtype != q.dtype:
        k = k.to(q.dtype)
    # (B, L, H, dv) memory seen as (B, H, L, dv): the caller's transpose(1, 2).reshape is then free
    new = torch.empty if two_pass else torch.zeros
    num = new(B, L, H, DV, device=q.device, dtype=torch.float32).permute(0, 2, 1, 3)
    out = num if (not two_pass or v.dtype == torch.float32) else torch.empty_like(num, dtype=v.dtype)
    den = new(B, H, L, device=q.device, dtype=torch.float32) if with_den else num
    la = log_a if log_a is not None else num  # a dummy pointer when there are no gates
    la_strides = la.stride()[:3] if log_a is not None else (0, 0, 0)
    args = (q, k, v, la, num, den, out, *q.stride(), *k.stride(), *v.stride(), *la_strides, *num.stride(),
            *(den.stride()[:3] if with_den else (0, 0, 0)), H, L, DK, DV, float(scale))
    meta.update(HAS_GATES=log_a is not None, WITH_DEN=with_den, BLOCK_DK=max(16, triton.next_power_of_2(DK)),
                BLOCK_DV=block_dv)
    n_dv = triton.cdiv(DV, block_dv)
    if two_pass:  # forward direction, then the backward one adds and writes ``out``
        for direction in (0, 1):
            kernel[(B * H, n_dv)](*args, direction, **meta)
        return out, (den if with_den else None)
    kernel[(B * H, n_dv, 2)](*args, 0, **meta)  # axis 2: forward and backward direction side by side
    return num.to(v.dtype), (den if with_den else None)


def chunk_sums_triton(q, k, v, log_a=None, scale: float = 1.0, with_den: bool = True, chunk_size: int = 64):
    """Chunk form on the GPU. The kernel's chunk is ``chunk_size`` rounded up to a power of two in [16, 128]
    (tensor-core tiles); the result is the same for every chunk size (docs/lion.md §1). The parallel algorithm keeps
    2·dk·dv fp32 states per chunk and head (for dk = dv = 64 and chunk 128: 4 bytes per token and channel)."""
    check_chunk_size(chunk_size)
    if _needs_grad(q, k, v, log_a):
        return chunk_sums(q, k, v, log_a, scale, chunk_size, with_den)
    cfg = CHUNK_CONFIG
    block_c = min(128, max(16, triton.next_power_of_2(int(chunk_size))))
    meta = dict(BLOCK_C=block_c, PREC="ieee" if q.dtype == torch.float32 else "tf32", QK_FP32=_interpreting(),
                LOWP=cfg["lowp"] and v.dtype != torch.float32 and not _interpreting(), num_warps=cfg["num_warps"])
    if cfg["algorithm"] == "parallel":
        return _chunk_parallel(q, k, v, log_a, scale, with_den, **meta)
    block_dv = _block_dv(q.shape[0], q.shape[1], v.shape[-1], 64, cfg["min_programs"])
    return _launch(_chunk_fwd_kernel, q, k, v, log_a, scale, with_den, cfg["two_pass"], block_dv,
                   TWO_PASS=cfg["two_pass"], num_stages=cfg["num_stages"], **meta)


def _chunk_parallel(q, k, v, log_a, scale, with_den, BLOCK_C, num_warps, **meta):
    _check(q, k, v, log_a)
    B, H, L, DK = q.shape
    DV = v.shape[-1]
    if k.dtype != q.dtype:
        k = k.to(q.dtype)
    block_dk = max(16, triton.next_power_of_2(DK))
    block_dv = min(64, max(16, triton.next_power_of_2(DV)))
    n_dv = triton.cdiv(DV, block_dv)
    n = triton.cdiv(L, BLOCK_C)
    f32 = dict(device=q.device, dtype=torch.float32)
    states = torch.empty(B * H, n, 2, block_dk, n_dv * block_dv, **f32)
    zs = torch.empty(B * H, n, 2, block_dk, **f32) if with_den else states
    gs = torch.empty(B * H, n, **f32) if log_a is not None else states
    # (B, L, H, dv) memory seen as (B, H, L, dv): the caller's transpose(1, 2).reshape is then free
    out = torch.empty(B, L, H, DV, device=q.device, dtype=v.dtype).permute(0, 2, 1, 3)
    den = torch.empty(B, H, L, **f32) if with_den else out
    la = log_a if log_a is not None else states
    la_strides = la.stride()[:3] if log_a is not None else (0, 0, 0)
    flags = dict(HAS_GATES=log_a is not None, WITH_DEN=with_den)
    tiles = dict(BLOCK_C=BLOCK_C, BLOCK_DK=block_dk, BLOCK_DV=block_dv, DVP=n_dv * block_dv)
    _chunk_states[(B * H, n, n_dv)](k, v, la, states, zs, gs, *k.stride(), *v.stride(), *la_strides,
                                    H, L, DK, DV, n, LOWP=meta["LOWP"], PREC=meta["PREC"], QK_FP32=meta["QK_FP32"],
                                    num_warps=num_warps, **flags, **tiles)
    rows = 16
    _scan_states[(B * H, 2, block_dk // rows)](states, zs, gs, n, BLOCK_DK=block_dk, DVP=n_dv * block_dv,
                                               ROWS=rows, num_warps=4, **flags)
    _chunk_output[(B * H, n, n_dv)](q, k, v, la, states, zs, out, den, *q.stride(), *k.stride(), *v.stride(),
                                    *la_strides, *out.stride(), *(den.stride() if with_den else (0, 0, 0)),
                                    H, L, DK, DV, n, float(scale), num_warps=num_warps, **meta, **flags, **tiles)
    return out, (den if with_den else None)


def recurrent_sums_triton(q, k, v, log_a=None, scale: float = 1.0, with_den: bool = True, chunk_size: int = 0):
    """RNN form on the GPU: one fused kernel, a forward and a backward program per (batch, head, value block);
    O(d²) state per program."""
    if _needs_grad(q, k, v, log_a):
        return recurrent_sums(q, k, v, log_a, scale, with_den)
    cfg = RNN_CONFIG
    block_dv = _block_dv(q.shape[0], q.shape[1], v.shape[-1], cfg["block_dv"], cfg["min_programs"])
    return _launch(_rnn_fwd_kernel, q, k, v, log_a, scale, with_den, False, block_dv, num_warps=cfg["num_warps"])
