"""Sizes and rates as people write and read them; no I/O.

Two directions, two conventions, each written down once:

- *reading* sizes (``--size 1G``, ``--chunk-size 8M``): binary units, so
  ``1G`` is 2^30 bytes; ``1GB`` is refused rather than guessed at;
- *showing* sizes and rates (progress bars, summaries, ``ls``): decimal
  units with three significant digits, as Ollama shows them (kB, MB, GB).

Imports nothing from chunkpull.
"""

from __future__ import annotations

import re

__all__ = ["SIZE_HELP", "format_age", "format_bytes", "format_duration", "format_rate", "parse_size", "plural"]

_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE_RE = re.compile(r"\s*(\d+)\s*(?:([kmgt])(i?b)?|(b))?\s*", re.IGNORECASE)
_UNITS = ("B", "kB", "MB", "GB", "TB", "PB")
SIZE_HELP = "sizes are a byte count or binary units: K or KiB = 2^10, M or MiB = 2^20, G or GiB = 2^30, T or TiB = 2^40"


def parse_size(text: str) -> int:
    """Return the byte count of a size such as ``4096``, ``256K``, ``8MiB`` or ``1G`` (binary units: 1G = 2**30).

    The one size syntax of ``chunkpull registry`` and ``chunkpull bench``.
    ``1GB`` is refused rather than guessed at: decimal or binary.

    Raises:
        ValueError: not a whole number with an optional K/M/G/T or KiB/MiB/GiB/TiB suffix.
    """
    m = _SIZE_RE.fullmatch(text)
    if m is None or (m.group(3) or "").lower() == "b":
        raise ValueError(f"invalid size {text!r} (want a byte count or binary units, e.g. 4096, 256K, 8MiB, 1G)")
    return int(m.group(1)) * _SIZE_UNITS[(m.group(2) or "").lower()]


def _three_digits(value: float) -> str:
    # Three significant digits: "1.07", "12.3", "512".
    if value < 9.995:
        return f"{value:.2f}"
    if value < 99.95:
        return f"{value:.1f}"
    return f"{value:.0f}"


def format_bytes(n: float) -> str:
    """Return n bytes in decimal units with three significant digits ("1.07 GB", "512 MB", "999 B")."""
    if n < 1000:
        return f"{int(n)} B"
    value = float(n)
    for unit in _UNITS[1:]:
        value /= 1000
        # 999.5 and up would print as "1000": step up to the next unit.
        if value < 999.5 or unit == _UNITS[-1]:
            return f"{_three_digits(value)} {unit}"
    raise AssertionError("unreachable")


def format_rate(bytes_per_s: float) -> str:
    """Return a transfer rate in GB/s from 1 GB/s up, else in MB/s ("1.26 GB/s", "312 MB/s")."""
    if bytes_per_s >= 0.9995e9:
        return f"{_three_digits(bytes_per_s / 1e9)} GB/s"
    return f"{_three_digits(max(0.0, bytes_per_s) / 1e6)} MB/s"


def format_duration(seconds: float) -> str:
    """Return a short duration for an ETA: "42s", "3m05s", "1h02m"."""
    s = max(0, int(seconds + 0.5))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def format_age(seconds: float) -> str:
    """Return how long ago something happened, as ``ls`` shows it ("3 minutes ago")."""
    s = int(seconds)
    if s < 60:
        return "just now"  # also for a clock set back since the write
    for below, size, unit in (
        (3600, 60, "minute"),
        (86400, 3600, "hour"),
        (14 * 86400, 86400, "day"),
        (60 * 86400, 7 * 86400, "week"),
        (730 * 86400, 30 * 86400, "month"),
        (None, 365 * 86400, "year"),
    ):
        if below is None or s < below:
            return f"{plural(s // size, unit)} ago"
    raise AssertionError("unreachable")


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"
