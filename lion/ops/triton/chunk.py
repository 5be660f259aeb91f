"""Chunk form on the GPU, inference only: the fused twin of ``lion.ops.chunk`` (docs/lion.md §1, chunk form).

``chunk_attention`` takes raw q, k (the feature map is applied on load), v, the log gates, and returns the whole
LION attention output y (normalised in the epilogue), written as (B, L, H, dv) memory and returned as a
(B, H, L, dv) view. Three launches over chunks of C tokens:

1. ``_chunk_states``: per chunk c, its own contribution to the carried states of both directions,
       ΔF_c = Σ_{j∈c} e^{g_c − rF_j} k_j v_jᵀ,   ΔB_c = Σ_{j∈c} e^{rB_j} k_j v_jᵀ   (and the same with v = 1),
   rF / rB the exclusive / inclusive prefix sums of the log gates inside the chunk, g_c their total.
2. ``_scan_states``: in place, the exclusive scan over chunks, SF_c = e^{g_{c−1}} SF_{c−1} + ΔF_{c−1} (left to
   right), SB_c = e^{g_{c+1}} SB_{c+1} + ΔB_{c+1} (right to left), accumulated in fp32.
3. ``_chunk_output``: per chunk, the C×C masked scores (lower part e^{rF_i − rF_j}, upper e^{rB_j − rB_i}) plus
   the two carried states, y_i = Σ_{j∈c} A_ij v_j + e^{rF_i} q_i SF_c + e^{g_c − rB_i} q_i SB_c, and likewise the
   normaliser; then y / (den + eps) in v's dtype.
Every exponent is ≤ 0. With bf16/fp16 inputs (autocast) the products take bf16/fp16 operands with fp32
accumulation, as flash attention does, and the states are stored in that dtype; fp32 inputs stay fp32 throughout.
♮ orders: the kernels read tokens through each order's permutation; orders after the first add into an fp32
buffer and the last one normalises. Extra memory: the states, 2·d·dv per chunk and head (in the input dtype).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import triton
import triton.language as tl

from lion.checks import check_chunk_size
from lion.ops.triton.common.args import prepare_scan, stand_ins, strides_or_zero
from lion.ops.triton.common.features import load_features
from lion.ops.triton.common.launching import INTERPRET, launch

MAX_KERNEL_CHUNK = 128  # larger chunk sizes run as chunks of 128 (the result does not depend on the chunk size)
# chunk_size=None: the fastest chunk on an H200 at every length measured, 197 to 12545 tokens with ViT-S heads (d = 64;
# 32, and 128 with 4 or 8 warps, were slower: benchmarks/RESULTS.md); a default, not a function of the shape
DEFAULT_KERNEL_CHUNK = 64
SCAN_ROWS = 16  # rows of the d×dv states per scan program


# --------------------------------------------------------------------------------------------- device helpers
@triton.jit
def chunk_tokens(PERM, o, c, L, CHUNK, HAS_PERM: tl.constexpr, BLOCK_C: tl.constexpr):
    """Chunk c in order o: positions in that order, which are real tokens, and their natural token indices."""
    offs_c = tl.arange(0, BLOCK_C)
    pos = c * CHUNK + offs_c
    ok = (offs_c < CHUNK) & (pos < L)
    tok = pos
    if HAS_PERM:
        tok = tl.load(PERM + o * L + pos, mask=ok, other=0)
    return pos, ok, tok


@triton.jit
def _mm(a, b, acc, LOWP: tl.constexpr, PREC: tl.constexpr):
    """acc + a @ b, fp32 accumulation; LOWP: operands in b's (bf16/fp16) dtype."""
    if LOWP:
        return tl.dot(a.to(b.dtype), b, acc)
    return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision=PREC)


