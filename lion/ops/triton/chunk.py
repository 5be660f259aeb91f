"""Chunk form on the GPU: the fused twin of ``lion.ops.chunk`` (docs/lion.md §1, chunk form). ``chunk_attention``
is the forward for inference; ``chunk_sums``, the same three launches for any operator Σ_j M_ij (x_i·y_j) z_j, also
serves the training op and its backward (``lion.ops.triton.chunk_grad``: the transposed mask, a per-token term of
the scores, the normaliser and the gates' dot products as options).

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
from lion.ops.triton.common.launching import INTERPRET, block_size, cdiv, launch

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
def local_sums(la, TRANS: tl.constexpr):
    """(f, u, g) of a chunk's log gates: the prefix sums of the lower (f) and upper (u) parts of the mask and the
    total g. M: lower e^{f_i − f_j}, f exclusive; upper e^{u_j − u_i}, u inclusive. Its transpose Mᵀ (the backward's
    mask, ``TRANS``): f inclusive, u exclusive (M_ji = e^{C_i − C_j} for i > j, e^{P_j − P_i} for i < j)."""
    incl = tl.cumsum(la, 0)
    if TRANS:
        return incl, incl - la, tl.sum(la, 0)
    return incl - la, incl, tl.sum(la, 0)


@triton.jit
def _mm(a, b, acc, LOWP: tl.constexpr, PREC: tl.constexpr):
    """acc + a @ b, fp32 accumulation; LOWP: operands in b's (bf16/fp16) dtype."""
    if LOWP:
        return tl.dot(a.to(b.dtype), b, acc)
    return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision=PREC)


