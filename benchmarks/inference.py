"""Inference benchmark: time and activation memory of DeiT-S (SDPA) and LION-S in each form and mask,
over image resolutions, plus BERT-base LION-D/S (chunk, RNN) against softmax BERT (SDPA) over sequence length.

Everything runs side by side in one process, bf16 weights and inputs, torch.inference_mode. Time: CUDA events
around one forward, median of several after warm-up. Memory: torch.cuda.max_memory_allocated during the forward
minus what was allocated before it (weights and input), i.e. the activations.

    python benchmarks/inference.py --out runs/inference.json            # measure (needs CUDA), then report
    python benchmarks/inference.py --report runs/inference.json         # RESULTS.md section + PNG from a json
Options: --resolutions 224 448 ... --batch 8 --masks Lit Decay Selective --forms Attention Chunk RNN
         --chunk-size 128 --big-batch 64 --big-resolution 2496 --mlm-lengths 8192 32768 --budget-s 400
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MASK_SHORT = {"Lit": "LION-Lit", "Decay": "LION-D", "Selective": "LION-S"}
BEGIN, END = "<!-- inference:begin -->", "<!-- inference:end -->"


def measure(fn, budget_s: float = 0.75, max_reps: int = 10):
    """(median ms, activation GiB) of fn() on the GPU; None values on OOM."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    try:
        fn()  # warm-up: compilation, autotuning, cuBLAS handles
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        first = start.elapsed_time(end)
        mem = (torch.cuda.max_memory_allocated() - base) / 2**30
        times = [first]
        for _ in range(max(0, min(max_reps, int(budget_s * 1e3 / max(first, 1e-3))) - 1)):
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        return statistics.median(times), mem
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return None, None


def vision_models(masks, orders):
    import timm

    import image_classification.models_lion  # noqa: F401  (registers lion_*)

    yield "DeiT-S", None, lambda res: timm.create_model("deit_small_patch16_224", img_size=res, num_classes=1000)
    for mask in masks:
        for order in orders:
            if mask == "Lit" and order == "S":
                continue
            name = MASK_SHORT[mask] + ("♮" if order == "S" else "")
            # built once at 224 px and run at every resolution (grid, curves follow the input)
            yield name, mask, (lambda m, o: lambda res: timm.create_model(
                "lion_small_patch16_224", mask_type=m, order=o, num_classes=1000))(mask, order)


