"""Inference speed and activation memory of the linear LION forms against DeiT-S, as a user runs them.

Two user paths, each with the library defaults (chunk_size None: the fused kernels pick the chunk):
  amp   fp32 weights and input under torch.autocast(bfloat16)
  bf16  bf16 weights and input
Models: timm's ``deit_small_patch16_224`` (SDPA) and ``lion_small_patch16_224`` LION-D, LION-S, LION-D♮, LION-S♮
(random weights), each built with ``img_size=R``, in the Chunk and RNN forms, at R = 224, 896, 1792 px, batch 8,
torch.inference_mode. Time: median ms per forward (benchmarks.timing.median_ms, CUDA events). Memory: peak GiB
allocated during one forward beyond what was allocated before it (benchmarks.timing.peak_activation_gib): the
activations, plus autocast's bf16 weight copies on the amp path (the same for every model of one size).

    python benchmarks/inference.py                       # measure (CUDA), print the target table, write json+md+png
    python benchmarks/inference.py --report benchmarks/inference_results.json   # RESULTS.md + PNG from a json
    python benchmarks/inference.py --sweep               # kernel settings: chunk size × warps, RNN block shapes
    python benchmarks/inference.py --profile 896         # torch.profiler per-kernel tables at 896 px
    python benchmarks/inference.py --peak-tensors 1792   # what DeiT-S and the chunk forms hold at their memory peak
Targets (best linear form of LION-D and of LION-S, both paths): 896 px ≤ 0.70× DeiT-S time, 1792 px ≤ 0.50×;
activation memory ≤ DeiT-S at every resolution. A full run takes about 1.5 minutes on an H200.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.results_md import replace_block, run_header  # noqa: E402
from benchmarks.timing import kernel_time_by_category, median_ms, peak_activation_gib, peak_tensors  # noqa: E402

LION = {"LION-D": ("Decay", "Normal"), "LION-S": ("Selective", "Normal"),
        "LION-D♮": ("Decay", "S"), "LION-S♮": ("Selective", "S")}
PATHS = ("amp", "bf16")
TARGETS = {896: 0.70, 1792: 0.50}


def _context(path):
    if path == "amp":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _build(model, res, path):
    import timm

    import image_classification.models_lion  # noqa: F401  (registers lion_* in timm)

    if model == "DeiT-S":
        m = timm.create_model("deit_small_patch16_224", img_size=res, num_classes=1000)
    elif model == "Vim-S":  # the paper's Mamba baseline, Triton scan on CUDA (image_classification/models_vim.py)
        import image_classification.models_vim  # noqa: F401

        m = timm.create_model("vim_small_patch16_224", img_size=res, num_classes=1000)
    else:
        mask, order = LION[model]
        m = timm.create_model("lion_small_patch16_224", img_size=res, mask_type=mask, order=order, num_classes=1000)
    return m.to("cuda", torch.float32 if path == "amp" else torch.bfloat16).eval()


def measure(args):
    rows = []
    for path in args.paths:
        for res in args.resolutions:
            x = torch.randn(args.batch, 3, res, res, device="cuda",
                            dtype=torch.float32 if path == "amp" else torch.bfloat16)
            for model in ["DeiT-S"] + args.models + (["Vim-S"] if args.baselines else []):
                net = _build(model, res, path)
                for form in ({"DeiT-S": ["SDPA"], "Vim-S": ["scan"]}.get(model) or args.forms):
                    if form in ("Chunk", "RNN"):
                        net.set_format(form, None)

                    def fwd(net=net, x=x):
                        with torch.inference_mode(), _context(path):
                            return net(x)
                    try:
                        ms = median_ms(fwd, warmup=2, reps=args.reps)
                        gib = peak_activation_gib(fwd)
                    except torch.OutOfMemoryError:
                        ms = gib = None
                    torch.cuda.empty_cache()
                    rows.append(dict(path=path, model=model, form=form, res=res, tokens=(res // 16) ** 2 + 1,
                                     batch=args.batch, ms=ms, gib=gib))
                    print(f"{path:4s} {res:5d}px {model:8s} {form:5s} "
                          + ("OOM" if ms is None else f"{ms:8.2f} ms {gib:7.3f} GiB"), flush=True)
                del net
            del x
    return rows


def environment(args):
    import triton

    return dict(date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                gpu=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                python=platform.python_version(), batch=args.batch,
                command=f"python benchmarks/inference.py --resolutions {' '.join(map(str, args.resolutions))} "
                        f"--batch {args.batch} --paths {' '.join(args.paths)} --reps {args.reps}"
                        + (" --baselines" if args.baselines else ""))


# ------------------------------------------------------------------------------------------------- report
def _get(rows):
    return {(r["path"], r["model"], r["form"], r["res"]): r for r in rows}


def _verdict(rows, get, path, model, res):
    """(cell, what was missed) of one path for one LION model and resolution: the best linear form, its time over
    DeiT-S's and its chunk-form memory over DeiT-S's; None where either was not measured. get: ``_get(rows)``."""
    deit = get.get((path, "DeiT-S", "SDPA", res))
    forms = [r for r in rows if (r["path"], r["model"], r["res"]) == (path, model, res) and r["ms"]]
    if not deit or not deit["ms"] or not forms:
        return None
    best = min(forms, key=lambda r: r["ms"])
    t = best["ms"] / deit["ms"]
    chunk = [r["gib"] / deit["gib"] for r in forms if r["form"] == "Chunk"]
    mem = max(chunk) if chunk else float("nan")
    bound = TARGETS.get(res)
    missed = ([f"time > {bound:.2f}×"] if bound is not None and t > bound else []) + (
        ["memory > 1×"] if not mem <= 1.0 else [])
    return f"{best['form']}, {t:.2f}, {mem:.4f}", missed


def target_lines(rows):
    """One line per (LION model, resolution), a cell per path: the best linear form, its time and its chunk-form
    memory over DeiT-S's, and the verdict of every path."""
    paths = list(dict.fromkeys(r["path"] for r in rows))
    get = _get(rows)
    lines = ["| model | res | " + " | ".join(f"{p}: best form, × time, × memory" for p in paths) + " | target |",
             "|---|---|" + "---|" * len(paths) + "---|"]
    for res in sorted({r["res"] for r in rows}):
        for model in dict.fromkeys(r["model"] for r in rows if r["model"] in LION and "♮" not in r["model"]):
            verdicts = {p: _verdict(rows, get, p, model, res) for p in paths}
            if not any(verdicts.values()):
                continue
            missed = "; ".join(f"{p} " + ", ".join(v[1]) for p, v in verdicts.items() if v and v[1])
            verdict = "–" if res not in TARGETS else ("NOT met: " + missed if missed else "met")
            lines.append(f"| {model} | {res} | " + " | ".join(v[0] if v else "–" for v in verdicts.values())
                         + f" | {verdict} |")
    return lines


