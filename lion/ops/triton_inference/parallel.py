"""Chunk form in three fully parallel steps (inference), the fast path of ``FUSED['chunk']``:

1. ``_chunk_states``: per chunk c, its own contribution to the carried states of both directions,
       ΔF_c = Σ_{j∈c} e^{g_c − rF_j} k_j v_jᵀ,   ΔB_c = Σ_{j∈c} e^{rB_j} k_j v_jᵀ   (and the same with v = 1),
   with rF / rB the exclusive / inclusive prefix sums of the log gates inside the chunk and g_c their total.
2. ``_scan_states``: in place, the exclusive scan over chunks, SF_c = e^{g_{c−1}} SF_{c−1} + ΔF_{c−1} (left to
   right) and SB_c = e^{g_{c+1}} SB_{c+1} + ΔB_{c+1} (right to left); d×d fp32 states.
3. ``_chunk_output``: per chunk, the full C×C masked scores (lower part e^{rF_i − rF_j}, upper e^{rB_j − rB_i})
   plus the two carried states: y_i = Σ_{j∈c} A_ij v_j + e^{rF_i} q_i SF_c + e^{g_c − rB_i} q_i SB_c.
Every exponent is ≤ 0 (docs/lion.md §1). Extra memory: the states, 2·d·dv fp32 per chunk and head.
"""
import triton
import triton.language as tl


@triton.jit
def _chunk_states(
    K, V, LA, S, Z, G,
    skb, skh, skl, skd, svb, svh, svl, svd, sab, sah, sal,
    H, L, DK, DV, N,
    HAS_GATES: tl.constexpr, WITH_DEN: tl.constexpr, LOWP: tl.constexpr, PREC: tl.constexpr,
    QK_FP32: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr, DVP: tl.constexpr,
):
    pid_bh = tl.program_id(0)
    c = tl.program_id(1)
    pid_dv = tl.program_id(2)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    pos = c * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_dk = tl.arange(0, BLOCK_DK)
    offs_dv = pid_dv * BLOCK_DV + tl.arange(0, BLOCK_DV)
    ok = pos < L
    k = tl.load(K + b * skb + h * skh + pos[:, None] * skl + offs_dk[None, :] * skd,
                mask=ok[:, None] & (offs_dk[None, :] < DK), other=0.0)
    v = tl.load(V + b * svb + h * svh + pos[:, None] * svl + offs_dv[None, :] * svd,
                mask=ok[:, None] & (offs_dv[None, :] < DV), other=0.0)
    state = ((pid_bh.to(tl.int64) * N + c) * 2) * BLOCK_DK * DVP  # S is (B·H, N, 2, BLOCK_DK, DVP) fp32
    tile = offs_dk[:, None] * DVP + offs_dv[None, :]
    if QK_FP32:  # the triton 3.3 interpreter multiplies bf16 tiles wrongly
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    if HAS_GATES:
        la = tl.load(LA + b * sab + h * sah + pos * sal, mask=ok, other=0.0).to(tl.float32)
        incl = tl.cumsum(la, 0)
        g = tl.sum(la, 0)
        kf = k.to(tl.float32)
        k_fwd = kf * tl.exp(g - incl + la)[:, None]
        k_bwd = kf * tl.exp(incl)[:, None]
        if LOWP:
            d_fwd = tl.dot(tl.trans(k_fwd.to(v.dtype)), v)
            d_bwd = tl.dot(tl.trans(k_bwd.to(v.dtype)), v)
        else:
            vf = v.to(tl.float32)
            d_fwd = tl.dot(tl.trans(k_fwd), vf, input_precision=PREC)
            d_bwd = tl.dot(tl.trans(k_bwd), vf, input_precision=PREC)
        tl.store(S + state + tile, d_fwd)
        tl.store(S + state + BLOCK_DK * DVP + tile, d_bwd)
        if pid_dv == 0:
            tl.store(G + pid_bh.to(tl.int64) * N + c, g)
            if WITH_DEN:
                zb = ((pid_bh.to(tl.int64) * N + c) * 2) * BLOCK_DK
                tl.store(Z + zb + offs_dk, tl.sum(k_fwd, 0))
                tl.store(Z + zb + BLOCK_DK + offs_dk, tl.sum(k_bwd, 0))
    else:
        d = tl.dot(tl.trans(k), v, input_precision=PREC)
        tl.store(S + state + tile, d)
        tl.store(S + state + BLOCK_DK * DVP + tile, d)
        if WITH_DEN and pid_dv == 0:
            zb = ((pid_bh.to(tl.int64) * N + c) * 2) * BLOCK_DK
            zk = tl.sum(k.to(tl.float32), 0)
            tl.store(Z + zb + offs_dk, zk)
            tl.store(Z + zb + BLOCK_DK + offs_dk, zk)


