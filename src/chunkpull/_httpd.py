"""The threaded HTTP/1.1 server plumbing of ``api`` and ``testregistry``.

This module owns ``ThreadedServer``, a ``ThreadingHTTPServer`` on daemon
threads that binds IPv4 or IPv6 without a reverse DNS lookup, keeps track
of its connections and closes every one of them in ``stop()``; ``Handler``,
the keep-alive request handler those connections run (the test registry's
handler derives from it); ``WSGIServer``, the WSGI gateway the local API
runs on, which streams a body of unknown length chunked, one chunk per
item, as the items are made; ``base_url``; and ``run_until_signalled``, the
SIGINT/SIGTERM wait of ``chunkpull serve`` and ``chunkpull registry serve``.
What a request means is the business of the handler or the application.
Standard library only: it must not import anything from chunkpull, so the
test registry can use it without depending on the client it tests.
"""

from __future__ import annotations

import http.server
import io
import logging
import select
import signal
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable
from urllib.parse import unquote_to_bytes

__all__ = ["Handler", "ThreadedServer", "WSGIServer", "base_url", "run_until_signalled"]

# The peer went away or stopped reading: routine, not an error of the app.
_PEER_GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)
# Unread request bodies up to this size are drained to keep the connection.
_DRAIN_MAX_BYTES = 1 << 20


def base_url(scheme: str, host: str, port: int) -> str:
    """Return ``scheme://host:port``, with an IPv6 host in brackets."""
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


class ThreadedServer(http.server.ThreadingHTTPServer):
    """Serve each connection from its own daemon thread; ``stop()`` closes them all.

    Binds ``address`` at once (an address with a colon is IPv6).  Routine
    connection failures (the peer hung up) go to ``log`` at DEBUG, anything
    else with its traceback.  ``connections`` maps each open connection's
    handler to ``[thread, busy]``; it is guarded by the server and meant for
    reading (tests check that ``stop()`` left none).

    Raises:
        OSError: the address cannot be bound.
    """

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: type[Handler], *, log: logging.Logger) -> None:
        self.log = log
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.connections: dict[Handler, list] = {}
        self.stopping = False
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._serving = False
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS lookup
        # that can take seconds (in a sandbox, say); the name is never used.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = port

    def handle_error(self, request, client_address) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            # Clients hanging up mid-answer are routine; tracebacks would
            # only drown the log.
            self.log.debug("connection from %s ended: %r", client_address, sys.exc_info()[1])
        else:
            self.log.exception("error on the connection from %s", client_address)

    def start(self, name: str, poll_s: float = 0.1) -> threading.Thread:
        """Run the accept loop on a daemon thread named name; return the thread."""
        self._serving = True
        self._thread = threading.Thread(target=self.serve_forever, args=(poll_s,), name=name, daemon=True)
        self._thread.start()
        return self._thread

    def serve_forever(self, poll_interval: float = 0.1) -> None:
        self._serving = True
        super().serve_forever(poll_interval)

    def stop(self, grace_s: float = 0.0, timeout_s: float = 5.0) -> None:
        """Stop accepting, close every connection and wait for the threads; idempotent.

        Idle connections are hung up at once; one busy with a request gets
        up to ``grace_s`` seconds to finish it.  The accept loop and the
        connection threads are waited for until ``timeout_s`` after
        accepting stopped.
        """
        with self._changed:
            if self.stopping:
                return
            self.stopping = True
        if self._serving:
            self.shutdown()  # returns once the accept loop has exited
        self.server_close()
        deadline = time.monotonic() + timeout_s
        with self._changed:
            for handler, (_, busy) in self.connections.items():
                if not busy:
                    handler.hang_up()
            self._changed.wait_for(lambda: not any(busy for _, busy in self.connections.values()), grace_s)
            left = list(self.connections.items())
        for handler, _ in left:
            handler.hang_up()
        for thread in [self._thread, *(thread for _, (thread, _) in left)]:
            if thread is not None and thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))

    def _track(self, handler: Handler) -> bool:
        with self._changed:
            if self.stopping:
                return False
            self.connections[handler] = [threading.current_thread(), False]
            return True

    def _untrack(self, handler: Handler) -> None:
        with self._changed:
            self.connections.pop(handler, None)
            self._changed.notify_all()

    def _set_busy(self, handler: Handler, busy: bool) -> bool:
        """Mark a connection busy with a request (or idle again); False when the server is stopping."""
        with self._changed:
            if handler in self.connections:
                self.connections[handler][1] = busy
            self._changed.notify_all()
            return not self.stopping


