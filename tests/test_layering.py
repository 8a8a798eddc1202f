"""Import edges: the one-way stack of docs/ARCHITECTURE.md, checked by parsing every module.

Every import counts, inside functions and under ``if TYPE_CHECKING:`` too:
a lazy import is still an edge, and a type-only import is still a
dependency a reader has to follow.  Three checks:

- each *unit* (a subpackage such as ``engine``, or a top-level module such
  as ``registry``) may import only the units on its allow-list;
- no cycle among modules, nor among units;
- the product's import path (``import chunkpull``, ``chunkpull pull --help``)
  loads no test or bench tooling, and no numpy, matplotlib or pytest.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import child_env

PKG = Path(__file__).resolve().parent.parent / "src" / "chunkpull"

# unit -> the units it may import.  A unit is a subpackage or a top-level module.
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "_version": set(),
    "_env": {"errors"},
    "_fallback": set(),
    "_native": set(),
    "_hashio": {"_env", "_native", "_fallback", "errors"},
    # Server plumbing shared by serve and testing: standard library only.
    "_httpd": set(),
    "core": {"errors"},
    "store": {"core", "errors", "_env"},
    "engine": {"core", "store", "errors", "_hashio"},
    "auth": {"errors"},
    "hosts": {"errors"},
    # The engine's knobs as one typed value, and what a pull returns.
    "tuning": {"engine", "_env"},
    "result": {"core"},
    "registry": {"core", "store", "engine", "errors", "_env", "auth", "hosts", "tuning", "result"},
    "display": {"registry", "core"},
    # tqdm bars from progress events; the one-call pull and apull.
    "bars": {"core"},
    "library": {"registry", "bars", "display", "core", "store", "tuning"},
    "serve": {"registry", "core", "errors", "_httpd", "_version"},
    "cli": {"registry", "store", "core", "errors", "_env", "_hashio", "_version", "display", "serve", "testing", "bench", "auth"},
    # The double the client is tested against never runs the client's code.
    "testing": {"core", "_httpd"},
    "bench": {"registry", "store", "engine", "core", "errors", "_env", "_hashio", "_version", "testing", "display"},
    "__init__": {"core", "store", "registry", "errors", "_hashio", "_version", "serve", "library", "bars", "tuning"},
    "__main__": {"cli"},
}
TOOLING = ("chunkpull.testing", "chunkpull.bench")
THIRD_PARTY_TOOLING = ("numpy", "matplotlib", "pytest")


def modules(root: Path = PKG) -> dict[str, Path]:
    """Return every module of the package by dotted name relative to it ("engine.puller", "registry")."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).with_suffix("").parts
        out[".".join(rel[:-1]) if rel[-1] == "__init__" and len(rel) > 1 else ".".join(rel)] = path
    return out


def unit(module: str) -> str:
    return module.split(".", 1)[0]


def imports(module: str, path: Path, known: set[str]) -> set[str]:
    """Return the chunkpull modules (dotted, relative to the package) that module imports."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    here = module.split(".") if is_package and module != "__init__" else module.split(".")[:-1]
    found: set[str] = set()

    def add(name: str) -> None:
        # The longest known module the dotted name starts with.
        parts = name.split(".")
        for n in range(len(parts), 0, -1):
            cand = ".".join(parts[:n])
            if cand in known:
                found.add(cand)
                return
        if name in ("", "chunkpull"):
            found.add("__init__")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "chunkpull" or alias.name.startswith("chunkpull."):
                    add(alias.name.partition(".")[2])
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if not (node.module == "chunkpull" or (node.module or "").startswith("chunkpull.")):
                    continue
                base = (node.module or "").partition(".")[2]
            else:
                up = here[: len(here) - (node.level - 1)] if node.level > 1 else here
                base = ".".join([*up, *([node.module] if node.module else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}" if base else alias.name
                if sub in known:
                    found.add(sub)
                else:
                    add(base)
    found.discard(module)
    return found


def graph(root: Path = PKG) -> dict[str, set[str]]:
    mods = modules(root)
    known = set(mods) | {"_native"}
    return {m: imports(m, p, known) for m, p in mods.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """Return one cycle in the graph as a path (first node repeated at the end), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(edges):
        if n not in state and (found := visit(n)):
            return found
    return None


