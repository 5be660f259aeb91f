"""Rebuild ``fmnist_mini.npz`` (the embedded default data set) from the Fashion-MNIST idx files.

    python image_classification/data/build_fmnist_mini.py [/usr/share/datasets/fashion-mnist]

The idx files come from Debian's ``dataset-fashion-mnist`` package (``apt-get install dataset-fashion-mnist``).
The selection is balanced (a fixed number per class) and fixed by a seed, so the output is reproducible.
"""
import argparse
import io
import os
from pathlib import Path

import numpy as np

from image_classification.datasets import FMNIST_DEBIAN_DIR, read_fashion_mnist

TRAIN_PER_CLASS, VAL_PER_CLASS, SEED = 300, 100, 0


def balanced_subset(labels, per_class, rng):
    picks = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(10)]
    return np.sort(np.concatenate(picks))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("idx_dir", nargs="?", default=FMNIST_DEBIAN_DIR)
    parser.add_argument("--out", default=str(Path(__file__).with_name("fmnist_mini.npz")))
    args = parser.parse_args()
    rng = np.random.default_rng(SEED)
    arrays = {}
    for split, per_class in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)):
        images, labels = read_fashion_mnist(args.idx_dir, train=split == "train")
        keep = balanced_subset(labels, per_class, rng)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images[keep], labels[keep].astype(np.uint8)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    tmp = f"{args.out}.tmp{os.getpid()}"
    Path(tmp).write_bytes(buffer.getvalue())
    os.replace(tmp, args.out)
    print(f"wrote {args.out}: " + ", ".join(f"{k} {v.shape}" for k, v in arrays.items()))


if __name__ == "__main__":
    main()
