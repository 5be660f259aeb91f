"""The GLUE task registry (docs/lion.md §4) and the offline fixture tasks that imitate GLUE tasks.

Each task says where its data lives (``nyu-mll/glue`` config name, GLUE folder and TSV layout), how many labels its
head has (1 = regression), which metrics are computed, which of them make the task's GLUE score, and which task's
finetuned checkpoint it starts from (RTE, MRPC and STS-B start from MNLI, as in the paper and M2-BERT).
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TsvLayout:
    """Columns of one original GLUE TSV file: text columns, label column, whether the file has a header row."""

    text_columns: tuple[str, ...]  # TSV column names, in the order of ``GlueTask.text_columns``
    label_column: str
    header: bool = True
    names: tuple[str, ...] | None = None  # column names of a header-less file (CoLA)


@dataclass(frozen=True)
class GlueTask:
    name: str
    text_columns: tuple[str, ...]  # column names of the HF ``nyu-mll/glue`` config (the names we use everywhere)
    labels: tuple[str, ...]  # label names in HF order; () = regression (one output)
    metrics: tuple[str, ...]  # metric names, see metrics.METRICS
    score_metrics: tuple[str, ...]  # the metrics averaged into this task's GLUE score (M2-BERT's choice)
    folder: str  # folder of the task in a GLUE-format data_dir
    tsv: TsvLayout
    eval_splits: dict = field(default_factory=lambda: {"": "validation"})  # evaluator suffix -> split
    tsv_files: dict = field(default_factory=lambda: {"train": "train.tsv", "validation": "dev.tsv"})
    hub_config: str | None = None  # nyu-mll/glue config; None for fixture tasks (local only)
    init_from: str | None = None  # task whose finetuned checkpoint initialises this one's encoder
    defaults: dict = field(default_factory=dict)  # per-task trainer defaults (M2-BERT's finetuning_jobs.py)

    @property
    def num_labels(self) -> int:
        return len(self.labels) or 1

    @property
    def is_regression(self) -> bool:
        return not self.labels


PAIR = ("sentence1", "sentence2")
NLI = ("entailment", "not_entailment")
MNLI_SPLITS = {"": "validation_matched", "mismatched": "validation_mismatched"}
MNLI_FILES = {"train": "train.tsv", "validation_matched": "dev_matched.tsv",
              "validation_mismatched": "dev_mismatched.tsv"}


def _defaults(lr, wd, epochs, batch_size, eval_interval):
    return dict(lr=lr, wd=wd, max_duration=f"{epochs}ep", batch_size=batch_size, eval_interval=eval_interval)


GLUE_TASKS = {t.name: t for t in [
    GlueTask("mnli", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"), ("accuracy",),
             ("accuracy",), "MNLI", TsvLayout(("sentence1", "sentence2"), "gold_label"), MNLI_SPLITS, MNLI_FILES,
             hub_config="mnli", defaults=_defaults(5e-5, 5e-6, 3, 48, "2300ba")),
    GlueTask("qnli", ("question", "sentence"), NLI, ("accuracy",), ("accuracy",), "QNLI",
             TsvLayout(("question", "sentence"), "label"), hub_config="qnli",
             defaults=_defaults(1e-5, 1e-6, 10, 16, "1000ba")),
    GlueTask("qqp", ("question1", "question2"), ("not_duplicate", "duplicate"), ("accuracy", "f1"),
             ("accuracy", "f1"), "QQP", TsvLayout(("question1", "question2"), "is_duplicate"), hub_config="qqp",
             defaults=_defaults(3e-5, 3e-6, 5, 16, "2000ba")),
    GlueTask("sst2", ("sentence",), ("negative", "positive"), ("accuracy",), ("accuracy",), "SST-2",
             TsvLayout(("sentence",), "label"), hub_config="sst2", defaults=_defaults(3e-5, 3e-6, 3, 16, "500ba")),
    GlueTask("cola", ("sentence",), ("unacceptable", "acceptable"), ("matthews", "accuracy"), ("matthews",), "CoLA",
             TsvLayout(("sentence",), "label", header=False, names=("source", "label", "author_label", "sentence")),
             hub_config="cola", defaults=_defaults(5e-5, 5e-6, 10, 32, "250ba")),
    GlueTask("rte", PAIR, NLI, ("accuracy",), ("accuracy",), "RTE", TsvLayout(PAIR, "label"), hub_config="rte",
             init_from="mnli", defaults=_defaults(1e-5, 1e-6, 3, 16, "100ba")),
    GlueTask("mrpc", PAIR, ("not_equivalent", "equivalent"), ("f1", "accuracy"), ("f1",), "MRPC",
             TsvLayout(("#1 String", "#2 String"), "Quality"), hub_config="mrpc", init_from="mnli",
             defaults=_defaults(8e-5, 8e-6, 10, 32, "100ba")),
    GlueTask("stsb", PAIR, (), ("spearman", "pearson"), ("spearman",), "STS-B", TsvLayout(PAIR, "score"),
             hub_config="stsb", init_from="mnli", defaults=_defaults(3e-5, 3e-6, 10, 32, "200ba")),
]}

# Offline fixture tasks (mlm/data/glue_fixture, see its LICENSES.md), each in the TSV layout of the GLUE task it
# imitates.
FIXTURE_TASKS = {t.name: t for t in [
    GlueTask("rt_sentiment", ("sentence",), ("rotten", "fresh"), ("accuracy",), ("accuracy",), "RT-Sentiment",
             TsvLayout(("sentence",), "label"), defaults=_defaults(1e-4, 1e-6, 2, 32, "1ep")),
    GlueTask("moby_sentence_order", PAIR, ("next", "previous", "unrelated"), ("accuracy",), ("accuracy",),
             "Moby-Sentence-Order", TsvLayout(PAIR, "gold_label"), MNLI_SPLITS, MNLI_FILES,
             defaults=_defaults(1e-4, 1e-6, 1, 32, "1ep")),
    GlueTask("sotu_next_sentence", PAIR, ("not_follows", "follows"), ("accuracy", "f1"), ("accuracy",),
             "SOTU-Next-Sentence", TsvLayout(PAIR, "label"), init_from="moby_sentence_order",
             defaults=_defaults(1e-4, 1e-6, 1, 32, "1ep")),
    GlueTask("moby_sentence_distance", PAIR, (), ("spearman", "pearson"), ("spearman",), "Moby-Sentence-Distance",
             TsvLayout(PAIR, "score"), init_from="moby_sentence_order", defaults=_defaults(1e-4, 1e-6, 1, 32, "1ep")),
]}

TASKS = {**GLUE_TASKS, **FIXTURE_TASKS}


def get_task(name: str) -> GlueTask:
    if name not in TASKS:
        raise ValueError(f"tasks: unknown task {name!r}; allowed: {sorted(TASKS)}")
    return TASKS[name]
