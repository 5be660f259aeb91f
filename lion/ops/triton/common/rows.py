"""Token blocks and row loads of the per-token kernels (``naive.py``, ``lit.py``, ``chunk_grad.py``): a program's
tokens, raw rows, which keys are kept, and dy scaled by the normaliser."""
import triton
import triton.language as tl


@triton.jit
def token_block(H, L, BLOCK: tl.constexpr):
    """Grid (token blocks, B·H): this program's (b·H + h, b, h, token offsets, offsets < L)."""
    bh = tl.program_id(1)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    return bh, (bh // H).to(tl.int64), (bh % H).to(tl.int64), offs, offs < L


@triton.jit
def load_rows(ptr, offs, in_rows, stride, offs_d, D):
    return tl.load(ptr + offs[:, None] * stride + offs_d[None, :], mask=in_rows[:, None] & (offs_d[None, :] < D),
                   other=0.0).to(tl.float32)


@triton.jit
def key_keep(KEEP, b, L, offs, in_rows, HAS_KEEP: tl.constexpr):
    if HAS_KEEP:
        return in_rows & (tl.load(KEEP + b * L + offs, mask=in_rows, other=0) != 0)
    return in_rows


@triton.jit
def dy_rows(DY, Y, DEN, dy_ptr, y_ptr, den_ptr, offs, in_rows, sdyl, syl, offs_dv, DV, eps, NORMALIZE: tl.constexpr):
    """dy/D and δ/D = (dy·y)/D for a block of query rows (dy and 0 without normalisation)."""
    dy = load_rows(dy_ptr, offs, in_rows, sdyl, offs_dv, DV)
    if NORMALIZE:
        y = load_rows(y_ptr, offs, in_rows, syl, offs_dv, DV)
        inv = 1.0 / (tl.load(den_ptr + offs, mask=in_rows, other=1.0) + eps)
        return dy * inv[:, None], tl.sum(dy * y, axis=1) * inv
    return dy, tl.sum(dy, axis=1) * 0.0
