"""Regenerate the tiny Ollama-layout trees under testdata/, deterministically.

- ``models/``: a local models directory (cache) holding
  ``example.com/library/smol:latest`` with two tiny layers, like Ollama's own
  ``testdata/models``.
- ``registry/``: an upstream tree for ``TestRegistry``: a different
  ``example.com/library/smol:latest`` (so a pull has something to fetch) and
  ``example.com/library/chunked:latest`` with one 200 KiB layer for chunked
  pulls (serve it with a small ``chunk_size``, e.g. 64 KiB -> 4 chunks).

Both trees are rebuilt from scratch by ``python testdata/make_testdata.py``;
the same code always writes the same bytes, and a test checks that the
committed files match.  Tests that push or pull must copy a tree to a
temporary directory first, never write into it.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from chunkpull.testing import build_model  # noqa: E402

# (tree, name, layer sizes, seed)
MODELS = [
    ("models", "example.com/library/smol:latest", [1024, 512], 0),
    ("registry", "example.com/library/smol:latest", [2048, 1024], 1),
    ("registry", "example.com/library/chunked:latest", [200 * 1024], 2),
]


def generate(out: Path = HERE) -> dict[str, str]:
    """Rebuild ``out/models`` and ``out/registry``; return name -> manifest digest."""
    out = Path(out)
    for tree in {tree for tree, *_ in MODELS}:
        shutil.rmtree(out / tree, ignore_errors=True)
    return {
        f"{tree}:{name}": build_model(out / tree, name, sizes, seed=seed)
        for tree, name, sizes, seed in MODELS
    }


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE
    for key, digest in generate(out).items():
        print(f"{digest}  {key}")


if __name__ == "__main__":
    main()
