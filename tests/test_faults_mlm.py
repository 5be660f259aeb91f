"""Faults, bad input and untrusted files for MLM pretraining (mlm/main.py), GLUE (mlm/glue.py) and the converter.

Each case asserts the exit code (or the one error), the one-line message, and that nothing was lost or half-written.
"""
import argparse
import itertools
import json
import os
import pickle
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
from composer import Callback
from conftest import moby_dick_rows
from datasets import Dataset
from transformers import BertTokenizerFast

from mlm import glue as glue_cli
from mlm.main import build_trainer, cli, resume_path
from mlm.src.builders import NonFiniteLossGuard
from mlm.src.checkpoint_loading import main as convert_checkpoint
from mlm.src.composer_checkpoint import read_checkpoint
from mlm.src.config_validation import ConfigError, Source, load_config, validate
from mlm.src.convert_dataset import MARKER, read_text_lines
from mlm.src.create_bert import OFFLINE_TOKENIZER_DIR
from mlm.src.text_data import load_split

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, "yamls", "pretrain", "demo.yaml")
GLUE_DEMO = os.path.join(REPO, "yamls", "finetune-glue", "demo.yaml")
TINY = ["max_seq_len=32", "model.model_config.hidden_size=32", "model.model_config.num_hidden_layers=2",
        "model.model_config.num_attention_heads=2", "model.model_config.intermediate_size=64",
        "global_train_batch_size=16", "device_train_microbatch_size=16", "device_eval_batch_size=32",
        "eval_subset_num_batches=1", "console_log_interval=4ba", "optimizer.lr=3.0e-3", "eval_interval=100ba",
        "progress_bar=false", "callbacks={}", "save_num_checkpoints_to_keep=-1", "run_name=faults", "seed=5"]
STEPS, EVERY = 9, 3
ENV = {k: v for k, v in os.environ.items() if k not in {"WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
                                                          "MASTER_ADDR", "MASTER_PORT", "NODE_RANK"}}
