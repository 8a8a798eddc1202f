"""Write a package's bytecode before benchmarked processes import it (``bench.child.child_env``)."""

from __future__ import annotations

import compileall
import contextlib

_compiled: set[str] = set()


def compile_package(package: str) -> None:
    """Write the package's missing or stale bytecode once per process, as pip does when it installs.

    A source checkout run with PYTHONDONTWRITEBYTECODE would otherwise compile
    every module in every measured process: about 0.15 s of start-up (2 % of
    a 9 s WAN pull) that an installed chunkpull never pays.  Where the files
    cannot be written, the children compile as before.
    """
    if package in _compiled:
        return
    _compiled.add(package)
    with contextlib.suppress(OSError):
        compileall.compile_dir(package, quiet=2)
