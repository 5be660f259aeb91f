"""The paper's baselines: Hydra (MLM, mlm/src/hydra.py) and Vim (vision, image_classification/models_vim.py).

Each is checked against a plain sequential scan written here, for padding (Hydra), gradients, a few real training
steps and a save/load round trip.
"""
import itertools
import math
import os

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from conftest import moby_dick_rows

import image_classification.models_vim  # noqa: F401  (registers vim_*)
from image_classification.datasets import FMNIST_MINI_NPZ
from image_classification.models_vim import BiMamba, selective_scan
from mlm.src.bert_layers import LionBertConfig, LionBertForMaskedLM
from mlm.src.hydra import HydraMixer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORMS = ("parallel", "chunk", "rnn")


# ----------------------------------------------------------------------------------------------------------- Hydra

def hydra_config(**kw):
    base = dict(arch_type="hydra", vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0, hydra_d_state=8, hydra_head_dim=16, chunk_size=4)
    return LionBertConfig(**{**base, **kw})


def randomise_ssm(mixer, seed=0):
    """Decays far from 1 and different per head, so that a wrong index shift or gate shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        mixer.A_log.copy_(torch.randn(mixer.nheads, generator=g) * 0.5)
        mixer.dt_bias.copy_(torch.randn(mixer.nheads, generator=g))
        mixer.D.copy_(torch.randn(mixer.nheads, generator=g))


def hydra_reference(m: HydraMixer, u: torch.Tensor) -> torch.Tensor:
    """Hydra's published forward, with a per-token state recurrence per direction (no padding)."""
    b, L, _ = u.shape
    H, P, N, E = m.nheads, m.head_dim, m.d_state, m.d_inner
    z, xBC, dt = torch.split(u @ m.in_proj.weight.T, [E, E + 4 * N, 2 * H], dim=-1)
    K, pad = m.d_conv, m.d_conv // 2
    xp = F.pad(xBC, (0, 0, pad, pad))
    w = m.conv1d.weight[:, 0]  # (channels, K)
    xBC = F.silu(torch.stack([(xp[:, t:t + K] * w.T).sum(1) + m.conv1d.bias for t in range(L)], dim=1))
    x, Bf, Cf, Bb, Cb = torch.split(xBC, [E, N, N, N, N], dim=-1)
    dt = F.softplus(dt + m.dt_bias.repeat(2))  # one bias per head, shared by both directions
    A = -torch.exp(m.A_log)

    def scan(x, B, C, dt):  # h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_tᵀ ; y_t = h_t C_t
        h = torch.zeros(b, H, P, N, dtype=u.dtype)
        ys = []
        for t in range(L):
            h = torch.exp(dt[:, t] * A)[..., None, None] * h + \
                (dt[:, t, :, None] * x[:, t].view(b, H, P))[..., None] * B[:, t, None, None, :]
            ys.append((h * C[:, t, None, None, :]).sum(-1))
        y = torch.stack(ys, dim=1)                      # (b, L, H, P)
        return torch.cat([torch.zeros_like(y[:, :1]), y[:, :-1]], dim=1)  # roll by one, first row zero

    y = scan(x, Bf, Cf, dt[..., :H]) + scan(x.flip(1), Bb.flip(1), Cb.flip(1), dt[..., H:].flip(1)).flip(1)
    y = y + x.view(b, L, H, P) * (x @ m.fc_D.weight.T + m.D)[..., None]
    y = y.reshape(b, L, E)
    y = y / torch.sqrt(y.pow(2).mean(-1, keepdim=True) + m.norm.eps) * m.norm.weight * F.silu(z)
    return y @ m.out_proj.weight.T


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("batch,length", [(1, 13), (2, 9)])
def test_hydra_mixer_matches_sequential_scan(form, batch, length):
    torch.manual_seed(0)
    mixer = HydraMixer(hydra_config(form=form)).double()
    randomise_ssm(mixer)
    u = torch.randn(batch, length, 32, dtype=torch.float64)
    torch.testing.assert_close(mixer(u), hydra_reference(mixer, u), rtol=1e-9, atol=1e-10)


