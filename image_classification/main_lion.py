"""Train, evaluate, fine-tune and distil LION vision transformers with DeiT's recipe (docs/lion.md §1, §4).

    python image_classification/main_lion.py                                  # embedded Fashion-MNIST subset
    python image_classification/main_lion.py --model lion_base_patch16_224 --data-set IMNET --data-path /imagenet \
        --mask_type Decay --order S --batch-size 256 --output_dir out/lion_d_nat
    torchrun --nproc_per_node=8 image_classification/main_lion.py ...       # or torch.distributed.launch --use_env
    python image_classification/main_lion.py --eval --resume out/checkpoint.pth --format RNN

``--model-kwargs key=value ...`` goes to ``timm.create_model`` (e.g. ``patch_size=4 depth=4 embed_dim=96``).

Faults: bad input (flags, data folders, checkpoints that are corrupt, of another kind or another model size) stops
the run before any work with one ``main_lion.py: error: ...`` line and exit status 1. Checkpoint files and URLs
are read without running code (``torch.load(weights_only=True)``; ``--trust-checkpoint`` opts in to full
unpickling). Every epoch writes its log record, then ``best_checkpoint.pth``, then ``checkpoint.pth``, each
atomically, so a crash loses at most the epoch in progress: ``--resume checkpoint.pth`` redoes it exactly.
A NaN/inf loss stops the run naming the epoch and step (``--skip-nonfinite``: skip and count such steps).
``--dist-timeout`` bounds the rendezvous and every collective, so a failed or hung process ends the others; a failing
rank of a multi-process run ends with one line naming the rank and the cause.
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import json
import logging
import math
import os
import re
import sys
import time
import traceback
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import timm
import torch
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer
from timm.scheduler import create_scheduler
from timm.utils import ModelEmaV3

import image_classification.models_lion  # noqa: F401  (registers the lion_* models with timm)
import image_classification.models_vim  # noqa: F401  (registers the vim_* baselines with timm)
from image_classification import checkpoint as checkpoint_io
from image_classification import utils
from image_classification.datasets import DATA_SETS, DataError, build_dataset, check_same_classes, default_data_path
from image_classification.engine import CUDA_GRAPH_MODES, LossScaler, NonFiniteLossError, evaluate, train_one_epoch
from image_classification.image_files import BAD_IMAGE_POLICIES, UnreadableImage, one_line
from image_classification.losses import DISTILLATION_TYPES, DistillationLoss
from image_classification.models_lion import FAMILY, FORMATS, ORDERS, resample_pos_embed
from image_classification.samplers import RASampler
from lion import variants
from lion.multi_gpu import (
    disable_nvlink_multicast,
    is_communication_error,
    lost_contact_message,
    rank_failed_message,
)

disable_nvlink_multicast()  # before any process group: NCCL reads NCCL_NVLS_ENABLE when it builds a communicator

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

_logger = logging.getLogger("main_lion")


class Stop(SystemExit):
    """A one-line stop of the script: Python prints the message (no traceback) and exits with status 1."""

    def __init__(self, message):
        super().__init__(f"main_lion.py: error: {message}")


class ArgumentError(Stop):
    """Bad command-line input, raised before any training; the message names the flag and the allowed values."""


class TrainingStopped(Stop):
    """Training stopped on purpose: a non-finite loss (the message names the epoch and step) or a lost process;
    not an argument error."""


def get_args_parser():
    p = argparse.ArgumentParser("LION training and evaluation script (DeiT recipe)", add_help=False)
    p.add_argument("--batch-size", default=64, type=int, help="per-process batch size")
    p.add_argument("--epochs", default=300, type=int)
    p.add_argument("--bce-loss", action="store_true")
    p.add_argument("--unscale-lr", action="store_true", help="use --lr as is (default: lr × global batch / 512)")

    # model
    p.add_argument("--model", default="lion_base_patch16_224", type=str, help="timm model name")
    p.add_argument("--model-kwargs", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra timm.create_model keyword arguments, e.g. patch_size=4 depth=4 embed_dim=96")
    p.add_argument("--input-size", default=224, type=int, help="image size")
    p.add_argument("--drop", type=float, default=0.0, help="dropout rate")
    p.add_argument("--drop-path", type=float, default=0.1, help="stochastic depth rate")
    p.add_argument("--model-ema", action="store_true")
    p.add_argument("--no-model-ema", action="store_false", dest="model_ema")
    p.set_defaults(model_ema=True)
    p.add_argument("--model-ema-decay", type=float, default=0.99996)
    p.add_argument("--model-ema-force-cpu", action="store_true")
    p.add_argument("--compile", action="store_true",
                   help="regional torch.compile: compile each transformer block in place (model.blocks[i].compile();"
                        " quick to compile, checkpoints keep their keys); the first steps are slower")
    p.add_argument("--compile-backend", default="inductor",
                   help="torch.compile backend for --compile (e.g. inductor, aot_eager, eager)")
    p.add_argument("--compile-mode", default="default", choices=COMPILE_MODES,
                   help="torch.compile mode for --compile (inductor only); 'reduce-overhead' replays each block as a "
                        "CUDA graph, which removes the host's per-kernel launch cost (the fastest LION training on "
                        "a GPU, benchmarks/RESULTS.md)")

    # LION (docs/lion.md §1)
    p.add_argument("--mask_type", default="Decay", choices=variants.names(FAMILY))
    p.add_argument("--order", default="Normal", choices=ORDERS, help="'S': the ♮ variant (two snake orders)")
    p.add_argument("--format", default="Auto", choices=FORMATS,
                   help="attention form used for training/eval; Auto: the faster of Attention and Chunk for the "
                        "token count (lion/form_crossover.json), Attention under attention dropout")
    p.add_argument("--chunk_size", default=None, type=int,
                   help="chunk of the Chunk format; default: automatic (the fused kernel's choice, 32 in torch)")
    p.add_argument("--pos_emb", action="store_true", help="learnable absolute position embedding")
    p.add_argument("--cls_tok", action="store_true", help="classify from the cls token (default: mean of tokens)")

    # optimizer and schedule (timm)
    p.add_argument("--opt", default="adamw", type=str)
    p.add_argument("--opt-eps", default=1e-8, type=float)
    p.add_argument("--opt-betas", default=None, type=float, nargs="+")
    p.add_argument("--clip-grad", type=float, default=None, help="gradient norm clipping (default: none)")
    p.add_argument("--skip-nonfinite", action="store_true",
                   help="skip (log and count) steps whose loss is NaN/inf; default: stop the run at such a step")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--sched", default="cosine", type=str)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--lr-noise", type=float, nargs="+", default=None)
    p.add_argument("--lr-noise-pct", type=float, default=0.67)
    p.add_argument("--lr-noise-std", type=float, default=1.0)
    p.add_argument("--warmup-lr", type=float, default=1e-6)
    p.add_argument("--min-lr", type=float, default=1e-5)
    p.add_argument("--decay-epochs", type=float, default=30)
    p.add_argument("--warmup-epochs", type=int, default=5)
    p.add_argument("--cooldown-epochs", type=int, default=10)
    p.add_argument("--patience-epochs", type=int, default=10)
    p.add_argument("--decay-rate", "--dr", type=float, default=0.1)

    # augmentation
    p.add_argument("--no-aug", action="store_true", help="no augmentation: train on the evaluation transform")
    p.add_argument("--color-jitter", type=float, default=0.3)
    p.add_argument("--aa", type=str, default="rand-m9-mstd0.5-inc1", help="AutoAugment policy ('none' to disable)")
    p.add_argument("--smoothing", type=float, default=0.1)
    p.add_argument("--train-interpolation", type=str, default="bicubic")
    p.add_argument("--repeated-aug", action="store_true")
    p.add_argument("--no-repeated-aug", action="store_false", dest="repeated_aug")
    p.set_defaults(repeated_aug=True)
    p.add_argument("--train-mode", action="store_true")
    p.add_argument("--no-train-mode", action="store_false", dest="train_mode")
    p.set_defaults(train_mode=True)
    p.add_argument("--ThreeAugment", action="store_true")
    p.add_argument("--src", action="store_true", help="simple random crop (with --ThreeAugment)")
    p.add_argument("--reprob", type=float, default=0.25, help="random erase probability")
    p.add_argument("--remode", type=str, default="pixel")
    p.add_argument("--recount", type=int, default=1)
    p.add_argument("--mixup", type=float, default=0.8)
    p.add_argument("--cutmix", type=float, default=1.0)
    p.add_argument("--cutmix-minmax", type=float, nargs="+", default=None)
    p.add_argument("--mixup-prob", type=float, default=1.0)
    p.add_argument("--mixup-switch-prob", type=float, default=0.5)
    p.add_argument("--mixup-mode", type=str, default="batch", choices=("batch", "pair", "elem"))

    # distillation
    p.add_argument("--teacher-model", default="regnety_160", type=str)
    p.add_argument("--teacher-path", type=str, default="", help="teacher checkpoint (file or https URL)")
    p.add_argument("--distillation-type", default="none", choices=DISTILLATION_TYPES)
    p.add_argument("--distillation-alpha", default=0.5, type=float)
    p.add_argument("--distillation-tau", default=1.0, type=float)

    # fine-tuning
    p.add_argument("--finetune", default="", help="start from this checkpoint (head and pos-embed adapted)")
    p.add_argument("--attn-only", action="store_true", help="train only the attention (plus head, pos-embed)")

    # data, run
    p.add_argument("--data-path", default=None, type=str, help="data root (default depends on --data-set)")
    p.add_argument("--data-set", default="FMNIST_MINI", choices=DATA_SETS)
    p.add_argument("--inat-category", default="name",
                   choices=("kingdom", "phylum", "class", "order", "supercategory", "family", "genus", "name"))
    p.add_argument("--download", action="store_true", help="CIFAR: download into --data-path if missing")
    p.add_argument("--bad-images", default="stop", choices=BAD_IMAGE_POLICIES,
                   help="an image file that cannot be decoded: stop the run naming it (default), or skip it (the "
                        "next readable image takes its place; the count is logged and in log.txt)")
    p.add_argument("--output_dir", default="", help="where checkpoints and log.txt go (empty: nothing saved)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", default=0, type=int)
    p.add_argument("--resume", default="", help="resume from this checkpoint (with --eval: evaluate it)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="unpickle --resume/--finetune/--teacher-path files fully, which can run code stored in "
                        "them; default: tensors, containers and argparse.Namespace only")
    p.add_argument("--start_epoch", default=0, type=int, metavar="N")
    p.add_argument("--eval", action="store_true", help="evaluation only")
    p.add_argument("--eval-crop-ratio", default=0.875, type=float)
    p.add_argument("--dist-eval", action="store_true", help="shard the validation set over the processes")
    p.add_argument("--num_workers", default=min(10, os.cpu_count() or 1), type=int)
    p.add_argument("--pin-mem", action="store_true")
    p.add_argument("--no-pin-mem", action="store_false", dest="pin_mem")
    p.set_defaults(pin_mem=True)
    p.add_argument("--print-freq", default=10, type=int, help="progress line every N steps")

    # distributed
    p.add_argument("--world_size", default=1, type=int, help="set by the launcher (WORLD_SIZE)")
    p.add_argument("--dist_url", default="env://", help="process-group init method")
    p.add_argument("--dist-timeout", default=1800, type=float, metavar="SECONDS",
                   help="the rendezvous and every collective fail after this long, so a process that died or "
                        "hangs ends the others with a message instead of a hang")
    return p


# ---------------------------------------------------------------------------------------------- checks

def _parse_scalar(text):
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_model_kwargs(items):
    """``["depth=4", "drop_rate=0.1", "qkv_bias=false", "img_size=28,32"]`` →
    ``{"depth": 4, "drop_rate": 0.1, "qkv_bias": False, "img_size": (28, 32)}`` (commas make tuples)."""
    kwargs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ArgumentError(f"--model-kwargs expects KEY=VALUE items, got {item!r}")
        kwargs[key] = tuple(map(_parse_scalar, value.split(","))) if "," in value else _parse_scalar(value)
    return kwargs


SCHEDULES = ("cosine", "tanh", "step", "constant", "multistep", "plateau", "poly", "rsqrt")
# flag: (test, allowed values) for the numeric flags
_NUMBER_RULES = {
    "--batch-size": (lambda v: v >= 1, "≥ 1"), "--input-size": (lambda v: v >= 1, "≥ 1"),
    "--lr": (lambda v: v > 0, "> 0"), "--min-lr": (lambda v: v >= 0, "≥ 0"), "--warmup-lr": (lambda v: v >= 0, "≥ 0"),
    "--weight-decay": (lambda v: v >= 0, "≥ 0"), "--opt-eps": (lambda v: v > 0, "> 0"),
    "--clip-grad": (lambda v: v is None or v > 0, "> 0 (or not given)"),
    "--warmup-epochs": (lambda v: v >= 0, "≥ 0"), "--start_epoch": (lambda v: v >= 0, "≥ 0"),
    "--drop": (lambda v: 0 <= v < 1, "in [0, 1)"), "--drop-path": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "--smoothing": (lambda v: 0 <= v < 1, "in [0, 1)"), "--model-ema-decay": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "--mixup": (lambda v: v >= 0, "≥ 0"), "--cutmix": (lambda v: v >= 0, "≥ 0"),
    "--mixup-prob": (lambda v: 0 <= v <= 1, "in [0, 1]"), "--mixup-switch-prob": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "--reprob": (lambda v: 0 <= v <= 1, "in [0, 1]"), "--color-jitter": (lambda v: v >= 0, "≥ 0"),
    "--eval-crop-ratio": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "--distillation-alpha": (lambda v: 0 <= v <= 1, "in [0, 1]"), "--distillation-tau": (lambda v: v > 0, "> 0"),
    "--num_workers": (lambda v: v >= 0, "≥ 0"), "--print-freq": (lambda v: v >= 1, "≥ 1"),
    "--dist-timeout": (lambda v: v > 0, "> 0 seconds"),
}


def _check_numbers(args):
    for flag, (ok, allowed) in _NUMBER_RULES.items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None and (isinstance(value, float) and not math.isfinite(value) or not ok(value)):
            raise ArgumentError(f"{flag} must be {allowed}, got {value}")


def check_args(args):
    """Fail before any data or model work on inputs that cannot run."""
    _check_numbers(args)
    if args.opt.lower().split("_")[-1] not in timm.optim.list_optimizers():
        raise ArgumentError(f"--opt {args.opt!r} is not a timm optimizer; e.g. adamw, sgd, lamb, lion "
                            "(timm.optim.list_optimizers() lists all)")
    if args.sched not in SCHEDULES:
        raise ArgumentError(f"--sched must be one of {', '.join(SCHEDULES)}, got {args.sched!r}")
    if args.compile:
        # imported only when asked (slow); importlib keeps `torch` the module's global in this function (an
        # `import torch._dynamo` here would make `torch` local to all of check_args: UnboundLocalError below)
        backends = importlib.import_module("torch._dynamo").list_backends(exclude_tags=())
        if args.compile_backend not in backends:
            raise ArgumentError(f"--compile-backend {args.compile_backend!r} is not a torch.compile backend; "
                                "e.g. inductor, aot_eager, eager")
        if args.compile_mode != "default" and args.compile_backend != "inductor":
            raise ArgumentError(f"--compile-mode {args.compile_mode!r} needs --compile-backend inductor "
                                f"(got {args.compile_backend!r}); other backends take only --compile-mode default")
    if args.data_path is None:
        args.data_path = default_data_path(args.data_set)
        if args.data_path is None:
            raise ArgumentError(f"--data-path is required for --data-set {args.data_set}")
    if args.data_set != "FMNIST_MINI" and not (args.download and args.data_set.startswith("CIFAR")) \
            and not os.path.isdir(args.data_path):
        hint = " (get the idx files: `apt-get install dataset-fashion-mnist`)" if args.data_set == "FMNIST" else ""
        raise ArgumentError(f"--data-path {args.data_path!r} is not a directory (--data-set {args.data_set}){hint}")
    if not timm.is_model(args.model):
        lion = ", ".join(timm.list_models("lion_*"))
        raise ArgumentError(f"--model {args.model!r} is not a timm model; LION models: {lion}")
    if args.eval and not (args.resume or args.finetune):
        raise ArgumentError("--eval needs the weights to score: add --resume CHECKPOINT (or --finetune CHECKPOINT); "
                            "without one it would evaluate a randomly initialised model")
    if not args.eval and args.epochs < 1:
        raise ArgumentError(f"--epochs must be ≥ 1, got {args.epochs}")
    if args.chunk_size is not None and args.chunk_size < 1:
        raise ArgumentError(f"--chunk_size must be ≥ 1, got {args.chunk_size}")
    for flag, path in (("--resume", args.resume), ("--finetune", args.finetune), ("--teacher-path", args.teacher_path)):
        if path and not path.startswith("https") and not os.path.isfile(path):
            raise ArgumentError(f"{flag} {path!r}: no such checkpoint file")
    if args.distillation_type != "none":
        if args.finetune and not args.eval:
            raise ArgumentError("--finetune together with --distillation-type soft|hard is not supported")
        if not args.teacher_path:
            raise ArgumentError(f"--distillation-type {args.distillation_type} needs --teacher-path")
        if not timm.is_model(args.teacher_model):
            raise ArgumentError(f"--teacher-model {args.teacher_model!r} is not a timm model")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ArgumentError(f"--device {args.device}: CUDA is not available (use --device cpu)")
    args.model_kwargs = parse_model_kwargs(args.model_kwargs) if isinstance(args.model_kwargs, list) \
        else dict(args.model_kwargs)
    check_output_dir(args)
    try:
        with torch.device("meta"):  # the constructor's checks (geometry, names) without memory or data
            create_lion_model(args, nb_classes=2)
    except (NotImplementedError, RuntimeError) as err:  # a model that cannot be built on the meta device:
        _logger.debug("model not pre-built on the meta device (%s); it is checked when built", err)


def check_output_dir(args):
    """--output_dir must be a directory (or not exist yet), and a run may not overwrite the checkpoint of another:
    continuing it takes --resume."""
    if not args.output_dir or args.eval:
        return
    out = Path(args.output_dir)
    if out.exists() and not out.is_dir():
        raise ArgumentError(f"--output_dir {out}: exists and is not a directory; give a directory (it is created if "
                            "missing)")
    latest = out / "checkpoint.pth"
    if latest.exists() and not (args.resume and Path(args.resume).resolve() == latest.resolve()):
        raise ArgumentError(f"--output_dir {out} already holds a run's checkpoint.pth, which this run would "
                            f"overwrite; continue that run with --resume {latest}, or choose another --output_dir")


# ---------------------------------------------------------------------------------------------- building blocks

def load_checkpoint(flag, path, trust=False):
    """A checkpoint file or https URL given on the command line, read without running code unless ``trust``
    (``--trust-checkpoint``); a file that cannot be used stops the run naming ``flag``, the file and why."""
    try:
        return checkpoint_io.load(path, trust)
    except checkpoint_io.CheckpointError as err:
        raise ArgumentError(f"{flag} {path}: {err}") from None


def checked_model_state(flag, path, checkpoint, model, may_miss=()):
    """The checkpoint's model state dict, after checking that it fits ``model`` (keys and shapes)."""
    try:
        state = checkpoint_io.model_state(checkpoint)
        checkpoint_io.check_fits(state, model, checkpoint, may_miss)
    except checkpoint_io.CheckpointError as err:
        raise ArgumentError(f"{flag} {path}: {err}") from None
    return state


