"""The transformers config of the LION BERT family (docs/lion.md §2)."""
from __future__ import annotations

from transformers import PretrainedConfig

from lion.checks import check_chunk_size

ARCH_TYPES = ("attention", "lion-lit", "lion-d", "lion-s", "hydra")  # hydra: the baseline in mlm/src/hydra.py
# the published spellings (lion's own names are accepted as aliases); auto: the faster of parallel and chunk
FORMS = ("parallel", "rnn", "chunk", "auto")
FORM_ALIASES = {"attention": "parallel", "recurrent": "rnn"}
POSITION_EMBEDDING_TYPES = ("absolute", "none")
# the paper's choice when position_embedding_type is not given: lion-d and lion-s encode position in their mask
DEFAULT_POSITION_EMBEDDING_TYPE = {"attention": "absolute", "lion-lit": "absolute", "lion-d": "none", "lion-s": "none",
                                  "hydra": "none"}  # Hydra, as in its M2-BERT fork: no position embeddings
# PyTorch's LayerNorm default: the published lion-lit ``attention.self.layer_norm`` does not use layer_norm_eps
ATTENTION_LAYER_NORM_EPS = 1e-5
# arch names in published configs and older yamls (docs/lion.md §3.4)
LEGACY_ARCH_TYPES = {
    "linear_attention": "lion-lit", "lit": "lion-lit", "lion_lit": "lion-lit",
    "nova": "lion-d", "decay": "lion-d", "lion_d": "lion-d",
    "nova-inputdep": "lion-s", "nova_inputdep": "lion-s", "selective": "lion-s", "lion_s": "lion-s",
    "softmax": "attention", "bert": "attention", "hf_bert": "attention",
}


def check_choice(field: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{field} must be one of {list(allowed)}, got {value!r}")


class LionBertConfig(PretrainedConfig):
    """HF BERT fields plus the LION choices.

    arch_type: 'attention' (softmax BERT) | 'lion-lit' | 'lion-d' | 'lion-s'.
    layer_norm_after: a LayerNorm on the attention output (``attention.self.layer_norm``), used by lion-lit.
    position_embedding_type: 'absolute' (learned positions added to the token embeddings) | 'none'; when not given,
        'absolute' for attention and lion-lit, 'none' for lion-d and lion-s.
    form / chunk_size: how LION attention is evaluated ('parallel', 'rnn', 'chunk', or 'auto': the faster of
        parallel and chunk for the sequence length, ``lion.form_choice``); all give the same result.
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
    form: str = "parallel"
    chunk_size: int | None = None  # None: automatic (the fused kernel's choice, 32 in torch)

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.form = FORM_ALIASES.get(str(self.form).lower(), str(self.form).lower())
        if self.arch_type in LEGACY_ARCH_TYPES:
            raise ValueError(f"arch_type must be one of {list(ARCH_TYPES)}, got the legacy name {self.arch_type!r} "
                             f"(= {LEGACY_ARCH_TYPES[self.arch_type]!r}); published checkpoints load with "
                             "LionBertForMaskedLM.from_published(...) or `python -m mlm.src.checkpoint_loading`")
        check_choice("arch_type", self.arch_type, ARCH_TYPES)
        check_choice("form", self.form, FORMS)
        check_chunk_size(self.chunk_size)
        if self.position_embedding_type is None:
            self.position_embedding_type = DEFAULT_POSITION_EMBEDDING_TYPE.get(self.arch_type, "absolute")
        check_choice("position_embedding_type", self.position_embedding_type, POSITION_EMBEDDING_TYPES)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by "
                             f"num_attention_heads ({self.num_attention_heads})")

    @property
    def uses_position_embeddings(self) -> bool:
        return self.position_embedding_type == "absolute"