def markdown(env, rows):
    res_list = sorted({r["res"] for r in rows})
    tok = {r["res"]: r["tokens"] for r in rows}
    paths = list(dict.fromkeys(r["path"] for r in rows))
    get = _get(rows)
    out = ["## Inference: `benchmarks/inference.py`", "",
           run_header(env["command"], env["gpu"], env["torch"], env["triton"], env["date"]), "",
           "**amp**: fp32 weights and input under bf16 autocast; **bf16**: bf16 weights and input. timm's "
           "`deit_small_patch16_224` (SDPA), `lion_small_patch16_224` (random weights, defaults) at `img_size` = the "
           "resolution; median ms per forward, peak GiB allocated beyond the forward's start.",
           "", f"| ms / GiB: {' · '.join(paths)} | " + " | ".join(f"{r} px ({tok[r]} tok)" for r in res_list) + " |",
           "|---" * (len(res_list) + 1) + "|"]

    def cell(r):
        return "–" if r is None else ("OOM" if r["ms"] is None else f"{r['ms']:.2f} / {r['gib']:.3f}")
    for model, form in dict.fromkeys((r["model"], r["form"]) for r in rows):
        out.append(f"| {model} {form} | " + " | ".join(
            " · ".join(cell(get.get((p, model, form, res))) for p in paths) for res in res_list) + " |")
    out += ["", "Targets (LION-D, LION-S): best linear form ≤ 0.70× DeiT-S time at 896 px, ≤ 0.50× at 1792 px; "
            "chunk-form activation memory ≤ DeiT-S:", ""]
    out += target_lines(rows)
    out += [""] + [f"- {n}" for n in env.get("notes", [])]
    out += ["", "![inference time and memory vs tokens](inference.png)"]
    return "\n".join(out) + "\n"