@triton.jit
def _scan_states(S, Z, G, N, HAS_GATES: tl.constexpr, WITH_DEN: tl.constexpr, BLOCK_DK: tl.constexpr,
                 DVP: tl.constexpr, ROWS: tl.constexpr):
    """Grid (B·H, 2 directions, BLOCK_DK / ROWS): ROWS rows of the d×dv states, all chunks in order, in place.
    The next chunk's delta is loaded before the current one is stored (the loads do not wait on the scan)."""
    pid_bh = tl.program_id(0).to(tl.int64)
    fwd = tl.program_id(1) == 0
    rows = tl.program_id(2) * ROWS + tl.arange(0, ROWS)
    half = tl.where(fwd, 0, 1).to(tl.int64)
    step = tl.where(fwd, 1, -1).to(tl.int64)
    tile = rows[:, None] * DVP + tl.arange(0, DVP)[None, :]
    run = tl.zeros((ROWS, DVP), dtype=tl.float32)
    zrun = tl.zeros((ROWS,), dtype=tl.float32)
    c = tl.where(fwd, 0, N - 1).to(tl.int64)
    delta = tl.load(S + ((pid_bh * N + c) * 2 + half) * BLOCK_DK * DVP + tile)
    if WITH_DEN:
        zd = tl.load(Z + ((pid_bh * N + c) * 2 + half) * BLOCK_DK + rows)
    for it in range(0, N):
        nxt = c + step
        more = it + 1 < N
        delta_n = tl.load(S + ((pid_bh * N + nxt) * 2 + half) * BLOCK_DK * DVP + tile, mask=more, other=0.0)
        tl.store(S + ((pid_bh * N + c) * 2 + half) * BLOCK_DK * DVP + tile, run)
        if HAS_GATES:
            decay = tl.exp(tl.load(G + pid_bh * N + c))
            run = run * decay + delta
        else:
            run = run + delta
        if WITH_DEN:
            zd_n = tl.load(Z + ((pid_bh * N + nxt) * 2 + half) * BLOCK_DK + rows, mask=more, other=0.0)
            tl.store(Z + ((pid_bh * N + c) * 2 + half) * BLOCK_DK + rows, zrun)
            if HAS_GATES:
                zrun = zrun * decay + zd
            else:
                zrun = zrun + zd
            zd = zd_n
        delta = delta_n
        c = nxt


@triton.jit
def _chunk_output(
    Q, K, V, LA, S, Z, OUT, DEN,
    sqb, sqh, sql, sqd, skb, skh, skl, skd, svb, svh, svl, svd, sab, sah, sal,
    sob, soh, sol, sod, sdb, sdh, sdl,
    H, L, DK, DV, N, scale,
    HAS_GATES: tl.constexpr, WITH_DEN: tl.constexpr, LOWP: tl.constexpr, PREC: tl.constexpr,
    QK_FP32: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr, DVP: tl.constexpr,
):
    pid_bh = tl.program_id(0)
    c = tl.program_id(1)
    pid_dv = tl.program_id(2)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    offs_c = tl.arange(0, BLOCK_C)
    pos = c * BLOCK_C + offs_c
    offs_dk = tl.arange(0, BLOCK_DK)
    offs_dv = pid_dv * BLOCK_DV + tl.arange(0, BLOCK_DV)
    ok = pos < L
    dv_ok = offs_dv < DV
    qk_mask = ok[:, None] & (offs_dk[None, :] < DK)
    q = tl.load(Q + b * sqb + h * sqh + pos[:, None] * sql + offs_dk[None, :] * sqd, mask=qk_mask, other=0.0)
    k = tl.load(K + b * skb + h * skh + pos[:, None] * skl + offs_dk[None, :] * skd, mask=qk_mask, other=0.0)
    v = tl.load(V + b * svb + h * svh + pos[:, None] * svl + offs_dv[None, :] * svd,
                mask=ok[:, None] & dv_ok[None, :], other=0.0)
    qf = q.to(tl.float32) * scale
    if QK_FP32:  # the triton 3.3 interpreter multiplies bf16 tiles wrongly
        s = tl.dot(qf, tl.trans(k.to(tl.float32)), input_precision=PREC)
    else:
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * scale
    lower = offs_c[:, None] >= offs_c[None, :]
    if HAS_GATES:
        la = tl.load(LA + b * sab + h * sah + pos * sal, mask=ok, other=0.0).to(tl.float32)
        incl = tl.cumsum(la, 0)
        g = tl.sum(la, 0)
        excl = incl - la
        # lower part e^{rF_i − rF_j} (i ≥ j), upper part e^{rB_j − rB_i} (i < j): both exponents ≤ 0
        expo = tl.where(lower, excl[:, None] - excl[None, :], incl[None, :] - incl[:, None])
        a = s * tl.exp(expo)
        q_fwd = qf * tl.exp(excl)[:, None]
        q_bwd = qf * tl.exp(g - incl)[:, None]
    else:
        a = s
        q_fwd = qf
        q_bwd = qf
    state = ((pid_bh.to(tl.int64) * N + c) * 2) * BLOCK_DK * DVP
    tile = offs_dk[:, None] * DVP + offs_dv[None, :]
    s_fwd = tl.load(S + state + tile)
    s_bwd = tl.load(S + state + BLOCK_DK * DVP + tile)
    if LOWP:
        y = tl.dot(a.to(v.dtype), v)
        y = tl.dot(q_fwd.to(v.dtype), s_fwd.to(v.dtype), y)
        y = tl.dot(q_bwd.to(v.dtype), s_bwd.to(v.dtype), y)
    else:
        y = tl.dot(a, v.to(tl.float32), input_precision=PREC)
        y = tl.dot(q_fwd, s_fwd, y, input_precision=PREC)
        y = tl.dot(q_bwd, s_bwd, y, input_precision=PREC)
    tl.store(OUT + b * sob + h * soh + pos[:, None] * sol + offs_dv[None, :] * sod, y.to(OUT.dtype.element_ty),
             mask=ok[:, None] & dv_ok[None, :])
    if WITH_DEN:
        if pid_dv == 0:
            zb = ((pid_bh.to(tl.int64) * N + c) * 2) * BLOCK_DK
            z_fwd = tl.load(Z + zb + offs_dk)
            z_bwd = tl.load(Z + zb + BLOCK_DK + offs_dk)
            d = tl.sum(a, 1) + tl.sum(q_fwd * z_fwd[None, :], 1) + tl.sum(q_bwd * z_bwd[None, :], 1)
            tl.store(DEN + b * sdb + h * sdh + pos * sdl, d, mask=ok)
