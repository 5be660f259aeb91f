"""Fused attention form of LION for training (docs/lion.md §1–2): one Triton kernel forward, one backward.

Per head, with φ the feature map (applied to the raw q, k on load and recomputed in the backward):

    A_ij = scale·(φ(q_i)·φ(k_j))·M_ij·keep_j,   y_i = Σ_j drop(A)_ij v_j / (Σ_j A_ij + eps)   (normalize)
                                                y_i = Σ_j drop(A)_ij v_j                      (otherwise)

M for one token order with ranks r (position in that order) and prefix sums P (exclusive), C (inclusive) of the
log gates taken in that order, all indexed by natural token position:

    M_ij = exp(P_i − P_j) if r_i ≥ r_j,   exp(C_j − C_i) otherwise.

The ♮ variants average two orders, M = ½(M_s + M_sr), evaluated in natural order: no gathers of q, k, v, y.
Dropout (counter-based, regenerated in the backward) acts on A in the numerator only.

Backward, with D_i = den_i + eps, δ_i = dy_i·y_i and ρ the dropout keep/(1−p) factor:
    dA_ij = (ρ_ij dy_i·v_j − δ_i)/D_i        (normalize; else ρ_ij dy_i·v_j)
    dv_j = Σ_i ρ_ij A_ij dy_i / D_i,   dφk_j = Σ_i dA_ij M_ij scale·φ(q_i),   dφq_i = scale Σ_j dA_ij M_ij φ(k_j)
    G = dA ⊙ A = ∂/∂log M:  dP_t = Σ_{r_t≥r_j} G_tj − Σ_{r_i≥r_t} G_it,   dC_t = Σ_{r_i<r_t} G_it − Σ_{r_t<r_j} G_tj
One pass over the score tiles (as FlashAttention-2's backward): a program owns a block of keys, keeps dk, dv and
the column sums of G in registers and walks every query block once, adding its share of dφq and of the row sums of
G with fp32 atomics; a last small kernel applies φ's backward to dq. Each score, dpv and mask tile is formed once.
dq, dk, dv land in one (B, L, 3, H, d) buffer (``lion.unpack_qkv`` returns it as the qkv gradient, no copy).

The gates reach the kernels in one of two ways (``_gate_mode``): LION-D's per-head log λ, from which the kernels
form M = λ^n and return d log λ = Σ G_ij n_ij, with n_ij = |r_i − r_j| (with padding, whose gates are 1: the number
of real tokens the product crosses, from counts of real tokens that the first kernel forms as prefix sums); or
per-token log gates (LION-S; padded tokens' set to 0, i.e. gate 1), of the natural order or of each ♮ order in that
order's indexing, whose prefix sums the first kernel forms once per token (one program per head walks the order and
stores P, C at the tokens' natural positions) and whose gradient the last kernel forms from dP, dC the same way.
"""
from __future__ import annotations

import functools
import math
from typing import Optional, Sequence

import torch
import triton
import triton.language as tl

from lion.curves import inverse_permutation
from lion.masks import gates_one_at_padding
from lion.ops.triton.common.args import (
    check_device,
    compute_dtype,
    grad_buffer,
    grad_views,
    last_dim_unit,
    one_gate_kind,
    stand_ins,
    token_major,
)
from lion.ops.triton.common.features import feature_code, phi, phi_bwd
from lion.ops.triton.common.launching import INTERPRET, Launcher, block_size, cdiv, launch
from lion.ops.triton.common.op import FusedOp
from lion.ops.triton.common.rows import dy_rows, key_keep, load_rows, token_block
from lion.ops.triton.lit import lit_kv_attention


# ----------------------------------------------------------------------------------------------- device helpers
@triton.jit
def _tile(x_q, x_k, KEY_ROWS: tl.constexpr):
    """A query vector and a key vector broadcast to a tile: indexed [query, key], or [key, query] with KEY_ROWS
    (the backward's tiles, keys on the rows, so that every product has 64 rows for Hopper's warpgroup MMA)."""
    if KEY_ROWS:  # one return statement: the compiler checks every return's type, even in a dead branch
        a, b = x_q[None, :], x_k[:, None]
    else:
        a, b = x_q[:, None], x_k[None, :]
    return a, b


@triton.jit
def _order_mask(P, C, R, base, r_base, lam, offs_m, offs_n, in_m, in_n, NATURAL: tl.constexpr,
                DECAY: tl.constexpr, COUNTS: tl.constexpr, KEY_ROWS: tl.constexpr):
    """(M, aux) of one order on a tile (queries offs_m, keys offs_n; oriented by KEY_ROWS, see ``_tile``), M = 0
    outside the valid rows and columns. aux: the tile's lower triangle in that order (r_i ≥ r_j); with DECAY (one
    gate λ per head, log λ = ``lam``) M = λ^n with n = |r_i − r_j| (docs/lion.md §1.2), or with COUNTS (padding)
    the number of real tokens the product of gates crosses, from P, C = the counts of real tokens before / up to each
    token in the order (padded tokens' gates are 1); aux = n."""
    if NATURAL:
        r_i = offs_m
        r_j = offs_n
    else:
        r_i = tl.load(R + r_base + offs_m, mask=in_m, other=0)
        r_j = tl.load(R + r_base + offs_n, mask=in_n, other=0)
    ri, rj = _tile(r_i, r_j, KEY_ROWS)
    if DECAY and not COUNTS:
        aux = tl.abs(ri - rj).to(tl.float32)
        log_m = aux * lam
    else:
        p_i = tl.load(P + base + offs_m, mask=in_m, other=0.0)
        c_i = tl.load(C + base + offs_m, mask=in_m, other=0.0)
        p_j = tl.load(P + base + offs_n, mask=in_n, other=0.0)
        c_j = tl.load(C + base + offs_n, mask=in_n, other=0.0)
        pi, pj = _tile(p_i, p_j, KEY_ROWS)
        ci, cj = _tile(c_i, c_j, KEY_ROWS)
        lower = ri >= rj
        n = tl.where(lower, pi - pj, cj - ci)  # log M_ij, or with COUNTS the exponent of λ
        if DECAY:
            aux = n
            log_m = n * lam
        else:
            aux = lower
            log_m = n
    return _exp_mask(log_m, in_m, in_n, KEY_ROWS), aux


