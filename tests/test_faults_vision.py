"""Faults, bad input and untrusted files in image_classification/main_lion.py (CPU, tiny model, 4 images per class).

Expected failures end with ONE ``main_lion.py: error: ...`` line (a SystemExit: exit status 1, no traceback) and
leave no output or half-written checkpoint behind. Crashes are planted with ``LION_FAULT`` (see
``image_classification/utils.planted_fault``): SIGKILL in a checkpoint save or in a training step, a NaN loss.
"""
import argparse
import builtins
import gzip
import json
import os
import pathlib
import pickle
import re
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from image_classification.datasets import materialise_fmnist_mini
from image_classification.main_lion import cli, get_args_parser, main
from lion import decay_log_gates, lion_attention, selective_log_gates

REPO = Path(__file__).resolve().parents[1]
MAIN = REPO / "image_classification" / "main_lion.py"
TINY = ["--model", "lion_tiny_patch16_224", "--model-kwargs", "patch_size=4", "depth=1", "embed_dim=32",
        "num_heads=2", "--input-size", "28"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "LION_FAULT": ""}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Like the subprocesses (OMP_NUM_THREADS=1): many small ops (the RNN form's 1024 steps) crawl when two
    threads compete for two busy cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return str(materialise_fmnist_mini(tmp_path_factory.mktemp("data") / "fmnist_tiny", per_class=4))


def argv(data, *extra, epochs=2):
    return [*TINY, "--data-set", "FMNIST_MINI", "--data-path", data, "--batch-size", "8", "--epochs", str(epochs),
            "--num_workers", "0", "--device", "cpu", "--warmup-epochs", "0", "--print-freq", "100", *extra]


def cli_error(args):
    """Run the command line in this process; return its one error line (the SystemExit message)."""
    with pytest.raises(SystemExit) as exit_info:
        cli(args)
    message = exit_info.value.code
    assert isinstance(message, str) and message.startswith("main_lion.py: error: "), message
    assert "\n" not in message
    return message


def run_script(args, fault="", timeout=120):
    env = {**ENV, "LION_FAULT": fault}
    return subprocess.run([sys.executable, str(MAIN), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def log_records(out):
    return [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]


def assert_same_training_state(a, b):
    assert a["epoch"] == b["epoch"]
    for part in ("model", "model_ema"):
        for key in a[part]:
            torch.testing.assert_close(b[part][key], a[part][key], rtol=0, atol=1e-6, msg=f"{part}.{key}")
    for index, state in a["optimizer"]["state"].items():
        for key, value in state.items():
            torch.testing.assert_close(b["optimizer"]["state"][index][key], value, rtol=0, atol=1e-6)


ONE_STEP = ["--batch-size", "40", "--drop-path", "0", "--no-model-ema"]


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """One in-process step (40 images, no drop path, no EMA): a real checkpoint of the tiny model (Decay mask)."""
    out = tmp_path_factory.mktemp("trained")
    main(get_args_parser().parse_args(argv(data, *ONE_STEP, "--output_dir", str(out), epochs=1)))
    return out / "checkpoint.pth"


# ---------------------------------------------------------------------------------------------- bad input

def test_corrupt_checkpoint_is_one_line_on_stderr_without_traceback(data, trained, tmp_path):
    broken = tmp_path / "broken.pth"
    broken.write_bytes(trained.read_bytes()[:3000])  # a save cut short
    out = tmp_path / "out"
    proc = run_script(argv(data, "--resume", str(broken), "--output_dir", str(out)))
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"main_lion.py: error: --resume {broken}: cannot be read: a truncated or corrupt "
                           "torch.save archive (3000 bytes; RuntimeError: PytorchStreamReader failed"), line
    assert "Traceback" not in proc.stdout + proc.stderr and not out.exists()


class Exploit:
    """Unpickling it would create the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.exec, (f"open({self.marker!r}, 'w').close()",)


def write_checkpoints(tmp_path, trained):
    """Files that main_lion.py must refuse, with the phrase each message must hold."""
    ours = load(trained)
    files = {}

    def save(name, obj, phrase, raw=False):
        path = tmp_path / name
        if raw:
            path.write_bytes(obj)
        else:
            torch.save(obj, path)
        files[name] = (path, phrase)

    save("empty.pth", b"", "the file is empty (0 bytes)", raw=True)
    save("text.pth", b"model weights: see the wiki\n", "cannot be read: not a torch.save file (28 bytes;", raw=True)
    save("truncated.pth", trained.read_bytes()[:-200], "cannot be read: a truncated or corrupt torch.save archive",
         raw=True)
    composer = {"state": {"model": {"model.bert.embeddings.word_embeddings.weight": torch.zeros(4, 2)},
                          "timestamp": {"iteration": 0}, "run_name": "mlm"},
                "rng": [{"numpy": np.random.get_state(), "torch": torch.get_rng_state()}]}
    save("composer.pt", composer, "it is a Composer checkpoint (keys 'state', 'rng': an MLM/GLUE run's), not a vision")
    save("mlm_state.pt", {"bert.encoder.layer.0.attention.self.query.weight": torch.zeros(2, 2)},
         "holds none of this model's weights (its keys look like bert.encoder.layer.0.attention.self.query.weight)")
    bigger = timm.create_model("lion_tiny_patch16_224", patch_size=4, depth=2, embed_dim=48, num_heads=2,
                               img_size=28, num_classes=10)
    save("bigger.pth", {"model": bigger.state_dict(), "args": {"model": "lion_tiny_patch16_224",
                                                               "model_kwargs": {"depth": 2, "embed_dim": 48}}},
         ("does not fit the model of --model/--model-kwargs (shapes differ (checkpoint vs model): cls_token 1x1x48 "
          "vs 1x1x32, patch_embed.proj.weight 48x3x4x4 vs 32x3x4x4 (+1",  # +16, or +15 when fine-tuning drops the head
          " more); unexpected: blocks.1.norm1.weight, blocks.1.norm1.bias (+11 more)); it was saved with --model "
          "lion_tiny_patch16_224 --model-kwargs depth=2 embed_dim=48"))
    selective = {**ours, "model": {k: v for k, v in ours["model"].items() if "a_i" not in k},
                 "args": {**ours["args"], "mask_type": "Selective"}}  # LION-S: the gate is a Linear layer
    selective["model"].update({"blocks.0.attn.a_i.weight": torch.zeros(2, 32),
                               "blocks.0.attn.a_i.bias": torch.zeros(2)})
    save("selective.pth", selective, "missing: blocks.0.attn.a_i; unexpected: blocks.0.attn.a_i.weight, "
         "blocks.0.attn.a_i.bias); it was saved with --model lion_tiny_patch16_224 --model-kwargs patch_size=4 "
         "depth=1 embed_dim=32 num_heads=2 --mask_type Selective --order Normal")
    save("module.pth", bigger, "refused to unpickle image_classification.models_lion.Block, "
         "image_classification.models_lion.LionAttention, image_classification.models_lion.LionVisionTransformer "
         "and 10 more (loading allows tensors, plain containers and argparse.Namespace, so a file cannot run code); "
         "if you trust this file, add --trust-checkpoint")
    save("no_model.pth", {"state_dict": ours["model"], "epoch": 3}, "holds no model state dict (top-level keys: "
         "state_dict, epoch)")
    return files


@pytest.mark.parametrize("name", ["empty.pth", "text.pth", "truncated.pth", "composer.pt", "mlm_state.pt",
                                  "bigger.pth", "selective.pth", "module.pth", "no_model.pth"])
@pytest.mark.parametrize("flag", ["--resume", "--finetune"])
def test_unusable_checkpoints_stop_before_training(data, trained, tmp_path, name, flag):
    path, phrase = write_checkpoints(tmp_path, trained)[name]
    if flag == "--finetune" and name == "selective.pth":  # fine-tuning keeps missing LION gates at their init
        phrase = "unexpected: blocks.0.attn.a_i.weight, blocks.0.attn.a_i.bias)"
    out = tmp_path / "out"
    message = cli_error(argv(data, flag, str(path), "--output_dir", str(out)))
    phrases = phrase if isinstance(phrase, tuple) else (phrase,)
    assert message.startswith(f"main_lion.py: error: {flag} {path}: "), message
    assert all(p in message for p in phrases), message
    assert not out.exists()


@pytest.mark.parametrize("flag", ["--resume", "--finetune", "--teacher-path"])
@pytest.mark.parametrize("writer", ["torch.save", "pickle protocol 2", "pickle protocol 4"])
def test_a_malicious_checkpoint_cannot_run_code(data, tmp_path, flag, writer):
    marker, path = tmp_path / "owned", tmp_path / "evil.pth"
    if writer == "torch.save":
        torch.save({"model": Exploit(marker)}, path)
    else:
        path.write_bytes(pickle.dumps({"model": Exploit(marker)}, protocol=int(writer[-1])))
    extra = ["--distillation-type", "hard", "--teacher-model", "test_resnet"] if flag == "--teacher-path" else []
    message = cli_error(argv(data, flag, str(path), *extra, "--output_dir", str(tmp_path / "out")))
    if writer == "pickle protocol 4":  # torch's weights-only reader stops at the first protocol-4 opcode
        assert message == (f"main_lion.py: error: {flag} {path}: cannot be read: not a torch.save file "
                           f"({path.stat().st_size} bytes; UnpicklingError: Unsupported operand 149)")
    else:  # torch names a builtin "exec" in a plain pickle, "builtins.exec" in a torch.save archive
        exec_name = "builtins.exec" if writer == "torch.save" else "exec"
        assert message == (f"main_lion.py: error: {flag} {path}: refused to unpickle {exec_name} (loading allows "
                           "tensors, plain containers and argparse.Namespace, so a file cannot run code); if you "
                           "trust this file, add --trust-checkpoint")
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_trust_checkpoint_opts_in_to_full_unpickling(data, trained, tmp_path):
    """A DeiT-style checkpoint (args as a Namespace) loads as is; one holding another class needs the opt-in."""
    checkpoint = load(trained)
    deit = tmp_path / "deit.pth"
    torch.save({**checkpoint, "args": argparse.Namespace(model="lion_tiny_patch16_224", lr=5e-4)}, deit)
    assert main(get_args_parser().parse_args(argv(data, "--eval", "--resume", str(deit))))["test_stats"]
    with_path = tmp_path / "with_path.pth"
    torch.save({**checkpoint, "args": {"output_dir": pathlib.PurePosixPath("/runs/a")}}, with_path)
    message = cli_error(argv(data, "--eval", "--resume", str(with_path)))
    assert "refused to unpickle pathlib.PurePosixPath" in message and "--trust-checkpoint" in message
    stats = main(get_args_parser().parse_args(argv(data, "--eval", "--resume", str(with_path), "--trust-checkpoint")))
    torch.testing.assert_close(stats["model"].state_dict()["head.weight"], checkpoint["model"]["head.weight"])


def test_resume_of_a_finished_run_is_refused(data, trained):
    message = cli_error(argv(data, "--resume", str(trained), epochs=1))
    assert message == (f"main_lion.py: error: --resume {trained} has finished epoch 0 of --epochs 1: nothing left "
                       "to train (raise --epochs, or add --eval)")


def make_folder(root, splits):
    """``{split: {class: number of images}}`` as PNG files."""
    from PIL import Image
    for split, classes in splits.items():
        for name, count in classes.items():
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(np.full((28, 28), 20 * i % 256, np.uint8)).save(root / split / name / f"{i}.png")
    return root


@pytest.mark.parametrize("splits,message", [
    ({"train": {"a": 0, "b": 0}, "val": {"a": 1, "b": 1}},
     "train/: class folder(s) a, b hold no images (allowed extensions: .jpg, .jpeg, .png"),
    ({"train": {"a": 8, "b": 0}, "val": {"a": 1, "b": 1}}, "train/: class folder(s) b hold no images"),
    ({"train": {}, "val": {"a": 1}}, "train/: Couldn't find any class folder in"),
    ({"train": {"a": 8, "b": 8}}, "no val/ folder (expected"),
    ({"train": {"a": 8, "b": 8}, "val": {"a": 1, "c": 1}},
     "train/ and val/ must hold the same class folders: train/ has 2 (b not in val/), val/ has 2 (c not in train/)"),
    ({"train": {"a": 3, "b": 3}, "val": {"a": 1, "b": 1}},
     "--batch-size 8 × 1 process(es) exceeds the 6 training images of --data-path"),
])
def test_bad_data_folders_stop_before_training(tmp_path, splits, message):
    root = make_folder(tmp_path / "imagenet", splits)
    (root / "train").mkdir(exist_ok=True)
    out = tmp_path / "out"
    error = cli_error(argv(str(root), "--data-set", "IMNET", "--output_dir", str(out)))
    assert error.startswith("main_lion.py: error: --") and message in error, error
    assert not out.exists()


@pytest.mark.parametrize("flags,message", [
    (["--lr", "-1"], "--lr must be > 0, got -1.0"),
    (["--lr", "nan"], "--lr must be > 0, got nan"),
    (["--drop-path", "1.5"], "--drop-path must be in [0, 1), got 1.5"),
    (["--smoothing", "inf"], "--smoothing must be in [0, 1), got inf"),
    (["--clip-grad", "0"], "--clip-grad must be > 0 (or not given), got 0.0"),
    (["--num_workers", "-2"], "--num_workers must be ≥ 0, got -2"),
    (["--dist-timeout", "0"], "--dist-timeout must be > 0 seconds, got 0.0"),
    (["--opt", "adamq"], "--opt 'adamq' is not a timm optimizer; e.g. adamw, sgd, lamb, lion "
                         "(timm.optim.list_optimizers() lists all)"),
    (["--sched", "cosin"], "--sched must be one of cosine, tanh, step, constant, multistep, plateau, poly, rsqrt, "
                           "got 'cosin'"),
    (["--compile", "--compile-backend", "turbo"], "--compile-backend 'turbo' is not a torch.compile backend; "
                                                    "e.g. inductor, aot_eager, eager"),
    (["--compile", "--compile-backend", "aot_eager", "--compile-mode", "reduce-overhead"],
     "--compile-mode 'reduce-overhead' needs --compile-backend inductor (got 'aot_eager'); other backends take only "
     "--compile-mode default"),
    (["--model-kwargs", "depth"], "--model-kwargs expects KEY=VALUE items, got 'depth'"),
])
def test_bad_flag_values_stop_before_training(data, tmp_path, flags, message):
    out = tmp_path / "out"
    assert cli_error(argv(data, *flags, "--output_dir", str(out))) == f"main_lion.py: error: {message}"
    assert not out.exists()


# ---------------------------------------------------------------------------------------------- crashes

def argv_without_data(tmp_path, *flags):
    """The tiny run's flags with a --data-path that reading would refuse ("no train/ folder"): a check that fires
    only after the data is read says so in its message."""
    (tmp_path / "images").mkdir(exist_ok=True)
    return argv(str(tmp_path / "images"), "--data-set", "IMNET", *flags)


GEOMETRY = "--model lion_tiny_patch16_224 (--input-size {size} --model-kwargs patch_size=4 depth=1 embed_dim=32 " \
           "num_heads={heads}) cannot be built: "


@pytest.mark.parametrize("flags,message", [
    (["--input-size", "30"], GEOMETRY.format(size=30, heads=2) + "img_size 30 is not a multiple of patch_size 4; "
                                                                 "e.g. img_size 28 or 32"),
    (["--model-kwargs", "patch_size=4", "depth=1", "embed_dim=32", "num_heads=3"],
     GEOMETRY.format(size=28, heads=3) + "embed_dim (32) must be divisible by num_heads (3): each head takes "
                                         "embed_dim / num_heads channels"),
    (["--eval"], "--eval needs the weights to score: add --resume CHECKPOINT (or --finetune CHECKPOINT); without "
                 "one it would evaluate a randomly initialised model"),
    (["--output_dir", "{tmp}/a_file"], "--output_dir {tmp}/a_file: exists and is not a directory; give a directory "
                                       "(it is created if missing)"),
    *[(["--output_dir", "{tmp}/run", *more], "--output_dir {tmp}/run already holds a run's checkpoint.pth, which this "
                                             "run would overwrite; continue that run with --resume "
                                             "{tmp}/run/checkpoint.pth, or choose another --output_dir")
      for more in ([], ["--finetune", "{tmp}/run/checkpoint.pth"])],
])
def test_bad_invocations_stop_before_any_data_is_read(tmp_path, flags, message):
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "run").mkdir()
    torch.save({"model": {}}, tmp_path / "run" / "checkpoint.pth")
    before = (tmp_path / "run" / "checkpoint.pth").read_bytes()
    flags = [f.format(tmp=tmp_path) for f in flags]
    error = cli_error(argv_without_data(tmp_path, *flags))
    assert error == f"main_lion.py: error: {message.format(tmp=tmp_path)}"
    assert (tmp_path / "run" / "checkpoint.pth").read_bytes() == before


def test_a_bad_invocation_exits_1_with_one_line_and_no_traceback(tmp_path):
    proc = run_script(argv_without_data(tmp_path, "--input-size", "30"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [f"main_lion.py: error: {GEOMETRY.format(size=30, heads=2)}img_size 30 "
                                                "is not a multiple of patch_size 4; e.g. img_size 28 or 32"]


def folder_with_unreadable_images(root):
    """Two classes of 8 training images, one of them empty and one cut after 30 bytes (a PNG header)."""
    make_folder(root, {"train": {"a": 8, "b": 8}, "val": {"a": 2, "b": 2}})
    (root / "train" / "a" / "3.png").write_bytes(b"")
    cut = root / "train" / "b" / "5.png"
    cut.write_bytes(cut.read_bytes()[:30])
    return root


def test_an_unreadable_image_stops_the_run_naming_the_file(tmp_path):
    root = folder_with_unreadable_images(tmp_path / "imagenet")
    error = cli_error(argv(str(root), "--data-set", "IMNET", "--batch-size", "4", epochs=1))
    assert error.startswith("main_lion.py: error: " + str(root / "train")), error
    assert "cannot be read as an image (UnidentifiedImageError: cannot identify image file" in error
    assert error.endswith("; --bad-images skip skips such files")


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_images_skip_replaces_and_counts_unreadable_files(tmp_path, workers, caplog):
    root = folder_with_unreadable_images(tmp_path / "imagenet")
    out = tmp_path / "out"
    main(get_args_parser().parse_args(argv(str(root), "--data-set", "IMNET", "--batch-size", "4", "--bad-images",
                                           "skip", "--num_workers", str(workers), "--output_dir", str(out),
                                           "--no-model-ema", epochs=2)))
    records = log_records(out)
    assert [(r["train_skipped_images"], r["test_skipped_images"]) for r in records] == [(2, 0), (2, 0)]
    assert "unreadable image files skipped in epoch 1 (--bad-images skip)" in caplog.text


@pytest.mark.parametrize("content, problem", [
    (b"GIF89a not gzip", "BadGzipFile: Not a gzipped file (b'GI')"),
    (gzip.compress(b"<html>moved</html>"), "ValueError: no idx header of uint8 data"),
    (gzip.compress(b"\x00\x00\x08\x03" + (60000).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + b"\x00" * 99),
     "ValueError: cannot reshape array of size 99 into shape (60000,28,28)"),
])
def test_a_fashion_mnist_file_that_is_not_idx_is_one_line(tmp_path, content, problem):
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(content)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(content)
    error = cli_error(argv(str(tmp_path), "--data-set", "FMNIST"))
    assert error == (f"main_lion.py: error: --data-path {tmp_path} (--data-set FMNIST): "
                     f"{tmp_path / 'train-images-idx3-ubyte.gz'}: not a readable idx file ({problem})")


def test_cifar_download_without_a_network_is_one_line(tmp_path, monkeypatch):
    import urllib.request

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    (tmp_path / "cifar").mkdir()
    error = cli_error(argv(str(tmp_path / "cifar"), "--data-set", "CIFAR10", "--download"))
    assert error == (f"main_lion.py: error: --data-path {tmp_path / 'cifar'} (--data-set CIFAR10): --download could "
                     "not fetch CIFAR10 (URLError: <urlopen error [Errno -3] Temporary failure in name resolution>); "
                     "offline? place torchvision's files under --data-path instead")


# ---------------------------------------------------------------------------------------------- library boundary

@pytest.mark.parametrize("change,message", [
    (dict(k=(2, 3, 9, 8)), "k must have q's shape (B, H, L, d) = (2, 3, 10, 8), got (2, 3, 9, 8)"),
    (dict(q=(2, 3, 10)), "q must be (B, H, L, d), got (2, 3, 10)"),
    (dict(v=(2, 3, 9, 5)), "v must be (B, H, L, dv) = (2, 3, 10, dv) like q (2, 3, 10, 8), got (2, 3, 9, 5)"),
    (dict(log_a=(4,)), "log_a must be (H,) = (3,) or (B, H, L) = (2, 3, 10) for q of shape (B, H, L, d), got (4,)"),
    (dict(log_a=(2, 10, 3)), "log_a must be (H,) = (3,) or (B, H, L) = (2, 3, 10) for q of shape (B, H, L, d), got "
                             "(2, 10, 3)"),
    (dict(key_padding_mask=(2, 9)), "key_padding_mask must be (B, L) = (2, 10) for q of shape (B, H, L, d) = "
                                    "(2, 3, 10, 8), got (2, 9)"),
    (dict(key_padding_mask="float"), "key_padding_mask must be a bool tensor (True for real tokens), got "
                                     "torch.float32"),
    (dict(orders=[((9,), (3,))]), "orders[0]'s permutation must be (L,) = (10,), got (9,)"),
    (dict(orders=[((10,), (2,))]), "orders[0]'s log_a must be (H,) = (3,) or (B, H, L) = (2, 3, 10)"),
])
@pytest.mark.parametrize("form", ["attention", "rnn", "chunk"])
def test_lion_attention_names_an_argument_of_the_wrong_shape(change, message, form):
    shapes = {"q": (2, 3, 10, 8), "k": (2, 3, 10, 8), "v": (2, 3, 10, 5), "log_a": (3,), **change}
    args = {name: -torch.rand(shape) if name == "log_a" else torch.randn(shape)
            for name, shape in shapes.items() if name in ("q", "k", "v", "log_a")}
    kwargs = {}
    if "key_padding_mask" in change:
        mask = change["key_padding_mask"]
        kwargs["key_padding_mask"] = torch.ones(2, 10) if mask == "float" else torch.ones(mask, dtype=torch.bool)
    if "orders" in change:
        kwargs["orders"] = [(torch.arange(p[0]), -torch.rand(la)) for p, la in change["orders"]]
    with pytest.raises(ValueError) as info:
        lion_attention(args["q"], args["k"], args["v"], args["log_a"], form=form, **kwargs)
    assert str(info.value).startswith(message), str(info.value)


def test_vision_models_refuse_bad_geometry_and_images_of_the_wrong_shape():
    tiny = dict(patch_size=4, depth=1, num_classes=10)
    with pytest.raises(ValueError, match=r"^img_size 30 is not a multiple of patch_size 4; e.g. img_size 28 or 32$"):
        timm.create_model("lion_tiny_patch16_224", img_size=30, embed_dim=32, num_heads=2, **tiny)
    with pytest.raises(ValueError, match=r"^embed_dim \(30\) must be divisible by num_heads \(4\)"):
        timm.create_model("lion_tiny_patch16_224", img_size=28, embed_dim=30, num_heads=4, **tiny)
    model = timm.create_model("lion_tiny_patch16_224", img_size=28, embed_dim=32, num_heads=2, **tiny)
    for shape, message in (((2, 3, 30, 30), r"x's height and width \(30, 30\) must be multiples of patch_size "
                                            r"\(4, 4\)"),
                           ((2, 1, 28, 28), r"x must be images \(B, 3, H, W\), got shape \(2, 1, 28, 28\)"),
                           ((3, 28, 28), r"x must be images \(B, 3, H, W\), got shape \(3, 28, 28\)")):
        for forward in (model, model.forward_features, model.forward_intermediates):
            with pytest.raises(ValueError, match=message):
                forward(torch.randn(shape))
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)  # dynamic image size: any multiple of the patch


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    proc = run_script(argv(data, "--output_dir", str(out)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


@pytest.mark.parametrize("fault", ["kill@checkpoint.pth:2", "kill@step:7"])
def test_sigkill_loses_at_most_the_work_since_the_last_checkpoint(data, uninterrupted, tmp_path, fault):
    """SIGKILL in epoch 1's checkpoint save (temporary file written, not renamed) or in epoch 1's third step
    (5 steps per epoch); resuming (in this process: one thread, like the scripts) from the last complete
    checkpoint ends exactly as the uninterrupted run."""
    out = tmp_path / "out"
    killed = run_script(argv(data, "--output_dir", str(out)), fault=fault)
    assert killed.returncode == -9
    assert load(out / "checkpoint.pth")["epoch"] == 0  # the last complete checkpoint, loadable
    temporaries = [p.name for p in out.iterdir() if ".tmp" in p.name]
    if fault.startswith("kill@checkpoint"):  # the complete but never renamed new checkpoint
        assert len(temporaries) == 1 and temporaries[0].startswith("checkpoint.pth.tmp")
    else:
        assert temporaries == []
    main(get_args_parser().parse_args(argv(data, "--output_dir", str(out), "--resume", str(out / "checkpoint.pth"))))
    assert not [p.name for p in out.iterdir() if ".tmp" in p.name]
    assert_same_training_state(load(uninterrupted / "checkpoint.pth"), load(out / "checkpoint.pth"))
    expected, got = log_records(uninterrupted), log_records(out)
    assert [r["epoch"] for r in got] == [0, 1]
    for a, b in zip(expected, got):
        assert b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-6)
        assert b["test_loss"] == pytest.approx(a["test_loss"], abs=1e-6)


def test_nonfinite_loss_stops_the_run_and_keeps_the_last_checkpoint(data, uninterrupted, tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setenv("LION_FAULT", "nan@step:7")  # epoch 1, step 2
    message = cli_error(argv(data, "--output_dir", str(out)))
    assert message == ("main_lion.py: error: non-finite loss (nan) at epoch 1, step 2 of 5; stopped before this step "
                       "changed the weights (--skip-nonfinite skips such steps instead); the last checkpoint "
                       f"({out / 'checkpoint.pth'}) is untouched")
    assert load(out / "checkpoint.pth")["epoch"] == 0 and [r["epoch"] for r in log_records(out)] == [0]
    assert not [p.name for p in out.iterdir() if ".tmp" in p.name]
    monkeypatch.delenv("LION_FAULT")  # the checkpoint is the good epoch-0 state: resuming ends as an uninterrupted run
    main(get_args_parser().parse_args(argv(data, "--output_dir", str(out), "--resume", str(out / "checkpoint.pth"))))
    assert_same_training_state(load(uninterrupted / "checkpoint.pth"), load(out / "checkpoint.pth"))


def test_skip_nonfinite_skips_and_counts_the_step(data, tmp_path, monkeypatch, caplog):
    out = tmp_path / "out"
    monkeypatch.setenv("LION_FAULT", "nan@step:2")
    result = main(get_args_parser().parse_args(argv(data, "--output_dir", str(out), "--skip-nonfinite")))
    assert [r["train_skipped_steps"] for r in log_records(out)] == [1, 0]
    assert "non-finite loss (nan) at epoch 0, step 2 of 5: step skipped (1 skipped this epoch)" in caplog.text
    assert all(torch.isfinite(v).all() for v in result["model"].state_dict().values())


# ---------------------------------------------------------------------------------------------- processes

FAULTY_RANK = textwrap.dedent("""
    import os, sys, time
    from image_classification import main_lion

    fault, real_train_one_epoch = sys.argv.pop(1), main_lion.train_one_epoch

    def train_one_epoch(*args, **kwargs):
        if os.environ["RANK"] == "1":
            if fault == "raise":
                raise RuntimeError("planted failure on rank 1")
            time.sleep(600)  # hangs: nothing but the other rank's --dist-timeout can end the run
        return real_train_one_epoch(*args, **kwargs)

    main_lion.train_one_epoch = train_one_epoch
    main_lion.cli()
""")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("fault", ["raise", "hang"])
def test_one_failing_rank_ends_the_other(data, tmp_path, fault):
    (tmp_path / "faulty_rank.py").write_text(FAULTY_RANK)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--rdzv-backend=c10d",
           f"--rdzv-endpoint=127.0.0.1:{free_port()}", str(tmp_path / "faulty_rank.py"), fault,
           *argv(data, "--output_dir", str(out), *(["--dist-timeout", "8"] if fault == "hang" else []))]
    start = time.time()
    proc = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120)
    elapsed, output = time.time() - start, proc.stdout + proc.stderr
    assert proc.returncode != 0 and elapsed < 90, output[-3000:]
    if fault == "raise":  # one line names the rank and the cause (after that rank's traceback)
        named = [line for line in output.splitlines() if re.search(r"error: rank \d+ of \d+", line)]
        assert named == ["main_lion.py: error: rank 1 of 2 failed: RuntimeError: planted failure on rank 1"], output
        assert "Traceback" in output and "rank      : 1 (local_rank: 1)" in output  # torchrun's summary: rank 1
    else:
        assert ("main_lion.py: error: rank 0: lost contact with the other processes (" in output
                and "Collectives give up after --dist-timeout 8 s" in output), output[-3000:]
    assert not (out / "checkpoint.pth").exists()


# ---------------------------------------------------------------------------------------------- speed, precision

def test_regional_compile_trains_like_eager(data, trained, tmp_path):
    """--compile compiles each block in place (aot_eager here: inductor's C++ build takes ~35 s on 2 CPU cores)."""
    compiled = main(get_args_parser().parse_args(argv(data, *ONE_STEP, "--compile", "--compile-backend", "aot_eager",
                                                      "--output_dir", str(tmp_path), epochs=1)))
    assert compiled["model"].blocks[0]._compiled_call_impl is not None
    saved, eager = load(tmp_path / "checkpoint.pth")["model"], load(trained)["model"]
    assert saved.keys() == eager.keys()  # in-place compilation keeps the keys
    for key, value in eager.items():
        torch.testing.assert_close(saved[key], value, rtol=0, atol=1e-6, msg=key)
    assert "--compile" in get_args_parser().format_help() and "regional" in get_args_parser().format_help()


def test_cuda_graph_steps_are_marked(monkeypatch):
    """With blocks compiled to CUDA graphs, every training step starts a new cudagraph iteration."""
    from image_classification.engine import LossScaler, train_one_epoch
    marks = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    model = torch.nn.Linear(4, 3)
    data = [(torch.randn(2, 4), torch.tensor([0, 2])) for _ in range(3)]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = lambda x, out, y: torch.nn.functional.cross_entropy(out, y)
    train_one_epoch(model, loss, data, opt, torch.device("cpu"), 0, LossScaler("cpu", False),
                    print_freq=100, cuda_graphs=True)
    assert len(marks) == 3
    train_one_epoch(model, loss, data, opt, torch.device("cpu"), 0, LossScaler("cpu", False), print_freq=100)
    assert len(marks) == 3


@pytest.mark.parametrize("form", ["attention", "rnn", "chunk"])
@pytest.mark.parametrize("mask", ["Selective", "Decay"])
@pytest.mark.parametrize("gate", ["open", "shut"])
@pytest.mark.parametrize("precision", ["bf16 inputs", "bf16 autocast"])
def test_lion_s_and_d_stay_finite_in_bf16_with_extreme_gates(form, mask, gate, precision):
    """log a ≈ 0 (gate open, a ≈ 1: sums over all 1024 tokens) and log a ≈ −30 (gate shut): finite outputs and
    gradients, close to the fp64 result."""
    torch.manual_seed(0)
    B, H, L, d = 1, 2, 1024, 16
    dtype = torch.bfloat16 if precision == "bf16 inputs" else torch.float32
    q, k, v = (torch.randn(B, H, L, d, dtype=dtype, requires_grad=True) for _ in range(3))
    pre = torch.full((B, L, H) if mask == "Selective" else (H,), 30.0 if gate == "open" else -30.0,
                     dtype=dtype, requires_grad=True)

    def attention(q, k, v, pre, form=form):
        log_a = selective_log_gates(-pre) if mask == "Selective" else decay_log_gates(pre, L, B)
        return lion_attention(q, k, v, log_a, feature_map="normalized_silu", scale=d ** -0.5, form=form,
                              chunk_size=64)

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16 autocast"):
        y = attention(q, k, v, pre)
    y.float().square().mean().backward()
    for name, t in (("y", y), ("dq", q.grad), ("dk", k.grad), ("dv", v.grad), ("dgate", pre.grad)):
        assert torch.isfinite(t).all(), f"{name} not finite"
    reference = attention(*(t.detach().double() for t in (q, k, v, pre)), form="attention")
    assert (y.double() - reference).abs().max() < 0.1 * reference.abs().max()


def test_a_stopped_run_is_no_argument_error_and_unread_flags_are_gone():
    """A non-finite loss or a lost process stops the run (one line, status 1) without being reported as bad input;
    flags the script never read are not offered."""
    from image_classification.main_lion import ArgumentError, TrainingStopped
    assert issubclass(TrainingStopped, SystemExit) and not issubclass(TrainingStopped, ArgumentError)
    assert str(TrainingStopped("loss is nan").code) == "main_lion.py: error: loss is nan"
    with pytest.raises(SystemExit):
        get_args_parser().parse_args(["--resplit"])
