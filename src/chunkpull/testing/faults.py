"""Fault switches and counters of the built-in registry: what it should get wrong, and what it did.

``Faults`` is read by the request handler for every blob body it sends
(``plan()`` decides, and consumes, the faults of one body); ``Stats``
counts requests, bytes and ranges.  Both are thread-safe.

Standard library only.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
from typing import Any

__all__ = ["Faults", "Plan", "Stats"]


@dataclasses.dataclass
class Faults:
    """Switches that make the server misbehave; tests change them at runtime.

    Plain attribute assignment is fine for a single switch; use ``set(**kw)``
    to change several at once atomically.  Counters named ``*_times`` (and
    the values of ``corrupt_chunk`` and ``status_times``) are decremented by
    the server each time the fault fires, so a test can check it was used.
    Only GET requests for blobs (``/v2/<ns>/<model>/blobs/<digest>``) are
    affected unless stated otherwise; when ``only_digest`` is set, only GETs of
    that blob are.

    - ``corrupt_chunk``: chunk index -> how many more times to corrupt it.
      Chunk k is bytes ``[k*chunk_size, (k+1)*chunk_size)`` of the blob; a
      response overlapping it gets the first overlapping byte inverted.
    - ``cut_after`` / ``cut_times``: close the connection after sending
      ``cut_after`` body bytes, for the next ``cut_times`` responses whose
      body is longer than that (shorter ones are sent whole and not counted).
    - ``stall_s`` / ``stall_times`` / ``stall_after``: for the next
      ``stall_times`` non-empty responses, send the headers and
      ``min(stall_after, length // 2)`` bytes, then nothing for ``stall_s``
      seconds (aborted when the server stops), then the rest.
    - ``status_times``: status -> how many of the next GETs answer with it,
      body ``{"errors":[{"code":"UNAVAILABLE","message":"try again"}]}``
      (429 also carries ``Retry-After: 0``).
    - ``ignore_range``: answer 200 with the whole blob even when asked for a
      range.
    - ``throttle_bps``: limit each blob body to this many bytes per second.
    - ``no_chunksums``: answer 404 on the chunksums route (any digest).
    - ``chunksums_override``: blob digest text -> exact chunksums body.
    - ``routes``: exact request path (without or with its query) ->
      ``(status, body)``, answered before anything else, any method.  Any
      status from 100 to 999 can be sent.
    - ``content_location``: replaces the chunksums ``Content-Location``.
    - ``only_digest``: limit the blob faults above to this blob digest.
    - ``redirect_blobs``: base URL; blob GETs and HEADs answer 307 with
      ``Location: <redirect_blobs><path>`` (a CDN redirect).
    - ``manifest_digest_header``: sent as manifests' ``Docker-Content-Digest``
      instead of their real digest.
    - ``manifest_location``: manifest GETs answer 307 with this
      ``Location`` (``{path}`` stands for the request's own path: a loop).
    - ``drip_chunk``: chunk index -> bytes per second: every blob body
      overlapping that chunk is sent at that rate (a registry that drips
      one chunk, on every connection).
    - ``drip_times``: with ``drip_chunk``, only the next ``drip_times``
      bodies overlapping a dripping chunk drip (None: every one): one slow
      path to the chunk, where a second request gets it at full speed.
    - ``drip_control_bps``: manifest and chunksums bodies are sent at this
      many bytes per second.
    - ``gzip_times``: the next ``gzip_times`` blob bodies are gzip-encoded
      (``Content-Encoding: gzip``) although the client asked for identity.
    - ``content_range_shift`` / ``content_range_times``: the next
      ``content_range_times`` ranged answers send the bytes asked for but
      announce them in ``Content-Range`` as starting ``content_range_shift``
      bytes later (a proxy or cache that mixed up its offsets).

    Switches of the link rather than of the answers, for WAN benchmarks.
    They go by the connection's serial number: 1, 2, 3, ... in accept
    order, counted by ``Stats.connections`` (so ``Stats.reset()`` starts
    them again at 1), and apply to every connection, ``only_digest`` or not:

    - ``pace_bps``: each accepted socket gets ``SO_MAX_PACING_RATE`` (Linux)
      of this many bytes per second: the kernel's TCP pacing caps the
      connection, the body is still sent with ``sendfile``.
    - ``straggler_every`` / ``straggler_bps``: every ``straggler_every``-th
      connection (serial 8, 16, ... for 8) is paced at ``straggler_bps``
      instead.
    - ``reset_after``: a connection that has sent this many blob body bytes
      in all (over its keep-alive requests) is reset at once: closed with
      ``SO_LINGER`` 0, an RST, and what was still queued for it is lost
      (and taken off ``Stats.blob_bytes_sent``).
    """

    corrupt_chunk: dict[int, int] = dataclasses.field(default_factory=dict)
    cut_after: int | None = None
    cut_times: int = 1
    stall_s: float = 0.0
    stall_times: int = 1
    stall_after: int = 64 * 1024
    status_times: dict[int, int] = dataclasses.field(default_factory=dict)
    ignore_range: bool = False
    throttle_bps: int | None = None
    no_chunksums: bool = False
    chunksums_override: dict[str, str] = dataclasses.field(default_factory=dict)
    routes: dict[str, tuple[int, bytes]] = dataclasses.field(default_factory=dict)
    content_location: str | None = None
    only_digest: str | None = None
    redirect_blobs: str | None = None
    content_range_shift: int = 0
    content_range_times: int = 0
    manifest_location: str | None = None
    manifest_digest_header: str | None = None
    drip_chunk: dict[int, int] = dataclasses.field(default_factory=dict)
    drip_times: int | None = None
    drip_control_bps: int | None = None
    gzip_times: int = 0
    pace_bps: int | None = None
    straggler_every: int = 0
    straggler_bps: int | None = None
    reset_after: int | None = None
    lock: threading.RLock = dataclasses.field(
        default_factory=threading.RLock, repr=False, compare=False
    )

    def set(self, **changes: Any) -> None:
        """Change several switches at once, under the lock.

        Raises:
            AttributeError: a name is not a switch.
        """
        names = {f.name for f in dataclasses.fields(self)} - {"lock"}
        with self.lock:
            for key, value in changes.items():
                if key not in names:
                    raise AttributeError(f"Faults has no switch {key!r}")
                setattr(self, key, value)

    def reset(self) -> None:
        """Turn every fault off."""
        fresh = Faults()
        with self.lock:
            for f in dataclasses.fields(self):
                if f.name != "lock":
                    setattr(self, f.name, getattr(fresh, f.name))

    # The methods below are the server's side: each takes (consumes) faults
    # under the lock so that two connections never fire one fault twice.

    def _applies(self, digest: str) -> bool:
        return self.only_digest is None or self.only_digest == digest

    def _take_content_range_shift(self, digest: str) -> int:
        with self.lock:
            if not self.content_range_shift or self.content_range_times <= 0 or not self._applies(digest):
                return 0
            self.content_range_times -= 1
            return self.content_range_shift

    def _take_status(self, digest: str) -> int | None:
        with self.lock:
            if not self._applies(digest):
                return None
            for status, times in self.status_times.items():
                if times > 0:
                    self.status_times[status] = times - 1
                    return status
            return None

    def _pacing(self, serial: int) -> int | None:
        """Return the pacing rate (bytes per second) of connection number serial, or None."""
        with self.lock:
            if self.straggler_every > 0 and self.straggler_bps and serial % self.straggler_every == 0:
                return int(self.straggler_bps)
            return int(self.pace_bps) if self.pace_bps else None

    def _reset_at(self, conn_sent: int, length: int) -> int | None:
        """Return where in a body of length bytes to reset a connection that has sent conn_sent body bytes, or None."""
        with self.lock:
            if self.reset_after is None or conn_sent + length < self.reset_after:
                return None
            return max(0, self.reset_after - conn_sent)

    def plan(self, digest: str, start: int, end: int, size: int, chunk_size: int) -> Plan:
        """Decide (and consume) the faults for one body of bytes [start, end]."""
        plan = Plan()
        length = end - start + 1
        with self.lock:
            if not self._applies(digest) or length <= 0:
                return plan
            if self.cut_after is not None and self.cut_times > 0 and self.cut_after < length:
                self.cut_times -= 1
                plan.cut_at = max(0, self.cut_after)
            if self.stall_s > 0 and self.stall_times > 0:
                self.stall_times -= 1
                plan.stall_at = max(0, min(self.stall_after, length // 2))
                plan.stall_s = self.stall_s
            for index, times in self.corrupt_chunk.items():
                if times <= 0:
                    continue
                lo = max(start, index * chunk_size)
                hi = min(end, (index + 1) * chunk_size - 1, size - 1)
                if lo <= hi:
                    self.corrupt_chunk[index] = times - 1
                    plan.flips.append(lo - start)
            plan.flips.sort()
            if self.throttle_bps:
                plan.throttle_bps = max(1, int(self.throttle_bps))
            drips = [int(bps) for index, bps in self.drip_chunk.items() if index * chunk_size <= end and start < (index + 1) * chunk_size]
            if drips and (self.drip_times is None or self.drip_times > 0):
                if self.drip_times is not None:
                    self.drip_times -= 1
                plan.throttle_bps = max(1, min([plan.throttle_bps or drips[0], *drips]))
            if self.gzip_times > 0:
                self.gzip_times -= 1
                plan.gzip = True
        return plan


@dataclasses.dataclass
class Plan:
    """The faults one blob body is sent with; offsets are relative to the body."""

    cut_at: int | None = None
    stall_at: int | None = None
    stall_s: float = 0.0
    flips: list[int] = dataclasses.field(default_factory=list)
    throttle_bps: int | None = None
    gzip: bool = False
    # Reset the connection after this many body bytes (set by the handler,
    # which knows the connection's bytes; sendfile still serves the rest).
    reset_at: int | None = None

    def is_clean(self) -> bool:
        return (
            self.cut_at is None
            and self.stall_at is None
            and not self.flips
            and self.throttle_bps is None
            and not self.gzip
        )


@dataclasses.dataclass
class Stats:
    """Counters of what the server did; thread-safe, ``reset()`` clears them.

    - ``requests``: Counter by route kind, ``"manifest"``, ``"blob"``,
      ``"chunksums"``, ``"upload"`` (every push request, manifest PUTs
      included) and ``"other"``; counted as a request arrives.
    - ``blob_bytes_sent``: body bytes of blob GETs.  A response's bytes are
      counted as it starts (so a client that has read a body always sees them
      counted); bytes a failed send never delivered are taken off afterwards.
    - ``connections``: connections accepted; the latest one's serial number.
    - ``resets``: connections reset by the ``reset_after`` switch.
    - ``ranges``: ``(digest, start, end)`` (inclusive end) of every blob body
      served, in order; a whole-blob answer is ``(digest, 0, size - 1)``.
    - ``log``: ``(method, path, status)`` of every response, in order.
    - ``auth``: ``(path, Authorization header)`` of every request, in order.
    """

    requests: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    blob_bytes_sent: int = 0
    connections: int = 0
    resets: int = 0
    ranges: list[tuple[str, int, int]] = dataclasses.field(default_factory=list)
    log: list[tuple[str, str, int]] = dataclasses.field(default_factory=list)
    auth: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    lock: threading.Lock = dataclasses.field(
        default_factory=threading.Lock, repr=False, compare=False
    )

    def reset(self) -> None:
        """Set every counter back to zero (connection serials start again at 1)."""
        with self.lock:
            self._clear()

    def _clear(self) -> None:
        self.requests = collections.Counter()
        self.auth = []
        self.blob_bytes_sent = 0
        self.connections = 0
        self.resets = 0
        self.ranges = []
        self.log = []

    def snapshot(self, *, reset: bool = False) -> dict[str, Any]:
        """Return the counters as a JSON-able dict; with reset, clear them in the same step."""
        with self.lock:
            doc = {
                "connections": self.connections,
                "resets": self.resets,
                "blob_bytes_sent": self.blob_bytes_sent,
                "requests": dict(self.requests),
            }
            if reset:
                self._clear()
        return doc

    def _accept(self) -> int:
        """Count an accepted connection; return its serial number."""
        with self.lock:
            self.connections += 1
            return self.connections

    def _add_reset(self, lost: int) -> None:
        with self.lock:
            self.resets += 1
            self.blob_bytes_sent -= lost

    def _add_auth(self, path: str, header: str) -> None:
        with self.lock:
            self.auth.append((path, header))

    def _count(self, kind: str) -> None:
        with self.lock:
            self.requests[kind] += 1

    def _add_bytes(self, n: int) -> None:
        with self.lock:
            self.blob_bytes_sent += n

    def _add_range(self, digest: str, start: int, end: int) -> None:
        with self.lock:
            self.ranges.append((digest, start, end))

    def _add_log(self, method: str, path: str, status: int) -> None:
        with self.lock:
            self.log.append((method, path, status))
