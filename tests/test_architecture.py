"""The package's import graph: no cycles, no private names across modules, no module importing the
top-level `cggmlib` package (docs/architecture.md).

Every module under cggmlib/ is parsed (never imported); every import of a cggmlib module counts,
function-level and relative ones included. Importing `cggmlib.a.b.c` from outside `cggmlib.a` runs
`cggmlib/a/__init__.py` first, so such an import also counts as an edge to each sub-package on the way.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "cggmlib"


def module_name(path: Path) -> str:
    parts = ("cggmlib",) + path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}
PACKAGES = {module_name(p) for p in ROOT.rglob("__init__.py")}


def imports(name: str, path: Path):
    """(imported module, imported names or None, line) for every import of a cggmlib module in `path`."""
    package = name if name in PACKAGES else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "cggmlib" or alias.name.startswith("cggmlib."):
                    yield alias.name, None, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "cggmlib" or target.startswith("cggmlib."):
                yield target, [a.name for a in node.names], node.lineno


def edges(name: str, target: str, names) -> set[str]:
    """The modules an import runs: the target, the submodules it names, the sub-packages on the way in.

    The top-level package is left out: it is the public façade (cggmlib/__init__.py), which imports the
    layers it exposes, and no module may import it (test_only_the_top_level_package_is_the_api_facade)."""
    out = {target} | {f"{target}.{n}" for n in names or () if f"{target}.{n}" in MODULES}
    parts = target.split(".")
    for k in range(2, len(parts)):
        pkg = ".".join(parts[:k])
        if not (name == pkg or name.startswith(pkg + ".")):
            out.add(pkg)
    return {m for m in out if m in MODULES and m not in (name, "cggmlib")}


def graph() -> dict[str, set[str]]:
    return {name: set().union(*(edges(name, t, ns) for t, ns, _ in imports(name, path)))
            for name, path in MODULES.items()}


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(g.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(g):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_the_parser_sees_relative_and_function_level_imports():
    g = graph()
    assert "cggmlib.errors" in g["cggmlib.config"]  # module-level relative import
    assert "cggmlib.data" in g["cggmlib.config"]  # function-level (Config validation)
    assert "cggmlib.bench.suites" in g["cggmlib.bench.gpu_check"]  # `from . import suites as S`: a submodule by name
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycle():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle) + " (move the shared code down a layer, " \
                          "see docs/architecture.md)"


def test_no_private_name_imported_from_another_module():
    bad = [f"{MODULES[name].relative_to(ROOT.parent)}:{line} imports {n} from {target}"
           for name, path in MODULES.items() for target, names, line in imports(name, path)
           for n in names or () if n.startswith("_") and not n.startswith("__") and target != name]
    assert not bad, "private names used outside their module (make them public or move them):\n" + "\n".join(bad)


def test_only_the_top_level_package_is_the_api_facade():
    """No module imports `cggmlib` itself (`import cggmlib`, `from cggmlib import x`, `from .. import x` for a
    name that is not a submodule): the façade imports everything, so using it inside would hide cycles."""
    bad = [f"{MODULES[name].relative_to(ROOT.parent)}:{line}" for name, path in MODULES.items() if name != "cggmlib"
           for target, names, line in imports(name, path)
           if target == "cggmlib" and (names is None or any(f"cggmlib.{n}" not in MODULES for n in names))]
    assert not bad, "modules importing the top-level cggmlib package:\n" + "\n".join(bad)
