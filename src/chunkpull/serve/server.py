"""The embedded HTTP/1.1 server that runs the local API: ``Server`` and ``serve``.

``Server`` runs any WSGI application on ``_httpd``'s threaded server (one
thread per keep-alive connection, progress streams sent chunked line by
line); ``serve`` runs ``Local(registry)`` until SIGINT or SIGTERM.

Imports ``_httpd``, ``serve.app`` and the registry (for types).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from .. import _httpd
from .._version import __version__
from ..registry import Registry
from .app import Local
from .guard import Guard, is_loopback_address

__all__ = ["Server", "serve"]

# Wire-level events of the embedded server (debug only); the per-request
# records come from Local's logger.
_wire_log = logging.getLogger("chunkpull.api.server")


class Server:
    """An embedded multi-threaded HTTP/1.1 server for a WSGI application (``_httpd.WSGIServer``).

    Binds ``host:port`` at once (``port=0`` picks a free port; see ``.url``),
    then serves from a daemon thread after ``start()`` (or in the calling
    thread with ``serve_forever()``): one thread per keep-alive connection,
    a progress stream sent chunked, line by line, as it is made.  Use it as
    a context manager, or call ``shutdown()``; ``stopped`` (an Event) is set
    once shutdown has begun.

    Raises:
        OSError: the address cannot be bound (e.g. the port is in use).
    """

    def __init__(self, app: Callable, host: str = "127.0.0.1", port: int = 0, *, grace_s: float = 5.0) -> None:
        self.app = app
        self.grace_s = grace_s
        self._httpd = _httpd.WSGIServer((host, port), app, log=_wire_log, software=f"chunkpull/{__version__}")
        self._started = False
        self.stopped = threading.Event()

    @property
    def host(self) -> str:
        return str(self._httpd.server_address[0])

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """The base URL, ``http://HOST:PORT``."""
        return _httpd.base_url("http", self.host, self.port)

    def start(self) -> Server:
        """Serve from a daemon thread; return self."""
        if self._started:
            raise RuntimeError("server already started")
        self._started = True
        self._httpd.start(f"chunkpull-serve:{self.port}")
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until another thread calls shutdown()."""
        self._httpd.serve_forever()

    def shutdown(self) -> None:
        """Cancel the app's pulls, stop accepting and close every connection; idempotent.

        Pulls in flight are cancelled through the app's ``close()`` (when it
        has one, as ``Local`` does): their streams end with an error line and
        their work files stay for the next pull.  Connections busy with a
        request get ``grace_s`` seconds to finish; idle ones close at once.
        """
        if self.stopped.is_set():
            return
        self.stopped.set()
        close = getattr(self.app, "close", None)
        if callable(close):
            close()
        self._httpd.stop(self.grace_s, timeout_s=self.grace_s)

    def __enter__(self) -> Server:
        if not self._started:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def serve(
    registry: Registry,
    host: str = "127.0.0.1",
    port: int = 11434,
    *,
    origins: list[str] | str | None = None,
    ready: Callable[[Server], None] | None = None,
) -> None:
    """Serve the local API for registry on host:port until SIGINT or SIGTERM.

    Runs ``Local(registry)`` on a ``Server``, with the Host check on when
    ``host`` is a loopback address and ``origins`` (else ``$OLLAMA_ORIGINS``)
    added to the default allowed origins.  Once the socket listens,
    ``ready(server)`` is called, if given, from the calling thread (the CLI
    prints ``server.url`` there; ``server.shutdown()`` from another thread
    stops serving too).  Signal handlers are installed only when called from
    the main thread, and restored on return.  Stopping cancels pulls in
    flight, keeping their work files, and closes every connection.  Logging
    goes to the ``chunkpull.api`` logger, whose handlers are the caller's
    business.  The registry is not closed.

    Raises:
        OSError: the address cannot be bound (e.g. the port is in use).
    """
    # Bound to loopback, only local Host names pass (DNS rebinding); bound to
    # another address the server is meant to be reached by other names.
    guard = Guard(check_host=is_loopback_address(host), origins=origins)
    server = Server(Local(registry, guard=guard), host, port)

    def started() -> None:
        server.start()
        if ready is not None:
            ready(server)

    try:
        _httpd.run_until_signalled(started, stopped=server.stopped)
    finally:
        server.shutdown()