def run_vision(args, deadline, rows):
    dev, dtype = "cuda", torch.bfloat16
    for name, mask, build in vision_models(args.masks, args.orders):
        model = None
        for res in args.resolutions:
            if model is None or name == "DeiT-S":
                model = build(res).to(dev, dtype).eval()
            tokens = (res // 16) ** 2 + 1
            x = torch.randn(args.batch, 3, res, res, device=dev, dtype=dtype)
            for form in (["SDPA"] if mask is None else args.forms):
                if time.time() > deadline:
                    rows.append(dict(kind="vision", model=name, form=form, res=res, tokens=tokens, batch=args.batch,
                                     ms=None, gib=None, note="skipped (time budget)"))
                    continue
                if mask is not None:
                    model.set_format(form, args.chunk_size)
                if mask is not None and form == "Attention" and tokens > args.max_attention_tokens:
                    rows.append(dict(kind="vision", model=name, form=form, res=res, tokens=tokens, batch=args.batch,
                                     ms=None, gib=None, note=f"skipped (> {args.max_attention_tokens} tokens)"))
                    continue
                with torch.inference_mode():
                    ms, gib = measure(lambda: model(x))
                rows.append(dict(kind="vision", model=name, form=form, res=res, tokens=tokens, batch=args.batch,
                                 ms=ms, gib=gib, note="OOM" if ms is None else ""))
                print(f"{name:10s} {form:9s} {res:5d}px {tokens:6d} tok  "
                      + ("OOM" if ms is None else f"{ms:9.2f} ms {gib:7.3f} GiB"), flush=True)
            del x
        del model


def run_big_batch(args, deadline, rows):
    import timm

    import image_classification.models_lion  # noqa: F401

    res, batch = args.big_resolution, args.big_batch
    tokens = (res // 16) ** 2 + 1
    x = torch.randn(batch, 3, res, res, device="cuda", dtype=torch.bfloat16)
    cases = [("DeiT-S", None, "SDPA")] + [(MASK_SHORT[m], m, f) for m in ("Decay", "Selective") for f in ("Chunk", "RNN")]
    for name, mask, form in cases:
        if time.time() > deadline:
            rows.append(dict(kind="big", model=name, form=form, res=res, tokens=tokens, batch=batch, ms=None, gib=None,
                             note="skipped (time budget)"))
            continue
        if mask is None:
            model = timm.create_model("deit_small_patch16_224", img_size=res)
        else:
            model = timm.create_model("lion_small_patch16_224", mask_type=mask, format=form, chunk_size=args.chunk_size)
        model = model.to("cuda", torch.bfloat16).eval()
        with torch.inference_mode():
            ms, gib = measure(lambda: model(x), budget_s=0.0)
        rows.append(dict(kind="big", model=name, form=form, res=res, tokens=tokens, batch=batch, ms=ms, gib=gib,
                         note="OOM" if ms is None else ""))
        print(f"batch {batch} {res}px {name:8s} {form:6s} " + ("OOM" if ms is None else f"{ms:9.1f} ms {gib:7.2f} GiB"),
              flush=True)
        del model


def run_mlm(args, deadline, rows):
    try:
        from mlm.src.bert_layers import LionBertConfig, LionBertModel
    except Exception as exc:  # the MLM model is another package of this repo; report rather than fail
        rows.append(dict(kind="mlm", model="BERT-base", form="-", tokens=0, batch=args.mlm_batch, ms=None, gib=None,
                         note=f"mlm.src.bert_layers not importable: {exc!r}"[:200]))
        print(f"MLM sweep skipped: {exc!r}")
        return
    cases = [("BERT (softmax)", "attention", "parallel")] + [
        (f"LION-{a[-1].upper()}", a, f) for a in ("lion-d", "lion-s") for f in ("chunk", "rnn")]
    for length in args.mlm_lengths:
        ids = torch.randint(1000, 30000, (args.mlm_batch, length), device="cuda")
        for name, arch, form in cases:
            if time.time() > deadline:
                rows.append(dict(kind="mlm", model=name, form=form, tokens=length, batch=args.mlm_batch, ms=None,
                                 gib=None, note="skipped (time budget)"))
                continue
            cfg = LionBertConfig(arch_type=arch, form=form, chunk_size=args.chunk_size, max_position_embeddings=length,
                                 hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
            model = LionBertModel(cfg, add_pooling_layer=False).to("cuda", torch.bfloat16).eval()
            with torch.inference_mode():
                ms, gib = measure(lambda: model(input_ids=ids), budget_s=0.5)
            rows.append(dict(kind="mlm", model=name, form=form, tokens=length, batch=args.mlm_batch, ms=ms, gib=gib,
                             note="OOM" if ms is None else ""))
            print(f"MLM {length:6d} {name:15s} {form:8s} " + ("OOM" if ms is None else f"{ms:9.1f} ms {gib:7.2f} GiB"),
                  flush=True)
            del model


def environment(args):
    import triton

    from lion.attention import FUSED
    from lion.ops.triton_inference import ops

    return dict(date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                gpu=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                python=platform.python_version(), dtype="bfloat16", batch=args.batch, chunk_size=args.chunk_size,
                fused={k: f"{v.__module__}.{v.__name__}" for k, v in FUSED.items()},
                chunk_config=dict(ops.CHUNK_CONFIG), rnn_config=dict(ops.RNN_CONFIG))


def check(args):
    """GPU correctness at realistic shapes: the fused chunk/RNN sums against the attention form (fp32 torch), and
    whole models in each form against the attention form. Prints relative errors; returns the largest."""
    import timm

    import image_classification.models_lion  # noqa: F401
    import lion.ops.triton_inference  # noqa: F401  (registers FUSED['chunk'], FUSED['rnn'])
    from lion import decay_log_gates, normalized_silu, selective_log_gates
    from lion.attention import FUSED
    from lion.ops import naive_sums

    worst = 0.0
    B, H, L, d = 2, 6, 3137, 64
    for dtype in (torch.bfloat16, torch.float32):
        q, k = (normalized_silu(torch.randn(B, H, L, d, device="cuda")).to(dtype) for _ in range(2))
        v = torch.randn(B, H, L, d, device="cuda", dtype=dtype)
        gates = {"Lit": None, "Decay": decay_log_gates(torch.randn(H, device="cuda"), L, B),
                 "Selective": selective_log_gates(2 * torch.randn(B, L, H, device="cuda"))}
        for mask, la in gates.items():
            ref_n, ref_d = naive_sums(q.float(), k.float(), v.float(), la, 0.125, True)
            for form in ("chunk", "rnn"):
                n, dn = FUSED[form](q, k, v, la, 0.125, True, args.chunk_size)
                en = ((n.float() - ref_n).norm() / ref_n.norm()).item()
                ed = ((dn - ref_d).norm() / ref_d.norm()).item()
                worst = max(worst, en, ed)
                print(f"check op {str(dtype)[6:]:8s} {mask:9s} {form:5s} L={L}: rel.err num {en:.1e} den {ed:.1e}")
    x = torch.randn(2, 3, 448, 448, device="cuda", dtype=torch.bfloat16)
    for mask, order in (("Lit", "Normal"), ("Decay", "Normal"), ("Selective", "Normal"), ("Decay", "S"),
                        ("Selective", "S")):
        model = timm.create_model("lion_small_patch16_224", mask_type=mask, order=order).to("cuda", torch.bfloat16).eval()
        with torch.inference_mode():
            model.set_format("Attention")
            ref = model(x).float()
            for form in ("Chunk", "RNN"):
                model.set_format(form, args.chunk_size)
                err = ((model(x).float() - ref).norm() / ref.norm()).item()
                print(f"check model {mask:9s} {order:6s} 448px {form:5s} vs Attention: rel.err logits {err:.1e}")
    return worst


# ----------------------------------------------------------------------------------------------------- report
def _cell(r, key):
    if r is None:
        return "–"
    if r[key] is None:
        return r["note"].split(" (")[0] or "–"
    return f"{r[key]:.1f}" if key == "ms" else f"{r[key]:.2f}"


def _targets(rows):
    vis = {(r["model"], r["form"], r["res"]): r for r in rows if r["kind"] == "vision"}
    lines = []

    def best(model, res):
        got = [vis.get((model, f, res)) for f in ("Chunk", "RNN")]
        got = [r for r in got if r and r["ms"] is not None]
        return min(got, key=lambda r: r["ms"]) if got else None

    for res, bound in ((896, 0.7), (1792, 0.5)):
        deit = vis.get(("DeiT-S", "SDPA", res))
        for model in ("LION-D", "LION-S"):
            b = best(model, res)
            if deit and deit["ms"] and b:
                ratio = b["ms"] / deit["ms"]
                lines.append(f"- {model} at {res} px, best form ({b['form']}): {b['ms']:.1f} ms = {ratio:.2f}× DeiT-S "
                             f"(target ≤ {bound}×): **{'met' if ratio <= bound else 'NOT met'}**")
    ratios = []
    for (model, form, res), r in vis.items():
        deit = vis.get(("DeiT-S", "SDPA", res))
        if model in ("LION-D", "LION-S") and form in ("Chunk", "RNN") and r["gib"] is not None and deit and deit["gib"]:
            ratios.append((r["gib"] / deit["gib"], f"{model} {form} {res} px: {r['gib']:.3f} vs {deit['gib']:.3f} GiB"))
    if ratios:
        over = [x for x in ratios if x[0] > 1]
        worst = max(ratios)
        lines.append("- Activation memory of LION-D/S chunk and RNN ≤ DeiT-S at every resolution: **"
                     + ("met" if not over else f"NOT met** at {len(over)} of {len(ratios)} points, up to "
                        f"{worst[0]:.2f}× ({worst[1]})") + ("**" if not over else ""))
    for model in ("LION-Lit", "LION-D", "LION-S"):
        rnn, att = vis.get((model, "RNN", 224)), vis.get((model, "Attention", 224))
        if rnn and att and rnn["ms"] and att["ms"]:
            ratio = rnn["ms"] / att["ms"]
            lines.append(f"- {model} RNN form at 224 px: {ratio:.2f}× the attention form (target ≤ 3×): "
                         f"**{'met' if ratio <= 3 else 'NOT met'}**")
    big = [r for r in rows if r["kind"] == "big" and r["model"] != "DeiT-S"]
    if big:
        ok = [f"{r['model']} {r['form']}" for r in big if r["ms"] is not None]
        lines.append(f"- Batch {big[0]['batch']} at {big[0]['res']} px runs with the RNN or chunk form: "
                     f"**{'met' if ok else 'NOT met'}** ({', '.join(ok) or 'none ran'})")
    return lines


def markdown(env, rows):
    vis = [r for r in rows if r["kind"] == "vision"]
    res_list = sorted({r["res"] for r in vis})
    keys = list(dict.fromkeys((r["model"], r["form"]) for r in vis))
    get = {(r["model"], r["form"], r["res"]): r for r in vis}
    tok = {r["res"]: r["tokens"] for r in vis}
    out = [BEGIN, "## Inference: `benchmarks/inference.py`", "",
           f"{env['date']} · {env['gpu']} · torch {env['torch']} · triton {env['triton']} · {env['dtype']} weights and "
           f"inputs · batch {env['batch']} · chunk {env['chunk_size']} · fused kernels: "
           + ", ".join(f"`{k}`" for k in env["fused"]) + f" · chunk kernel settings `{env.get('chunk_config')}`, "
           f"RNN kernel `{env.get('rnn_config')}`", "",
           "Time: median ms per forward (CUDA events). Memory: peak GiB allocated during the forward minus weights "
           "and input. DeiT-S is timm's `deit_small_patch16_224` (SDPA); LION-S is `lion_small_patch16_224` "
           "(random weights) built at 224 px and run at each resolution.", ""]
    out += [f"- {note}" for note in env.get("notes", [])] + ([""] if env.get("notes") else [])
    for key, title in (("ms", "Time (ms)"), ("gib", "Activation memory (GiB)")):
        out.append(f"| {title} | " + " | ".join(f"{r} px ({tok[r]} tok)" for r in res_list) + " |")
        out.append("|---" * (len(res_list) + 1) + "|")
        for model, form in keys:
            out.append(f"| {model} {form} | " + " | ".join(_cell(get.get((model, form, r)), key) for r in res_list) + " |")
        out.append("")
    big = [r for r in rows if r["kind"] == "big"]
    if big:
        out += [f"Batch {big[0]['batch']} at {big[0]['res']} px ({big[0]['tokens']} tokens):", "",
                "| model | form | ms | activation GiB |", "|---|---|---|---|"]
        out += [f"| {r['model']} | {r['form']} | {_cell(r, 'ms')} | {_cell(r, 'gib')} |" for r in big]
        out.append("")
    mlm = [r for r in rows if r["kind"] == "mlm"]
    if mlm:
        if mlm[0]["tokens"] == 0:
            out += [f"MLM sweep not run: {mlm[0]['note']}", ""]
        else:
            lengths = sorted({r["tokens"] for r in mlm})
            mk = list(dict.fromkeys((r["model"], r["form"]) for r in mlm))
            g = {(r["model"], r["form"], r["tokens"]): r for r in mlm}
            out += [f"BERT-base encoder (`mlm.src.bert_layers.LionBertModel`, random weights), batch {mlm[0]['batch']}, "
                    "ms / activation GiB:", "",
                    "| model | form | " + " | ".join(f"{n} tok" for n in lengths) + " |",
                    "|---|---" + "|---" * len(lengths) + "|"]
            out += [f"| {m} | {f} | " + " | ".join(f"{_cell(g.get((m, f, n)), 'ms')} / {_cell(g.get((m, f, n)), 'gib')}"
                                                    for n in lengths) + " |" for m, f in mk]
            out.append("")
    out += ["Targets (computed from the rows above):", ""] + _targets(rows)
    out += ["", "![inference time and memory vs tokens](inference.png)", END]
    return "\n".join(out) + "\n"


def write_results(md_section, path):
    """Replace our section of RESULTS.md (between the markers) or append it; other sections are kept."""
    path = Path(path)
    text = path.read_text() if path.exists() else "# Benchmark results\n\n"
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + md_section.rstrip("\n") + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + md_section
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vis = [r for r in rows if r["kind"] == "vision" and r["ms"] is not None]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for model, form in dict.fromkeys((r["model"], r["form"]) for r in vis):
        pts = sorted((r["tokens"], r["ms"], r["gib"]) for r in vis if (r["model"], r["form"]) == (model, form))
        style = dict(marker="o", lw=2.5, color="k") if model == "DeiT-S" else dict(
            marker={"Attention": "s", "Chunk": "o", "RNN": "^"}[form],
            ls={"Attention": ":", "Chunk": "-", "RNN": "--"}[form])
        for ax, i in zip(axes, (1, 2)):
            ax.plot([p[0] for p in pts], [max(p[i], 1e-3) for p in pts], label=f"{model} {form}", **style)
    for ax, label in zip(axes, ("ms per batch", "activation GiB")):
        ax.set(xscale="log", yscale="log", xlabel="tokens per image", ylabel=label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    batch = vis[0]["batch"] if vis else "?"
    fig.suptitle(f"ViT-S inference, batch {batch}, bf16 ({torch.cuda.get_device_name() if torch.cuda.is_available() else 'GPU'})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/inference.json", help="json of all measurements")
    ap.add_argument("--report", metavar="JSON", help="no measuring: write RESULTS.md and the PNG from this json")
    ap.add_argument("--results-md", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    ap.add_argument("--plot", default=str(ROOT / "benchmarks" / "inference.png"))
    ap.add_argument("--resolutions", type=int, nargs="+", default=[224, 448, 896, 1344, 1792, 2496])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--masks", nargs="+", default=["Lit", "Decay", "Selective"], choices=list(MASK_SHORT))
    ap.add_argument("--orders", nargs="+", default=["Normal"], choices=["Normal", "S"])
    ap.add_argument("--forms", nargs="+", default=["Attention", "Chunk", "RNN"], choices=["Attention", "Chunk", "RNN"])
    ap.add_argument("--chunk-size", type=int, default=128)
    ap.add_argument("--max-attention-tokens", type=int, default=4000,
                    help="skip the LION attention form (an L×L matrix per head) above this many tokens")
    ap.add_argument("--big-batch", type=int, default=64, help="0 skips the big-batch run")
    ap.add_argument("--big-resolution", type=int, default=2496)
    ap.add_argument("--mlm-lengths", type=int, nargs="*", default=[8192, 32768])
    ap.add_argument("--mlm-batch", type=int, default=1)
    ap.add_argument("--check", action="store_true", help="first check the fused forms against the attention form")
    ap.add_argument("--budget-s", type=float, default=420, help="skip what would start after this many seconds")
    args = ap.parse_args()
    for name in ("batch", "chunk_size", "big_resolution"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be ≥ 1")
    if args.report:
        data = json.loads(Path(args.report).read_text())
    else:
        if not torch.cuda.is_available():
            ap.error("measuring needs a CUDA GPU; use --report JSON to write RESULTS.md from earlier measurements")
        deadline = time.time() + args.budget_s
        if args.check:
            print(f"largest relative error of the fused sums: {check(args):.1e}", flush=True)
        rows = []
        data = dict(env=environment(args), rows=rows)
        run_vision(args, deadline, rows)
        if args.big_batch:
            run_big_batch(args, deadline, rows)
        if args.mlm_lengths:
            run_mlm(args, deadline, rows)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(data, indent=1))
    section = markdown(data["env"], data["rows"])
    print(section)
    if args.results_md:
        write_results(section, args.results_md)
    if args.plot:
        try:
            plot(data["rows"], args.plot)
        except ImportError as exc:
            print(f"no plot ({exc}); install matplotlib or run where it is installed")


if __name__ == "__main__":
    main()
