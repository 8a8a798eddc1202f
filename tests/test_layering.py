"""Import edges: the one-way stack of docs/ARCHITECTURE.md, checked by parsing every module.

Imports anywhere in a module count, inside functions too: a lazy import is
still an edge.  Only imports under ``if TYPE_CHECKING:`` are left out (the
idiom STYLE.md recommends for type hints): they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "src" / "chunkpull"

LEAVES = {"errors", "names", "digest", "progress", "_env"}

# module -> the chunkpull modules it may import (None: anything).
ALLOWED: dict[str, set[str] | None] = {
    "errors": set(),
    "digest": {"errors"},
    "names": {"errors", "digest"},
    "progress": {"errors"},
    "_env": {"errors"},
    "_fallback": set(),
    "_hashio": {"_env", "_native", "_fallback", "errors"},
    "chunks": {"digest", "_hashio", "buffers", "errors"},
    "buffers": {"errors"},
    "manifest": {"digest", "errors"},
    "transport": {"errors"},
    # Server plumbing shared by api and testregistry: stdlib only, a leaf.
    "_httpd": set(),
    "api": {"registry", "progress", "names", "errors", "_httpd", "__init__"},
    "testregistry": {"digest", "_hashio", "_httpd"},
    # Front ends at the top of the stack may import anything.
    "__init__": None,
    "__main__": None,
    "cli": None,
    "bench": None,
    "_benchchild": None,
    # The python-threads baseline of chunkpull bench: plain Python, never chunkpull's data path.
    "_baseline_threads": set(),
}

TOOLS = {"cli", "bench", "_benchchild", "_baseline_threads"}

# module -> chunkpull modules it must never import, whatever else changes.
FORBIDDEN: dict[str, set[str]] = {
    "cache": {"registry", "pull", "api", "transport", "chunks", "testregistry"} | TOOLS,
    "registry": {"api", "testregistry"} | TOOLS,
    "api": {"testregistry"} | TOOLS,
    "testregistry": {"registry", "api", "cache"} | TOOLS,
    "transport": {"registry", "pull", "api", "cache", "chunks"} | TOOLS,
    "chunks": {"registry", "pull", "api", "cache", "transport"} | TOOLS,
    "pull": {"registry", "api", "testregistry"} | TOOLS,
    "manifest": {"registry", "pull", "cache", "transport", "api"} | TOOLS,
}


def modules() -> list[str]:
    return sorted(p.stem for p in PKG.glob("*.py"))


def chunkpull_imports(module: str) -> set[str]:
    """Return the chunkpull modules that module imports (by their short names)."""
    tree = ast.parse((PKG / f"{module}.py").read_text(), filename=f"{module}.py")
    type_only = {
        id(n)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and _is_type_checking(block.test)
        for stmt in block.body
        for n in ast.walk(stmt)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "chunkpull":
                    found.add(parts[1] if len(parts) > 1 else "__init__")
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module and node.module.split(".")[0] == "chunkpull":
                parts = node.module.split(".")
            elif node.level == 1:
                parts = ["chunkpull", *(node.module.split(".") if node.module else [])]
            else:
                continue
            if len(parts) > 1:
                found.add(parts[1])
            else:
                # "from . import x" / "from chunkpull import x": x is a submodule or a package name.
                for alias in node.names:
                    found.add(alias.name if (PKG / f"{alias.name}.py").exists() or alias.name == "_native" else "__init__")
    found.discard(module)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def test_every_module_has_a_rule():
    missing = [m for m in modules() if m not in ALLOWED and m not in FORBIDDEN]
    assert not missing, f"modules without a layering rule: {missing}; add them to test_layering.py"


@pytest.mark.parametrize("module", sorted(m for m, allowed in ALLOWED.items() if allowed is not None))
def test_allowed_imports(module):
    if not (PKG / f"{module}.py").exists():
        pytest.skip(f"{module}.py does not exist yet")
    got = chunkpull_imports(module)
    extra = got - ALLOWED[module]
    assert not extra, f"{module} imports {sorted(extra)}; it may import only {sorted(ALLOWED[module]) or 'nothing'} from chunkpull"


@pytest.mark.parametrize("module", sorted(FORBIDDEN))
def test_forbidden_imports(module):
    if not (PKG / f"{module}.py").exists():
        pytest.skip(f"{module}.py does not exist yet")
    got = chunkpull_imports(module) & FORBIDDEN[module]
    assert not got, f"{module} imports {sorted(got)}, which sit above it in the stack"


@pytest.mark.parametrize("module", sorted(LEAVES))
def test_leaves_import_only_errors(module):
    got = chunkpull_imports(module) - {"errors"} - ({"digest"} if module == "names" else set())
    assert not got, f"leaf {module} imports {sorted(got)} from chunkpull"


@pytest.mark.parametrize(
    "source, want",
    [
        ("from . import _env", {"_env"}),
        ("from .cache import DiskCache", {"cache"}),
        ("from chunkpull.digest import Digest", {"digest"}),
        ("import chunkpull.registry", {"registry"}),
        ("import chunkpull", {"__init__"}),
        ("def f():\n    from .api import x", {"api"}),
        ("from . import __version__", {"__init__"}),
        ("import json\nfrom os import path", set()),
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .registry import R\nfrom .cache import C", {"cache"}),
        ("import typing\nif typing.TYPE_CHECKING:\n    from . import api\nelse:\n    from . import _env", {"_env"}),
    ],
    ids=["from-dot-import", "from-dot-module", "absolute-from", "absolute-import", "package", "lazy", "package-attr", "stdlib",
         "type-checking-skipped", "typing-attr-else-counts"],
)
def test_import_parser(tmp_path, monkeypatch, source, want):
    """The edge finder itself sees every import form."""
    fake = tmp_path / "pkg"
    fake.mkdir()
    for name in ("_env", "cache", "digest", "registry", "api"):
        (fake / f"{name}.py").write_text("")
    (fake / "probe.py").write_text(source)
    monkeypatch.setitem(globals(), "PKG", fake)
    got = chunkpull_imports("probe")
    assert got == want, f"chunkpull_imports({source!r}) = {got!r}, want {want!r}"
