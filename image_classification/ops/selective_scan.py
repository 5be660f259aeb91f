"""Mamba-1's selective scan as one Triton kernel forward and one backward (the Vim baseline, models_vim.py).

Per batch row and channel, with a state h of size N (h_{−1} = 0):

    h_t = exp(dt_t A) ⊙ h_{t−1} + (dt_t x_t) B_t,   y_t = h_t · C_t

x, dt: (b, L, d); A: (d, N); B, C: (b, L, N). One program per (batch row, block of BLOCK_D channels) keeps its
(BLOCK_D, N) state in registers and loops over the tokens; inputs of any float dtype are read as they are and the
math runs in fp32 (fp64 for fp64 inputs), the dtype of y.

The forward stores the state at the start of every chunk of ``chunk`` tokens. The backward walks the chunks in
reverse: it recomputes a chunk's states from its start state into a per-program scratch buffer, then sweeps the
chunk backwards with the adjoint state g_t = ∂loss/∂h_t (nothing is reconstructed by dividing by a decay):

    g_t = dy_t C_t + exp(dt_{t+1} A) ⊙ g_{t+1}
    dC_t = Σ_d dy_t h_t,   dB_t = Σ_d (dt_t x_t) g_t,   u_t = Σ_n g_t B_t   (∂/∂(dt_t x_t))
    e_t = g_t ⊙ h_{t−1} ⊙ exp(dt_t A)                                          (∂/∂(dt_t A))
    dx_t = u_t dt_t,   ddt_t = u_t x_t + Σ_n e_t A,   dA = Σ_{b,t} e_t dt_t

The channel sums of dB and dC, and the batch sum of dA, are written as per-program partials and summed in torch
(deterministic, no atomics).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

# TRITON_INTERPRET=1 (set before triton is imported) runs the kernels on the CPU, with small channel blocks.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
DEFAULT_CHUNK = 64


def _block_d() -> int:
    return 16 if INTERPRET else 32


def _num_warps() -> int:
    """One warp per (32 channels × 16 states) program: the fastest of block_d 16/32/64 × warps 1/2/4 for
    Vim-S's scan (b 128, L 197, d 768) on an H200, 1.7 ms forward + backward."""
    return 1


@triton.jit
def _step(x_ptr, dt_ptr, b_ptr, c_ptr, t, L, sxl, sdtl, sbl, scl, in_d, in_n, CDT: tl.constexpr):
    """x_t, dt_t (BLOCK_D,) and B_t, C_t (BLOCK_N,) in the compute dtype; zeros past the end (a no-op step)."""
    ok = t < L
    x = tl.load(x_ptr + t * sxl, mask=in_d & ok, other=0.0).to(CDT)
    dt = tl.load(dt_ptr + t * sdtl, mask=in_d & ok, other=0.0).to(CDT)
    bt = tl.load(b_ptr + t * sbl, mask=in_n & ok, other=0.0).to(CDT)
    ct = tl.load(c_ptr + t * scl, mask=in_n & ok, other=0.0).to(CDT)
    return x, dt, bt, ct