class Handler(http.server.BaseHTTPRequestHandler):
    """One keep-alive HTTP/1.1 connection of a ``ThreadedServer``.

    Subclasses answer requests with ``do_<METHOD>`` methods, as for any
    ``BaseHTTPRequestHandler``.  A connection opened while the server stops
    is dropped, and so is a request that arrives while it stops.
    """

    server: ThreadedServer
    protocol_version = "HTTP/1.1"
    sys_version = ""
    # Each write must leave at once, not wait for the previous segment's
    # ACK (Nagle): progress lines and short answers are latency-bound.
    disable_nagle_algorithm = True

    def setup(self) -> None:
        super().setup()
        if not self.server._track(self):
            raise ConnectionAbortedError("server is stopping")

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server._untrack(self)

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        if not self.server._set_busy(self, True):
            self.close_connection = True
            return False
        return True

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        finally:
            self.server._set_busy(self, False)

    def hang_up(self) -> None:
        """Shut the connection down under its thread, which then sees EOF or an error."""
        try:
            # socket.socket.shutdown even for TLS: SSLSocket.shutdown would
            # drop the TLS state under the feet of the handler's thread.
            socket.socket.shutdown(self.connection, socket.SHUT_RDWR)
        except OSError:
            pass

    def log_message(self, format: str, *args) -> None:
        self.server.log.debug("%s - %s", self.address_string(), format % args)


class WSGIServer(ThreadedServer):
    """Run the WSGI application app for every request, on keep-alive HTTP/1.1 connections.

    A response without a Content-Length (a progress stream) is sent chunked,
    one chunk per item the application yields, each written to the socket
    at once.  A request with a chunked body is answered 411 (clients of a
    JSON API send a Content-Length).  The environ carries
    ``chunkpull.peer_closed``, a callable that tells whether the client has
    closed its end, for applications that wait without writing.
    ``software`` is the ``Server`` header.
    """

    def __init__(self, address: tuple[str, int], app: Callable, *, log: logging.Logger, software: str) -> None:
        self.app = app
        self.software = software
        super().__init__(address, _WSGIHandler, log=log)


class _Body(io.RawIOBase):
    """The request body: never more than Content-Length bytes of the connection."""

    def __init__(self, rfile, length: int) -> None:
        self._rfile = rfile
        self.left = length

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = self._rfile.readinto(memoryview(b)[: min(len(b), self.left)]) if self.left > 0 else 0
        self.left -= n or 0
        return n or 0


