"""The layout is the architecture: each layer imports only the layers below it.

memwal/ is split into private subpackages, one per layer (their ``__init__`` docstrings say
what each owns). This test reads every module's imports (including the ones made inside
functions and under TYPE_CHECKING) and fails on an import that points up or sideways,
and on a module that reaches into another module's underscore names.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import memwal

PKG = Path(memwal.__file__).parent

# Each layer may import the layers listed for it (and itself); the order is the layering.
ALLOWED: dict[str, set[str]] = {
    "_core": set(),
    "_policy": {"_core"},
    "_journal": {"_core"},
    "_sinks": {"_core", "_policy"},
    "_reads": {"_core", "_journal", "_sinks"},
    "_observe": {"_core", "_policy", "_journal", "_sinks", "_reads"},
    "_delivery": {"_core", "_policy", "_journal", "_sinks", "_reads", "_observe"},
    "_recovery": {"_core", "_policy", "_journal", "_sinks", "_reads", "_observe", "_delivery"},
    "_collector": {"_core", "_policy", "_journal", "_sinks", "_observe", "_delivery", "_reads"},
    "_testing": {"_core"},
}
# The entry points sit on top: they may import any layer.
ENTRY = {"__init__", "testing", "replay"}


def _layer(module: Path) -> str:
    rel = module.relative_to(PKG)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(module: Path) -> list[tuple[str, list[str], int]]:
    """(absolute memwal module, imported names, line) for each memwal import in ``module``."""
    rel = module.relative_to(PKG).with_suffix("")
    package = ["memwal", *rel.parts[:-1]]  # the package a relative import starts from
    found = []
    for node in ast.walk(ast.parse(module.read_text(), str(module))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if target == "memwal" or target.startswith("memwal."):
                found.append((target, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.startswith("memwal.")]
    return found


MODULES = sorted(p for p in PKG.rglob("*.py"))


@pytest.mark.parametrize("module", MODULES, ids=lambda p: str(p.relative_to(PKG)))
def test_imports_point_down(module: Path) -> None:
    layer = _layer(module)
    if layer in ENTRY:
        return
    assert layer in ALLOWED, f"{module.relative_to(PKG)}: a module outside the layers; add its layer to ALLOWED"
    for target, _, line in _imports(module):
        parts = target.split(".")
        if len(parts) < 2:
            pytest.fail(f"{module.relative_to(PKG)}:{line} imports the public package from inside a layer")
        other = parts[1]
        assert other == layer or other in ALLOWED[layer], (
            f"{module.relative_to(PKG)}:{line} ({layer}) imports {target} ({other}), which is not below it"
        )


@pytest.mark.parametrize("module", MODULES, ids=lambda p: str(p.relative_to(PKG)))
def test_no_module_reaches_into_another_modules_privates(module: Path) -> None:
    """Underscore names stay in the module that defines them: neither imported nor read
    off another object (``journal._read``); a seam gets a public name instead."""
    for target, names, line in _imports(module):
        private = [n for n in names if n.startswith("_") and not n.startswith("__")]
        assert not private, f"{module.relative_to(PKG)}:{line} imports private {private} from {target}"
    for node in ast.walk(ast.parse(module.read_text(), str(module))):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in ("self", "cls", "os", "sys"):
                continue
            if isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name) and owner.func.id == "super":
                continue
            pytest.fail(f"{module.relative_to(PKG)}:{node.lineno} reads {ast.unparse(node)}, another object's private")


def test_every_layer_says_what_it_owns() -> None:
    for layer in ALLOWED:
        init = PKG / layer / "__init__.py"
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and "Imports" in doc, f"{init}: the docstring says what the layer owns and may import"
