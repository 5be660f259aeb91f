"""Full training step (forward, backward, AdamW) of LION against softmax (SDPA) baselines, side by side.

The user's path: timm.create_model('lion_{small,base}_patch16_224', mask_type=..., order=...) for the five LION
variants (Lit, D, S, D♮, S♮) against timm's deit_{small,base}_patch16_224; BERT-base MLM (LionBertForMaskedLM,
lion-lit, lion-d, lion-s) against our softmax BERT (arch_type 'attention', SDPA), each with attention dropout 0.1
and 0. fp32 weights under bf16 autocast, fused AdamW, random data, median of the timed steps after warm-up;
eager or --compile (regional: every block .compile()d, baselines too). Also times the attention op alone
(fused LION vs SDPA, B=128 H=12 d=64, L=197 and 128) with the bf16 matmul rate of the same run.
With --baselines, the paper's other baselines get rows too: Vim (timm vim_{small,base}_patch16_224, Triton scan)
against DeiT and Hydra-base (arch_type 'hydra', 23 layers) against softmax BERT.

The models of one table row (one ViT size; one MLM attention dropout) are timed interleaved by default: all of
them are built, then each round times one step of every model, the order rotated by one each round. The eager step
is host-bound and the host's speed drifts from minute to minute, so a baseline timed a minute before a LION model
is not side by side with it; interleaved, each ratio is measured round by round under the same drift. --sequential
times one model at a time instead (built, warmed up, timed, freed): lower peak memory, drift-prone ratios.

    python benchmarks/train_step.py [--sizes small base] [--variants Lit D S] [--compile] [--no-mlm] [--no-op]
                                    [--mlm-dropout 0.1 0.0] [--sequential] [--results benchmarks/RESULTS.md]
                                    [--json out.json]

Each part measured (the ViT rows and the MLM rows of one mode, the op alone) replaces its own block of RESULTS.md
(benchmarks/results_md.py): the file holds the current numbers only.
"""
from __future__ import annotations

import argparse
import functools
import gc
import json
import logging
import signal
import statistics
import sys
import time
import traceback
import warnings
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
import image_classification.models_lion  # noqa: F401  (registers lion_* in timm)
import image_classification.models_vim  # noqa: F401  (registers the vim_* baseline in timm)
import lion
from benchmarks.results_md import replace_block, run_header
from benchmarks.timing import (
    interleaved_median_ms,
    kernel_time_by_category,
    median_ms,
    peak_activation_gib,
    peak_tensors,
)
from image_classification.engine import CUDA_GRAPH_MODES
from lion.forms import published_form

VARIANTS = {"Lit": ("Lit", "Normal"), "D": ("Decay", "Normal"), "S": ("Selective", "Normal"),
            "D♮": ("Decay", "S"), "S♮": ("Selective", "S")}
MLM_ARCHS = {"Lit": "lion-lit", "D": "lion-d", "S": "lion-s"}
TARGETS = {"Lit": 0.90, "D": 1.00, "S": 1.10, "D♮": 1.15, "S♮": 1.25}
MLM_TARGETS = {"Lit": 0.95, "D": 1.00, "S": 1.10}
OP_TARGETS = {"LION-Lit": 0.80, "LION-D": 1.00, "LION-S": 1.00}


def cuda_graphs(compile_model: bool, compile_mode: str) -> bool:
    """The step replays CUDA graphs: their memory pool is allocated at capture, so a step's peak is not measured."""
    return compile_model and compile_mode in CUDA_GRAPH_MODES


def vit_loss(model, batch):
    """A ViT step's loss: cross-entropy of the logits (in fp32) on the labels, for every ViT row and profile."""
    return F.cross_entropy(model(batch[0]).float(), batch[1])


def time_steps(step, warmup: int, steps: int) -> float:
    return median_ms(step, warmup=warmup, reps=steps)


def compile_blocks(model, mode: str = "default") -> None:
    """Regional compilation: each transformer block is compiled in place (one graph, reused by every block),
    for the baselines and LION alike; embeddings, head and loss stay eager. mode 'reduce-overhead' replays each
    block as a CUDA graph (no per-kernel launch cost on the host)."""
    blocks = model.blocks if hasattr(model, "blocks") else model.bert.encoder.layer
    for block in blocks:
        block.compile(mode=mode)


def train_step_fn(model, batch, loss_fn, compile_model: bool, compile_mode: str = "default"):
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05, fused=True)
    if compile_model:
        compile_blocks(model, compile_mode)
    graphs = cuda_graphs(compile_model, compile_mode)

    def step():
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = loss_fn(model, batch)
        loss.backward()
        opt.step()
        return loss
    return step


def bench_model(build, batch, loss_fn, args) -> float:
    model = build().cuda()
    try:
        step = train_step_fn(model, batch, loss_fn, args.compile, args.compile_mode)
        return time_steps(step, args.warmup, args.steps)
    finally:
        del model
        gc.collect()
        torch.cuda.empty_cache()


