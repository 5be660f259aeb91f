"""LION vision transformers (docs/lion.md §1): DeiT/ViT with the attention replaced by LION.

The model is timm's ``VisionTransformer`` built with LION blocks (``block_fn``), so timm's backbone tools come from
timm itself: ``features_only=True``, ``forward_intermediates``, pruning, gradient checkpointing, layer-wise lr decay
(``group_matcher``), ``pretrained=True`` with a local file, FX feature extraction. Parameter names match the published
implementation, so its state dicts load with ``strict=True``; its pooling ('avg_all'), init and dropout are kept.
``timm.create_model('lion_small_patch16_224', mask_type='Selective', order='S', depth=6)`` works.
``torch.jit.script`` is refused with a RuntimeError (see ``LionAttention.__prepare_scriptable__``).
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (
    DropPath,
    Mlp,
    PatchEmbed,
    register_notrace_function,
    register_notrace_module,
    resample_abs_pos_embed,
    trunc_normal_,
)
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._manipulate import checkpoint_seq
from timm.models.vision_transformer import VisionTransformer, global_pool_nlc

from lion import BACKENDS, autocast_once, canonical_form, curve_permutation, lion_attention, unpack_qkv, variants
from lion.checks import KEEP, check_chunk_size
from lion.forms import PUBLISHED_FORMS, published_form

FAMILY = "vision"  # the names and parameters of lion.variants this family publishes
ORDERS = ("Normal", "S")
FORMATS = PUBLISHED_FORMS[FAMILY]
# 'avg_all' (the published pooling): mean over all tokens, cls included; 'avg': mean over the patch tokens only;
# 'token': the cls token; '': no pooling (all tokens go to the head).
GLOBAL_POOLS = ("avg_all", "avg", "token", "max", "avgmax", "")


def _check_choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


def _check_square_grid(grid, context):
    """The ♮ curves walk a g×g grid; a 2×8 grid has a square count (16) but is not one."""
    if grid[0] != grid[1]:
        raise ValueError(f"order='S' needs a square patch grid, got {tuple(grid)} ({context}); "
                         "allowed: a square grid, or order='Normal'")


def _check_heads(dim, num_heads):
    if not isinstance(num_heads, int) or num_heads < 1 or dim % num_heads:
        raise ValueError(f"embed_dim ({dim}) must be divisible by num_heads ({num_heads}): each head takes "
                         "embed_dim / num_heads channels")


def _check_patches(img_size, patch_size):
    """An image side the patch size does not divide would lose its last pixels (the patch grid rounds down)."""
    for side, patch in zip(img_size, patch_size):
        if side % patch:
            fits = f"{side - side % patch} or {side - side % patch + patch}"
            raise ValueError(f"img_size {side} is not a multiple of patch_size {patch}; e.g. img_size {fits}")


@register_notrace_function  # FX: a Python-level check, not traced
def check_images(x, patch_embed, dynamic_img_size):
    """Once per forward, sizes only: images (B, in_chans, H, W) whose sides the patch size divides (and, unless
    ``dynamic_img_size``, the model's img_size)."""
    channels, patch = patch_embed.proj.in_channels, tuple(patch_embed.patch_size)
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(f"x must be images (B, {channels}, H, W), got shape {tuple(x.shape)}")
    size = tuple(x.shape[2:])
    if not dynamic_img_size and size != tuple(patch_embed.img_size):
        raise ValueError(f"x must be {tuple(patch_embed.img_size)} images (dynamic_img_size=False), got {size}")
    if size[0] % patch[0] or size[1] % patch[1]:
        raise ValueError(f"x's height and width {size} must be multiples of patch_size {patch}")


@register_notrace_module  # FX leaf: token count, curve orders and kernel choice are Python-level decisions
class LionAttention(nn.Module):
    """Multi-head LION attention. ``format`` and ``chunk_size`` may be changed at any time."""

    def __init__(self, dim, num_heads=8, qkv_bias=False, qk_scale=None, attn_drop=0.0, proj_drop=0.0,
                 mask_type="Decay", order="Normal", format="Auto", chunk_size=None, backend=None):
        super().__init__()
        _check_choice("mask_type", mask_type, variants.names(FAMILY))
        _check_choice("order", order, ORDERS)
        _check_choice("backend", backend, (None, *BACKENDS))
        _check_heads(dim, num_heads)
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
        self.variant.make_gates(self, FAMILY, dim, num_heads, orders=2 if order == "S" else 1)
        self.feature_map = self.variant.feature_maps[FAMILY]  # applied by lion_attention

    @property
    def variant(self) -> variants.Variant:
        """The mask type's registry entry (looked up, not stored: a pickled module holds no registry objects)."""
        return variants.variant(FAMILY, self.mask_type)

    def set_format(self, format, chunk_size=KEEP):
        """chunk_size: an int, None (automatic: the fused kernels pick one), or KEEP (the current one)."""
        _check_choice("format", format, FORMATS)
        self.format = format
        if chunk_size is not KEEP:
            self.chunk_size = check_chunk_size(chunk_size)

    def __prepare_scriptable__(self):
        raise RuntimeError(
            "LION models cannot be compiled with torch.jit.script: lion_attention chooses the form, the ♮ token "
            "orders and the fused kernels in Python at run time, which TorchScript cannot type. Use the eager "
            "model, or FX for feature extraction (timm features_only=True, create_feature_extractor).")

    def forward(self, x):
        B, N, C = x.shape
        x = autocast_once(x)  # the qkv and gate projections share one low-precision copy of x for their backward
        q, k, v = unpack_qkv(self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim))
        orders, log_a = None, None
        variant = self.variant
        if self.order == "S" and variant.gates:  # with M = 1 every order gives the same result
            perms = [curve_permutation(N, c, 1, x.device) for c in ("s", "sr")]
            orders = [(p, variant.log_gates(self, FAMILY, x, i, p, self.backend)) for i, p in enumerate(perms)]
        elif variant.gates:
            log_a = variant.log_gates(self, FAMILY, x, backend=self.backend)
        y = lion_attention(q, k, v, log_a, feature_map=self.feature_map, scale=self.scale, normalize=True, eps=1e-6,
                           orders=orders,
                           form=canonical_form(self.format), chunk_size=self.chunk_size,
                           dropout_p=self.attn_drop, training=self.training, backend=self.backend)
        return self.proj_drop(self.proj(y.transpose(1, 2).reshape(B, N, C)))


