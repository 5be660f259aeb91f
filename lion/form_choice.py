"""form='auto': the chunk form from the sequence length at which it trains faster than the attention form, the
attention form below it. The crossover lengths are data (``form_crossover.json``), measured on the GPU with the
command stored beside them; a mask kind missing there keeps the attention form."""
from __future__ import annotations

import json
import os

CROSSOVER_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "form_crossover.json")


def _read_crossover() -> dict:
    with open(CROSSOVER_FILE) as f:
        return {kind: int(n) for kind, n in json.load(f)["chunk_from_length"].items()}


_CROSSOVER = _read_crossover()  # read at import: under torch.compile the choice is then a traced dict lookup


def crossover_lengths() -> dict:
    """{mask kind: the shortest length that runs the chunk form} from ``form_crossover.json``."""
    return _CROSSOVER


def mask_kind(log_a, orders, normalize: bool = True) -> str:
    """'Lit' (no gates), 'Lit-unnormalised' (no gates, ``normalize`` False: the MLM BERTs, whose attention form runs
    the L×L kernel, where normalised Lit has a d×dv-state kernel), 'Decay' (per-head gates, (H,) or (orders, H)) or
    'Selective' (per-token gates)."""
    las = [log_a] if orders is None else [la for _, la in orders]
    if all(la is None for la in las):
        return "Lit" if normalize else "Lit-unnormalised"
    return "Decay" if all(la is None or la.dim() <= 2 for la in las) else "Selective"


def form_for(kind: str, length: int) -> str:
    """The form 'auto' runs for mask kind ``kind`` (a ``mask_kind``) at ``length`` tokens."""
    limit = crossover_lengths().get(kind)
    return "chunk" if limit is not None and length >= limit else "attention"


def auto_form(length: int, log_a, orders, normalize: bool = True) -> str:
    return form_for(mask_kind(log_a, orders, normalize), length)