def time_models(models: dict, batch, loss_fn, args, ms: dict, mem: dict | None = None) -> None:
    """Time the training step of each of ``models`` ({key: (label, constructor)}, the first the baseline), store
    its median ms in ``ms[key]`` and print a line per model with its ratio to the baseline. Interleaved: all models
    are built, then timed round by round with interleaved_median_ms, then freed; with --sequential one at a time
    (bench_model). A model that fails to build or to run is reported (traceback) and left out. ``mem``: also the
    peak memory of one step beyond the resident weights, gradients and optimizer state (GiB), per model."""
    base = next(iter(models))

    def report(key):
        label = models[key][0]
        if key not in ms:
            print(f"  {label}: not measured (failed, traceback above)", flush=True)
        elif key == base or base not in ms:
            print(f"  {label}: {ms[key]:.2f} ms", flush=True)
        else:
            print(f"  {label}: {ms[key]:.2f} ms ({ms[key] / ms[base]:.2f}x)"
                  + (f", peak {mem[key]:.2f} GiB" if mem and key in mem else ""), flush=True)

    if args.sequential and mem is None:
        for key, (_, build) in models.items():
            try:
                ms[key] = bench_model(build, batch, loss_fn, args)
            except Exception:  # one failing model must not hide the others
                traceback.print_exc()
            report(key)
        return
    steps = {}
    for key, (_, build) in models.items():
        try:
            steps[key] = train_step_fn(build().cuda(), batch, loss_fn, args.compile, args.compile_mode)
        except Exception:
            traceback.print_exc()
    print(f"  timing {len(steps)} models interleaved: {args.warmup} warm-up steps each, {args.steps} rounds",
          flush=True)
    try:
        ms.update(interleaved_median_ms(steps, warmup=args.warmup, reps=args.steps))
        if mem is not None and not cuda_graphs(args.compile, args.compile_mode):
            for key in ms.keys() & steps.keys():
                mem[key] = peak_activation_gib(steps[key])
    finally:
        del steps
        gc.collect()
        torch.cuda.empty_cache()
    for key in models:
        report(key)


def profile_pair(title: str, builds: dict, batch, loss_fn, args) -> str:
    """Where the time of one training step goes: CUDA time per kernel category of a baseline and a LION model
    (torch.profiler, after warm-up, same batch), their difference, the host time to enqueue a step, and the LION
    model's costliest kernels. ``builds``: {baseline name: constructor, LION name: constructor}."""
    runs, host, ops = {}, {}, {}
    for name, build in builds.items():
        model = build().cuda()
        step = train_step_fn(model, batch, loss_fn, args.compile, args.compile_mode)
        runs[name] = kernel_time_by_category(step, warmup=args.warmup)
        host[name] = host_and_wall_ms(step) + host_waits(step)
        ops[name] = host_ops_ms(step)
        del model, step
        gc.collect()
        torch.cuda.empty_cache()
    (bname, (base, _)), (oname, (ours, top)) = runs.items()
    lines = [f"{title} ({'compiled, mode ' + args.compile_mode if args.compile else 'eager'}; ms, CUDA time):", "",
             f"| category | {bname} | {oname} | difference |", "|---|---|---|---|"]
    for cat in sorted(set(base) | set(ours), key=lambda c: -(ours.get(c, 0) + base.get(c, 0))):
        lines.append(f"| {cat} | {base.get(cat, 0):.2f} | {ours.get(cat, 0):.2f} | "
                     f"{ours.get(cat, 0) - base.get(cat, 0):+.2f} |")
    kb, ko = sum(base.values()), sum(ours.values())
    lines.append(f"| **kernel total** | {kb:.2f} | {ko:.2f} | {ko - kb:+.2f} |")
    (hb, wb, *waits_b), (ho, wo, *waits_o) = host[bname], host[oname]
    lines.append(f"| host time to enqueue the step | {hb:.2f} | {ho:.2f} | {ho - hb:+.2f} |")
    lines.append(f"| step wall time | {wb:.2f} | {wo:.2f} | {wo - wb:+.2f} |")
    lines.append("| host waits in a step: syncs · device mallocs/frees | {} · {} | {} · {} | |".format(
        *waits_b, *waits_o))
    lines += ["", f"Costliest kernels of {oname}:", "", "| kernel | ms |", "|---|---|"]
    lines += [f"| `{name[:90]}` | {ms:.2f} |" for name, ms in top]
    lines += ["", f"In one line ({bname} · {oname}): kernels {kb:.1f} · {ko:.1f} "
              f"(LION's own {ours.get('LION kernels', 0):.1f}), host {hb:.1f} · {ho:.1f}, wall {wb:.1f} · {wo:.1f} ms"]
    for name, (total, heavy) in ops.items():
        lines += ["", f"Host work of one {name} step (torch.profiler CPU events, self time, ms, profiler overhead "
                  f"included): {total:.1f} in all; " + ", ".join(f"`{op}` {ms:.2f}" for op, ms in heavy)]
    return "\n".join(lines)


def host_waits(step) -> tuple[int, int]:
    """What can make a step's host wait for the GPU, counted over one ``step()``: synchronising calls (torch's sync
    debug mode warns on each) and the caching allocator's cudaMalloc / cudaFree calls (0 once it is warm)."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_stats()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    after = torch.cuda.memory_stats()
    mallocs = sum(after.get(k, 0) - before.get(k, 0) for k in ("num_device_alloc", "num_device_free"))
    return sum("synchroniz" in str(w.message) for w in caught), mallocs


def host_ops_ms(step, reps: int = 2) -> tuple[float, list]:
    """Self CPU time (ms) of one ``step()`` under torch.profiler, and its 8 costliest ops: what the host does."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(reps):
            step()
        torch.cuda.synchronize()
    rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in rows) / 1e3 / reps
    return total, [(e.key, e.self_cpu_time_total / 1e3 / reps) for e in rows[:8]]