ENV["PYTHONPATH"] = REPO  # the worktree's mlm package, whatever is installed
ENV["TRITON_INTERPRET"] = "1"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The first 150 Moby-Dick paragraphs shipped in mlm/data, converted to 32-token rows."""
    return moby_dick_rows(str(tmp_path_factory.mktemp("faults_corpus")))


def tokenizer():
    return BertTokenizerFast.from_pretrained(OFFLINE_TOKENIZER_DIR)


def run_args(corpus, folder, *extra):
    return [DEMO, *TINY, f"data_local={corpus}", f"save_folder={folder}", f"save_interval={EVERY}ba",
            f"max_duration={STEPS}ba", *extra]


class Recorder(Callback):
    """Losses per step and the weights after each step."""

    def __init__(self):
        self.losses, self.weights = {}, {}

    def after_train_batch(self, state, logger):  # before the optimizer step; the timestamp counts finished steps
        self.losses[int(state.timestamp.batch) + 1] = float(state.loss)

    def batch_end(self, state, logger):  # after the optimizer step
        self.weights[int(state.timestamp.batch)] = {k: v.detach().clone() for k, v in state.model.state_dict().items()}


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    """An uninterrupted run: its checkpoints every 4 steps, final weights and losses."""
    folder = tmp_path_factory.mktemp("reference")
    recorder = Recorder()
    trainer = cli(run_args(corpus, folder / "ckpt"), extra_callbacks=[recorder])
    trainer.close()
    return {"folder": str(folder / "ckpt"), "weights": recorder.weights, "losses": recorder.losses}


def fail(argv, entry=cli) -> str:
    """The one line an expected user error ends with (SystemExit with a message: exit code 1)."""
    with pytest.raises(SystemExit) as exit_info:
        entry(argv)
    message = exit_info.value.code
    assert isinstance(message, str) and "\n" not in message, message
    return message


# ---- bad yaml fields and overrides -------------------------------------------------------------------------------

def test_unknown_override_names_the_override_and_suggests_the_field():
    message = fail([DEMO, "optimizer.lrr=3"])
    assert message == ("error: " + DEMO + ": command-line override 'optimizer.lrr=3': field 'optimizer.lrr' is "
                       "unknown; did you mean 'lr'? allowed: betas, eps, lr, name, weight_decay")


def test_unknown_yaml_key_names_the_file(tmp_path):
    text = open(DEMO).read().replace("optimizer:", "optimiser:")
    (tmp_path / "typo.yaml").write_text(text)
    message = fail([str(tmp_path / "typo.yaml")])
    assert message.startswith(f"error: {tmp_path / 'typo.yaml'}: field 'optimiser' is unknown; "
                              "did you mean 'optimizer'? allowed: ")


@pytest.mark.parametrize("override, expected", [
    ("global_train_batch_size=many", "field 'global_train_batch_size' must be of type int, got 'many'"),
    ("precision=bf16", "field 'precision' must be one of ['fp32', 'amp_fp16', 'amp_bf16'], got 'bf16'; "
                       "did you mean 'amp_bf16'?"),
    ("max_duration=12steps", "field 'max_duration' must be a Composer time such as '300ba'"),
    ("train_loader.dataset.mlm_probability=1.5", "field 'train_loader.dataset.mlm_probability' must be in (0, 1)"),
    ("callbacks.speed_monitor.window=3", "field 'callbacks.speed_monitor.window' is unknown; did you mean "
                                         "'window_size'?"),
    ("loggers.wandbb={}", "field 'loggers.wandbb' is unknown; did you mean 'wandb'? allowed: file, wandb"),
    ("compile_config.fullgraf=true", "did you mean 'fullgraph'?"),
    ("nonfinite_loss=ignore", "field 'nonfinite_loss' must be one of ['stop', 'skip']"),
    ("model.model_config.num_layers=2", "field 'model.model_config.num_layers' is unknown"),
    ("dist_timeout=0", "field 'dist_timeout' must be > 0 seconds"),
])
def test_wrong_types_and_values_fail_before_any_work(tmp_path, override, expected):
    message = fail([DEMO, override, f"save_folder={tmp_path}/ckpt", f"data_local={tmp_path}/data"])
    assert message.startswith(f"error: {DEMO}: command-line override '{override}': ") and expected in message
    assert not os.listdir(tmp_path)  # no data conversion, no checkpoint folder


def test_malformed_override_and_missing_file():
    assert fail([DEMO, "optimizer.lr"]) == (f"error: {DEMO}: command-line argument 'optimizer.lr' is not of the form "
                                             "key=value (e.g. optimizer.lr=1e-3)")
    assert fail(["nowhere.yaml"]) == "error: nowhere.yaml: config file does not exist"


def test_cli_exits_1_with_one_line_and_no_traceback():
    proc = subprocess.run([sys.executable, "mlm/main.py", DEMO, "optimizer.lrr=3"], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith("did you mean 'lr'? allowed: betas, eps, lr, name, "
                                                        "weight_decay")


@pytest.mark.parametrize("content, expected", [
    ("- optimizer\n- model\n", "must hold a mapping of fields (key: value), got a ListConfig"),
    ("optimizer: {lr: [1, 2\nmodel: {}\n", "is not valid YAML: did not find expected ',' or ']' (line 2, column 6)"),
    (b"max_seq_len: \xff\xfe\n", "cannot be read: 'utf-8' codec can't decode byte 0xff in position 13: invalid "
                                   "start byte"),
])
@pytest.mark.parametrize("entry, prefix", [(cli, "error: "), (glue_cli.main, "glue.py: ")])
def test_a_yaml_that_is_no_mapping_of_fields_is_one_line(tmp_path, content, expected, entry, prefix):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert fail([str(path)], entry=entry) == f"{prefix}{path}: {expected}"


def test_a_folder_for_the_yaml_and_an_unparsable_override_are_one_line(tmp_path):
    assert fail([str(tmp_path)]) == f"error: {tmp_path}: is a directory, not a yaml file"
    assert fail([DEMO, "optimizer.betas=[0.9"]) == (f"error: {DEMO}: command-line override 'optimizer.betas=[0.9' "
                                                     "cannot be parsed: did not find expected ',' or ']'")


def test_an_override_that_empties_a_mapping_empties_it():
    cfg, _ = load_config(DEMO, ["callbacks={}", "compile_config={}"])
    assert dict(cfg.callbacks) == {} and dict(cfg.compile_config) == {}
    cfg, _ = load_config(DEMO, ["callbacks={lr_monitor: {}}"])  # a mapping with entries merges into the yaml's
    assert set(cfg.callbacks) == {"speed_monitor", "lr_monitor", "memory_monitor"}


def test_glue_cli_exits_1_with_one_line_and_no_traceback(tmp_path):
    (tmp_path / "list.yaml").write_text("- tasks\n")
    proc = subprocess.run([sys.executable, "mlm/glue.py", str(tmp_path / "list.yaml")], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [f"glue.py: {tmp_path / 'list.yaml'}: must hold a mapping of fields "
                                                "(key: value), got a ListConfig"]


# ---- bad data and tokenizer --------------------------------------------------------------------------------------

def test_text_data_with_no_rows_and_unfinished_conversion(tmp_path, corpus):
    empty = tmp_path / "empty"
    for split in ("train", "val"):
        Dataset.from_dict({"input_ids": [], "attention_mask": []}).save_to_disk(str(empty / split))
    (empty / MARKER).write_text("{}")
    message = fail(run_args(corpus, tmp_path / "ckpt", f"train_loader.dataset.data_local={empty}"))
    assert "train_loader.dataset.data_local: the train split of" in message and "has no rows" in message
    message = fail(run_args(corpus, tmp_path / "ckpt", f"eval_loader.dataset.data_local={tmp_path}/half"))
    assert f"eval_loader.dataset.data_local: '{tmp_path}/half' is not a finished conversion" in message
    assert not (tmp_path / "ckpt").exists()


def test_converter_refuses_text_with_no_rows(tmp_path):
    (tmp_path / "blank.txt").write_text("\n\n   \n")
    proc = subprocess.run([sys.executable, "-m", "mlm.src.convert_dataset",
                           "--local_files", str(tmp_path / "blank.txt"),
                           "--out_root", str(tmp_path / "out"), "--tokenizer", OFFLINE_TOKENIZER_DIR], cwd=REPO,
                          env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == ("error: the train split has no rows: its source holds no "
                                                    "document (non-empty line)")
    assert sorted(os.listdir(tmp_path)) == ["blank.txt"]


NOISE = bytes(range(128, 256)) * 8  # no UTF-8 text, no gzip stream


@pytest.mark.parametrize("name, content, expected", [
    ("noise.txt", NOISE, "cannot be read as UTF-8 text (line 1: UnicodeDecodeError: 'utf-8' codec can't decode byte "
                         "0x80 in position 0: invalid start byte)"),
    ("noise.txt.gz", NOISE, "cannot be read as gzip-compressed UTF-8 text (line 1: BadGzipFile: Not a gzipped file "
                            "(b'\\x80\\x81'))"),
    ("cut.txt.gz", "cut", "cannot be read as gzip-compressed UTF-8 text (line N: EOFError: Compressed file ended "
                          "before the end-of-stream marker was reached)"),
])
def test_converter_names_a_source_file_that_is_not_text(tmp_path, name, content, expected):
    from mlm.src.convert_dataset import main as convert_main

    if content == "cut":
        content = open(os.path.join(REPO, "mlm", "data", "corpus", "moby_dick.txt.gz"), "rb").read(4000)
    (tmp_path / "good.txt").write_text("a first document\nanother one\n" * 200)
    (tmp_path / name).write_bytes(content)
    with pytest.raises(SystemExit) as exit_info:
        convert_main(["--local_files", str(tmp_path / "good.txt"), str(tmp_path / name), "--out_root",
                      str(tmp_path / "out"), "--max_seq_len", "16", "--tokenizer", OFFLINE_TOKENIZER_DIR])
    line = re.sub(r"\(line \d{2,}:", "(line N:", exit_info.value.code)  # gzip reads ahead: the line is near the cut
    assert line == f"error: {tmp_path / name}: {expected}; --bad-files skip skips such files"
    assert sorted(os.listdir(tmp_path)) == sorted(["good.txt", name])  # no output, no temporary directory
    convert_main(["--local_files", str(tmp_path / "good.txt"), str(tmp_path / name), "--out_root",
                  str(tmp_path / "out"), "--max_seq_len", "16", "--tokenizer", OFFLINE_TOKENIZER_DIR, "--bad-files",
                  "skip"])
    summary = json.loads((tmp_path / "out" / MARKER).read_text())
    assert summary["skipped_files"] == [str(tmp_path / name)] and summary["splits"]["train"]["rows"] > 0


def test_converter_without_the_hub_is_one_line_and_exit_1(tmp_path):
    env = {**ENV, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "mlm.src.convert_dataset", "--dataset", "c4", "--out_root",
                           str(tmp_path / "c4"), "--tokenizer", OFFLINE_TOKENIZER_DIR], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: --dataset c4 streams allenai/c4 from the Hugging Face hub, which cannot be reached (ConnectionError: "
        "Couldn't reach 'allenai/c4' on the Hub (OfflineModeIsEnabled)); convert local text with --local_files "
        "instead, or run where the hub is reachable")
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("override, field", [("save_folder={tmp}/a_file", "save_folder"),
                                             ("data_local={tmp}/a_file", "train_loader.dataset.data_local")])
def test_a_folder_field_that_names_a_file_stops_before_any_work(tmp_path, override, field):
    (tmp_path / "a_file").write_text("not a folder")
    override = override.format(tmp=tmp_path)
    extra = [] if override.startswith("data_local") else [f"data_local={tmp_path}/data"]
    message = fail([DEMO, *TINY, *extra, override])
    where = f"command-line override '{override}'" if field == "save_folder" else ""
    assert message == f"error: {DEMO}: {where + ': ' if where else ''}field '{field}' ({tmp_path}/a_file) exists and " \
                      "is not a directory; give a directory (it is created if missing)"
    assert sorted(os.listdir(tmp_path)) == ["a_file"]  # no data conversion started


def test_tokenizer_larger_than_the_model_vocabulary(tmp_path, corpus):
    message = fail(run_args(corpus, tmp_path / "ckpt", "model.model_config.vocab_size=1000"))
    assert message == (f"error: {DEMO}: tokenizer 'mlm/data/bert-base-uncased' has 30522 tokens but model vocab_size "
                       "is 1000; use the tokenizer the model was built for or set model.model_config.vocab_size "
                       ">= 30522")


# ---- bad and untrusted checkpoints -------------------------------------------------------------------------------

class Exploit:
    """Unpickling this would create a file (standing in for any code)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def bad_checkpoints(tmp_path, reference):
    good = os.path.join(reference["folder"], "ep0-ba3-rank0.pt")
    data = open(good, "rb").read()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint at all")
    marker = str(tmp_path / "exploited")
    torch.save({"state": {"model": Exploit(marker)}}, tmp_path / "malicious.pt")
    with open(tmp_path / "malicious-raw.pt", "wb") as f:
        pickle.dump(Exploit(marker), f)
    vit = {"patch_embed.proj.weight": torch.zeros(8, 3, 4, 4), "head.weight": torch.zeros(10, 8)}
    torch.save({"model": vit, "optimizer": {}, "epoch": 3, "args": {"model": "lion_tiny"}}, tmp_path / "vision.pt")
    return marker


