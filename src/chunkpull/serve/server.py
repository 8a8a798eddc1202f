"""The HTTP/1.1 server that runs the local API: ``Server`` (waitress) and ``serve``.

The port users expose runs on waitress, a maintained WSGI server, with
every resource bounded: at most ``connection_limit`` connections (beyond
that it stops accepting until one closes), idle connections closed after
``channel_timeout_s`` (after a second when nine tenths of the limit are in
use, so a flood of idle clients cannot lock new ones out), request headers and bodies capped, a fixed pool of
worker threads, and an accept loop that backs off for a moment when the
process is out of file descriptors instead of spinning on them.  A client
that disconnects is noticed (``waitress.client_disconnected``, offered to
the app as ``chunkpull.peer_closed``), so its pull is cancelled.

``serve`` runs ``Local(registry)`` until SIGINT or SIGTERM.  The built-in
test registry keeps the raw standard-library server (``_httpd``): it has to
misbehave byte by byte, which a real server would not let it do.

Imports waitress, ``_httpd`` (only for the signal wait), ``serve.app`` and
``serve.guard``.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Callable

from waitress import wasyncore
from waitress.adjustments import Adjustments
from waitress.server import TcpWSGIServer
from waitress.task import ThreadedTaskDispatcher

from .. import _httpd
from .._version import __version__
from ..registry import Registry
from .app import Local
from .guard import Guard, is_loopback_address

__all__ = ["Server", "serve"]

log = logging.getLogger("chunkpull.api.server")

# Bounds of the exposed port.  Each pull in flight holds one worker thread
# while it streams its progress; the rest answer /api/tags and the like.
DEFAULT_THREADS = 16
DEFAULT_CONNECTION_LIMIT = 256
DEFAULT_CHANNEL_TIMEOUT_S = 30
MAX_REQUEST_HEADER_BYTES = 64 << 10
MAX_REQUEST_BODY_BYTES = 1 << 20  # API bodies are a few dozen bytes of JSON
# Out of file descriptors: stop accepting for this long, then try again.
ACCEPT_BACKOFF_S = 0.5
# With this share of the connection limit in use, connections idle for
# IDLE_UNDER_PRESSURE_S are closed (checked every CLEANUP_INTERVAL_S).
PRESSURE = 0.9
IDLE_UNDER_PRESSURE_S = 1.0
CLEANUP_INTERVAL_S = 1
_LOOP_TICK_S = 0.2


class _BoundedServer(TcpWSGIServer):
    """waitress's TCP server, but an accept that fails for lack of descriptors pauses accepting."""

    paused_until = 0.0

    def readable(self) -> bool:
        if time.monotonic() < self.paused_until:
            return False  # the listening socket stays readable: do not spin on it
        return super().readable()

    def maintenance(self, now: float) -> None:
        # Near the connection limit, idle connections lose their grace: a
        # flood of idle clients must not keep new ones waiting the full
        # channel timeout (slowloris).
        if len(self.active_channels) >= PRESSURE * self.adj.connection_limit:
            for channel in list(self.active_channels.values()):
                if not channel.requests and channel.last_activity < now - IDLE_UNDER_PRESSURE_S:
                    channel.will_close = True
        super().maintenance(now)

    def handle_accept(self) -> None:
        try:
            pair = self.accept()
        except OSError as err:
            if err.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                self.paused_until = time.monotonic() + ACCEPT_BACKOFF_S
                log.warning("cannot accept a connection (%s); accepting again in %g s", err.strerror, ACCEPT_BACKOFF_S)
            else:
                log.debug("accept failed: %s", err)
            return
        if pair is None:
            return
        conn, addr = pair
        try:
            self.set_socket_options(conn)
        except OSError:
            conn.close()  # the client left before we got to it
            return
        self.channel_class(self, conn, self.fix_addr(addr), self.adj, map=self._socket_map)


