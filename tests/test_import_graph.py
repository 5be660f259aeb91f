"""The modules of mlm/src import each other without a cycle, counting every import: top-level and function-local."""
import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "mlm.src"


def modules(repo: str = REPO) -> dict[str, str]:
    """module name -> file, for every .py file under ``repo``/mlm/src (a package is its __init__)."""
    found = {}
    for folder, _, files in os.walk(os.path.join(repo, *PACKAGE.split("."))):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                parts = os.path.relpath(path, repo)[:-3].split(os.sep)
                found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imported(path: str, module: str, known: set) -> set:
    """The mlm/src modules ``path`` imports anywhere in its body (``from a import b`` counts a.b when b is a
    module, else a; relative imports are resolved)."""
    is_package = path.endswith("__init__.py")
    targets = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = module.split(".")[: len(module.split(".")) - node.level + is_package]
                base = ".".join(parent + ([base] if base else []))
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:  # `import mlm.src.glue.tasks` also runs the packages above it
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
    return targets


def import_graph(repo: str = REPO) -> dict[str, set]:
    found = modules(repo)
    return {module: imported(path, module, set(found)) for module, path in found.items()}


def find_cycle(graph: dict[str, set]):
    """One cycle as a list of modules (first == last), or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_mlm_src_has_no_import_cycle():
    graph = import_graph()
    assert {"mlm.src.bert_layers", "mlm.src.config_validation", "mlm.src.glue.config"} <= set(graph)
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_scan_sees_function_local_and_relative_imports(tmp_path):
    pkg = tmp_path / "mlm" / "src"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from mlm.src.b import g\n    return g\n")
    (pkg / "b.py").write_text("from . import a\n")
    graph = import_graph(str(tmp_path))
    assert graph["mlm.src.a"] == {"mlm.src.b"} and "mlm.src.a" in graph["mlm.src.b"]
    assert find_cycle(graph) is not None