@pytest.mark.parametrize("name, expected", [
    ("truncated.pt", "is not a readable torch checkpoint (truncated or corrupt?)"),
    ("garbage.pt", "is not a readable torch checkpoint (truncated or corrupt?)"),
    ("malicious.pt", "holds objects that only full unpickling can build (io.open), which can run code; "
                     "not loaded. Set allow_unsafe_checkpoints: true only for a file you trust"),
    ("malicious-raw.pt", "is not a readable torch checkpoint"),
    ("vision.pt", "is not a Composer checkpoint (it has ['args', 'epoch', 'model', 'optimizer'], no state.model)"),
])
def test_pretraining_refuses_bad_checkpoints_before_training(tmp_path, corpus, reference, name, expected):
    marker = bad_checkpoints(tmp_path, reference)
    message = fail(run_args(corpus, tmp_path / "ckpt", f"load_path={tmp_path / name}"))
    assert message.startswith(f"error: {DEMO}: command-line override 'load_path={tmp_path / name}': load_path: ")
    assert expected in message, message
    assert not os.path.exists(marker) and not (tmp_path / "ckpt").exists()


def test_unpickling_is_a_deliberate_opt_in(tmp_path):
    path = str(tmp_path / "with-namespace.pt")
    torch.save({"state": {"model": {"model.bert.x": torch.ones(2)}}, "args": argparse.Namespace(lr=1)}, path)
    with pytest.raises(ConfigError, match=r"\(argparse.Namespace\), which can run code; not loaded"):
        read_checkpoint(path, "load_path")
    assert read_checkpoint(path, "load_path", allow_unsafe=True)["args"].lr == 1


