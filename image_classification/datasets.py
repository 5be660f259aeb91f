"""Data sets of the vision trainer (DeiT's ``build_dataset``/``build_transform`` plus Fashion-MNIST).

``--data-set``:
  FMNIST_MINI  the embedded default: 3000 train / 1000 val real Fashion-MNIST images committed in ``data/``;
               materialised once as an ImageFolder tree (``train/<class>/*.png``, ``val/...``) under ``--data-path``.
  FMNIST       the full Fashion-MNIST (60k/10k) read from its idx files (Debian ``dataset-fashion-mnist``).
  IMNET        ImageFolder ``<data-path>/train`` and ``<data-path>/val``.
  CIFAR        CIFAR-100 (DeiT), CIFAR10: CIFAR-10; torchvision layout under ``--data-path`` (``--download`` to fetch).
  INAT, INAT19 iNaturalist 2018/2019 in DeiT's json layout.
"""
from __future__ import annotations

import gzip
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from torch.utils.data import Dataset
from torchvision import datasets, transforms
from torchvision.datasets.folder import ImageFolder

from image_classification.augment import three_augment_transform
from image_classification.image_files import GuardedImages, checked_loader

_logger = logging.getLogger(__name__)

DATA_SETS = ("FMNIST_MINI", "FMNIST", "IMNET", "CIFAR", "CIFAR10", "INAT", "INAT19")
# ImageFolder sorts class folders by name: the digit prefix keeps Fashion-MNIST's label numbering.
FMNIST_CLASSES = ("0_t-shirt_top", "1_trouser", "2_pullover", "3_dress", "4_coat",
                  "5_sandal", "6_shirt", "7_sneaker", "8_bag", "9_ankle_boot")
FMNIST_DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
FMNIST_MINI_NPZ = Path(__file__).with_name("data") / "fmnist_mini.npz"
FMNIST_FILES = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def default_data_path(data_set):
    """Where a data set lives when ``--data-path`` is not given (None: it must be given)."""
    if data_set == "FMNIST_MINI":
        cache = os.environ.get("LION_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "lion")
        return os.path.join(cache, "fmnist_mini")
    if data_set == "FMNIST":
        return FMNIST_DEBIAN_DIR
    return None


# ---------------------------------------------------------------------------------------------- Fashion-MNIST

def _read_idx(path):
    """An idx file (optionally gzipped): big-endian header, dims, then uint8 data."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
        if len(data) < 4 or data[:3] != b"\x00\x00\x08":  # zero, zero, uint8 type code, then the rank
            raise ValueError("no idx header of uint8 data")
        ndim = data[3]
        shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
        return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)
    except (OSError, EOFError, ValueError) as err:  # not gzip, cut short, another format
        raise DataError(f"{path}: not a readable idx file ({type(err).__name__}: {str(err)[:120]})") from None


def _find_idx(root, stem):
    for name in (stem, stem + ".gz"):
        if os.path.isfile(os.path.join(root, name)):
            return os.path.join(root, name)
    raise FileNotFoundError(f"no {stem}[.gz] in {root} (FMNIST needs the Fashion-MNIST idx files, "
                            f"e.g. from `apt-get install dataset-fashion-mnist` into {FMNIST_DEBIAN_DIR})")


def read_fashion_mnist(root, train):
    """(images uint8 [N, 28, 28], labels int64 [N]) of the train (60k) or test (10k) split."""
    image_file, label_file = (_find_idx(root, stem) for stem in FMNIST_FILES[train])
    return _read_idx(image_file), _read_idx(label_file).astype(np.int64)


class ArrayImageDataset(Dataset):
    """Grayscale uint8 images held in memory, served as RGB PIL images (like ImageFolder's loader)."""

    def __init__(self, images, labels, transform=None, classes=FMNIST_CLASSES):
        self.images, self.targets, self.transform, self.classes = images, [int(t) for t in labels], transform, classes

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        image = Image.fromarray(self.images[index]).convert("RGB")
        return (self.transform(image) if self.transform else image), self.targets[index]


def write_image_folder(root, splits, classes=FMNIST_CLASSES, per_class=None):
    """Write ``{split: (images, labels)}`` as ``root/<split>/<class>/<index>.png`` atomically.

    The tree is built in a temporary sibling directory and renamed into place, so concurrent callers
    (e.g. several ranks) and interrupted runs never see a half-written tree. ``per_class`` keeps only the
    first images of each class (tests use it for tiny sets).
    """
    root = Path(root)
    if root.is_dir():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=root.name + ".tmp", dir=root.parent))
    try:
        for split, (images, labels) in splits.items():
            for name in classes:
                (tmp / split / name).mkdir(parents=True)
            counts = [0] * len(classes)
            for i, (image, label) in enumerate(zip(images, labels)):
                if per_class is not None and counts[label] >= per_class:
                    continue
                counts[label] += 1
                Image.fromarray(image).save(tmp / split / classes[label] / f"{i:05d}.png")
        os.replace(tmp, root)
    except OSError:
        if not root.is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # a no-op after a successful rename
    return root