@triton.jit
def _exp_mask(log_m, in_m, in_n, KEY_ROWS: tl.constexpr):
    """exp of a tile's log mask, 0 outside the valid rows and columns."""
    vi, vj = _tile(in_m, in_n, KEY_ROWS)
    return tl.exp(tl.where(vi & vj, log_m, float("-inf")))


@triton.jit
def _tile_mask(P, C, R, bh, BHL, L, offs_m, offs_n, in_m, in_n, lam1, lam2, NORD: tl.constexpr,
               NATURAL: tl.constexpr, DECAY: tl.constexpr, COUNTS: tl.constexpr, KEY_ROWS: tl.constexpr):
    """M of the tile (the mean over the orders) and each order's own (M_o, aux_o); P, C, R stack the orders."""
    m1, aux1 = _order_mask(P, C, R, bh * L, 0, lam1, offs_m, offs_n, in_m, in_n, NATURAL, DECAY, COUNTS, KEY_ROWS)
    m, m2, aux2 = m1, m1, aux1
    if NORD == 2:
        m2, aux2 = _order_mask(P, C, R, BHL + bh * L, L, lam2, offs_m, offs_n, in_m, in_n, NATURAL, DECAY, COUNTS,
                               KEY_ROWS)
        m = 0.5 * (m1 + m2)
    return m, m1, aux1, m2, aux2


@triton.jit
def _decay_gates(LAM, h, H, NORD: tl.constexpr, DECAY: tl.constexpr):
    """log λ of this head in each order (DECAY: LAM holds (orders, H) log gates), else unused zeros."""
    lam1 = 0.0
    lam2 = 0.0
    if DECAY:
        lam1 = tl.load(LAM + h)
        if NORD == 2:
            lam2 = tl.load(LAM + H + h)
    return lam1, lam2


@triton.jit
def _triangle_sums(g, lower, axis: tl.constexpr):
    return tl.sum(tl.where(lower, g, 0.0), axis=axis), tl.sum(tl.where(lower, 0.0, g), axis=axis)


@triton.jit
def _gate_grads(g, aux, key_lo, key_up, DP, DC, rows, in_m, DECAY: tl.constexpr):
    """One order's share of a [key, query] tile's G = dA ⊙ A·∂log M: DECAY adds Σ_i G_ij n_ij per key to key_lo
    (n = aux, the exponent of λ); otherwise each key's sums over the queries below / above it go to (key_lo,
    key_up) and each query's sums to DP, DC at ``rows`` (the queries' offsets)."""
    if DECAY:
        key_lo += tl.sum(g * aux, axis=1)
    else:
        lo, up = _triangle_sums(g, aux, 1)
        key_lo += lo
        key_up += up
        lo, up = _triangle_sums(g, aux, 0)
        tl.atomic_add(DP + rows, lo, mask=in_m, sem="relaxed")
        tl.atomic_add(DC + rows, -up, mask=in_m, sem="relaxed")
    return key_lo, key_up


