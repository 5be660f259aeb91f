"""lion.ops.triton.common.launching: Launcher (the autotuner runs once per key, later calls launch the chosen config
directly) and launch (after triton's own path has launched a key twice, its compiled kernel's launcher is called
directly)."""
import pytest
import torch

triton = pytest.importorskip("triton")
from lion.ops.triton.common import launching  # noqa: E402


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
    monkeypatch.setattr(launching, "INTERPRET", False)
    monkeypatch.setattr(launching, "AUTOTUNE", True)
    monkeypatch.setattr(launching, "FAST_LAUNCH", False)  # launches reach the fake kernel as kernel[grid](...)
    made = []

    def autotune(configs, key, reset_to_zero=None):
        def wrap(kernel):
            made.append(FakeTuned(configs))
            return made[-1]
        return wrap

    monkeypatch.setattr(launching.triton, "autotune", autotune)
    configs = [triton.Config({"BLOCK": 16}, num_warps=4, num_stages=2),
               triton.Config({"BLOCK": 32}, num_warps=8, num_stages=3)]
    kernel = FakeKernel()
    return launching.Launcher(kernel, configs, ["L", "D"], triton.Config({"BLOCK": 16}, num_warps=1)), kernel, made


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


# --- launch: the direct path
class Param:
    def __init__(self, name, is_constexpr, default=None):
        self.name, self.is_constexpr, self.default = name, is_constexpr, default


class FakeCompiled:
    """Stands in for triton's CompiledKernel: ``run`` is its launcher (grid, stream, handles, hooks, arguments)."""

    def __init__(self):
        self.function, self.packed_metadata, self.launched = object(), object(), []
        self.run = lambda *a: self.launched.append(a)


class FakeCompiledProperty(FakeCompiled):
    """triton ≥ 3.4: ``run`` is a read-only property over the launcher, which lives in another attribute."""

    def __init__(self):
        self.function, self.packed_metadata, self.launched = object(), object(), []
        self._launcher = lambda *a: self.launched.append(a)

    @property
    def run(self):
        return self._launcher


class FakeJit:
    """Stands in for a @triton.jit function with runtime parameters X, N and a constexpr BLOCK (default 16):
    ``kernel[grid](...)`` compiles once per (alignment, N % 16, BLOCK) and calls the compiled kernel's launcher as
    triton ≥ 3.3 does (every parameter's value after the hooks); ``all_params=False``: the runtime ones only."""
    params = [Param("X", False), Param("N", False), Param("BLOCK", True, 16)]

    @staticmethod
    def fn():  # the kernel's Python function (named in logs and timings)
        pass

    def __init__(self, all_params=True, hook=None, compiled=FakeCompiled):
        self.cache, self.via_triton, self.all_params, self.hook, self.compiled = {}, 0, all_params, hook, compiled

    def __getitem__(self, grid):
        def run(x, n, BLOCK=16, num_warps=4):
            self.via_triton += 1
            key = (x.data_ptr() % 16 == 0, n % 16 == 0, BLOCK, num_warps)
            compiled = self.cache.setdefault(key, self.compiled())
            g = tuple(grid) + (1, 1)
            tail = (x, n, BLOCK) if self.all_params else (x, n)
            compiled.run(g[0], g[1], g[2], "stream-0", compiled.function, compiled.packed_metadata, None,
                         self.hook, self.hook, *tail)
            return compiled
        return run


@pytest.fixture
def direct(monkeypatch):
    monkeypatch.setattr(launching, "INTERPRET", False)
    monkeypatch.setattr(launching, "FAST_LAUNCH", True)
    monkeypatch.setattr(launching, "_LAUNCHES", {})
    monkeypatch.setattr(launching.torch.cuda, "current_device", lambda: 0)
    streams = iter(f"stream-{i}" for i in range(1, 100))
    monkeypatch.setattr(launching, "_stream", lambda device: next(streams))


@pytest.mark.parametrize("compiled", [FakeCompiled, FakeCompiledProperty])
def test_launch_goes_direct_from_the_third_call_with_triton_argument_layout(direct, compiled):
    kernel = FakeJit(compiled=compiled)
    x = torch.zeros(64)
    for _ in range(4):
        launching.launch(kernel, (3, 2), (x, 197), dict(BLOCK=32, num_warps=4))
    assert kernel.via_triton == 2  # first: compiles; second: recorded; then direct
    (compiled,) = kernel.cache.values()
    first, recorded, third, fourth = compiled.launched
    assert third[:3] == (3, 2, 1) and third[3] == "stream-1" and fourth[3] == "stream-2"  # the current stream
    assert third[4:] == first[4:] and third[9] is x  # handles, hooks, then X, N and BLOCK's value
    y = torch.zeros(64)
    launching.launch(kernel, (3, 2), (y, 197), dict(BLOCK=32, num_warps=4))  # another tensor, same key
    assert compiled.launched[-1][9] is y and kernel.via_triton == 2