def unit_graph(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for m, targets in edges.items():
        out.setdefault(unit(m), set()).update(unit(t) for t in targets if unit(t) != unit(m))
    return out


EDGES = graph()


def test_every_unit_has_a_rule():
    missing = sorted({unit(m) for m in EDGES} - set(ALLOWED))
    assert not missing, f"units without a layering rule: {missing}; add them to ALLOWED in test_layering.py"


@pytest.mark.parametrize("module", sorted(EDGES))
def test_allowed_imports(module):
    extra = sorted({t for t in EDGES[module] if unit(t) != unit(module) and unit(t) not in ALLOWED[unit(module)]})
    assert not extra, f"{module} imports {extra}; {unit(module)} may import only {sorted(ALLOWED[unit(module)]) or 'nothing'} from chunkpull"


def test_no_module_cycle():
    cycle = find_cycle(EDGES)
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_no_unit_cycle():
    cycle = find_cycle(unit_graph(EDGES))
    assert cycle is None, f"cycle between layers: {' -> '.join(cycle)}"


def test_no_module_is_long():
    long = {m: n for m, p in modules().items() if (n := len(p.read_text().splitlines())) > 600}
    assert not long, f"modules over 600 lines: {long}"


@pytest.mark.parametrize(
    "code",
    [
        "import chunkpull",
        "import chunkpull; chunkpull.Registry; chunkpull.DiskCache",
        "from chunkpull.cli import main\ntry:\n    main(['pull', '--help'])\nexcept SystemExit:\n    pass",
    ],
    ids=["import", "public-api", "pull-help"],
)
def test_product_import_path_loads_no_tooling(code):
    probe = code + "\nimport sys\nprint('\\n'.join(sorted(sys.modules)))"
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=child_env(), timeout=60, check=True)
    loaded = set(r.stdout.split())
    bad = sorted(m for m in loaded if m.startswith(TOOLING) or m.split(".")[0] in THIRD_PARTY_TOOLING)
    assert not bad, f"{code!r} loaded tooling: {bad}"
    assert "chunkpull.core.names" in loaded, "the probe did not import chunkpull"
    # Start-up is part of every CLI pull's time: the async API's asyncio (~50 ms) loads only when used.
    assert "asyncio" not in loaded, f"{code!r} imported asyncio"


# -- the checker itself ------------------------------------------------------------


@pytest.mark.parametrize(
    "path, source, want",
    [
        ("probe.py", "from . import _env", {"_env"}),
        ("probe.py", "from .store.cache import DiskCache", {"store.cache"}),
        ("probe.py", "from chunkpull.core.digest import Digest", {"core.digest"}),
        ("probe.py", "import chunkpull.registry", {"registry"}),
        ("probe.py", "import chunkpull", {"__init__"}),
        ("probe.py", "def f():\n    from .serve import app", {"serve.app"}),
        ("probe.py", "from . import __version__", {"__init__"}),
        ("probe.py", "import json\nfrom os import path", set()),
        ("probe.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .registry import R", {"registry"}),
        ("engine/probe.py", "from ..core import digest", {"core.digest"}),
        ("engine/probe.py", "from .. import registry", {"registry"}),
        ("engine/probe.py", "from .config import X", {"engine.config"}),
        ("engine/__init__.py", "from .config import X", {"engine.config"}),
        ("engine/probe.py", "from ..store import DiskCache", {"store"}),
    ],
    ids=["from-dot-import", "from-dot-module", "absolute-from", "absolute-import", "package", "lazy", "package-attr",
         "stdlib", "type-checking-counts", "parent-submodule", "parent-module", "sibling", "package-init-sibling", "package-attr-of-sub"],
)
def test_import_parser(tmp_path, path, source, want):
    """The edge finder itself sees every import form."""
    for name in ("_env.py", "registry.py", "__init__.py", "core/__init__.py", "core/digest.py", "store/__init__.py",
                 "store/cache.py", "serve/__init__.py", "serve/app.py", "engine/__init__.py", "engine/config.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / path).write_text(source)
    mods = modules(tmp_path)
    module = next(m for m, p in mods.items() if p == tmp_path / path)
    got = imports(module, tmp_path / path, set(mods))
    assert got == want, f"imports({source!r}) = {got!r}, want {want!r}"


def test_cycle_finder():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