def test_checkpoint_of_another_model_size(tmp_path, corpus, reference):
    good = os.path.join(reference["folder"], "ep0-ba3-rank0.pt")
    message = fail(run_args(corpus, tmp_path / "ckpt", f"load_path={good}", "model.model_config.hidden_size=64"))
    assert "load_path: " in message and "is a model of another size: model.bert.embeddings.word_embeddings.weight " \
                                       "is (30522, 32) there but (30522, 64) here" in message


def test_glue_refuses_bad_checkpoints_and_bad_files(tmp_path, reference):
    marker = bad_checkpoints(tmp_path, reference)
    glue_dir = tmp_path / "glue"
    shutil.copytree(os.path.join(REPO, "mlm", "data", "glue_fixture"), glue_dir)
    tiny = ["model.model_config.hidden_size=32", "model.model_config.num_hidden_layers=2",
            "model.model_config.num_attention_heads=2", "model.model_config.intermediate_size=64",
            f"save_finetune_checkpoint_prefix={tmp_path}/ft", f"data.cache_dir={tmp_path}/cache",
            f"data.data_dir={glue_dir}"]
    good = os.path.join(reference["folder"], "ep0-ba3-rank0.pt")

    def glue_fail(*extra):
        return fail([GLUE_DEMO, *tiny, *extra], entry=glue_cli.main)

    for name in ("malicious.pt", "truncated.pt", "vision.pt"):
        message = glue_fail(f"starting_checkpoint_load_path={tmp_path / name}")
        assert message.startswith(f"glue.py: {GLUE_DEMO}: starting_checkpoint_load_path: {tmp_path / name} ")
    assert not os.path.exists(marker)
    message = glue_fail(f"starting_checkpoint_load_path={good}", "model.model_config.intermediate_size=128")
    assert "is a model of another size: bert.encoder.layer.0.intermediate.dense.weight is (64, 32) there but " \
           "(128, 32) here" in message
    message = glue_fail(f"starting_checkpoint_load_path={good}", "tasks.rt_sentiment.trainer_kwargs.lrr=1")
    assert "field 'tasks.rt_sentiment.trainer_kwargs.lrr' is unknown; did you mean 'lr'?" in message

    train = glue_dir / "RT-Sentiment" / "train.tsv"
    rows = train.read_text().splitlines()
    train.write_text("\n".join([rows[0], rows[1].rsplit("\t", 1)[0] + "\t2", *rows[2:]]) + "\n")
    message = glue_fail(f"starting_checkpoint_load_path={good}")
    assert message == (f"glue.py: {GLUE_DEMO}: data.data_dir: {train}: labels ['2'] of column 'label' are outside task "
                       "rt_sentiment: allowed ['rotten', 'fresh'] or 0..1")
    train.write_text("\n".join(["sentence\tscore", *rows[1:]]) + "\n")
    message = glue_fail(f"starting_checkpoint_load_path={good}")
    assert message.startswith(f"glue.py: {GLUE_DEMO}: data.data_dir: {train}: columns ['label'] of task "
                              "rt_sentiment missing")
    assert not (tmp_path / "ft").exists()

    earlier = tmp_path / "ft" / "demo-glue" / "task=moby_sentence_order" / "seed=19" / "ep1-ba30-rank0.pt"
    earlier.parent.mkdir(parents=True)
    earlier.write_bytes(b"an earlier run's finetuned weights")
    message = glue_fail(f"starting_checkpoint_load_path={good}")
    assert message == (f"glue.py: {GLUE_DEMO}: field 'save_finetune_checkpoint_folder' ({tmp_path}/ft/demo-glue) "
                       f"holds the checkpoints of an earlier run ({earlier.parent}); set overwrite=true to replace "
                       "them, or choose another base_run_name")
    assert earlier.read_bytes() == b"an earlier run's finetuned weights"


