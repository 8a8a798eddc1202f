"""``chunkpull registry serve|make``: the built-in registry's command line.

Imports the registry, its models and the size syntax (``core.units``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from .. import _httpd
from ..core.units import SIZE_HELP, parse_size
from .handler import STATS_PATH
from .models import build_model
from .registry import DEFAULT_CHUNK_SIZE, TestRegistry

__all__ = ["make_main", "make_model", "make_parser", "serve_main"]


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _sizes(text: str) -> list[int]:
    return [_size(part) for part in text.split(",") if part.strip()]


def _with_times(kind: Any) -> Any:
    def parse(text: str) -> tuple[Any, int]:
        value, _, times = text.partition(":")
        try:
            return kind(value), int(times) if times else 1
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid value {text!r} (want VALUE[:TIMES])") from None

    return parse


def _straggler(text: str) -> tuple[int, int]:
    every, sep, bps = text.partition(":")
    try:
        if not sep or int(every) < 1:
            raise ValueError
        return int(every), _size(bps)
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(f"invalid value {text!r} (want EVERY:BPS, e.g. 8:500K)") from None


def serve_main(argv: list[str] | None = None) -> int:
    """Serve a models directory until SIGINT or SIGTERM (``chunkpull registry serve``).

    Prints the URL on the first line of stdout, then serves; returns 0 after
    a clean stop.  Signal handlers are installed only when called from the
    main thread (and restored afterwards).
    """
    p = argparse.ArgumentParser(
        prog="chunkpull registry serve",
        description="Serve an Ollama-layout models directory as a registry (for tests and demos).",
        epilog=SIZE_HELP + ".",
    )
    p.add_argument("dir", help="models directory (blobs/, manifests/)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port to bind (default: any free one)")
    p.add_argument("--chunk-size", type=_size, default=DEFAULT_CHUNK_SIZE, help="chunksums chunk size (default 8M)")
    p.add_argument("--chunk-digest", choices=("sha256", "blake3"), default="sha256",
                   help="algorithm of the chunk digests in chunksums answers (default sha256)")
    p.add_argument("--certfile", help="serve TLS with this certificate (PEM)")
    p.add_argument("--keyfile", help="private key for --certfile (PEM)")
    p.add_argument("--corrupt-chunk", type=_with_times(int), action="append", default=[],
                   metavar="K[:TIMES]", help="serve chunk K corrupted TIMES times (repeatable)")
    p.add_argument("--cut-after", type=_with_times(int), metavar="N[:TIMES]",
                   help="close blob connections after N body bytes")
    p.add_argument("--stall", type=_with_times(float), metavar="S[:TIMES]",
                   help="stall blob bodies for S seconds")
    p.add_argument("--status", type=_with_times(int), action="append", default=[],
                   metavar="CODE[:TIMES]", help="answer blob GETs with CODE (repeatable)")
    p.add_argument("--ignore-range", action="store_true", help="answer ranged GETs with the whole blob")
    p.add_argument("--shift-content-range", type=_with_times(int), metavar="N[:TIMES]",
                   help="announce ranged answers in Content-Range as starting N bytes later than the bytes sent")
    p.add_argument("--throttle", type=_size, metavar="BPS", help="per-connection bytes per second")
    p.add_argument("--pace", type=_size, metavar="BPS",
                   help="cap every accepted connection at BPS bytes per second with SO_MAX_PACING_RATE (Linux TCP pacing)")
    p.add_argument("--straggler", type=_straggler, metavar="EVERY:BPS",
                   help="pace every EVERY-th connection (by accept order) at BPS instead")
    p.add_argument("--reset-after", type=_size, metavar="BYTES",
                   help="reset (RST) each connection once it has sent BYTES blob body bytes in all")
    p.add_argument("--stats-route", action="store_true",
                   help=f"answer GET {STATS_PATH} with the counters as JSON (?reset=1: and clear them)")
    p.add_argument("--no-chunksums", action="store_true", help="404 on the chunksums route")
    p.add_argument("-v", "--verbose", action="store_true", help="log every request to stderr")
    args = p.parse_args(argv)
    if args.verbose:
        logging.basicConfig(level=logging.DEBUG, format="%(message)s")

    registry = TestRegistry(
        args.dir,
        host=args.host,
        port=args.port,
        chunk_size=args.chunk_size,
        chunk_digest=args.chunk_digest,
        certfile=args.certfile,
        keyfile=args.keyfile,
        stats_route=args.stats_route,
    )
    f = registry.faults
    f.corrupt_chunk = dict(args.corrupt_chunk)
    if args.cut_after:
        f.cut_after, f.cut_times = args.cut_after
    if args.stall:
        f.stall_s, f.stall_times = args.stall
    f.status_times = dict(args.status)
    f.ignore_range = args.ignore_range
    if args.shift_content_range:
        f.content_range_shift, f.content_range_times = args.shift_content_range
    f.throttle_bps = args.throttle
    f.no_chunksums = args.no_chunksums
    f.pace_bps = args.pace
    if args.straggler:
        f.straggler_every, f.straggler_bps = args.straggler
    f.reset_after = args.reset_after

    try:
        _httpd.run_until_signalled(lambda: print(registry.start().url, flush=True))
    finally:
        registry.stop()
    return 0


def make_parser() -> argparse.ArgumentParser:
    """The options of ``chunkpull registry make`` (one definition: the CLI parses with it too)."""
    p = argparse.ArgumentParser(
        prog="chunkpull registry make",
        description="Write a model of pseudo-random layers into an Ollama-layout models directory, "
        "for 'chunkpull registry serve' to serve.",
        epilog=SIZE_HELP + ".",
    )
    p.add_argument("dir", help="models directory (created if missing)")
    p.add_argument("name", help="model name, e.g. smol or registry.local/library/smol:latest")
    p.add_argument("--size", type=_sizes, required=True, metavar="SIZE[,SIZE...]",
                   help="layer sizes, e.g. 512M or 1K,2KiB,3 (binary units: 1G = 2^30 bytes)")
    p.add_argument("--seed", type=int, default=0, help="seed of the layer bytes (default 0)")
    p.add_argument("--no-config", action="store_true", help="write no config blob")
    return p


def make_model(argv: list[str] | None = None) -> tuple[argparse.Namespace, str]:
    """Parse ``registry make``'s arguments and write the model; return them and the manifest digest (exits 2 on bad input)."""
    p = make_parser()
    args = p.parse_args(argv)
    try:
        digest = build_model(args.dir, args.name, args.size, seed=args.seed, config=not args.no_config)
    except ValueError as exc:
        p.error(str(exc))
    return args, digest


def make_main(argv: list[str] | None = None) -> int:
    """Write a model into a models directory (``chunkpull registry make``).

    Prints the manifest digest and returns 0.
    """
    _args, digest = make_model(argv)
    print(digest)
    return 0


if __name__ == "__main__":  # python -m chunkpull.testing.main DIR ...
    sys.exit(serve_main())
