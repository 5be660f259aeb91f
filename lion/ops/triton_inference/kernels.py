"""Triton forward kernels for the chunk and RNN forms (docs/lion.md §1), inference only.

Both compute, per (batch, head) and one block of value columns, the two directions of

    num_i = Σ_j A_ij v_j,   den_i = Σ_j A_ij,   A_ij = scale · (q_i·k_j) · M_ij,

the forward direction over j ≤ i (the diagonal, M_ii = 1) and the backward one over j > i. The state is fp32;
every exponent is ≤ 0 (no ratios of cumulative products, §1).
"""
import triton
import triton.language as tl


@triton.jit
def _chunk_fwd_kernel(
    Q, K, V, LA, NUM, DEN, OUT,
    sqb, sqh, sql, sqd, skb, skh, skl, skd, svb, svh, svl, svd, sab, sah, sal,
    snb, snh, snl, snd, sdb, sdh, sdl,
    H, L, DK, DV, scale, DIRECTION,
    HAS_GATES: tl.constexpr, WITH_DEN: tl.constexpr, PREC: tl.constexpr, QK_FP32: tl.constexpr,
    TWO_PASS: tl.constexpr, LOWP: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    """Chunkwise-parallel scan: explicit C×C masked scores inside a chunk, a carried d×d state across chunks.

    Forward chunk [s, s+C) with local log-gate prefix sums r (exclusive) and total g:
        y_i  = Σ_{s≤j≤i} e^{r_i−r_j} A_ij v_j + e^{r_i} q_i S,    S ← e^{g} S + Σ_j e^{g−r_j} k_j v_jᵀ.
    Backward chunk, processed last to first, with r the inclusive local prefix sum:
        y_i  = Σ_{i<j<s+C} e^{r_j−r_i} A_ij v_j + e^{g−r_i} q_i S, S ← e^{g} S + Σ_j e^{r_j} k_j v_jᵀ.
    TWO_PASS: the launch does one direction (DIRECTION); the forward launch stores fp32 partial sums in NUM/DEN,
    the backward launch adds its own and writes OUT (v's dtype). Otherwise both directions run side by side
    (grid axis 2) and add into the zero-initialised fp32 NUM/DEN (0 + a + b: the same in either order).
    LOWP: bf16/fp16 operands for the value products (fp32 accumulation), as in flash attention.
    """
    pid_bh = tl.program_id(0)
    pid_dv = tl.program_id(1)
    if TWO_PASS:
        fwd = DIRECTION == 0
    else:
        fwd = tl.program_id(2) == 0
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    offs_c = tl.arange(0, BLOCK_C)
    offs_dk = tl.arange(0, BLOCK_DK)
    offs_dv = pid_dv * BLOCK_DV + tl.arange(0, BLOCK_DV)
    dk_ok = offs_dk < DK
    dv_ok = offs_dv < DV
    q_base = Q + b * sqb + h * sqh
    k_base = K + b * skb + h * skh
    v_base = V + b * svb + h * svh
    keep = tl.where(fwd, offs_c[:, None] >= offs_c[None, :], offs_c[:, None] < offs_c[None, :])
    state = tl.zeros((BLOCK_DK, BLOCK_DV), dtype=tl.float32)
    zstate = tl.zeros((BLOCK_DK,), dtype=tl.float32)
    n_chunks = tl.cdiv(L, BLOCK_C)
    for it in range(0, n_chunks):
        c = tl.where(fwd, it, n_chunks - 1 - it)
        pos = c * BLOCK_C + offs_c
        ok = pos < L
        q = tl.load(q_base + pos[:, None] * sql + offs_dk[None, :] * sqd, mask=ok[:, None] & dk_ok[None, :], other=0.0)
        k = tl.load(k_base + pos[:, None] * skl + offs_dk[None, :] * skd, mask=ok[:, None] & dk_ok[None, :], other=0.0)
        v = tl.load(v_base + pos[:, None] * svl + offs_dv[None, :] * svd, mask=ok[:, None] & dv_ok[None, :], other=0.0)
        qf = q.to(tl.float32) * scale
        kf = k.to(tl.float32)
        if QK_FP32:  # the triton 3.3 interpreter multiplies bf16 tiles wrongly
            s = tl.dot(qf, tl.trans(kf), input_precision=PREC)
        else:  # input-dtype operands, fp32 accumulation: no rounding beyond the inputs'
            s = tl.dot(q, tl.trans(k), input_precision=PREC) * scale
        if HAS_GATES:
            la = tl.load(LA + b * sab + h * sah + pos * sal, mask=ok, other=0.0).to(tl.float32)
            incl = tl.cumsum(la, 0)
            g = tl.sum(la, 0)
            r = tl.where(fwd, incl - la, incl)
            diff = r[:, None] - r[None, :]
            a = s * tl.exp(tl.where(keep, tl.where(fwd, diff, -diff), float("-inf")))
            qf = qf * tl.exp(tl.where(fwd, r, g - r))[:, None]
            kf = kf * tl.exp(tl.where(fwd, g - r, r))[:, None]
            decay = tl.exp(g)
        else:
            a = tl.where(keep, s, 0.0)
            decay = 1.0
        if LOWP:
            y = tl.dot(a.to(v.dtype), v) + tl.dot(qf.to(v.dtype), state.to(v.dtype))
        else:
            vf = v.to(tl.float32)
            y = tl.dot(a, vf, input_precision=PREC) + tl.dot(qf, state, input_precision=PREC)
        num_ptr = NUM + b * snb + h * snh + pos[:, None] * snl + offs_dv[None, :] * snd
        num_ok = ok[:, None] & dv_ok[None, :]
        if TWO_PASS:
            if fwd:
                tl.store(num_ptr, y, mask=num_ok)
            else:
                y += tl.load(num_ptr, mask=num_ok, other=0.0)
                out_ptr = OUT + b * snb + h * snh + pos[:, None] * snl + offs_dv[None, :] * snd
                tl.store(out_ptr, y.to(OUT.dtype.element_ty), mask=num_ok)
        else:
            tl.atomic_add(num_ptr, y, mask=num_ok)
        if WITH_DEN:
            d = tl.sum(a, 1) + tl.sum(qf * zstate[None, :], 1)
            den_ptr = DEN + b * sdb + h * sdh + pos * sdl
            den_ok = ok & (pid_dv == 0)
            if TWO_PASS:
                if fwd:
                    tl.store(den_ptr, d, mask=den_ok)
                else:
                    tl.store(den_ptr, d + tl.load(den_ptr, mask=den_ok, other=0.0), mask=den_ok)
            else:
                tl.atomic_add(den_ptr, d, mask=den_ok)
            zstate = zstate * decay + tl.sum(kf, 0)
        if LOWP:
            state = state * decay + tl.dot(tl.trans(kf.to(v.dtype)), v)
        else:
            state = state * decay + tl.dot(tl.trans(kf), vf, input_precision=PREC)


@triton.jit
def _rnn_fwd_kernel(
    Q, K, V, LA, NUM, DEN, OUT,
    sqb, sqh, sql, sqd, skb, skh, skl, skd, svb, svh, svl, svd, sab, sah, sal,
    snb, snh, snl, snd, sdb, sdh, sdl,
    H, L, DK, DV, scale, DIRECTION,
    HAS_GATES: tl.constexpr, WITH_DEN: tl.constexpr,
    BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    """One token per step (docs/lion.md §1, RNN form), the d×d state in registers; both directions side by side
    (grid axis 2), adding into the zero-initialised fp32 NUM/DEN:
        forward:  S ← a_{i−1} S + k_i v_iᵀ, then y_i = q_iᵀ S        (inclusive: the diagonal counted here)
        backward: S ← a_{i+1} S,           y_i = q_iᵀ S, then S += k_i v_iᵀ   (strict)
    The next token's q, k, v and gate are loaded while the current one is processed.
    """
    pid_bh = tl.program_id(0)
    pid_dv = tl.program_id(1)
    fwd = tl.program_id(2) == 0
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    offs_dk = tl.arange(0, BLOCK_DK)
    offs_dv = pid_dv * BLOCK_DV + tl.arange(0, BLOCK_DV)
    dk_ok = offs_dk < DK
    dv_ok = offs_dv < DV
    q_base = Q + b * sqb + h * sqh
    k_base = K + b * skb + h * skh
    v_base = V + b * svb + h * svh
    la_base = LA + b * sab + h * sah
    self_w = tl.where(fwd, 1.0, 0.0)
    step = tl.where(fwd, 1, -1)
    state = tl.zeros((BLOCK_DK, BLOCK_DV), dtype=tl.float32)
    zstate = tl.zeros((BLOCK_DK,), dtype=tl.float32)
    i = tl.where(fwd, 0, L - 1)
    q = tl.load(q_base + i * sql + offs_dk * sqd, mask=dk_ok, other=0.0)
    k = tl.load(k_base + i * skl + offs_dk * skd, mask=dk_ok, other=0.0)
    v = tl.load(v_base + i * svl + offs_dv * svd, mask=dv_ok, other=0.0)
    la = scale * 0.0  # an fp32 scalar: no decay before the first token
    for it in range(0, L):
        nxt = i + step
        more = it + 1 < L
        q_n = tl.load(q_base + nxt * sql + offs_dk * sqd, mask=dk_ok & more, other=0.0)
        k_n = tl.load(k_base + nxt * skl + offs_dk * skd, mask=dk_ok & more, other=0.0)
        v_n = tl.load(v_base + nxt * svl + offs_dv * svd, mask=dv_ok & more, other=0.0)
        if HAS_GATES:
            # the gate between the previous token and this one: a_{i−1} forward, a_{i+1} backward (1 at the ends)
            decay = tl.exp(la)
            state = state * decay
            zstate = zstate * decay
            la = tl.load(la_base + i * sal).to(tl.float32)  # gate of token i: the decay before token i ± 1
        qf = q.to(tl.float32) * scale
        kf = k.to(tl.float32)
        vf = v.to(tl.float32)
        qk = tl.sum(qf * kf, 0) * self_w
        y = tl.sum(qf[:, None] * state, 0) + qk * vf
        tl.atomic_add(NUM + b * snb + h * snh + i * snl + offs_dv * snd, y, mask=dv_ok)
        if WITH_DEN:
            d = tl.sum(qf * zstate, 0) + qk
            tl.atomic_add(DEN + b * sdb + h * sdh + i * sdl, d, mask=pid_dv == 0)
            zstate = zstate + kf
        state = state + kf[:, None] * vf[None, :]
        q, k, v, i = q_n, k_n, v_n, nxt