def materialise_fmnist_mini(root, per_class=None):
    """The embedded subset as an ImageFolder tree under ``root`` (created on first use)."""
    root = Path(root)
    if not root.is_dir():
        _logger.info("materialising the embedded Fashion-MNIST subset into %s", root)
        with np.load(FMNIST_MINI_NPZ) as npz:
            splits = {s: (npz[f"{s}_images"], npz[f"{s}_labels"].astype(np.int64)) for s in ("train", "val")}
        write_image_folder(root, splits, per_class=per_class)
    return root


# ---------------------------------------------------------------------------------------------- iNaturalist

class INatDataset(ImageFolder):
    """iNaturalist 2018/2019 from DeiT's json layout (``train{year}.json``, ``val{year}.json``, ``categories.json``)."""

    def __init__(self, root, train=True, year=2018, transform=None, target_transform=None, category="name",
                 loader=checked_loader):
        self.loader, self.root, self.transform, self.target_transform = loader, root, transform, target_transform
        self.year = year
        with open(os.path.join(root, f"{'train' if train else 'val'}{year}.json")) as f:
            data = json.load(f)
        with open(os.path.join(root, "categories.json")) as f:
            categories = json.load(f)
        with open(os.path.join(root, f"train{year}.json")) as f:
            train_data = json.load(f)
        names = sorted({categories[int(a["category_id"])][category] for a in train_data["annotations"]})
        index = {name: i for i, name in enumerate(names)}
        self.nb_classes = len(names)
        self.samples = []
        for image in data["images"]:
            cut = image["file_name"].split("/")
            target = index[categories[int(cut[2])][category]]
            self.samples.append((os.path.join(root, cut[0], cut[2], cut[3]), target))
        self.targets = [t for _, t in self.samples]


# ---------------------------------------------------------------------------------------------- builders

class DataError(ValueError):
    """A data folder that cannot serve as the requested data set; the message says why in one line."""


def image_folder(root, split, transform, bad_images="stop", loader_processes=0):
    """``root/split/<class>/<image>``; every class folder must hold at least one image. A file that cannot be
    decoded stops the run naming it, or is skipped and counted (``bad_images``, image_classification/image_files.py)."""
    path = os.path.join(root, split)
    if not os.path.isdir(path):
        raise DataError(f"no {split}/ folder (expected {path}/<class>/<image files>)")
    try:
        folder = datasets.ImageFolder(path, transform=transform, loader=checked_loader)
        return GuardedImages(folder, bad_images, loader_processes)
    except FileNotFoundError as err:
        empty = re.match(r"Found no valid file for the classes (.*)\. Supported extensions are: (.*)", str(err))
        if not empty:
            raise DataError(f"{split}/: {err}") from None
        classes = empty.group(1).split(", ")
        more = f" (+{len(classes) - 3} more)" if len(classes) > 3 else ""
        raise DataError(f"{split}/: class folder(s) {', '.join(classes[:3])}{more} hold no images "
                        f"(allowed extensions: {empty.group(2)})") from None


