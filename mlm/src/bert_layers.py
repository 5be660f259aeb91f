"""LION BERT: HF BERT layout whose self-attention is softmax (SDPA) or LION-Lit/D/S (docs/lion.md §2).

Parameter names follow HF BERT and the published LIONS-EPFL checkpoints (``bert.embeddings.*``,
``bert.encoder.layer.N.attention.self.{query,key,value,ai,Wa_i,layer_norm}``, ``cls.predictions.*``, ``classifier.*``).
The LION forms (parallel, RNN, chunk) come from ``lion.lion_attention``, which honours padding in every form.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling, MaskedLMOutput, SequenceClassifierOutput

from lion import autocast_once, lion_attention, variants
from lion.checks import KEEP, check_chunk_size
from lion.forms import published_form
from lion.masks import gates_one_at_padding, per_token_gates
from lion.ops.naive import naive_scores
from mlm.src.bert_config import ATTENTION_LAYER_NORM_EPS, FAMILY, LionBertConfig
from mlm.src.checkpoint_files import build_published, read_checkpoint
from mlm.src.hydra import HydraLayer, HydraMixer

__all__ = ["LionBertConfig", "LionBertModel", "LionBertForMaskedLM", "LionBertForSequenceClassification",
           "LionBertPreTrainedModel"]


class LionBertEmbeddings(nn.Module):
    """word + token type (+ learned absolute positions iff ``position_embedding_type == 'absolute'``) → LayerNorm."""

    def __init__(self, config: LionBertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = (nn.Embedding(config.max_position_embeddings, config.hidden_size)
                                    if config.uses_position_embeddings else None)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids=None, token_type_ids=None, position_ids=None, inputs_embeds=None):
        x = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        batch, length = x.shape[:2]
        if token_type_ids is None:
            token_type_ids = torch.zeros(batch, length, dtype=torch.long, device=x.device)
        x = x + self.token_type_embeddings(token_type_ids)
        if self.position_embeddings is not None:
            if position_ids is None:
                position_ids = torch.arange(length, device=x.device)[None]
            x = x + self.position_embeddings(position_ids)
        return self.dropout(self.LayerNorm(x))


class LionBertSelfAttention(nn.Module):
    """Softmax attention or unnormalised LION attention Y = ((Q Kᵀ/√d) ⊙ M ⊙ keymask) V (docs/lion.md §2)."""

    def __init__(self, config: LionBertConfig):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        if self.variant is not None:
            self.variant.make_gates(self, FAMILY, config.hidden_size, self.num_heads)
        if config.layer_norm_after:
            self.layer_norm = nn.LayerNorm(config.hidden_size, eps=ATTENTION_LAYER_NORM_EPS)

    @property
    def variant(self):
        """The LION mask type's registry entry (lion.variants; None for softmax), looked up, not stored."""
        arch = self.config.arch_type
        return variants.variant(FAMILY, arch) if arch in variants.names(FAMILY) else None

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def _log_gates(self, hidden_states: torch.Tensor):
        """Log gates: (H,) for LION-D (one λ per head, the form lion_attention takes most cheaply), (B, H, L) for
        LION-S, None for Lit (lion.variants)."""
        variant = self.variant
        return None if variant is None else variant.log_gates(self, FAMILY, hidden_states)

    def _attention_matrix(self, q, k, hidden_states, attention_mask) -> torch.Tensor:
        """The (B, H, L, L) matrix that multiplies V: softmax probabilities, or LION's masked scores (padded keys 0)."""
        keys = attention_mask[:, None, None, :]
        if self.config.arch_type == "attention":
            scores = torch.matmul(q, k.transpose(-1, -2)).float() / math.sqrt(self.head_dim)
            return scores.masked_fill(~keys, torch.finfo(scores.dtype).min).softmax(-1).to(q.dtype)
        log_a = gates_one_at_padding(per_token_gates(self._log_gates(hidden_states), q.shape[0], q.shape[2]),
                                     attention_mask)  # padded tokens: gate 1, as lion_attention does
        scores = naive_scores(q, k, log_a, 1.0 / math.sqrt(self.head_dim))
        return scores.masked_fill(~keys, 0.0).to(q.dtype)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor, output_attentions: bool = False):
        """attention_mask: (B, L) bool, True for real tokens. Returns (output, attention matrix or None)."""
        hidden_states = autocast_once(hidden_states)  # q, k, v and gate projections: one low-precision copy saved
        q, k, v = (self._heads(proj(hidden_states)) for proj in (self.query, self.key, self.value))
        dropout_p = self.config.attention_probs_dropout_prob if self.training else 0.0
        weights = None
        if output_attentions:  # the parallel form, written out so that the matrix can be returned
            weights = F.dropout(self._attention_matrix(q, k, hidden_states, attention_mask), dropout_p, self.training)
            y = torch.matmul(weights, v)
        elif self.config.arch_type == "attention":
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask[:, None, None, :], dropout_p=dropout_p)
        else:
            y = lion_attention(q, k, v, self._log_gates(hidden_states), normalize=False,
                               scale=1.0 / math.sqrt(self.head_dim), key_padding_mask=attention_mask,
                               form=self.config.form, chunk_size=self.config.chunk_size,
                               dropout_p=dropout_p, training=self.training)
        y = y.transpose(1, 2).reshape(hidden_states.shape[0], hidden_states.shape[1], -1)
        if hasattr(self, "layer_norm"):
            y = self.layer_norm(y)
        return y, weights


