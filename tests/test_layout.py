"""The package's shape: the core imports neither the training toolkit nor its heavy dependencies, and no module of the
package imports itself back through others (no import cycles)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import maple_peft

PACKAGE = Path(maple_peft.__file__).parent


def _imported_modules(path: Path) -> set[str]:
    """Absolute names of the modules a file imports (relative imports resolved against its package)."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def test_the_core_loads_neither_datasets_nor_matplotlib_nor_the_toolkit_and_registers_with_peft():
    code = (  # every public name (its first use imports PEFT, which then gets the method registered)
        "import json, sys; from maple_peft import *; from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING as tuners; "
        "print(json.dumps([tuners['MAPLE'].__name__, sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('datasets', 'matplotlib') or m.startswith('maple_peft.training'))]))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(result.stdout.strip().splitlines()[-1]) == ["MaPLeModel", []]


def test_no_core_module_imports_the_training_toolkit():
    core = [p for p in PACKAGE.rglob("*.py") if "training" not in p.relative_to(PACKAGE).parts]
    assert len(core) >= 10
    offenders = {
        str(p.relative_to(PACKAGE)): sorted(n for n in _imported_modules(p) if n.startswith("maple_peft.training"))
        for p in core
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def test_the_package_never_imports_the_example_scripts():
    for path in PACKAGE.rglob("*.py"):
        names = _imported_modules(path)
        assert not any(n.split(".")[0] in ("examples", "train", "evaluate", "aggregate") for n in names), path


#: Cycles known to be there, each with its issue; a cycle that is not listed fails the test.
KNOWN_CYCLES = [
    # issue 23 (one module per method) removes it: `objective_classes` imports `SelfRegularizedLoss` in its body
    {"maple_peft.objectives", "maple_peft.regularization"},
]


def _package_modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports, at module level or inside a function (a lazy import is still a
    dependency). `from . import x` imports `x`; the parent packages Python imports first are not counted."""
    modules = _package_modules()
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{parent}.{base}" if base else parent
                submodules = {f"{base}.{alias.name}" for alias in node.names} & modules.keys()
                imported.update(submodules or {base})
        graph[name] = (imported & modules.keys()) - {name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = set()
            while node not in component:
                component.add(stack.pop())
            on_stack.difference_update(component)
            if len(component) > 1:
                found.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_package_has_no_import_cycles():
    graph = _import_graph()
    assert {"maple_peft.cli", "maple_peft.command_line"} <= graph.keys()
    assert "maple_peft.command_line" in graph["maple_peft.cli"]
    assert [cycle for cycle in _cycles(graph) if cycle not in KNOWN_CYCLES] == []


def test_the_cycle_check_finds_a_cycle_through_a_lazy_import():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [{"a", "b", "c"}]
