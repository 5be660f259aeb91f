"""GLUE metrics as torchmetrics objects fed with model logits, and the GLUE score / average (M2-BERT's convention).

Composer's ``HuggingFaceModel`` calls ``metric.update(logits, labels)``; each class below turns logits into what its
torchmetrics parent expects (arg-max class, or the single regression output). Composer reports a metric under its
class name (``metrics/glue_mnli/GlueAccuracy``) and picks an evaluator's metrics by regex search on that name, so the
``Glue`` prefix keeps ours apart from the model's default ``MulticlassAccuracy`` / ``SpearmanCorrCoef``.
"""
from __future__ import annotations

import torch
from torchmetrics.classification import BinaryF1Score, MulticlassAccuracy, MulticlassMatthewsCorrCoef
from torchmetrics.regression import PearsonCorrCoef, SpearmanCorrCoef


class GlueAccuracy(MulticlassAccuracy):
    def __init__(self, num_classes: int):
        super().__init__(num_classes=num_classes, average="micro")


class GlueF1(BinaryF1Score):
    """F1 of the positive class (label 1: duplicate / equivalent), as GLUE reports it."""

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        super().update(preds.argmax(-1), target)


class GlueMatthews(MulticlassMatthewsCorrCoef):
    """Matthews correlation of the arg-max class (binary for CoLA)."""


class GlueSpearman(SpearmanCorrCoef):
    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        super().update(preds.reshape(-1).float(), target.reshape(-1).float())


class GluePearson(PearsonCorrCoef):
    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        super().update(preds.reshape(-1).float(), target.reshape(-1).float())


METRICS = {"accuracy": GlueAccuracy, "f1": GlueF1, "matthews": GlueMatthews, "spearman": GlueSpearman,
           "pearson": GluePearson}
NEEDS_NUM_CLASSES = {"accuracy", "matthews"}


def build_metric(name: str, num_labels: int):
    cls = METRICS[name]
    return cls(num_classes=num_labels) if name in NEEDS_NUM_CLASSES else cls()


def metric_class_name(name: str) -> str:
    return METRICS[name].__name__


def task_score(task, evaluator_metrics: dict[str, dict[str, float]]) -> float:
    """One task's GLUE score for one seed, in percent.

    M2-BERT (``glue.py``) averages every metric of every evaluator a job reports; its jobs report exactly
    MNLI acc (matched and mismatched), QNLI acc, QQP acc + F1, SST-2 acc, CoLA Matthews, RTE acc, MRPC F1 and
    STS-B Spearman. We compute a few more (MRPC acc, STS-B Pearson, CoLA acc) for the table but average only
    ``task.score_metrics`` over all evaluators, which reproduces M2-BERT's number.
    """
    values = [scores[metric_class_name(m)] for scores in evaluator_metrics.values() for m in task.score_metrics]
    return 100.0 * sum(values) / len(values)


def glue_average(task_means: dict[str, float]) -> float:
    """The GLUE number of the paper / M2-BERT: the unweighted mean of the per-task scores (each already the mean
    over seeds of ``task_score``) over the eight tasks MNLI, QNLI, QQP, SST-2, CoLA, RTE, MRPC, STS-B."""
    return sum(task_means.values()) / len(task_means)
