"""Runs the fused-kernel tests (tests/test_triton_attention_cases.py) on CPU under the Triton interpreter.

TRITON_INTERPRET must be set before triton is imported, so they run in a fresh process; this one is untouched.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
CASES = Path(__file__).with_name("test_triton_attention_cases.py")


def test_triton_attention_under_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", str(CASES)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    assert " passed" in run.stdout and " failed" not in run.stdout