def converter_error(source, out, *extra):
    """The one line ``python -m mlm.src.checkpoint_loading`` ends with (called in this process)."""
    with pytest.raises(SystemExit) as exit_info:
        convert_checkpoint([str(source), str(out), *extra])
    message = exit_info.value.code
    assert isinstance(message, str) and "\n" not in message, message
    return message


def test_checkpoint_converter_answers_files_of_another_kind_in_one_line(tmp_path, reference):
    marker = bad_checkpoints(tmp_path, reference)
    (tmp_path / "empty").mkdir()
    (tmp_path / "listed").mkdir()
    (tmp_path / "listed" / "config.json").write_text("[1, 2]")
    (tmp_path / "a_file").write_text("not a folder")
    out, good = tmp_path / "out", os.path.join(reference["folder"], "ep0-ba3-rank0.pt")
    size = os.path.getsize(tmp_path / "garbage.pt")
    cases = {
        tmp_path / "nowhere": f"{tmp_path / 'nowhere'}: no such file or directory (nor a hub id such as 'org/name')",
        tmp_path / "garbage.pt": f"{tmp_path / 'garbage.pt'} is not a readable torch checkpoint (truncated, corrupt or "
                                 f"another format; {size} bytes): ",
        tmp_path / "truncated.pt": f"{tmp_path / 'truncated.pt'} is not a readable torch checkpoint (truncated, "
                                   "corrupt or another format; ",
        tmp_path / "malicious.pt": f"refusing to load {tmp_path / 'malicious.pt'}: it needs unpickling of more than "
                                   "tensors and plain data",
        tmp_path / "empty": f"{tmp_path / 'empty'} has no config.json",
        tmp_path / "listed": f"{tmp_path / 'listed' / 'config.json'} must hold a JSON object (a model config), got a "
                             "list",
    }
    for source, expected in cases.items():
        assert converter_error(source, out).startswith(f"error: {expected}"), source
    (tmp_path / "wider.json").write_text(json.dumps({"arch_type": "lion-d", "hidden_size": 64, "num_hidden_layers": 2,
                                                     "num_attention_heads": 2, "intermediate_size": 64}))
    message = converter_error(good, out, "--config", str(tmp_path / "wider.json"))
    assert message.startswith("error: the weights do not fit the config's lion-d model: "), message
    assert ("; size mismatch for bert.embeddings.word_embeddings.weight: copying a param with shape "
            "torch.Size([30522, 32]) from checkpoint, the shape in current model is torch.Size([30522, 64]);"
            ) in message
    message = converter_error(good, out, "--config", str(tmp_path / "garbage.pt"))
    assert message.startswith(f"error: {tmp_path / 'garbage.pt'} is not a JSON config file: "), message
    assert converter_error(good, tmp_path / "a_file") == (f"error: {tmp_path / 'a_file'} exists and is not a "
                                                          "directory; give a directory path")
    assert not out.exists() and not os.path.exists(marker)


def test_checkpoint_converter_cli_exits_1_with_one_line_and_no_traceback(tmp_path):
    (tmp_path / "noise.bin").write_bytes(bytes(range(256)) * 4)
    proc = subprocess.run([sys.executable, "-m", "mlm.src.checkpoint_loading", str(tmp_path / "noise.bin"),
                           str(tmp_path / "out")], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'noise.bin'} is not a readable torch checkpoint (truncated, corrupt or another format; "
        "1024 bytes): Unsupported operand 0"]


@pytest.mark.parametrize("arch", ["lion-d", "attention"])
@pytest.mark.parametrize("inputs, message", [
    (dict(attention_mask=(2, 9)), "attention_mask must be (batch, length) = (2, 8) like the input, got shape (2, 9)"),
    (dict(attention_mask=(8,)), "attention_mask must be (batch, length) = (2, 8) like the input, got shape (8,)"),
    (dict(token_type_ids=(2, 7)), "token_type_ids must be (batch, length) = (2, 8) like the input, got shape (2, 7)"),
    (dict(input_ids=(16,)), "input_ids must be (batch, length), got shape (16,)"),
    (dict(inputs_embeds=(2, 8, 16)), "inputs_embeds must be (batch, length, hidden_size=32), got shape (2, 8, 16)"),
])
def test_bert_forward_names_an_input_of_the_wrong_shape(arch, inputs, message):
    from mlm.src.bert_layers import LionBertConfig, LionBertForMaskedLM

    model = LionBertForMaskedLM(LionBertConfig(arch_type=arch, hidden_size=32, num_hidden_layers=1,
                                               num_attention_heads=2, intermediate_size=64, vocab_size=100))
    kwargs = {"input_ids": torch.randint(0, 100, (2, 8))}
    for name, shape in inputs.items():
        kwargs[name] = torch.randn(shape) if name == "inputs_embeds" else torch.ones(shape, dtype=torch.long)
    if "inputs_embeds" in inputs:
        del kwargs["input_ids"]
    with pytest.raises(ValueError) as info:
        model(**kwargs)
    assert str(info.value) == message


