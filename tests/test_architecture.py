"""The package's import graph (docs/architecture.md): no cycles, imports pointing down the layers, no
private names across modules, no module importing the top-level `cggmlib` package, and dynamic imports
(`importlib.import_module`) naming packages that exist.

Every module under cggmlib/ is parsed (never imported); every import of a cggmlib module counts,
function-level and relative ones included. Importing `cggmlib.a.b.c` from outside `cggmlib.a` runs
`cggmlib/a/__init__.py` first, so such an import also counts as an edge to each sub-package on the way.
"""
from __future__ import annotations

import ast
from pathlib import Path


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
    assert "cggmlib.analysis.figures" in g["cggmlib.analysis.dataview"]  # function-level (seaborn loads lazily)
    assert "cggmlib.bench.suites" in g["cggmlib.bench.gpu_check"]  # `from . import suites as S`: a submodule by name
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycle():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle) + " (move the shared code down a layer, " \
                          "see docs/architecture.md)"


def private_uses(name: str, path: Path):
    """(line, text) of each `_private` name of another cggmlib module used in `path`: imported by name
    (`from .x import _y`) or read through the module (`from . import x as X` ... `X._y`)."""
    aliases = {}
    for target, names, line in imports(name, path):
        for n in names or ():
            if n.startswith("_") and not n.startswith("__") and target != name:
                yield line, f"imports {n} from {target}"
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("cggmlib")):
            target = next(t for t, _, line in imports(name, path) if line == node.lineno)
            for a in node.names:
                if f"{target}.{a.name}" in MODULES:
                    aliases[a.asname or a.name] = f"{target}.{a.name}"
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name in MODULES and a.asname:
                    aliases[a.asname] = a.name
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases \
                and node.attr.startswith("_") and not node.attr.startswith("__"):
            yield node.lineno, f"reads {node.value.id}.{node.attr} of {aliases[node.value.id]}"


def test_no_private_name_used_by_another_module():
    bad = [f"{MODULES[name].relative_to(ROOT.parent)}:{line} {what}"
           for name, path in MODULES.items() for line, what in private_uses(name, path)]
    assert not bad, "private names used outside their module (make them public or move them):\n" + "\n".join(bad)