@triton.jit
def _dropout_keep(seed, m0, n0, L, dropout_p, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, KEY_ROWS: tl.constexpr):
    """The dropout keep mask of the tile of queries m0 + [0, BLOCK_M) and keys n0 + [0, BLOCK_N) (n0 a multiple of
    4), oriented by KEY_ROWS. One Philox draw gives four 32-bit numbers: the t-th of counter i·L + 4g serves query
    i's key 4g + t (one draw per score took a fifth of the MLM-shape op's kernel time)."""
    i = m0 + tl.arange(0, BLOCK_M)
    g = n0 + 4 * tl.arange(0, BLOCK_N // 4)  # each group's first key
    if not KEY_ROWS:  # [query, group, u, v] = r_{2u+v} → [query, key 4g + 2u + v]
        r0, r1, r2, r3 = tl.randint4x(seed, i[:, None] * L + g[None, :])
        r = tl.reshape(tl.join(tl.join(r0, r2), tl.join(r1, r3)), (BLOCK_M, BLOCK_N))
    else:  # [group, query, u, v] → [group, u, v, query] → [key, query]: the backward's tiles
        r0, r1, r2, r3 = tl.randint4x(seed, g[:, None] + i[None, :] * L)
        r = tl.join(tl.join(r0, r2), tl.join(r1, r3))
        r = tl.reshape(tl.permute(r, (0, 2, 3, 1)), (BLOCK_N, BLOCK_M))
    return tl.random.uint_to_uniform_float(r) >= dropout_p


# ----------------------------------------------------------------------------------------------------- kernels
@triton.jit
def _order_positions(PERM, r, in_r, NATURAL: tl.constexpr):
    """Natural positions of an order's entries r (one return: triton 3.6 refuses a second under a constexpr if)."""
    t = r
    if not NATURAL:
        t = tl.load(PERM + r, mask=in_r, other=0)
    return t


@triton.jit
def _order_sums(la_ptr, sal, PERM, P_out, C_out, L, NATURAL: tl.constexpr, BLOCK: tl.constexpr):
    """One head's prefix sums in one token order: the gates la are stored in the order's indexing (entry r: the gate
    of token PERM[r]; NATURAL: no PERM, r itself); P (exclusive) and C (inclusive) are stored at the natural
    positions PERM[r]. A running sum over the blocks of the order, run by one program per head."""
    run = tl.sum(tl.zeros((BLOCK,), dtype=tl.float32), axis=0)
    for start in range(0, L, BLOCK):
        r = start + tl.arange(0, BLOCK)
        in_r = r < L
        la = tl.load(la_ptr + r * sal, mask=in_r, other=0.0)
        c = run + tl.cumsum(la, 0)
        t = _order_positions(PERM, r, in_r, NATURAL)
        tl.store(P_out + t, c - la, mask=in_r)
        tl.store(C_out + t, c, mask=in_r)
        run += tl.sum(la, 0)


@triton.jit
def _order_sums_grad(DP, DC, PERM, DLA, L, NATURAL: tl.constexpr, BLOCK: tl.constexpr):
    """Backward of ``_order_sums`` for one head: d la_r = Σ_{r' ≥ r} (dP + dC)_{PERM[r']} − dP_{PERM[r]}, with dP,
    dC at natural positions and d la in the order's indexing."""
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for start in range(0, L, BLOCK):
        r = start + tl.arange(0, BLOCK)
        t = _order_positions(PERM, r, r < L, NATURAL)
        acc += tl.load(DP + t, mask=r < L, other=0.0) + tl.load(DC + t, mask=r < L, other=0.0)
    total = tl.sum(acc, axis=0)
    run = total * 0.0
    for start in range(0, L, BLOCK):
        r = start + tl.arange(0, BLOCK)
        in_r = r < L
        t = _order_positions(PERM, r, in_r, NATURAL)
        dp = tl.load(DP + t, mask=in_r, other=0.0)
        x = dp + tl.load(DC + t, mask=in_r, other=0.0)
        suffix = total - run - tl.cumsum(x, 0) + x
        tl.store(DLA + r, suffix - dp, mask=in_r)
        run += tl.sum(x, 0)


@triton.jit
def _load_feat(ptr, bh, L, offs, in_rows, offs_d, D):
    """Rows of a prepared (B, H, L, D) contiguous tensor (φ(q)·scale, φ(k) or dy/D), in its stored dtype."""
    base = (bh * L).to(tl.int64)
    return tl.load(ptr + (base + offs)[:, None] * D + offs_d[None, :], mask=in_rows[:, None] & (offs_d[None, :] < D),
                   other=0.0)


@triton.jit
def _prep_kernel(Q, K, KEEP, DY, Y, DEN, QF, KF, DYN, DLT, LA1, LA2, PERM, PC,
                 sqb, sqh, sql, skb, skh, skl, syb, syh, syl, sdyb, sdyh, sdyl, s1b, s1h, s1l, s2b, s2h, s2l,
                 H, L, D, DV, scale, eps,
                 FEATURE: tl.constexpr, HAS_KEEP: tl.constexpr, WITH_Q: tl.constexpr, WITH_DY: tl.constexpr,
                 NORMALIZE: tl.constexpr, SUMS: tl.constexpr, NATURAL: tl.constexpr, NORD: tl.constexpr,
                 BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """Once per token, so that the L×L loops only load: φ(k)·keep → KF; φ(q)·scale → QF (WITH_Q);
    dy/D → DYN and (dy·y)/D → DLT (WITH_DY). KF, QF, DYN: (B, H, L, ·) in the compute dtype; DLT (B, H, L) fp32.
    SUMS: each order's prefix sums P, C of its per-token gates LA1 (LA2) at every token → PC (2, orders, B, H, L),
    PERM (orders, L) int32 the orders' permutations (NATURAL: the natural order, no PERM)."""
    bh, b, h, offs, in_r = token_block(H, L, BLOCK)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    row = (bh * L).to(tl.int64) + offs
    out_d = in_r[:, None] & (offs_d[None, :] < D)
    kk = key_keep(KEEP, b, L, offs, in_r, HAS_KEEP)
    k = phi(load_rows(K + b * skb + h * skh, offs, in_r, skl, offs_d, D), kk, offs_d, D, FEATURE)
    tl.store(KF + row[:, None] * D + offs_d[None, :], k.to(KF.dtype.element_ty), mask=out_d)
    if WITH_Q:
        q = phi(load_rows(Q + b * sqb + h * sqh, offs, in_r, sql, offs_d, D), in_r, offs_d, D, FEATURE) * scale
        tl.store(QF + row[:, None] * D + offs_d[None, :], q.to(QF.dtype.element_ty), mask=out_d)
    if WITH_DY:
        dyn, dlt = dy_rows(DY, Y, DEN, DY + b * sdyb + h * sdyh, Y + b * syb + h * syh, DEN + bh * L, offs, in_r,
                            sdyl, syl, offs_dv, DV, eps, NORMALIZE)
        tl.store(DYN + row[:, None] * DV + offs_dv[None, :], dyn.to(DYN.dtype.element_ty),
                 mask=in_r[:, None] & (offs_dv[None, :] < DV))
        if NORMALIZE:
            tl.store(DLT + row, dlt, mask=in_r)
    if SUMS:  # one program per head (the first token block) runs each order's prefix sums
        if tl.program_id(0) == 0:
            BHL = tl.num_programs(1) * L
            _order_sums(LA1 + b * s1b + h * s1h, s1l, PERM, PC + bh * L, PC + NORD * BHL + bh * L, L, NATURAL,
                        BLOCK)
            if NORD == 2:
                _order_sums(LA2 + b * s2b + h * s2h, s2l, PERM + L, PC + BHL + bh * L, PC + 3 * BHL + bh * L, L,
                            NATURAL, BLOCK)


@triton.jit
def _fwd_kernel(Q, KF, V, P, C, R, LAM, SEED, Y, DEN,
                sqb, sqh, sql, svb, svh, svl, syb, syh, syl,
                H, L, D, DV, scale, eps, dropout_p, inv_keep,
                NORD: tl.constexpr, NATURAL: tl.constexpr, DECAY: tl.constexpr, COUNTS: tl.constexpr,
                FEATURE: tl.constexpr,
                NORMALIZE: tl.constexpr, DROPOUT: tl.constexpr, PREC: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """y for BLOCK_M queries; keys come as prepared features KF (φ and padding applied by _prep_kernel)."""
    bh, b, h, offs_m, in_m = token_block(H, L, BLOCK_M)
    BHL = tl.num_programs(1) * L
    lam1, lam2 = _decay_gates(LAM, h, H, NORD, DECAY)
    dt = V.dtype.element_ty
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    q = phi(load_rows(Q + b * sqb + h * sqh, offs_m, in_m, sql, offs_d, D), in_m, offs_d, D, FEATURE)
    q = (q * scale).to(dt)
    v_ptr = V + b * svb + h * svh
    if DROPOUT:
        seed = tl.load(SEED) + bh
    acc = tl.zeros((BLOCK_M, BLOCK_DV), dtype=tl.float32)
    den = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for start_n in range(0, L, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        in_n = offs_n < L
        k = _load_feat(KF, bh, L, offs_n, in_n, offs_d, D)
        v = tl.load(v_ptr + offs_n[:, None] * svl + offs_dv[None, :],
                    mask=in_n[:, None] & (offs_dv[None, :] < DV), other=0.0).to(dt)
        a = tl.dot(q, tl.trans(k), input_precision=PREC)
        if NORD > 0:
            m, m1, aux1, m2, aux2 = _tile_mask(P, C, R, bh, BHL, L, offs_m, offs_n, in_m, in_n, lam1, lam2, NORD,
                                               NATURAL, DECAY, COUNTS, False)
            a = a * m
        if NORMALIZE:
            den += tl.sum(a, axis=1)
        if DROPOUT:
            a = tl.where(_dropout_keep(seed, tl.program_id(0) * BLOCK_M, start_n, L, dropout_p, BLOCK_M, BLOCK_N,
                                       False), a * inv_keep, 0.0)
        acc += tl.dot(a.to(dt), v, input_precision=PREC)
    if NORMALIZE:
        acc = acc / (den + eps)[:, None]
        tl.store(DEN + bh * L + offs_m, den, mask=in_m)
    tl.store(Y + b * syb + h * syh + offs_m[:, None] * syl + offs_dv[None, :], acc.to(Y.dtype.element_ty),
             mask=in_m[:, None] & (offs_dv[None, :] < DV))


@triton.jit
def _bwd_kernel(K, V, P, C, R, LAM, KEEP, SEED, QF, KF, DYN, DLT, DQA, DK, DVV, DP, DC,
                skb, skh, skl, svb, svh, svl, sgb, sgh, sgl, sgvb, sgvh, sgvl,
                H, L, D, DV, dropout_p, inv_keep,
                NORD: tl.constexpr, NATURAL: tl.constexpr, DECAY: tl.constexpr, COUNTS: tl.constexpr,
                FEATURE: tl.constexpr,
                NORMALIZE: tl.constexpr, HAS_KEEP: tl.constexpr, DROPOUT: tl.constexpr, PREC: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """The program owns BLOCK_N keys (dk, dv and the keys' sums of G in registers) and walks every query block
    once: each score tile, dpv tile and mask is computed once, and the program adds its share of dφq (fp32, DQA) and
    of the queries' sums of G (DP, DC) with atomics. Tiles are transposed, [key, query], so that every product has
    BLOCK_N rows (Hopper's warpgroup MMA needs 64; a [query, key] tile of 32 queries fell back to the older MMA, with
    layout shuffles between the two). (A two-loop variant without atomics, FlashAttention-2's, recomputing the scores
    for dφq, was 6–14 % slower at ViT and BERT shapes on an H200: benchmarks/RESULTS.md.) DQA, DP, DC must be zero on
    entry. DECAY: DP is the (orders, H) gradient of log λ, Σ_ij G_ij n_ij, one atomic per program and order."""
    bh, b, h, offs_n, in_n = token_block(H, L, BLOCK_N)
    BHL = tl.num_programs(1) * L
    lam1, lam2 = _decay_gates(LAM, h, H, NORD, DECAY)
    dt = V.dtype.element_ty
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    w = 0.5 if NORD == 2 else 1.0
    if DROPOUT:
        seed = tl.load(SEED) + bh
    k_b = _load_feat(KF, bh, L, offs_n, in_n, offs_d, D)
    v_b = tl.load(V + b * svb + h * svh + offs_n[:, None] * svl + offs_dv[None, :],
                  mask=in_n[:, None] & (offs_dv[None, :] < DV), other=0.0).to(dt)
    dk = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_DV), dtype=tl.float32)
    klo = tl.zeros((BLOCK_N,), dtype=tl.float32)
    kup = tl.zeros((BLOCK_N,), dtype=tl.float32)
    klo2 = tl.zeros((BLOCK_N,), dtype=tl.float32)
    kup2 = tl.zeros((BLOCK_N,), dtype=tl.float32)
    dqa_base = (bh * L).to(tl.int64)
    for start_m in range(0, L, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        in_m = offs_m < L
        q = _load_feat(QF, bh, L, offs_m, in_m, offs_d, D)
        dyn = _load_feat(DYN, bh, L, offs_m, in_m, offs_dv, DV)
        s = tl.dot(k_b, tl.trans(q), input_precision=PREC)      # [key, query]
        dpv = tl.dot(v_b, tl.trans(dyn), input_precision=PREC)
        a = s
        if NORD > 0:
            m, m1, aux1, m2, aux2 = _tile_mask(P, C, R, bh, BHL, L, offs_m, offs_n, in_m, in_n, lam1, lam2, NORD,
                                               NATURAL, DECAY, COUNTS, True)
            a = s * m
        a_drop = a
        if DROPOUT:
            keep = _dropout_keep(seed, start_m, tl.program_id(0) * BLOCK_N, L, dropout_p, BLOCK_M, BLOCK_N, True)
            a_drop = tl.where(keep, a * inv_keep, 0.0)
            dpv = tl.where(keep, dpv * inv_keep, 0.0)
        dv += tl.dot(a_drop.to(dt), dyn, input_precision=PREC)
        da = dpv
        if NORMALIZE:
            da = dpv - tl.load(DLT + bh * L + offs_m, mask=in_m, other=0.0)[None, :]
        da = tl.where(in_n[:, None] & in_m[None, :], da, 0.0)
        ds = da
        if NORD > 0:
            ds = da * m
            klo, kup = _gate_grads(da * s * m1 * w, aux1, klo, kup, DP, DC, bh * L + offs_m, in_m, DECAY)
            if NORD == 2:
                klo2, kup2 = _gate_grads(da * s * m2 * w, aux2, klo2, kup2, DP, DC, BHL + bh * L + offs_m, in_m,
                                         DECAY)
        dsc = ds.to(dt)
        dk += tl.dot(dsc, q, input_precision=PREC)
        dq = tl.dot(tl.trans(dsc), k_b, input_precision=PREC)
        tl.atomic_add(DQA + (dqa_base + offs_m)[:, None] * D + offs_d[None, :], dq,
                      mask=in_m[:, None] & (offs_d[None, :] < D), sem="relaxed")
    kk_b = key_keep(KEEP, b, L, offs_n, in_n, HAS_KEEP)
    dk = phi_bwd(load_rows(K + b * skb + h * skh, offs_n, in_n, skl, offs_d, D), dk, kk_b, offs_d, D, FEATURE)
    tl.store(DK + b * sgb + h * sgh + offs_n[:, None] * sgl + offs_d[None, :], dk.to(DK.dtype.element_ty),
             mask=in_n[:, None] & (offs_d[None, :] < D))
    tl.store(DVV + b * sgvb + h * sgvh + offs_n[:, None] * sgvl + offs_dv[None, :], dv.to(DVV.dtype.element_ty),
             mask=in_n[:, None] & (offs_dv[None, :] < DV))
    if DECAY:
        tl.atomic_add(DP + h, tl.sum(klo, axis=0), sem="relaxed")
        if NORD == 2:
            tl.atomic_add(DP + H + h, tl.sum(klo2, axis=0), sem="relaxed")
    elif NORD > 0:
        tl.atomic_add(DP + bh * L + offs_n, -klo, mask=in_n, sem="relaxed")
        tl.atomic_add(DC + bh * L + offs_n, kup, mask=in_n, sem="relaxed")
        if NORD == 2:
            tl.atomic_add(DP + BHL + bh * L + offs_n, -klo2, mask=in_n, sem="relaxed")
            tl.atomic_add(DC + BHL + bh * L + offs_n, kup2, mask=in_n, sem="relaxed")


@triton.jit
def _bwd_q_kernel(Q, DQA, DQ, DP, DC, DLA, PERM, sqb, sqh, sql, sgb, sgh, sgl, H, L, D, scale, FEATURE: tl.constexpr,
                  SUMS: tl.constexpr, NATURAL: tl.constexpr, NORD: tl.constexpr, BLOCK: tl.constexpr,
                  BLOCK_D: tl.constexpr):
    """dq = φ'ᵀ(scale · DQA): the feature-map backward of the accumulated dφq, into dq's layout. SUMS: also the
    gradient of each order's per-token log gates from those of their prefix sums (P = C − log a, C_t = Σ_{s≤t}
    log a_s): d log a_t = Σ_{s≥t} (dP_s + dC_s) − dP_t (``_order_sums_grad``), DP and DC (orders, B, H, L) at
    natural positions, DLA (orders, B, H, L) in each order's indexing."""
    bh, b, h, offs, in_r = token_block(H, L, BLOCK)
    offs_d = tl.arange(0, BLOCK_D)
    g = _load_feat(DQA, bh, L, offs, in_r, offs_d, D) * scale
    dq = phi_bwd(load_rows(Q + b * sqb + h * sqh, offs, in_r, sql, offs_d, D), g, in_r, offs_d, D, FEATURE)
    tl.store(DQ + b * sgb + h * sgh + offs[:, None] * sgl + offs_d[None, :], dq.to(DQ.dtype.element_ty),
             mask=in_r[:, None] & (offs_d[None, :] < D))
    row = (bh * L).to(tl.int64)
    if SUMS:  # one program per head
        if tl.program_id(0) == 0:
            BHL = tl.num_programs(1) * L
            _order_sums_grad(DP + row, DC + row, PERM, DLA + row, L, NATURAL, BLOCK)
            if NORD == 2:
                _order_sums_grad(DP + BHL + row, DC + BHL + row, PERM + L, DLA + BHL + row, L, NATURAL, BLOCK)


# ------------------------------------------------------------------------------------------------ launch configs
# Register reports: benchmarks/triton_compile_check.py --regs (ptxas -v). The first entry of each list is the one
# used without autotuning (LION_TRITON_AUTOTUNE=0, tests).
# The lists hold the fastest tiles of a sweep of each kernel alone on an H200 (B128, L197 H6 and L128 H12, LION-D
# and LION-S, bf16; benchmarks/RESULTS.md): 4 warps beat 8 in both kernels (the backward's 8-warp tiles ran 1.3–1.7×
# slower: one program per multiprocessor at 166 registers a thread).
def _fwd_configs():
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=st)
            for bm, bn, w, st in [(64, 32, 4, 2), (64, 64, 4, 3), (64, 64, 4, 2), (128, 32, 8, 2), (128, 64, 8, 2)]]


def _bwd_configs():
    # maxnreg 168: three programs per multiprocessor instead of two (255 registers uncapped); LION-D's backward
    # 20–25 % faster at ViT-S and BERT shapes (benchmarks/RESULTS.md)
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=st, maxnreg=mr)
            for bm, bn, w, st, mr in [(32, 64, 4, 3, 168), (32, 64, 4, 2, 168), (32, 64, 4, 2, 128),
                                      (32, 64, 4, 2, None), (64, 64, 4, 3, None)]]


