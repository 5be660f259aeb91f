"""Runs the fused chunk/RNN kernel tests (lion.ops.triton.chunk, .recurrent) on the CPU under TRITON_INTERPRET=1,
in a subprocess (the variable must be set before triton decorates the kernels, and must not leak into the other
test files)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
pytestmark = pytest.mark.triton
KERNEL_TESTS = Path(__file__).with_name("test_triton_inference_kernels.py")


def test_kernels_under_triton_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(KERNEL_TESTS)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    summary = proc.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "skipped" not in summary and "failed" not in summary, proc.stdout[-2000:]