def test_bert_forward_refuses_more_tokens_than_its_position_table():
    from mlm.src.bert_layers import LionBertConfig, LionBertForMaskedLM

    model = LionBertForMaskedLM(LionBertConfig(arch_type="attention", position_embedding_type="absolute",
                                               hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                               intermediate_size=64, vocab_size=100, max_position_embeddings=16))
    with pytest.raises(ValueError, match=r"^the input has 20 tokens, more than max_position_embeddings \(16\)"):
        model(torch.randint(0, 100, (2, 20)))
    assert model(torch.randint(0, 100, (2, 16))).logits.shape == (2, 16, 100)


def test_glue_without_local_files_and_without_the_hub_stops_before_training(tmp_path, reference, monkeypatch):
    import datasets
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(GLUE_DEMO)
    cfg.tasks = {"sst2": {"trainer_kwargs": {"max_duration": "1ba"}}}
    cfg.data = {"cache_dir": f"{tmp_path}/cache"}
    OmegaConf.save(cfg, tmp_path / "hub.yaml")

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    good = os.path.join(reference["folder"], "ep0-ba3-rank0.pt")
    message = fail([str(tmp_path / "hub.yaml"), "model.model_config.hidden_size=32", "model.model_config.num_hidden_"
                    "layers=2", "model.model_config.num_attention_heads=2", "model.model_config.intermediate_size=64",
                    f"starting_checkpoint_load_path={good}", f"save_finetune_checkpoint_prefix={tmp_path}/ft"],
                   entry=glue_cli.main)
    assert message == (f"glue.py: {tmp_path / 'hub.yaml'}: data.data_dir: not set, so task sst2 is read from the hub "
                       "(nyu-mll/glue, sst2, train), which fails (ConnectionError: Couldn't reach 'nyu-mll/glue' on "
                       "the Hub (OfflineModeIsEnabled)); offline? set data.data_dir to a folder of GLUE TSV files")
    assert sorted(os.listdir(tmp_path)) == ["hub.yaml"]


# ---- crashes: SIGKILL while saving and while training, then resume -----------------------------------------------

DRIVER = textwrap.dedent("""
    import io, os, signal, sys
    import torch
    from composer import Callback
    from mlm.main import cli

    mode, argv = sys.argv[1], sys.argv[2:]

    class KillAtStep(Callback):
        def batch_end(self, state, logger):
            if int(state.timestamp.batch) == 5:
                os.kill(os.getpid(), signal.SIGKILL)

    real_save, saves = torch.save, []

    def save_then_die_half_way(obj, f, *args, **kwargs):
        saves.append(1)
        if len(saves) < 2 or isinstance(f, (str, os.PathLike)):
            return real_save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        f.write(buffer.getvalue()[: buffer.tell() // 2])
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    if mode == "during-save":
        torch.save = save_then_die_half_way
    cli(argv, extra_callbacks=[KillAtStep()] if mode == "during-training" else [])
""")


