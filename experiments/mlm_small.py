"""Small-scale MLM study: softmax BERT and Hydra against LION-Lit, LION-D, LION-S, pretrained for the same number of
steps on the offline corpus (mlm/data/corpus), then finetuned on the offline GLUE-format fixture
(mlm/data/glue_fixture).

    python experiments/mlm_small.py                               # defaults below (CPU here: minutes per model)
    python experiments/mlm_small.py --steps 1000 --hidden 256 --batch-size 32   # bigger budget
    python experiments/mlm_small.py --smoke                       # tiny model, a few steps (CI)
    python experiments/mlm_small.py --archs BERT LION-Lit --out r/a ...; ... --archs LION-D LION-S --out r/b ...
    python experiments/mlm_small.py --merge r/a r/b --out r ...   # models side by side on two GPUs, then one table

Pretraining is ``mlm/main.py`` (Composer) with ``yamls/pretrain/demo.yaml`` plus overrides; finetuning is
``mlm/glue.py``'s runner with ``yamls/finetune-glue/demo.yaml`` (tasks chosen with --glue-tasks). Every model gets
the same size, data, schedule and steps. Resumable: a model whose pretraining (or finetuning) result is already in
the results JSON with the same settings is skipped. Runs on the GPU when there is one (bf16 autocast), else on the
CPU. Writes ``<out>/mlm_small.json`` and ``<out>/mlm_small.png``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from composer.loggers import LoggerDestination
from omegaconf import OmegaConf as om

from experiments.common import atomic_write_json, load_json, load_results, plot_curves
from mlm import main as mlm_main
from mlm.src.glue.report import summarize as glue_summarize
from mlm.src.glue.runner import train as glue_train

REPO = Path(__file__).resolve().parents[1]
ARCHS = {"BERT": "attention", "LION-Lit": "lion-lit", "LION-D": "lion-d", "LION-S": "lion-s", "Hydra": "hydra"}
# docs/lion.md §5, C4 MLM large: MLM accuracy, GLUE average, training time relative to BERT.
PAPER = {"BERT": (69.88, 82.95, 1.0), "LION-Lit": (67.11, 80.76, 0.95), "LION-D": (68.64, 81.34, 1.10),
         "LION-S": (69.16, 81.58, 1.32), "Hydra": (71.18, 81.77, 3.13)}
GLUE_TASKS = ("rt_sentiment", "moby_sentence_order", "sotu_next_sentence", "moby_sentence_distance")


class MetricRecorder(LoggerDestination):
    """Keeps every logged metric as (batch, value), to draw the curves."""

    def __init__(self):
        self.points = []

    def log_metrics(self, metrics, step=None):
        self.points.append((step, dict(metrics)))

    def series(self, key):
        return [(s, float(m[key])) for s, m in self.points if key in m]


def model_config(args, arch):
    return {"arch_type": ARCHS[arch], "hidden_size": args.hidden, "num_hidden_layers": args.layers,
            "num_attention_heads": args.heads, "intermediate_size": 4 * args.hidden,
            "max_position_embeddings": max(128, args.seq_len), "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0}


def pretrain(args, arch, work):
    """One Composer pretraining run; returns validation MaskedAccuracy curve, final value and times."""
    overrides = {
        "run_name": f"small-{arch}", "seed": args.seed, "max_seq_len": args.seq_len,
        "data_local": str(work / f"corpus-{args.seq_len}"),
        "data_prep": {"local_files": [str(REPO / "mlm/data/corpus/*.txt.gz")], "val_fraction": 0.05},
        "tokenizer_name": str(REPO / "mlm/data/bert-base-uncased"),
        "model": {"model_config": model_config(args, arch)},
        "optimizer": {"lr": args.lr},
        "global_train_batch_size": args.batch_size, "device_train_microbatch_size": args.batch_size,
        "max_duration": f"{args.steps}ba", "eval_interval": f"{args.eval_every}ba",
        "eval_subset_num_batches": args.eval_batches, "console_log_interval": f"{max(1, args.steps // 4)}ba",
        "save_folder": str(work / "pretrain" / arch), "save_interval": f"{args.steps}ba",
        "save_num_checkpoints_to_keep": 1, "save_overwrite": True, "autoresume": False, "progress_bar": False,
    }
    cfg = om.merge(om.load(REPO / "yamls/pretrain/demo.yaml"), om.create(overrides))
    trainer = mlm_main.build_trainer(cfg)
    recorder = MetricRecorder()
    recorder.init(trainer.state, trainer.logger)
    trainer.logger.destinations = (*trainer.logger.destinations, recorder)
    t0 = time.perf_counter()
    trainer.fit()
    wall = time.perf_counter() - t0
    acc = recorder.series("metrics/eval/MaskedAccuracy")
    train_hours = recorder.series("time/train")
    val_hours = recorder.series("time/val")
    history = [{"step": s, "val_masked_acc": 100 * v} for s, v in acc]
    history += [{"step": s, "train_loss": v} for s, v in recorder.series("loss/train/total")]
    history.sort(key=lambda h: h["step"])
    n_params = sum(p.numel() for p in trainer.state.model.parameters())
    trainer.close()
    return {"arch": arch, "arch_type": ARCHS[arch], "params": n_params, "steps": args.steps,
            "val_masked_acc": 100 * acc[-1][1], "history": history, "fit_wall_s": wall,
            "train_s": 3600 * train_hours[-1][1] if train_hours else None,  # SpeedMonitor: training only
            "val_s": 3600 * val_hours[-1][1] if val_hours else None,
            "checkpoint": str(work / "pretrain" / arch / "latest-rank0.pt")}


def finetune(args, arch, work, checkpoint):
    """The GLUE runner on the fixture tasks in ``args.glue_tasks``; returns the summary (scores per task)."""
    cfg = om.load(REPO / "yamls/finetune-glue/demo.yaml")
    cfg.tasks = {name: cfg.tasks[name] for name in args.glue_tasks}
    for name in args.glue_tasks:
        cfg.tasks[name].seeds = [args.seed]
        cfg.tasks[name].trainer_kwargs.max_duration = args.glue_duration
        cfg.tasks[name].trainer_kwargs.max_sequence_length = args.glue_seq_len
        if args.smoke:
            cfg.tasks[name].trainer_kwargs.batch_size = 100
    cfg.merge_with({
        "base_run_name": f"small-{arch}", "precision": "amp_bf16" if _on_gpu() else "fp32",
        "tokenizer_name": str(REPO / "mlm/data/bert-base-uncased"),
        "model": {"model_config": model_config(args, arch)},
        "starting_checkpoint_load_path": checkpoint, "local_pretrain_checkpoint_folder": str(work / "pretrain"),
        "save_finetune_checkpoint_prefix": str(work / "finetune"),
        "data": {"data_dir": str(REPO / "mlm/data/glue_fixture"), "cache_dir": str(work / "glue-cache")},
    })
    t0 = time.perf_counter()
    summary = glue_summarize(glue_train(cfg))
    return {"tasks": {k: v["score"] for k, v in summary["tasks"].items()}, "average": summary["glue_average"],
            "average_kind": summary["glue_average_kind"], "wall_s": time.perf_counter() - t0,
            "duration": args.glue_duration, "seq_len": args.glue_seq_len}


def interleaved_step_ms(args, archs, rounds):
    """Median ms of a training forward+backward per model, the models taking turns step by step on the same batch,
    so that a change in the machine's load (shared CPU) hits every model alike."""
    import statistics

    import torch

    from benchmarks.timing import median_ms
    from mlm.src.create_bert import create_bert_mlm

    device = torch.device("cuda" if _on_gpu() else "cpu")
    torch.manual_seed(args.seed)
    models = {a: create_bert_mlm(model_config=model_config(args, a),
                                 tokenizer_name=str(REPO / "mlm/data/bert-base-uncased")).model.to(device)
              for a in archs}
    ids = torch.randint(1000, 30000, (args.batch_size, args.seq_len), device=device)
    labels = torch.where(torch.rand(ids.shape, device=device) < 0.3, ids, torch.full_like(ids, -100))
    batch = dict(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)
    def step(model):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = model(**batch, masked_logits_only=True).loss
        loss.backward()

    times = {a: [] for a in archs}
    for r in range(rounds + 2):  # rounds 0 and 1 warm up (kernel compilation)
        for a, model in models.items():
            # one timed step per turn (reps=1), so that the models keep taking turns
            ms = median_ms(lambda: step(model), warmup=0, reps=1, device=device.type)
            if r > 1:
                times[a].append(ms)
            model.zero_grad(set_to_none=True)
    return {a: statistics.median(t) for a, t in times.items()}