def profile_step(size: str, variant: str, args, px: int = 224) -> str:
    """profile_pair for DeiT against a ViT LION variant at ``px`` (the length row's batch and --form)."""
    _, B, batch, deit, lion_vit = vit_length_setup(args, size, px)
    builds = {"DeiT": deit, f"LION-{variant}": functools.partial(lion_vit, variant)}
    return profile_pair(f"Kernel time of one ViT-{size[0].upper()} training step by category, {px} px, batch {B}",
                        builds, batch, vit_loss, args)


def peak_step(size: str, variants: list, args, px: int) -> str:
    """The memory cells' why: DeiT and each LION variant at ``px`` (the length row's batch and --form), the peak of
    one eager training step beyond what was allocated before it (weights, grads, optimizer state, as the length rows
    measure it) and the allocations alive at that peak summed by call site, from the allocator's history."""
    _, B, batch, deit, lion_vit = vit_length_setup(args, size, px)
    builds = {"DeiT": deit, **{f"LION-{v}": functools.partial(lion_vit, v) for v in variants}}
    lines = [f"Memory peak of one ViT-{size[0].upper()} training step, {px} px, batch {B} (eager; MiB beyond what was "
             "allocated before the step; the allocations alive at the peak summed by call site, largest first; '?': "
             "no Python frame, e.g. the autograd engine's):", ""]
    for name, build in builds.items():
        model = build().cuda()
        try:
            step = train_step_fn(model, batch, vit_loss, False)
            step()  # the optimizer state exists before the measured step, as in the length rows
            measured, replayed, top = peak_tensors(step, top=8, keep=("lion", "timm", "image_classification"),
                                                   group=True)
            lines.append(f"- **{name}** {measured:.0f} (replayed {replayed:.0f}): "
                         + "; ".join(f"{mib:.0f} {where}" for mib, where in top))
        finally:
            del model
            gc.collect()
            torch.cuda.empty_cache()
    return "\n".join(lines)


def profile_mlm(variant: str, dropout: float, args, L: int | None = None) -> str:
    """profile_pair for softmax BERT-base against a LION MLM variant, both with attention dropout ``dropout``; at
    ``L`` tokens as in the length rows (HF BertForMaskedLM on SDPA, the row's batch), else the 128-token rows."""
    if L is None:
        build, batch, loss = mlm_setup(args)
        builds = {"BERT": lambda: build("attention", dropout),
                  f"LION-{variant}": lambda: build(MLM_ARCHS[variant], dropout)}
        return profile_pair(f"Kernel time of one BERT-base MLM training step by category, batch {args.mlm_batch}×128, "
                            f"attention dropout {dropout}", builds, batch, loss, args)
    B = length_batch(args.mlm_batch, L, 128)
    hf_bert, lion_bert, loss = mlm_length_setup(args, L)
    builds = {"BERT": hf_bert, f"LION-{variant}": functools.partial(lion_bert, MLM_ARCHS[variant])}
    return profile_pair(f"Kernel time of one BERT-base MLM training step by category, batch {B}×{L}, attention "
                        "dropout 0", builds, mlm_batch(B, L), loss, args)


def host_and_wall_ms(step, reps: int = 5) -> tuple[float, float]:
    """Median host time until ``step()`` returns (the GPU still working) and median wall time to its end. A step
    whose host time is close to its wall time is host-bound: the GPU waits for launches."""
    host, wall = [], []
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        host.append(1e3 * (t1 - t0))
        wall.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(host), statistics.median(wall)


def vit_rows(size: str, args, out: dict) -> dict:
    x = torch.randn(args.batch, 3, 224, 224, device="cuda")
    y = torch.randint(0, 1000, (args.batch,), device="cuda")
    batch = (x, y)

    def create(name, **kwargs):  # a constructor: the model is built when time_models calls it
        return functools.partial(timm.create_model, name, **kwargs)

    vit = f"ViT-{size[0].upper()}"
    models = {"DeiT": (f"{vit} DeiT (SDPA)", create(f"deit_{size}_patch16_224"))}
    for name in args.variants:
        mask_type, order = VARIANTS[name]
        for backend in args.backends:
            key = name if backend == args.backends[0] else f"{name} [{backend}]"
            models[key] = (f"{vit} LION-{key}", create(f"lion_{size}_patch16_224", mask_type=mask_type, order=order,
                                                       backend=backend))
    if args.baselines:
        models["Vim"] = (f"{vit} Vim (Triton scan)", create(f"vim_{size}_patch16_224"))
    time_models(models, batch, vit_loss, args, out)
    return out


def mlm_batch(B: int, L: int) -> tuple:
    """(ids, labels, attention mask) of B random unpadded rows of L tokens, 30 % of them labelled."""
    g = torch.Generator(device="cuda").manual_seed(0)
    ids = torch.randint(1, 30522, (B, L), device="cuda", generator=g)
    labels = torch.where(torch.rand(B, L, device="cuda", generator=g) < 0.3, ids, torch.full_like(ids, -100))
    return ids, labels, torch.ones(B, L, dtype=torch.bool, device="cuda")


