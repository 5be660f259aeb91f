"""Faults, bad input and untrusted files for MLM pretraining (mlm/main.py), GLUE (mlm/glue.py) and the converter.

Each case asserts the exit code (or the one error), the one-line message, and that nothing was lost or half-written.
"""
import argparse
import itertools
import os
import pickle
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
from mlm.src.composer_checkpoint import read_checkpoint
from mlm.src.config_validation import ConfigError, Source, load_config
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


def test_autoresume_without_latest_link_takes_the_newest_checkpoint(tmp_path, corpus, reference):
    """Composer replaces the latest-rank0.pt link by remove + create: a kill in between leaves no link."""
    folder = tmp_path / "ckpt"
    shutil.copytree(reference["folder"], folder, symlinks=True)
    os.remove(folder / "latest-rank0.pt")
    cfg, source = load_config(DEMO, run_args(corpus, folder, "autoresume=true")[1:])
    trainer = build_trainer(cfg, source)
    assert int(trainer.state.timestamp.batch) == STEPS
    assert resume_path(cfg, trainer.state.model, source) == str(folder / f"ep0-ba{STEPS}-rank0.pt")
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