def summarize(results, archs):
    runs = results["runs"]
    base = runs.get("BERT", {}).get("pretrain", {})
    base_t = base.get("train_s") or base.get("fit_wall_s")
    steps = results.get("step_ms_interleaved") or {}
    rows = []
    for arch in archs:
        pre = runs.get(arch, {}).get("pretrain")
        if pre is None:
            continue
        t = pre.get("train_s") or pre["fit_wall_s"]
        glue = runs[arch].get("glue") or {}
        rows.append({"model": arch, "val_masked_acc": pre["val_masked_acc"], "train_s": t,
                     "time_ratio": t / base_t if base_t else None, "step_ms": steps.get(arch),
                     "step_ratio": steps[arch] / steps["BERT"] if arch in steps and "BERT" in steps else None,
                     "glue_tasks": glue.get("tasks"),
                     "glue_average": glue.get("average"), "paper_mlm_acc": PAPER[arch][0],
                     "paper_glue": PAPER[arch][1], "paper_time_ratio": PAPER[arch][2]})
    return rows


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="experiments/results", help="folder for the JSON and PNG")
    p.add_argument("--work-dir", default="data_cache/experiments/mlm", help="converted corpus and checkpoints")
    p.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    p.add_argument("--steps", type=int, default=100, help="pretraining batches, the same for every model")
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--eval-batches", type=int, default=-1, help="validation batches per evaluation (-1: all)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=17)
    p.add_argument("--glue-tasks", nargs="*", default=["rt_sentiment"], choices=GLUE_TASKS,
                   help="round-1 fixture tasks to finetune on (none: skip finetuning)")
    p.add_argument("--glue-seq-len", type=int, default=64, help="finetuning sequence length")
    p.add_argument("--glue-duration", default="1ep", help="finetuning length per task (Composer time string)")
    p.add_argument("--step-rounds", type=int, default=8, help="rounds of the interleaved step timing (0: skip)")
    p.add_argument("--smoke", action="store_true", help="tiny model, a few steps, one fixture task for a few batches")
    p.add_argument("--merge", nargs="+", default=[], metavar="DIR",
                   help="first fold in the models of these results folders (same settings; e.g. one pair per GPU)")
    p.add_argument("--replot", action="store_true", help="only redraw the PNG from the results JSON in --out")
    args = p.parse_args(argv)
    if args.smoke:
        args.steps, args.eval_every, args.eval_batches, args.batch_size, args.seq_len = 3, 3, 1, 4, 32
        args.hidden, args.layers, args.heads, args.glue_tasks, args.glue_duration = 32, 1, 2, ["rt_sentiment"], "2ba"
        args.glue_seq_len, args.step_rounds = 32, 1
    if args.steps < 1 or args.eval_every < 1:
        p.error(f"--steps and --eval-every must be ≥ 1, got {args.steps} and {args.eval_every}")
    if args.hidden % args.heads:
        p.error(f"--hidden ({args.hidden}) must be divisible by --heads ({args.heads})")
    return args


