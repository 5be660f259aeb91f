"""Vision Mamba (Vim, Zhu et al., 2024): the ImageNet baseline of the LION paper, in plain torch.

Published configuration ("bimamba v2", middle class token, absolute position embedding): patch 16, d_state 16,
expand 2, causal depthwise conv of width 4, 24 pre-norm RMSNorm blocks with the residual stream kept in fp32.
Each block's mixer runs two selective scans (Mamba-1, one state of size d_state per channel) over the tokens, one
forward and one over the flipped sequence, each with its own conv, x_proj, dt_proj, A and D; they share in_proj (x and
the gate z) and out_proj, and their gated outputs are averaged. Classification reads the middle class token.

``timm.create_model('vim_tiny_patch16_224', depth=2, img_size=32, patch_size=8, embed_dim=64)`` works.
The selective scan is ``selective_scan`` below, in fp32. On the GPU it runs as a fused Triton kernel, forward and
backward (image_classification/ops/selective_scan.py: states in registers, the backward recomputes them chunk by
chunk instead of storing them, as Vim's mamba-ssm kernel does; mamba-ssm itself compiles CUDA at install time, so
it is not used). Without triton the GPU runs a parallel-in-time (Hillis–Steele) associative scan in torch, with its
states recomputed in the backward pass by activation checkpointing; the CPU runs a token-by-token loop. All are
exact and stable.
"""
from __future__ import annotations

import logging
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, PatchEmbed, lecun_normal_, trunc_normal_
from timm.models import register_model
from torch.utils.checkpoint import checkpoint

from lion.masks import upcast

logger = logging.getLogger(__name__)

try:  # the fused Triton scan; the torch scans serve every call without it
    from image_classification.ops.selective_scan import INTERPRET, fused_selective_scan
except ImportError as err:
    logger.debug("fused selective scan unavailable: %s", err)
    fused_selective_scan, INTERPRET = None, False
except Exception as err:  # a broken triton install must not break the torch scans
    logger.warning("fused selective scan failed to load (%s); using the torch scans", err)
    fused_selective_scan, INTERPRET = None, False

SCANS = ("auto", "parallel", "sequential", "triton")


def resolve_scan(scan: str, device=None) -> str:
    """The scan that ``scan`` runs on ``device``: 'auto' → 'triton' on CUDA (when triton imports), else
    'parallel' on CUDA and 'sequential' elsewhere. 'triton' needs CUDA, or TRITON_INTERPRET=1 on the CPU.
    Without a device, only the name (and that triton imports, for 'triton') is checked."""
    if scan not in SCANS:
        raise ValueError(f"scan must be one of {list(SCANS)}, got {scan!r}")
    if scan == "triton" and fused_selective_scan is None:
        raise ValueError("scan='triton' needs the triton package (not importable here); use scan='auto'")
    if device is None:
        return scan
    if scan == "auto":
        if device.type == "cuda":
            return "parallel" if fused_selective_scan is None else "triton"
        return "sequential"
    if scan == "triton" and device.type != "cuda" and not (device.type == "cpu" and INTERPRET):
        raise ValueError(f"scan='triton' runs on CUDA, or on the CPU with TRITON_INTERPRET=1 set before triton is "
                         f"imported; got device {device.type!r}")
    return scan


def selective_scan(x, dt, A, B, C, D, scan: str = "auto"):
    """Mamba-1 selective scan. x, dt: (b, L, d); A: (d, N) < 0; B, C: (b, L, N); D: (d,).

    h_t = exp(dt_t A) ⊙ h_{t−1} + (dt_t x_t) B_t,   y_t = h_t C_t + D x_t   (h: (b, d, N), h_{−1} = 0).
    scan: 'triton' (the fused kernel of image_classification/ops/selective_scan.py, forward and backward),
    'parallel' (log2(L) doubling steps of the associative combine (a, h) ∘ (a', h') = (a a', a' h + h'): few large
    torch ops), 'sequential' (one small op per token: less memory traffic, for the CPU) or 'auto' (see
    ``resolve_scan``: triton on CUDA, sequential on the CPU). All are exact and stable (only products of decays
    ≤ 1 are formed). Returns y (b, L, d) in fp32 (fp64 for fp64 inputs).
    """
    scan = resolve_scan(scan, x.device)
    if scan == "triton":  # the kernel reads x, dt, B, C in their own dtypes
        return fused_selective_scan(x, dt, A, B, C) + upcast(x) * upcast(D)
    x, dt, A, B, C, D = (upcast(t) for t in (x, dt, A, B, C, D))
    a = torch.exp(dt[..., None] * A)                               # (b, L, d, N), ≤ 1
    h = (dt * x)[..., None] * B[:, :, None, :]                     # (b, L, d, N)
    L = x.shape[1]
    if scan == "parallel" or (scan == "auto" and x.is_cuda):
        step = 1
        while step < L:
            h = torch.cat([h[:, :step], h[:, step:] + a[:, step:] * h[:, :-step]], dim=1)
            a = torch.cat([a[:, :step], a[:, step:] * a[:, :-step]], dim=1)
            step *= 2
    else:
        states, state = [], torch.zeros_like(h[:, 0])
        for a_t, h_t in zip(a.unbind(1), h.unbind(1)):  # unbind: its backward is one stack, not L zero-filled copies
            state = a_t * state + h_t
            states.append(state)
        h = torch.stack(states, dim=1)
    return (h * C[:, :, None, :]).sum(-1) + x * D


