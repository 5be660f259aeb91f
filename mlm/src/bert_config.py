"""The transformers config of the LION BERT family (docs/lion.md §2)."""
from __future__ import annotations

from transformers import PretrainedConfig

from lion import variants
from lion.checks import check_chunk_size
from lion.forms import PUBLISHED_FORMS, published_form

FAMILY = "mlm"  # the names and parameters of lion.variants this family publishes
FORMS = PUBLISHED_FORMS[FAMILY]  # the published spellings; lion's own names are accepted as aliases
POSITION_EMBEDDING_TYPES = ("absolute", "none")
# PyTorch's LayerNorm default: the published lion-lit ``attention.self.layer_norm`` does not use layer_norm_eps
ATTENTION_LAYER_NORM_EPS = 1e-5
# older names of the softmax baseline in published configs and older yamls (docs/lion.md §3.4; LION's: lion.variants)
_LEGACY_ATTENTION = ("softmax", "bert", "hf_bert")


def arch_types() -> tuple[str, ...]:
    """'attention' (softmax BERT), every LION mask type's MLM name (lion.variants), 'hydra' (mlm/src/hydra.py)."""
    return ("attention", *variants.names(FAMILY), "hydra")


def legacy_arch_types() -> dict[str, str]:
    """Arch names in published configs and older yamls (docs/lion.md §3.4) → ours."""
    return {**variants.legacy_names(FAMILY), **dict.fromkeys(_LEGACY_ATTENTION, "attention")}


def default_position_embedding_type(arch_type: str) -> str:
    """The paper's choice when position_embedding_type is not given: gated LION masks (lion-d, lion-s) encode position
    in their mask ('none'); softmax and lion-lit learn absolute positions; Hydra, as its M2-BERT fork: 'none'."""
    if arch_type == "hydra":
        return "none"
    if arch_type in variants.names(FAMILY):
        return "none" if variants.variant(FAMILY, arch_type).gates else "absolute"
    return "absolute"


def check_choice(field: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{field} must be one of {list(allowed)}, got {value!r}")


class LionBertConfig(PretrainedConfig):
    """HF BERT fields plus the LION choices.

    arch_type: 'attention' (softmax BERT) | 'lion-lit' | 'lion-d' | 'lion-s'.
    layer_norm_after: a LayerNorm on the attention output (``attention.self.layer_norm``), used by lion-lit.
    position_embedding_type: 'absolute' (learned positions added to the token embeddings) | 'none'; when not given,
        'absolute' for attention and lion-lit, 'none' for lion-d and lion-s.
    form / chunk_size: how LION attention is evaluated ('parallel', 'rnn', 'chunk', or 'auto' (default): the faster
        of parallel and chunk for the sequence length, ``lion.form_choice``); all give the same result.
    """

    model_type = "lion_bert"

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float | int = 0.1
    attention_probs_dropout_prob: float | int = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int | None = 0
    classifier_dropout: float | int | None = None
    tie_word_embeddings: bool = True
    arch_type: str = "attention"
    layer_norm_after: bool = False
    position_embedding_type: str | None = None
    form: str = "auto"
    chunk_size: int | None = None  # None: automatic (the fused kernel's choice, 32 in torch)

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.form = published_form(self.form, FAMILY)
        legacy = legacy_arch_types()
        if self.arch_type in legacy:
            raise ValueError(f"arch_type must be one of {list(arch_types())}, got the legacy name {self.arch_type!r} "
                             f"(= {legacy[self.arch_type]!r}); published checkpoints load with "
                             "LionBertForMaskedLM.from_published(...) or `python -m mlm.src.checkpoint_loading`")
        check_choice("arch_type", self.arch_type, arch_types())
        check_chunk_size(self.chunk_size)
        if self.position_embedding_type is None:
            self.position_embedding_type = default_position_embedding_type(self.arch_type)
        check_choice("position_embedding_type", self.position_embedding_type, POSITION_EMBEDDING_TYPES)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by "
                             f"num_attention_heads ({self.num_attention_heads})")

    @property
    def uses_position_embeddings(self) -> bool:
        return self.position_embedding_type == "absolute"