def settings(args):
    keys = ("steps", "eval_every", "eval_batches", "batch_size", "seq_len", "hidden", "layers", "heads", "lr", "seed",
            "smoke")
    return {k: getattr(args, k) for k in keys}


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    out, work = Path(args.out), Path(args.work_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "mlm_small.json"
    if args.replot:
        results = load_json(path)
        plot(results, out / "mlm_small.png")
        return results
    work.mkdir(parents=True, exist_ok=True)
    results = load_results(path, settings(args), args.merge)
    results.setdefault("device", _device_name())
    for arch in args.archs:
        run = results["runs"].setdefault(arch, {})
        if "pretrain" not in run:
            run["pretrain"] = pretrain(args, arch, work)
            atomic_write_json(path, results)
            plot(results, out / "mlm_small.png")
        else:
            print(f"[skip] {arch} pretraining: already in {path}", flush=True)
        glue = run.get("glue")
        if args.glue_tasks and (glue is None or sorted(glue["tasks"]) != sorted(args.glue_tasks)
                                or glue.get("duration") != args.glue_duration
                                or glue.get("seq_len") != args.glue_seq_len):
            run["glue"] = finetune(args, arch, work, run["pretrain"]["checkpoint"])
            atomic_write_json(path, results)
        results["table"] = summarize(results, list(ARCHS))
        atomic_write_json(path, results)
    if args.step_rounds and sorted(results.get("step_ms_interleaved") or {}) != sorted(args.archs):
        results["step_ms_interleaved"] = interleaved_step_ms(args, args.archs, args.step_rounds)
        results["table"] = summarize(results, list(ARCHS))
        atomic_write_json(path, results)
    plot(results, out / "mlm_small.png")
    for row in results["table"]:
        print(json.dumps(row), flush=True)
    return results


def plot(results, path):
    s, rows = results["settings"], summarize(results, list(ARCHS))
    plot_curves(results_for_plot(results), path, x="step", y="val_masked_acc", loss="train_loss",
                y_label="validation MaskedAccuracy (%)",
                bars={r["model"]: r["step_ratio"] for r in rows if r["step_ratio"]},
                bar_label="train step time / BERT's (interleaved)",
                title=f"MLM on the offline corpus: {s['layers']}x{s['hidden']}, seq {s['seq_len']}, batch "
                      f"{s['batch_size']}, {s['steps']} steps, lr {s['lr']:g} ({results.get('device', 'CPU')})")


def _on_gpu():
    import torch

    return torch.cuda.is_available()


def _device_name():
    import torch

    return torch.cuda.get_device_name(0) if _on_gpu() else "CPU"


def results_for_plot(results):
    return {"runs": {arch: run["pretrain"] for arch, run in results["runs"].items() if "pretrain" in run}}


if __name__ == "__main__":
    main()
