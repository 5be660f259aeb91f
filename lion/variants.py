"""The LION mask types (docs/lion.md §1.2), one registry read by both model families (vision ViTs, MLM BERTs),
checkpoint loading and yaml validation.

A mask type is a product of gates, each one value per head (a parameter of H values) or one value per token (a
linear map of each token to H values); its log gates are the sum of its gates' (a product of masks of the same
shape is the mask of the product of the gates, docs/lion.md §1.2). Lit has none (M = 1). Each family publishes its
own name for a mask type, its own parameter names and its own log-gate function (the MLM's LION-S keeps the
published eps), and applies its own feature map (the MLM family none, docs/lion.md §2). A new mask type that is a
product of such gates is one ``register`` call.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional

import torch
from torch import nn

from lion.masks import decay_log_gates, per_token_gates, selective_log_gates, selective_log_gates_eps

FAMILIES = ("vision", "mlm")
PER_HEAD, PER_TOKEN = "per_head", "per_token"


@dataclass(frozen=True)
class Gate:
    """One factor of a mask's gates.

    kind: PER_HEAD (a parameter of H values, log gates (H,)) or PER_TOKEN (``nn.Linear(dim, H)`` of each token, log
    gates (B, H, L)). params: family → the parameter's attribute name in each token order (the vision ♮ variants
    have a second). log_gates: family → f(value, perm, backend) → log gates ≤ 0, ``value`` the parameter (per head)
    or the projected tokens z (B, L, H) (per token), ``perm`` a token order (per token: the gates of z[:, perm])."""

    kind: str
    params: Mapping[str, tuple[str, ...]]
    log_gates: Mapping[str, Callable]

    def make(self, dim: int, num_heads: int) -> nn.Module:
        """A fresh parameter (per head, N(0, 1) as published) or projection (per token)."""
        return nn.Parameter(torch.randn(num_heads)) if self.kind == PER_HEAD else nn.Linear(dim, num_heads)


@dataclass(frozen=True)
class Variant:
    """A mask type. names: family → its published name; legacy: family → older names that mean it (configs of
    published checkpoints, docs/lion.md §3.4); feature_maps: family → the φ ``lion_attention`` applies (None: q, k
    are used as they are); gates: the factors (none: Lit)."""

    names: Mapping[str, str]
    feature_maps: Mapping[str, Optional[str]]
    gates: tuple[Gate, ...] = ()
    legacy: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def param_names(self, family: str, order: int = 0) -> tuple[str, ...]:
        """The gates' parameter names in token order ``order`` (0, or 1 for the vision ♮ variants' second)."""
        return tuple(g.params[family][order] for g in self.gates)

    def per_head_params(self, family: str, orders: int = 1) -> tuple[str, ...]:
        """The names of the per-head gates' parameters in the first ``orders`` token orders."""
        return tuple(g.params[family][o] for o in range(orders) for g in self.gates if g.kind == PER_HEAD)

    def make_gates(self, module: nn.Module, family: str, dim: int, num_heads: int, orders: int = 1) -> None:
        """Set the gates' parameters on ``module`` (each order's in turn)."""
        for order in range(orders):
            for gate, name in zip(self.gates, self.param_names(family, order)):
                setattr(module, name, gate.make(dim, num_heads))

    def log_gates(self, module: nn.Module, family: str, x: torch.Tensor, order: int = 0,
                  perm: Optional[torch.Tensor] = None, backend: Optional[str] = None) -> Optional[torch.Tensor]:
        """The log gates of ``module``'s gates in token order ``order`` for tokens x (B, L, dim): (H,) when every
        gate is per head, else (B, H, L) (in ``perm``'s indexing); None for Lit."""
        total = None
        for gate, name in zip(self.gates, self.param_names(family, order)):
            value = getattr(module, name)
            la = gate.log_gates[family](value if gate.kind == PER_HEAD else value(x), perm, backend)
            if total is None:
                total = la
            else:  # a product of gates: the sum of their log gates, per token unless both are per head
                if total.dim() != la.dim():
                    total, la = (per_token_gates(t, x.shape[0], x.shape[1]) for t in (total, la))
                total = total + la
        return total


def _decay(a, perm, backend):
    return decay_log_gates(a)  # (H,): the same gate for every token, in any order


def _selective_vision(z, perm, backend):
    return selective_log_gates(z, perm=perm, backend=backend)  # the cls (first) token's gate := 1


def _selective_mlm(z, perm, backend):
    return selective_log_gates_eps(z, perm=perm, backend=backend)


DECAY = Gate(PER_HEAD, {"vision": ("a_i", "a2_i"), "mlm": ("ai",)}, {"vision": _decay, "mlm": _decay})
SELECTIVE = Gate(PER_TOKEN, {"vision": ("a_i", "a2_i"), "mlm": ("Wa_i",)},
                 {"vision": _selective_vision, "mlm": _selective_mlm})

_REGISTRY: list[Variant] = []


def register(variant: Variant) -> Variant:
    """Add a mask type; its names must be new in every family."""
    for family in FAMILIES:
        taken = names(family) + tuple(legacy_names(family))
        for name in (variant.names[family], *variant.legacy.get(family, ())):
            if name in taken:
                raise ValueError(f"{family} mask type name {name!r} is already registered")
    _REGISTRY.append(variant)
    return variant


def unregister(variant: Variant) -> None:
    _REGISTRY.remove(variant)


def registered() -> tuple[Variant, ...]:
    """Every mask type, in registration order."""
    return tuple(_REGISTRY)


def names(family: str) -> tuple[str, ...]:
    """The family's published names of every mask type, in registration order."""
    return tuple(v.names[family] for v in _REGISTRY)


def legacy_names(family: str) -> dict[str, str]:
    """Older name → published name, for the family."""
    return {old: v.names[family] for v in _REGISTRY for old in v.legacy.get(family, ())}


def variant(family: str, name: str) -> Variant:
    """The mask type the family publishes as ``name`` (ValueError naming the allowed ones)."""
    for v in _REGISTRY:
        if v.names[family] == name:
            return v
    raise ValueError(f"mask type must be one of {', '.join(map(repr, names(family)))}, got {name!r}")


def from_parameter_names(family: str, present: Callable[[str], bool]) -> Optional[Variant]:
    """The gated mask type whose gate parameters are exactly those for which ``present(name)`` holds (a state dict's
    keys, read by the caller), or None when no gate parameter is present."""
    found = {name for v in _REGISTRY for name in v.param_names(family) if present(name)}
    if not found:
        return None
    for v in _REGISTRY:
        if v.gates and set(v.param_names(family)) == found:
            return v
    raise ValueError(f"gate parameters {sorted(found)} match no registered mask type")


LIT = register(Variant({"vision": "Lit", "mlm": "lion-lit"}, {"vision": "elu_plus_one", "mlm": None},
                       legacy={"mlm": ("linear_attention", "lit", "lion_lit")}))
DECAY_MASK = register(Variant({"vision": "Decay", "mlm": "lion-d"}, {"vision": "normalized_silu", "mlm": None},
                              (DECAY,), legacy={"mlm": ("nova", "decay", "lion_d")}))
SELECTIVE_MASK = register(Variant({"vision": "Selective", "mlm": "lion-s"}, {"vision": "normalized_silu", "mlm": None},
                                  (SELECTIVE,), legacy={"mlm": ("nova-inputdep", "nova_inputdep", "selective",
                                                                "lion_s")}))

MASK_TYPES = names("vision")  # the built-in mask types' vision names; ``names('vision')`` also lists registered ones
