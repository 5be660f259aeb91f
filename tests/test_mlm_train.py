"""Composer pretraining (mlm/main.py): demo fit, checkpoint + resume, 2-process gloo run, yaml validation."""
import glob
import os
import subprocess
import sys

import pytest
import torch
from composer.core import Callback
from conftest import moby_dick_rows

from mlm.main import build_trainer, cli
from mlm.src.bert_layers import LionBertForMaskedLM
from mlm.src.config_validation import ConfigError, validate
from mlm.src.config_validation import load_config as load_with_source
from mlm.src.create_bert import build_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, "yamls", "pretrain", "demo.yaml")
TINY = ["max_seq_len=32", "model.model_config.hidden_size=32", "model.model_config.num_hidden_layers=2",
        "model.model_config.num_attention_heads=2", "model.model_config.intermediate_size=64",
        "global_train_batch_size=16", "device_train_microbatch_size=16", "device_eval_batch_size=32",
        "eval_subset_num_batches=2", "console_log_interval=10ba", "optimizer.lr=3.0e-3", "save_interval=20ba",
        "save_num_checkpoints_to_keep=-1"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The first 150 Moby-Dick paragraphs shipped in mlm/data, converted to 32-token rows."""
    return moby_dick_rows(str(tmp_path_factory.mktemp("mlm_corpus")))


def load_config(path, overrides):
    return load_with_source(path, overrides)[0]


class LossRecorder(Callback):
    def __init__(self):
        self.losses = []

    def after_train_batch(self, state, logger):
        self.losses.append(float(state.loss))


def demo_trainer(overrides, recorder):
    cfg = load_config(DEMO, TINY + overrides)
    trainer = build_trainer(cfg)
    trainer.state.callbacks.append(recorder)
    return trainer


def test_demo_fit_loss_falls_checkpoint_and_resume(corpus, tmp_path):
    common = [f"data_local={corpus}", f"save_folder={tmp_path}/ckpt", "run_name=tiny", "eval_interval=20ba"]
    first, second = LossRecorder(), LossRecorder()
    trainer = demo_trainer(common + ["max_duration=20ba"], first)
    trainer.fit()
    accuracy = trainer.state.eval_metrics["eval"]["MaskedAccuracy"].compute()
    assert 0.0 < float(accuracy) < 1.0
    assert "LanguageCrossEntropy" in trainer.state.eval_metrics["eval"]
    assert os.path.isfile(f"{tmp_path}/ckpt/ep0-ba20-rank0.pt")
    trainer.close()

    resumed = demo_trainer(common + ["max_duration=40ba", "autoresume=true"], second)
    assert int(resumed.state.timestamp.batch) == 20
    resumed.fit()
    assert int(resumed.state.timestamp.batch) == 40 and len(second.losses) == 20
    assert glob.glob(f"{tmp_path}/ckpt/ep*-ba40-rank0.pt")
    start, end = sum(first.losses[:5]) / 5, sum(second.losses[-5:]) / 5
    assert end < start - 1.0, (start, end)
    assert sum(second.losses[:3]) / 3 < start - 0.5  # the resumed run starts from the trained weights
    resumed.close()


def test_explicit_load_path_restores_weights(corpus, tmp_path):
    trainer = demo_trainer([f"data_local={corpus}", f"save_folder={tmp_path}/a", "max_duration=5ba",
                            "save_interval=5ba", "eval_interval=5ba", "eval_subset_num_batches=1"], LossRecorder())
    trainer.fit()
    saved = {k: v.clone() for k, v in trainer.state.model.state_dict().items()}
    trainer.close()
    loaded = demo_trainer([f"data_local={corpus}", f"load_path={tmp_path}/a/ep0-ba5-rank0.pt",
                           "max_duration=5ba", "save_folder=null", "autoresume=false"], LossRecorder())
    assert int(loaded.state.timestamp.batch) == 5
    for k, v in loaded.state.model.state_dict().items():
        assert torch.equal(v, saved[k]), k
    loaded.close()


def test_composer_launcher_two_processes_gloo(corpus, tmp_path):
    composer = os.path.join(os.path.dirname(sys.executable), "composer")
    cmd = [composer, "-n", "2", "mlm/main.py", DEMO, *TINY, f"data_local={corpus}", "max_duration=4ba",
           "eval_interval=4ba", "eval_subset_num_batches=1", f"save_folder={tmp_path}/ckpt", "save_interval=4ba"]
    dist_vars = {"MASTER_PORT", "MASTER_ADDR", "WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK"}
    env = {k: v for k, v in os.environ.items() if k not in dist_vars}  # the launcher picks a free port
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "[batch=4/4]" in log and "time/sample_in_epoch: 64" in log  # global batch 16 = 2 ranks × 8
    assert "Eval metrics/eval/MaskedAccuracy" in log
    assert os.path.isfile(f"{tmp_path}/ckpt/ep0-ba4-rank0.pt")


def test_bad_or_missing_fields_fail_with_one_clear_message(capsys):
    with pytest.raises(SystemExit) as err:
        cli([DEMO, "optimizer.name=sgd"])
    assert "optimizer.name" in str(err.value) and "decoupled_adamw" in str(err.value)
    cfg = load_config(DEMO, [])
    del cfg.scheduler["t_warmup"]
    with pytest.raises(ConfigError, match="field 'scheduler.t_warmup' is required"):
        validate(cfg)
    for override, field in [("model.model_config.arch_type=nova", "model.model_config.arch_type"),
                            ("global_train_batch_size=0", "global_train_batch_size"),
                            ("train_loader.dataset.mlm_probability=1.5", "train_loader.dataset.mlm_probability"),
                            ("precision=fp8", "precision")]:
        with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
            validate(load_config(DEMO, [override]))
    with pytest.raises(ConfigError, match="data_local"):
        validate(load_config(os.path.join(REPO, "yamls", "pretrain", "lion-d-base.yaml"), []))


RECIPES = [(arch, size) for arch in ("bert", "lion-lit", "lion-d", "lion-s") for size in ("base", "large")]


@pytest.mark.parametrize("arch,size", RECIPES)
def test_pretrain_yamls_build_the_named_model_with_the_paper_recipe(arch, size):
    cfg = load_config(os.path.join(REPO, "yamls", "pretrain", f"{arch}-{size}.yaml"), ["data_local=/data/c4"])
    validate(cfg)
    config = build_config(cfg.model.pretrained_model_name, dict(cfg.model.model_config))
    assert config.arch_type == {"bert": "attention"}.get(arch, arch)
    assert config.layer_norm_after == (arch == "lion-lit")
    assert (config.hidden_size, config.num_hidden_layers) == ((768, 12) if size == "base" else (1024, 24))
    with torch.device("meta"):
        model = LionBertForMaskedLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    assert (100e6 < n_params < 125e6) if size == "base" else (320e6 < n_params < 345e6)
    assert cfg.optimizer.name == "decoupled_adamw" and cfg.optimizer.lr == (8e-4 if size == "base" else 2e-4)
    assert list(cfg.optimizer.betas) == [0.9, 0.98] and cfg.optimizer.eps == 1e-6 and cfg.optimizer.weight_decay == 1e-5
    scheduler = cfg.scheduler
    assert (scheduler.name, scheduler.t_warmup, scheduler.alpha_f) == ("linear_decay_with_warmup", "0.06dur", 0.02)
    assert (cfg.global_train_batch_size, cfg.max_duration, cfg.max_seq_len) == (4096, "286720000sp", 128)
    assert (cfg.train_loader.dataset.mlm_probability, cfg.eval_loader.dataset.mlm_probability) == (0.3, 0.15)
    assert cfg.precision == "amp_bf16" and cfg.tokenizer_name == "bert-base-uncased"


def test_optimizer_and_scheduler_names_build_the_composer_objects():
    from composer.optim import (
        ConstantWithWarmupScheduler,
        CosineAnnealingWithWarmupScheduler,
        DecoupledAdamW,
        LinearWithWarmupScheduler,
    )
    from omegaconf import OmegaConf

    from mlm.src.builders import build_optimizer, build_scheduler

    params = torch.nn.Linear(2, 2)
    opt = build_optimizer("decoupled_adamw", params.parameters(), 1e-3, betas=[0.9, 0.98])
    assert isinstance(opt, DecoupledAdamW) and opt.defaults["betas"] == (0.9, 0.98)
    opt = build_optimizer("adamw", params.parameters(), 1e-3, weight_decay=0.1)
    assert type(opt) is torch.optim.AdamW and opt.defaults["weight_decay"] == 0.1
    for name, cls in [("linear_decay_with_warmup", LinearWithWarmupScheduler),
                      ("cosine_with_warmup", CosineAnnealingWithWarmupScheduler),
                      ("constant_with_warmup", ConstantWithWarmupScheduler)]:
        sched = build_scheduler(OmegaConf.create({"name": name, "t_warmup": "0.06dur", "alpha_f": 0.02}))
        assert isinstance(sched, cls)


@pytest.mark.parametrize("arch,length", [(a, n) for a in ("lion-d", "lion-s") for n in ("2k", "8k")])
def test_long_context_pretrain_yamls(arch, length):
    """The 2k / 8k yamls: the base recipe's tokens per step and in all, attention dropout 0, form auto."""
    cfg = load_config(os.path.join(REPO, "yamls", "pretrain", f"{arch}-base-{length}.yaml"), ["data_local=/data/c4"])
    validate(cfg)
    config = build_config(cfg.model.pretrained_model_name, dict(cfg.model.model_config))
    assert config.arch_type == arch and config.form == "auto" and config.attention_probs_dropout_prob == 0.0
    L = {"2k": 2048, "8k": 8192}[length]
    assert cfg.max_seq_len == L and cfg.global_train_batch_size * L == 4096 * 128
    assert int(cfg.max_duration.removesuffix("sp")) * L == 286720000 * 128
