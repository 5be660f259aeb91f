"""image_classification/main_lion.py on CPU: short runs on a tiny real Fashion-MNIST subset (4 images per class)."""
import gzip
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from torchvision.datasets import ImageFolder

from image_classification import main_lion
from image_classification.datasets import (
    FMNIST_CLASSES,
    FMNIST_MINI_NPZ,
    build_transform,
    materialise_fmnist_mini,
    read_fashion_mnist,
)
from image_classification.losses import DistillationLoss
from image_classification.main_lion import get_args_parser, main
from image_classification.samplers import RASampler

TINY_MODEL = ["--model", "lion_tiny_patch16_224", "--model-kwargs", "patch_size=4", "depth=1", "embed_dim=32",
              "num_heads=2", "--input-size", "28"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return str(materialise_fmnist_mini(tmp_path_factory.mktemp("data") / "fmnist_tiny", per_class=4))


def run(data_path, *extra, model=TINY_MODEL):
    argv = [*model, "--data-set", "FMNIST_MINI", "--data-path", data_path, "--batch-size", "8", "--epochs", "1",
            "--num_workers", "0", "--device", "cpu", "--warmup-epochs", "0", "--print-freq", "100", *extra]
    return main(get_args_parser().parse_args(argv))


def read_log(output_dir):
    return [json.loads(line) for line in (output_dir / "log.txt").read_text().splitlines()]


def load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.mark.parametrize("mask_type,order", [("Lit", "Normal"), ("Decay", "Normal"), ("Selective", "Normal"),
                                             ("Decay", "S"), ("Selective", "S")])
def test_one_epoch_per_mask_type_writes_checkpoint_and_log(tiny_data, tmp_path, mask_type, order):
    out = tmp_path / "out"
    result = run(tiny_data, "--mask_type", mask_type, "--order", order, "--output_dir", str(out))
    (record,) = read_log(out)
    assert record["epoch"] == 0 and math.isfinite(record["train_loss"]) and math.isfinite(record["test_loss"])
    assert 0.0 <= record["test_acc1"] <= 100.0
    checkpoint = load(out / "checkpoint.pth")
    assert checkpoint["epoch"] == 0 and checkpoint["args"]["mask_type"] == mask_type
    assert (out / "best_checkpoint.pth").exists()
    assert not [p.name for p in out.iterdir() if ".tmp" in p.name]  # atomic writes leave no temporaries
    model = result["model"]
    assert model.mask_type == mask_type and model.order == order
    for key, value in model.state_dict().items():
        torch.testing.assert_close(checkpoint["model"][key], value, rtol=0, atol=0)
    if mask_type != "Lit" and order == "S":
        assert "blocks.0.attn.a2_i" in "".join(checkpoint["model"])


def test_resume_equals_uninterrupted_training(tiny_data, tmp_path, monkeypatch):
    """Default DeiT augmentation (mixup, cutmix, RandAugment, random erasing, drop path, EMA) stays on."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    common = ["--mask_type", "Selective", "--drop-path", "0.1", "--model-ema-decay", "0.9"]
    run(tiny_data, *common, "--epochs", "2", "--output_dir", str(straight))
    real_train_one_epoch = main_lion.train_one_epoch

    def interrupted_after_first_epoch(*args, **kwargs):  # the run dies in epoch 1, after epoch 0's checkpoint
        if kwargs.get("epoch", args[5]) > 0:
            raise KeyboardInterrupt
        return real_train_one_epoch(*args, **kwargs)

    monkeypatch.setattr(main_lion, "train_one_epoch", interrupted_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_data, *common, "--epochs", "2", "--output_dir", str(split))
    monkeypatch.undo()
    after_one_epoch = load(split / "checkpoint.pth")["model"]
    run(tiny_data, *common, "--epochs", "2", "--output_dir", str(split), "--resume", str(split / "checkpoint.pth"))
    a, b = load(straight / "checkpoint.pth"), load(split / "checkpoint.pth")
    assert a["epoch"] == b["epoch"] == 1
    for part in ("model", "model_ema"):
        for key in a[part]:
            torch.testing.assert_close(b[part][key], a[part][key], rtol=0, atol=1e-6, msg=f"{part}.{key}")
    assert a["optimizer"]["state"][0]["step"] == b["optimizer"]["state"][0]["step"]
    assert [r["epoch"] for r in read_log(split)] == [0, 1]
    assert read_log(split)[1]["train_loss"] == pytest.approx(read_log(straight)[1]["train_loss"], abs=1e-6)
    # the second epoch did change the weights, so the comparison above is not trivially true
    assert not torch.equal(after_one_epoch["blocks.0.attn.qkv.weight"], b["model"]["blocks.0.attn.qkv.weight"])


def test_resume_of_a_missing_checkpoint_fails_clearly(tiny_data, tmp_path):
    with pytest.raises(SystemExit, match=r"--resume .*no such checkpoint file"):
        run(tiny_data, "--resume", str(tmp_path / "missing.pth"))


def test_eval_of_a_checkpoint_agrees_across_formats(tiny_data, tmp_path):
    out = tmp_path / "out"
    run(tiny_data, "--mask_type", "Selective", "--order", "S", "--output_dir", str(out))
    stats = {fmt: run(tiny_data, "--mask_type", "Selective", "--order", "S", "--eval", "--resume",
                      str(out / "checkpoint.pth"), "--format", fmt, "--chunk_size", "8")
             for fmt in ("Attention", "RNN", "Chunk")}
    assert {s["model"].blocks[0].attn.format for s in stats.values()} == {"Attention", "RNN", "Chunk"}
    reference = stats["Attention"]["test_stats"]
    assert reference["acc1"] == pytest.approx(read_log(out)[0]["test_acc1"])
    for fmt in ("RNN", "Chunk"):
        assert stats[fmt]["test_stats"]["acc1"] == reference["acc1"]
        assert stats[fmt]["test_stats"]["loss"] == pytest.approx(reference["loss"], abs=1e-5)


def test_distillation_loss_terms():
    student = torch.randn(6, 10)
    teacher = torch.nn.Linear(4, 10)
    inputs, labels = torch.randn(6, 4), torch.randint(0, 10, (6,))
    ce = torch.nn.CrossEntropyLoss()
    with torch.no_grad():
        teacher_out = teacher(inputs)
    hard = DistillationLoss(ce, teacher, "hard", alpha=1.0, tau=1.0)(inputs, student, labels)
    torch.testing.assert_close(hard, F.cross_entropy(student, teacher_out.argmax(1)))
    soft_self = DistillationLoss(ce, teacher, "soft", alpha=1.0, tau=2.0)(inputs, teacher_out, labels)
    assert soft_self.abs().item() < 1e-6  # matching the teacher exactly costs nothing
    half = DistillationLoss(ce, teacher, "soft", alpha=0.5, tau=2.0)(inputs, student, labels)
    none = DistillationLoss(ce, teacher, "none", alpha=0.5, tau=2.0)(inputs, student, labels)
    assert half.item() != pytest.approx(none.item()) and none.item() == pytest.approx(ce(student, labels).item())


@pytest.mark.parametrize("distillation_type", ["soft", "hard"])
def test_training_with_a_tiny_teacher(tiny_data, tmp_path, distillation_type):
    teacher = timm.create_model("test_resnet", num_classes=10)
    torch.save({"model": teacher.state_dict()}, tmp_path / "teacher.pth")
    distilled, plain = tmp_path / "distilled", tmp_path / "plain"
    common = ["--mixup", "0", "--cutmix", "0"]
    run(tiny_data, *common, "--teacher-model", "test_resnet", "--teacher-path", str(tmp_path / "teacher.pth"),
        "--distillation-type", distillation_type, "--distillation-alpha", "0.5", "--output_dir", str(distilled))
    run(tiny_data, *common, "--output_dir", str(plain))
    loss = read_log(distilled)[0]["train_loss"]
    assert math.isfinite(loss) and loss != pytest.approx(read_log(plain)[0]["train_loss"], abs=1e-4)


def test_finetune_to_another_input_size(tiny_data, tmp_path):
    out, tuned = tmp_path / "pre", tmp_path / "tuned"
    common = ["--mask_type", "Decay", "--order", "S", "--pos_emb"]
    run(tiny_data, *common, "--output_dir", str(out))  # 28 px: 7×7 patches
    pretrained = load(out / "checkpoint.pth")["model"]
    loaded = run(tiny_data, *common, "--input-size", "32", "--finetune", str(out / "checkpoint.pth"), "--eval")
    model = loaded["model"]
    assert model.pos_embed.shape == (1, 8 * 8 + 1, 32)  # resampled to 8×8 patches
    torch.testing.assert_close(model.pos_embed[:, :1], pretrained["pos_embed"][:, :1])
    torch.testing.assert_close(model.blocks[0].attn.qkv.weight, pretrained["blocks.0.attn.qkv.weight"])
    assert 0.0 <= loaded["test_stats"]["acc1"] <= 100.0
    run(tiny_data, *common, "--input-size", "32", "--finetune", str(out / "checkpoint.pth"), "--attn-only",
        "--output_dir", str(tuned))
    assert math.isfinite(read_log(tuned)[0]["train_loss"])
    trained = load(tuned / "checkpoint.pth")["model"]
    torch.testing.assert_close(trained["blocks.0.mlp.fc1.weight"], pretrained["blocks.0.mlp.fc1.weight"])  # frozen
    assert not torch.equal(trained["blocks.0.attn.qkv.weight"], pretrained["blocks.0.attn.qkv.weight"])


@pytest.mark.parametrize("argv,message", [
    (["--data-set", "IMNET"], r"--data-path is required for --data-set IMNET"),
    (["--data-set", "IMNET", "--data-path", "/nonexistent/imagenet"], r"--data-path '/nonexistent/imagenet' is not"),
    (["--epochs", "0"], r"--epochs must be ≥ 1, got 0"),
    (["--model", "lion_huge_patch3"], r"--model 'lion_huge_patch3' is not a timm model; LION models: lion_base"),
    (["--data-path", "{data}", "--order", "S", "--model-kwargs", "patch_size=4", "img_size=28,32"],
     r"order='S' needs a square patch grid"),
])
def test_bad_arguments_stop_before_training(tiny_data, tmp_path, argv, message):
    out = tmp_path / "out"
    argv = [a.replace("{data}", tiny_data) for a in argv]
    with pytest.raises(SystemExit, match=message):
        main(get_args_parser().parse_args([*argv, "--output_dir", str(out), "--device", "cpu", "--num_workers", "0"]))
    assert not out.exists()


def test_unknown_data_set_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        get_args_parser().parse_args(["--data-set", "MNIST"])
    err = capsys.readouterr().err
    assert "--data-set" in err and "invalid choice: 'MNIST'" in err and "FMNIST_MINI" in err


def write_idx(path, array):
    """An idx file (gzipped): magic 0x0000 0x08 (uint8) ndim, big-endian dims, data."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_embedded_and_idx_fashion_mnist_agree(tiny_data, tmp_path):
    """The ImageFolder tree keeps the official label numbers and pixels; the idx reader (full data set) too."""
    with np.load(FMNIST_MINI_NPZ) as npz:
        images, labels = npz["val_images"], npz["val_labels"]
    folder = ImageFolder(str(Path(tiny_data) / "val"))
    assert folder.classes == list(FMNIST_CLASSES) and len(folder) == 40
    path, label = folder.samples[7]
    index = int(Path(path).stem)
    assert labels[index] == label
    np.testing.assert_array_equal(np.asarray(folder[7][0])[..., 0], images[index])
    assert folder[7][0].mode == "RGB"  # grayscale served as 3 channels
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images[:50])
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels[:50])
    idx_images, idx_labels = read_fashion_mnist(tmp_path, train=False)
    np.testing.assert_array_equal(idx_images, images[:50])
    np.testing.assert_array_equal(idx_labels, labels[:50])
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        read_fashion_mnist(tmp_path, train=True)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", images[50:90])
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels[50:90])
    out = tmp_path / "out"
    result = main(get_args_parser().parse_args([*TINY_MODEL, "--data-set", "FMNIST", "--data-path", str(tmp_path),
                                                "--batch-size", "8", "--epochs", "1", "--num_workers", "0",
                                                "--device", "cpu", "--output_dir", str(out)]))
    assert result["model"].num_classes == 10 and math.isfinite(read_log(out)[0]["train_loss"])


