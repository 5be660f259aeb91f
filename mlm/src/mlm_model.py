"""Composer wrapper of LionBertForMaskedLM that runs the LM head on masked tokens only during training."""
from __future__ import annotations

from typing import Any, Mapping

from composer.models import HuggingFaceModel


class ComposerMaskedLM(HuggingFaceModel):
    """A ``HuggingFaceModel`` whose training forward asks for ``masked_logits_only`` (logits of the masked
    positions, N × vocab) and whose metrics see only masked positions, whether the logits are sparse (training
    metrics) or full (evaluation, where labels are popped before the forward)."""

    def forward(self, batch: Mapping[str, Any]):
        if not isinstance(batch, Mapping):
            return super().forward(batch)
        inputs = {k: v for k, v in batch.items() if k in self.model_forward_args}
        return self.model(**inputs, masked_logits_only="labels" in inputs)

    def update_metric(self, batch: Any, outputs: Any, metric) -> dict:
        labels = self.labels.to(outputs.device)
        keep = labels != -100
        if outputs.dim() == labels.dim() + 1:  # full (B, L, V) logits
            outputs = outputs[keep]
        metric.update(outputs, labels[keep])
        return {}
