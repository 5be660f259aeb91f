"""DeiT's knowledge-distillation loss: the base criterion plus a term that matches a teacher's predictions."""
from __future__ import annotations

import torch
import torch.nn.functional as F

DISTILLATION_TYPES = ("none", "soft", "hard")


class DistillationLoss(torch.nn.Module):
    """``(1 - alpha) * base + alpha * kd`` with kd the soft (KL at temperature ``tau``) or hard (teacher argmax)
    distillation term. A model with a distillation head returns ``(outputs, outputs_kd)``; a model without one
    (LION) returns one tensor that serves both terms."""

    def __init__(self, base_criterion, teacher_model, distillation_type, alpha, tau):
        super().__init__()
        if distillation_type not in DISTILLATION_TYPES:
            raise ValueError(f"--distillation-type must be one of {', '.join(DISTILLATION_TYPES)}, "
                             f"got {distillation_type!r}")
        self.base_criterion, self.teacher_model = base_criterion, teacher_model
        self.distillation_type, self.alpha, self.tau = distillation_type, alpha, tau

    def forward(self, inputs, outputs, labels):
        outputs_kd = outputs
        if not isinstance(outputs, torch.Tensor):
            outputs, outputs_kd = outputs
        base_loss = self.base_criterion(outputs, labels)
        if self.distillation_type == "none":
            return base_loss
        with torch.no_grad():
            teacher_outputs = self.teacher_model(inputs)
        if self.distillation_type == "soft":
            T = self.tau
            # KL(teacher || student) at temperature T, scaled by T² (Hinton et al.); summed, / numel as in DeiT.
            student_log_p = F.log_softmax(outputs_kd / T, dim=1)
            teacher_log_p = F.log_softmax(teacher_outputs / T, dim=1)
            distillation_loss = F.kl_div(student_log_p, teacher_log_p, reduction="sum", log_target=True) \
                * (T * T) / outputs_kd.numel()
        else:
            distillation_loss = F.cross_entropy(outputs_kd, teacher_outputs.argmax(dim=1))
        return base_loss * (1 - self.alpha) + distillation_loss * self.alpha
