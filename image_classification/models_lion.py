"""LION vision transformers (docs/lion.md §1): DeiT/ViT with the attention replaced by LION.

Parameter names match the published implementation, so its state dicts load with ``strict=True``.
``timm.create_model('lion_small_patch16_224', mask_type='Selective', order='S', depth=6)`` works.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
from timm.layers import DropPath, Mlp, PatchEmbed, resample_abs_pos_embed, trunc_normal_
from timm.models import register_model

from lion import (BACKENDS, MASK_TYPES, canonical_form, curve_permutation, decay_log_gates, lion_attention,
                  selective_log_gates)
from lion.checks import KEEP, check_chunk_size

ORDERS = ("Normal", "S")
FORMATS = ("Attention", "RNN", "Chunk")


def _check_choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


def _check_square_grid(grid, context):
    """The ♮ curves walk a g×g grid; a 2×8 grid has a square count (16) but is not one."""
    if grid[0] != grid[1]:
        raise ValueError(f"order='S' needs a square patch grid, got {tuple(grid)} ({context}); "
                         "allowed: a square grid, or order='Normal'")


class LionAttention(nn.Module):
    """Multi-head LION attention. ``format`` and ``chunk_size`` may be changed at any time."""

    def __init__(self, dim, num_heads=8, qkv_bias=False, qk_scale=None, attn_drop=0.0, proj_drop=0.0,
                 mask_type="Decay", order="Normal", format="Attention", chunk_size=None, backend=None):
        super().__init__()
        _check_choice("mask_type", mask_type, MASK_TYPES)
        _check_choice("order", order, ORDERS)
        _check_choice("backend", backend, (None, *BACKENDS))
        self.backend = backend  # None: lion's process default ('auto': fused kernels on CUDA, torch on CPU)
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale or self.head_dim ** -0.5
        self.mask_type, self.order = mask_type, order
        self.set_format(format, chunk_size)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        gate = {"Decay": lambda: nn.Parameter(torch.randn(num_heads)),
                "Selective": lambda: nn.Linear(dim, num_heads)}.get(mask_type)
        if gate is not None:
            self.a_i = gate()
            if order == "S":
                self.a2_i = gate()
        self.feature_map = "elu_plus_one" if mask_type == "Lit" else "normalized_silu"  # applied by lion_attention

    def set_format(self, format, chunk_size=KEEP):
        """chunk_size: an int, None (automatic: the fused kernels pick one), or KEEP (the current one)."""
        _check_choice("format", format, FORMATS)
        self.format = format
        if chunk_size is not KEEP:
            self.chunk_size = check_chunk_size(chunk_size)

    def _log_gates(self, gate, x, perm=None):
        B, N, _ = x.shape
        if self.mask_type == "Decay":
            return decay_log_gates(gate, N, B)
        if self.mask_type == "Selective":
            z = gate(x)
            return selective_log_gates(z if perm is None else z[:, perm])  # cls (first) gate := 1
        return None

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        orders, log_a = None, None
        if self.order == "S" and self.mask_type != "Lit":  # with M = 1 every order gives the same result
            perms = [curve_permutation(N, c, 1, x.device) for c in ("s", "sr")]
            orders = [(p, self._log_gates(g, x, p)) for p, g in zip(perms, (self.a_i, self.a2_i))]
        elif self.mask_type != "Lit":
            log_a = self._log_gates(self.a_i, x)
        y = lion_attention(q, k, v, log_a, feature_map=self.feature_map, scale=self.scale, normalize=True, eps=1e-6,
                           orders=orders,
                           form=canonical_form(self.format), chunk_size=self.chunk_size,
                           dropout_p=self.attn_drop, training=self.training, backend=self.backend)
        return self.proj_drop(self.proj(y.transpose(1, 2).reshape(B, N, C)))


class Block(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=False, qk_scale=None, drop=0.0, attn_drop=0.0,
                 drop_path=0.0, norm_layer=nn.LayerNorm, act_layer=nn.GELU, **lion_kwargs):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = LionAttention(dim, num_heads, qkv_bias, qk_scale, attn_drop, drop, **lion_kwargs)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=drop)

    def forward(self, x):
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class LionVisionTransformer(nn.Module):
    """ViT/DeiT with LION attention; a cls token is always prepended (index 0)."""

    def __init__(self, img_size=224, patch_size=16, in_chans=3, num_classes=1000, embed_dim=768, depth=12,
                 num_heads=12, mlp_ratio=4.0, qkv_bias=True, qk_scale=None, drop_rate=0.0, attn_drop_rate=0.0,
                 drop_path_rate=0.0, norm_layer=None, mask_type="Decay", order="Normal", format="Attention",
                 chunk_size=None, pos_emb=False, cls_tok=False, backend=None):
        super().__init__()
        _check_choice("mask_type", mask_type, MASK_TYPES)
        _check_choice("order", order, ORDERS)
        _check_choice("format", format, FORMATS)
        check_chunk_size(chunk_size)
        norm_layer = norm_layer or partial(nn.LayerNorm, eps=1e-6)
        self.num_classes = num_classes
        self.num_features = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1
        self.mask_type, self.order, self.pos_emb, self.cls_tok = mask_type, order, pos_emb, cls_tok
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, strict_img_size=False)
        if order == "S":
            _check_square_grid(self.patch_embed.grid_size, f"img_size={img_size}, patch_size={patch_size}")
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        if pos_emb:
            self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.Sequential(*[
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, qk_scale, drop_rate, attn_drop_rate, dpr[i],
                  norm_layer, mask_type=mask_type, order=order, format=format, chunk_size=chunk_size,
                  backend=backend)
            for i in range(depth)])
        self.norm = norm_layer(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        if pos_emb:
            trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self):
        return {"pos_embed", "cls_token"}

    def set_format(self, format, chunk_size=KEEP):
        """Switch every block to 'Attention', 'RNN' or 'Chunk' (parameters untouched; all forms are exact)."""
        for blk in self.blocks:
            blk.attn.set_format(format, chunk_size)

    def get_classifier(self):
        return self.head

    def reset_classifier(self, num_classes, global_pool=None):
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def _pos_embed(self, x, grid):
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        if self.pos_emb:
            pos = self.pos_embed
            if tuple(grid) != tuple(self.patch_embed.grid_size):  # any input size: interpolate
                pos = resample_abs_pos_embed(pos, list(grid), list(self.patch_embed.grid_size), num_prefix_tokens=1)
            x = x + pos
        return self.pos_drop(x)

    def forward_features(self, x):
        grid = self.patch_embed.dynamic_feat_size(x.shape[-2:])
        if self.order == "S" and self.mask_type != "Lit":
            _check_square_grid(grid, f"input {tuple(x.shape[-2:])}")
        x = self._pos_embed(self.patch_embed(x), grid)
        return self.norm(self.blocks(x))

    def forward_head(self, x, pre_logits: bool = False):
        x = x[:, 0] if self.cls_tok else x.mean(dim=1)
        return x if pre_logits else self.head(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def _create_lion(variant, pretrained=False, **kwargs):
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    if pretrained:
        raise ValueError(f"no pretrained weights are registered for {variant}; load a checkpoint with "
                         "--finetune/--resume or model.load_state_dict instead")
    model = LionVisionTransformer(**kwargs)
    model.default_cfg = model.pretrained_cfg = {"architecture": variant, "num_classes": model.num_classes,
                                                "input_size": (3, 224, 224), "crop_pct": 0.875,
                                                "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    return model


@register_model
def lion_tiny_patch16_224(pretrained=False, **kwargs):
    return _create_lion("lion_tiny_patch16_224", pretrained,
                        **{**dict(patch_size=16, embed_dim=192, depth=12, num_heads=3, mlp_ratio=4, qkv_bias=True), **kwargs})


@register_model
def lion_small_patch16_224(pretrained=False, **kwargs):
    return _create_lion("lion_small_patch16_224", pretrained,
                        **{**dict(patch_size=16, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4, qkv_bias=True), **kwargs})


@register_model
def lion_base_patch16_224(pretrained=False, **kwargs):
    return _create_lion("lion_base_patch16_224", pretrained,
                        **{**dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4, qkv_bias=True), **kwargs})