_KEY = ["L", "D", "DV", "NORD", "NATURAL", "DECAY", "COUNTS", "FEATURE", "NORMALIZE", "HAS_KEEP", "DROPOUT", "PREC"]
_fwd = Launcher(_fwd_kernel, _fwd_configs(), [k for k in _KEY if k != "HAS_KEEP"],
                triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=1, num_stages=1))
_bwd = Launcher(_bwd_kernel, _bwd_configs(), _KEY, triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=1,
                                                                  num_stages=1),
                reset_to_zero=["DQA", "DP", "DC"])  # accumulated with atomics


# ------------------------------------------------------------------------------------------------ custom ops
def _meta(q, v, gates, R, keep, seed, feature, normalize, dropout_p, fwd=False):
    """The kernels' constexprs; ``gates``: ``_gate_mode``'s (orders, mode); ``fwd``: the forward kernel's (no
    HAS_KEEP: _prepare applies padding to φ(k)). A fresh dict of a cached one (eager steps call this per layer)."""
    return dict(_meta_cached(*gates, R is None, keep is not None, seed is not None and dropout_p > 0.0, feature,
                             normalize, v.dtype == torch.float32, q.shape[-1], v.shape[-1], fwd))


@functools.lru_cache(maxsize=None)
def _meta_cached(n_orders, mode, natural, has_keep, dropout, feature, normalize, fp32, D, DV, fwd):
    meta = dict(NORD=n_orders, NATURAL=natural, DECAY=mode == "decay", COUNTS=mode == "decay" and has_keep,
                FEATURE=feature, NORMALIZE=normalize, HAS_KEEP=has_keep, DROPOUT=dropout,
                PREC="ieee" if fp32 else "tf32", BLOCK_D=block_size(D), BLOCK_DV=block_size(DV))
    if fwd:
        del meta["HAS_KEEP"]
    return meta