class SelectiveSSM(nn.Module):
    """The per-direction part of a Mamba block: causal conv, x_proj → (dt, B, C), dt_proj, A, D."""

    def __init__(self, d_inner, d_state, d_conv, dt_rank, dt_min=1e-3, dt_max=1e-1, dt_init_floor=1e-4,
                 scan="auto", recompute_scan=None):
        super().__init__()
        resolve_scan(scan)
        self.d_state, self.dt_rank = d_state, dt_rank
        self.scan, self.recompute_scan = scan, recompute_scan
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(d_inner, 1))
        self.D = nn.Parameter(torch.ones(d_inner))
        with torch.no_grad():  # Mamba's init: dt = softplus(bias) log-uniform in [dt_min, dt_max]
            nn.init.uniform_(self.dt_proj.weight, -dt_rank ** -0.5, dt_rank ** -0.5)
            dt = torch.exp(torch.rand(d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
            dt = dt.clamp(min=dt_init_floor)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.dt_proj.bias._no_reinit = True

    def forward(self, x, z):
        """x, z: (b, L, d_inner) → gated scan output (b, L, d_inner)."""
        L = x.shape[1]
        x = F.silu(self.conv1d(x.transpose(1, 2))[..., :L].transpose(1, 2))
        dt, B, C = torch.split(self.x_proj(x), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(upcast(self.dt_proj(dt)))
        args = (x, dt, -torch.exp(upcast(self.A_log)), B, C, self.D, self.scan)
        recompute = x.is_cuda if self.recompute_scan is None else self.recompute_scan
        if resolve_scan(self.scan, x.device) == "triton":  # the kernel recomputes its states itself
            recompute = False
        if recompute and torch.is_grad_enabled():  # keep only the inputs; rebuild the (b, L, d, N) states backward
            y = checkpoint(selective_scan, *args, use_reentrant=False)
        else:
            y = selective_scan(*args)
        return (y * F.silu(upcast(z))).to(x.dtype)


class BiMamba(nn.Module):
    """Vim's bidirectional Mamba mixer (bimamba v2 with if_divide_out): (fwd + flip(bwd on flipped)) / 2."""

    def __init__(self, d_model, d_state=16, d_conv=4, expand=2, **scan_kwargs):
        super().__init__()
        d_inner = expand * d_model
        dt_rank = math.ceil(d_model / 16)
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.fwd = SelectiveSSM(d_inner, d_state, d_conv, dt_rank, **scan_kwargs)
        self.bwd = SelectiveSSM(d_inner, d_state, d_conv, dt_rank, **scan_kwargs)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    def forward(self, u):
        x, z = self.in_proj(u).chunk(2, dim=-1)
        y = self.fwd(x, z) + self.bwd(x.flip(1), z.flip(1)).flip(1)
        return self.out_proj(y / 2)


class VimBlock(nn.Module):
    """Add → RMSNorm → mixer; returns (mixer output, residual stream in fp32), as Vim's fused add-norm blocks."""

    def __init__(self, dim, d_state, d_conv, expand, drop_path=0.0, eps=1e-5, **scan_kwargs):
        super().__init__()
        self.norm = nn.RMSNorm(dim, eps=eps)
        self.mixer = BiMamba(dim, d_state, d_conv, expand, **scan_kwargs)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, hidden, residual=None):
        residual = hidden.float() if residual is None else residual + self.drop_path(hidden).float()
        return self.mixer(self.norm(residual.to(self.norm.weight.dtype))), residual


class VisionMamba(nn.Module):
    """Vim with a class token in the middle of the patch sequence and a learned absolute position embedding.

    scan: 'auto' | 'triton' | 'parallel' | 'sequential' (see ``selective_scan``); recompute_scan: for the torch
    scans, rebuild the scan states in the backward pass instead of storing them (None: on CUDA only, where they
    would not fit at ImageNet sizes); the Triton scan always recomputes them in its own backward kernel.
    ``num_heads`` is accepted (and unused) so that the studies can pass one set of ViT keyword arguments.
    """

    def __init__(self, img_size=224, patch_size=16, in_chans=3, num_classes=1000, embed_dim=192, depth=24,
                 d_state=16, d_conv=4, expand=2, drop_rate=0.0, drop_path_rate=0.1, norm_eps=1e-5, num_heads=None,
                 scan="auto", recompute_scan=None):
        super().__init__()
        for name, value in (("depth", depth), ("embed_dim", embed_dim), ("d_state", d_state), ("d_conv", d_conv),
                            ("expand", expand)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer ≥ 1, got {value!r}")
        self.num_classes = num_classes
        self.num_features = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        num_patches = self.patch_embed.num_patches
        self.cls_position = num_patches // 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = [0.0] + torch.linspace(0, drop_path_rate, depth).tolist()  # Vim's schedule: block i gets dpr[i]
        self.layers = nn.ModuleList([VimBlock(embed_dim, d_state, d_conv, expand, dpr[i], norm_eps, scan=scan,
                                              recompute_scan=recompute_scan) for i in range(depth)])
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0.0 else nn.Identity()
        self.norm_f = nn.RMSNorm(embed_dim, eps=norm_eps)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights(depth)

    @torch.no_grad()
    def _init_weights(self, depth):
        """Vim's init: patch conv LeCun normal, head/pos/cls trunc-normal 0.02, zero linear biases (except dt_proj),
        out_proj Kaiming-uniform scaled by 1/√depth; the other weights keep PyTorch's defaults."""
        lecun_normal_(self.patch_embed.proj.weight)
        nn.init.zeros_(self.patch_embed.proj.bias)
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        if isinstance(self.head, nn.Linear):
            trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)
        for m in self.layers.modules():
            if isinstance(m, nn.Linear) and m.bias is not None and not getattr(m.bias, "_no_reinit", False):
                nn.init.zeros_(m.bias)
            if isinstance(m, BiMamba):
                nn.init.kaiming_uniform_(m.out_proj.weight, a=math.sqrt(5))
                m.out_proj.weight /= math.sqrt(depth)

    @torch.jit.ignore
    def no_weight_decay(self):
        return {"pos_embed", "cls_token"}

    def get_classifier(self):
        return self.head

    def reset_classifier(self, num_classes, global_pool=None):
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x):
        """Images → normalised tokens (b, num_patches + 1, dim), the class token at index ``cls_position``."""
        x = self.patch_embed(x)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([x[:, :self.cls_position], cls, x[:, self.cls_position:]], dim=1)
        hidden, residual = self.pos_drop(x + self.pos_embed), None
        for layer in self.layers:
            hidden, residual = layer(hidden, residual)
        residual = residual + self.drop_path(hidden).float()
        return self.norm_f(residual.to(self.norm_f.weight.dtype))

    def forward_head(self, x, pre_logits: bool = False):
        x = x[:, self.cls_position]
        return x if pre_logits else self.head(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def _create_vim(variant, pretrained=False, **kwargs):
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    if pretrained:
        raise ValueError(f"no pretrained weights are registered for {variant}; load a checkpoint with "
                         "--finetune/--resume or model.load_state_dict instead")
    model = VisionMamba(**kwargs)
    model.default_cfg = model.pretrained_cfg = {"architecture": variant, "num_classes": model.num_classes,
                                                "input_size": (3, 224, 224), "crop_pct": 0.875,
                                                "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    return model


@register_model
def vim_tiny_patch16_224(pretrained=False, **kwargs):
    return _create_vim("vim_tiny_patch16_224", pretrained, **{**dict(patch_size=16, embed_dim=192, depth=24), **kwargs})


@register_model
def vim_small_patch16_224(pretrained=False, **kwargs):
    return _create_vim("vim_small_patch16_224", pretrained,
                       **{**dict(patch_size=16, embed_dim=384, depth=24), **kwargs})


@register_model
def vim_base_patch16_224(pretrained=False, **kwargs):
    return _create_vim("vim_base_patch16_224", pretrained, **{**dict(patch_size=16, embed_dim=768, depth=24), **kwargs})
