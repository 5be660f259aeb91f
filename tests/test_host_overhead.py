"""benchmarks/host_overhead.py --device cpu runs without a GPU and reports every variant against DeiT."""
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")  # the CPU mode stubs out the fused kernels' launches
ROOT = Path(__file__).resolve().parents[1]


def test_cpu_mode_prints_every_variant():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "host_overhead.py"), "--device", "cpu",
                          "--reps", "2"], capture_output=True, text=True, timeout=300, cwd=ROOT,
                         env={"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    rows = {line.split("|")[1].strip(): line for line in out.stdout.splitlines() if line.startswith("| ")}
    assert set(rows) >= {"DeiT", "Lit", "D", "S", "D♮", "S♮"}
    assert rows["DeiT"].rstrip().endswith("| 1.00 |")
    for variant in ("Lit", "D", "S", "D♮", "S♮"):
        assert float(rows[variant].split("|")[4]) > 0


def test_cpu_mode_chunk_form_with_profile():
    """--form Chunk stubs the chunk kernels' launches too (forward and backward), and --profile lists the LION
    layers' costliest host functions, the chunk op's Python among them."""
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "host_overhead.py"), "--device", "cpu",
                          "--form", "Chunk", "--variants", "DeiT", "D", "S♮", "--reps", "2", "--profile"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT,
                         env={"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    rows = {line.split("|")[1].strip() for line in out.stdout.splitlines() if line.startswith("| ")}
    assert rows >= {"DeiT", "D", "S♮"}
    assert "chunk_sums" in out.stdout and "_chunk_bwd" in out.stdout