def tiny_hydra_mlm(**kw):
    torch.manual_seed(0)
    model = LionBertForMaskedLM(hydra_config(**kw)).double().eval()
    for layer in model.bert.encoder.layer:
        randomise_ssm(layer.mixer, seed=1)
    return model


@pytest.mark.parametrize("form", ["parallel", "chunk"])
def test_hydra_padding_never_changes_real_tokens(form):
    model = tiny_hydra_mlm(form=form)
    lengths, L = (11, 6), 11
    ids = torch.randint(5, 1000, (2, L))
    mask = torch.arange(L)[None] < torch.tensor(lengths)[:, None]
    out = model.bert(ids, mask.long()).last_hidden_state
    for i, n in enumerate(lengths):
        alone = model.bert(ids[i:i + 1, :n]).last_hidden_state
        torch.testing.assert_close(out[i:i + 1, :n], alone, rtol=1e-9, atol=1e-10)
    other = ids.clone()
    other[1, 6:] = 7  # other content at the padded positions
    torch.testing.assert_close(model.bert(other, mask.long()).last_hidden_state[1, :6], out[1, :6])
    left = torch.cat([other[1:, 6:], ids[1:, :6]], dim=1)  # the same 6 tokens, padded on the left
    out_left = model.bert(left, mask[1:].flip(1).long()).last_hidden_state
    torch.testing.assert_close(out_left[:, 5:], out[1:2, :6], rtol=1e-9, atol=1e-10)


def test_hydra_gradients_reach_every_parameter_and_init():
    model = LionBertForMaskedLM(hydra_config())
    mixer = model.bert.encoder.layer[0].mixer
    assert torch.all(mixer.A_log == 0) and torch.all(mixer.D == 1)
    dt = F.softplus(mixer.dt_bias)
    assert torch.all((dt > 0.9e-3) & (dt < 0.11))
    assert mixer.conv1d.weight.std() > 0.1  # PyTorch's conv init (bound 1/√7), not the 0.02 normal of the linears
    assert "bert.embeddings.position_embeddings.weight" not in dict(model.named_parameters())  # as Hydra: none
    ids = torch.randint(5, 1000, (2, 12))
    labels = torch.where(torch.rand(ids.shape) < 0.5, ids, torch.full_like(ids, -100))
    labels[0, 0] = ids[0, 0]
    model(ids, torch.ones_like(ids), labels=labels).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_hydra_save_pretrained_round_trip(tmp_path):
    model = tiny_hydra_mlm(hydra_d_conv=5, form="chunk")
    model.save_pretrained(tmp_path)
    loaded = LionBertForMaskedLM.from_pretrained(tmp_path, dtype=torch.float64).eval()
    assert loaded.config.arch_type == "hydra" and loaded.config.hydra_d_conv == 5
    ids = torch.randint(5, 1000, (2, 10))
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_hydra_bad_settings_fail_clearly():
    with pytest.raises(ValueError, match="hydra_d_conv must be odd"):
        LionBertForMaskedLM(hydra_config(hydra_d_conv=4))
    with pytest.raises(ValueError, match="hydra_head_dim"):
        LionBertForMaskedLM(hydra_config(hydra_head_dim=48))


@pytest.mark.parametrize("size,layers", [("base", 23), ("large", 45)])
def test_hydra_yamls_validate_and_match_berts_parameter_count(size, layers):
    """Hydra's recipe: no MLP, about twice BERT's depth for BERT's encoder size (built on the meta device)."""
    from mlm.main import load_config
    from mlm.src.config_validation import validate
    from mlm.src.create_bert import build_config

    cfg, source = load_config(os.path.join(REPO, "yamls", "pretrain", f"hydra-{size}.yaml"), ["data_local=/data"])
    validate(cfg, source)
    glue, _ = load_config(os.path.join(REPO, "yamls", "finetune-glue", f"hydra-{size}.yaml"), [])
    assert dict(glue.model.model_config) == {k: v for k, v in cfg.model.model_config.items() if k != "layer_norm_after"}
    config = build_config(cfg.model.pretrained_model_name, cfg.model.model_config)
    assert config.arch_type == "hydra" and config.num_hidden_layers == layers and config.hydra_d_state == 64
    with torch.device("meta"):
        hydra = LionBertForMaskedLM(config).bert.encoder
        bert = LionBertForMaskedLM(build_config(cfg.model.pretrained_model_name, {})).bert.encoder
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert abs(count(hydra) / count(bert) - 1) < 0.05