class Block(nn.Module):
    """A pre-norm ViT block with LION attention, under the published names (norm1, attn, norm2, mlp). timm's
    ``VisionTransformer`` builds it through ``block_fn``; its other block options (qk_norm, layer scale, mlp_layer,
    attn_layer, ...) stay at timm's defaults, which LION does not expose."""

    def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=False, proj_drop=0.0, attn_drop=0.0, drop_path=0.0,
                 norm_layer=nn.LayerNorm, act_layer=nn.GELU, qk_scale=None, lion_kwargs=None, **_timm_defaults):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = LionAttention(dim, num_heads, qkv_bias, qk_scale, attn_drop, proj_drop, **(lion_kwargs or {}))
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)

    def forward(self, x):
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def _resolve_global_pool(global_pool, cls_tok):
    """``cls_tok=True`` is ``global_pool='token'``; without either the published pooling 'avg_all' is used."""
    if global_pool is None:
        return "token" if cls_tok else "avg_all"
    _check_choice("global_pool", global_pool, GLOBAL_POOLS)
    if cls_tok and global_pool != "token":
        raise ValueError(f"cls_tok=True means global_pool='token', got global_pool={global_pool!r}; "
                         "give only one of them")
    return global_pool


@register_notrace_function  # FX: the patch grid comes from the input's shape
def lion_tokens(patches: torch.Tensor, cls_token: torch.Tensor, pos_embed: torch.Tensor | None,
                pos_grid: tuple[int, int], square_grid: bool) -> torch.Tensor:
    """(B, H, W, C) patch embeddings → (B, 1 + H·W, C) tokens, cls first then raster order. ``pos_embed`` (made for
    ``pos_grid``) is resampled to H×W for other input sizes."""
    B, H, W, C = patches.shape
    if square_grid:
        _check_square_grid((H, W), "patch grid of the input image")
    x = torch.cat([cls_token.expand(B, -1, -1), patches.reshape(B, H * W, C)], dim=1)
    if pos_embed is not None:
        if (H, W) != tuple(pos_grid):
            pos_embed = resample_abs_pos_embed(pos_embed, [H, W], list(pos_grid), num_prefix_tokens=1)
        x = x + pos_embed
    return x