def _gate_mode(P, C, R):
    """(orders, mode) of the gate inputs: 'decay' P (H,) or (orders, H) log λ per head; 'sums' P (and C for a second
    order) (B, H, L) per-token log gates of the orders ranked by R (None: the natural order), each in its order's
    indexing, whose prefix sums _prep_kernel forms once per token (the fwd/bwd kernels read them; forming them in
    those kernels instead, a running sum over the blocks, took LION-S's op kernels 1.21 × the time at L = 197 and 128
    on an H200, benchmarks/RESULTS.md); (0, None): Lit. Per-token gates may have any strides."""
    if P is None:
        return 0, None
    if P.dim() <= 2:
        return (1 if P.dim() == 1 else P.shape[0]), "decay"
    return (1 if C is None else 2), "sums"


def _gate_strides(P):
    return tuple(P.stride()) if P is not None and P.dim() == 3 else (0, 0, 0)


def _kernel_gates(q, P, C, R, keep, gates):
    """(P, C, sums): the P, C pointers of the fwd/bwd kernels and ``_prepare``'s ``sums`` (None: nothing to form).
    'sums' mode: a (2, orders, B, H, L) buffer of the per-token gates' prefix sums, which _prep_kernel fills (P, C
    are then its halves). 'decay' with padding (COUNTS): the same buffer holds each order's counts of real tokens
    before / up to each token (the prefix sums of keep in that order), the exponents of λ; the gates stay per head.
    ``gates``: ``_gate_mode``'s (orders, mode)."""
    n, mode = gates
    if mode == "sums":
        las = [P, C]
    elif mode == "decay" and keep is not None:
        B, H, L = q.shape[:3]
        real = keep.to(torch.float32)
        las = [(real if R is None else real.index_select(1, R[1][o]))[:, None, :].expand(B, H, L) for o in range(n)]
        las += [None] * (2 - n)
    else:
        return P, C, None
    B, H, L = las[0].shape
    pc = torch.empty(2, n, B, H, L, device=q.device, dtype=torch.float32)
    return pc[0], pc[1], (las[0], las[1], R, pc)


