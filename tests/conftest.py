"""Shared test helpers: relative errors and input builders (import them: ``from conftest import rel_err_max``).

Two error measures are in use, and they are not interchangeable; each test names the one it asserts on:

    rel_err_max(x, ref) = max|x − ref| / max|ref|        (elementwise worst case, relative to the largest entry)
    rel_err_l2(x, ref)  = ‖x − ref‖₂ / ‖ref‖₂            (Frobenius norm over all entries)

Both are computed in float64 on the CPU, so the measure itself adds no rounding to the error it reports.
"""
from __future__ import annotations

import os

import pytest
import torch

from lion import decay_log_gates, selective_log_gates


def _f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu", torch.float64)


def rel_err_max(x: torch.Tensor, ref: torch.Tensor) -> float:
    """max|x − ref| / max|ref|, in float64."""
    x, ref = _f64(x), _f64(ref)
    return ((x - ref).abs().max() / ref.abs().max()).item()


def rel_err_l2(x: torch.Tensor, ref: torch.Tensor) -> float:
    """‖x − ref‖₂ / ‖ref‖₂ over all entries, in float64."""
    x, ref = _f64(x), _f64(ref)
    return ((x - ref).norm() / ref.norm()).item()


def brute_force_mask(a: torch.Tensor) -> torch.Tensor:
    """docs/lion.md §1.2 by explicit products: M_ij = Π_{t=j}^{i−1} a_t (i > j), 1 (i = j),
    Π_{t=i+1}^{j} a_t (i < j)."""
    L = a.shape[-1]
    M = torch.empty(*a.shape, L, dtype=a.dtype)
    for i in range(L):
        for j in range(L):
            M[..., i, j] = torch.prod(a[..., j:i], -1) if i >= j else torch.prod(a[..., i + 1:j + 1], -1)
    return M


def log_gates(mask: str, param, batch: int, length: int):
    """Log gates (B, H, L) of a mask type from its parameter: 'Lit' → None, 'Decay' → the per-head scalars (H,),
    'Selective' → the gate pre-activations (B, L, H). Mask names are case-insensitive ('lit', 'decay', ...)."""
    mask = mask.lower()
    if mask == "lit":
        return None
    if mask == "decay":
        return decay_log_gates(param, length, batch)
    if mask == "selective":
        return selective_log_gates(param)
    raise ValueError(f"mask must be one of 'Lit', 'Decay', 'Selective', got {mask!r}")


def moby_dick_rows(root, paragraphs: int = 150, max_seq_len: int = 32) -> str:
    """The first ``paragraphs`` Moby-Dick paragraphs shipped in mlm/data, converted to ``max_seq_len``-token rows
    under ``root``; returns the data folder (the MLM tests' real offline corpus)."""
    import itertools

    from transformers import BertTokenizerFast

    from mlm.src.convert_dataset import convert, local_documents, read_text_lines
    from mlm.src.create_bert import OFFLINE_TOKENIZER_DIR

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    src = os.path.join(root, "moby.txt")
    lines = itertools.islice(read_text_lines(os.path.join(repo, "mlm", "data", "corpus", "moby_dick.txt.gz")),
                             paragraphs)
    with open(src, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    out = os.path.join(root, f"rows{max_seq_len}")
    convert(local_documents([src], 0.1), out, BertTokenizerFast.from_pretrained(OFFLINE_TOKENIZER_DIR),
            max_seq_len=max_seq_len)
    return out


# The models' shapes at which the fused ops are checked on the GPU (mask, order, normalize, pad, B, H, L, dtype):
# ViT-S (6 heads, 197 tokens) and BERT-base (12 heads, 128 tokens) with and without normalisation and padding, and
# batch 1 with an odd length. Each op's test file adds its own cases.
GPU_MODEL_SHAPES = [
    ("Lit", "Normal", True, False, 8, 6, 197, torch.bfloat16),
    ("Decay", "Normal", True, False, 8, 6, 197, torch.float32),
    ("Selective", "Normal", True, False, 8, 6, 197, torch.bfloat16),
    ("Decay", "S", True, True, 4, 6, 197, torch.bfloat16),
    ("Selective", "S", True, True, 4, 6, 197, torch.float32),
    ("Lit", "Normal", False, True, 8, 12, 128, torch.bfloat16),
    ("Decay", "Normal", False, True, 4, 12, 128, torch.float32),
    ("Selective", "Normal", False, True, 8, 12, 128, torch.bfloat16),
    ("Selective", "Normal", True, False, 1, 2, 51, torch.bfloat16)]


# Fused-kernel tests: they run on CUDA, or on the CPU under the Triton interpreter (TRITON_INTERPRET=1, set before
# triton is imported, as `make test-triton` does); elsewhere they skip. A test file marks itself with
# ``pytestmark = FUSED_KERNEL_MARKS``.
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
CUDA = torch.cuda.is_available() and not INTERPRET
DEV = "cuda" if CUDA else "cpu"
FUSED_KERNEL_MARKS = [pytest.mark.triton, pytest.mark.skipif(
    not (INTERPRET or CUDA), reason="needs CUDA or TRITON_INTERPRET=1 (set before import)")]
