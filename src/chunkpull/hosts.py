"""Which mirrors a registry host has: ``--mirror``, ``$CHUNKPULL_MIRRORS`` and containerd-style ``hosts.toml`` files.

A mirror is a registry serving the same repository paths as the origin (a
pull-through cache such as distribution's ``proxy:`` mode, a Harbor proxy
project, an Artifactory remote, a LAN copy).  Three places name them:

- ``Registry(mirrors=[...])`` / ``chunkpull pull --mirror URL`` (repeatable),
  for every origin;
- ``$CHUNKPULL_MIRRORS``: URLs separated by commas or spaces, for every origin;
- ``<hosts dir>/<origin host>/hosts.toml`` in containerd's format, for that
  origin only, where the hosts dir is ``$CHUNKPULL_HOSTS_DIR``, else
  ``~/.config/chunkpull/hosts.d``, else ``/etc/containerd/certs.d``::

      server = "https://registry.example"
      [host."http://mirror.lan:5000"]
        capabilities = ["pull", "resolve"]
        skip_verify = false

  Entries whose capabilities lack ``pull`` are ignored (containerd's rule);
  ``skip_verify = true`` turns certificate checks off for that mirror.
  A port in the origin host is written ``host_port_`` as containerd does
  (``127.0.0.1:5000`` → ``127.0.0.1_5000_``), or as it is.

A mirror URL is ``http(s)://host[:port][/prefix]``; its repositories are
under ``<url>/v2/<repository>``.  Mirrors only ever get chunk bytes: the
manifest and the digests come from the origin.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .errors import ChunkpullError

__all__ = ["MirrorSpec", "mirrors_for", "parse_mirror"]


@dataclass(frozen=True)
class MirrorSpec:
    """A mirror's root URL (no trailing ``/``, no ``/v2``) and whether to verify its certificate."""

    root: str
    verify_tls: bool = True

    @property
    def host(self) -> str:
        return urlsplit(self.root).netloc


def parse_mirror(text: str, *, verify_tls: bool = True) -> MirrorSpec:
    """Parse a mirror URL; refuse anything that is not http(s)://host[:port][/prefix] without credentials.

    Raises:
        ChunkpullError: not a usable mirror URL (the message never repeats credentials).
    """
    url = text.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ChunkpullError(f"invalid mirror {_redact(url)!r}: want http(s)://host[:port][/path]")
    if "@" in parts.netloc:
        raise ChunkpullError(f"invalid mirror {_redact(url)!r}: credentials in a mirror URL are not accepted; use chunkpull login for its host")
    if parts.query or parts.fragment:
        raise ChunkpullError(f"invalid mirror {url!r}: a mirror URL has no query or fragment")
    path = re.sub(r"/v2/?$", "", parts.path.rstrip("/"))
    return MirrorSpec(f"{parts.scheme}://{parts.netloc}{path}", verify_tls)


def _redact(url: str) -> str:
    return re.sub(r"//[^/@]*@", "//***@", url)


def hosts_dirs() -> list[Path]:
    env = os.environ.get("CHUNKPULL_HOSTS_DIR")
    if env:
        return [Path(env)]
    return [Path.home() / ".config" / "chunkpull" / "hosts.d", Path("/etc/containerd/certs.d")]


def from_hosts_toml(host: str, dirs: list[Path] | None = None) -> list[MirrorSpec]:
    """Return the pull mirrors ``hosts.toml`` names for an origin host (the first hosts dir that has a file wins).

    Raises:
        ChunkpullError: the file exists but is not valid TOML or names an invalid mirror.
    """
    for d in dirs if dirs is not None else hosts_dirs():
        for name in (host, host.replace(":", "_") + "_" if ":" in host else host):
            path = d / name / "hosts.toml"
            if not path.is_file():
                continue
            try:
                doc = tomllib.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
                raise ChunkpullError(f"cannot read {path}: {err}") from None
            out = []
            for url, entry in (doc.get("host") or {}).items():
                entry = entry if isinstance(entry, dict) else {}
                if "pull" not in entry.get("capabilities", ["pull", "resolve"]):
                    continue
                out.append(parse_mirror(url, verify_tls=not entry.get("skip_verify", False)))
            return out
    return []


def mirrors_for(host: str, explicit: list[str] | None = None) -> list[MirrorSpec]:
    """Return an origin host's mirrors: explicit ones, then ``$CHUNKPULL_MIRRORS``, then its hosts.toml (duplicates dropped)."""
    specs = [parse_mirror(m) for m in explicit or []]
    specs += [parse_mirror(m) for m in re.split(r"[,\s]+", os.environ.get("CHUNKPULL_MIRRORS", "")) if m]
    specs += from_hosts_toml(host)
    seen, out = set(), []
    for s in specs:
        if s.root.lower() not in seen and s.host.lower() != host.lower():
            seen.add(s.root.lower())
            out.append(s)
    return out
