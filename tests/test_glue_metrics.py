"""GLUE metrics against scikit-learn / scipy on fixed predictions, and the task score / GLUE average convention."""
import numpy as np
import pytest
import torch
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from mlm.src.glue.jobs import evaluator_label
from mlm.src.glue.metrics import build_metric
from mlm.src.glue.report import summarize, to_markdown
from mlm.src.glue.tasks import GLUE_TASKS, get_task


def fixed_logits(n, classes, seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    logits = torch.randn(n, classes, generator=g)
    logits[torch.arange(n), labels] += 0.8  # better than chance, not perfect
    return logits, labels


def run_metric(name, num_labels, logits, labels, batch=37):
    metric = build_metric(name, num_labels)
    for i in range(0, len(labels), batch):  # batched updates, as during evaluation
        metric.update(logits[i:i + batch], labels[i:i + batch])
    return float(metric.compute())


@pytest.mark.parametrize("task", ["mnli", "qnli", "qqp", "rte", "sst2"])
def test_accuracy_matches_sklearn(task):
    n = get_task(task).num_labels
    logits, labels = fixed_logits(500, n, seed=1)
    expected = accuracy_score(labels.numpy(), logits.argmax(-1).numpy())
    assert 0.4 < expected < 0.95
    assert run_metric("accuracy", n, logits, labels) == pytest.approx(expected, abs=1e-6)


def test_mnli_matched_and_mismatched_each_get_accuracy():
    mnli = get_task("mnli")
    assert mnli.eval_splits == {"": "validation_matched", "mismatched": "validation_mismatched"}
    assert [evaluator_label("mnli", s) for s in mnli.eval_splits] == ["glue_mnli", "glue_mnli_mismatched"]
    (lm, ym), (lmm, ymm) = fixed_logits(300, 3, seed=2), fixed_logits(200, 3, seed=3)
    matched, mismatched = run_metric("accuracy", 3, lm, ym), run_metric("accuracy", 3, lmm, ymm)
    assert matched == pytest.approx(accuracy_score(ym, lm.argmax(-1)), abs=1e-6)
    assert mismatched == pytest.approx(accuracy_score(ymm, lmm.argmax(-1)), abs=1e-6)
    # the MNLI score averages the two (as M2-BERT's glue.py does)
    metrics = {"glue_mnli": {"GlueAccuracy": matched}, "glue_mnli_mismatched": {"GlueAccuracy": mismatched}}
    summary = summarize([{"task": "mnli", "seed": 19, "metrics": metrics}])
    assert summary["tasks"]["mnli"]["score"] == pytest.approx(50 * (matched + mismatched))


@pytest.mark.parametrize("task", ["mrpc", "qqp"])
def test_f1_of_positive_class_matches_sklearn(task):
    logits, labels = fixed_logits(400, 2, seed=4)
    expected = f1_score(labels.numpy(), logits.argmax(-1).numpy())  # pos_label=1: equivalent / duplicate
    assert run_metric("f1", 2, logits, labels) == pytest.approx(expected, abs=1e-6)
    assert "f1" in get_task(task).metrics


def test_matthews_matches_sklearn_for_cola():
    logits, labels = fixed_logits(400, 2, seed=5)
    logits[:40, 1] += 3.0  # skew predictions towards 'acceptable', as CoLA models do
    expected = matthews_corrcoef(labels.numpy(), logits.argmax(-1).numpy())
    assert run_metric("matthews", 2, logits, labels) == pytest.approx(expected, abs=1e-5)
    assert get_task("cola").score_metrics == ("matthews",)


def test_spearman_and_pearson_match_scipy_for_stsb():
    g = torch.Generator().manual_seed(6)
    target = torch.randint(0, 26, (300,), generator=g).float() / 5  # STS-B scores in [0, 5]
    preds = (target + torch.randn(300, generator=g)).unsqueeze(-1)  # a regression head's (N, 1) output
    assert run_metric("spearman", 1, preds, target) == pytest.approx(spearmanr(preds[:, 0], target)[0], abs=1e-5)
    assert run_metric("pearson", 1, preds, target) == pytest.approx(pearsonr(preds[:, 0], target)[0], abs=1e-5)
    assert get_task("stsb").is_regression and get_task("stsb").num_labels == 1


def test_glue_average_uses_m2_bert_task_scores():
    metrics = {"mnli": {"glue_mnli": {"GlueAccuracy": .80}, "glue_mnli_mismatched": {"GlueAccuracy": .82}},
               "qnli": {"glue_qnli": {"GlueAccuracy": .88}},
               "qqp": {"glue_qqp": {"GlueAccuracy": .90, "GlueF1": .86}},
               "sst2": {"glue_sst2": {"GlueAccuracy": .92}},
               "cola": {"glue_cola": {"GlueMatthews": .50, "GlueAccuracy": .80}},
               "rte": {"glue_rte": {"GlueAccuracy": .70}},
               "mrpc": {"glue_mrpc": {"GlueF1": .88, "GlueAccuracy": .84}},
               "stsb": {"glue_stsb": {"GlueSpearman": .86, "GluePearson": .87}}}
    results = [{"task": t, "seed": 19, "metrics": m} for t, m in metrics.items()]
    results.append({"task": "rte", "seed": 8364, "metrics": {"glue_rte": {"GlueAccuracy": .60}}})
    summary = summarize(results)
    scores = {"mnli": 81, "qnli": 88, "qqp": 88, "sst2": 92, "cola": 50, "rte": 65, "mrpc": 88, "stsb": 86}
    assert {t: round(v["score"], 6) for t, v in summary["tasks"].items()} == scores
    assert summary["glue_average"] == pytest.approx(np.mean(list(scores.values())))
    assert summary["glue_average_kind"].startswith("GLUE (M2-BERT)") and set(summary["tasks"]) == set(GLUE_TASKS)
    assert f"{summary['glue_average']:.2f}" in to_markdown(summary)
