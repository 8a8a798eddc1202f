"""Model names: split, validate, complete from a mask, compare; no I/O.

This module owns the name grammar of SPEC section 1.  A name is
``host/namespace/model:tag``; ``Name.parse`` only splits text (it never
raises), ``merge`` fills missing parts from a mask such as ``DEFAULT_MASK``,
and ``is_fully_qualified`` decides whether the result may be used.  Names
compare case-insensitively but keep the casing they were written with.
``parse_ref`` reads the extended form ``[scheme://]name[@digest]`` that the
registry client and the API accept.  Because every valid part starts with an
ASCII letter, digit or ``_`` and contains no ``/``, a fully qualified name can
never yield ``.``, ``..`` or an absolute path when its parts become
directories under ``manifests/``; a nested namespace (``team/vision``) is
one directory per level, each checked on its own.  This module imports only the
standard library, ``chunkpull.errors`` and ``chunkpull.digest``; it must not
import the cache, the registry or anything that does I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .digest import Digest
from ..errors import InvalidDigestError, InvalidNameError

__all__ = ["DEFAULT_MASK", "SCHEMES", "Name", "Ref", "parse_ref"]

DEFAULT_MASK = "registry.ollama.ai/library/_:latest"

# The first scheme is the default, used when the text has no "scheme://".
SCHEMES = ("https", "http", "https+insecure")

# SPEC section 1's table.  ASCII classes are spelled out: str.isalnum() would
# admit non-ASCII letters, which have no place in a host name or a path that
# must mean the same thing on every file system.
_PART_RE = {
    "host": re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}"),
    "namespace": re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,79}"),
    "model": re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}"),
    "tag": re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}"),
}

_GO_ESCAPES = {
    "\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n",
    "\r": "\\r", "\t": "\\t", "\v": "\\v", '"': '\\"', "\\": "\\\\",
}


def _quote(s: str) -> str:
    """Return ``s`` in double quotes with escapes, like Go's ``%q``.

    Error messages use this form because Ollama's clients and the seed tests
    expect ``invalid or missing name: "<text>"``.
    """
    out = ['"']
    for ch in s:
        if ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x80:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) <= 0xFFFF:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    out.append('"')
    return "".join(out)


# A nested namespace (``team/vision``) has at most this many levels.
MAX_NAMESPACE_LEVELS = 8


def _is_valid_part(kind: str, value: str) -> bool:
    if kind == "namespace":
        levels = value.split("/")
        return len(levels) <= MAX_NAMESPACE_LEVELS and all(_PART_RE[kind].fullmatch(level) for level in levels)
    return _PART_RE[kind].fullmatch(value) is not None


def _as_name(mask: str | Name) -> Name:
    if isinstance(mask, Name):
        return mask
    if isinstance(mask, str):
        return Name.parse(mask)
    raise TypeError(f"mask must be a str or Name, not {type(mask).__name__}")


@dataclass(frozen=True, eq=False, slots=True)
class Name:
    """A model name ``host/namespace/model:tag``; missing parts are ``""``.

    Instances may be partial or invalid: ``Name.parse`` never rejects text.
    Check ``is_fully_qualified()`` (usually after ``merge``) before using a
    name to reach a registry or the disk.  Equality and hashing ignore ASCII
    case; the fields and ``str()`` keep the casing as written.

    >>> n = Name.parse("127.0.0.1:5000/library/smol").merge("registry.ollama.ai/library/_:latest")
    >>> str(n), n.is_fully_qualified(), n.display_shortest()
    ('127.0.0.1:5000/library/smol:latest', True, '127.0.0.1:5000/library/smol')
    >>> Name.parse("SMOL") == Name.parse("smol")
    True
    """

    host: str = ""
    namespace: str = ""
    model: str = ""
    tag: str = ""

    @classmethod
    def parse(cls, s: str) -> Name:
        """Split ``s`` into host, namespace, model and tag without validating.

        The scan runs from the right (SPEC section 1): the text after the
        last ``:`` that follows the last ``/`` is the tag, so the port in
        ``host:5000/ns/model`` is not taken for one; the text after the last
        ``/`` is the model; what remains splits at its last ``/`` into host
        and namespace.  Extra ``/`` therefore stay in the host
        (``a/b/c/d/e`` gives host ``a/b/c``), which makes the name invalid
        rather than silently shortened.  Never raises for any string.
        """
        rest = s
        tag = ""
        colon = s.rfind(":")
        if colon > s.rfind("/"):
            rest, tag = s[:colon], s[colon + 1 :]
        rest, _, model = rest.rpartition("/")
        # With more than one "/" left, the first part is the host and the rest a
        # nested namespace (``host/team/vision/detector``), as OCI registries allow.
        host, slash, namespace = rest.partition("/")
        if not slash:
            host, namespace = "", rest
        return cls(host, namespace, model, tag)

    def merge(self, mask: str | Name) -> Name:
        """Return this name with empty host, namespace and tag taken from ``mask``.

        The mask's model part is ignored: a mask completes a name, it never
        supplies the model.  ``mask`` may be a string such as
        ``DEFAULT_MASK`` or a ``Name``.  Parts present in this name are kept
        as they are, even when invalid.
        """
        m = _as_name(mask)
        return Name(
            self.host or m.host,
            self.namespace or m.namespace,
            self.model,
            self.tag or m.tag,
        )

    def is_valid(self) -> bool:
        """Return whether every present (non-empty) part is valid.

        Empty parts are not checked, so a partial name such as ``smol`` is
        valid; use ``is_fully_qualified`` to require all four parts.
        """
        return all(
            value == "" or _is_valid_part(kind, value)
            for kind, value in self._parts_by_kind()
        )

    def is_fully_qualified(self) -> bool:
        """Return whether all four parts are present and valid."""
        return all(_is_valid_part(kind, value) for kind, value in self._parts_by_kind())

    def path_parts(self) -> tuple[str, ...]:
        """Return ``(host, *namespace levels, model, tag)`` as path components under ``manifests/``.

        The parts keep their casing; a nested namespace gives one directory
        per level.  Only fully qualified names are accepted, which
        guarantees that no component is empty, ``.``, ``..``, absolute or
        contains a separator.

        Raises:
            InvalidNameError: the name is not fully qualified.
        """
        if not self.is_fully_qualified():
            raise InvalidNameError(f"invalid or missing name: {_quote(str(self))}")
        return (self.host, *self.namespace.split("/"), self.model, self.tag)

    def display_shortest(self, mask: str | Name = DEFAULT_MASK) -> str:
        """Return the shortest text that ``merge(mask)`` turns back into this name.

        Host, namespace and tag equal to the mask's (ignoring case) are
        dropped, as ``ls`` shows them; empty parts count as equal since the
        mask would fill them.  The namespace is dropped only together with
        the host, because ``ns/model`` would otherwise read as
        ``host/model``.
        """
        m = _as_name(mask)

        def differs(value: str, default: str) -> bool:
            return value != "" and value.lower() != default.lower()

        if differs(self.host, m.host) or "/" in self.namespace:
            # A nested namespace without its host would read as host/namespace.
            text = f"{self.host}/{self.namespace}/"
        elif differs(self.namespace, m.namespace):
            text = f"{self.namespace}/"
        else:
            text = ""
        text += self.model
        if differs(self.tag, m.tag):
            text += f":{self.tag}"
        return text

    def _parts_by_kind(self) -> tuple[tuple[str, str], ...]:
        return (
            ("host", self.host),
            ("namespace", self.namespace),
            ("model", self.model),
            ("tag", self.tag),
        )

    def _key(self) -> tuple[str, str, str, str]:
        return (self.host.lower(), self.namespace.lower(), self.model.lower(), self.tag.lower())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Name):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __str__(self) -> str:
        # Empty parts keep their separators where dropping them would move
        # another part (host without namespace stays "host//model"), so that
        # Name.parse(str(n)) == n for every name made of valid parts.
        if self.host:
            text = f"{self.host}/{self.namespace}/"
        elif self.namespace:
            text = f"{self.namespace}/"
        else:
            text = ""
        text += self.model
        if self.tag:
            text += f":{self.tag}"
        return text


@dataclass(frozen=True, slots=True)
class Ref:
    """A parsed extended name: scheme, fully qualified name, optional digest.

    ``digest`` is set when the text ended in ``@sha256:<hex>``; the manifest
    is then fetched by digest instead of by tag.

    >>> ref = parse_ref("http://127.0.0.1:5000/library/smol")
    >>> ref.scheme, str(ref.name), ref.base_url
    ('http', '127.0.0.1:5000/library/smol:latest', 'http://127.0.0.1:5000/v2/library/smol')
    """

    scheme: str
    name: Name
    digest: Digest | None = None

    @property
    def base_url(self) -> str:
        """Return ``<scheme>://<host>/v2/<namespace>/<model>`` for registry requests.

        ``https+insecure`` is plain ``https`` on the wire; only certificate
        verification differs (see ``verify_tls``).
        """
        scheme = "https" if self.scheme == "https+insecure" else self.scheme
        n = self.name
        return f"{scheme}://{n.host}/v2/{n.namespace}/{n.model}"

    @property
    def verify_tls(self) -> bool:
        """Return False only for ``https+insecure``, True otherwise."""
        return self.scheme != "https+insecure"


def parse_ref(s: str, mask: str | Name = DEFAULT_MASK) -> Ref:
    """Parse ``[scheme://]name[@digest]`` and complete the name from ``mask``.

    The scheme defaults to ``https`` (also when the text starts with a bare
    ``://``) and is matched ignoring case; ``http`` and ``https+insecure``
    are the others.  The digest, if any, must be a ``sha256`` digest in
    either text form.  ``mask`` may be a string or a ``Name``; its model part
    is ignored.

    Raises:
        InvalidNameError: the scheme is unsupported ("unsupported scheme"),
            the digest after ``@`` is malformed ("invalid digest"), or the
            name is not fully qualified after merging
            (``invalid or missing name: "<name as written>"``, where the
            quoted text is ``s`` without its scheme and digest).

    >>> parse_ref("llama3.2").name
    Name(host='registry.ollama.ai', namespace='library', model='llama3.2', tag='latest')
    >>> parse_ref("https+insecure://10.0.0.5:5000/team/m:v1").verify_tls
    False
    """
    if not isinstance(s, str):
        # A JSON body may carry null or a number where a name belongs.
        raise InvalidNameError(f"invalid or missing name: {_quote('' if s is None else str(s))}")

    scheme, sep, rest = s.partition("://")
    if not sep:
        scheme, rest = SCHEMES[0], s
    scheme = scheme.lower() or SCHEMES[0]
    if scheme not in SCHEMES:
        raise InvalidNameError(
            f"unsupported scheme {_quote(scheme)} in {_quote(s)} (want one of {', '.join(SCHEMES)})"
        )

    head = rest.split("/", 1)[0]
    if "@" in head and "/" in rest:
        # user[:password]@host/…: credentials never travel in a name (they
        # would end up in logs and shell history), and are never echoed.
        shown = f"{scheme}://***@{rest.split('@', 1)[1]}" if sep else "***@" + rest.split("@", 1)[1]
        raise InvalidNameError(
            f"invalid name {_quote(shown)}: credentials in a name are not accepted; "
            "use chunkpull login, REGISTRY_AUTH_FILE or Docker's config.json"
        )
    # A digest never contains "@", so the last one separates it.
    text, at, digest_text = rest.rpartition("@")
    digest = None
    if at:
        try:
            digest = Digest.parse(digest_text)
        except InvalidDigestError as err:
            raise InvalidNameError(f"invalid name {_quote(s)}: {err}") from err
    else:
        text = rest

    name = Name.parse(text).merge(mask)
    if not name.is_fully_qualified():
        raise InvalidNameError(f"invalid or missing name: {_quote(text)}")
    host, colon, port = name.host.partition(":")
    if colon and not (port.isascii() and port.isdigit() and 0 < int(port) < 65536 and host):
        # The grammar admits ":" in a host; a URL needs host[:port].
        raise InvalidNameError(f"invalid name {_quote(s)}: the host {_quote(name.host)} is not host[:port] with a port from 1 to 65535")
    return Ref(scheme, name, digest)