def test_hydra_pretraining_loss_falls_on_the_offline_corpus(tmp_path):
    """The demo pretraining yaml (Composer) with arch_type hydra, on Moby-Dick rows."""
    from mlm.main import build_trainer, load_config

    rows = moby_dick_rows(str(tmp_path), paragraphs=80, max_seq_len=32)
    cfg, source = load_config(os.path.join(REPO, "yamls", "pretrain", "demo.yaml"), [
        f"data_local={rows}", f"save_folder={tmp_path / 'ckpt'}", "max_seq_len=32",
        "model.model_config.arch_type=hydra", "model.model_config.hidden_size=32",
        "model.model_config.num_hidden_layers=2", "model.model_config.hydra_head_dim=16",
        "model.model_config.hydra_d_state=16", "global_train_batch_size=16", "device_train_microbatch_size=16",
        "max_duration=15ba", "eval_interval=15ba", "eval_subset_num_batches=1", "optimizer.lr=1.0e-2",
        "save_interval=15ba", "console_log_interval=100ba"])
    trainer = build_trainer(cfg, source)
    losses = []
    from composer.core import Callback

    class Record(Callback):
        def after_train_batch(self, state, logger):
            losses.append(float(state.loss))

    trainer.state.callbacks.append(Record())
    trainer.fit()
    assert trainer.state.model.model.config.arch_type == "hydra"
    trainer.close()
    start, end = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert end < start - 1.0, (start, end)


# ------------------------------------------------------------------------------------------------------------- Vim

def sequential_selective_scan(x, dt, A, B, C, D):
    b, L, d = x.shape
    h = torch.zeros(b, d, A.shape[1], dtype=x.dtype)
    ys = []
    for t in range(L):
        h = torch.exp(dt[:, t, :, None] * A) * h + (dt[:, t] * x[:, t])[..., None] * B[:, t, None, :]
        ys.append((h * C[:, t, None, :]).sum(-1) + D * x[:, t])
    return torch.stack(ys, dim=1)


@pytest.mark.parametrize("length", [1, 2, 7, 13])
def test_selective_scan_matches_sequential(length):
    g = torch.Generator().manual_seed(length)
    b, d, N = 2, 6, 5
    x, B, C = (torch.randn(b, length, k, generator=g, dtype=torch.float64) for k in (d, N, N))
    dt = F.softplus(torch.randn(b, length, d, generator=g, dtype=torch.float64))
    A = -torch.rand(d, N, generator=g, dtype=torch.float64) * 3
    D = torch.randn(d, generator=g, dtype=torch.float64)
    expected = sequential_selective_scan(x, dt, A, B, C, D)
    for scan in ("parallel", "sequential"):
        torch.testing.assert_close(selective_scan(x, dt, A, B, C, D, scan), expected, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="scan must be one of"):
        selective_scan(x, dt, A, B, C, D, "cuda")


