"""The transformers config of the LION BERT family (docs/lion.md §2)."""
from __future__ import annotations

from transformers import PretrainedConfig

from lion.checks import check_chunk_size

ARCH_TYPES = ("attention", "lion-lit", "lion-d", "lion-s", "hydra")  # hydra: the baseline in mlm/src/hydra.py
FORMS = ("parallel", "rnn", "chunk")
# arch types that add absolute position embeddings (docs/lion.md §2: lion-d and lion-s encode position in their mask)
ARCHS_WITH_POSITIONS = ("attention", "lion-lit")


def check_choice(field: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{field} must be one of {list(allowed)}, got {value!r}")


class LionBertConfig(PretrainedConfig):
    """HF BERT fields plus the LION choices.

    arch_type: 'attention' (softmax BERT) | 'lion-lit' | 'lion-d' | 'lion-s'.
    layer_norm_after: a LayerNorm on the attention output (``attention.self.layer_norm``), used by lion-lit.
    form / chunk_size: how LION attention is evaluated ('parallel', 'rnn', 'chunk'); all give the same result.
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
    form: str = "parallel"
    chunk_size: int = 32

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.form = str(self.form).lower()
        check_choice("arch_type", self.arch_type, ARCH_TYPES)
        check_choice("form", self.form, FORMS)
        check_chunk_size(self.chunk_size)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by "
                             f"num_attention_heads ({self.num_attention_heads})")

    @property
    def uses_position_embeddings(self) -> bool:
        return self.arch_type in ARCHS_WITH_POSITIONS