def create_lion_model(args, nb_classes):
    kwargs = dict(num_classes=nb_classes, drop_rate=args.drop, drop_path_rate=args.drop_path,
                  img_size=args.input_size)
    if args.model.startswith("lion_"):
        kwargs.update(mask_type=args.mask_type, order=args.order, format=args.format, chunk_size=args.chunk_size,
                      pos_emb=args.pos_emb, cls_tok=args.cls_tok)
    kwargs.update(args.model_kwargs)
    try:
        return timm.create_model(args.model, pretrained=False, **kwargs)
    except (ValueError, TypeError, AssertionError) as e:
        given = " ".join(f"{k}={v}" for k, v in args.model_kwargs.items())
        flags = f"--input-size {args.input_size}" + (f" --model-kwargs {given}" if given else "")
        raise ArgumentError(f"--model {args.model} ({flags}) cannot be built: {e}") from None


_HEADS = ("head.weight", "head.bias", "head_dist.weight", "head_dist.bias")


def _is_lion_gate(key):
    """A gate parameter of any mask type (lion.variants): ``blocks.3.attn.a_i`` (LION-D), ``blocks.3.attn.a2_i.weight``
    (LION-S, ♮ order) ..."""
    names = {name for v in variants.registered() for g in v.gates for name in g.params[FAMILY]}
    match = re.search(r"\.attn\.([^.]+)(\.|$)", key)
    return match is not None and match.group(1) in names


