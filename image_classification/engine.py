"""Train and evaluation loops (DeiT's ``engine.py``): autocast (bf16 on CUDA, fp32 on CPU), loss scaling,
gradient clipping, Mixup/CutMix, EMA and distillation through the criterion; a non-finite loss is never
trained on (it stops the run, or the step is skipped)."""
from __future__ import annotations

import logging
import time

import torch
import torch.nn.functional as F
from timm.utils import NativeScaler, accuracy

from image_classification.utils import (
    MetricLogger,
    SmoothedValue,
    is_dist_avail_and_initialized,
    kill_self,
    planted_fault,
)

_logger = logging.getLogger(__name__)

CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # torch.compile modes whose compiled blocks replay CUDA graphs


class LossScaler(NativeScaler):
    """timm's ``NativeScaler`` (backward, unscale, clip, step) whose ``GradScaler`` is only active for float16;
    bf16 and fp32 need no scaling, so it then just clips and steps."""

    def __init__(self, device_type, enabled):
        self._scaler = torch.amp.GradScaler(device_type, enabled=enabled)


def autocast(device, amp_dtype):
    return torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)


class NonFiniteLossError(FloatingPointError):
    """A NaN or infinite loss; raised before that step changes the weights."""


def _all_finite(loss):
    """Whether the loss is finite on every process (all of them then skip or stop together)."""
    value = loss.detach().float().reshape(1)
    if is_dist_avail_and_initialized():
        value = value.clone()
        torch.distributed.all_reduce(value)
    return bool(torch.isfinite(value).item())


def train_one_epoch(model, criterion, data_loader, optimizer, device, epoch, loss_scaler, amp_dtype=None,
                    max_norm=None, model_ema=None, mixup_fn=None, set_training_mode=True, bce_loss=False,
                    num_classes=None, print_freq=10, skip_nonfinite=False, cuda_graphs=False):
    """One epoch; returns the global averages of the meters (loss, lr), the throughput in images/s and
    ``skipped_steps``. A non-finite loss raises ``NonFiniteLossError`` naming the epoch and step, or with
    ``skip_nonfinite`` the step is skipped (no update, no EMA) and counted. ``cuda_graphs``: the model's blocks
    were compiled to CUDA graphs (torch.compile mode 'reduce-overhead'); each step is marked as a new iteration."""
    model.train(set_training_mode)
    metric_logger = MetricLogger()
    metric_logger.add_meter("lr", SmoothedValue(window_size=1, fmt="{value:.6f}"))
    start, images_seen, skipped, n = time.time(), 0, 0, len(data_loader)
    for step, (samples, targets) in enumerate(metric_logger.log_every(data_loader, print_freq, f"Epoch: [{epoch}]")):
        fault = planted_fault("step", epoch * n + step)
        if fault == "kill":
            kill_self()
        samples, targets = samples.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        if cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        if mixup_fn is not None:
            samples, targets = mixup_fn(samples, targets)
        if bce_loss:  # BCE on (mixed) one-hot targets: every class present in the mix is a positive (DeiT III)
            if targets.ndim == 1:
                targets = F.one_hot(targets, num_classes).float()
            targets = targets.gt(0.0).type(targets.dtype)
        with autocast(device, amp_dtype):
            outputs = model(samples)
            loss = criterion(samples, outputs, targets)
        if fault == "nan":
            loss = loss * float("nan")
        optimizer.zero_grad()
        if not _all_finite(loss):
            where = f"epoch {epoch}, step {step} of {n}"
            if not skip_nonfinite:
                raise NonFiniteLossError(f"non-finite loss ({loss.item()}) at {where}; stopped before this step "
                                         "changed the weights (--skip-nonfinite skips such steps instead)")
            skipped += 1
            _logger.warning("non-finite loss (%s) at %s: step skipped (%d skipped this epoch)", loss.item(), where,
                            skipped)
            continue
        loss_value = loss.item()
        loss_scaler(loss, optimizer, clip_grad=max_norm, parameters=model.parameters(),
                    create_graph=getattr(optimizer, "is_second_order", False))
        if device.type == "cuda":
            torch.cuda.synchronize()
        if model_ema is not None:
            model_ema.update(model)
        images_seen += samples.shape[0]
        metric_logger.update(loss=loss_value, lr=optimizer.param_groups[0]["lr"])
    metric_logger.synchronize_between_processes()
    _logger.info("Averaged stats: %s", metric_logger)
    stats = {k: meter.global_avg for k, meter in metric_logger.meters.items()}
    stats["images_per_s"] = images_seen / max(time.time() - start, 1e-9)  # this process
    stats["skipped_steps"] = skipped
    return stats


@torch.no_grad()
def evaluate(data_loader, model, device, amp_dtype=None, print_freq=10, cuda_graphs=False):
    """Cross-entropy, top-1 and top-5 (top-k capped at the number of classes) accuracy in percent.
    ``cuda_graphs``: as in ``train_one_epoch``."""
    criterion = torch.nn.CrossEntropyLoss()
    metric_logger = MetricLogger()
    model.eval()
    for images, target in metric_logger.log_every(data_loader, print_freq, "Test:"):
        images, target = images.to(device, non_blocking=True), target.to(device, non_blocking=True)
        if cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with autocast(device, amp_dtype):
            output = model(images)
            loss = criterion(output, target)
        acc1, acc5 = accuracy(output.float(), target, topk=(1, min(5, output.shape[1])))
        n = images.shape[0]
        metric_logger.update(loss=loss.item())
        metric_logger.meters["acc1"].update(acc1.item(), n=n)
        metric_logger.meters["acc5"].update(acc5.item(), n=n)
    metric_logger.synchronize_between_processes()
    m = metric_logger.meters
    _logger.info("* Acc@1 %.3f Acc@5 %.3f loss %.3f", m["acc1"].global_avg, m["acc5"].global_avg, m["loss"].global_avg)
    return {k: meter.global_avg for k, meter in metric_logger.meters.items()}
