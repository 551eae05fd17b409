"""The package's shape: no import circle, and modules and functions small enough to read (house rules)."""

import ast
from pathlib import Path

import napari_cryospin

PACKAGE = Path(napari_cryospin.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str) -> set[str]:
    """Package modules that ``path`` imports anywhere (type-checking imports included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            stem = f"{base}.{node.module}" if node.level and node.module else node.module or base
            found |= {stem} | {f"{stem}.{a.name}" for a in node.names}
    return {m for m in found if m.startswith("napari_cryospin")}


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {
        name: {m for m in _imports(path, name) if m in files and m != name} for name, path in files.items()
    }


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (package ``__init__`` modules left out: they only re-export)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if graph.get(nxt) is None or nxt.count(".") == 0 or _is_package(nxt):
                continue
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and not _is_package(node) and (found := visit(node)):
            return found
    return None


def _is_package(name: str) -> bool:
    return (PACKAGE.parent / name.replace(".", "/") / "__init__.py").exists()


def test_the_import_graph_finds_a_planted_circle():
    graph = {"napari_cryospin.a": {"napari_cryospin.b"}, "napari_cryospin.b": {"napari_cryospin.a"}}
    assert _cycle(graph) == ["napari_cryospin.a", "napari_cryospin.b", "napari_cryospin.a"]


def test_no_import_circle_in_the_package():
    graph = _graph()
    assert (
        "napari_cryospin.engine.run_model" in graph["napari_cryospin.engine.engine"]
    )  # the graph sees imports
    assert _cycle(graph) is None, " → ".join(_cycle(graph))


def test_modules_and_functions_are_small():
    long_modules, long_functions = [], []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        if len(text.splitlines()) > 500:
            long_modules.append(path.name)
        for node in ast.walk(ast.parse(text)):
            if (
                isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                and node.end_lineno - node.lineno >= 80
            ):
                long_functions.append(f"{path.name}:{node.name}")
    assert not long_modules, f"modules over 500 lines: {long_modules}"
    assert not long_functions, f"functions over 80 lines: {long_functions}"
