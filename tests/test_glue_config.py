"""Finetuning yamls and the checks that fail before any training (unknown task, missing checkpoint, arch_type)."""
import glob
import os
import subprocess
import sys

import pytest
from composer import Trainer
from composer.utils import reproducibility
from omegaconf import OmegaConf

from mlm.src.config_validation import ConfigError
from mlm.src.create_bert import create_bert_mlm
from mlm.src.glue.config import job_configs, task_order, validate
from mlm.src.glue.runner import train

PRODUCTION = sorted(glob.glob("yamls/finetune-glue/*-base.yaml") + glob.glob("yamls/finetune-glue/*-large.yaml"))
TINY = dict(arch_type="lion-d", hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=128)


@pytest.fixture(scope="module")
def lion_d_checkpoint(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("ckpt") / "lion-d.pt")
    reproducibility.seed_all(0)
    trainer = Trainer(model=create_bert_mlm("bert-base-uncased", TINY), max_duration="0ba", device="cpu")
    trainer.save_checkpoint(path)
    trainer.close()
    return path


def demo(tmp_path, **overrides):
    cfg = OmegaConf.load("yamls/finetune-glue/demo.yaml")
    cfg.model.model_config = dict(TINY)
    cfg.save_finetune_checkpoint_prefix = str(tmp_path / "ft")
    cfg.data.cache_dir = str(tmp_path / "cache")
    return OmegaConf.merge(cfg, overrides)


def test_one_yaml_per_architecture_and_size():
    names = {os.path.basename(p) for p in PRODUCTION}
    archs = ("bert", "lion-lit", "lion-d", "lion-s", "hydra")
    assert names == {f"{a}-{s}.yaml" for a in archs for s in ("base", "large")}


@pytest.mark.parametrize("path", PRODUCTION)
def test_production_yamls_have_the_published_settings(path):
    cfg = validate(OmegaConf.load(path))  # the FinetuneConfig job_configs takes
    arch, size = os.path.basename(path)[:-5].rsplit("-", 1)
    pretrain = OmegaConf.load(f"yamls/pretrain/{arch}-{size}.yaml").model
    assert cfg.model.model_config.arch_type == pretrain.model_config.arch_type == (
        "attention" if arch == "bert" else arch)
    assert cfg.model.model_config.get("layer_norm_after", False) == pretrain.model_config.layer_norm_after
    assert cfg.model.pretrained_model_name == pretrain.pretrained_model_name == f"bert-{size}-uncased"
    assert list(cfg.tasks) == ["mnli", "qnli", "qqp", "sst2", "cola", "rte", "mrpc", "stsb"]
    assert task_order(cfg) == (["mnli", "qnli", "qqp", "sst2", "cola"], ["rte", "mrpc", "stsb"])
    for job in job_configs(cfg, list(cfg.tasks)):
        kw = job["trainer_kwargs"]
        assert 1e-5 <= kw["lr"] <= 8e-5 and 1e-6 <= kw["wd"] <= 8e-6 and kw["max_sequence_length"] == 128
    for task in ("rte", "mrpc", "stsb"):
        assert list(cfg.tasks[task].seeds) == [19, 8364, 717, 10536, 90166]
    assert cfg.tasks.mnli.trainer_kwargs.save_num_checkpoints_to_keep == 1
    assert cfg.parallel is True and cfg.data.data_dir is None  # real GLUE from the hub, one job per GPU


def test_demo_yaml_matches_the_pretraining_demo():
    cfg = validate(OmegaConf.load("yamls/finetune-glue/demo.yaml"))
    pretrain = OmegaConf.load("yamls/pretrain/demo.yaml")
    sizes = ("arch_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
             "max_position_embeddings")
    assert {k: cfg.model.model_config[k] for k in sizes} == {k: pretrain.model.model_config[k] for k in sizes}
    assert cfg.starting_checkpoint_load_path == f"{pretrain.save_folder}/latest-rank0.pt".replace("${run_name}", "demo")
    assert task_order(cfg) == (["rt_sentiment", "moby_sentence_order"],
                               ["sotu_next_sentence", "moby_sentence_distance"])


@pytest.mark.parametrize("override, message", [
    ({"tasks": {"mnlii": {}}}, r"field 'tasks.mnlii' is unknown; did you mean 'mnli'\? allowed: .*, mnli, "),
    ({"tasks": {"rt_sentiment": {"trainer_kwargs": {"learning_rate": 1}}}},
     r"field 'tasks.rt_sentiment.trainer_kwargs.learning_rate' is unknown; allowed: batch_size, "),
    ({"model": {"model_config": {"arch_type": "lion"}}},
     r"field 'model.model_config.arch_type' must be one of \['attention', 'lion-lit'"),
    ({"tasks": {"rt_sentiment": {"trainer_kwargs": {"optim_name": "sgd"}}}}, "optim_name' must be one of"),
    ({"tasks": {"moby_sentence_order": {"trainer_kwargs": {"save_num_checkpoints_to_keep": 0}}}},
     "sotu_next_sentence starts from the moby_sentence_order checkpoint"),
    ({"precision": "fp8"}, "field 'precision' must be one of"),
])
def test_bad_fields_fail_with_one_clear_message(tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        validate(demo(tmp_path, **override))


def test_missing_checkpoint_fails_before_training(tmp_path):
    with pytest.raises(ConfigError, match="checkpoint file .*nowhere.pt not found"):
        train(demo(tmp_path, starting_checkpoint_load_path=str(tmp_path / "nowhere.pt")))
    assert not os.path.exists(tmp_path / "ft")


def test_arch_type_mismatch_fails_before_training(tmp_path, lion_d_checkpoint):
    cfg = demo(tmp_path, starting_checkpoint_load_path=lion_d_checkpoint)
    cfg.model.model_config.arch_type = "lion-s"
    with pytest.raises(ConfigError, match="arch_type is 'lion-s' but checkpoint .* with arch_type 'lion-d'"):
        train(cfg)
    cfg.model.model_config.arch_type = "lion-d"
    cfg.model.model_config.hidden_size = 64  # right arch, wrong size: caught by the trial load
    with pytest.raises(ConfigError, match="is a model of another size"):
        train(cfg)
    assert not os.path.exists(tmp_path / "ft")


def test_cli_prints_one_line_and_exits_nonzero(tmp_path, lion_d_checkpoint):
    out = subprocess.run([sys.executable, "mlm/glue.py", "yamls/finetune-glue/demo.yaml",
                          f"starting_checkpoint_load_path={lion_d_checkpoint}", "model.model_config.arch_type=lion-lit",
                          f"save_finetune_checkpoint_prefix={tmp_path}/ft"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("glue.py: yamls/finetune-glue/demo.yaml: model.model_config.arch_type is 'lion-lit' but "
                           "checkpoint"), out.stderr[-2000:]
    assert "Traceback" not in out.stderr and not os.path.exists(tmp_path / "ft")