@pytest.mark.parametrize("change", ["alignment", "int value", "constexpr", "options"])
def test_launch_keys_on_what_triton_specialises(direct, change):
    kernel = FakeJit()
    x = torch.zeros(64)
    args, meta = (x, 197), dict(BLOCK=32, num_warps=4)
    for _ in range(3):
        launching.launch(kernel, (1,), args, meta)
    if change == "alignment":
        args = (x[1:], 197)  # 4 bytes off: not 16-byte aligned, another compiled kernel
    elif change == "int value":
        args = (x, 192)  # divisible by 16
    elif change == "constexpr":
        meta = dict(BLOCK=64, num_warps=4)
    else:
        meta = dict(BLOCK=32, num_warps=8)
    launching.launch(kernel, (1,), args, meta)
    assert kernel.via_triton == 3 and len(kernel.cache) == 2


def test_launch_runtime_arguments_only_layout(direct):
    kernel = FakeJit(all_params=False)
    x = torch.zeros(64)
    for _ in range(3):
        launching.launch(kernel, (1,), (x, 5), dict(BLOCK=16))
    assert kernel.via_triton == 2
    assert next(iter(kernel.cache.values())).launched[-1][9:] == (x, 5)


class Chain:
    """Stands in for triton's HookChain (knobs.runtime's launch hooks in triton ≥ 3.4)."""

    def __init__(self, calls):
        self.calls = calls


def test_launch_with_hooks(direct, monkeypatch):
    x = torch.zeros(64)
    kernel = FakeJit(hook=Chain([]))  # an empty hook chain is no hook: direct launches
    for _ in range(4):
        launching.launch(kernel, (1,), (x, 5), dict(BLOCK=16))
    assert kernel.via_triton == 2
    kernel = FakeJit(hook=Chain([print]))  # a profiler's hook: triton's path every time
    for _ in range(4):
        launching.launch(kernel, (1,), (x, 5), dict(BLOCK=16))
    assert kernel.via_triton == 4
    kernel = FakeJit()
    monkeypatch.setattr(launching, "_hooks_set", lambda: True)  # a hook set after the key went direct
    for _ in range(4):
        launching.launch(kernel, (1,), (x, 5), dict(BLOCK=16))
    assert kernel.via_triton == 4


def test_launch_warns_once_when_a_kernel_stays_on_tritons_path(direct, caplog):
    """A launcher call of a layout the direct path does not know (here: hooks in the call) keeps triton's path, and
    says so once per kernel."""
    launching._warn_slow_path.cache_clear()
    x = torch.zeros(64)
    kernel = FakeJit(hook=Chain([print]))
    with caplog.at_level("WARNING", logger=launching.__name__):
        for _ in range(4):
            launching.launch(kernel, (1,), (x, 5), dict(BLOCK=16))
    assert kernel.via_triton == 4
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "kernel fn:" in warnings[0] and "triton's own path" in warnings[0]


def test_launch_switch_off(direct, monkeypatch):
    monkeypatch.setattr(launching, "FAST_LAUNCH", False)
    kernel = FakeJit()
    for _ in range(4):
        launching.launch(kernel, (1,), (torch.zeros(4), 5), dict(BLOCK=16))
    assert kernel.via_triton == 4


def triton_then_direct(monkeypatch, run):
    """``run()`` once through triton's own launches, then three times with the direct path from a clean cache:
    (the reference result, the last result, {(module, kernel): launched directly})."""
    monkeypatch.setattr(launching, "FAST_LAUNCH", False)
    ref = run()
    monkeypatch.setattr(launching, "FAST_LAUNCH", True)
    monkeypatch.setattr(launching, "_LAUNCHES", {})
    for _ in range(3):
        out = run()
    direct = {(key[0].fn.__module__.rsplit(".", 1)[-1], key[0].fn.__name__): entry.__class__ is launching._Direct
              for key, entry in launching._LAUNCHES.items()}
    return ref, out, direct