def load_finetune_weights(model, path, checkpoint):
    """Load a checkpoint for fine-tuning: drop a head of another size, resample the position embedding to the
    new patch grid (curve orders are rebuilt from the grid at every forward, so nothing else changes). LION gates
    a (ViT/DeiT) checkpoint lacks keep their initialisation; any other difference stops the run."""
    try:
        state = dict(checkpoint_io.model_state(checkpoint))
    except checkpoint_io.CheckpointError as err:
        raise ArgumentError(f"--finetune {path}: {err}") from None
    own = model.state_dict()
    for key in _HEADS:
        if key in state and key in own and state[key].shape != own[key].shape:
            _logger.info("removing %s from the pretrained checkpoint (shape %s, model %s)", key,
                         tuple(state[key].shape), tuple(own[key].shape))
            del state[key]
    if "pos_embed" in state and "pos_embed" in own and state["pos_embed"].shape != own["pos_embed"].shape:
        old_positions = state["pos_embed"].shape[1]
        try:
            state["pos_embed"] = resample_pos_embed(state["pos_embed"], model.patch_embed.grid_size)
        except ValueError as err:
            raise ArgumentError(f"--finetune {path}: {err}") from None
        _logger.info("position embedding resampled from %d to %d positions", old_positions, own["pos_embed"].shape[1])
    try:
        checkpoint_io.check_fits(state, model, checkpoint, may_miss=(_is_lion_gate, lambda k: k in _HEADS))
    except checkpoint_io.CheckpointError as err:
        raise ArgumentError(f"--finetune {path}: {err}") from None
    result = model.load_state_dict(state, strict=False)
    _logger.info("fine-tuning from %s: %s", path, result)


