"""Triton kernels of the attention form of LION (docs/lion.md §1): forward and backward, mask made on the fly.

Per head, with P the exclusive and C the inclusive prefix sum of the log gates (lion.masks):

    A_ij = scale·(q_i·k_j)·M_ij,  M_ij = exp(P_i − P_j) (i ≥ j),  exp(C_j − C_i) (i < j)
    num_i = Σ_j A_ij v_j,  den_i = Σ_j A_ij

Only tiles of A live in registers (FlashAttention-style loops); no L×L tensor is written to memory.
Backward, with dA_ij = dnum_i·v_j + dden_i and G = dA ⊙ A (= the gradient of log M):
    dv_j = Σ_i A_ij dnum_i,  dk_j = scale Σ_i dA_ij M_ij q_i          (_bwd_kv, one program per key block)
    dq_i = scale Σ_j dA_ij M_ij k_j                                    (_bwd_q, one program per query block)
    dP_t = Σ_{j≤t} G_tj − Σ_{i≥t} G_it,  dC_t = Σ_{i<t} G_it − Σ_{j>t} G_tj   (row/column sums of the triangles)
The prefix sums' own backward (reverse cumsums into log a) is left to autograd (lion.ops.triton.attention).

Exponentials: a tile that lies wholly below (above) the diagonal has M_ij = e^{P_i − r}·e^{r − P_j}
(e^{C_j − r}·e^{r − C_i}) with r the prefix sum at the block edge, both factors ≤ 1 since log a ≤ 0: BLOCK_M + BLOCK_N
exponentials instead of BLOCK_M·BLOCK_N. Only diagonal tiles evaluate exp per element. Out-of-range positions load
NEG, so every exponent stays ≤ 0 (no inf·0).
q and k are cast to v's dtype on load (fp32 features under autocast need no extra cast pass).
"""
import os

import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
# LION_TRITON_AUTOTUNE=0 takes the first config below without timing the others (faster first call).
AUTOTUNE = os.environ.get("LION_TRITON_AUTOTUNE", "1") == "1"


def _configs():
    if INTERPRET:  # small tiles so that the CPU tests cross several blocks and ragged edges
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=1, num_stages=1)]
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
            for bm, bn, w, s in [(64, 64, 4, 2), (64, 64, 4, 3), (128, 64, 8, 2), (64, 32, 4, 2), (64, 32, 4, 3),
                                 (32, 64, 4, 2), (32, 64, 4, 3), (32, 32, 4, 2), (32, 32, 2, 3)]]


_KEY = ["L", "BLOCK_D", "BLOCK_DV", "HAS_MASK"]
_TUNED = {}


