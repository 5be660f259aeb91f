"""Builds each LION variant at tiny size and runs one batch in the Attention, RNN and Chunk formats.

Prints the max relative difference of RNN and Chunk against Attention, and the time of each.
    python benchmarks/forms.py [--img-size 224] [--batch 2] [--chunk-size N]
"""
import argparse
import time

import timm
import torch

import image_classification.models_lion  # noqa: F401  (registers lion_* in timm)

VARIANTS = [("LION-Lit", "Lit", "Normal"), ("LION-D", "Decay", "Normal"), ("LION-S", "Selective", "Normal"),
            ("LION-D♮", "Decay", "S"), ("LION-S♮", "Selective", "S")]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--chunk-size", type=int, default=None, help="default: automatic (32 in the torch forms)")
    ap.add_argument("--depth", type=int, default=2)
    args = ap.parse_args()
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.img_size, args.img_size)
    print(f"lion_tiny_patch16_224, depth {args.depth}, batch {args.batch}, {args.img_size} px, fp32 CPU")
    print(f"{'variant':10s} {'rel.err RNN':>12s} {'rel.err Chunk':>14s} {'ms Attn':>9s} {'ms RNN':>9s} "
          f"{'ms Chunk':>9s}")
    for name, mask_type, order in VARIANTS:
        model = timm.create_model("lion_tiny_patch16_224", mask_type=mask_type, order=order, depth=args.depth,
                                  img_size=args.img_size).eval()
        out, ms = {}, {}
        for fmt in ("Attention", "RNN", "Chunk"):
            model.set_format(fmt, args.chunk_size)
            with torch.no_grad():
                t = time.perf_counter()
                out[fmt] = model(x)
                ms[fmt] = 1e3 * (time.perf_counter() - t)
        ref = out["Attention"]
        err = {f: ((out[f] - ref).abs().max() / ref.abs().max()).item() for f in ("RNN", "Chunk")}
        print(f"{name:10s} {err['RNN']:12.2e} {err['Chunk']:14.2e} {ms['Attention']:9.1f} {ms['RNN']:9.1f} "
              f"{ms['Chunk']:9.1f}")


if __name__ == "__main__":
    main()