def freeze_all_but_attention(model):
    """``--attn-only``: train the attention blocks, the head and the position embedding; freeze the rest."""
    for name, param in model.named_parameters():
        param.requires_grad = ".attn." in name or name.startswith(("head.", "pos_embed"))


def build_teacher(args, nb_classes, device, checkpoint):
    teacher = timm.create_model(args.teacher_model, pretrained=False, num_classes=nb_classes)
    teacher.load_state_dict(checked_model_state("--teacher-path", args.teacher_path, checkpoint, teacher))
    return teacher.to(device).eval()


def compile_blocks(model, backend, mode="default"):
    """Regional compilation: each transformer block is compiled in place (``nn.Module.compile``), so one small
    graph is built once for all blocks and the state-dict keys stay those of the eager model."""
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise ArgumentError(f"--compile: model {type(model).__name__} has no .blocks to compile one by one")
    for block in blocks:
        block.compile(backend=backend, **({} if mode == "default" else {"mode": mode}))
    _logger.info("compiled %d blocks in place (backend %s, mode %s)", len(blocks), backend, mode)


def build_loaders(args, dataset_train, dataset_val):
    num_tasks, rank = utils.get_world_size(), utils.get_rank()
    if args.distributed:
        if args.repeated_aug:
            sampler_train = RASampler(dataset_train, num_tasks, rank, shuffle=True, seed=args.seed)
        else:  # drop_last: the same batches of (seed, epoch)'s permutation on any number of processes
            sampler_train = torch.utils.data.DistributedSampler(dataset_train, num_tasks, rank, shuffle=True,
                                                                seed=args.seed, drop_last=True)
        if args.dist_eval:
            if len(dataset_val) % num_tasks:
                _logger.warning("--dist-eval with %d validation images over %d processes: some are counted twice",
                                len(dataset_val), num_tasks)
            sampler_val = torch.utils.data.DistributedSampler(dataset_val, num_tasks, rank, shuffle=False)
        else:
            sampler_val = torch.utils.data.SequentialSampler(dataset_val)
    else:  # the global torch RNG (re-seeded every epoch) draws the permutation
        sampler_train = torch.utils.data.RandomSampler(dataset_train)
        sampler_val = torch.utils.data.SequentialSampler(dataset_val)
    pin = args.pin_mem and str(args.device).startswith("cuda")
    loader_train = torch.utils.data.DataLoader(dataset_train, sampler=sampler_train, batch_size=args.batch_size,
                                               num_workers=args.num_workers, pin_memory=pin, drop_last=True)
    loader_val = torch.utils.data.DataLoader(dataset_val, sampler=sampler_val, batch_size=int(1.5 * args.batch_size),
                                             num_workers=args.num_workers, pin_memory=pin, drop_last=False)
    return sampler_train, loader_train, loader_val