class Server:
    """Serve a WSGI application on waitress, bounded (see the module docstring).

    Binds ``host:port`` at once (``port=0`` picks a free port; see ``.url``),
    then serves from a daemon thread after ``start()`` (or in the calling
    thread with ``serve_forever()``).  Use it as a context manager, or call
    ``shutdown()``; ``stopped`` (an Event) is set once shutdown has begun.

    Raises:
        OSError: the address cannot be bound (e.g. the port is in use).
    """

    def __init__(
        self,
        app: Callable,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        grace_s: float = 5.0,
        threads: int = DEFAULT_THREADS,
        connection_limit: int = DEFAULT_CONNECTION_LIMIT,
        channel_timeout_s: int = DEFAULT_CHANNEL_TIMEOUT_S,
    ) -> None:
        self.app = app
        self.grace_s = grace_s
        self.stopped = threading.Event()
        self._started = False
        self._done = threading.Event()
        self._map: dict = {}
        adj = Adjustments(
            host=host,
            port=port,
            threads=threads,
            connection_limit=connection_limit,
            channel_timeout=channel_timeout_s,
            cleanup_interval=CLEANUP_INTERVAL_S,
            max_request_header_size=MAX_REQUEST_HEADER_BYTES,
            max_request_body_size=MAX_REQUEST_BODY_BYTES,
            # Keep reading while a request runs, so a client that leaves is noticed.
            channel_request_lookahead=1,
            ident=f"chunkpull/{__version__}",
            expose_tracebacks=False,
            clear_untrusted_proxy_headers=True,
            asyncore_use_poll=True,
        )
        dispatcher = ThreadedTaskDispatcher()
        dispatcher.set_thread_count(threads)
        self._dispatcher = dispatcher
        server = _BoundedServer(self._wsgi, self._map, dispatcher=dispatcher, adj=adj, sockinfo=adj.listen[0])
        server._socket_map = self._map
        self._server = server

    def _wsgi(self, environ: dict, start_response: Callable):
        disconnected = environ.get("waitress.client_disconnected")
        if disconnected is not None:
            environ["chunkpull.peer_closed"] = disconnected
        return self.app(environ, start_response)

    @property
    def host(self) -> str:
        return str(self._server.effective_host)

    @property
    def port(self) -> int:
        return int(self._server.effective_port)

    @property
    def url(self) -> str:
        """The base URL, ``http://HOST:PORT``."""
        return _httpd.base_url("http", self.host, self.port)

    def start(self) -> Server:
        """Serve from a daemon thread; return self."""
        if self._started:
            raise RuntimeError("server already started")
        self._started = True
        threading.Thread(target=self.serve_forever, name=f"chunkpull-serve:{self.port}", daemon=True).start()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until another thread calls shutdown()."""
        self._started = True
        try:
            while not self.stopped.is_set():
                wasyncore.loop(timeout=_LOOP_TICK_S, map=self._map, use_poll=True, count=1)
            # Connections busy with a request get grace_s to finish.
            self._server.accepting = False
            deadline = time.monotonic() + self.grace_s
            while self._dispatcher.active_count and time.monotonic() < deadline:
                wasyncore.loop(timeout=_LOOP_TICK_S, map=self._map, use_poll=True, count=1)
        finally:
            self._dispatcher.shutdown(cancel_pending=True, timeout=self.grace_s)
            wasyncore.close_all(self._map, ignore_all=True)
            self._done.set()

    def shutdown(self) -> None:
        """Cancel the app's pulls, stop accepting and close every connection; idempotent.

        Pulls in flight are cancelled through the app's ``close()`` (when it
        has one, as ``Local`` does): their streams end with an error line and
        their work files stay for the next pull.
        """
        if self.stopped.is_set():
            return
        self.stopped.set()
        close = getattr(self.app, "close", None)
        if callable(close):
            close()
        if self._started:
            self._done.wait(self.grace_s * 2 + 5)
        else:
            wasyncore.close_all(self._map, ignore_all=True)

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
