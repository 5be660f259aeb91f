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

from lion import decay_log_gates, lion_attention, selective_log_gates_eps
from lion.checks import check_chunk_size
from mlm.src.bert_config import FORMS, LionBertConfig, check_choice
from mlm.src.hydra import HydraLayer, HydraMixer

__all__ = ["LionBertConfig", "LionBertModel", "LionBertForMaskedLM", "LionBertForSequenceClassification",
           "LionBertPreTrainedModel"]


class LionBertEmbeddings(nn.Module):
    def __init__(self, config: LionBertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        if config.uses_position_embeddings:
            self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids, token_type_ids=None, position_ids=None):
        x = self.word_embeddings(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = x + self.token_type_embeddings(token_type_ids)
        if hasattr(self, "position_embeddings"):
            if position_ids is None:
                position_ids = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
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
        if config.arch_type == "lion-d":
            self.ai = nn.Parameter(torch.randn(self.num_heads))
        elif config.arch_type == "lion-s":
            self.Wa_i = nn.Linear(config.hidden_size, self.num_heads)
        if config.layer_norm_after:
            self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def _log_gates(self, hidden_states: torch.Tensor):
        batch, length, _ = hidden_states.shape
        if self.config.arch_type == "lion-d":
            return decay_log_gates(self.ai, length, batch)
        if self.config.arch_type == "lion-s":
            return selective_log_gates_eps(self.Wa_i(hidden_states))
        return None

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """attention_mask: (B, L) bool, True for real tokens."""
        q, k, v = (self._heads(proj(hidden_states)) for proj in (self.query, self.key, self.value))
        dropout_p = self.config.attention_probs_dropout_prob if self.training else 0.0
        if self.config.arch_type == "attention":
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask[:, None, None, :], dropout_p=dropout_p)
        else:
            y = lion_attention(q, k, v, self._log_gates(hidden_states), normalize=False,
                               scale=1.0 / math.sqrt(self.head_dim), key_padding_mask=attention_mask,
                               form=self.config.form, chunk_size=self.config.chunk_size,
                               dropout_p=dropout_p, training=self.training)
        y = y.transpose(1, 2).reshape(hidden_states.shape[0], hidden_states.shape[1], -1)
        if hasattr(self, "layer_norm"):
            y = self.layer_norm(y)
        return y


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

    def forward(self, hidden_states, attention_mask):
        return self.output(self.self(hidden_states, attention_mask), hidden_states)


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

    def forward(self, hidden_states, attention_mask):
        h = self.attention(hidden_states, attention_mask)
        return self.output(self.intermediate(h), h)


class LionBertEncoder(nn.Module):
    def __init__(self, config: LionBertConfig):
        super().__init__()
        layer_cls = HydraLayer if config.arch_type == "hydra" else LionBertLayer
        self.layer = nn.ModuleList([layer_cls(config) for _ in range(config.num_hidden_layers)])

    def forward(self, hidden_states, attention_mask, output_hidden_states=False):
        all_states = [hidden_states] if output_hidden_states else None
        for layer in self.layer:
            hidden_states = layer(hidden_states, attention_mask)
            if output_hidden_states:
                all_states.append(hidden_states)
        return hidden_states, (tuple(all_states) if output_hidden_states else None)


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

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, LionBertSelfAttention) and hasattr(module, "ai"):
            init.normal_(module.ai, mean=0.0, std=1.0)  # published init: randn (docs/lion.md §2)
        elif isinstance(module, LionBertLMPredictionHead):
            init.zeros_(module.bias)
        elif isinstance(module, HydraMixer):
            module.init_ssm_parameters()

    def set_form(self, form: str, chunk_size: int | None = None) -> None:
        """Switch how LION attention is evaluated ('parallel' | 'rnn' | 'chunk'); weights are unchanged."""
        form = str(form).lower()
        check_choice("form", form, FORMS)
        self.config.form = form
        if chunk_size is not None:
            self.config.chunk_size = check_chunk_size(chunk_size)


class LionBertModel(LionBertPreTrainedModel):
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

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                output_hidden_states=None, return_dict=None, **kwargs):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        attention_mask = attention_mask.bool()
        hidden = self.embeddings(input_ids, token_type_ids, position_ids)
        hidden, all_states = self.encoder(hidden, attention_mask, bool(output_hidden_states))
        pooled = self.pooler(hidden) if self.pooler is not None else None
        return BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=pooled, hidden_states=all_states)


class LionBertForMaskedLM(LionBertPreTrainedModel):
    _tied_weights_keys = {
        "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
        "cls.predictions.decoder.bias": "cls.predictions.bias",
    }

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

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, labels=None,
                output_hidden_states=None, return_dict=None, masked_logits_only: bool = False, **kwargs):
        """``masked_logits_only`` (with labels): logits of shape (N, vocab) for the N positions whose label is not
        -100, in row-major order, so the LM head runs on the masked tokens only (as M2-/Mosaic-BERT training)."""
        out = self.bert(input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states)
        hidden = out.last_hidden_state
        if masked_logits_only and labels is not None:
            keep = labels != -100
            hidden, labels = hidden[keep], labels[keep]
        logits = self.cls(hidden)
        loss = None
        if labels is not None:  # -100 marks unmasked tokens
            loss = F.cross_entropy(logits.view(-1, self.config.vocab_size).float(), labels.reshape(-1))
        return MaskedLMOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)


class LionBertForSequenceClassification(LionBertPreTrainedModel):
    def __init__(self, config: LionBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = LionBertModel(config)
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, labels=None,
                output_hidden_states=None, return_dict=None, **kwargs):
        out = self.bert(input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states)
        logits = self.classifier(self.dropout(out.pooler_output))
        loss = None if labels is None else self._loss(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)

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
    """Let AutoConfig / AutoModel* resolve ``model_type: lion_bert`` (e.g. Composer's HF export)."""
    from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification

    AutoConfig.register(LionBertConfig.model_type, LionBertConfig, exist_ok=True)
    AutoModel.register(LionBertConfig, LionBertModel, exist_ok=True)
    AutoModelForMaskedLM.register(LionBertConfig, LionBertForMaskedLM, exist_ok=True)
    AutoModelForSequenceClassification.register(LionBertConfig, LionBertForSequenceClassification, exist_ok=True)


_register_auto_classes()
