"""benchmarks/kernel_sweep.py: it must time every tile the kernels autotune over, and fail clearly without a GPU."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import kernel_sweep
from lion.ops.triton import naive as A

ROOT = Path(__file__).resolve().parents[1]


def _tiles(configs):
    """(BLOCK_M, BLOCK_N, warps, stages, register cap) of each config, as the sweep lists them."""
    return {(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages, c.maxnreg) for c in configs}


def test_sweep_covers_the_autotuned_tiles():
    assert _tiles(A._fwd_configs()) <= set(kernel_sweep.FWD_TILES)
    assert _tiles(A._bwd_configs()) <= set(kernel_sweep.BWD_TILES)


@pytest.mark.parametrize("part", ["paths", "mlm", "chunk"])
def test_needs_a_gpu(part):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(ROOT))
    env.pop("TRITON_INTERPRET", None)
    run = subprocess.run([sys.executable, "benchmarks/kernel_sweep.py", part], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "needs a CUDA device" in run.stderr