def write_results(section, path):
    """Replace the inference block of RESULTS.md (between its markers) or append it; the rest is kept."""
    replace_block(path, "inference", section)


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for (p, model, form) in dict.fromkeys((r["path"], r["model"], r["form"]) for r in rows):
        pts = sorted((r["tokens"], r["ms"], r["gib"]) for r in rows
                     if (r["path"], r["model"], r["form"]) == (p, model, form) and r["ms"] is not None)
        style = dict(marker="o", lw=2.5, color="k" if p == "bf16" else "gray") if model == "DeiT-S" else dict(
            marker={"Chunk": "o", "RNN": "^"}.get(form, "s"), ls="-" if p == "bf16" else "--")
        for ax, i in zip(axes, (1, 2)):
            ax.plot([q[0] for q in pts], [q[i] for q in pts], label=f"{p} {model} {form}", **style)
    for ax, label in zip(axes, ("ms per batch", "activation GiB")):
        ax.set(xscale="log", yscale="log", xlabel="tokens per image", ylabel=label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=6, ncol=2)
    fig.suptitle(f"ViT-S inference, batch {rows[0]['batch']}")
    fig.tight_layout()
    tmp = Path(path).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


# -------------------------------------------------------------------------------------- kernel settings
def _graph_ms(fn, reps=20):
    """GPU time of fn, launch overhead excluded: fn captured in a CUDA graph, median of replays."""
    fn()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return median_ms(graph.replay, warmup=2, reps=reps)


