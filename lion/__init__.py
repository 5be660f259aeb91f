"""LION: bidirectional masked linear attention in attention, RNN and chunk forms (see docs/lion.md)."""
from lion.attention import BACKENDS, lion_attention, set_backend
from lion.curves import CURVES, curve_permutation, grid_size, inverse_permutation
from lion.feature_maps import elu_plus_one, normalized_silu
from lion.forms import FORMS, canonical_form
from lion.masks import decay_log_gates, log_mask, mask, selective_log_gates, selective_log_gates_eps
from lion.qkv import autocast_once, unpack_qkv
from lion.variants import MASK_TYPES

__all__ = [
    "BACKENDS", "set_backend", "FORMS", "CURVES", "MASK_TYPES", "lion_attention", "canonical_form",
    "curve_permutation", "grid_size", "inverse_permutation", "elu_plus_one", "normalized_silu", "decay_log_gates",
    "selective_log_gates", "selective_log_gates_eps", "log_mask", "mask", "unpack_qkv",
    "autocast_once",
]
