"""Entry points as a user on a GPU machine starts them, checked on the CPU: argument checking with CUDA reported
available (the default --device is cuda there), and no function-local import that shadows a module-level name."""
import ast
from pathlib import Path

import pytest
import torch

from image_classification.main_lion import check_args, get_args_parser

REPO = Path(__file__).resolve().parents[1]
TINY = ["--model", "lion_tiny_patch16_224", "--model-kwargs", "patch_size=7", "depth=1", "embed_dim=32", "num_heads=2",
        "--data-set", "FMNIST_MINI", "--input-size", "28"]


@pytest.mark.parametrize("extra", [[], ["--compile"]], ids=["eager", "compile"])
def test_check_args_with_cuda_available(monkeypatch, extra):
    """A GPU machine's defaults (--device cuda) pass check_args, with and without --compile (a function-local
    `import torch._dynamo` once made `torch` a local name of check_args: UnboundLocalError without --compile)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    args = get_args_parser().parse_args(TINY + extra)
    assert args.device.startswith("cuda")
    check_args(args)
    assert args.data_path is not None


def _module_level_names(tree):
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update(a.asname or a.name.split(".")[0] for a in node.names)
    return names


def _shadowing_imports(path):
    """(line, function, name) of each import inside a function that binds a name the module imports at top level:
    Python then treats that name as local in the whole function, so a use before the import fails."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    module_names = _module_level_names(tree)
    found = []
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    found += [(node.lineno, fn.name, a.asname or a.name.split(".")[0]) for a in node.names
                              if (a.asname or a.name.split(".")[0]) in module_names]
    return found


def test_no_function_local_import_shadows_a_module_name():
    files = [p for p in REPO.rglob("*.py") if not {".venv", "build"} & set(p.parts)]
    assert len(files) > 50
    bad = {str(p.relative_to(REPO)): hits for p in files if (hits := _shadowing_imports(p))}
    assert not bad, f"function-local imports shadowing module-level names (import them at the top): {bad}"


def test_the_scan_finds_the_pattern(tmp_path):
    planted = tmp_path / "m.py"
    planted.write_text("import torch\n\ndef f(x):\n    if x:\n        import torch._dynamo\n    return torch.ones(1)\n")
    assert _shadowing_imports(planted) == [(5, "f", "torch")]
