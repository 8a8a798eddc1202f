"""chunkpull._httpd: the server plumbing api and testregistry share (the rest is covered through them)."""

from __future__ import annotations

import fcntl
import resource
import socket
import types

import pytest

from chunkpull import _httpd


@pytest.mark.parametrize(
    "scheme, host, port, want",
    [("http", "127.0.0.1", 80, "http://127.0.0.1:80"), ("https", "::1", 5000, "https://[::1]:5000"), ("http", "localhost", 1, "http://localhost:1")],
    ids=["ipv4", "ipv6", "name"],
)
def test_base_url(scheme, host, port, want):
    got = _httpd.base_url(scheme, host, port)
    assert got == want, f"base_url({scheme!r}, {host!r}, {port}) = {got!r}, want {want!r}"


def _peer_closed(sock: socket.socket) -> bool:
    return _httpd._WSGIHandler._peer_closed(types.SimpleNamespace(connection=sock))


@pytest.fixture
def high_fd_limit():
    """Let this process open descriptors above FD_SETSIZE (1024), where select() fails."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is too low")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.parametrize("high", [False, True], ids=["low-fd", "fd-above-1024"])
def test_peer_closed(request, high):
    ours, theirs = socket.socketpair()
    if high:
        request.getfixturevalue("high_fd_limit")
        low = ours
        ours = socket.socket(fileno=fcntl.fcntl(low.fileno(), fcntl.F_DUPFD, 1100))
        low.close()
        assert ours.fileno() >= 1024
    try:
        assert not _peer_closed(ours), "an open, quiet peer is still there"
        theirs.sendall(b"GET")  # a pipelined request: still there, and nothing is consumed
        assert not _peer_closed(ours)
        assert ours.recv(3) == b"GET"
        theirs.close()
        assert _peer_closed(ours), "EOF: the peer has closed its end"
    finally:
        ours.close()
        theirs.close()
