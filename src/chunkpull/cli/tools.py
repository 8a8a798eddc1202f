"""``chunkpull registry make|serve``: the built-in registry, as a new user meets it.

``serve`` is handed to ``chunkpull.testing.main`` unchanged.  ``make`` is
parsed with that module's ``make_parser`` and run here, because what it
prints is the first thing a new user reads:
the model it wrote, its size, its manifest digest, and the two commands that
come next (serve the directory, pull the model) — not just a digest.

Imports core (names, units); ``chunkpull.testing`` only inside the commands.
"""

from __future__ import annotations

from ..core.names import Name
from ..core.units import format_bytes, plural

__all__ = ["cmd_registry"]

# What the built-in registry completes short names with (testing.models).
MAKE_MASK = "registry.local/library/_:latest"
EXAMPLE_PORT = 5000


def _make(argv: list[str]) -> int:
    from ..testing.main import make_model

    args, digest = make_model(argv)
    name = Name.parse(args.name).merge(MAKE_MASK)
    shown = str(name) if name.is_fully_qualified() else args.name
    repo = f"{name.namespace}/{name.model}:{name.tag}"
    config = "" if args.no_config else " and a config"
    print(f"made {shown} in {args.dir}: {plural(len(args.size), 'layer')} ({format_bytes(sum(args.size))}){config}, manifest {digest}")
    print(f"  serve it:  chunkpull registry serve {args.dir} --port {EXAMPLE_PORT}")
    print(f"  pull it:   chunkpull pull http://127.0.0.1:{EXAMPLE_PORT}/{repo}", flush=True)
    return 0


def cmd_registry(action: str, rest: list[str]) -> int:
    """Run ``chunkpull registry ACTION REST...``; return the exit status."""
    if action == "make":
        return _make(rest)
    # Imported here: the built-in registry is test tooling, not the product's import path.
    from ..testing import main as testing_main

    return testing_main.serve_main(rest)