@triton.jit
def _program_inputs(X, DT, A, B, C, pid_b, sxb, sxd, sdtb, sdtd, sbb, sbn, scb, scn, d, N, CDT: tl.constexpr,
                    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """This program's channel and state offsets, their masks, its rows of A and its pointers into x, dt, B, C."""
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    in_d, in_n = offs_d < d, offs_n < N
    in_dn = in_d[:, None] & in_n[None, :]
    a_mat = tl.load(A + offs_d[:, None] * N + offs_n[None, :], mask=in_dn, other=0.0).to(CDT)
    x_ptr, dt_ptr = X + pid_b * sxb + offs_d * sxd, DT + pid_b * sdtb + offs_d * sdtd
    b_ptr, c_ptr = B + pid_b * sbb + offs_n * sbn, C + pid_b * scb + offs_n * scn
    return offs_d, offs_n, in_d, in_n, in_dn, a_mat, x_ptr, dt_ptr, b_ptr, c_ptr


@triton.jit
def _fwd_kernel(X, DT, A, B, C, Y, H0,
                sxb, sxl, sxd, sdtb, sdtl, sdtd, sbb, sbl, sbn, scb, scl, scn, syb, syl, syd,
                L, d, N, chunk, n_chunks, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """y (b, L, d) and the chunk start states H0 (b, n_chunks, d, N), both in the compute dtype."""
    pid_b = tl.program_id(0).to(tl.int64)
    CDT = H0.dtype.element_ty
    offs_d, offs_n, in_d, in_n, in_dn, a_mat, x_ptr, dt_ptr, b_ptr, c_ptr = _program_inputs(
        X, DT, A, B, C, pid_b, sxb, sxd, sdtb, sdtd, sbb, sbn, scb, scn, d, N, CDT, BLOCK_D, BLOCK_N)
    y_ptr = Y + pid_b * syb + offs_d * syd
    h0_ptr = H0 + pid_b * n_chunks * d * N + offs_d[:, None] * N + offs_n[None, :]
    h = tl.zeros((BLOCK_D, BLOCK_N), dtype=CDT)
    for c in range(n_chunks):
        tl.store(h0_ptr + c * d * N, h, mask=in_dn)
        for i in range(chunk):
            t = c * chunk + i
            x, dt, bt, ct = _step(x_ptr, dt_ptr, b_ptr, c_ptr, t, L, sxl, sdtl, sbl, scl, in_d, in_n, CDT)
            h = tl.exp(dt[:, None] * a_mat) * h + (dt * x)[:, None] * bt[None, :]
            tl.store(y_ptr + t * syl, tl.sum(h * ct[None, :], axis=1), mask=in_d & (t < L))


@triton.jit
def _bwd_kernel(X, DT, A, B, C, H0, DY, SCR, DX, DDT, DA, DB, DC,
                sxb, sxl, sxd, sdtb, sdtl, sdtd, sbb, sbl, sbn, scb, scl, scn, sdyb, sdyl, sdyd,
                sdxb, sdxl, sdxd, sddb, sddl, sddd,
                L, d, N, chunk, n_chunks, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """dx, ddt (b, L, d); dA partials (b, d, N); dB, dC partials (channel blocks, b, L, N); SCR: chunk + 1 states
    of (BLOCK_D, BLOCK_N) per program (slot i holds h_{t0+i−1} of the chunk starting at t0)."""
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    batch = tl.num_programs(0)
    CDT = H0.dtype.element_ty
    offs_d, offs_n, in_d, in_n, in_dn, a_mat, x_ptr, dt_ptr, b_ptr, c_ptr = _program_inputs(
        X, DT, A, B, C, pid_b, sxb, sxd, sdtb, sdtd, sbb, sbn, scb, scn, d, N, CDT, BLOCK_D, BLOCK_N)
    dy_ptr = DY + pid_b * sdyb + offs_d * sdyd
    dx_ptr, ddt_ptr = DX + pid_b * sdxb + offs_d * sdxd, DDT + pid_b * sddb + offs_d * sddd
    part = (pid_d * batch + pid_b) * L * N + offs_n  # row (channel block, batch row) of the dB, dC partials
    h0_ptr = H0 + pid_b * n_chunks * d * N + offs_d[:, None] * N + offs_n[None, :]
    tile = BLOCK_D * BLOCK_N
    scr = (SCR + (pid_b * tl.num_programs(1) + pid_d) * (chunk + 1) * tile
           + tl.arange(0, BLOCK_D)[:, None] * BLOCK_N + offs_n[None, :])
    g = tl.zeros((BLOCK_D, BLOCK_N), dtype=CDT)
    da = tl.zeros((BLOCK_D, BLOCK_N), dtype=CDT)
    for cr in range(n_chunks):
        c = n_chunks - 1 - cr
        h = tl.load(h0_ptr + c * d * N, mask=in_dn, other=0.0)
        tl.store(scr, h)
        for i in range(chunk):  # recompute the chunk's states
            x, dt, bt, _ = _step(x_ptr, dt_ptr, b_ptr, c_ptr, c * chunk + i, L, sxl, sdtl, sbl, scl, in_d, in_n,
                                 CDT)
            h = tl.exp(dt[:, None] * a_mat) * h + (dt * x)[:, None] * bt[None, :]
            tl.store(scr + (i + 1) * tile, h)
        tl.debug_barrier()
        for j in range(chunk):  # h holds h_t, the scratch h_{t−1}
            i = chunk - 1 - j
            t = c * chunk + i
            ok = t < L
            x, dt, bt, ct = _step(x_ptr, dt_ptr, b_ptr, c_ptr, t, L, sxl, sdtl, sbl, scl, in_d, in_n, CDT)
            dy = tl.load(dy_ptr + t * sdyl, mask=in_d & ok, other=0.0).to(CDT)
            h_prev = tl.load(scr + i * tile)
            g += dy[:, None] * ct[None, :]
            tl.store(DC + part + t * N, tl.sum(dy[:, None] * h, axis=0), mask=in_n & ok)
            tl.store(DB + part + t * N, tl.sum(g * (dt * x)[:, None], axis=0), mask=in_n & ok)
            u = tl.sum(g * bt[None, :], axis=1)
            decay = tl.exp(dt[:, None] * a_mat)
            e = g * h_prev * decay
            tl.store(dx_ptr + t * sdxl, u * dt, mask=in_d & ok)
            tl.store(ddt_ptr + t * sddl, u * x + tl.sum(e * a_mat, axis=1), mask=in_d & ok)
            da += e * dt[:, None]
            g = g * decay
            h = h_prev
        tl.debug_barrier()
    tl.store(DA + (pid_b * d + offs_d[:, None]) * N + offs_n[None, :], da, mask=in_dn)


# --------------------------------------------------------------------------------------------------- torch ops
def _compute_dtype(*ts: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in ts) else torch.float32


def _launch_shape(x: torch.Tensor, A: torch.Tensor, chunk: int):
    b, L, d = x.shape
    N = A.shape[1]
    chunk = max(1, min(chunk, L))
    block_d = _block_d()
    return b, L, d, N, chunk, triton.cdiv(L, chunk), block_d, triton.cdiv(d, block_d), triton.next_power_of_2(N)


@torch.library.custom_op("vim::selective_scan_fwd", mutates_args=())
def selective_scan_fwd(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                       chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """y (b, L, d) and the chunk start states (b, n_chunks, d, N), in the compute dtype."""
    b, L, d, N, chunk, n_chunks, block_d, n_blocks, block_n = _launch_shape(x, A, chunk)
    cdt = _compute_dtype(x, dt, A, B, C)
    y = torch.empty(b, L, d, device=x.device, dtype=cdt)
    h0 = torch.empty(b, n_chunks, d, N, device=x.device, dtype=cdt)
    _fwd_kernel[(b, n_blocks)](x, dt, A.contiguous(), B, C, y, h0, *x.stride(), *dt.stride(), *B.stride(),
                               *C.stride(), *y.stride(), L, d, N, chunk, n_chunks, BLOCK_D=block_d, BLOCK_N=block_n,
                               num_warps=_num_warps())
    return y, h0


@selective_scan_fwd.register_fake
def _(x, dt, A, B, C, chunk):
    b, L, d, N, _, n_chunks, *_ = _launch_shape(x, A, chunk)
    cdt = _compute_dtype(x, dt, A, B, C)
    return x.new_empty(b, L, d, dtype=cdt), x.new_empty(b, n_chunks, d, N, dtype=cdt)


@torch.library.custom_op("vim::selective_scan_bwd", mutates_args=())
def selective_scan_bwd(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                       h0: torch.Tensor, dy: torch.Tensor, chunk: int
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients wrt x, dt, A, B, C, each in its input's dtype."""
    b, L, d, N, chunk, n_chunks, block_d, n_blocks, block_n = _launch_shape(x, A, chunk)
    cdt = h0.dtype
    dy = dy.to(cdt)
    dx, ddt = (torch.empty(b, L, d, device=x.device, dtype=cdt) for _ in range(2))
    da = torch.empty(b, d, N, device=x.device, dtype=cdt)
    db, dc = (torch.empty(n_blocks, b, L, N, device=x.device, dtype=cdt) for _ in range(2))
    scratch = torch.empty(b * n_blocks * (chunk + 1) * block_d * block_n, device=x.device, dtype=cdt)
    _bwd_kernel[(b, n_blocks)](x, dt, A.contiguous(), B, C, h0, dy, scratch, dx, ddt, da, db, dc,
                               *x.stride(), *dt.stride(), *B.stride(), *C.stride(), *dy.stride(), *dx.stride(),
                               *ddt.stride(), L, d, N, chunk, n_chunks, BLOCK_D=block_d, BLOCK_N=block_n,
                               num_warps=_num_warps())
    return (dx.to(x.dtype), ddt.to(dt.dtype), da.sum(0).to(A.dtype), db.sum(0).to(B.dtype),
            dc.sum(0).to(C.dtype))


@selective_scan_bwd.register_fake
def _(x, dt, A, B, C, h0, dy, chunk):
    return (torch.empty_like(x), torch.empty_like(dt), torch.empty_like(A), torch.empty_like(B),
            torch.empty_like(C))


def _setup_context(ctx, inputs, output):
    x, dt, A, B, C, chunk = inputs
    ctx.save_for_backward(x, dt, A, B, C, output[1])
    ctx.chunk = chunk


def _backward(ctx, dy, dh0):
    x, dt, A, B, C, h0 = ctx.saved_tensors
    if dy is None:
        dy = torch.zeros(x.shape, device=x.device, dtype=h0.dtype)
    return (*selective_scan_bwd(x, dt, A, B, C, h0, dy, ctx.chunk), None)


selective_scan_fwd.register_autograd(_backward, setup_context=_setup_context)


def fused_selective_scan(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                         chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """y_t = h_t · C_t of the selective scan (no D·x skip term), differentiable in x, dt, A, B, C.

    x, dt: (b, L, d); A: (d, N); B, C: (b, L, N), any float dtypes, on one CUDA device (or the CPU under
    TRITON_INTERPRET=1). Returns y (b, L, d) in fp32 (fp64 if an input is fp64). ``chunk``: tokens per saved state
    (memory b·⌈L/chunk⌉·d·N) and per recomputed block of the backward pass."""
    b, L, d = x.shape
    N = A.shape[-1]
    for name, t, shape in (("dt", dt, (b, L, d)), ("A", A, (d, N)), ("B", B, (b, L, N)), ("C", C, (b, L, N))):
        if tuple(t.shape) != shape:
            raise ValueError(f"selective scan: {name} must have shape {shape} for x of shape {tuple(x.shape)}, "
                             f"got {tuple(t.shape)}")
    if not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"selective scan: chunk must be an integer ≥ 1, got {chunk!r}")
    return selective_scan_fwd(x, dt, A, B, C, chunk)[0]
