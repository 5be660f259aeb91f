"""The results table: every (task, seed), the mean over seeds, and the GLUE average (metrics.glue_average)."""
from __future__ import annotations

import json
import os
from statistics import mean

from mlm.src.glue.metrics import glue_average, task_score
from mlm.src.glue.tasks import GLUE_TASKS, get_task


def summarize(results: list[dict]) -> dict:
    runs, by_task = [], {}
    for r in results:
        task = get_task(r["task"])
        flat = {f"{label}/{name}": 100.0 * value for label, ms in r["metrics"].items() for name, value in ms.items()}
        run = {"task": r["task"], "seed": r["seed"], "metrics": flat, "score": task_score(task, r["metrics"]),
               "init": r.get("load_path")}
        runs.append(run)
        by_task.setdefault(r["task"], []).append(run)
    tasks = {name: {"seeds": [r["seed"] for r in rs], "score": mean(r["score"] for r in rs),
                    "metrics": {k: mean(r["metrics"][k] for r in rs) for k in rs[0]["metrics"]}}
             for name, rs in by_task.items()}
    means = {name: t["score"] for name, t in tasks.items()}
    complete = set(GLUE_TASKS) <= set(means)
    return {"runs": runs, "tasks": tasks,
            "glue_average": glue_average({n: means[n] for n in GLUE_TASKS}) if complete else glue_average(means),
            "glue_average_kind": ("GLUE (M2-BERT): mean of the 8 task scores" if complete else
                                  f"mean over the {len(means)} configured task(s); not the 8-task GLUE score")}


SHORT = {"GlueAccuracy": "acc", "GlueF1": "f1", "GlueMatthews": "mcc", "GlueSpearman": "spearman",
         "GluePearson": "pearson"}


def _short(task: str, key: str) -> str:
    """'glue_mnli_mismatched/GlueAccuracy' -> 'acc-mismatched', 'glue_mnli/GlueAccuracy' -> 'acc'."""
    label, metric = key.split("/")
    suffix = label.removeprefix(f"glue_{task}").lstrip("_")
    return SHORT.get(metric, metric) + (f"-{suffix}" if suffix else "")


def _metrics(task: str, metrics: dict) -> str:
    return ", ".join(f"{_short(task, k)} {v:.2f}" for k, v in metrics.items())


def to_markdown(summary: dict) -> str:
    lines = ["| task | seed | metrics (%) | task score |", "|---|---|---|---|"]
    for r in summary["runs"]:
        lines.append(f"| {r['task']} | {r['seed']} | {_metrics(r['task'], r['metrics'])} | {r['score']:.2f} |")
    lines += ["", "| task | seeds | mean over seeds (%) | mean task score |", "|---|---|---|---|"]
    for name, t in summary["tasks"].items():
        lines.append(f"| {name} | {len(t['seeds'])} | {_metrics(name, t['metrics'])} | {t['score']:.2f} |")
    lines += ["", f"**{summary['glue_average_kind']}: {summary['glue_average']:.2f}**"]
    return "\n".join(lines) + "\n"


def _write_atomic(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def write_report(summary: dict, folder: str, name: str = "glue_results") -> tuple[str, str]:
    json_path, md_path = os.path.join(folder, f"{name}.json"), os.path.join(folder, f"{name}.md")
    _write_atomic(json_path, json.dumps(summary, indent=1))
    _write_atomic(md_path, to_markdown(summary))
    return json_path, md_path