# ------------------------------------------------------------------------------------------------- kernels
@triton.jit
def _chunk_states(
    K, V, LA, PERM, KEEP, S, Z, G,
    skb, skh, skl, skd, svb, svh, svl, svd, sao, sab, sah, sal, skeep,
    BH, H, L, DK, DV, N, CHUNK,
    HAS_GATES: tl.constexpr, HAS_PERM: tl.constexpr, HAS_KEEP: tl.constexpr, WITH_DEN: tl.constexpr,
    FEATURE: tl.constexpr, LOWP: tl.constexpr, PREC: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr, DVP: tl.constexpr,
):
    pid = tl.program_id(0)  # (order, batch, head)
    c = tl.program_id(1)
    pid_dv = tl.program_id(2)
    o = (pid // BH).to(tl.int64)
    b = ((pid % BH) // H).to(tl.int64)
    h = (pid % H).to(tl.int64)
    pos, ok, tok = chunk_tokens(PERM, o, c, L, CHUNK, HAS_PERM, BLOCK_C)
    offs_dk = tl.arange(0, BLOCK_DK)
    offs_dv = pid_dv * BLOCK_DV + tl.arange(0, BLOCK_DV)
    k = load_features(K + b * skb + h * skh, tok, skl, skd, offs_dk, ok, offs_dk < DK, FEATURE)
    if HAS_KEEP:
        k = k * tl.load(KEEP + b * skeep + tok, mask=ok, other=0).to(tl.float32)[:, None]
    v = tl.load(V + b * svb + h * svh + tok[:, None] * svl + offs_dv[None, :] * svd,
                mask=ok[:, None] & (offs_dv[None, :] < DV), other=0.0)
    if HAS_GATES:
        la = tl.load(LA + o * sao + b * sab + h * sah + pos * sal, mask=ok, other=0.0).to(tl.float32)
        incl = tl.cumsum(la, 0)
        g = tl.sum(la, 0)
        k_fwd = k * tl.exp(g - incl + la)[:, None]
        k_bwd = k * tl.exp(incl)[:, None]
    else:
        k_fwd = k
        k_bwd = k
    zero = tl.zeros((BLOCK_DK, BLOCK_DV), dtype=tl.float32)
    state = ((pid.to(tl.int64) * N + c) * 2) * BLOCK_DK * DVP  # S is (O·B·H, N, 2, BLOCK_DK, DVP)
    tile = offs_dk[:, None] * DVP + offs_dv[None, :]
    d_fwd = _mm(tl.trans(k_fwd), v, zero, LOWP, PREC)
    tl.store(S + state + tile, d_fwd.to(S.dtype.element_ty))
    if HAS_GATES:
        d_fwd = _mm(tl.trans(k_bwd), v, zero, LOWP, PREC)
    tl.store(S + state + BLOCK_DK * DVP + tile, d_fwd.to(S.dtype.element_ty))  # Lit: both directions alike
    if pid_dv == 0:
        if HAS_GATES:
            tl.store(G + pid.to(tl.int64) * N + c, g)
        if WITH_DEN:
            zb = ((pid.to(tl.int64) * N + c) * 2) * BLOCK_DK
            tl.store(Z + zb + offs_dk, tl.sum(k_fwd, 0))
            tl.store(Z + zb + BLOCK_DK + offs_dk, tl.sum(k_bwd, 0))


@triton.jit
def _scan_states(S, Z, G, N, HAS_GATES: tl.constexpr, WITH_DEN: tl.constexpr, BLOCK_DK: tl.constexpr,
                 DVP: tl.constexpr, ROWS: tl.constexpr):
    """Grid (O·B·H, directions, BLOCK_DK / ROWS): ROWS rows of the d×dv states through all chunks, in place.
    The next chunk's delta is loaded before the current one is stored, so the loads do not wait on the scan."""
    pid = tl.program_id(0).to(tl.int64)
    fwd = tl.program_id(1) == 0
    rows = tl.program_id(2) * ROWS + tl.arange(0, ROWS)
    half = tl.where(fwd, 0, 1).to(tl.int64)
    step = tl.where(fwd, 1, -1).to(tl.int64)
    tile = rows[:, None] * DVP + tl.arange(0, DVP)[None, :]
    run = tl.zeros((ROWS, DVP), dtype=tl.float32)
    zrun = tl.zeros((ROWS,), dtype=tl.float32)
    c = tl.where(fwd, 0, N - 1).to(tl.int64)
    delta = tl.load(S + ((pid * N + c) * 2 + half) * BLOCK_DK * DVP + tile).to(tl.float32)
    if WITH_DEN:
        zd = tl.load(Z + ((pid * N + c) * 2 + half) * BLOCK_DK + rows)
    if HAS_GATES:
        g = tl.load(G + pid * N + c)
    for it in range(0, N):
        nxt = c + step
        more = it + 1 < N
        delta_n = tl.load(S + ((pid * N + nxt) * 2 + half) * BLOCK_DK * DVP + tile, mask=more, other=0.0)
        if WITH_DEN:
            zd_n = tl.load(Z + ((pid * N + nxt) * 2 + half) * BLOCK_DK + rows, mask=more, other=0.0)
        if HAS_GATES:
            g_n = tl.load(G + pid * N + nxt, mask=more, other=0.0)
            decay = tl.exp(g)
            g = g_n
        else:
            decay = 1.0
        tl.store(S + ((pid * N + c) * 2 + half) * BLOCK_DK * DVP + tile, run.to(S.dtype.element_ty))
        run = run * decay + delta
        if WITH_DEN:
            tl.store(Z + ((pid * N + c) * 2 + half) * BLOCK_DK + rows, zrun)
            zrun = zrun * decay + zd
            zd = zd_n
        delta = delta_n.to(tl.float32)
        c = nxt


@triton.jit
def _chunk_output(
    Q, K, V, LA, PERM, KEEP, S, Z, OUT, NUMBUF, DENBUF,
    sqb, sqh, sql, sqd, skb, skh, skl, skd, svb, svh, svl, svd, sao, sab, sah, sal, skeep,
    sob, sol, soh, sod,
    order, BH, H, L, DK, DV, N, CHUNK, scale, eps, inv_orders,
    HAS_GATES: tl.constexpr, HAS_PERM: tl.constexpr, HAS_KEEP: tl.constexpr, NORMALIZE: tl.constexpr,
    PASS: tl.constexpr, FEATURE: tl.constexpr, LOWP: tl.constexpr, PREC: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr, DVP: tl.constexpr,
):
    """PASS 0: the only order, normalise and write OUT. With several orders: 1 the first (store fp32 partial sums
    in NUMBUF, laid out like OUT, and DENBUF), 3 a middle one (add to them), 2 the last (add, normalise, write OUT)."""
    bh = tl.program_id(0)
    c = tl.program_id(1)
    pid_dv = tl.program_id(2)
    o = (bh * 0 + order).to(tl.int64)  # a runtime order index (an int of 1 would arrive as a constant)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_c = tl.arange(0, BLOCK_C)
    pos, ok, tok = chunk_tokens(PERM, o, c, L, CHUNK, HAS_PERM, BLOCK_C)
    offs_dk = tl.arange(0, BLOCK_DK)
    dk_ok = offs_dk < DK
    offs_dv = pid_dv * BLOCK_DV + tl.arange(0, BLOCK_DV)
    dv_ok = offs_dv < DV
    pid = o * BH + bh
    state = ((pid * N + c) * 2) * BLOCK_DK * DVP
    tile = offs_dk[:, None] * DVP + offs_dv[None, :]
    s_fwd = tl.load(S + state + tile)  # the carried states, issued first: their latency overlaps the feature maps
    s_bwd = tl.load(S + state + BLOCK_DK * DVP + tile)
    v = tl.load(V + b * svb + h * svh + tok[:, None] * svl + offs_dv[None, :] * svd,
                mask=ok[:, None] & dv_ok[None, :], other=0.0)
    q = load_features(Q + b * sqb + h * sqh, tok, sql, sqd, offs_dk, ok, dk_ok, FEATURE) * scale
    k = load_features(K + b * skb + h * skh, tok, skl, skd, offs_dk, ok, dk_ok, FEATURE)
    if HAS_KEEP:
        k = k * tl.load(KEEP + b * skeep + tok, mask=ok, other=0).to(tl.float32)[:, None]
    if LOWP:
        s = tl.dot(q.to(v.dtype), tl.trans(k.to(v.dtype)))
    else:
        s = tl.dot(q, tl.trans(k), input_precision=PREC)
    if HAS_GATES:
        la = tl.load(LA + o * sao + b * sab + h * sah + pos * sal, mask=ok, other=0.0).to(tl.float32)
        incl = tl.cumsum(la, 0)
        g = tl.sum(la, 0)
        excl = incl - la
        lower = offs_c[:, None] >= offs_c[None, :]
        a = s * tl.exp(tl.where(lower, excl[:, None] - excl[None, :], incl[None, :] - incl[:, None]))
        e_fwd = tl.exp(excl)  # q_i's weight on the forward state, e^{rF_i}, and on the backward one, e^{g − rB_i}
        e_bwd = tl.exp(g - incl)
    else:
        a = s
        e_fwd = tl.full((BLOCK_C,), 1.0, tl.float32)
        e_bwd = e_fwd
    if NORMALIZE:
        zb = ((pid * N + c) * 2) * BLOCK_DK
        d = (tl.sum(a, 1) + e_fwd * tl.sum(q * tl.load(Z + zb + offs_dk)[None, :], 1)
             + e_bwd * tl.sum(q * tl.load(Z + zb + BLOCK_DK + offs_dk)[None, :], 1))
    if LOWP:  # operands in v's dtype as soon as they are formed: fewer live fp32 tiles
        y = tl.dot(a.to(v.dtype), v)
        y = tl.dot((q * e_fwd[:, None]).to(v.dtype), s_fwd, y)
        y = tl.dot((q * e_bwd[:, None]).to(v.dtype), s_bwd, y)
    else:
        y = tl.dot(a, v.to(tl.float32), input_precision=PREC)
        y = tl.dot(q * e_fwd[:, None], s_fwd, y, input_precision=PREC)
        y = tl.dot(q * e_bwd[:, None], s_bwd, y, input_precision=PREC)
    out_rows = b * sob + tok * sol + h * soh
    out_ptr = out_rows[:, None] + offs_dv[None, :] * sod
    out_ok = ok[:, None] & dv_ok[None, :]
    if NORMALIZE:
        den_ptr = DENBUF + ((pid_dv * (BH // H) + b) * L + tok) * H + h  # (n_dv, B, L, H): one per value block
    if PASS == 1:
        tl.store(NUMBUF + out_ptr, y, mask=out_ok)
        if NORMALIZE:
            tl.store(den_ptr, d, mask=ok)
    else:
        if PASS >= 2:
            y += tl.load(NUMBUF + out_ptr, mask=out_ok, other=0.0)
            if NORMALIZE:
                d += tl.load(den_ptr, mask=ok, other=0.0)
        if PASS == 3:
            tl.store(NUMBUF + out_ptr, y, mask=out_ok)
            if NORMALIZE:
                tl.store(den_ptr, d, mask=ok)
        else:
            if NORMALIZE:  # mean over orders of num and den, then num / (den + eps)
                y = y / (d * inv_orders + eps)[:, None] * inv_orders
            else:
                y = y * inv_orders
            tl.store(OUT + out_ptr, y.to(OUT.dtype.element_ty), mask=out_ok)


# ------------------------------------------------------------------------------------------- python entry
def chunk_attention(q, k, v, g: Optional[torch.Tensor] = None, g_gamma: Optional[torch.Tensor] = None, *,
                    perms: Optional[Sequence[torch.Tensor]] = None, feature_map: Optional[str] = None,
                    scale: float = 1.0, normalize: bool = True, eps: float = 1e-6, key_padding_mask=None,
                    chunk_size: Optional[int] = None,
                    num_warps: Optional[int] = None, block_dv: Optional[int] = None,
                    scan_rows: int = SCAN_ROWS) -> torch.Tensor:
    """LION attention in the chunk form, forward only (the ``lion_attention`` contract, without dropout; gates
    ``g`` / ``g_gamma`` and orders ``perms`` as ``lion.masks.gate_arguments`` gives them).

    q, k (raw: ``feature_map`` is applied here), v: (B, H, L, d) tensors of any strides; returns y as a
    (B, H, L, dv) view of (B, L, H, dv) memory in v's dtype. ``chunk_size``: None picks one for the length
    (``DEFAULT_KERNEL_CHUNK``); an int is used as given (sizes above 128 run as 128; the result is the same).
    Launch settings (the result does not depend on them): ``num_warps``, ``block_dv`` (value columns per program,
    default min(64, dv rounded up to a power of two)), ``scan_rows`` (state rows per scan program)."""
    check_chunk_size(chunk_size, allow_none=True)
    for name, val, low in (("block_dv", block_dv, 16), ("scan_rows", scan_rows, 1)):
        if val is not None and not (isinstance(val, int) and val >= low and val & (val - 1) == 0):
            raise ValueError(f"{name} must be a power of two ≥ {low}, got {val!r}")
    gates, perm_ids, keep, feature = prepare_scan(q, k, v, g, g_gamma, perms, key_padding_mask, feature_map)
    B, H, L, DK = q.shape
    DV = v.shape[-1]
    n_orders = 1 if perms is None else len(perms)
    chunk = min(MAX_KERNEL_CHUNK, chunk_size or DEFAULT_KERNEL_CHUNK)
    block_c = max(16, triton.next_power_of_2(chunk))
    block_dk = max(16, triton.next_power_of_2(DK))
    block_dv = block_dv or min(64, max(16, triton.next_power_of_2(DV)))
    n_dv = triton.cdiv(DV, block_dv)
    n = triton.cdiv(L, chunk)
    lowp = v.dtype != torch.float32 and not INTERPRET  # the triton 3.3 interpreter multiplies bf16 wrongly
    state_dtype = v.dtype if lowp else torch.float32
    dev = q.device
    states = torch.empty(n_orders * B * H, n, 2, block_dk, n_dv * block_dv, device=dev, dtype=state_dtype)
    zs = torch.empty(n_orders * B * H, n, 2, block_dk, device=dev, dtype=torch.float32) if normalize else states
    gs = torch.empty(n_orders * B * H, n, device=dev, dtype=torch.float32) if gates is not None else zs
    out = torch.empty(B, L, H, DV, device=dev, dtype=v.dtype)
    dummy = out
    flags = dict(HAS_GATES=gates is not None, HAS_PERM=perm_ids is not None, HAS_KEEP=keep is not None,
                 FEATURE=feature, LOWP=lowp, PREC="ieee",
                 BLOCK_C=block_c, BLOCK_DK=block_dk, BLOCK_DV=block_dv, DVP=n_dv * block_dv)
    warps = num_warps or (4 if block_c <= 64 else 8)  # measured: C = 64 with 4 warps, C = 128 with 8
    # C = 64 with 4 warps: capping registers at 128 a thread (from 146) fits a fourth program per multiprocessor,
    # 8–9 % faster at 3137 and 12545 tokens on an H200 (benchmarks/kernel_sweep.py chunk); C = 128 lost with it
    maxnreg = 128 if block_c == 64 and warps == 4 and lowp else None
    la, perm, kp = stand_ins(dummy, gates, perm_ids, keep)
    la_strides = strides_or_zero(gates, 4)
    keep_stride = keep.stride(0) if keep is not None else 0
    launch(_chunk_states, (n_orders * B * H, n, n_dv), (
        k, v, la, perm, kp, states, zs, gs, *k.stride(), *v.stride(), *la_strides, keep_stride,
        B * H, H, L, DK, DV, n, chunk), dict(WITH_DEN=normalize, num_warps=warps, maxnreg=maxnreg, **flags))
    rows = min(scan_rows, block_dk)
    launch(_scan_states, (n_orders * B * H, 2, block_dk // rows), (states, zs, gs, n), dict(
        HAS_GATES=gates is not None, WITH_DEN=normalize, BLOCK_DK=block_dk, DVP=n_dv * block_dv, ROWS=rows,
        num_warps=4))
    numbuf = denbuf = dummy
    if n_orders > 1:
        numbuf = torch.empty(B, L, H, DV, device=dev, dtype=torch.float32)
        denbuf = torch.empty(n_dv, B, L, H, device=dev, dtype=torch.float32) if normalize else dummy
    for o in range(n_orders):
        pass_ = 0 if n_orders == 1 else (1 if o == 0 else (2 if o == n_orders - 1 else 3))
        launch(_chunk_output, (B * H, n, n_dv), (
            q, k, v, la, perm, kp, states, zs, out, numbuf, denbuf,
            *q.stride(), *k.stride(), *v.stride(), *la_strides, keep_stride, *out.stride(),
            o, B * H, H, L, DK, DV, n, chunk, float(scale), float(eps), 1.0 / n_orders),
            dict(NORMALIZE=normalize, PASS=pass_, num_warps=warps, maxnreg=maxnreg, **flags))
    return out.permute(0, 2, 1, 3)
