"""The built-in registry's push side: blob uploads (``POST`` then ``PUT ?digest=``) and manifest ``PUT``s.

A mixin of ``testing.handler._Handler`` (it uses the handler's ``_send``,
``headers`` and ``rfile``); kept apart so the read side, with its fault
injection, stays readable.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

from .models import PUSH_HOST, write_atomic, write_blob

__all__ = ["PushHandlers", "error_body"]

_DIGEST_RE = re.compile(r"sha256:([0-9a-f]{64})")
_COPY_BUF = 1 << 20


def error_body(code: str, message: str) -> bytes:
    """A distribution-spec error body: ``{"errors":[{"code":…,"message":…}]}``."""
    return json.dumps({"errors": [{"code": code, "message": message}]}, separators=(",", ":")).encode()



class PushHandlers:
    """Upload and manifest handlers; ``reg`` is the TestRegistry the request is for (``_send``, ``headers``, ``rfile`` are the handler's)."""

    # -- pushing --------------------------------------------------------

    def _start_upload(self, reg: Any, ns: str, model: str, query: dict[str, list[str]]) -> None:
        digest = (query.get("digest") or [""])[0]
        if not _DIGEST_RE.fullmatch(digest):
            self._send(400, error_body("DIGEST_INVALID", f"invalid digest {digest!r}"))
            return
        if reg.blob_path(digest).exists():
            self._send(202, b"", headers=[("Docker-Content-Digest", digest)])
            return
        upload_id = uuid.uuid4().hex
        with reg._lock:
            reg._uploads[upload_id] = digest
        location = f"/v2/{ns}/{model}/blobs/uploads/{upload_id}?digest={digest}"
        self._send(202, b"", headers=[("Location", location), ("Docker-Upload-UUID", upload_id)])

    def _finish_upload(
        self, reg: Any, ns: str, model: str, upload_id: str, query: dict[str, list[str]]
    ) -> None:
        with reg._lock:
            expected = reg._uploads.pop(upload_id, None)
        digest = (query.get("digest") or [expected or ""])[0]
        if expected is None:
            self._drain_body()
            self._send(404, error_body("BLOB_UPLOAD_UNKNOWN", "blob upload unknown"))
            return
        if digest != expected or not _DIGEST_RE.fullmatch(digest):
            self._drain_body()
            self._send(400, error_body("DIGEST_INVALID", f"digest {digest!r} does not match the upload"))
            return
        got = write_blob(reg.root / "blobs", self._body_pieces(), want=digest)
        if got != digest:
            message = f"provided digest did not match uploaded content: got {got}"
            self._send(400, error_body("DIGEST_INVALID", message))
            return
        self._send(
            201,
            b"",
            headers=[("Location", f"/v2/{ns}/{model}/blobs/{digest}"), ("Docker-Content-Digest", digest)],
        )

    def _put_manifest(self, reg: Any, ns: str, model: str, ref: str) -> None:
        data = b"".join(self._body_pieces())
        try:
            manifest = json.loads(data)
            if not isinstance(manifest, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            self._send(400, error_body("MANIFEST_INVALID", f"manifest invalid: {exc}"))
            return
        # Like a real registry: every referenced blob must have been pushed
        # first, which catches a client that sends the manifest too early.
        refs = list(manifest.get("layers") or [])
        if isinstance(manifest.get("config"), dict):
            refs.append(manifest["config"])
        for item in refs:
            d = item.get("digest", "") if isinstance(item, dict) else ""
            if not _DIGEST_RE.fullmatch(str(d)) or not reg.blob_path(d).exists():
                self._send(400, error_body("MANIFEST_BLOB_UNKNOWN", f"blob unknown to registry: {d}"))
                return
        digest = write_blob(reg.root / "blobs", [data])
        if not _DIGEST_RE.fullmatch(ref):
            path = reg.find_manifest(ns, model, ref)
            if path is None:
                path = reg.root / "manifests" / PUSH_HOST / ns / model / ref
            write_atomic(path, data)
        self._send(
            201,
            b"",
            headers=[("Location", f"/v2/{ns}/{model}/manifests/{digest}"), ("Docker-Content-Digest", digest)],
        )

    # -- request bodies -------------------------------------------------

    def _body_pieces(self) -> Iterator[bytes]:
        """Yield the request body (Content-Length or chunked) in pieces."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                line = self.rfile.readline(1024)
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    # Trailers end with an empty line.
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    return
                while size:
                    piece = self.rfile.read(min(size, _COPY_BUF))
                    if not piece:
                        raise ConnectionAbortedError("request body ended early")
                    size -= len(piece)
                    yield piece
                self.rfile.readline(1024)
            return
        left = int(self.headers.get("Content-Length") or 0)
        while left > 0:
            piece = self.rfile.read(min(left, _COPY_BUF))
            if not piece:
                raise ConnectionAbortedError("request body ended early")
            left -= len(piece)
            yield piece

    def _drain_body(self) -> None:
        # Unread body bytes would be parsed as the next request on this
        # keep-alive connection.
        for _ in self._body_pieces():
            pass