class LionVisionTransformer(VisionTransformer):
    """ViT/DeiT with LION attention: timm's ``VisionTransformer`` (its backbone API: ``forward_intermediates``,
    ``prune_intermediate_layers``, ``reset_classifier``, grad checkpointing, ``group_matcher``) with LION blocks,
    the published pooling, init and dropout, a cls token always prepended (index 0), and inputs checked.

    global_pool: 'avg_all' (default, the published pooling: mean over all tokens, cls included), 'token' (the cls
    token; same as ``cls_tok=True``), 'avg' (mean over the patch tokens), 'max', 'avgmax' or '' (no pooling).
    dynamic_img_size: True (default, the published behaviour): any input size, the position embedding is resampled
    to the input's patch grid; False: the input must be ``img_size``.
    """

    def __init__(self, img_size=224, patch_size=16, in_chans=3, num_classes=1000, embed_dim=768, depth=12,
                 num_heads=12, mlp_ratio=4.0, qkv_bias=True, qk_scale=None, drop_rate=0.0, attn_drop_rate=0.0,
                 drop_path_rate=0.0, norm_layer=None, mask_type="Decay", order="Normal", format="Auto",
                 chunk_size=None, pos_emb=False, cls_tok=None, backend=None, global_pool: str | None = None,
                 dynamic_img_size: bool = True):
        _check_choice("mask_type", mask_type, variants.names(FAMILY))
        _check_choice("order", order, ORDERS)
        _check_choice("format", format, FORMATS)
        check_chunk_size(chunk_size)
        _check_heads(embed_dim, num_heads)
        global_pool = _resolve_global_pool(global_pool, cls_tok)
        lion_kwargs = dict(mask_type=mask_type, order=order, format=format, chunk_size=chunk_size, backend=backend)
        # The published (DeiT) drop_rate drops after the position embedding and in every block, not before the head.
        # weight_init='skip': the published init below; fc_norm=False: the final norm before the pooling.
        super().__init__(
            img_size, patch_size, in_chans, num_classes, global_pool="", embed_dim=embed_dim, depth=depth,
            num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, pos_embed="learn" if pos_emb else "none",
            fc_norm=False, dynamic_img_size=dynamic_img_size, pos_drop_rate=drop_rate, proj_drop_rate=drop_rate,
            attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate, weight_init="skip",
            embed_layer=partial(PatchEmbed, output_fmt="NHWC"),  # (B, H, W, C) patches for lion_tokens
            norm_layer=norm_layer or partial(nn.LayerNorm, eps=1e-6),
            block_fn=partial(Block, qk_scale=qk_scale, lion_kwargs=lion_kwargs))
        self.global_pool = global_pool
        self.mask_type, self.order, self.pos_emb = mask_type, order, pos_emb
        _check_patches(self.patch_embed.img_size, self.patch_embed.patch_size)
        if order == "S":
            _check_square_grid(self.patch_embed.grid_size, f"img_size={img_size}, patch_size={patch_size}")
        self.init_weights()

    def init_weights(self, mode="", needs_reset=True):
        """The published init: truncated normal (std 0.02) for the position embedding, cls token and every Linear
        (zero bias); LayerNorms at one and zero."""
        if self.pos_embed is not None:
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

    @property
    def cls_tok(self) -> bool:
        return self.global_pool == "token"

    def set_format(self, format, chunk_size=KEEP):
        """Switch every block to 'Attention', 'RNN' or 'Chunk' (parameters untouched; all forms are exact)."""
        for blk in self.blocks:
            blk.attn.set_format(format, chunk_size)

    def set_form(self, form, chunk_size=KEEP):
        """``set_format`` under the MLM models' name, taking any spelling of a form (lion.forms: 'chunk', 'parallel',
        'RNN', ...)."""
        self.set_format(published_form(form, FAMILY), chunk_size)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None):
        if global_pool is not None:
            _check_choice("global_pool", global_pool, GLOBAL_POOLS)
            self.global_pool = global_pool
        super().reset_classifier(num_classes)

    def _pos_embed(self, patches):
        square = self.order == "S" and bool(variants.variant(FAMILY, self.mask_type).gates)  # Lit: any order
        return self.pos_drop(lion_tokens(patches, self.cls_token, self.pos_embed, self.patch_embed.grid_size, square))

    def forward_intermediates(self, x, *args, output_fmt: str = "NCHW", **kwargs):
        """timm's, on checked images. Intermediates are the patch tokens as (B, C, H, W) maps ('NCHW') or
        (B, H·W, C) ('NLC'); the cls token comes alongside with ``return_prefix_tokens``."""
        _check_choice("output_fmt", output_fmt, ("NCHW", "NLC"))
        check_images(x, self.patch_embed, self.dynamic_img_size)
        return super().forward_intermediates(x, *args, output_fmt=output_fmt, **kwargs)

    # forward_features and forward without timm's attn_mask / is_causal: LION has no attention mask, and a plain
    # forward(x) traces with FX without concrete arguments.
    def forward_features(self, x):
        check_images(x, self.patch_embed, self.dynamic_img_size)
        x = self._pos_embed(self.patch_embed(x))
        x = checkpoint_seq(self.blocks, x) if self.grad_checkpointing else self.blocks(x)
        return self.norm(x)

    def pool(self, x, pool_type: str | None = None):
        pool_type = self.global_pool if pool_type is None else pool_type
        if pool_type == "avg_all":
            return global_pool_nlc(x, "avg", self.num_prefix_tokens, reduce_include_prefix=True)
        return super().pool(x, pool_type)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state_dict, model):
    """timm's pretrained filter: accept a state dict or a training checkpoint (``{'model': state_dict, ...}``) and
    resample a square-grid ``pos_embed`` to the model's patch grid. Parameter names are left as published. Every
    key but the head's must match the model (timm loads non-strictly when it drops a head of another size)."""
    state_dict = dict(state_dict.get("model", state_dict))
    own = {k for k in model.state_dict() if not k.startswith("head.")}
    given = {k for k in state_dict if not k.startswith("head.")}
    missing, unexpected = sorted(own - given), sorted(given - own)
    if missing or unexpected:
        raise ValueError(f"checkpoint does not fit the model (check mask_type, order, pos_emb, depth): "
                         f"missing {missing[:4]}, unexpected {unexpected[:4]}")
    pos = state_dict.get("pos_embed")
    if pos is not None and model.pos_embed is not None and pos.shape != model.pos_embed.shape:
        state_dict["pos_embed"] = resample_pos_embed(pos, model.patch_embed.grid_size)
    return state_dict