# token rows per program of the per-token kernels (_prep_kernel, _bwd_q_kernel); 64 rows with 4 warps spill
# (ptxas -v, sm_90)
_TOKEN_ROWS = 16 if INTERPRET else 32


def _prepare(q, k, keep, scale, feature, with_q=False, dy=None, y=None, den=None, eps=0.0, normalize=True,
             dtype=None, sums=None):
    """_prep_kernel: φ(k)·keep, optionally φ(q)·scale and dy/D, δ/D, each once per token (see the kernel);
    ``sums``: (la1, la2 or None, R, pc) to fill pc with the orders' prefix sums (R[1]: the permutations; R None:
    the natural order)."""
    B, H, L, D = q.shape
    dt = dtype or q.dtype
    kf = torch.empty(B, H, L, D, device=q.device, dtype=dt)
    qf = torch.empty_like(kf) if with_q else kf
    with_dy = dy is not None
    DV = dy.shape[-1] if with_dy else D
    dyn = torch.empty(B, H, L, DV, device=q.device, dtype=dt) if with_dy else kf
    dlt = torch.empty(B, H, L, device=q.device, dtype=torch.float32) if with_dy and normalize else kf
    if not with_dy:
        y = dy = den = q
    la1, la2, R, pc = sums or (q, None, None, q)
    nord = 1 if la2 is None else 2
    perm = q if R is None else R[1]
    launch(_prep_kernel, (cdiv(L, _TOKEN_ROWS), B * H), (
        q, k, q if keep is None else keep, dy, y, den, qf, kf, dyn, dlt, la1, la1 if la2 is None else la2, perm, pc,
        *q.stride()[:3], *k.stride()[:3], *y.stride()[:3], *dy.stride()[:3], *_gate_strides(la1),
        *_gate_strides(la2), H, L, D, DV, scale, eps), dict(
        FEATURE=feature, HAS_KEEP=keep is not None, WITH_Q=with_q, WITH_DY=with_dy, NORMALIZE=normalize,
        SUMS=sums is not None, NATURAL=R is None, NORD=nord, BLOCK=_TOKEN_ROWS, BLOCK_D=block_size(D),
        BLOCK_DV=block_size(DV), num_warps=1 if INTERPRET else 4))
    return qf, kf, dyn, dlt


def _attention_fwd(q, k, v, P, C, R, keep, seed, scale, eps, feature, normalize, dropout_p):
    q, k, v = last_dim_unit(q), last_dim_unit(k), last_dim_unit(v)
    B, H, L, D = q.shape
    DV = v.shape[-1]
    y = token_major(B, H, L, DV, q, v.dtype)
    den = torch.empty((B, H, L) if normalize else (0,), device=q.device, dtype=torch.float32)
    gates = _gate_mode(P, C, R)
    meta = _meta(q, v, gates, R, keep, seed, feature, normalize, dropout_p, fwd=True)
    Pk, Ck, sums = _kernel_gates(q, P, C, R, keep, gates)
    _, kf, _, _ = _prepare(q, k, keep, scale, feature, dtype=v.dtype, sums=sums)
    Pp, Cp, Rp, Lp, Sp = stand_ins(q, Pk, Ck, R, P, seed)
    grid = lambda m: (cdiv(L, m["BLOCK_M"]), B * H)  # noqa: E731
    _fwd(grid, q, kf, v, Pp, Cp, Rp, Lp, Sp, y, den, *q.stride()[:3], *v.stride()[:3],
         *y.stride()[:3], H, L, D, DV, scale, eps, dropout_p, 1.0 / (1.0 - dropout_p), **meta)
    return y, den


@torch.library.custom_op("lion::attention_fwd", mutates_args=())
def attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, P: Optional[torch.Tensor],
                  C: Optional[torch.Tensor], R: Optional[torch.Tensor], keep: Optional[torch.Tensor],
                  seed: Optional[torch.Tensor], scale: float, eps: float, feature: int, normalize: bool,
                  dropout_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """y (B, H, L, dv) in v's dtype (a view of a (B, L, H, dv) buffer) and den (B, H, L) fp32 (empty unless
    ``normalize``). q, k: raw (φ applied in-kernel); P, C: fp32 gates as ``_gate_mode`` describes; R: (2, orders, L)
    int32, the tokens' ranks in each order then the orders' permutations (None: natural order); keep: (B, L) bool;
    seed: (1,) int64 dropout seed."""
    return _attention_fwd(q, k, v, P, C, R, keep, seed, scale, eps, feature, normalize, dropout_p)


