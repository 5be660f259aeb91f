"""benchmarks/inference.py without a GPU: --report rewrites RESULTS.md's inference section from a json, and a
--note lands in the json (so that a later --report writes it again) and in the section."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rows():
    rows = []
    for path in ("amp", "bf16"):
        for model, form, ms in (("DeiT-S", "SDPA", 10.0), ("LION-D", "Chunk", 6.5), ("LION-D", "RNN", 30.0),
                                ("LION-S", "Chunk", 8.0), ("LION-S", "RNN", 31.0)):
            rows.append(dict(path=path, model=model, form=form, res=896, tokens=3137, batch=8, ms=ms, gib=0.25))
    return rows


def test_report_writes_section_and_keeps_notes(tmp_path):
    data = tmp_path / "results.json"
    env = dict(date="2026-01-01 00:00 UTC", gpu="GPU", torch="2.x", triton="3.x", python="3.11", batch=8,
               command="python benchmarks/inference.py")
    data.write_text(json.dumps(dict(env=env, rows=_rows())))
    md = tmp_path / "RESULTS.md"
    md.write_text("# Benchmark results\n\nkept\n\n<!-- inference:begin -->\nold\n<!-- inference:end -->\n\ntail\n")
    run = subprocess.run([sys.executable, "benchmarks/inference.py", "--report", str(data), "--results-md", str(md),
                          "--plot", "", "--note", "a note about this run"], cwd=ROOT, capture_output=True, text=True,
                         env=dict(os.environ, CUDA_VISIBLE_DEVICES=""), timeout=120)
    assert run.returncode == 0, run.stderr
    first = md.read_text()
    again = subprocess.run([sys.executable, "benchmarks/inference.py", "--report", str(data), "--results-md", str(md),
                            "--plot", ""], cwd=ROOT, capture_output=True, text=True,
                           env=dict(os.environ, CUDA_VISIBLE_DEVICES=""), timeout=120)
    assert again.returncode == 0, again.stderr
    text = md.read_text()
    assert text == first  # replaced, not appended: one block, the same numbers
    assert text.count("<!-- inference:begin -->") == 1 and text.count("## Inference") == 1
    assert "2026-01-01 00:00 UTC · GPU · torch 2.x · triton 3.x · `python benchmarks/inference.py`" in text
    assert "kept" in text and "tail" in text and "old" not in text
    assert "- a note about this run" in text
    assert "| LION-D Chunk | 6.50 / 0.250 · 6.50 / 0.250 |" in text  # amp · bf16 in one cell
    # 6.5 ms over DeiT-S's 10 ms (met), LION-S's 8 ms over 10 (time NOT met on both paths)
    assert "| LION-D | 896 | Chunk, 0.65, 1.0000 | Chunk, 0.65, 1.0000 | met |" in text
    assert ("| LION-S | 896 | Chunk, 0.80, 1.0000 | Chunk, 0.80, 1.0000 | NOT met: amp time > 0.70×; "
            "bf16 time > 0.70× |") in text
    assert json.loads(data.read_text())["env"]["notes"] == ["a note about this run"]


def test_live_at_peak_replays_an_allocator_trace():
    """The --peak-tensors replay: the highest sum of live allocations and which were alive then."""
    from benchmarks.timing import live_at_peak

    trace = [dict(action="alloc", addr=1, size=10), dict(action="alloc", addr=2, size=30),
             dict(action="free_requested", addr=1, size=10), dict(action="free_completed", addr=1, size=10),
             dict(action="alloc", addr=3, size=5), dict(action="free_requested", addr=9, size=99),  # older block
             dict(action="alloc", addr=4, size=20), dict(action="free_requested", addr=2, size=30)]
    best, live = live_at_peak(trace)
    assert best == 55 and [e["addr"] for e in live] == [2, 4, 3]


def test_by_site_sums_each_call_site_largest_first():
    """--peak-tensors' grouping: allocations from one site (every block's MLP) sum into one line."""
    from benchmarks.timing import by_site

    live = [dict(size=74, site="mlp"), dict(size=74, site="mlp"), dict(size=100, site="head"), dict(size=3, site="?")]
    assert by_site(live, lambda e: e["site"]) == [(148, 2, "mlp"), (100, 1, "head"), (3, 1, "?")]