def sweep(args):
    """Times the fused operators alone at ViT-S shapes (H = 6, d = 64, bf16, LION-S gates, strided q, k, v)."""
    from lion import selective_log_gates
    from lion.ops.triton.chunk import chunk_attention
    from lion.ops.triton.recurrent import recurrent_attention

    B, H, d = args.batch, 6, 64
    for res in args.resolutions:
        L = (res // 16) ** 2 + 1
        qkv = torch.randn(B, L, 3, H, d, device="cuda", dtype=torch.bfloat16)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        log_a = selective_log_gates(torch.randn(B, L, H, device="cuda"))
        with torch.inference_mode():
            for chunk, warps in ((64, 4), (128, 8), (128, 4)):
                ms = _graph_ms(lambda: chunk_attention(q, k, v, log_a, feature_map="normalized_silu", scale=0.125,
                                                       chunk_size=chunk, num_warps=warps))
                print(f"sweep chunk L={L:6d} C={chunk:4d} warps={warps}: {ms * 1e3:8.1f} µs/layer (GPU time, "
                      "CUDA graph)", flush=True)
            if L > 4000:
                continue
            for block_t in (4, 8):
                for block_dv in (16,):
                    for warps in (1,):
                        ms = median_ms(lambda: recurrent_attention(
                            q, k, v, log_a, feature_map="normalized_silu", scale=0.125, block_t=block_t,
                            block_dv=block_dv, num_warps=warps), warmup=1, reps=3)
                        print(f"sweep rnn   L={L:6d} T={block_t:3d} dv={block_dv:3d} warps={warps}: {ms * 1e3:8.1f} "
                              "µs/layer", flush=True)


def profile(args, res):
    """Where the forward's kernel time goes at ``res`` px: CUDA time per kernel category (torch.profiler) for DeiT-S
    and the LION forms, side by side, then each LION form's costliest kernels."""
    for path in args.paths:
        dtype = torch.float32 if path == "amp" else torch.bfloat16
        x = torch.randn(args.batch, 3, res, res, device="cuda", dtype=dtype)
        runs = {}
        for model, form in (("DeiT-S", "SDPA"), ("LION-D", "Chunk"), ("LION-S", "Chunk"), ("LION-D", "RNN")):
            net = _build(model, res, path)
            if form != "SDPA":
                net.set_format(form, None)

            def forward(net=net):
                with torch.inference_mode(), _context(path):
                    net(x)
            runs[f"{model} {form}"] = kernel_time_by_category(forward, warmup=2)
            del net
        names = list(runs)
        cats = sorted({c for cats, _ in runs.values() for c in cats}, key=lambda c: -runs[names[1]][0].get(c, 0))
        print(f"--- kernel time per forward by category, {path}, {res} px, batch {args.batch} (ms)")
        print("| category | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
        for cat in cats:
            print(f"| {cat} | " + " | ".join(f"{runs[n][0].get(cat, 0):.2f}" for n in names) + " |")
        print("| **total** | " + " | ".join(f"{sum(runs[n][0].values()):.2f}" for n in names) + " |")
        for n in names[1:]:
            print(f"costliest kernels, {n}: " + ", ".join(f"{k[:40]} {ms:.2f}" for k, ms in runs[n][1][:6]))


def peak_report(args, res):
    """The memory cells' why: for DeiT-S and the LION-D / LION-S chunk forms at ``res`` px, each --paths, the peak
    beyond what was allocated before the forward and the largest tensors alive at that peak (allocator history)."""
    for path in args.paths:
        dtype = torch.float32 if path == "amp" else torch.bfloat16
        x = torch.randn(args.batch, 3, res, res, device="cuda", dtype=dtype)
        for model in ("DeiT-S", "LION-D", "LION-S"):
            net = _build(model, res, path)
            if model != "DeiT-S":
                net.set_format("Chunk", None)

            def forward(net=net):
                with torch.inference_mode(), _context(path):
                    return net(x)
            measured, replayed, top = peak_tensors(forward)
            print(f"{path} {res} px {model}: peak {measured:.3f} MiB beyond the start; the allocations made during "
                  f"the forward peak at {replayed:.3f} MiB, the largest then alive:", flush=True)
            for mib, where in top:
                print(f"    {mib:10.3f} MiB  {where}")
            del net
            torch.cuda.empty_cache()


def _write_json(data, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False))
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "inference_results.json"),
                    help="json of all measurements")
    ap.add_argument("--report", metavar="JSON", help="no measuring: rewrite RESULTS.md and the PNG from this json")
    ap.add_argument("--results-md", default=str(ROOT / "benchmarks" / "RESULTS.md"), help="'' to skip")
    ap.add_argument("--plot", default=str(ROOT / "benchmarks" / "inference.png"), help="'' to skip")
    ap.add_argument("--resolutions", type=int, nargs="+", default=[224, 896, 1792])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    ap.add_argument("--models", nargs="+", default=list(LION), choices=list(LION))
    ap.add_argument("--baselines", action="store_true", help="also measure Vim-S (the paper's Mamba baseline)")
    ap.add_argument("--forms", nargs="+", default=["Chunk", "RNN"], choices=["Chunk", "RNN"])
    ap.add_argument("--reps", type=int, default=10, help="timed forwards per cell (median)")
    ap.add_argument("--sweep", action="store_true", help="only time kernel settings of the fused operators")
    ap.add_argument("--profile", type=int, metavar="RES", help="only print per-kernel profiles at this resolution")
    ap.add_argument("--peak-tensors", type=int, metavar="RES",
                    help="only print what DeiT-S and the chunk forms hold at their memory peak at this resolution")
    ap.add_argument("--note", action="append", default=[],
                    help="a line for the RESULTS.md section (stored in the json)")
    args = ap.parse_args()
    if args.batch < 1 or any(r < 16 for r in args.resolutions):
        ap.error("--batch must be ≥ 1 and every --resolutions value ≥ 16")
    if args.report:
        data = json.loads(Path(args.report).read_text())
    else:
        if not torch.cuda.is_available():
            ap.error("measuring needs a CUDA GPU; use --report JSON to write RESULTS.md from earlier measurements")
        if args.sweep:
            return sweep(args)
        if args.profile:
            return profile(args, args.profile)
        if args.peak_tensors:
            return peak_report(args, args.peak_tensors)
        data = dict(env=environment(args), rows=measure(args))
    if args.note:  # kept in the json, so that a later --report writes them again
        data["env"]["notes"] = data["env"].get("notes", []) + args.note
    if args.note or not args.report:
        _write_json(data, Path(args.report or args.out))
    section = markdown(data["env"], data["rows"])
    print("\n".join(target_lines(data["rows"])))
    if args.results_md:
        write_results(section, args.results_md)
    if args.plot:
        try:
            plot(data["rows"], args.plot)
        except ImportError as exc:
            print(f"no plot ({exc})")


if __name__ == "__main__":
    main()
