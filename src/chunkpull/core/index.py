"""Manifest media types, image indexes (and Docker manifest lists), and the platform an index is resolved for; no I/O.

A registry may answer a tag with an *index*: a list of manifests, one per
platform (``linux/amd64``, ``linux/arm64/v8``, ...), or for model artifacts
often a single entry with no platform at all.  ``Index.choose`` picks the
entry to pull; the registry client then fetches that manifest by digest.

Imports core.digest, core.manifest and errors only.
"""

from __future__ import annotations

import json
import platform as _platform
from dataclasses import dataclass

from ..errors import InvalidManifestError, ModelNotFoundError
from .digest import Digest, sha256_digest
from .manifest import parse_descriptor

__all__ = [
    "INDEX_MEDIA_TYPES",
    "MANIFEST_ACCEPT",
    "MEDIA_TYPE_DOCKER_LIST",
    "MEDIA_TYPE_DOCKER_MANIFEST",
    "MEDIA_TYPE_OCI_INDEX",
    "MEDIA_TYPE_OCI_MANIFEST",
    "Index",
    "IndexEntry",
    "Platform",
    "is_index",
]

MEDIA_TYPE_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_TYPE_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_TYPE_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
INDEX_MEDIA_TYPES = (MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_DOCKER_LIST)
# What a pull asks for: indexes first (so a multi-platform tag resolves to
# this platform's manifest), then both manifest forms.  Distribution answers
# an OCI manifest with 404 to a client that does not list its type.
MANIFEST_ACCEPT = ", ".join([MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_DOCKER_LIST, MEDIA_TYPE_OCI_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST])

# Go's GOARCH names for what Python's platform.machine() says.
_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm", "armv6l": "arm",
         "i386": "386", "i686": "386", "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}
_VARIANT = {"armv7l": "v7", "armv6l": "v6"}


@dataclass(frozen=True, slots=True)
class Platform:
    """An OCI platform: ``os/architecture[/variant]``, the entry of an image index a pull takes.

    >>> p = Platform.parse("linux/arm64/v8")
    >>> p.os, p.architecture, p.variant, str(p)
    ('linux', 'arm64', 'v8', 'linux/arm64/v8')
    """

    os: str
    architecture: str
    variant: str = ""

    @classmethod
    def parse(cls, text: str) -> Platform:
        """Parse ``os/arch[/variant]`` (``linux/arm64/v8``).

        Raises:
            ValueError: not two or three non-empty parts.
        """
        parts = text.strip().lower().split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"invalid platform {text!r}: want os/architecture[/variant], e.g. linux/amd64 or linux/arm64/v8")
        return cls(*parts)

    @classmethod
    def current(cls) -> Platform:
        """Return the platform this process runs on, in OCI's names."""
        machine = _platform.machine().lower()
        return cls(_platform.system().lower() or "linux", _ARCH.get(machine, machine), _VARIANT.get(machine, ""))

    def matches(self, other: Platform) -> bool:
        """Say whether an index entry's platform (other) serves this one (a variant is compared only when both have one)."""
        return (self.os, self.architecture) == (other.os, other.architecture) and (not self.variant or not other.variant or self.variant == other.variant)

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


@dataclass(frozen=True, slots=True)
class IndexEntry:
    digest: Digest
    size: int
    media_type: str
    platform: Platform | None


@dataclass(frozen=True)
class Index:
    """A parsed image index or manifest list; ``data`` is its exact bytes."""

    data: bytes
    digest: Digest
    entries: tuple[IndexEntry, ...]

    @classmethod
    def parse(cls, data: bytes) -> Index:
        """Parse index bytes.

        Raises:
            InvalidManifestError: not JSON, no ``manifests`` list, or an entry without a valid digest and size.
        """
        try:
            doc = json.loads(data)
        except ValueError as err:
            raise InvalidManifestError(f"invalid index: not JSON: {err}") from None
        raw = doc.get("manifests") if isinstance(doc, dict) else None
        if not isinstance(raw, list) or not raw:
            raise InvalidManifestError("invalid index: no manifests")
        entries = []
        for i, x in enumerate(raw):
            d = parse_descriptor(x, f"invalid index: entry {i}")
            p = x.get("platform")
            plat = None
            if isinstance(p, dict) and p.get("os") and p.get("architecture"):
                plat = Platform(str(p["os"]).lower(), str(p["architecture"]).lower(), str(p.get("variant") or "").lower())
            entries.append(IndexEntry(d.digest, d.size, d.media_type, plat))
        return cls(bytes(data), sha256_digest(data), tuple(entries))

    def choose(self, want: Platform | None = None) -> IndexEntry:
        """Return the entry to pull: the only one, else the one for ``want`` (default: this machine's platform).

        Entries for ``unknown/unknown`` (build attestations) are never chosen.

        Raises:
            ModelNotFoundError: no entry serves the platform (the message lists those there are).
        """
        usable = [e for e in self.entries if e.platform is None or e.platform.os != "unknown"]
        if len(usable) == 1 and (want is None or usable[0].platform is None or want.matches(usable[0].platform)):
            return usable[0]
        target = want or Platform.current()
        for e in usable:
            if e.platform is not None and target.matches(e.platform):
                return e
        have = ", ".join(sorted(str(e.platform) for e in usable if e.platform)) or "entries without a platform"
        raise ModelNotFoundError("", f"no manifest for platform {target} in the index (it has {have}); choose one with --platform")


def is_index(data: bytes, content_type: str = "") -> bool:
    """Say whether manifest bytes (and their Content-Type) are an index rather than an image manifest."""
    if content_type.split(";", 1)[0].strip() in INDEX_MEDIA_TYPES:
        return True
    try:
        doc = json.loads(data)
    except ValueError:
        return False
    return isinstance(doc, dict) and (doc.get("mediaType") in INDEX_MEDIA_TYPES or ("manifests" in doc and "layers" not in doc))