@attention_fwd.register_fake
def _(q, k, v, P, C, R, keep, seed, scale, eps, feature, normalize, dropout_p):
    B, H, L, _ = q.shape
    return (token_major(B, H, L, v.shape[-1], q, v.dtype),
            q.new_empty((B, H, L) if normalize else (0,), dtype=torch.float32))


def _zeros(device, shape1, shape2):
    """Two fp32 zero tensors carved from one allocation (one fill instead of two; slices, no split op)."""
    n1 = math.prod(shape1)
    flat = torch.zeros(n1 + math.prod(shape2), device=device, dtype=torch.float32)
    return flat[:n1].view(shape1), flat[n1:].view(shape2)


def _attention_bwd(q, k, v, P, C, R, keep, seed, y, den, dy, scale, eps, feature, normalize, dropout_p):
    q, k, v, dy = last_dim_unit(q), last_dim_unit(k), last_dim_unit(v), last_dim_unit(dy)
    B, H, L, D = q.shape
    DV = v.shape[-1]
    dqkv = grad_buffer(B, H, L, D, DV, q, v.dtype)
    dq, dk, dv = grad_views(dqkv, D, DV)
    # dφq (fp32, accumulated over key blocks) and the gate gradients: atomically accumulated, one zeroed buffer
    n, mode = _gate_mode(P, C, R)
    if mode == "sums":  # the kernel accumulates dP, dC per token; _bwd_q_kernel turns them into d log a
        dqa, dPC = _zeros(q.device, (B, H, L, D), (2, n, B, H, L))
        dP, dC = dPC.unbind(0)
        dgates = torch.empty(_gates_grad_shape(P, C), device=q.device, dtype=torch.float32)
    else:
        dqa, dgates = _zeros(q.device, (B, H, L, D), _gates_grad_shape(P, C))
        dP = dgates[0] if P is not None else dgates  # decay: d log λ, P's shape; Lit: not read
        dC = dgates[1] if C is not None else dP  # not read without C
    meta = _meta(q, v, (n, mode), R, keep, seed, feature, normalize, dropout_p)
    Pk, Ck, sums = _kernel_gates(q, P, C, R, keep, (n, mode))
    qf, kf, dyn, dlt = _prepare(q, k, keep, scale, feature, True, dy, y, den, eps, normalize, v.dtype, sums=sums)
    Pp, Cp, Rp, Lp, Kp, Sp = stand_ins(q, Pk, Ck, R, P, keep, seed)
    grid = lambda m: (cdiv(L, m["BLOCK_N"]), B * H)  # noqa: E731
    _bwd(grid, k, v, Pp, Cp, Rp, Lp, Kp, Sp, qf, kf, dyn, dlt, dqa, dk, dv, dP, dC,
              *k.stride()[:3], *v.stride()[:3], *dk.stride()[:3], *dv.stride()[:3],
              H, L, D, DV, dropout_p, 1.0 / (1.0 - dropout_p), **meta)
    launch(_bwd_q_kernel, (cdiv(L, _TOKEN_ROWS), B * H),
           (q, dqa, dq, dP, dC, dgates, q if R is None else R[1], *q.stride()[:3], *dq.stride()[:3], H, L, D, scale),
           dict(FEATURE=feature, SUMS=mode == "sums", NATURAL=R is None, NORD=max(n, 1), BLOCK=_TOKEN_ROWS,
                BLOCK_D=meta["BLOCK_D"], num_warps=1 if INTERPRET else 4))
    return dqkv, dgates, (dq, dk, dv)


def _gates_grad_shape(P, C):
    """(1, *P.shape): the gradient of P (decay: d log λ; per-token gates: d log a); (2, *P.shape) with C (a
    second order's per-token gates); (0,) without gates."""
    if P is None:
        return (0,)
    return (1 if C is None else 2, *P.shape)


