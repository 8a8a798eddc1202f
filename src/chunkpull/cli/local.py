"""``chunkpull ls`` and ``chunkpull rm``: the models directory as a user sees it.

``ls`` prints each model under a name ``pull`` accepts as printed (its
scheme included when the registry was not https), its manifest digest,
size and age; ``ls --partials`` lists the work files interrupted pulls left
(``rm --partials`` removes the ones no pull is using).  Plain ``ls``
mentions such work files on stderr, so a table on stdout stays parseable.

Imports registry, store (work file records) and core (units).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence

from ..core.units import format_age, format_bytes, plural
from ..errors import ChunkpullError, ModelNotFoundError
from ..registry import Registry
from ..store.ingest import Partial

__all__ = ["cmd_ls", "cmd_rm"]


def _table(rows: Sequence[Sequence[str]]) -> None:
    """Print rows in columns three spaces apart (the last column is not padded)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("   ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "   " + row[-1])


def cmd_ls(registry: Registry, args: argparse.Namespace) -> int:
    """List local models (or, with ``--partials``, interrupted downloads); return the exit status."""
    now = time.time()
    partials = registry.cache.partials()
    if args.partials:
        return _ls_partials(partials, now)
    mtimes = {}
    for name, path in registry.cache.links():
        try:
            mtimes[name] = path.stat().st_mtime
        except OSError:
            continue
    rows = [("NAME", "DIGEST", "SIZE", "MODIFIED")]
    for name, manifest in registry.list_local():
        modified = format_age(now - mtimes[name]) if name in mtimes else "?"
        rows.append((registry.pullable_name(name), manifest.digest.short(), format_bytes(manifest.size), modified))
    _table(rows)
    waiting = [p for p in partials if not p.in_use]
    if waiting:
        size = format_bytes(sum(p.size for p in waiting))
        print(f"{plural(len(waiting), 'interrupted download')} ({size}) not shown: chunkpull ls --partials", file=sys.stderr, flush=True)
    return 0


def _ls_partials(partials: list[Partial], now: float) -> int:
    if not partials:
        print("no interrupted downloads")
        return 0
    rows = [("BLOB", "SIZE", "CHUNKS DONE", "MODIFIED", "STATE")]
    for p in partials:
        done = "?" if p.chunks_done is None else str(p.chunks_done)
        state = "a pull is using it" if p.in_use else "interrupted: the next pull of its model resumes it"
        rows.append((p.digest.short(), format_bytes(p.size), done, format_age(now - p.mtime), state))
    _table(rows)
    if any(not p.in_use for p in partials):
        print("remove the interrupted ones with: chunkpull rm --partials", file=sys.stderr, flush=True)
    return 0


def cmd_rm(registry: Registry, args: argparse.Namespace, print_error: Callable[[BaseException], None]) -> int:
    """Remove the named models (and, with ``--partials``, interrupted downloads); return the exit status."""
    status = 0
    if args.partials:
        sizes = {p.path: p.size for p in registry.cache.partials()}
        removed = registry.cache.prune_partials()
        freed = format_bytes(sum(sizes.get(p, 0) for p in removed))
        print(f"removed {plural(len(removed), 'interrupted download')} ({freed})", flush=True)
    # Like rm(1): a missing model is reported and the others still go.
    for name in args.names:
        try:
            if not registry.unlink(name):
                raise ModelNotFoundError(name, f'model "{name}" not found in {registry.cache.root} (see chunkpull ls)')
        except ChunkpullError as exc:
            print_error(exc)
            status = 1
            continue
        print(f"deleted {name}", flush=True)
    return status