def resample_pos_embed(pos: torch.Tensor, grid) -> torch.Tensor:
    """A checkpoint's (1, 1 + side², C) position embedding (cls first) resampled to the patch ``grid``."""
    side = round((pos.shape[1] - 1) ** 0.5)
    if side * side != pos.shape[1] - 1:
        raise ValueError(f"checkpoint pos_embed has {pos.shape[1] - 1} patch positions, not a square grid")
    return resample_abs_pos_embed(pos, list(grid), [side, side], num_prefix_tokens=1)


def _cfg(**kwargs):
    return {"url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": None, "crop_pct": 0.875,
            "interpolation": "bicubic", "fixed_input_size": False, "mean": IMAGENET_DEFAULT_MEAN,
            "std": IMAGENET_DEFAULT_STD, "first_conv": "patch_embed.proj", "classifier": "head",
            "license": "apache-2.0", **kwargs}


# No weights are published under these names: pretrained=True needs pretrained_cfg_overlay=dict(file=...).
default_cfgs = generate_default_cfgs({name: _cfg() for name in (
    "lion_tiny_patch16_224", "lion_small_patch16_224", "lion_base_patch16_224")})


def _create_lion(variant, pretrained=False, **kwargs):
    if pretrained:
        source = {**(kwargs.get("pretrained_cfg") if isinstance(kwargs.get("pretrained_cfg"), dict) else {}),
                  **(kwargs.get("pretrained_cfg_overlay") or {})}
        if not (source.get("file") or source.get("state_dict")):
            raise ValueError(f"pretrained=True: no weights are published for {variant}; pass "
                             "pretrained_cfg_overlay=dict(file=PATH) (a state dict or a training checkpoint), "
                             "or pretrained=False")
    out_indices = kwargs.pop("out_indices", min(3, kwargs.get("depth", 12)))
    return build_model_with_cfg(LionVisionTransformer, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                                feature_cfg=dict(out_indices=out_indices, feature_cls="getter"), **kwargs)


@register_model
def lion_tiny_patch16_224(pretrained=False, **kwargs):
    return _create_lion("lion_tiny_patch16_224", pretrained,
                        **{**dict(patch_size=16, embed_dim=192, depth=12, num_heads=3, mlp_ratio=4, qkv_bias=True),
                           **kwargs})


@register_model
def lion_small_patch16_224(pretrained=False, **kwargs):
    return _create_lion("lion_small_patch16_224", pretrained,
                        **{**dict(patch_size=16, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4, qkv_bias=True),
                           **kwargs})


@register_model
def lion_base_patch16_224(pretrained=False, **kwargs):
    return _create_lion("lion_base_patch16_224", pretrained,
                        **{**dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4, qkv_bias=True),
                           **kwargs})