def build_criterion(args, mixup_active, teacher):
    if mixup_active:
        criterion = SoftTargetCrossEntropy()  # smoothing is handled by the mixup targets
    elif args.smoothing > 0:
        criterion = LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    else:
        criterion = torch.nn.CrossEntropyLoss()
    if args.bce_loss:
        criterion = torch.nn.BCEWithLogitsLoss()
    return DistillationLoss(criterion, teacher, args.distillation_type, args.distillation_alpha,
                            args.distillation_tau)


def epoch_seed(args, epoch):
    """A seed for (seed, epoch, rank): every epoch starts from a known RNG state, so resuming is exact."""
    return int(np.random.SeedSequence([args.seed, epoch, utils.get_rank()]).generate_state(1)[0])


# ---------------------------------------------------------------------------------------------- main

def build_datasets(args):
    try:
        dataset_train, nb_classes = build_dataset(is_train=True, args=args)
        dataset_val, _ = build_dataset(is_train=False, args=args)
        check_same_classes(dataset_train, dataset_val)
    except (DataError, FileNotFoundError) as err:
        raise ArgumentError(f"--data-path {args.data_path} (--data-set {args.data_set}): {err}") from None
    return dataset_train, dataset_val, nb_classes


def resume_training_state(args, checkpoint, optimizer, lr_scheduler, model_ema, loss_scaler):
    """Optimizer, schedule, EMA and scaler of a ``--resume`` checkpoint; returns the best accuracy so far."""
    try:
        optimizer.load_state_dict(checkpoint["optimizer"])
        lr_scheduler.load_state_dict(checkpoint["lr_scheduler"])
        if model_ema is not None and checkpoint.get("model_ema") is not None:
            checkpoint_io.check_fits(checkpoint["model_ema"], model_ema.module, checkpoint)
            model_ema.module.load_state_dict(checkpoint["model_ema"])
        if "scaler" in checkpoint:
            loss_scaler.load_state_dict(checkpoint["scaler"])
    except (checkpoint_io.CheckpointError, ValueError, KeyError, TypeError) as err:
        raise ArgumentError(f"--resume {args.resume}: its training state does not fit this run ({err}); "
                            "saved with another --opt or model?") from None
    saved = checkpoint.get("args") or {}
    saved = vars(saved) if isinstance(saved, argparse.Namespace) else saved
    if {"batch_size", "world_size"} <= set(saved):
        before, now = saved["batch_size"] * saved["world_size"], args.batch_size * utils.get_world_size()
        if before != now:
            _logger.warning("--resume %s was written with a global batch of %d (%d process(es) × %d); this run's "
                            "is %d: its epochs have other steps than the run it continues (keep --batch-size × "
                            "processes to continue that run's curve)", args.resume, before, saved["world_size"],
                            saved["batch_size"], now)
    args.start_epoch = checkpoint["epoch"] + 1
    if args.start_epoch >= args.epochs:
        raise ArgumentError(f"--resume {args.resume} has finished epoch {checkpoint['epoch']} of --epochs "
                            f"{args.epochs}: nothing left to train (raise --epochs, or add --eval)")
    return checkpoint.get("max_accuracy", 0.0)