class LionBertResidualOutput(nn.Module):
    """dense → dropout → LayerNorm(x + residual): HF's BertSelfOutput and BertOutput."""

    def __init__(self, in_features: int, config: LionBertConfig):
        super().__init__()
        self.dense = nn.Linear(in_features, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x, residual):
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class LionBertAttention(nn.Module):
    def __init__(self, config: LionBertConfig):
        super().__init__()
        self.self = LionBertSelfAttention(config)
        self.output = LionBertResidualOutput(config.hidden_size, config)

    def forward(self, hidden_states, attention_mask, output_attentions=False):
        y, weights = self.self(hidden_states, attention_mask, output_attentions)
        return self.output(y, hidden_states), weights


class LionBertIntermediate(nn.Module):
    def __init__(self, config: LionBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACT2FN[config.hidden_act]

    def forward(self, x):
        return self.act(self.dense(x))


class LionBertLayer(GradientCheckpointingLayer):
    def __init__(self, config: LionBertConfig):
        super().__init__()
        self.attention = LionBertAttention(config)
        self.intermediate = LionBertIntermediate(config)
        self.output = LionBertResidualOutput(config.intermediate_size, config)

    def forward(self, hidden_states, attention_mask, output_attentions=False):
        h, weights = self.attention(hidden_states, attention_mask, output_attentions)
        return self.output(self.intermediate(h), h), weights


class LionBertEncoder(nn.Module):
    def __init__(self, config: LionBertConfig):
        super().__init__()
        layer_cls = HydraLayer if config.arch_type == "hydra" else LionBertLayer
        self.layer = nn.ModuleList([layer_cls(config) for _ in range(config.num_hidden_layers)])

    def forward(self, hidden_states, attention_mask, output_hidden_states=False, output_attentions=False):
        """Returns (last hidden state, all hidden states or None, all attention matrices or None), as HF BERT."""
        all_states = [hidden_states] if output_hidden_states else None
        all_weights = [] if output_attentions else None
        for layer in self.layer:
            hidden_states, weights = layer(hidden_states, attention_mask, output_attentions)
            if output_hidden_states:
                all_states.append(hidden_states)
            if output_attentions:
                all_weights.append(weights)
        return (hidden_states, tuple(all_states) if output_hidden_states else None,
                tuple(all_weights) if output_attentions else None)


class LionBertPooler(nn.Module):
    def __init__(self, config: LionBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden_states):
        return self.activation(self.dense(hidden_states[:, 0]))


class LionBertPredictionHeadTransform(nn.Module):
    def __init__(self, config: LionBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.transform_act_fn = ACT2FN[config.hidden_act]
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x):
        return self.LayerNorm(self.transform_act_fn(self.dense(x)))


class LionBertLMPredictionHead(nn.Module):
    def __init__(self, config: LionBertConfig):
        super().__init__()
        self.transform = LionBertPredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=True)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, x):
        return self.decoder(self.transform(x))


class LionBertOnlyMLMHead(nn.Module):
    def __init__(self, config: LionBertConfig):
        super().__init__()
        self.predictions = LionBertLMPredictionHead(config)

    def forward(self, x):
        return self.predictions(x)


