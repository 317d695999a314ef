"""The package's shape: the core imports neither the training toolkit nor its heavy dependencies."""

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


def test_import_maple_peft_loads_neither_datasets_nor_matplotlib_nor_the_toolkit():
    code = (
        "import json, sys; import maple_peft; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('datasets', 'matplotlib') "
        "or m.startswith('maple_peft.training'))))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


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