@pytest.mark.parametrize("mode, last_complete", [("during-save", 3), ("during-training", 3)])
def test_sigkill_then_autoresume_ends_as_the_uninterrupted_run(tmp_path, corpus, reference, mode, last_complete):
    folder = tmp_path / "ckpt"
    (tmp_path / "driver.py").write_text(DRIVER)
    argv = run_args(corpus, folder, "autoresume=true")
    proc = subprocess.run([sys.executable, str(tmp_path / "driver.py"), mode, *argv], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    names = sorted(os.listdir(folder))
    assert [n for n in names if n.startswith("ep")] == [f"ep0-ba{last_complete}-rank0.pt"], names
    assert os.path.realpath(folder / "latest-rank0.pt") == str(folder / f"ep0-ba{last_complete}-rank0.pt")
    if mode == "during-save":  # the half-written file never carried a checkpoint's name
        partial = [n for n in names if n.startswith(".partial-")]
        assert len(partial) == 1 and partial[0].endswith("-ep0-ba6-rank0.pt")
        with pytest.raises(ConfigError, match="truncated or corrupt"):
            read_checkpoint(str(folder / partial[0]), "load_path")

    recorder = Recorder()
    trainer = build_trainer(load_config(DEMO, argv[1:])[0], extra_callbacks=[recorder])
    assert int(trainer.state.timestamp.batch) == last_complete
    trainer.fit()
    assert sorted(recorder.losses) == list(range(last_complete + 1, STEPS + 1))
    for step, loss in recorder.losses.items():
        assert abs(loss - reference["losses"][step]) <= 1e-6, (step, loss, reference["losses"][step])
    for key, value in recorder.weights[STEPS].items():
        assert torch.allclose(value, reference["weights"][STEPS][key], rtol=0, atol=1e-6), key
    trainer.close()
    assert not [n for n in os.listdir(folder) if n.startswith(".partial-")]  # the dead run's file was removed
    assert os.path.isfile(folder / f"ep0-ba{STEPS}-rank0.pt")


class CrashAt(Callback):
    """Ends the run with an exception after the given step (a crash between two checkpoints)."""

    def __init__(self, step):
        self.step = step

    def batch_end(self, state, logger):
        if int(state.timestamp.batch) == self.step:
            raise RuntimeError("planted crash")


def checkpoint_names(folder):
    return sorted(n for n in os.listdir(folder) if n.startswith("ep"))


def test_rerunning_the_demo_command_after_a_crash_resumes_and_keeps_n_checkpoints(tmp_path, corpus, reference):
    """The demo yaml autoresumes: the same command again continues after the last checkpoint (not from batch 1 over
    it), ends as the uninterrupted run, and keep-1 holds across the resume; a third run changes nothing."""
    folder = tmp_path / "ckpt"
    argv = run_args(corpus, folder, "save_num_checkpoints_to_keep=1")
    with pytest.raises(RuntimeError, match="planted crash"):
        cli(argv, extra_callbacks=[CrashAt(5)])
    assert checkpoint_names(folder) == ["ep0-ba3-rank0.pt"]
    before_crash = (folder / "ep0-ba3-rank0.pt").read_bytes()

    class Unchanged(Callback):
        def fit_start(self, state, logger):  # after the resume, before any new save
            assert (folder / "ep0-ba3-rank0.pt").read_bytes() == before_crash

    recorder = Recorder()
    trainer = cli(argv, extra_callbacks=[recorder, Unchanged()])
    trainer.close()
    assert sorted(recorder.losses) == list(range(4, STEPS + 1))  # resumed after step 3
    for step, loss in recorder.losses.items():
        assert abs(loss - reference["losses"][step]) <= 1e-6, (step, loss, reference["losses"][step])
    assert checkpoint_names(folder) == [f"ep0-ba{STEPS}-rank0.pt"]  # the pre-crash ba3 rotated out too
    final = (folder / f"ep0-ba{STEPS}-rank0.pt").read_bytes()
    message = fail(argv)  # finished: nothing to train, nothing rewritten
    assert message == (f"error: {DEMO}: command-line override 'max_duration={STEPS}ba': field 'max_duration' "
                       f"({STEPS}ba) is reached already: the run resumed from {folder} has trained {STEPS}ba; "
                       "nothing left to train (raise max_duration to continue it, or choose another "
                       "save_folder)")
    assert checkpoint_names(folder) == [f"ep0-ba{STEPS}-rank0.pt"]
    assert (folder / f"ep0-ba{STEPS}-rank0.pt").read_bytes() == final


def test_a_run_from_batch_0_never_overwrites_an_earlier_runs_checkpoints(tmp_path, reference):
    folder = tmp_path / "ckpt"
    shutil.copytree(reference["folder"], folder, symlinks=True)
    message = fail([DEMO, *TINY, f"data_local={tmp_path}/data", f"save_folder={folder}", "autoresume=false"])
    assert message == (f"error: {DEMO}: command-line override 'save_folder={folder}': field 'save_folder' ({folder}) "
                       "holds an earlier run's checkpoints (ep0-ba3-rank0.pt, ep0-ba6-rank0.pt, ep0-ba9-rank0.pt), "
                       "which this run (from batch 0) would overwrite: set autoresume=true to continue that run, "
                       "save_overwrite=true to replace them, or choose another save_folder")
    start = folder / "ep0-ba3-rank0.pt"
    message = fail([DEMO, *TINY, f"data_local={tmp_path}/data", f"save_folder={folder}", "autoresume=false",
                    f"load_path={start}"])
    assert message.endswith("holds an earlier run's checkpoints (ep0-ba6-rank0.pt, ep0-ba9-rank0.pt), which this run "
                            "(from ep0-ba3-rank0.pt) would overwrite: set autoresume=true to continue that run, "
                            "save_overwrite=true to replace them, or choose another save_folder"), message
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]  # no data conversion started


def test_autoresume_without_latest_link_takes_the_newest_checkpoint(tmp_path, corpus, reference):
    """Composer replaces the latest-rank0.pt link by remove + create: a kill in between leaves no link."""
    folder = tmp_path / "ckpt"
    shutil.copytree(reference["folder"], folder, symlinks=True)
    os.remove(folder / "latest-rank0.pt")
    cfg, source = load_config(DEMO, run_args(corpus, folder, "autoresume=true")[1:])
    trainer = build_trainer(cfg, source)
    assert int(trainer.state.timestamp.batch) == STEPS
    assert resume_path(validate(cfg, source), trainer.state.model, source) == str(folder / f"ep0-ba{STEPS}-rank0.pt")
    trainer.close()


