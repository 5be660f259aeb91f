"""lion.ops.triton.utils.Launcher: the autotuner runs once per key, later calls launch the chosen config directly."""
import pytest
import torch

triton = pytest.importorskip("triton")
from lion.ops.triton import utils  # noqa: E402


class FakeKernel:
    """Stands in for a @triton.jit function: records direct launches (kernel[grid](...))."""
    arg_names = ["X", "L", "D", "BLOCK"]

    def __init__(self):
        self.direct = []

    def __getitem__(self, grid):
        return lambda *args, **kw: self.direct.append((grid, args, kw))


class FakeTuned:
    """Stands in for triton.autotune(...)(kernel): picks the second config and records each call."""

    def __init__(self, configs):
        self.configs, self.calls, self.best_config = configs, [], None

    def __getitem__(self, grid):
        def run(*args, **kw):
            self.calls.append((args, kw))
            self.best_config = self.configs[1]
        return run


@pytest.fixture
def launcher(monkeypatch):
    monkeypatch.setattr(utils, "INTERPRET", False)
    monkeypatch.setattr(utils, "AUTOTUNE", True)
    made = []

    def autotune(configs, key, reset_to_zero=None):
        def wrap(kernel):
            made.append(FakeTuned(configs))
            return made[-1]
        return wrap

    monkeypatch.setattr(utils.triton, "autotune", autotune)
    configs = [triton.Config({"BLOCK": 16}, num_warps=4, num_stages=2),
               triton.Config({"BLOCK": 32}, num_warps=8, num_stages=3)]
    kernel = FakeKernel()
    return utils.Launcher(kernel, configs, ["L", "D"], triton.Config({"BLOCK": 16}, num_warps=1)), kernel, made


def test_autotunes_once_per_key_then_launches_the_chosen_config(launcher):
    launch, kernel, made = launcher
    x16, x32 = torch.zeros(2, dtype=torch.float16), torch.zeros(2, dtype=torch.float32)
    grid = lambda meta: (meta["BLOCK"],)  # noqa: E731
    launch(grid, x16, 197, 64, FLAG=True)
    assert len(made) == 1 and len(made[0].calls) == 1 and kernel.direct == []
    launch(grid, x16, 197, 64, FLAG=True)  # same key: no autotuner, the chosen config (BLOCK 32, 8 warps)
    assert len(made[0].calls) == 1
    (g, args, kw), = kernel.direct
    assert g == (32,) and args == (x16, 197, 64)
    assert kw["FLAG"] is True and kw["BLOCK"] == 32 and kw["num_warps"] == 8 and kw["num_stages"] == 3
    launch(grid, x16, 128, 64, FLAG=True)  # another length
    launch(grid, x32, 197, 64, FLAG=True)  # another dtype
    assert len(made[0].calls) == 3 and len(kernel.direct) == 1


def test_key_meta_arguments_count(launcher):
    """A key argument passed as a keyword (a constexpr flag) is part of the key too."""
    launch, kernel, made = launcher
    kernel.arg_names = FakeKernel.arg_names + ["FLAG"]
    launch.__init__(kernel, launch.configs, ["L", "FLAG"], launch.interpret_config)
    x = torch.zeros(2)
    grid = lambda meta: (1,)  # noqa: E731
    launch(grid, x, 197, 64, FLAG=True)
    launch(grid, x, 197, 64, FLAG=True)
    launch(grid, x, 197, 64, FLAG=False)
    assert len(made[-1].calls) == 2 and len(kernel.direct) == 1