def test_repeated_augmentation_sampler_spreads_repeats_over_ranks():
    dataset = list(range(30))
    samplers = [RASampler(dataset, num_replicas=2, rank=r, shuffle=True, num_repeats=3, seed=5) for r in (0, 1)]
    for s in samplers:
        s.set_epoch(4)
    per_rank = [list(s) for s in samplers]
    assert [len(p) for p in per_rank] == [15, 15]  # fewer than 256 images: all kept, split over the ranks
    counts = Counter(per_rank[0] + per_rank[1])
    assert set(counts.values()) == {3}  # each chosen image three times per epoch ...
    assert set(per_rank[0]) == set(per_rank[1])  # ... its repeats spread over both ranks
    assert per_rank[0][:2] == [per_rank[1][0]] * 2  # (a a b | a b b): repeats alternate between the ranks
    samplers[0].set_epoch(5)
    assert list(samplers[0]) != per_rank[0]  # reshuffled every epoch


@pytest.mark.parametrize("flags", [["--ThreeAugment"], ["--ThreeAugment", "--src"], ["--no-aug"], []])
def test_train_transforms_give_normalised_rgb_tensors(tiny_data, flags):
    args = get_args_parser().parse_args(["--input-size", "28", *flags])
    image = ImageFolder(str(Path(tiny_data) / "train"))[0][0]
    torch.manual_seed(0)
    x = build_transform(True, args)(image)
    assert x.shape == (3, 28, 28) and x.dtype == torch.float32
    same = torch.equal(x, build_transform(False, args)(image))
    assert same == ("--no-aug" in flags)