@torch.library.custom_op("lion::attention_bwd", mutates_args=())
def attention_bwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, P: Optional[torch.Tensor],
                  C: Optional[torch.Tensor], R: Optional[torch.Tensor], keep: Optional[torch.Tensor],
                  seed: Optional[torch.Tensor], y: torch.Tensor, den: torch.Tensor, dy: torch.Tensor, scale: float,
                  eps: float, feature: int, normalize: bool, dropout_p: float
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(dqkv, dgates): dq, dk, dv in one ``grad_buffer`` (read them with ``grad_views``); the gradients of P and
    C stacked (``_gates_grad_shape``)."""
    return _attention_bwd(q, k, v, P, C, R, keep, seed, y, den, dy, scale, eps, feature, normalize, dropout_p)[:2]


@attention_bwd.register_fake
def _(q, k, v, P, C, R, keep, seed, y, den, dy, scale, eps, feature, normalize, dropout_p):
    B, H, L, D = q.shape
    return (grad_buffer(B, H, L, D, v.shape[-1], q, v.dtype),
            q.new_empty(_gates_grad_shape(P, C), dtype=torch.float32))


def _input_grads(tensors, result):
    """Gradients of (q, k, v, P, C, R, keep, seed) from the backward's (dqkv, dgates), or the eager backward's
    (dqkv, dgates, (dq, dk, dv)) (dq, dk, dv as views of dqkv)."""
    q, k, v, P, C = tensors[:5]
    dqkv, dgates, *views = result
    dq, dk, dv = views[0] if views else grad_views(dqkv, q.shape[-1], v.shape[-1])
    return dq, dk, dv, dgates[0] if P is not None else None, dgates[1] if C is not None else None, None, None, None


# (q, k, v, P, C, R, keep, seed, scale, eps, feature, normalize, dropout_p) → y
attention = FusedOp(_attention_fwd, _attention_bwd, 8, _input_grads, custom_ops=(attention_fwd, attention_bwd))


# ------------------------------------------------------------------------------------------------ entry point
_RANKS: dict = {}  # id(perms) → (perms, versions, ranks and permutations): the orders repeat every layer


def _ranks(perms):
    """(2, orders, L) int32: each token's rank (position) in each order, then the permutations themselves; cached
    per permutation tensor (the models pass the same cached ♮ permutations to every layer)."""
    def make():
        return torch.stack([torch.stack([inverse_permutation(p) for p in perms]), torch.stack(list(perms))]).to(
            torch.int32)
    if torch.compiler.is_compiling() or any(p.is_inference() for p in perms):
        return make()  # no cache: ids of traced tensors mean nothing, and inference tensors keep no version counter
    key = tuple(id(p) for p in perms)
    hit = _RANKS.get(key)
    if hit is not None and all(a is b for a, b in zip(hit[0], perms)) and hit[1] == [p._version for p in perms]:
        return hit[2]
    ranks = make()
    if len(_RANKS) >= 64:
        _RANKS.clear()
    _RANKS[key] = (tuple(perms), [p._version for p in perms], ranks)
    return ranks


def _gate_inputs(g, g_gamma, perms, key_padding_mask):
    """(P, C, R) for the kernels (``_gate_mode``); R: ``_ranks`` of the orders ``perms`` (None: the natural order);
    all None for Lit. Per-head gates ``g_gamma`` (H,) (LION-D): P is the (H,) or (orders, H) log λ itself and C
    None: the kernels form M = λ^n, n = |r_i − r_j| (with padding: the number of real tokens between, see
    ``_kernel_gates``), and return d log λ. Per-token gates ``g`` (B, H, L), padded tokens' set to 0 (gate 1): one
    natural order's as P; the ♮ orders' (each in its order's indexing) as P and C with R. The kernels form every
    prefix sum themselves. With ``perms``, ``g`` / ``g_gamma`` hold one entry per order."""
    gates = one_gate_kind(g, g_gamma)
    if gates is None:  # M = 1 in every order: Lit
        return None, None, None
    las = [gates] if perms is None else list(gates)
    if perms is not None and len(perms) > 2:
        raise ValueError(f"orders: the fused kernels take one or two token orders, got {len(perms)}; "
                         "use backend='torch' for more")
    if perms is not None and len(las) != len(perms):
        raise ValueError(f"one gate tensor per order: {len(perms)} orders, {len(las)} gate tensors")
    if any(la.dim() != (1 if g is None else 3) for la in las):
        raise ValueError("g: per-token log gates (B, H, L); g_gamma: per-head log gates (H,)")
    R = None if perms is None else _ranks(perms)
    if g_gamma is not None:
        return (torch.stack([la.float() for la in las]) if len(las) > 1 else las[0].float().contiguous()), None, R
    las = [gates_one_at_padding(la.float(), key_padding_mask, p) for la, p in zip(las, perms or [None])]
    return las[0], (las[1] if len(las) == 2 else None), R


def fused_attention(q, k, v, g: Optional[torch.Tensor] = None, g_gamma: Optional[torch.Tensor] = None, *,
                    perms: Optional[Sequence[torch.Tensor]] = None, feature_map: Optional[str] = None,
                    scale: float = 1.0, normalize: bool = True, eps: float = 1e-6,
                    key_padding_mask: Optional[torch.Tensor] = None, dropout_p: float = 0.0,
                    lit_kv: Optional[bool] = None) -> torch.Tensor:
    """The attention form of ``lion.lion_attention`` in one fused kernel per direction of the graph; the same
    arguments with the gates as ``lion.masks.gate_arguments`` gives them: per-token log gates ``g`` (B, H, L) or
    per-head ``g_gamma`` (H,) (none: Lit), and ``perms`` the ♮ orders (one or two permutations, each with its
    entry of ``g`` / ``g_gamma`` in its own indexing). ``dropout_p`` > 0 means training. q, k, v may be strided
    views (last dim contiguous).

    ``lit_kv`` (M = 1, normalised, no dropout): True forces the KᵀV path (``lion.ops.triton.lit``, O(L·d·dv)),
    False the L×L kernel; None picks KᵀV when L ≥ head dim."""
    check_device(q, "backend='triton' (the fused attention form)")
    feature = feature_code(feature_map)
    dt = compute_dtype(q, k, v)
    q, k, v = q.to(dt), k.to(dt), v.to(dt)
    L, D = q.shape[-2], q.shape[-1]
    P, C, R = _gate_inputs(g, g_gamma, perms, key_padding_mask)
    keep = None if key_padding_mask is None else key_padding_mask.to(torch.bool).contiguous()
    if P is None and normalize and dropout_p == 0.0 and (lit_kv if lit_kv is not None else L >= D):
        return lit_kv_attention(q, k, v, keep, float(scale), float(eps), feature)
    seed = None
    if dropout_p > 0.0:
        if not 0.0 < dropout_p < 1.0:
            raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
        seed = torch.randint(0, 2 ** 31 - 2 ** 24, (1,), device=q.device, dtype=torch.int64)
    return attention(q, k, v, P, C, R, keep, seed, float(scale), float(eps), feature, bool(normalize),
                     float(dropout_p))


def dropout_keep_mask(seed: torch.Tensor, B: int, H: int, L: int, dropout_p: float) -> torch.Tensor:
    """The (B, H, L, L) keep mask the kernels draw for ``seed`` (for tests): A_ij survives iff it is True."""
    keep = torch.empty(B * H, L, L, device=seed.device, dtype=torch.int8)
    _keep_kernel[(B * H, cdiv(L, 16))](seed, keep, L, dropout_p, ROWS=16, BLOCK=block_size(L))
    return keep.view(B, H, L, L).bool()


@triton.jit
def _keep_kernel(SEED, OUT, L, dropout_p, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    bh = tl.program_id(0)
    rows = tl.program_id(1) * ROWS + tl.arange(0, ROWS)
    offs = tl.arange(0, BLOCK)
    keep = _dropout_keep(tl.load(SEED) + bh, tl.program_id(1) * ROWS, 0, L, dropout_p, ROWS, BLOCK, False)
    tl.store(OUT + (bh * L + rows[:, None]) * L + offs[None, :], keep.to(tl.int8),
             mask=(rows < L)[:, None] & (offs < L)[None, :])