def main(args):
    """Run training or evaluation; returns ``{"model", "test_stats", "max_accuracy"}`` (the unwrapped model)."""
    check_args(args)
    # checkpoint files are read (and refused) before any other work; their fit is checked once the model exists
    resume, finetune, teacher_checkpoint = (
        load_checkpoint(flag, path, args.trust_checkpoint) if path else None
        for flag, path in (("--resume", args.resume), ("--finetune", args.finetune),
                           ("--teacher-path", args.teacher_path if args.distillation_type != "none" else "")))
    utils.init_distributed_mode(args)
    if utils.is_main_process():
        _logger.info("%s", json.dumps({k: v for k, v in vars(args).items()}, default=str))
    device = torch.device(args.device)
    amp_dtype = torch.bfloat16 if device.type == "cuda" else None  # bf16 autocast on CUDA, fp32 on CPU
    utils.seed_everything(args.seed + utils.get_rank())
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    dataset_train, dataset_val, args.nb_classes = build_datasets(args)
    model = create_lion_model(args, args.nb_classes)
    sampler_train, loader_train, loader_val = build_loaders(args, dataset_train, dataset_val)
    if not args.eval and len(loader_train) == 0:
        raise ArgumentError(f"--batch-size {args.batch_size} × {utils.get_world_size()} process(es) exceeds the "
                            f"{len(dataset_train)} training images of --data-path {args.data_path}: no full batch")
    if finetune is not None:
        load_finetune_weights(model, args.finetune, finetune)
        del finetune
    if resume is not None:
        model.load_state_dict(checked_model_state("--resume", args.resume, resume, model))
    if args.attn_only:
        freeze_all_but_attention(model)
    if hasattr(model, "set_format"):  # --format applies to a loaded checkpoint as well
        model.set_format(args.format, args.chunk_size)
    model.to(device)
    model_ema = None
    if args.model_ema:
        model_ema = ModelEmaV3(model, decay=args.model_ema_decay, device="cpu" if args.model_ema_force_cpu else None)
    if args.compile:
        compile_blocks(model, args.compile_backend, args.compile_mode)
    cuda_graphs = args.compile and args.compile_mode in CUDA_GRAPH_MODES  # each step marked as a new iteration
    model_without_ddp = model
    if args.distributed:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[args.gpu] if device.type == "cuda"
                                                          else None)
        model_without_ddp = model.module
    n_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    _logger.info("model %s: %d trainable parameters", args.model, n_parameters)

    if not args.unscale_lr:
        args.lr = args.lr * args.batch_size * utils.get_world_size() / 512.0
    optimizer = create_optimizer(args, model_without_ddp)
    loss_scaler = LossScaler(device.type, enabled=amp_dtype == torch.float16)
    lr_scheduler, _ = create_scheduler(args, optimizer)

    mixup_active = args.mixup > 0 or args.cutmix > 0.0 or args.cutmix_minmax is not None
    mixup_fn = None
    if mixup_active:
        mixup_fn = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
                         prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                         label_smoothing=args.smoothing, num_classes=args.nb_classes)
    teacher = build_teacher(args, args.nb_classes, device, teacher_checkpoint) \
        if teacher_checkpoint is not None else None
    criterion = build_criterion(args, mixup_active, teacher)

    output_dir = Path(args.output_dir) if args.output_dir else None
    if output_dir and utils.is_main_process():
        output_dir.mkdir(parents=True, exist_ok=True)

    max_accuracy = 0.0
    if resume is not None:
        if not args.eval and all(k in resume for k in ("optimizer", "lr_scheduler", "epoch")):
            max_accuracy = resume_training_state(args, resume, optimizer, lr_scheduler, model_ema, loss_scaler)
            if output_dir:  # records of epochs the resumed run redoes
                utils.drop_json_lines_from_epoch(output_dir / "log.txt", args.start_epoch)
        _logger.info("resumed from %s (next epoch %d)", args.resume, args.start_epoch)
        del resume

    if args.eval:
        try:
            test_stats = evaluate(loader_val, model, device, amp_dtype, args.print_freq, cuda_graphs)
        except UnreadableImage as err:
            raise TrainingStopped(one_line(err)) from None
        print(f"Accuracy of the network on the {len(dataset_val)} test images: {test_stats['acc1']:.1f}% "
              f"(--format {args.format})")
        return {"model": model_without_ddp, "test_stats": test_stats, "max_accuracy": test_stats["acc1"]}

    _logger.info("Start training for %d epochs", args.epochs)
    start_time, test_stats, skipped_before = time.time(), None, {}
    for epoch in range(args.start_epoch, args.epochs):
        utils.seed_everything(epoch_seed(args, epoch))
        if hasattr(sampler_train, "set_epoch"):
            sampler_train.set_epoch(epoch)
        lr_scheduler.step(epoch)  # lr of this epoch (timm schedulers are indexed by epoch)
        try:
            train_stats = train_one_epoch(model, criterion, loader_train, optimizer, device, epoch, loss_scaler,
                                          amp_dtype, args.clip_grad, model_ema, mixup_fn, args.train_mode,
                                          args.bce_loss, args.nb_classes, args.print_freq, args.skip_nonfinite,
                                          cuda_graphs=cuda_graphs)
            test_stats = evaluate(loader_val, model, device, amp_dtype, args.print_freq, cuda_graphs)
        except (NonFiniteLossError, UnreadableImage) as err:
            last = f"; the last checkpoint ({output_dir / 'checkpoint.pth'}) is untouched" \
                if output_dir and (output_dir / "checkpoint.pth").exists() else ""
            message = one_line(err) if isinstance(err, UnreadableImage) else str(err)
            raise TrainingStopped(f"{message}{last}") from None
        totals = {f"{name}_skipped_images": dataset.skipped for name, dataset in
                  (("train", dataset_train), ("test", dataset_val)) if hasattr(dataset, "skipped")}
        skipped = {key: total - skipped_before.get(key, 0) for key, total in totals.items()}  # this epoch's
        skipped_before = totals
        if any(skipped.values()):
            _logger.warning("unreadable image files skipped in epoch %d (--bad-images skip): %s", epoch, skipped)
        print(f"Accuracy of the network on the {len(dataset_val)} test images: {test_stats['acc1']:.1f}%")
        is_best = test_stats["acc1"] > max_accuracy
        max_accuracy = max(max_accuracy, test_stats["acc1"])
        print(f"Max accuracy: {max_accuracy:.2f}%")
        log_stats = {**{f"train_{k}": v for k, v in train_stats.items()},
                     **{f"test_{k}": v for k, v in test_stats.items()},
                     **skipped, "epoch": epoch, "n_parameters": n_parameters}
        if output_dir:
            # Order for crash safety: the log record, the best checkpoint, then the latest. A crash in between
            # leaves the previous latest checkpoint; resuming from it redoes this epoch and its record.
            checkpoint = {"model": model_without_ddp.state_dict(), "optimizer": optimizer.state_dict(),
                          "lr_scheduler": lr_scheduler.state_dict(), "epoch": epoch,
                          "model_ema": model_ema.module.state_dict() if model_ema is not None else None,
                          "scaler": loss_scaler.state_dict(), "max_accuracy": max_accuracy, "args": vars(args)}
            utils.append_json_line_on_master(output_dir / "log.txt", log_stats)
            if is_best:
                utils.save_on_master(checkpoint, output_dir / "best_checkpoint.pth")
            utils.save_on_master(checkpoint, output_dir / "checkpoint.pth")
    print(f"Training time {datetime.timedelta(seconds=int(time.time() - start_time))}")
    return {"model": model_without_ddp, "test_stats": test_stats, "max_accuracy": max_accuracy}


