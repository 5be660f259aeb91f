"""Hydra (Hwang et al., 2024): the quasiseparable bidirectional SSM mixer, the MLM baseline of the LION paper.

One mixer per layer (``arch_type: hydra``); the BERT layer around it is post-norm, LayerNorm(x + mixer(x)), with no
MLP, as in Hydra's M2-BERT fork (which uses about twice as many layers as BERT for the same parameter count).

    in_proj(u) → z | xBC | dt              dt: one value per head for each direction
    xBC ← SiLU(depthwise non-causal conv(xBC)),  xBC = x | B_fw | C_fw | B_bw | C_bw
    dt ← softplus(dt + dt_bias),  A = −exp(A_log)  (one scalar decay per head)
    y = shift→(SSD(x; B_fw, C_fw, dt_fw)) + flip(shift→(SSD(flip x; B_bw, C_bw, dt_bw))) + x·(fc_D(x) + D)
    out = out_proj(RMSNorm(y) · silu(z))

The Mamba-2 SSD scan is causal masked linear attention, y_i = Σ_{j≤i} (C_i·B_j dt_j) exp(A Σ_{t=j+1}^{i} dt_t) x_j.
With LION's mask convention (docs/lion.md §1, ``lion.masks``: M_ij = Π_{s=j}^{i−1} g_s for i ≥ j) this is the
lower triangle of LION's masked scores with q = C, k = B·dt, v = x and gates shifted by one token, g_s = a_{s+1}
(a_t = exp(dt_t A)). The shift after the scan makes the forward part see strictly earlier tokens and the backward
part strictly later ones; the diagonal is the D term. The forms are LION's: 'parallel' (masked L×L scores),
'chunk' (LION's chunked causal scan) and 'rnn' (LION's recurrent scan); all give the same result.

Padding: padded positions are zeroed before the convolution and get dt = 0 (unit gate, zero key), so real tokens see
exactly what they would see without the padding (right or left padding).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer

from lion.masks import exclusive_cumsum, upcast
from lion.ops.chunk import _strict_causal
from lion.ops.recurrent import _scan

# config fields of arch_type 'hydra' (extra LionBertConfig attributes, saved with the config) and their defaults
HYDRA_DEFAULTS = {"hydra_d_state": 64, "hydra_head_dim": 64, "hydra_expand": 2, "hydra_d_conv": 7}
DT_MIN, DT_MAX, DT_INIT_FLOOR = 1e-3, 1e-1, 1e-4


def hydra_settings(config) -> dict:
    """The Hydra fields of ``config`` (defaults filled in), checked: one message per bad field."""
    s = {k: getattr(config, k, v) for k, v in HYDRA_DEFAULTS.items()}
    for key, value in s.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{key} must be an integer ≥ 1, got {value!r}")
    if s["hydra_d_conv"] % 2 == 0:
        raise ValueError(f"hydra_d_conv must be odd (a centred, non-causal convolution), got {s['hydra_d_conv']}")
    d_inner = s["hydra_expand"] * config.hidden_size
    if d_inner % s["hydra_head_dim"]:
        raise ValueError(f"hydra_head_dim ({s['hydra_head_dim']}) must divide hydra_expand × hidden_size ({d_inner})")
    return s


def ssd_scan(x, B, C, dt, A, form: str = "chunk", chunk_size: int = 32) -> torch.Tensor:
    """Inclusive Mamba-2 SSD scan, one direction. x: (b, L, H, P); B, C: (b, L, N); dt: (b, L, H) ≥ 0; A: (H,) < 0.

    y_i = Σ_{j≤i} (C_i·B_j) dt_j exp(A_h Σ_{t=j+1}^{i} dt_t) x_j, computed in fp32 (at least) by LION's operators;
    returns (b, L, H, P) in fp32 (fp64 for fp64 inputs).
    """
    dtype = torch.promote_types(x.dtype, torch.float32)
    x, B, C, dt = (t.to(dtype) for t in (x, B, C, dt))
    v = x.permute(0, 2, 1, 3)                                      # (b, H, L, P)
    dt = dt.transpose(1, 2)                                        # (b, H, L)
    log_a = dt * A.to(dtype)[None, :, None]                        # log a_t = dt_t A ≤ 0
    log_g = F.pad(log_a[..., 1:], (0, 1))                          # g_s = a_{s+1}: LION's key-side gate
    if form == "parallel":
        L = v.shape[2]
        lower = torch.ones(L, L, dtype=torch.bool, device=v.device).tril()
        P = exclusive_cumsum(log_g)                                # lower triangle of lion.masks.log_mask
        decay = (P[..., :, None] - P[..., None, :]).masked_fill(~lower, float("-inf")).exp()
        return (((C @ B.transpose(1, 2))[:, None] * dt[:, :, None, :] * decay) @ v).permute(0, 2, 1, 3)
    if form == "auto":  # LION's automatic choice; Hydra's scan has only its torch forms, of which chunk is the fastest
        form = "chunk"
    if form not in ("chunk", "rnn"):
        raise ValueError(f"form must be one of ['parallel', 'rnn', 'chunk', 'auto'], got {form!r}")
    q = C[:, None].expand(-1, v.shape[1], -1, -1)                 # (b, H, L, N): one C for all heads
    k = B[:, None] * dt[..., None]                                 # (b, H, L, N)
    if form == "chunk":
        y = _strict_causal(q, k, v, log_g, chunk_size) + (q * k).sum(-1, keepdim=True) * v
    else:
        y = _scan(q, k, v, log_g.exp())
    return y.permute(0, 2, 1, 3)


def shift_right(y: torch.Tensor) -> torch.Tensor:
    """out_i = y_{i−1}, out_0 = 0 along dim 1: token i then sees strictly earlier tokens only."""
    return F.pad(y[:, :-1], (0, 0, 0, 0, 1, 0))


class HydraGatedRMSNorm(nn.Module):
    """RMSNorm(y) · weight · silu(z) (normalise first, then gate), in fp32 at least."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, y, z):
        dtype = y.dtype
        y, z = upcast(y), upcast(z)
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps) * upcast(self.weight)
        return (y * F.silu(z)).to(dtype)