class _WSGIHandler(Handler):
    server: WSGIServer
    # An idle keep-alive connection, or a client that stops reading a
    # stream, is dropped after this long.
    timeout = 120

    def version_string(self) -> str:
        return self.server.software

    def _run_app(self) -> None:
        length = (self.headers.get("Content-Length") or "0").strip()
        if "Transfer-Encoding" in self.headers:
            # Clients of a JSON API send a Content-Length: refuse chunks rather than parse them.
            self.send_error(411, explain="send the request body with a Content-Length")
            return
        if not length.isdigit():
            self.send_error(400, explain=f"invalid Content-Length {length!r}")
            return
        body = _Body(self.rfile, int(length))
        self._status: str | None = None
        self._headers: list[tuple[str, str]] = []
        self._headers_sent = self._chunked = False
        result = None
        try:
            result = self.server.app(self._environ(io.BufferedReader(body)), self._start_response)
            for data in result:
                if data:
                    self._write(data)
            if not self._headers_sent:
                self._send_headers(empty=True)
            elif self._chunked:
                self.wfile.write(b"0\r\n\r\n")
        except _PEER_GONE:
            self.close_connection = True
        except Exception:
            self.server.log.exception("%s %s failed", self.command, self.path)
            self.close_connection = True
            if not self._headers_sent:
                self.send_error(500)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    self.server.log.exception("closing the response to %s %s failed", self.command, self.path)
        # Body bytes the app did not read would be parsed as the next
        # request on this keep-alive connection.
        try:
            while 0 < body.left <= _DRAIN_MAX_BYTES and body.read(65536):
                pass
        except OSError:
            pass
        if body.left:
            self.close_connection = True

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _run_app

    def _start_response(self, status: str, headers: list[tuple[str, str]], exc_info=None) -> Callable[[bytes], None]:
        if exc_info is not None:
            try:
                if self._headers_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self._status is not None:
            raise AssertionError("start_response called twice without exc_info")
        self._status = status
        self._headers = list(headers)
        return self._write

    def _send_headers(self, *, empty: bool = False) -> None:
        if self._status is None:
            raise AssertionError("the application returned without calling start_response")
        code, _, reason = self._status.partition(" ")
        self.send_response(int(code), reason or None)
        for name, value in self._headers:
            self.send_header(name, value)
        if not any(name.lower() == "content-length" for name, _ in self._headers) and self.command != "HEAD" and code not in ("204", "304"):
            if empty:
                self.send_header("Content-Length", "0")
            elif self.request_version == "HTTP/1.1":
                # Unknown length (a progress stream): chunked, so the
                # connection stays open for the next request afterwards.
                self.send_header("Transfer-Encoding", "chunked")
                self._chunked = True
            else:
                self.close_connection = True
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self._headers_sent = True

    def _write(self, data: bytes) -> None:
        if not self._headers_sent:
            self._send_headers()
        if self.command != "HEAD" and data:
            # One send per item (wfile is unbuffered): the client sees each as it is made.
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if self._chunked else data)

    def _environ(self, body: io.BufferedReader) -> dict:
        """Return the PEP 3333 environ of the current request."""
        path, _, query = self.path.partition("?")
        if "://" in path:
            path = "/" + path.split("://", 1)[1].partition("/")[2]  # absolute-form target: keep the path
        environ = {
            "REQUEST_METHOD": self.command,
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),
            "QUERY_STRING": query,
            "SERVER_NAME": self.server.server_name,
            "SERVER_PORT": str(self.server.server_port),
            "SERVER_PROTOCOL": self.request_version,
            "REMOTE_ADDR": self.client_address[0],
            "REMOTE_PORT": str(self.client_address[1]),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": body,
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
            "chunkpull.peer_closed": self._peer_closed,
        }
        for name, value in self.headers.items():
            if "_" in name:
                continue  # "X_Foo" would read like "X-Foo": drop it, as common servers do
            key = name.upper().replace("-", "_")
            if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                key = "HTTP_" + key
            environ[key] = f"{environ[key]},{value}" if key in environ else value
        return environ

    def _peer_closed(self) -> bool:
        """Return whether the client has closed its end (EOF waiting on the socket)."""
        # poll, not select: select fails for descriptors >= FD_SETSIZE (1024),
        # which a busy long-running server reaches.
        try:
            poller = select.poll()
            poller.register(self.connection, select.POLLIN)
            if not poller.poll(0):
                return False
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except BlockingIOError:
            return False
        except (OSError, ValueError):  # reset, or the socket is closed already
            return True


def run_until_signalled(ready: Callable[[], object] | None = None, *, stopped: threading.Event | None = None) -> None:
    """Call ready(), then block until SIGINT, SIGTERM, Ctrl-C or ``stopped`` is set.

    The signal handlers are installed before ``ready()`` runs (so a caller
    that announces readiness there can be signalled at once), only when
    called from the main thread, and restored on return.
    """
    stop = threading.Event()
    previous: dict[int, object] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        if ready is not None:
            ready()
        # Short waits keep the main thread responsive to signals.
        while not stop.is_set() and not (stopped is not None and stopped.is_set()):
            stop.wait(0.25)
    except KeyboardInterrupt:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
