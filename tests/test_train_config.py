"""The yaml schemas (mlm/src/train_config.py): every shipped yaml merges into its schema, defaults come from the
schema, and OmegaConf's own errors (types, nulls, list items, ???) become the one-line ConfigError."""
import glob
import os

import pytest
from omegaconf import OmegaConf

from mlm.src.config_validation import ConfigError, load_config, validate, validate_finetune
from mlm.src.train_config import FinetuneConfig, PretrainConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, "yamls", "pretrain", "demo.yaml")


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "yamls", "pretrain", "*.yaml"))))
def test_every_pretraining_yaml_is_a_pretrain_config(path):
    cfg = validate(*load_config(path, ["data_local=/data/c4"]))
    assert OmegaConf.get_type(cfg) is PretrainConfig and OmegaConf.get_type(cfg.optimizer).__name__ == "OptimizerConfig"


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "yamls", "finetune-glue", "*.yaml"))))
def test_every_finetuning_yaml_is_a_finetune_config(path):
    cfg = validate_finetune(*load_config(path, []))
    assert OmegaConf.get_type(cfg) is FinetuneConfig and cfg.tasks


def test_fields_the_yaml_leaves_out_take_the_schemas_defaults():
    cfg = validate(*load_config(DEMO, []))
    assert (cfg.train_subset_num_batches, cfg.save_interval, cfg.dist_timeout) == (-1, "100ba", 300.0)
    assert (cfg.load_path, cfg.save_overwrite, cfg.train_loader.prefetch_factor) == (None, False, 2)
    assert cfg.train_loader.dataset.shuffle is True and cfg.eval_loader.dataset.shuffle is False
    assert cfg.save_folder == "./local-pretrain-checkpoints/demo"  # interpolations still resolve


@pytest.mark.parametrize("override, expected", [
    ("optimizer.lr=abc", "field 'optimizer.lr' must be of type float, got 'abc'"),
    ("progress_bar=maybe", "field 'progress_bar' must be of type bool, got 'maybe'"),
    ("progress_bar=null", "field 'progress_bar' may not be null"),
    ("model=null", "field 'model' is required"),
    ("optimizer.betas=[0.9,x]", "field 'optimizer.betas' must be of type list, got 'x' at [1]"),
    ("data_prep.local_files=3", "field 'data_prep.local_files' must be of type list, got 3"),
    ("max_seq_len=${nowhere}", "field 'max_seq_len' could not be resolved: Interpolation key 'nowhere' not found"),
    ("device_train_microbatch_size=0", "field 'device_train_microbatch_size' must be 'auto' or an int >= 1, got 0"),
])
def test_omegaconf_errors_are_one_line_naming_the_override(override, expected):
    with pytest.raises(ConfigError) as err:
        validate(*load_config(DEMO, [override]))
    message = str(err.value)
    assert message == f"{DEMO}: command-line override '{override}': {expected}" and "\n" not in message


def test_a_yaml_left_unfilled_names_the_field_and_the_file():
    path = os.path.join(REPO, "yamls", "pretrain", "lion-d-base.yaml")
    with pytest.raises(ConfigError, match=r"lion-d-base.yaml: field 'data_local' is required \(it is \?\?\? in the "):
        validate(*load_config(path, []))


def test_glue_task_fields_are_typed_and_named():
    glue = os.path.join(REPO, "yamls", "finetune-glue", "demo.yaml")
    with pytest.raises(ConfigError, match=r"field 'tasks.rt_sentiment.seeds' must be of type list, got 'a' at \[0\]"):
        validate_finetune(*load_config(glue, ["tasks.rt_sentiment.seeds=[a]"]))
    with pytest.raises(ConfigError, match="field 'tasks.rt_sentiment.trainer_kwargs.lr' must be > 0, got 0.0"):
        validate_finetune(*load_config(glue, ["tasks.rt_sentiment.trainer_kwargs.lr=0"]))