@pytest.mark.triton  # in `pytest -m triton`, so the GPU smoke runs it
@pytest.mark.skipif(not torch.cuda.is_available(), reason="real triton launches need a GPU")
def test_direct_launches_equal_triton_launches_on_the_gpu(monkeypatch):
    """The real kernels (attention form forward and backward, chunk form) launched directly give what triton's own
    launches give: the forward and chunk outputs bit for bit, the gradients (fp32 atomics) to rounding."""
    import lion
    from lion.ops.triton.chunk import chunk_attention
    from lion.ops.triton.naive import fused_attention

    g = torch.Generator(device="cuda").manual_seed(0)
    qkv = torch.randn(4, 197, 3, 6, 64, device="cuda", generator=g).transpose(1, 3)
    q, k, v = (t.detach().requires_grad_() for t in qkv.unbind(2))
    z = torch.randn(4, 197, 6, device="cuda", generator=g, requires_grad=True)
    dy = torch.randn(4, 6, 197, 64, device="cuda", generator=g)

    def run():
        y = fused_attention(q, k, v, lion.selective_log_gates(z), feature_map="normalized_silu", scale=0.125)
        grads = torch.autograd.grad(y, (q, k, v, z), dy)
        with torch.no_grad():
            c = chunk_attention(q, k, v, lion.selective_log_gates(z), feature_map="normalized_silu", scale=0.125)
        return y, grads, c

    ref, out, direct = triton_then_direct(monkeypatch, run)
    assert {("naive", "_prep_kernel"), ("naive", "_fwd_kernel"), ("naive", "_bwd_kernel"), ("naive", "_bwd_q_kernel"),
            ("chunk", "_chunk_states"), ("chunk", "_scan_states"), ("chunk", "_chunk_output")} <= {
                name for name, ok in direct.items() if ok}
    assert torch.equal(out[0], ref[0]) and torch.equal(out[2], ref[2])
    for a, b in zip(out[1], ref[1]):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n", [1, 2, 3, 15, 16, 17, 64, 100, 197, 3137, 12545])
def test_host_integer_helpers_match_triton(n):
    """launching.cdiv / next_power_of_2 (plain Python, for the host) equal triton's constexpr functions."""
    assert launching.next_power_of_2(n) == triton.next_power_of_2(n)
    for d in (1, 7, 16, 64):
        assert launching.cdiv(n, d) == triton.cdiv(n, d)


@pytest.mark.triton
@pytest.mark.skipif(not torch.cuda.is_available(), reason="real triton launches need a GPU")
@pytest.mark.parametrize("mask", ["Decay", "Selective"])
def test_chunk_training_launches_go_direct_on_the_gpu(monkeypatch, mask):
    """The chunk form's training op as a model runs it (bf16 autocast, gates with gradients): after two steps every
    kernel of its forward and backward launches directly (a kernel left on triton's path costs tens to hundreds of µs
    of host time a launch), with the results of triton's own launches."""
    import lion
    from lion.ops.triton.chunk_grad import chunk_attention_trainable

    g = torch.Generator(device="cuda").manual_seed(0)
    qkv = torch.randn(2, 197, 3, 6, 64, device="cuda", generator=g).transpose(1, 3)
    q, k, v = (t.detach().requires_grad_() for t in qkv.unbind(2))
    a = torch.randn(6, device="cuda", generator=g, requires_grad=True)
    z = torch.randn(2, 197, 6, device="cuda", generator=g, requires_grad=True)
    dy = torch.randn(2, 6, 197, 64, device="cuda", generator=g)

    def run():
        with torch.autocast("cuda", torch.bfloat16):
            gates = dict(g_gamma=lion.decay_log_gates(a)) if mask == "Decay" else dict(g=lion.selective_log_gates(z))
            y = chunk_attention_trainable(q, k, v, **gates, feature_map="normalized_silu", scale=0.125)
        return (y, *torch.autograd.grad(y, (q, k, v, a if mask == "Decay" else z), dy))

    ref, out, direct = triton_then_direct(monkeypatch, run)
    assert {("chunk", "_chunk_states"), ("chunk", "_scan_states"), ("chunk", "_chunk_output"),
            ("chunk_grad", "_prep_kernel"), ("chunk_grad", "_phi_grad_kernel")} <= set(direct)
    assert all(direct.values()), [name for name, ok in direct.items() if not ok]
    for a_, b_ in zip(out, ref):
        assert torch.allclose(a_.float(), b_.float(), rtol=1e-3, atol=1e-3)