class LionBertPreTrainedModel(PreTrainedModel):
    config_class = LionBertConfig
    config: LionBertConfig
    base_model_prefix = "bert"
    supports_gradient_checkpointing = True
    _no_split_modules = ["LionBertEmbeddings", "LionBertLayer", "HydraLayer"]
    accepts_loss_kwargs = False  # transformers.Trainer: only a forward taking num_items_in_batch may say True
    FSDP_UNITS = ("LionBertLayer", "HydraLayer")

    def fsdp_wrap_fn(self, module: nn.Module) -> bool:
        """Composer's FSDP (``fsdp_config``): each encoder layer is one FSDP unit; the embeddings and the MLM head,
        which share the word-embedding matrix, stay in the root unit."""
        return type(module).__name__ in self.FSDP_UNITS

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, LionBertSelfAttention):
            for name in module.variant.per_head_params(FAMILY) if module.variant is not None else ():
                init.normal_(getattr(module, name), mean=0.0, std=1.0)  # published init: randn (docs/lion.md §2)
        elif isinstance(module, LionBertLMPredictionHead):
            init.zeros_(module.bias)
        elif isinstance(module, HydraMixer):
            module.init_ssm_parameters()

    def set_form(self, form: str, chunk_size=KEEP) -> None:
        """Switch how LION attention is evaluated ('parallel' | 'rnn' | 'chunk'); weights are unchanged."""
        self.config.form = published_form(form, FAMILY)
        if chunk_size is not KEEP:  # None: automatic
            self.config.chunk_size = check_chunk_size(chunk_size)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """As transformers, with ``auto_map`` naming every LION auto class (config, base, MLM, classification)."""
        module = __name__.rsplit(".", 1)[-1]
        classes = {"AutoModel": "LionBertModel", "AutoModelForMaskedLM": "LionBertForMaskedLM",
                   "AutoModelForSequenceClassification": "LionBertForSequenceClassification"}
        self.config.auto_map = {**{k: f"{module}.{v}" for k, v in classes.items()},
                                **(getattr(self.config, "auto_map", None) or {})}
        return super().save_pretrained(save_directory, *args, **kwargs)

    @classmethod
    def from_published(cls, name_or_path: str, **hub_kwargs):
        """A checkpoint as the LION authors published it (local dir or hub id: config.json + weights), legacy names
        mapped, unused buffers dropped, then loaded strictly. See ``mlm.src.checkpoint_files``."""
        config, weights = read_checkpoint(name_or_path, **hub_kwargs)
        return build_published(config, weights, cls)

    def _flag(self, value, name: str) -> bool:
        return bool(value if value is not None else getattr(self.config, name, False))

    def _maybe_tuple(self, output, return_dict):
        """``return_dict=False`` (argument or config) gives the output's tuple (None fields left out), as HF."""
        return_dict = return_dict if return_dict is not None else getattr(self.config, "return_dict", True)
        return output if return_dict else output.to_tuple()


class LionBertModel(LionBertPreTrainedModel):
    def _check_input_shapes(self, input_ids, inputs_embeds, attention_mask, token_type_ids):
        """Once per call, sizes only: a wrong shape is a ValueError naming the argument, not a broadcasting error
        in a layer."""
        if input_ids is not None and input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
        hidden = self.config.hidden_size
        if inputs_embeds is not None and (inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != hidden):
            raise ValueError(f"inputs_embeds must be (batch, length, hidden_size={hidden}), got shape "
                             f"{tuple(inputs_embeds.shape)}")
        shape = tuple(input_ids.shape if input_ids is not None else inputs_embeds.shape[:2])
        for name, mask in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
            if mask is not None and tuple(mask.shape) != shape:
                raise ValueError(f"{name} must be (batch, length) = {shape} like the input, got shape "
                                 f"{tuple(mask.shape)}")
        limit = self.config.max_position_embeddings
        if self.config.uses_position_embeddings and shape[1] > limit:
            raise ValueError(f"the input has {shape[1]} tokens, more than max_position_embeddings ({limit}) of this "
                             "model's absolute position table")

    def __init__(self, config: LionBertConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self.embeddings = LionBertEmbeddings(config)
        self.encoder = LionBertEncoder(config)
        self.pooler = LionBertPooler(config) if add_pooling_layer else None
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                output_attentions=None, output_hidden_states=None, return_dict=None):
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        output_attentions = self._flag(output_attentions, "output_attentions")
        if output_attentions and self.config.arch_type != "attention" and self.config.form not in ("parallel", "auto"):
            raise ValueError(f"output_attentions=True needs form='parallel' or 'auto' (the model has form="
                             f"{self.config.form!r}): the rnn and chunk forms never build the attention matrix; "
                             "call model.set_form('parallel') first")
        shape = input_ids.shape if input_ids is not None else inputs_embeds.shape[:2]
        device = input_ids.device if input_ids is not None else inputs_embeds.device
        self._check_input_shapes(input_ids, inputs_embeds, attention_mask, token_type_ids)
        if attention_mask is None:
            attention_mask = torch.ones(shape, dtype=torch.bool, device=device)
        hidden = self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds)
        hidden, all_states, all_weights = self.encoder(hidden, attention_mask.bool(),
                                                       self._flag(output_hidden_states, "output_hidden_states"),
                                                       output_attentions)
        pooled = self.pooler(hidden) if self.pooler is not None else None
        out = BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=pooled, hidden_states=all_states,
                                         attentions=all_weights)
        return self._maybe_tuple(out, return_dict)