def check_same_classes(dataset_train, dataset_val):
    """Folder data sets number their classes by sorted folder name: both splits must hold the same folders."""
    train, val = getattr(dataset_train, "classes", None), getattr(dataset_val, "classes", None)
    if train is None or val is None or list(train) == list(val):
        return
    only = lambda a, b: ", ".join(sorted(set(a) - set(b))[:3]) or "none"  # noqa: E731
    raise DataError(f"train/ and val/ must hold the same class folders: train/ has {len(train)} ({only(train, val)} "
                    f"not in val/), val/ has {len(val)} ({only(val, train)} not in train/)")

def build_dataset(is_train, args):
    """DeiT's ``build_dataset``: returns ``(dataset, nb_classes)``."""
    transform = build_transform(is_train, args)
    split, root = ("train" if is_train else "val"), args.data_path
    guard = {"bad_images": getattr(args, "bad_images", "stop"), "loader_processes": getattr(args, "num_workers", 0)}
    if args.data_set == "FMNIST_MINI":
        return image_folder(materialise_fmnist_mini(root), split, transform, **guard), 10
    if args.data_set == "FMNIST":
        images, labels = read_fashion_mnist(root, train=is_train)
        return ArrayImageDataset(images, labels, transform), 10
    if args.data_set == "IMNET":
        dataset = image_folder(root, split, transform, **guard)
        return dataset, len(dataset.classes)
    if args.data_set in ("CIFAR", "CIFAR10"):
        cls, n = (datasets.CIFAR100, 100) if args.data_set == "CIFAR" else (datasets.CIFAR10, 10)
        try:
            return cls(root, train=is_train, transform=transform, download=args.download), n
        except RuntimeError as err:  # torchvision: "Dataset not found or corrupted. ..."
            raise DataError(f"{err} (--download fetches it)") from None
        except OSError as err:  # --download without a network: urllib's URLError, a refused connection
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
            raise DataError(f"--download could not fetch {args.data_set} ({type(err).__name__}: {first}); offline? "
                            "place torchvision's files under --data-path instead") from None
    if args.data_set in ("INAT", "INAT19"):
        dataset = INatDataset(root, train=is_train, year=2018 if args.data_set == "INAT" else 2019,
                              category=args.inat_category, transform=transform)
        return dataset, dataset.nb_classes
    raise ValueError(f"--data-set must be one of {', '.join(DATA_SETS)}, got {args.data_set!r}")


def build_transform(is_train, args):
    """DeiT's transforms; images of at most 32 px get padded random crops instead of RandomResizedCrop."""
    resize_im = args.input_size > 32
    if is_train and getattr(args, "no_aug", False):  # timm's --no-aug: train on the evaluation transform
        is_train = False
    if is_train and args.ThreeAugment:
        return three_augment_transform(args)
    if is_train:
        transform = create_transform(
            input_size=args.input_size, is_training=True, color_jitter=args.color_jitter,
            auto_augment=None if args.aa in (None, "", "none") else args.aa,
            interpolation=args.train_interpolation, re_prob=args.reprob, re_mode=args.remode, re_count=args.recount)
        if not resize_im:  # small images: replace RandomResizedCrop by a padded RandomCrop (DeiT)
            transform.transforms[0] = transforms.Compose([transforms.Resize(args.input_size),
                                                          transforms.RandomCrop(args.input_size, padding=4)])
        return transform
    steps = []
    if resize_im:
        size = int(args.input_size / args.eval_crop_ratio)
        steps += [transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
                  transforms.CenterCrop(args.input_size)]
    else:
        steps.append(transforms.Resize(args.input_size))
    steps += [transforms.ToTensor(), transforms.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)]
    return transforms.Compose(steps)