def mlm_setup(args):
    """(build(arch, attention dropout), batch, loss_fn) of the MLM rows: BERT-base's default config, random ids,
    30 % of them labelled, no padding (the attention mask is passed all True, as a data loader passes it)."""
    from mlm.src.bert_layers import LionBertConfig, LionBertForMaskedLM
    batch = mlm_batch(args.mlm_batch, 128)

    def loss_fn(model, b):
        return model(input_ids=b[0], attention_mask=b[2], labels=b[1]).loss

    def build(arch, p):  # default config, attention dropout set explicitly
        extra = dict(num_hidden_layers=23) if arch == "hydra" else {}  # Hydra-base: BERT-base's size, no MLPs
        cfg = LionBertConfig(arch_type=arch, layer_norm_after=(arch == "lion-lit"), attention_probs_dropout_prob=p,
                             **extra)
        return LionBertForMaskedLM(cfg)
    return build, batch, loss_fn


def mlm_rows(args, out: dict) -> dict | None:
    try:
        build, batch, loss_fn = mlm_setup(args)
    except Exception as e:  # the MLM model lives in another work package
        print(f"MLM skipped: mlm.src.bert_layers does not import ({e!r})")
        return None
    for p in args.mlm_dropout:
        models = {"BERT": (f"BERT-base softmax (SDPA), attention dropout {p}",
                           functools.partial(build, "attention", p))}
        for name, arch in {**MLM_ARCHS, **({"Hydra": "hydra"} if args.baselines else {})}.items():
            models[name] = (f"BERT-base {arch}, dropout {p}", functools.partial(build, arch, p))
        time_models(models, batch, loss_fn, args, out.setdefault(f"p={p}", {}))
    return out


# The chunk-training targets (step time ÷ the softmax model's, same run), by length: ViT-S at 896 / 1792 px, BERT-base
# MLM at 2k / 8k tokens.
LENGTH_TARGETS = {"vit": {896: {"Lit": 0.45, "D": 0.50, "S": 0.60, "D♮": 0.60, "S♮": 0.70},
                          1792: {"Lit": 0.22, "D": 0.25, "S": 0.30, "D♮": 0.30, "S♮": 0.35}},
                  "mlm": {2048: {"Lit": 0.70, "D": 0.75, "S": 0.85}, 8192: {"Lit": 0.35, "D": 0.40, "S": 0.45}}}
MASK_KINDS = {"Lit": "Lit", "D": "Decay", "S": "Selective", "D♮": "Decay", "S♮": "Selective"}
MLM_MASK_KINDS = {**MASK_KINDS, "Lit": "Lit-unnormalised"}  # the BERTs' attention is unnormalised