# ------------------------------------------------------------------------------------------------- kernels
@triton.jit
def _chunk_states(
    K, V, LA, PERM, KEEP, S, Z, G, CS,
    skb, skh, skl, skd, svb, svh, svl, svd, sao, sab, sah, sal, skeep, scb, sch, scl,
    BH, H, L, DK, DV, N, CHUNK,
    HAS_GATES: tl.constexpr, HAS_PERM: tl.constexpr, HAS_KEEP: tl.constexpr, WITH_DEN: tl.constexpr,
    FEATURE: tl.constexpr, LOWP: tl.constexpr, PREC: tl.constexpr, TRANS: tl.constexpr, SCAL: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr, DVP: tl.constexpr, ZW: tl.constexpr,
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
        f, u, g = local_sums(la, TRANS)
        w_fwd = tl.exp(g - f)
        w_bwd = tl.exp(u)
    else:
        w_fwd = tl.full((BLOCK_C,), 1.0, tl.float32)
        w_bwd = w_fwd
    k_fwd = k * w_fwd[:, None]
    k_bwd = k * w_bwd[:, None]
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
            zb = ((pid.to(tl.int64) * N + c) * 2) * ZW
            tl.store(Z + zb + offs_dk, tl.sum(k_fwd, 0))
            tl.store(Z + zb + ZW + offs_dk, tl.sum(k_bwd, 0))
    if SCAL != 0:  # the states of the rank-one term (``_chunk_output``): Σ_j w_j z_j, with SCAL 2 Σ_j w_j c_j z_j
        vz = v.to(tl.float32)
        if SCAL == 2:
            vz = vz * tl.load(CS + b * scb + h * sch + tok * scl, mask=ok, other=0.0)[:, None]
        zb = ((pid.to(tl.int64) * N + c) * 2) * ZW
        tl.store(Z + zb + offs_dv, tl.sum(vz * w_fwd[:, None], 0))
        tl.store(Z + zb + ZW + offs_dv, tl.sum(vz * w_bwd[:, None], 0))


# Loading four chunks' deltas a step before carrying the state through them was measured 1.0–2.0× slower a call
# on an H100 than this one-ahead prefetch (benchmarks/RESULTS.md, chunk-form training).
@triton.jit
def _scan_states(S, Z, G, N, HAS_GATES: tl.constexpr, WITH_DEN: tl.constexpr, BLOCK_DK: tl.constexpr,
                 DVP: tl.constexpr, ROWS: tl.constexpr, ZW: tl.constexpr, ZROWS: tl.constexpr):
    """Grid (O·B·H, directions, BLOCK_DK / ROWS): ROWS rows of the d×dv states through all chunks, in place, and
    ZROWS entries of the vector states Z (width ZW; WITH_DEN). The next chunk's delta is loaded before the current
    one is stored, so the loads do not wait on the scan."""
    pid = tl.program_id(0).to(tl.int64)
    fwd = tl.program_id(1) == 0
    rows = tl.program_id(2) * ROWS + tl.arange(0, ROWS)
    half = tl.where(fwd, 0, 1).to(tl.int64)
    step = tl.where(fwd, 1, -1).to(tl.int64)
    tile = rows[:, None] * DVP + tl.arange(0, DVP)[None, :]
    run = tl.zeros((ROWS, DVP), dtype=tl.float32)
    zrun = tl.zeros((ZROWS,), dtype=tl.float32)
    zrows = tl.program_id(2) * ZROWS + tl.arange(0, ZROWS)
    c = tl.where(fwd, 0, N - 1).to(tl.int64)
    delta = tl.load(S + ((pid * N + c) * 2 + half) * BLOCK_DK * DVP + tile).to(tl.float32)
    if WITH_DEN:
        zd = tl.load(Z + ((pid * N + c) * 2 + half) * ZW + zrows)
    if HAS_GATES:
        g = tl.load(G + pid * N + c)
    for it in range(0, N):
        nxt = c + step
        more = it + 1 < N
        delta_n = tl.load(S + ((pid * N + nxt) * 2 + half) * BLOCK_DK * DVP + tile, mask=more, other=0.0)
        if WITH_DEN:
            zd_n = tl.load(Z + ((pid * N + nxt) * 2 + half) * ZW + zrows, mask=more, other=0.0)
        if HAS_GATES:
            g_n = tl.load(G + pid * N + nxt, mask=more, other=0.0)
            decay = tl.exp(g)
            g = g_n
        else:
            decay = 1.0
        tl.store(S + ((pid * N + c) * 2 + half) * BLOCK_DK * DVP + tile, run.to(S.dtype.element_ty))
        run = run * decay + delta
        if WITH_DEN:
            tl.store(Z + ((pid * N + c) * 2 + half) * ZW + zrows, zrun)
            zrun = zrun * decay + zd
            zd = zd_n
        delta = delta_n.to(tl.float32)
        c = nxt


@triton.jit
def _chunk_output(
    Q, K, V, LA, PERM, KEEP, S, Z, OUT, NUMBUF, DENBUF, DEN, W, GD, CS,
    sqb, sqh, sql, sqd, skb, skh, skl, skd, svb, svh, svl, svd, sao, sab, sah, sal, skeep,
    sob, sol, soh, sod, swb, swh, swl, swd, scb, sch, scl,
    order, BH, H, L, DK, DV, N, CHUNK, scale, eps, inv_orders,
    HAS_GATES: tl.constexpr, HAS_PERM: tl.constexpr, HAS_KEEP: tl.constexpr, NORMALIZE: tl.constexpr,
    PASS: tl.constexpr, FEATURE: tl.constexpr, LOWP: tl.constexpr, PREC: tl.constexpr, TRANS: tl.constexpr,
    STORE_DEN: tl.constexpr, GATE_DOT: tl.constexpr, SCAL: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr, DVP: tl.constexpr, ZW: tl.constexpr,
):
    """PASS 0: the only order, normalise and write OUT. With several orders: 1 the first (store fp32 partial sums
    in NUMBUF, laid out like OUT, and DENBUF), 3 a middle one (add to them), 2 the last (add, normalise, write OUT).
    STORE_DEN: also write the normaliser (mean over orders, fp32, (B, H, L)) to DEN (the backward reads it).
    GATE_DOT (the backward's gate gradients): with W (B, H, L, dv) rows w_i, store w_i·(the strictly lower part of
    y_i) and w_i·(the strictly upper part) to GD (n_dv, 2, B, H, L) at the tokens' positions in the order.
    SCAL (the backward's normaliser term, a rank-one addition to the scores, per token c (B, H, L) in CS):
    1 scores x_i·y_j + c_i, 2 scores x_i·y_j + c_j; Z then holds the chunks' carried Σ_j w_j (c_j) z_j."""
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
    if SCAL != 0:
        cs = tl.load(CS + b * scb + h * sch + tok * scl, mask=ok, other=0.0)
        if SCAL == 1:
            s = s + cs[:, None]
        else:
            s = s + cs[None, :]
    lower = offs_c[:, None] >= offs_c[None, :]
    if HAS_GATES:
        la = tl.load(LA + o * sao + b * sab + h * sah + pos * sal, mask=ok, other=0.0).to(tl.float32)
        f, u, g = local_sums(la, TRANS)
        a = s * tl.exp(tl.where(lower, f[:, None] - f[None, :], u[None, :] - u[:, None]))
        e_fwd = tl.exp(f)  # q_i's weight on the forward state, e^{rF_i}, and on the backward one, e^{g − rB_i}
        e_bwd = tl.exp(g - u)
    else:
        a = s
        e_fwd = tl.full((BLOCK_C,), 1.0, tl.float32)
        e_bwd = e_fwd
    if NORMALIZE:
        zb = ((pid * N + c) * 2) * ZW
        d = (tl.sum(a, 1) + e_fwd * tl.sum(q * tl.load(Z + zb + offs_dk)[None, :], 1)
             + e_bwd * tl.sum(q * tl.load(Z + zb + ZW + offs_dk)[None, :], 1))
    if SCAL != 0:  # the rank-one term's share of the carried states: (c_i) e^{rF_i} Σ w_j (c_j) z_j, both directions
        zb = ((pid * N + c) * 2) * ZW
        r_fwd = e_fwd
        r_bwd = e_bwd
        if SCAL == 1:
            r_fwd = r_fwd * cs
            r_bwd = r_bwd * cs
        t_fwd = r_fwd[:, None] * tl.load(Z + zb + offs_dv)[None, :]
        t_bwd = r_bwd[:, None] * tl.load(Z + zb + ZW + offs_dv)[None, :]
    if GATE_DOT:  # the lower and upper parts apart, each dotted with w_i (this program's value columns)
        zero = tl.zeros((BLOCK_C, BLOCK_DV), dtype=tl.float32)
        if SCAL != 0:
            y_fwd = _mm(q * e_fwd[:, None], s_fwd, t_fwd, LOWP, PREC)
            y_bwd = _mm(q * e_bwd[:, None], s_bwd, t_bwd, LOWP, PREC)
        else:
            y_fwd = _mm(q * e_fwd[:, None], s_fwd, zero, LOWP, PREC)
            y_bwd = _mm(q * e_bwd[:, None], s_bwd, zero, LOWP, PREC)
        w = tl.load(W + b * swb + h * swh + tok[:, None] * swl + offs_dv[None, :] * swd,
                    mask=ok[:, None] & dv_ok[None, :], other=0.0)
        wv = _mm(w, tl.trans(v), tl.zeros((BLOCK_C, BLOCK_C), dtype=tl.float32), LOWP, PREC) * a
        strict = offs_c[:, None] > offs_c[None, :]
        lo = tl.sum(tl.where(strict, wv, 0.0), 1) + tl.sum(w.to(tl.float32) * y_fwd, 1)
        up = tl.sum(tl.where(lower, 0.0, wv), 1) + tl.sum(w.to(tl.float32) * y_bwd, 1)
        gd = GD + ((pid_dv * 2 * (BH // H) + b) * H + h) * L + pos
        tl.store(gd, lo, mask=ok)
        tl.store(gd + BH * L, up, mask=ok)
        y = _mm(a, v, y_fwd + y_bwd, LOWP, PREC)
    elif SCAL != 0:
        y = _mm(a, v, t_fwd + t_bwd, LOWP, PREC)
        y = _mm(q * e_fwd[:, None], s_fwd, y, LOWP, PREC)
        y = _mm(q * e_bwd[:, None], s_bwd, y, LOWP, PREC)
    elif LOWP:  # operands in v's dtype as soon as they are formed: fewer live fp32 tiles
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
                if STORE_DEN:
                    if pid_dv == 0:
                        tl.store(DEN + (b * H + h) * L + tok, d * inv_orders, mask=ok)
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
    ``g`` / ``g_gamma`` and orders ``perms`` as ``lion.masks.gate_arguments`` gives them). The differentiable op is
    ``lion.ops.triton.chunk_grad.chunk_attention_trainable``.

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
    return chunk_sums(q, k, v, gates, perm_ids, keep, feature=feature, scale=scale, normalize=normalize, eps=eps,
                      chunk_size=chunk_size, num_warps=num_warps, block_dv=block_dv, scan_rows=scan_rows)[0]


def chunk_sums(x, y, z, gates, perms, keep, *, feature: int = 0, scale: float = 1.0, normalize: bool = False,
               eps: float = 1e-6, trans: bool = False, accumulate: bool = False, store_den: bool = False,
               w: Optional[torch.Tensor] = None, c: Optional[torch.Tensor] = None, c_on_keys: bool = False,
               out: Optional[torch.Tensor] = None, chunk_size: Optional[int] = None, num_warps: Optional[int] = None,
               block_dv: Optional[int] = None, scan_rows: int = SCAN_ROWS):
    """The bidirectional chunk operator, O_i = mean over orders of Σ_j M_ij (φx_i·φy_j) z_j (x scaled, y's padded
    rows dropped), and with ``normalize`` O_i / (Σ_j M_ij φx_i·φy_j + eps): three launches (module docstring).

    gates: (orders, B, H, L) fp32 log gates in each order's indexing (padding already applied) or None; perms:
    (orders, L) int32 or None; keep: (B, L) uint8 or None. ``trans``: the transposed mask Mᵀ (docs/lion.md §1 by
    i ↔ j). Returns (O, den, gd):
    O (B, H, L, dz) a view of (B, L, H, dz) memory, in z's dtype; with ``accumulate`` fp32 and summed (not averaged)
    over the orders, never normalised (the backward's operators). den: the normaliser (B, H, L) fp32 when
    ``store_den`` (with ``normalize``), else None. gd: with ``w`` (B, H, L, dz), (orders, 2, B, H, L) fp32: w_i·(the
    strictly lower part of O_i) and w_i·(the strictly upper part), each order's at the positions in that order.
    c: (B, H, L) fp32, a rank-one term of the scores, x_i·y_j + c_i (or + c_j with ``c_on_keys``); unnormalised only.
    out: where to write O, a (B, L, H, dz) tensor of any strides in the dtype O has (as a view of it, O is returned)."""
    B, H, L, DK = x.shape
    DV = z.shape[-1]
    n_orders = 1 if perms is None else perms.shape[0]
    chunk = min(MAX_KERNEL_CHUNK, chunk_size or DEFAULT_KERNEL_CHUNK)
    block_c = block_size(chunk)
    block_dk = block_size(DK)
    block_dv = block_dv or min(64, block_size(DV))
    n_dv = cdiv(DV, block_dv)
    n = cdiv(L, chunk)
    lowp = z.dtype != torch.float32 and not INTERPRET  # the triton 3.3 interpreter multiplies bf16 wrongly
    state_dtype = z.dtype if lowp else torch.float32
    dev = x.device
    states = torch.empty(n_orders * B * H, n, 2, block_dk, n_dv * block_dv, device=dev, dtype=state_dtype)
    scal = 0 if c is None else (2 if c_on_keys else 1)
    zw = max(block_dk, n_dv * block_dv) if scal else block_dk  # the vector states: Σ k (normalize) or Σ (c) z
    zs = torch.empty(n_orders * B * H, n, 2, zw, device=dev, dtype=torch.float32) if normalize or scal else states
    gs = torch.empty(n_orders * B * H, n, device=dev, dtype=torch.float32) if gates is not None else zs
    out_dtype = torch.float32 if accumulate else z.dtype
    if out is None:
        out = torch.empty(B, L, H, DV, device=dev, dtype=out_dtype)
    elif out.shape != (B, L, H, DV) or out.dtype != out_dtype:
        raise ValueError(f"out must be a {(B, L, H, DV)} {out_dtype} tensor, got {tuple(out.shape)} {out.dtype}")
    den = torch.empty(B, H, L, device=dev, dtype=torch.float32) if store_den and normalize else None
    gd = torch.empty(n_orders, n_dv, 2, B, H, L, device=dev, dtype=torch.float32) if w is not None else None
    dummy = out
    flags = dict(HAS_GATES=gates is not None, HAS_PERM=perms is not None, HAS_KEEP=keep is not None,
                 FEATURE=feature, LOWP=lowp, PREC="ieee", TRANS=trans, SCAL=scal,
                 BLOCK_C=block_c, BLOCK_DK=block_dk, BLOCK_DV=block_dv, DVP=n_dv * block_dv, ZW=zw)
    warps = num_warps or (4 if block_c <= 64 else 8)  # measured: C = 64 with 4 warps, C = 128 with 8
    # C = 64 with 4 warps: capping registers at 128 a thread (from 146) fits a fourth program per multiprocessor,
    # 8–9 % faster at 3137 and 12545 tokens on an H200 (benchmarks/kernel_sweep.py chunk); C = 128 lost with it
    maxnreg = 128 if block_c == 64 and warps == 4 and lowp and w is None else None
    la, perm, kp = stand_ins(dummy, gates, perms, keep)
    la_strides = strides_or_zero(gates, 4)
    keep_stride = keep.stride(0) if keep is not None else 0
    cs, w_ = stand_ins(dummy, c, w)
    c_strides = strides_or_zero(c, 3)
    launch(_chunk_states, (n_orders * B * H, n, n_dv), (
        y, z, la, perm, kp, states, zs, gs, cs, *y.stride(), *z.stride(), *la_strides, keep_stride, *c_strides,
        B * H, H, L, DK, DV, n, chunk), dict(WITH_DEN=normalize, num_warps=warps, maxnreg=maxnreg, **flags))
    rows = min(scan_rows, block_dk)
    launch(_scan_states, (n_orders * B * H, 2, block_dk // rows), (states, zs, gs, n), dict(
        HAS_GATES=gates is not None, WITH_DEN=normalize or scal != 0, BLOCK_DK=block_dk, DVP=n_dv * block_dv,
        ROWS=rows, ZW=zw, ZROWS=zw // (block_dk // rows), num_warps=4))
    numbuf = denbuf = dummy
    if n_orders > 1 and not accumulate:
        numbuf = torch.empty(B, L, H, DV, device=dev, dtype=torch.float32)
        denbuf = torch.empty(n_dv, B, L, H, device=dev, dtype=torch.float32) if normalize else dummy
    for o in range(n_orders):
        if accumulate:
            pass_ = 1 if o == 0 else 3
        else:
            pass_ = 0 if n_orders == 1 else (1 if o == 0 else (2 if o == n_orders - 1 else 3))
        launch(_chunk_output, (B * H, n, n_dv), (
            x, y, z, la, perm, kp, states, zs, out, out if accumulate else numbuf, denbuf,
            den if den is not None else dummy, w_, gd[o] if gd is not None else dummy, cs,
            *x.stride(), *y.stride(), *z.stride(), *la_strides, keep_stride, *out.stride(), *strides_or_zero(w, 4),
            *c_strides,
            o, B * H, H, L, DK, DV, n, chunk, float(scale), float(eps), 1.0 / n_orders),
            dict(NORMALIZE=normalize, PASS=pass_, STORE_DEN=den is not None, GATE_DOT=w is not None,
                 num_warps=warps, maxnreg=maxnreg, **flags))
    if gd is not None:  # the value-column blocks' partial dot products; one block (dv ≤ 64): a view, no sum
        gd = gd[:, 0] if n_dv == 1 else gd.sum(1)
    return out.permute(0, 2, 1, 3), den, gd
