"""The ``chunkpull`` command line: the argument tree, the commands, and how errors end them.

Subcommands::

    chunkpull pull NAME... [--models DIR] [--streams N] [--verify blob|chunks] [--quiet]
    chunkpull ls   [--partials] [--models DIR]
    chunkpull rm   [--partials] NAME... [--models DIR]
    chunkpull serve [--host H] [--port P] [--models DIR] [--streams N]
    chunkpull registry serve|make ...      (the built-in test registry, chunkpull.testing)
    chunkpull bench [NAME] [--compare] ...  (the benchmark harness, chunkpull.bench)
    chunkpull --version

This module owns the argument tree and the small commands; ``pull`` is in
``cli.pull``, ``ls``/``rm`` in ``cli.local``, ``registry make`` in
``cli.tools``.  Pulling and caching live in ``registry`` and ``store``, the
progress display in ``display``, the local API in ``serve``.  An unknown
option gets the usage of the command it was given to.

Exit status: 0 on success, 1 on an error (one line on stderr,
``chunkpull: error: <message>``, no traceback), 2 on a usage error, 130 when
interrupted with Ctrl-C.

Imports registry, store, display, core and the backend choice; ``serve``,
``testing`` and ``bench`` only inside the commands that need them, so
``chunkpull pull`` never loads the test registry or the bench harness.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from .._env import MAX_MAX_STREAMS
from .._hashio import BACKEND
from .._version import __version__
from ..core.index import Platform
from ..core.units import format_bytes, parse_size, plural
from ..errors import ChunkpullError
from ..registry import VERIFY_MODES, Registry
from ..store.cache import DiskCache
from .local import cmd_ls, cmd_rm
from .pull import cmd_pull, read_names
from .tools import cmd_registry

__all__ = ["main"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
EXIT_TERMINATED = 143  # 128 + SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that it stops a pull exactly as Ctrl-C does."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


def _stopped(exc: KeyboardInterrupt, what: str) -> int:
    """Say how the command was stopped (one line) and return its exit status."""
    if isinstance(exc, Terminated):
        print(f"chunkpull: terminated{what}", file=sys.stderr, flush=True)
        return EXIT_TERMINATED
    print(f"chunkpull: interrupted{what}", file=sys.stderr, flush=True)
    return EXIT_INTERRUPTED


def _one_line(err: BaseException) -> str:
    # A registry's error body can span lines; the contract is one line.
    text = " ".join(str(err).split())
    return text or type(err).__name__


# --------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------


def _open_registry(args: argparse.Namespace, *, create: bool = True) -> Registry:
    return Registry(
        DiskCache.open(args.models, create=create),
        max_streams=getattr(args, "streams", None),
        verify=getattr(args, "verify", None),
        platform=getattr(args, "platform", None),
        ca_cert=getattr(args, "ca_cert", None),
        mirrors=getattr(args, "mirror", None),
        limit_rate=getattr(args, "limit_rate", None),
    )


def _cmd_pull(args: argparse.Namespace) -> int:
    names = read_names(args)
    registry = _open_registry(args)
    try:
        failed, _pulled = cmd_pull(registry, args, names)
    except KeyboardInterrupt as exc:
        return _stopped(exc, "; the next pull resumes")
    finally:
        registry.close()
    return EXIT_ERROR if failed else EXIT_OK


def _cmd_ls(args: argparse.Namespace) -> int:
    registry = _open_registry(args, create=False)
    try:
        return cmd_ls(registry, args)
    finally:
        registry.close()


def _cmd_rm(args: argparse.Namespace) -> int:
    if not args.names and not args.partials:
        args.parser.error("name a model to remove, or give --partials")  # the subcommand's usage, exit 2
    registry = _open_registry(args, create=False)
    try:
        return cmd_rm(registry, args, _print_error)
    finally:
        registry.close()


def _cmd_export(args: argparse.Namespace) -> int:
    from ..store.archive import write_archive

    registry = _open_registry(args, create=False)
    try:
        models = [(registry.local_name(n), registry.resolve_local(n)) for n in args.names]  # all found before writing
        if args.output == "-":
            count, total = write_archive(registry.cache, models, sys.stdout.buffer)
        else:
            tmp = f"{args.output}.partial"
            with open(tmp, "wb") as out:
                count, total = write_archive(registry.cache, models, out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, args.output)  # a half-written archive never has the final name
        print(f"exported {plural(len(models), 'model')}, {plural(count, 'blob')} ({format_bytes(total)}) to {args.output}",
              file=sys.stderr if args.output == "-" else sys.stdout, flush=True)
        return EXIT_OK
    finally:
        registry.close()


def _cmd_import(args: argparse.Namespace) -> int:
    from ..store.archive import read_archive

    registry = _open_registry(args)
    try:
        if args.archive == "-":
            models = read_archive(registry.cache, sys.stdin.buffer)
        else:
            with open(args.archive, "rb") as src:
                models = read_archive(registry.cache, src)
        for name, m in models:
            print(f"imported {name.display_shortest(registry.mask)} ({format_bytes(m.size)}, every blob verified)", flush=True)
        if not models:
            print("the archive holds no model", flush=True)
        return EXIT_OK
    finally:
        registry.close()


def _cmd_login(args: argparse.Namespace) -> int:
    from ..auth import save_docker_login

    if args.password_stdin:
        secret = sys.stdin.readline().rstrip("\r\n")
    else:
        import getpass

        secret = getpass.getpass(f"password for {args.username}@{args.host}: ")
    if not secret:
        raise ChunkpullError("no password given")
    path = save_docker_login(args.host, args.username, secret)
    print(f"saved credentials for {args.host} in {path}", flush=True)
    return EXIT_OK


def _cmd_serve(args: argparse.Namespace) -> int:
    # Imported here: the API server is only needed by this command.
    from ..serve import server

    # api logs each request to the "chunkpull.api" logger and leaves the
    # handlers to its caller; show them on stderr, and only chunkpull's.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger("chunkpull")
    logger.addHandler(handler)
    previous_level = logger.level
    logger.setLevel(logging.INFO)
    registry = _open_registry(args)
    try:
        server.serve(registry, args.host, args.port, origins=args.origins, ready=lambda server: print(f"chunkpull: serving on {server.url}", file=sys.stderr, flush=True))
    finally:
        registry.close()
        logger.removeHandler(handler)
        logger.setLevel(previous_level)
    return EXIT_OK


def _cmd_bench(args: argparse.Namespace) -> int:
    from ..bench import harness  # heavy and rarely used: only when asked for

    return harness.bench_main(args.rest)


def _cmd_registry(args: argparse.Namespace) -> int:
    return cmd_registry(args.action, args.rest)


# --------------------------------------------------------------------------
# Parser and entry point
# --------------------------------------------------------------------------


def _streams(text: str) -> int:
    if text.strip().lower() == "auto":
        return 0  # adaptive (engine.adaptive.ADAPTIVE)
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_MAX_STREAMS:
        raise argparse.ArgumentTypeError(f"want auto or a whole number from 1 to {MAX_MAX_STREAMS}, not {text!r}")
    return n


def _rate(text: str) -> int:
    try:
        n = parse_size(text.removesuffix("/s"))
    except ValueError:
        n = 0
    if n <= 0:
        raise argparse.ArgumentTypeError(f"want a rate such as 500K, 20M or 1G (bytes per second), not {text!r}")
    return n


def _platform(text: str) -> Platform:
    try:
        return Platform.parse(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _port(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if not 0 <= n <= 65535:
        raise argparse.ArgumentTypeError(f"want a port number from 0 to 65535, not {text!r}")
    return n


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="chunkpull",
        description="Pull model blobs from Ollama-style registries into an Ollama models directory, fast and verified.",
    )
    p.add_argument("--version", action="version", version=f"chunkpull {__version__} (backend: {BACKEND})")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    models_help = "models directory (default: $OLLAMA_MODELS, else ~/.ollama/models)"
    streams_help = ("concurrent connections per pull: auto (the default, unless $CHUNKPULL_MAX_STREAMS or "
                    "$OLLAMA_REGISTRY_MAXSTREAMS pins a count) adapts, starting at 8 and growing while throughput rises, 2 to 64; N pins it")

    pull = sub.add_parser("pull", help="pull models into the models directory", description="Pull models into the models directory.")
    pull.add_argument("names", nargs="*", metavar="NAME", help="model name(s), e.g. llama3.2 or http://127.0.0.1:5000/library/smol:latest")
    pull.add_argument("--from-file", metavar="FILE", help="also pull the names in FILE, one per line (- for stdin; # starts a comment)")
    pull.add_argument("--mirror", action="append", metavar="URL",
                      help="a mirror serving the same repositories (repeatable; also $CHUNKPULL_MIRRORS and hosts.toml): "
                           "chunk bytes may come from it, verified against the origin's digests")
    pull.add_argument("--limit-rate", type=_rate, metavar="RATE", help="cap the whole pull at RATE bytes/s, curl's syntax (20M = 20 MiB/s)")
    pull.add_argument("--json", action="store_true", help="one JSON event per line on stdout (start, progress, sources, done/error, summary)")
    pull.add_argument("--models", metavar="DIR", help=models_help)
    pull.add_argument("--streams", type=_streams, metavar="N", help=streams_help)
    pull.add_argument("--verify", choices=VERIFY_MODES, help="blob: one whole-blob SHA-256 pass (default); chunks: also check every chunk as it arrives")
    pull.add_argument("--platform", type=_platform, metavar="OS/ARCH[/VARIANT]",
                      help="the entry of a multi-platform image index to pull (default: this machine's, e.g. linux/amd64)")
    pull.add_argument("--ca-cert", metavar="FILE", help="CA certificates (PEM) to verify the registry with (default: $SSL_CERT_FILE, "
                      "$SSL_CERT_DIR, else the system's trust store)")
    pull.add_argument("-q", "--quiet", action="store_true", help="no progress display; only the summary line")
    pull.set_defaults(run=_cmd_pull, parser=pull)

    ls = sub.add_parser("ls", help="list local models", description="List the models in the models directory, under names pull accepts as printed.")
    ls.add_argument("--partials", action="store_true", help="list the downloads interrupted pulls left (rm --partials removes them)")
    ls.add_argument("--models", metavar="DIR", help=models_help)
    ls.set_defaults(run=_cmd_ls, parser=ls)

    rm = sub.add_parser("rm", help="remove local models", description="Remove models and the blobs no other model uses.")
    rm.add_argument("names", nargs="*", metavar="NAME", help="model name as pulled or as ls shows it")
    rm.add_argument("--partials", action="store_true", help="also remove interrupted downloads no pull is resuming now")
    rm.add_argument("--models", metavar="DIR", help=models_help)
    rm.set_defaults(run=_cmd_rm, parser=rm)

    export = sub.add_parser("export", help="write models to a tar archive (for air-gapped sites)",
                            description="Write local models (manifests and exactly their blobs, in Ollama's layout) to a tar archive.")
    export.add_argument("names", nargs="+", metavar="NAME", help="model name as pulled or as ls shows it")
    export.add_argument("-o", "--output", required=True, metavar="FILE", help="archive to write (- for stdout)")
    export.add_argument("--models", metavar="DIR", help=models_help)
    export.set_defaults(run=_cmd_export, parser=export)

    imp = sub.add_parser("import", help="read models from a tar archive, verifying every blob",
                         description="Import models from an archive made by chunkpull export: every blob is verified against its digest "
                                     "before it is committed, and a manifest is linked only once every blob it names is in.")
    imp.add_argument("archive", metavar="FILE", help="archive to read (- for stdin)")
    imp.add_argument("--models", metavar="DIR", help=models_help)
    imp.set_defaults(run=_cmd_import, parser=imp)

    login = sub.add_parser("login", help="save credentials for a registry (Docker's config.json)",
                           description="Save credentials for a registry host in $DOCKER_CONFIG/config.json (default ~/.docker/config.json), "
                           "as docker login does; pulls from that host then use them.")
    login.add_argument("host", metavar="HOST[:PORT]", help="the registry host, e.g. ghcr.io or 127.0.0.1:5000")
    login.add_argument("-u", "--username", required=True)
    login.add_argument("--password-stdin", action="store_true", help="read the password (or token) from standard input")
    login.set_defaults(run=_cmd_login, parser=login)

    serve = sub.add_parser("serve", help="serve the Ollama-compatible local API", description="Serve the Ollama-compatible local API (/api/pull, /api/delete, ...).")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=11434, help="port to bind (default 11434)")
    serve.add_argument("--models", metavar="DIR", help=models_help)
    serve.add_argument("--streams", type=_streams, metavar="N", help=streams_help)
    serve.add_argument("--origins", metavar="ORIGIN[,ORIGIN...]",
                       help="browser origins allowed besides localhost's and $OLLAMA_ORIGINS ('*' matches anything), "
                       "e.g. https://app.example.com")
    serve.set_defaults(run=_cmd_serve, parser=serve)

    reg = sub.add_parser(
        "registry",
        help="run the built-in registry (tests and demos)",
        description="The built-in registry: 'serve DIR ...' serves a models directory, 'make DIR NAME --size ...' writes a model. "
        "Run 'chunkpull registry serve --help' for the options.",
    )
    reg.add_argument("action", choices=("serve", "make"))
    reg.add_argument("rest", nargs=argparse.REMAINDER, metavar="ARGS", help="passed on unchanged")
    reg.set_defaults(run=_cmd_registry, parser=reg)

    bench = sub.add_parser(
        "bench",
        add_help=False,
        help="benchmark pulls (an embedded 1 GiB model by default, or a registry name)",
        description="Benchmark pulls; run 'chunkpull bench --help' for the options.",
    )
    bench.add_argument("rest", nargs=argparse.REMAINDER, metavar="ARGS", help="passed on to the benchmark harness")
    bench.set_defaults(run=_cmd_bench, parser=bench)
    return p


def _print_error(err: BaseException) -> None:
    print(f"chunkpull: error: {_one_line(err)}", file=sys.stderr, flush=True)


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return EXIT_OK
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)  # sys.exit("message") convention
    return EXIT_ERROR


def main(argv: list[str] | None = None) -> int:
    """Run the command line with argv (default ``sys.argv[1:]``); return the exit status.

    Never raises for an expected failure: errors become one line on stderr
    and status 1, usage errors status 2, Ctrl-C status 130, SIGTERM 143.  Unexpected
    exceptions (bugs) keep their traceback.
    """
    parser = _parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    # SIGTERM stops a pull as Ctrl-C does (final resume record, exit 143);
    # serve and registry serve install their own handlers while they run.
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if threading.current_thread() is threading.main_thread() else None
    try:
        return _run(parser, argv)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run(parser: argparse.ArgumentParser, argv: list[str]) -> int:
    try:
        # bench owns its whole option set (its --help included): hand it over.
        if argv[:1] == ["bench"]:
            args, extra = argparse.Namespace(command="bench", rest=argv[1:], run=_cmd_bench), []
        else:
            args, extra = parser.parse_known_args(argv)
        if extra:
            # An option the command does not know: that command's usage, not the top level's.
            getattr(args, "parser", parser).error(f"unrecognized arguments: {' '.join(extra)}")
        if args.command is None:
            parser.print_usage(sys.stderr)
            print("chunkpull: error: a command is required", file=sys.stderr)
            return EXIT_USAGE
        if args.command == "pull" and not args.names and not args.from_file:
            args.parser.error("give at least one NAME, or --from-file FILE")  # the subcommand's usage, exit 2
        return args.run(args)
    except SystemExit as exc:  # argparse (ours, or testregistry's) exits; main returns instead
        return _exit_code(exc)
    except KeyboardInterrupt as exc:
        return _stopped(exc, "")
    except (ChunkpullError, OSError, ValueError) as err:
        _print_error(err)
        return EXIT_ERROR