def launcher(kernel):
    """The kernel with its tile sizes chosen: fixed under the interpreter, else autotuned per length (made on
    first use, so importing this module needs no GPU driver)."""
    if INTERPRET or not AUTOTUNE:
        cfg = _configs()[0]
        return lambda grid, *args, **meta: kernel[grid(cfg.kwargs)](*args, **meta, **cfg.kwargs,
                                                                     num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    if kernel not in _TUNED:
        _TUNED[kernel] = triton.autotune(configs=_configs(), key=_KEY)(kernel)
    tuned = _TUNED[kernel]
    return lambda grid, *args, **meta: tuned[grid](*args, **meta)


NEG = tl.constexpr(-1.0e30)


@triton.jit
def _log_mask(offs_m, offs_n, p_i, c_i, p_j, c_j):
    lower = offs_m[:, None] >= offs_n[None, :]
    return tl.where(lower, p_i[:, None] - p_j[None, :], c_j[None, :] - c_i[:, None])


@triton.jit
def _row_factors(P, C, base, offs_m, in_m, m_start, m_last):
    """For a query block [m_start, m_last]: its P, C and the row factors of the factorised off-diagonal tiles."""
    p_i = tl.load(P + base + offs_m, mask=in_m, other=NEG)
    c_i = tl.load(C + base + offs_m, mask=in_m, other=NEG)
    r_lo = tl.load(P + base + m_start)
    r_up = tl.load(C + base + m_last)
    row_lo = tl.exp(p_i - r_lo)                                 # tiles left of the block (j < m_start)
    row_up = tl.where(in_m, tl.exp(r_up - c_i), 0.0)            # tiles right of the block (j > m_last)
    return p_i, c_i, r_lo, r_up, row_lo, row_up


@triton.jit
def _mask_by_rows(offs_m, offs_n, start_n, m_start, m_last, p_i, c_i, p_j, c_j, r_lo, r_up, row_lo, row_up,
                  BLOCK_N: tl.constexpr):
    """M on the tile (query block, keys offs_n) for a program that owns the query block."""
    if start_n + BLOCK_N <= m_start:
        m = row_lo[:, None] * tl.exp(r_lo - p_j)[None, :]
    elif start_n > m_last:
        m = row_up[:, None] * tl.exp(c_j - r_up)[None, :]
    else:
        m = tl.exp(_log_mask(offs_m, offs_n, p_i, c_i, p_j, c_j))
    return m


@triton.jit
def fwd_kernel(Q, K, V, P, C, NUM, DEN,
               sqb, sqh, sql, skb, skh, skl, svb, svh, svl,
               H, L, D, DV, scale,
               HAS_MASK: tl.constexpr, PREC: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    dt = V.dtype.element_ty
    m_start = pid_m * BLOCK_M
    m_last = tl.minimum(m_start + BLOCK_M, L) - 1
    offs_m = m_start + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    in_m = offs_m < L
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sql + offs_d[None, :],
                mask=in_m[:, None] & (offs_d[None, :] < D), other=0.0).to(dt)
    if HAS_MASK:
        p_i, c_i, r_lo, r_up, row_lo, row_up = _row_factors(P, C, bh * L, offs_m, in_m, m_start, m_last)
    acc = tl.zeros((BLOCK_M, BLOCK_DV), dtype=tl.float32)
    den = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for start_n in range(0, L, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        in_n = offs_n < L
        k = tl.load(K + b * skb + h * skh + offs_n[:, None] * skl + offs_d[None, :],
                    mask=in_n[:, None] & (offs_d[None, :] < D), other=0.0).to(dt)
        v = tl.load(V + b * svb + h * svh + offs_n[:, None] * svl + offs_dv[None, :],
                    mask=in_n[:, None] & (offs_dv[None, :] < DV), other=0.0)
        a = tl.dot(q, tl.trans(k), input_precision=PREC) * scale
        if HAS_MASK:
            p_j = tl.load(P + bh * L + offs_n, mask=in_n, other=NEG)
            c_j = tl.load(C + bh * L + offs_n, mask=in_n, other=NEG)
            a = a * _mask_by_rows(offs_m, offs_n, start_n, m_start, m_last, p_i, c_i, p_j, c_j, r_lo, r_up,
                                  row_lo, row_up, BLOCK_N)
        a = tl.where(in_n[None, :], a, 0.0)
        den += tl.sum(a, axis=1)
        acc += tl.dot(a.to(dt), v, input_precision=PREC)
    row = bh * L + offs_m
    tl.store(NUM + row[:, None] * DV + offs_dv[None, :], acc.to(NUM.dtype.element_ty),
             mask=in_m[:, None] & (offs_dv[None, :] < DV))
    tl.store(DEN + row, den, mask=in_m)


@triton.jit
def bwd_kv_kernel(Q, K, V, P, C, DO, DDEN, DK, DVV, GLO, GUP,
                  sqb, sqh, sql, skb, skh, skl, svb, svh, svl,
                  H, L, D, DV, scale,
                  HAS_MASK: tl.constexpr, HAS_DDEN: tl.constexpr, PREC: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """One program per key block: dk, dv and the column sums of G over the lower (i ≥ j) and upper triangles."""
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    dt = V.dtype.element_ty
    n_start = pid_n * BLOCK_N
    n_last = tl.minimum(n_start + BLOCK_N, L) - 1
    offs_n = n_start + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    in_n = offs_n < L
    k = tl.load(K + b * skb + h * skh + offs_n[:, None] * skl + offs_d[None, :],
                mask=in_n[:, None] & (offs_d[None, :] < D), other=0.0).to(dt)
    v = tl.load(V + b * svb + h * svh + offs_n[:, None] * svl + offs_dv[None, :],
                mask=in_n[:, None] & (offs_dv[None, :] < DV), other=0.0)
    if HAS_MASK:
        p_j = tl.load(P + bh * L + offs_n, mask=in_n, other=NEG)
        c_j = tl.load(C + bh * L + offs_n, mask=in_n, other=NEG)
        r_lo = tl.load(P + bh * L + n_last)   # tiles below the block (i > n_last): M = e^{P_i − r_lo} e^{r_lo − P_j}
        r_up = tl.load(C + bh * L + n_start)  # tiles above the block (i < n_start): M = e^{C_j − r_up} e^{r_up − C_i}
        col_lo = tl.where(in_n, tl.exp(r_lo - p_j), 0.0)
        col_up = tl.exp(c_j - r_up)
    dk = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_DV), dtype=tl.float32)
    glo = tl.zeros((BLOCK_N,), dtype=tl.float32)
    gup = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for start_m in range(0, L, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        in_m = offs_m < L
        q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sql + offs_d[None, :],
                    mask=in_m[:, None] & (offs_d[None, :] < D), other=0.0).to(dt)
        do = tl.load(DO + (bh * L + offs_m)[:, None] * DV + offs_dv[None, :],
                     mask=in_m[:, None] & (offs_dv[None, :] < DV), other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * scale
        da = tl.dot(do, tl.trans(v), input_precision=PREC)
        if HAS_DDEN:
            da += tl.load(DDEN + bh * L + offs_m, mask=in_m, other=0.0)[:, None]
        da = tl.where(in_m[:, None] & in_n[None, :], da, 0.0)
        if HAS_MASK:
            p_i = tl.load(P + bh * L + offs_m, mask=in_m, other=NEG)
            if start_m > n_last:
                m = tl.exp(p_i - r_lo)[:, None] * col_lo[None, :]
            elif start_m + BLOCK_M <= n_start:
                c_i = tl.load(C + bh * L + offs_m, mask=in_m, other=NEG)
                m = tl.exp(r_up - c_i)[:, None] * col_up[None, :]
            else:
                c_i = tl.load(C + bh * L + offs_m, mask=in_m, other=NEG)
                m = tl.exp(_log_mask(offs_m, offs_n, p_i, c_i, p_j, c_j))
            a = s * m
            ds = da * m * scale
            g = da * a
            lower = offs_m[:, None] >= offs_n[None, :]
            glo += tl.sum(tl.where(lower, g, 0.0), axis=0)
            gup += tl.sum(tl.where(lower, 0.0, g), axis=0)
        else:
            a = s
            ds = da * scale
        dv += tl.dot(tl.trans(a.to(dt)), do, input_precision=PREC)
        dk += tl.dot(tl.trans(ds.to(dt)), q, input_precision=PREC)
    row = bh * L + offs_n
    tl.store(DK + row[:, None] * D + offs_d[None, :], dk.to(DK.dtype.element_ty),
             mask=in_n[:, None] & (offs_d[None, :] < D))
    tl.store(DVV + row[:, None] * DV + offs_dv[None, :], dv.to(DVV.dtype.element_ty),
             mask=in_n[:, None] & (offs_dv[None, :] < DV))
    if HAS_MASK:
        tl.store(GLO + row, glo, mask=in_n)
        tl.store(GUP + row, gup, mask=in_n)


@triton.jit
def bwd_q_kernel(Q, K, V, P, C, DO, DDEN, DQ, GLO, GUP, DP, DC,
                 sqb, sqh, sql, skb, skh, skl, svb, svh, svl,
                 H, L, D, DV, scale,
                 HAS_MASK: tl.constexpr, HAS_DDEN: tl.constexpr, PREC: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """One program per query block: dq, and dP, dC from the row sums of G plus the column sums of _bwd_kv."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    dt = V.dtype.element_ty
    m_start = pid_m * BLOCK_M
    m_last = tl.minimum(m_start + BLOCK_M, L) - 1
    offs_m = m_start + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    in_m = offs_m < L
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sql + offs_d[None, :],
                mask=in_m[:, None] & (offs_d[None, :] < D), other=0.0).to(dt)
    do = tl.load(DO + (bh * L + offs_m)[:, None] * DV + offs_dv[None, :],
                 mask=in_m[:, None] & (offs_dv[None, :] < DV), other=0.0)
    if HAS_DDEN:
        dden = tl.load(DDEN + bh * L + offs_m, mask=in_m, other=0.0)
    if HAS_MASK:
        p_i, c_i, r_lo, r_up, row_lo, row_up = _row_factors(P, C, bh * L, offs_m, in_m, m_start, m_last)
    dq = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    rlo = tl.zeros((BLOCK_M,), dtype=tl.float32)
    rup = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for start_n in range(0, L, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        in_n = offs_n < L
        k = tl.load(K + b * skb + h * skh + offs_n[:, None] * skl + offs_d[None, :],
                    mask=in_n[:, None] & (offs_d[None, :] < D), other=0.0).to(dt)
        v = tl.load(V + b * svb + h * svh + offs_n[:, None] * svl + offs_dv[None, :],
                    mask=in_n[:, None] & (offs_dv[None, :] < DV), other=0.0)
        da = tl.dot(do, tl.trans(v), input_precision=PREC)
        if HAS_DDEN:
            da += dden[:, None]
        da = tl.where(in_m[:, None] & in_n[None, :], da, 0.0)
        if HAS_MASK:
            p_j = tl.load(P + bh * L + offs_n, mask=in_n, other=NEG)
            c_j = tl.load(C + bh * L + offs_n, mask=in_n, other=NEG)
            m = _mask_by_rows(offs_m, offs_n, start_n, m_start, m_last, p_i, c_i, p_j, c_j, r_lo, r_up,
                              row_lo, row_up, BLOCK_N)
            s = tl.dot(q, tl.trans(k), input_precision=PREC) * scale
            g = da * s * m
            lower = offs_m[:, None] >= offs_n[None, :]
            rlo += tl.sum(tl.where(lower, g, 0.0), axis=1)
            rup += tl.sum(tl.where(lower, 0.0, g), axis=1)
            ds = da * m * scale
        else:
            ds = da * scale
        dq += tl.dot(ds.to(dt), k, input_precision=PREC)
    row = bh * L + offs_m
    tl.store(DQ + row[:, None] * D + offs_d[None, :], dq.to(DQ.dtype.element_ty),
             mask=in_m[:, None] & (offs_d[None, :] < D))
    if HAS_MASK:
        tl.store(DP + row, rlo - tl.load(GLO + row, mask=in_m, other=0.0), mask=in_m)
        tl.store(DC + row, tl.load(GUP + row, mask=in_m, other=0.0) - rup, mask=in_m)
