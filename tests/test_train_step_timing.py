"""benchmarks.timing.interleaved_median_ms on the CPU: warm-up first, rounds in rotated order, medians per name, and
a fn that raises dropped while the others are still timed."""
import logging
import time
from types import SimpleNamespace

import pytest

from benchmarks import timing
from benchmarks.timing import interleaved_median_ms


def _recorders(names, calls):
    return {name: (lambda name=name: calls.append(name)) for name in names}


def test_warmup_first_then_rotated_rounds():
    calls = []
    ms = interleaved_median_ms(_recorders("abc", calls), warmup=2, reps=4, device="cpu")
    assert calls[:6] == list("aabbcc")  # each fn's warm-up in turn
    assert calls[6:] == list("abc" "bca" "cab" "abc")  # round r starts at fn r mod 3
    assert set(ms) == set("abc")
    assert all(calls.count(n) == 2 + 4 for n in "abc")


def test_median_of_each_fn(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(timing, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    costs = {"x": iter([0.0, 1.0, 100.0, 2.0]), "y": iter([0.0, 5.0, 7.0, 6.0])}  # warm-up, then 3 timed calls

    def fn(name):
        clock[0] += next(costs[name]) / 1e3
    ms = interleaved_median_ms({n: (lambda n=n: fn(n)) for n in costs}, warmup=1, reps=3, device="cpu")
    assert ms == pytest.approx({"x": 2.0, "y": 6.0})  # medians, not means (x's mean is 34.3)


def test_slow_fn_measures_longer():
    ms = interleaved_median_ms({"fast": lambda: None, "slow": lambda: time.sleep(0.005)}, warmup=1, reps=5,
                               device="cpu")
    assert ms["slow"] > ms["fast"]
    assert ms["slow"] >= 4.9  # sleep never returns early


def test_failing_fns_are_dropped_and_logged(caplog):
    calls, n = [], {"late": 0}

    def warmup_fails():
        calls.append("early")
        raise RuntimeError("fails in warm-up")

    def timed_fails():
        calls.append("late")
        n["late"] += 1
        if n["late"] == 3:  # the first timed call after 2 warm-up calls
            raise RuntimeError("fails while timed")

    fns = {"a": lambda: calls.append("a"), "early": warmup_fails, "late": timed_fails, "b": lambda: calls.append("b")}
    with caplog.at_level(logging.ERROR, logger="benchmarks.timing"):
        ms = interleaved_median_ms(fns, warmup=2, reps=4, device="cpu")
    assert set(ms) == {"a", "b"}
    assert calls.count("early") == 1 and calls.count("late") == 3  # not called again once raised
    assert calls.count("a") == calls.count("b") == 2 + 4
    failed = {r.getMessage().split()[0] for r in caplog.records if r.exc_info}
    assert failed == {"early", "late"}
    assert calls[:7] == ["a", "a", "early", "late", "late", "b", "b"]
    # round 0 over a, late, b (late raises and is dropped), then rounds 1-3 rotate over a, b
    assert calls[7:] == ["a", "late", "b", "b", "a", "a", "b", "b", "a"]


def test_ratio_table_without_vit_rows_shows_only_the_mlm_table():
    from benchmarks.train_step import ratio_table

    mlm = {"p=0.1": {"BERT": 50.0, "Lit": 55.0, "D": 60.0, "S": 65.0}}
    text = ratio_table({"vit": {}, "mlm": mlm})
    assert text.startswith("| MLM train step / softmax BERT | Lit | D | S |")
    assert ("| BERT-base seq 128, attention dropout 0.1 (BERT 50.0 ms) | 1.10 NOT met | 1.20 NOT met | 1.30 NOT met |"
            in text)
    both = ratio_table({"vit": {"small": {"DeiT": 20.0, "D": 19.0}}, "mlm": mlm})
    assert both.startswith("| train step / softmax baseline | D |") and "| ViT-S (DeiT 20.0 ms) | 0.95 met |" in both
    assert "\n\n| MLM train step" in both


def test_ratio_table_reports_baselines_and_other_backends():
    from benchmarks.train_step import ratio_table

    text = ratio_table({"vit": {"small": {"DeiT": 20.0, "D": 25.0, "D[torch]": 40.0, "Vim": 100.0}},
                        "mlm": {"p=0.1": {"BERT": 50.0, "D": 55.0, "Hydra": 150.0}}})
    assert ("ViT-S Vim 100.0 ms (5.00× DeiT); BERT-base Hydra (23 layers), attention dropout 0.1: 150.0 ms "
            "(3.00× BERT)") in text
    assert "Other backends (ms, ratio to DeiT): ViT-S D[torch] 40.0 (2.00)" in text


def test_each_part_replaces_its_own_block(tmp_path):
    """Two runs leave one block per part, holding the second run's numbers; other blocks and text are kept."""
    from benchmarks.results_md import replace_block
    from benchmarks.train_step import result_blocks

    args = SimpleNamespace(compile=False, compile_mode="default", batch=128, mlm_batch=128, backends=["auto"],
                           steps=10, warmup=5, sequential=False)
    md = tmp_path / "RESULTS.md"
    md.write_text("# Benchmark results\n\nintro\n\n<!-- inference:begin -->\ninference table\n<!-- inference:end -->\n")
    for deit, bert in ((20.0, 50.0), (25.0, 40.0)):
        results = {"gpu": "GPU", "torch": "2.x", "triton": "3.x",
                   "vit": {"small": {"DeiT": deit, "D": 22.0}}, "mlm": {"p=0.1": {"BERT": bert, "D": 44.0}}}
        blocks = result_blocks(results, args, "python benchmarks/train_step.py --no-op")
        assert set(blocks) == {"train_step:vit-eager", "train_step:mlm-eager"}  # no op rows measured: no op block
        for name, body in blocks.items():
            replace_block(md, name, body)
    text = md.read_text()
    for marker in ("vit-eager:begin", "vit-eager:end", "mlm-eager:begin", "mlm-eager:end"):
        assert text.count(f"<!-- train_step:{marker} -->") == 1
    assert "| ViT-S (DeiT 25.0 ms) | 0.88 met |" in text and "DeiT 20.0" not in text
    assert "(BERT 40.0 ms) | – | 1.10 NOT met | – |" in text and "BERT 50.0" not in text
    assert "· GPU · torch 2.x · triton 3.x · `python benchmarks/train_step.py --no-op`" in text
    assert text.startswith("# Benchmark results\n\nintro\n") and "inference table" in text


def test_op_table_judges_the_kernel_time_against_sdpa():
    from benchmarks.train_step import op_table

    op = {197: {"SDPA": dict(fwd_bwd_kernel_ms=0.4, fwd_bwd_ms=0.5),
                "LION-D": dict(fwd_bwd_kernel_ms=0.38, fwd_bwd_ms=1.2),  # slower with the host, faster on the GPU
                "LION-S": dict(fwd_bwd_kernel_ms=0.6, fwd_bwd_ms=0.6),
                "LION-D♮": dict(fwd_bwd_kernel_ms=0.8, fwd_bwd_ms=0.9)}}
    text = op_table({"op": op, "matmul_tflops": 700.0})
    assert "| 197 | LION-D | 0.380 | 0.95 | ≤ 1.00 met | 1.200 |" in text
    assert "| 197 | LION-S | 0.600 | 1.50 | ≤ 1.00 NOT met | 0.600 |" in text
    assert "| 197 | LION-D♮ | 0.800 | 2.00 |  | 0.900 |" in text  # no target
    assert "8192³: 700 TFLOP/s" in text and op_table({}) == ""


def test_length_rows_keep_tokens_per_step_and_judge_time_and_memory(monkeypatch):
    """The length rows: as many tokens per step at every length (at least one row); each LION cell gives its time
    ratio with the verdict where a target is set, its memory ratio and the form that ran ('auto': by the stored
    crossover); the last line gives peak memory per token, shortest → longest length."""
    import lion.form_choice as form_choice
    from benchmarks.train_step import LENGTH_TARGETS, form_that_runs, length_batch, length_table

    assert [length_batch(128, L, 197) for L in (197, 785, 3137, 12545)] == [128, 32, 8, 2]
    assert length_batch(128, 8192, 128) == 2 and length_batch(1, 8192, 128) == 1
    monkeypatch.setattr(form_choice, "crossover_lengths", lambda: {"Decay": 785})
    assert [form_that_runs("", "Decay", L) for L in (197, 785)] == ["attention", "chunk"]
    assert form_that_runs("Auto", "Lit", 12545) == "attention"
    assert form_that_runs("parallel", "Decay", 785) == "attention"
    rows = {224: {"tokens": 197, "batch": 128, "ms": {"DeiT": 10.0, "D": 9.0}, "mem": {"DeiT": 2.0, "D": 1.0},
                  "form": {"D": "attention"}},
            896: {"tokens": 3137, "batch": 8, "ms": {"DeiT": 20.0, "D": 12.0}, "mem": {"DeiT": 3.0, "D": 1.0},
                  "form": {"D": "chunk"}}}
    text = length_table(rows, "DeiT", "px", LENGTH_TARGETS["vit"])
    assert "| 224 (197, 128) | 10.0 · 2.00 | 0.90 · 0.50 · attention |" in text
    assert "| 896 (3137, 8) | 20.0 · 3.00 | 0.60 NOT met · 0.33 · chunk |" in text
    assert "| target at 896 | | ≤ 0.50 |" in text
    assert text.endswith("DeiT 83 → 125, D 42 → 42")


def test_length_rows_under_cuda_graphs_leave_memory_unmeasured():
    """CUDA graphs allocate their pool at capture, so a replayed step's peak says nothing: with --compile in a
    CUDA-graph mode no memory is measured and the length rows print '–' for it."""
    from benchmarks.train_step import cuda_graphs, length_table

    assert cuda_graphs(True, "reduce-overhead") and cuda_graphs(True, "max-autotune")
    assert not cuda_graphs(True, "default") and not cuda_graphs(False, "reduce-overhead")
    rows = {1792: {"tokens": 12545, "batch": 2, "ms": {"DeiT": 60.0, "D": 27.0}, "mem": {},
                   "form": {"D": "chunk"}}}
    text = length_table(rows, "DeiT", "px", {})
    assert "| 1792 (12545, 2) | 60.0 · – | 0.45 · – · chunk |" in text
    assert text.endswith("Peak memory not measured: CUDA graphs allocate their memory pool at capture.")