class HydraMixer(nn.Module):
    def __init__(self, config):
        super().__init__()
        s = hydra_settings(config)
        self.config = config
        self.d_model = config.hidden_size
        self.d_state, self.head_dim, self.d_conv = s["hydra_d_state"], s["hydra_head_dim"], s["hydra_d_conv"]
        self.d_inner = s["hydra_expand"] * self.d_model
        self.nheads = self.d_inner // self.head_dim
        conv_dim = self.d_inner + 4 * self.d_state                  # x | B_fw | C_fw | B_bw | C_bw
        self.in_proj = nn.Linear(self.d_model, self.d_inner + conv_dim + 2 * self.nheads, bias=False)
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, self.d_conv, groups=conv_dim, padding=self.d_conv // 2)
        self.dt_bias = nn.Parameter(torch.empty(self.nheads))
        self.A_log = nn.Parameter(torch.empty(self.nheads))
        self.D = nn.Parameter(torch.empty(self.nheads))
        self.fc_D = nn.Linear(self.d_inner, self.nheads, bias=False)
        self.norm = HydraGatedRMSNorm(self.d_inner, eps=1e-5)
        self.out_proj = nn.Linear(self.d_inner, self.d_model, bias=False)
        self.init_ssm_parameters()
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True

    @torch.no_grad()
    def init_ssm_parameters(self):
        """Hydra's initialisation: dt = softplus(dt_bias) log-uniform in [1e-3, 0.1], A = −1, D = 1, and PyTorch's
        default for the convolution (the BERT initialiser only re-draws the linear layers)."""
        u = torch.rand(self.nheads, device=self.dt_bias.device)
        dt = torch.exp(u * (math.log(DT_MAX) - math.log(DT_MIN)) + math.log(DT_MIN)).clamp(min=DT_INIT_FLOOR)
        init.copy_(self.dt_bias, dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        init.zeros_(self.A_log)
        init.ones_(self.D)
        init.kaiming_uniform_(self.conv1d.weight, a=math.sqrt(5))
        bound = 1.0 / math.sqrt(self.d_conv)  # fan_in of a depthwise filter
        init.uniform_(self.conv1d.bias, -bound, bound)

    def forward(self, u: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """u: (b, L, d_model); attention_mask: (b, L) bool, True for real tokens."""
        b, L, _ = u.shape
        H, P, N = self.nheads, self.head_dim, self.d_state
        z, xBC, dt = torch.split(self.in_proj(u), [self.d_inner, self.d_inner + 4 * N, 2 * H], dim=-1)
        keep = None if attention_mask is None else attention_mask[..., None].to(xBC.dtype)
        if keep is not None:
            xBC = xBC * keep                                         # padded tokens look like the conv's zero padding
        xBC = F.silu(self.conv1d(xBC.transpose(1, 2)).transpose(1, 2))
        x, B_fw, C_fw, B_bw, C_bw = torch.split(xBC, [self.d_inner, N, N, N, N], dim=-1)
        dt = F.softplus(upcast(dt).unflatten(-1, (2, H)) + upcast(self.dt_bias)).flatten(-2)  # (b, L, 2H): fw | bw
        if keep is not None:
            dt = dt * keep.to(dt.dtype)                              # unit gate, zero key at padded tokens
        A = -torch.exp(upcast(self.A_log))
        xh = x.view(b, L, H, P)
        form, chunk = self.config.form, self.config.chunk_size or 32  # None: automatic, 32 in torch
        y_fw = ssd_scan(xh, B_fw, C_fw, dt[..., :H], A, form, chunk)
        y_bw = ssd_scan(xh.flip(1), B_bw.flip(1), C_bw.flip(1), dt[..., H:].flip(1), A, form, chunk)
        y = shift_right(y_fw) + shift_right(y_bw).flip(1)
        y = y + xh * (self.fc_D(x) + self.D)[..., None]
        y = self.norm(y.reshape(b, L, self.d_inner).to(u.dtype), z)
        return self.out_proj(y)


class HydraLayer(GradientCheckpointingLayer):
    """Post-norm residual mixer block of Hydra's BERT: LayerNorm(x + Hydra(x))."""

    def __init__(self, config):
        super().__init__()
        self.mixer = HydraMixer(config)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=1e-5)

    def forward(self, hidden_states, attention_mask, output_attentions=False):
        """Returns (hidden states, None): the encoder's layer contract; Hydra has no attention matrix to return."""
        if output_attentions:
            raise ValueError("output_attentions=True: arch_type 'hydra' has no attention matrix; "
                             "allowed only for 'attention' and the lion-* arch types")
        return self.LayerNorm(self.mixer(hidden_states, attention_mask) + hidden_states), None
