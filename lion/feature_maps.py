"""Positive feature maps φ applied to q and k (never v), docs/lion.md §1."""
import torch
import torch.nn.functional as F


def elu_plus_one(x: torch.Tensor) -> torch.Tensor:
    """LION-Lit: φ(x) = elu(x) + 1."""
    return F.elu(x) + 1.0


def normalized_silu(x: torch.Tensor) -> torch.Tensor:
    """LION-D / LION-S: φ(x) = r / ‖r‖₂ with r = silu(x) + 0.5, the norm over head_dim."""
    r = F.silu(x) + 0.5
    return r / r.norm(dim=-1, keepdim=True)


FEATURE_MAPS = {"elu_plus_one": elu_plus_one, "normalized_silu": normalized_silu}