def test_interrupted_conversion_leaves_nothing_a_loader_accepts_and_a_rerun_completes(tmp_path):
    src = tmp_path / "moby.txt"
    lines = itertools.islice(read_text_lines(os.path.join(REPO, "mlm", "data", "corpus", "moby_dick.txt.gz")), 60)
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "data" / "rows"
    args = ["--local_files", str(src), "--out_root", str(out), "--max_seq_len", "32", "--tokenizer",
            OFFLINE_TOKENIZER_DIR]
    driver = textwrap.dedent("""
        import os, signal, sys
        from datasets import Dataset
        from mlm.src.convert_dataset import main
        real = Dataset.save_to_disk
        def save_then_die(self, path, *args, **kwargs):
            real(self, path, *args, **kwargs)
            if os.path.basename(path) == "val":  # every split written, marker and rename not yet done
                os.kill(os.getpid(), signal.SIGKILL)
        Dataset.save_to_disk = save_then_die
        main(sys.argv[1:])
    """)
    proc = subprocess.run([sys.executable, "-c", driver, *args], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not out.exists()
    leftovers = os.listdir(tmp_path / "data")
    assert len(leftovers) == 1 and leftovers[0].startswith(".rows.tmp-")
    with pytest.raises(ConfigError, match="is not a finished conversion"):
        load_split(str(out), "train")
    proc = subprocess.run([sys.executable, "-m", "mlm.src.convert_dataset", *args], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert os.listdir(tmp_path / "data") == ["rows"] and (out / MARKER).is_file()
    assert len(load_split(str(out), "train")) > 0


# ---- numerical faults --------------------------------------------------------------------------------------------

class PlantNaN(Callback):
    """Makes the loss of one step NaN (before the guard sees it)."""

    def __init__(self, step):
        self.step = step

    def after_loss(self, state, logger):
        if int(state.timestamp.batch) + 1 == self.step:
            state.loss = state.loss * float("nan")


def test_nonfinite_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(tmp_path, corpus, reference):
    folder = tmp_path / "ckpt"
    message = fail(run_args(corpus, folder, "save_interval=2ba"), entry=lambda a: cli(a, [PlantNaN(step=5)]))
    assert message == (f"error: {DEMO}: non-finite loss at step 5: stopped before updating the weights; the last "
                       "saved checkpoint is intact (nonfinite_loss: skip skips such steps instead)")
    assert sorted(n for n in os.listdir(folder) if n.startswith("ep")) == ["ep0-ba2-rank0.pt", "ep0-ba4-rank0.pt"]
    weights = read_checkpoint(str(folder / "ep0-ba4-rank0.pt"), "load_path")["state"]["model"]
    expected = reference["weights"][4]  # the uninterrupted run after step 4
    diffs = {k: float((weights[k] - expected[k]).abs().max()) for k in expected}
    assert max(diffs.values()) <= 1e-6, diffs


def test_nonfinite_loss_skip_leaves_the_weights_of_that_step_unchanged(tmp_path, corpus):
    recorder = Recorder()
    trainer = cli(run_args(corpus, tmp_path / "ckpt", "nonfinite_loss=skip", "max_duration=5ba"),
                  extra_callbacks=[PlantNaN(step=3), recorder])
    guard = next(c for c in trainer.state.callbacks if isinstance(c, NonFiniteLossGuard))
    assert guard.skipped == [3]
    assert all(torch.equal(recorder.weights[3][k], recorder.weights[2][k]) for k in recorder.weights[2])
    assert not all(torch.equal(recorder.weights[4][k], recorder.weights[3][k]) for k in recorder.weights[3])
    assert all(torch.isfinite(v).all() for v in recorder.weights[5].values())
    trainer.close()


# ---- multi-process, compile, lint --------------------------------------------------------------------------------

def test_dist_timeout_ends_a_rank_whose_peers_never_come(tmp_path, corpus):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**ENV, "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2", "NODE_RANK": "0",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    proc = subprocess.run([sys.executable, "mlm/main.py", *run_args(corpus, tmp_path / "ckpt", "dist_timeout=3")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {DEMO}: command-line override 'dist_timeout=3': field 'dist_timeout' (3 s) "
                           "passed before all 2 ranks joined"), last


def test_compile_config_reaches_composer_and_trains_a_step(tmp_path, corpus):
    recorder = Recorder()
    trainer = cli(run_args(corpus, tmp_path / "ckpt", "max_duration=1ba", "compile_config={backend: eager}"),
                  extra_callbacks=[recorder])
    assert hasattr(trainer.state.model.forward, "_torchdynamo_orig_callable")  # Composer's torch.compile wrapper
    assert set(recorder.losses) == {1} and recorder.losses[1] == pytest.approx(10.4, abs=0.5)  # ln(30522) ~ 10.3
    trainer.close()


@pytest.mark.parametrize("package", ["mlm", "lion"])
def test_ruff_keeps_package_clean(package):
    ruff = os.path.join(os.path.dirname(sys.executable), "ruff")  # the venv's (requirements.txt pins it)
    ruff = ruff if os.path.isfile(ruff) else shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed")
    proc = subprocess.run([ruff, "check", package], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:]


def test_one_source_of_messages():
    source = Source("a.yaml", ["optimizer.lr=1"])
    assert source.where("optimizer.lr") == "a.yaml: command-line override 'optimizer.lr=1'"
    assert source.where("optimizer.name") == "a.yaml"