def test_the_private_name_check_sees_module_aliases(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("from . import runner as B\nfrom .suites import _hidden\nB._sync(0)\n")
    found = [what for _, what in private_uses("cggmlib.bench.x", src)]
    assert found == ["imports _hidden from cggmlib.bench.suites", "reads B._sync of cggmlib.bench.runner"]


def test_only_the_top_level_package_is_the_api_facade():
    """No module imports `cggmlib` itself (`import cggmlib`, `from cggmlib import x`, `from .. import x` for a
    name that is not a submodule): the façade imports everything, so using it inside would hide cycles."""
    bad = [f"{MODULES[name].relative_to(ROOT.parent)}:{line}" for name, path in MODULES.items() if name != "cggmlib"
           for target, names, line in imports(name, path)
           if target == "cggmlib" and (names is None or any(f"cggmlib.{n}" not in MODULES for n in names))]
    assert not bad, "modules importing the top-level cggmlib package:\n" + "\n".join(bad)


#: the layers, lowest first (docs/architecture.md); a module may import its own layer and those below
LAYERS = [
    ("foundation", ("cggmlib.errors", "cggmlib.files", "cggmlib.metrics", "cggmlib.tasks", "cggmlib.presets",
                    "cggmlib.device")),
    ("domain", ("cggmlib.options", "cggmlib.config", "cggmlib.data", "cggmlib.models", "cggmlib.modulation")),
    ("run folders", ("cggmlib.runs",)),
    ("training", ("cggmlib.training", "cggmlib.train", "cggmlib.experiment")),
    ("reading and reproducing", ("cggmlib.analysis", "cggmlib.bench", "cggmlib.repro", "cggmlib.fidelity")),
    ("command line", ("cggmlib.commands", "cggmlib.__main__")),
]
#: the imports that reach up a layer, each for a reason (anything new here needs one in docs/architecture.md)
UPWARD = {
    ("cggmlib.modulation.classifiers", "cggmlib.training"),  # CGGM's heads average across processes
    ("cggmlib.modulation.classifiers", "cggmlib.training.distributed"),
    ("cggmlib.modulation.teachers", "cggmlib.train"),  # UMT/UME train their unimodal teachers with the loop
    ("cggmlib.modulation.teachers", "cggmlib.training"),
    ("cggmlib.modulation.teachers", "cggmlib.training.checkpoint"),  # ... seeded like a run (rng_state)
    ("cggmlib.data.brats_cache", "cggmlib.repro"),  # preprocessing workers end with their parent process
    ("cggmlib.data.brats_cache", "cggmlib.repro.processes"),
}


def layer(module: str) -> int:
    return next(k for k, (_, prefixes) in enumerate(LAYERS)
                if any(module == p or module.startswith(p + ".") for p in prefixes))


def test_every_module_has_a_layer():
    assert [m for m in MODULES if m != "cggmlib" and not any(
        m == p or m.startswith(p + ".") for _, prefixes in LAYERS for p in prefixes)] == []


def upward(g: dict[str, set[str]]) -> list[str]:
    return [f"{m} ({LAYERS[layer(m)][0]}) imports {t} ({LAYERS[layer(t)][0]})"
            for m in sorted(g) if m != "cggmlib" for t in sorted(g[m]) if layer(t) > layer(m) and (m, t) not in UPWARD]


def test_the_layer_check_flags_run_folders_importing_the_loop():
    assert upward({"cggmlib.runs.folder": {"cggmlib.training.trace", "cggmlib.files"}}) == [
        "cggmlib.runs.folder (run folders) imports cggmlib.training.trace (training)"]


def test_imports_point_down_the_layers():
    bad = upward(graph())
    assert not bad, "imports reaching up a layer (move the code down, or see docs/architecture.md):\n" + "\n".join(bad)


def dynamic_imports(name: str, path: Path):
    """(line, package) of each `importlib.import_module(...)` whose text names a cggmlib package: the part
    before the first `{` of an f-string, resolved against `__package__` / `__name__` when relative."""
    package = name if name in PACKAGES else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
                and node.args):
            continue
        arg = node.args[0]
        text = arg.value if isinstance(arg, ast.Constant) else "".join(
            v.value for v in (arg.values[:1] if isinstance(arg, ast.JoinedStr) else []) if isinstance(v, ast.Constant))
        if not isinstance(text, str) or not (text.startswith(".") or text.startswith("cggmlib")):
            continue
        if text.startswith("."):
            level = len(text) - len(text.lstrip("."))
            base = package.split(".")
            text = ".".join(base[:len(base) - level + 1]) + "." + text[level:]
        yield node.lineno, text.rpartition(".")[0]


def test_dynamic_imports_name_packages_that_exist():
    bad = [f"{MODULES[name].relative_to(ROOT.parent)}:{line} imports from {pkg}, which does not exist"
           for name, path in MODULES.items() for line, pkg in dynamic_imports(name, path) if pkg not in PACKAGES]
    assert not bad, "\n".join(bad)


def test_the_dynamic_import_check_resolves_relative_names(tmp_path):
    src = tmp_path / "m.py"
    src.write_text('import importlib\nimportlib.import_module(f".data.{name}", __package__)\n')
    assert list(dynamic_imports("cggmlib.analysis.dataview", src)) == [(2, "cggmlib.analysis.data")]


def test_names_come_from_the_module_that_defines_them():
    """Only package `__init__` files re-export: inside cggmlib, `from .x import name` needs `name` defined in
    x, not merely imported there (`from ..files import atomic_write_json`, never `from ..runs import` it
    through a module)."""
    def imported_at_top(path):
        return {a.asname or a.name.split(".")[0] for n in ast.parse(path.read_text()).body
                if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}

    bad = [f"{MODULES[name].relative_to(ROOT.parent)}:{line} imports {n} from {target}, which only imports it"
           for name, path in MODULES.items() for target, names, line in imports(name, path)
           if target in MODULES and target not in PACKAGES
           for n in names or () if n in imported_at_top(MODULES[target])]
    assert not bad, "\n".join(bad)