def cli(argv=None):
    """Command-line entry point. Expected failures (bad input, a non-finite loss, a lost process) end with one
    ``main_lion.py: error: ...`` line and exit status 1; anything else is a bug and keeps its traceback."""
    parser = argparse.ArgumentParser("LION training and evaluation script", parents=[get_args_parser()])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if int(os.environ.get("RANK", 0)) == 0 else logging.WARNING,
                        format="%(message)s", stream=sys.stdout)
    rank, world = os.environ.get("RANK"), int(os.environ.get("WORLD_SIZE", 1))
    try:
        main(args)
    except Stop as stop:  # one line already; in a multi-process run it names the rank
        prefix = "main_lion.py: error: "
        if world > 1 and rank is not None and not str(stop.code).startswith(f"{prefix}rank "):
            stop.code = f"{prefix}rank {rank} of {world}: {str(stop.code)[len(prefix):]}"
        raise
    except Exception as err:
        if rank is None:
            raise
        if is_communication_error(err):
            raise TrainingStopped(f"{lost_contact_message(rank, err)}. Collectives give up after --dist-timeout "
                                  f"{args.dist_timeout:g} s") from None
        if world == 1:
            raise
        # A bug on one rank: its traceback, then one line naming the rank and the cause; the launcher ends the
        # other ranks (torchrun stops them when one exits non-zero).
        traceback.print_exc()
        raise TrainingStopped(rank_failed_message(rank, world, err)) from None
    # Only after success: rank 0 hosts the store, so every rank finishes before any leaves. After a failure
    # the process just exits; the others notice (closed connection or --dist-timeout) and stop.
    if utils.is_dist_avail_and_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    cli()