def bimamba_reference(m: BiMamba, u):
    """Vim's bimamba-v2 mixer with the sequential scan and an explicit causal convolution."""
    x, z = (u @ m.in_proj.weight.T).chunk(2, dim=-1)

    def direction(ssm, x, z):
        K, L = ssm.conv1d.kernel_size[0], x.shape[1]
        xp = F.pad(x, (0, 0, K - 1, 0))
        w = ssm.conv1d.weight[:, 0]
        x = F.silu(torch.stack([(xp[:, t:t + K] * w.T).sum(1) + ssm.conv1d.bias for t in range(L)], dim=1))
        dt, B, C = torch.split(x @ ssm.x_proj.weight.T, [ssm.dt_rank, ssm.d_state, ssm.d_state], dim=-1)
        dt = F.softplus(dt @ ssm.dt_proj.weight.T + ssm.dt_proj.bias)
        return sequential_selective_scan(x, dt, -torch.exp(ssm.A_log), B, C, ssm.D) * F.silu(z)

    y = direction(m.fwd, x, z) + direction(m.bwd, x.flip(1), z.flip(1)).flip(1)
    return (y / 2) @ m.out_proj.weight.T


@pytest.mark.parametrize("batch,length", [(1, 11), (3, 6)])
def test_bimamba_matches_sequential_reference(batch, length):
    torch.manual_seed(0)
    m = BiMamba(16, d_state=4, d_conv=4).double()
    u = torch.randn(batch, length, 16, dtype=torch.float64)
    torch.testing.assert_close(m(u), bimamba_reference(m, u), rtol=1e-10, atol=1e-12)


def tiny_vim(**kw):
    return timm.create_model("vim_tiny_patch16_224", **{**dict(depth=2, img_size=32, patch_size=8, embed_dim=32,
                                                               num_classes=10, drop_path_rate=0.0), **kw})


def test_vim_shapes_middle_class_token_and_gradients():
    torch.manual_seed(0)
    model = tiny_vim()
    x = torch.randn(2, 3, 32, 32)
    feats = model.forward_features(x)
    assert feats.shape == (2, 17, 32) and model.cls_position == 8
    assert model(x).shape == (2, 10)
    torch.testing.assert_close(model.forward_head(feats, pre_logits=True), feats[:, 8])
    F.cross_entropy(model(x), torch.tensor([1, 2])).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing
    published = timm.create_model("vim_small_patch16_224", num_classes=1000)
    assert len(published.layers) == 24 and published.embed_dim == 384
    assert published.layers[0].mixer.fwd.A_log.shape == (768, 16) and published.layers[0].mixer.fwd.dt_rank == 24
    assert 24e6 < sum(p.numel() for p in published.parameters()) < 28e6  # Vim-S: 26M


def test_vim_scans_and_recomputation_give_the_same_gradients():
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    grads = []
    for scan, recompute in (("sequential", False), ("parallel", True)):
        torch.manual_seed(0)
        model = tiny_vim(depth=1, scan=scan, recompute_scan=recompute).double()
        model(x).square().sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-9, atol=1e-12, msg=name)


def test_vim_trains_on_fashion_mnist_and_state_dict_round_trips(tmp_path):
    torch.manual_seed(0)
    with np.load(FMNIST_MINI_NPZ) as npz:
        images = torch.as_tensor(npz["train_images"][:128]).float().div(255).sub(0.286).div(0.353)[:, None]
        labels = torch.as_tensor(npz["train_labels"][:128]).long()
    model = tiny_vim(img_size=28, patch_size=7, in_chans=1, embed_dim=32, depth=1, num_heads=3)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _, i in itertools.product(range(4), range(0, 128, 32)):  # 4 epochs of 4 batches
        loss = F.cross_entropy(model(images[i:i + 32]), labels[i:i + 32])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert math.isfinite(losses[-1]) and sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.5, losses
    path = tmp_path / "vim.pth"
    torch.save(model.state_dict(), path)
    again = tiny_vim(img_size=28, patch_size=7, in_chans=1, embed_dim=32, depth=1)
    again.load_state_dict(torch.load(path), strict=True)
    model.eval(), again.eval()
    torch.testing.assert_close(again(images[:8]), model(images[:8]), rtol=0, atol=0)


def test_vim_refuses_pretrained_and_bad_sizes():
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model("vim_tiny_patch16_224", pretrained=True)
    with pytest.raises(ValueError, match="d_state must be an integer"):
        tiny_vim(d_state=0)
    with pytest.raises(ValueError, match="scan must be one of"):
        tiny_vim(scan="cuda")