def length_batch(batch: int, length: int, base_length: int) -> int:
    """The batch of a length row: as many tokens per step as ``batch`` rows of ``base_length`` (at least one row)."""
    return max(1, batch * base_length // length)


def form_that_runs(form: str, kind: str, length: int) -> str:
    """The form a LION model given ``form`` ('' = its default, 'auto') trains in at ``length`` tokens."""
    from lion.form_choice import form_for
    form = lion.canonical_form(form or "auto")
    return form_for(kind, length) if form == "auto" else form


def vit_length_setup(args, size: str, px: int):
    """(tokens, batch size, (images, labels), DeiT builder, LION builder by variant) of a ViT length row at ``px``:
    timm's models at that img_size, LION with --form (default: the model's default)."""
    L = (px // 16) ** 2 + 1
    B = length_batch(args.batch, L, 197)
    batch = (torch.randn(B, 3, px, px, device="cuda"), torch.randint(0, 1000, (B,), device="cuda"))
    form = {"format": published_form(args.form, "vision")} if args.form else {}

    def deit():
        return timm.create_model(f"deit_{size}_patch16_224", img_size=px)

    def lion_vit(variant):
        mask_type, order = VARIANTS[variant]
        return timm.create_model(f"lion_{size}_patch16_224", img_size=px, mask_type=mask_type, order=order, **form)
    return L, B, batch, deit, lion_vit


def vit_length_rows(args, out: dict) -> dict:
    """ViT rows at --resolutions: DeiT (timm, SDPA) and the LION variants (``vit_length_setup``), the same tokens per
    step at every size; time and peak memory."""
    size = args.sizes[0]
    vit = f"ViT-{size[0].upper()}"
    for px in args.resolutions:
        L, B, batch, deit, lion_vit = vit_length_setup(args, size, px)
        models = {"DeiT": (f"{vit} {px} px DeiT (SDPA)", deit)}
        for name in args.variants:
            models[name] = (f"{vit} {px} px LION-{name}", functools.partial(lion_vit, name))
        row = out.setdefault(px, {"tokens": L, "batch": B, "ms": {}, "mem": {}})
        row["form"] = {n: form_that_runs(args.form, MASK_KINDS[n], L) for n in args.variants}
        print(f"{vit} {px} px: {L} tokens, batch {B}, LION forms {row['form']}", flush=True)
        time_models(models, batch, vit_loss, args, row["ms"], row["mem"])
        del batch
        torch._dynamo.reset()
    return out


def mlm_length_setup(args, L: int):
    """(HF softmax BERT builder, LION BERT builder by arch, loss_fn) of an MLM length row at L tokens."""
    from transformers import BertConfig, BertForMaskedLM

    from mlm.src.bert_layers import LionBertConfig, LionBertForMaskedLM

    def loss_fn(model, b):  # each model as its trainer runs it: LION's head on the masked tokens (mlm/src/mlm_model.py)
        if isinstance(model, BertForMaskedLM):
            return model(input_ids=b[0], labels=b[1]).loss
        return model(input_ids=b[0], labels=b[1], attention_mask=b[2], masked_logits_only=True).loss

    def hf_bert():
        cfg = BertConfig(max_position_embeddings=L, attention_probs_dropout_prob=0.0)
        cfg._attn_implementation = "sdpa"
        return BertForMaskedLM(cfg)

    def lion_bert(arch):
        form = {"form": published_form(args.form, "mlm")} if args.form else {}
        return LionBertForMaskedLM(LionBertConfig(arch_type=arch, layer_norm_after=(arch == "lion-lit"),
                                                  attention_probs_dropout_prob=0.0, max_position_embeddings=L,
                                                  **form))
    return hf_bert, lion_bert, loss_fn


def mlm_length_rows(args, out: dict) -> dict:
    """BERT-base MLM rows at --mlm-lengths: HF BertForMaskedLM (SDPA flash: unpadded rows, no attention mask) and
    the LION BERTs (form --form or the config's default), attention dropout 0 for all, as the long-context yamls;
    each as its trainer runs it (HF's head over every token, LION's over the masked ones); the same tokens per step
    at every length; time and peak memory."""
    for L in args.mlm_lengths:
        B = length_batch(args.mlm_batch, L, 128)
        batch = mlm_batch(B, L)
        hf_bert, lion_bert, loss_fn = mlm_length_setup(args, L)
        models = {"BERT": (f"BERT-base {L} tokens, HF BertForMaskedLM (SDPA)", hf_bert)}
        for name, arch in MLM_ARCHS.items():
            models[name] = (f"BERT-base {L} tokens, {arch}", functools.partial(lion_bert, arch))
        row = out.setdefault(L, {"tokens": L, "batch": B, "ms": {}, "mem": {}})
        row["form"] = {n: form_that_runs(args.form, MLM_MASK_KINDS[n], L) for n in MLM_ARCHS}
        print(f"BERT-base MLM {L} tokens: batch {B}, LION forms {row['form']}", flush=True)
        time_models(models, batch, loss_fn, args, row["ms"], row["mem"])
        torch._dynamo.reset()
    return out


def length_table(rows: dict, base: str, unit: str, targets: dict) -> str:
    """Step time ÷ the softmax model's (with its verdict where a target is set) and peak memory ÷ the softmax
    model's, per length; last line: each model's peak memory per token from the shortest length to the longest
    (linear memory: about constant). Memory not measured (CUDA graphs): '–'."""
    if not rows:
        return ""
    names = [n for n in next(iter(rows.values()))["ms"] if n != base]
    lines = [f"| {unit} (tokens, batch) | {base} ms · GiB | " + " | ".join(names) + " |",
             "|---|---|" + "---|" * len(names)]
    for key, r in rows.items():
        ms, mem = r["ms"], r["mem"]
        if base not in ms:
            continue
        cells = []
        for n in names:
            if n not in ms:
                cells.append("–")
                continue
            t = targets.get(key, {}).get(n)
            ratio = verdict(ms[n] / ms[base], t) if t else f"{ms[n] / ms[base]:.2f}"
            memory = f"{mem[n] / mem[base]:.2f}" if n in mem and base in mem else "–"
            cells.append(f"{ratio} · {memory} · {r['form'][n]}")
        base_mem = f"{mem[base]:.2f}" if base in mem else "–"
        lines.append(f"| {key} ({r['tokens']}, {r['batch']}) | {ms[base]:.1f} · {base_mem} | "
                     + " | ".join(cells) + " |")
    for key, t in targets.items():
        if key in rows:
            lines.append(f"| target at {key} | | " + " | ".join(f"≤ {t[n]:.2f}" if n in t else "" for n in names)
                         + " |")
    first, last = next(iter(rows.values())), list(rows.values())[-1]
    per_token = [f"{n} {2**20 * first['mem'][n] / (first['tokens'] * first['batch']):.0f} → "
                 f"{2**20 * last['mem'][n] / (last['tokens'] * last['batch']):.0f}"
                 for n in [base] + names if n in first["mem"] and n in last["mem"]]
    lines += ["", "Peak KiB per token, shortest → longest (linear: about constant): " + ", ".join(per_token)
              if per_token else "Peak memory not measured: CUDA graphs allocate their memory pool at capture."]
    return "\n".join(lines)


def matmul_tflops() -> float:
    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    ms = time_steps(lambda: a @ b, 3, 20)
    return 2 * 8192 ** 3 / ms / 1e9


def op_rows(L: int, B=128, H=12, D=64) -> dict:
    """fwd and fwd+bwd of the attention op alone as the models call it (q, k, v strided views of one qkv tensor,
    raw: LION applies φ in-kernel; LION-D's gates per head, LION-S's per token), bf16. TFLOP/s counted as for
    FlashAttention: forward 4·B·H·L²·D, fwd+bwd 3.5×."""
    from lion.ops.triton.naive import fused_attention
    dev, dt = "cuda", torch.bfloat16
    qkv = torch.randn(B, L, 3, H, D, device=dev, dtype=dt).permute(2, 0, 3, 1, 4)
    q, k, v = (t.detach().requires_grad_() for t in qkv.unbind(0))
    a = torch.randn(H, device=dev, requires_grad=True)
    z = torch.randn(B, L, H, device=dev, requires_grad=True)
    perms = [torch.randperm(L, device=dev) for _ in range(2)]
    flops_fwd = 4 * B * H * L * L * D
    lion_kw = dict(scale=D ** -0.5)
    fns = {"SDPA": (lambda: F.scaled_dot_product_attention(q, k, v), (q, k, v)),
           "LION-Lit (KᵀV)": (lambda: fused_attention(q, k, v, None, feature_map="elu_plus_one", **lion_kw), (q, k, v)),
           "LION-Lit (L² kernel)": (lambda: fused_attention(q, k, v, None, feature_map="elu_plus_one", lit_kv=False,
                                                              **lion_kw), (q, k, v)),
           "LION-D": (lambda: fused_attention(q, k, v, g_gamma=lion.decay_log_gates(a), feature_map="normalized_silu",
                                              **lion_kw), (q, k, v, a)),
           "LION-S": (lambda: fused_attention(q, k, v, lion.selective_log_gates(z), feature_map="normalized_silu",
                                              **lion_kw), (q, k, v, z)),
           "LION-D♮": (lambda: fused_attention(q, k, v, g_gamma=[lion.decay_log_gates(a) for p in perms], perms=perms,
                                               feature_map="normalized_silu", **lion_kw), (q, k, v, a)),
           "LION-S♮": (lambda: fused_attention(q, k, v, [lion.selective_log_gates(z[:, p]) for p in perms], perms=perms,
                                               feature_map="normalized_silu", **lion_kw), (q, k, v, z))}
    rows = {}
    grad = torch.randn(B, H, L, D, device=dev, dtype=dt)
    for name, (fn, leaves) in fns.items():
        try:
            fwd = time_steps(lambda: fn(), 5, 30)
            fb = time_steps(lambda: torch.autograd.grad(fn(), leaves, grad), 5, 30)
            kernels = sum(kernel_time_by_category(lambda: torch.autograd.grad(fn(), leaves, grad), 1)[0].values())
        except Exception:
            traceback.print_exc()
            continue
        rows[name] = dict(fwd_ms=fwd, fwd_bwd_ms=fb, fwd_bwd_kernel_ms=kernels, fwd_tflops=flops_fwd / fwd / 1e9,
                          fwd_bwd_tflops=3.5 * flops_fwd / fb / 1e9)
    return rows


def verdict(ratio: float, target: float) -> str:
    """A ratio cell with its verdict against the target, as measured."""
    return f"{ratio:.2f} {'met' if ratio <= target else 'NOT met'}"


def vit_table(results: dict) -> str:
    names = [n for n in VARIANTS if any(n in r for r in results.get("vit", {}).values())]
    vit = [(size, ms) for size, ms in results.get("vit", {}).items() if "DeiT" in ms]
    if not (vit and names):  # no ViT table without ViT rows (--no-vit)
        return ""
    lines = ["| train step / softmax baseline | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for size, ms in vit:
        cells = [verdict(ms[n] / ms["DeiT"], TARGETS[n]) if n in ms else "–" for n in names]
        lines.append(f"| ViT-{size[0].upper()} (DeiT {ms['DeiT']:.1f} ms) | " + " | ".join(cells) + " |")
    lines.append("| target | " + " | ".join(f"≤ {TARGETS[n]:.2f}" for n in names) + " |")
    extra = [(size, k) for size, ms in vit for k in ms if "[" in k]
    if extra:
        lines += ["", "Other backends (ms, ratio to DeiT): " + ", ".join(
            f"ViT-{s[0].upper()} {k} {ms[k]:.1f} ({ms[k] / ms['DeiT']:.2f})"
            for s, k in extra for ms in [results["vit"][s]])]
    return "\n".join(lines)


def mlm_table(results: dict) -> str:
    rows = [(p, ms) for p, ms in (results.get("mlm") or {}).items() if "BERT" in ms]
    if not rows:
        return ""
    lines = ["| MLM train step / softmax BERT | Lit | D | S |", "|---|---|---|---|"]
    lines += [f"| BERT-base seq 128, attention dropout {p[2:]} (BERT {ms['BERT']:.1f} ms) | "
              + " | ".join(verdict(ms[n] / ms["BERT"], MLM_TARGETS[n]) if n in ms else "–" for n in MLM_ARCHS) + " |"
              for p, ms in rows]
    lines.append("| target | " + " | ".join(f"≤ {MLM_TARGETS[n]:.2f}" for n in MLM_ARCHS) + " |")
    return "\n".join(lines)


def baselines_line(results: dict, parts=("vit", "mlm")) -> str:
    """The paper's other baselines measured (--baselines): Vim against DeiT (part vit), Hydra against BERT (mlm)."""
    base = [f"ViT-{size[0].upper()} Vim {ms['Vim']:.1f} ms ({ms['Vim'] / ms['DeiT']:.2f}× DeiT)"
            for size, ms in results.get("vit", {}).items() if "vit" in parts and "Vim" in ms and "DeiT" in ms]
    base += [f"BERT-base Hydra (23 layers), attention dropout {p[2:]}: {ms['Hydra']:.1f} ms "
             f"({ms['Hydra'] / ms['BERT']:.2f}× BERT)" for p, ms in (results.get("mlm") or {}).items()
             if "mlm" in parts and "Hydra" in ms and "BERT" in ms]
    return "Baselines (paper: Vim ×10.86 DeiT, Hydra ×3.13 BERT): " + "; ".join(base) if base else ""


def ratio_table(results: dict) -> str:
    """The ViT and MLM tables and the baselines line, as printed."""
    return "\n\n".join(s for s in (vit_table(results), mlm_table(results), baselines_line(results)) if s)


def result_blocks(results: dict, args, command: str) -> dict:
    """RESULTS.md blocks of this run, by marker name: one per part measured (ViT rows, MLM rows per mode, the
    op alone), each replaced by the next run that measures that part."""
    mode = f"compiled-{args.compile_mode}" if args.compile else "eager"
    head = run_header(command, results["gpu"], results["torch"], results.get("triton", "?"))
    setup = (f"bf16 autocast, fused AdamW, {mode}, LION backend {args.backends[0]}; median of {args.steps} steps "
             f"after {args.warmup} warm-up, models timed " + ("one at a time" if args.sequential else "interleaved"))
    vit = "\n\n".join(s for s in (vit_table(results), baselines_line(results, ("vit",))) if s)
    mlm = "\n\n".join(s for s in (mlm_table(results), baselines_line(results, ("mlm",))) if s)
    parts = {f"train_step:vit-{mode}": (f"ViT, {mode}", vit and f"batch {args.batch}, {setup}\n\n{vit}"),
             f"train_step:mlm-{mode}": (f"MLM, {mode}", mlm and f"batch {args.mlm_batch}×128 tokens, {setup}\n\n{mlm}"),
             "train_step:op": ("Attention op alone", op_table(results))}
    return {name: f"**{title}** · {head}\n\n{body}" for name, (title, body) in parts.items() if body}


def op_table(results: dict) -> str:
    """The op alone: GPU kernel time against SDPA's (what the targets judge) and the call's time with the host's."""
    ops = results.get("op")
    if not ops:
        return ""
    mm = results.get("matmul_tflops", float("nan"))
    lines = ["B=128 H=12 d=64 bf16, q/k/v strided views of one qkv tensor; kernel ms: the call's CUDA kernel time "
             "(torch.profiler), the target's measure; host-included ms: CUDA events around one call (bf16 matmul "
             f"8192³: {mm:.0f} TFLOP/s)", "",
             "| L | op | fwd+bwd kernel ms | kernels / SDPA's | target | fwd+bwd ms, host included |",
             "|---|---|---|---|---|---|"]
    for L, rows in ops.items():
        sdpa_k = rows.get("SDPA", {}).get("fwd_bwd_kernel_ms", float("nan"))
        for name, r in rows.items():
            k = r.get("fwd_bwd_kernel_ms", float("nan"))
            target = OP_TARGETS.get(name.split(" ")[0])
            cell = f"≤ {target:.2f} {'met' if k / sdpa_k <= target else 'NOT met'}" if target else ""
            lines.append(f"| {L} | {name} | {k:.3f} | {k / sdpa_k:.2f} | {cell} | {r['fwd_bwd_ms']:.3f} |")
    return "\n".join(lines)


def length_main(args, results: dict) -> None:
    """The length rows (--resolutions, --mlm-lengths): their tables, each replacing its RESULTS.md block."""
    signal.signal(signal.SIGTERM, _interrupt)
    results["vit_lengths"], results["mlm_lengths"] = {}, {}
    try:
        vit_length_rows(args, results["vit_lengths"])
        mlm_length_rows(args, results["mlm_lengths"])
    except KeyboardInterrupt:
        print("interrupted: reporting what was measured", flush=True)
    command = "python benchmarks/train_step.py " + " ".join(sys.argv[1:])
    head = run_header(command, results["gpu"], results["torch"], results.get("triton", "?"))
    # printed, not written into the blocks: RESULTS.md states the setup once, in the section's text
    mode = f"compiled ({args.compile_mode})" if args.compile else "eager"
    print(f"bf16 autocast, fp32 weights, fused AdamW, {mode}; median of {args.steps} steps after {args.warmup} "
          "warm-up, interleaved; memory: a step's peak beyond weights, grads and optimizer state. LION cells: "
          "time ÷ softmax (verdict) · memory ÷ softmax · form", flush=True)
    size = f"ViT-{args.sizes[0][0].upper()}"
    suffix, title_mode = ("-compiled", ", compiled") if args.compile else ("", "")  # compiled rows: their own blocks
    tables = {f"train_step:vit-lengths{suffix}": (f"{size} by image size{title_mode}", length_table(
                  results["vit_lengths"], "DeiT", "px", LENGTH_TARGETS["vit"] if size == "ViT-S" else {})),
              f"train_step:mlm-lengths{suffix}": (f"BERT-base MLM by sequence length{title_mode}", length_table(
                  results["mlm_lengths"], "BERT", "tokens", LENGTH_TARGETS["mlm"]))}
    for name, (title, body) in tables.items():
        if body:
            block = f"**{title}** · {head}\n\n{body}"
            print(block + "\n", flush=True)
            if args.results:
                replace_block(args.results, name, block)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["small", "base"], choices=["small", "base"])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--backends", nargs="+", default=["auto"], choices=list(lion.BACKENDS),
                    help="LION backends to time; the first fills the ratio table, the others are listed after it")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--mlm-batch", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile every transformer block (regional compilation; baselines too)")
    ap.add_argument("--compile-mode", default="default", choices=["default", "reduce-overhead", "max-autotune"],
                    help="torch.compile mode for --compile ('reduce-overhead': each block as a CUDA graph)")
    ap.add_argument("--sequential", action="store_true",
                    help="time one model at a time (build, warm up, time, free) instead of interleaved: lower peak "
                         "memory. The default, interleaved, builds the models of a row together and times one step "
                         "of each per round, the order rotated each round: the host's speed drifts over minutes and "
                         "the eager step is host-bound, so each ratio is measured round by round, side by side")
    ap.add_argument("--baselines", action="store_true", help="also time Vim (ViT rows) and Hydra-base (MLM rows)")
    ap.add_argument("--no-mlm", action="store_true")
    ap.add_argument("--no-vit", action="store_true")
    ap.add_argument("--mlm-dropout", type=float, nargs="+", default=[0.1, 0.0],
                    help="attention dropout of the MLM rows (baseline and LION alike)")
    ap.add_argument("--resolutions", type=int, nargs="+", default=[], metavar="PX",
                    help="length rows instead: ViT (first of --sizes) at these image sizes, e.g. 224 448 896 1792, "
                         "the tokens of --batch 224-px images per step, with peak memory")
    ap.add_argument("--mlm-lengths", type=int, nargs="+", default=[], metavar="L",
                    help="length rows instead: BERT-base MLM at these sequence lengths, e.g. 512 2048 8192, against "
                         "HF BertForMaskedLM (SDPA), the tokens of --mlm-batch 128-token rows per step")
    ap.add_argument("--form", default="", help="the LION models' form in the length rows (default: the models' "
                    "default, 'auto')")
    ap.add_argument("--op-lengths", type=int, nargs="+", default=[197, 128])
    ap.add_argument("--no-op", action="store_true", help="skip the op-level timing")
    ap.add_argument("--profile", nargs="+", default=[], choices=list(VARIANTS), metavar="VARIANT",
                    help="only print where the kernel time of one step goes, DeiT vs these ViT variants "
                         "(first --sizes, at 224 px or each --resolutions; with --compile, compiled)")
    ap.add_argument("--profile-mlm", nargs="+", default=[], choices=list(MLM_ARCHS), metavar="VARIANT",
                    help="only print where the kernel time of one MLM step goes, softmax BERT vs these LION "
                         "variants, for each --mlm-dropout (with --mlm-lengths: at each of them, dropout 0)")
    ap.add_argument("--peak-tensors", nargs="+", default=[], choices=list(VARIANTS), metavar="VARIANT",
                    help="only print what DeiT and these ViT variants hold at a training step's memory peak (first "
                         "--sizes, at each --resolutions; eager)")
    ap.add_argument("--results", default="benchmarks/RESULTS.md",
                    help="markdown file: this run replaces its blocks of the parts it measured ('' = none)")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")  # models failing while timed
    if not torch.cuda.is_available():
        sys.exit("train_step.py needs a CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = True
    if args.peak_tensors:
        for px in args.resolutions or [224]:
            print(peak_step(args.sizes[0], args.peak_tensors, args, px) + "\n", flush=True)
        return
    if args.profile or args.profile_mlm:
        for px in args.resolutions or [224]:
            for variant in args.profile:
                print(profile_step(args.sizes[0], variant, args, px) + "\n", flush=True)
        for L in args.mlm_lengths or [None]:
            for variant in args.profile_mlm:
                for p in ([0.0] if L else args.mlm_dropout):
                    print(profile_mlm(variant, p, args, L) + "\n", flush=True)
        return
    import triton

    results = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
               "batch": args.batch,
               "dtype": "bf16 autocast", "compile": args.compile, "backends": args.backends,
               "timing": "sequential" if args.sequential else "interleaved"}
    try:
        results["matmul_tflops"] = matmul_tflops()
        print(f"bf16 matmul 8192³: {results['matmul_tflops']:.0f} TFLOP/s", flush=True)
        if not args.no_op:
            results["op"] = {L: op_rows(L) for L in args.op_lengths}
            print(op_table(results), flush=True)
    except Exception:
        traceback.print_exc()
    if args.resolutions or args.mlm_lengths:
        return length_main(args, results)
    results["vit"] = {}
    signal.signal(signal.SIGTERM, _interrupt)  # `timeout` still gets the table of what was measured
    try:
        for size in ([] if args.no_vit else args.sizes):
            vit_rows(size, args, results["vit"].setdefault(size, {}))
            torch._dynamo.reset()  # the next size's blocks share the code: each row gets dynamo's full recompile budget
        if not args.no_mlm:
            results["mlm"] = {}
            if mlm_rows(args, results["mlm"]) is None:
                results["mlm"] = None
    except KeyboardInterrupt:
        print("interrupted: reporting what was measured", flush=True)
    command = "python benchmarks/train_step.py " + " ".join(sys.argv[1:])
    blocks = result_blocks(results, args, command)
    if results.get("mlm") is None and not args.no_mlm:
        print("MLM: not measured (interrupted before the MLM rows, or mlm.src.bert_layers did not import).")
    print("\n\n".join(blocks.values()), flush=True)
    if args.results:
        for name, body in blocks.items():
            replace_block(args.results, name, body)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