class LionBertForMaskedLM(LionBertPreTrainedModel):
    _tied_weights_keys = {
        "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
        "cls.predictions.decoder.bias": "cls.predictions.bias",
    }
    accepts_loss_kwargs = True  # the loss honours num_items_in_batch (gradient accumulation in transformers.Trainer)

    def __init__(self, config: LionBertConfig):
        super().__init__(config)
        self.bert = LionBertModel(config, add_pooling_layer=False)
        self.cls = LionBertOnlyMLMHead(config)
        self.post_init()

    def get_output_embeddings(self):
        return self.cls.predictions.decoder

    def set_output_embeddings(self, new_embeddings):
        self.cls.predictions.decoder = new_embeddings
        self.cls.predictions.bias = new_embeddings.bias

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                labels=None, output_attentions=None, output_hidden_states=None, return_dict=None,
                masked_logits_only: bool = False, num_items_in_batch=None):
        """``masked_logits_only`` (with labels): logits of shape (N, vocab) for the N positions whose label is not
        -100, in row-major order, so the LM head runs on the masked tokens only (as M2-/Mosaic-BERT training).
        ``num_items_in_batch``: the loss is the sum over labelled tokens divided by it (transformers.Trainer passes
        the count over all accumulated micro-batches); otherwise the mean."""
        out = self.bert(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                        output_attentions, output_hidden_states, return_dict=True)
        hidden = out.last_hidden_state
        if masked_logits_only and labels is not None:
            # the masked positions found once (on a GPU the one host-device sync of the head): boolean indexing of
            # hidden and labels, and its backward, would each look them up again
            labels = labels.to(hidden.device)
            rows = (labels.reshape(-1) != -100).nonzero().squeeze(1)
            hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, rows)
            labels = labels.reshape(-1).index_select(0, rows)
        logits = self.cls(hidden)
        loss = None
        if labels is not None:  # -100 marks unmasked tokens
            flat = logits.view(-1, self.config.vocab_size).float(), labels.reshape(-1).to(logits.device)
            if num_items_in_batch is None:
                loss = F.cross_entropy(*flat)
            else:
                loss = F.cross_entropy(*flat, reduction="sum") / num_items_in_batch
        output = MaskedLMOutput(loss=loss, logits=logits, hidden_states=out.hidden_states, attentions=out.attentions)
        return self._maybe_tuple(output, return_dict)


class LionBertForSequenceClassification(LionBertPreTrainedModel):
    def __init__(self, config: LionBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = LionBertModel(config)
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                labels=None, output_attentions=None, output_hidden_states=None, return_dict=None):
        out = self.bert(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                        output_attentions, output_hidden_states, return_dict=True)
        logits = self.classifier(self.dropout(out.pooler_output))
        loss = None if labels is None else self._loss(logits, labels)
        output = SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states,
                                          attentions=out.attentions)
        return self._maybe_tuple(output, return_dict)

    def _loss(self, logits, labels):
        """As HF BERT: regression for one label, else single- or multi-label classification."""
        if self.config.problem_type is None:
            if self.num_labels == 1:
                self.config.problem_type = "regression"
            elif labels.dtype in (torch.long, torch.int):
                self.config.problem_type = "single_label_classification"
            else:
                self.config.problem_type = "multi_label_classification"
        if self.config.problem_type == "regression":
            if self.num_labels == 1:
                return F.mse_loss(logits.squeeze(-1).float(), labels.view(-1).float())
            return F.mse_loss(logits.float(), labels.float())
        if self.config.problem_type == "single_label_classification":
            return F.cross_entropy(logits.view(-1, self.num_labels).float(), labels.view(-1))
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float())


def _register_auto_classes() -> None:
    """Let AutoConfig / AutoModel* resolve ``model_type: lion_bert`` here (e.g. Composer's HF export), and write
    ``auto_map`` plus this code into every ``save_pretrained`` directory, so that a fresh process loads it with
    ``AutoModelForMaskedLM.from_pretrained(dir, trust_remote_code=True)`` without importing ``mlm`` first."""
    from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification

    AutoConfig.register(LionBertConfig.model_type, LionBertConfig, exist_ok=True)
    LionBertConfig.register_for_auto_class(AutoConfig)
    for auto_class, model_class in ((AutoModel, LionBertModel), (AutoModelForMaskedLM, LionBertForMaskedLM),
                                    (AutoModelForSequenceClassification, LionBertForSequenceClassification)):
        auto_class.register(LionBertConfig, model_class, exist_ok=True)
        model_class.register_for_auto_class(auto_class)


_register_auto_classes()
