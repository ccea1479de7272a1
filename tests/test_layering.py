"""Imports flow one way: each layer of trio_edge uses only the layers below it (DESIGN.md section 4).

    base (errors, defaults, files, graph_ops, data, samples, cluster) < trio < models < artifact < runtime
    < exporters < calibration < serve, batch, cli

The exporter may run graphs through the runtime to validate them; the runtime never imports the exporter;
models and trio import neither. Lazy imports inside functions count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import trio_edge

LAYERS = (
    {"errors", "defaults", "files", "graph_ops", "data", "samples", "cluster"},
    {"trio"},
    {"models"},
    {"artifact"},
    {"runtime"},
    {"exporters"},
    {"calibration"},
    {"serve", "batching", "cli"},
)


def layer_of(module: str) -> int:
    """Layer index of a module named relative to the package (`runtime.open`); the package root is on top."""
    if not module:
        return len(LAYERS)
    head = module.split(".")[0]
    for index, names in enumerate(LAYERS):
        if head in names:
            return index
    raise AssertionError(f"module {module!r} is in no layer: add its top-level name to LAYERS")


def imported_modules(path: Path, module: str, package: str) -> list[tuple[int, str]]:
    """(line, imported module relative to `package`) for every import of the package's own modules."""
    is_init = path.name == "__init__.py"
    parts = module.split(".") if module else []
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = parts if is_init else parts[:-1]
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                names = [f"{package}.{target}".rstrip(".")]
                if not node.module:  # `from . import x`: x is a module of that package
                    names = [f"{names[0]}.{alias.name}" for alias in node.names]
            else:
                names = [node.module or ""]
        else:
            continue
        for name in names:
            if name == package or name.startswith(package + "."):
                found.append((node.lineno, name[len(package) + 1:]))
    return found


def back_imports(root: Path, package: str = "trio_edge") -> list[str]:
    """Every import that runs from a lower layer up to a higher one, as 'file:line module -> module'."""
    problems = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root).with_suffix("")
        module = ".".join(p for p in relative.parts if p != "__init__")
        for line, target in imported_modules(path, module, package):
            if layer_of(target) > layer_of(module):
                problems.append(f"{path.relative_to(root)}:{line} {module or package} -> {target}")
    return problems


def test_imports_flow_one_way():
    root = Path(trio_edge.__file__).parent
    assert back_imports(root) == []


def test_a_back_import_is_caught(tmp_path):
    """The check itself: a deliberate back-import (models -> runtime) in a copy of the layout fails it."""
    package = tmp_path / "trio_edge"
    (package / "models").mkdir(parents=True)
    (package / "runtime").mkdir()
    (package / "runtime" / "open.py").write_text("from ..trio.schedule import Schedule\n")
    (package / "models" / "split.py").write_text("def f():\n    from ..runtime.open import open_pipeline\n")
    (package / "models" / "ok.py").write_text("from . import split\nfrom ..errors import InputError\n")
    assert back_imports(package) == ["models/split.py:2 models.split -> runtime.open"]
