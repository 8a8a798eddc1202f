"""Tests for chunkpull.digest: text forms, validation, raw bytes, hashing."""

from __future__ import annotations

import hashlib

import pytest

from chunkpull.core.digest import Digest, sha256_digest
from chunkpull.errors import InvalidDigestError

HEX = "0123456789abcdef" * 4  # 64 lowercase hex digits
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
ABC_SHA256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"

BOTH = ("sha256", "blake3")


@pytest.mark.parametrize(
    "s, algorithms, want",
    [
        pytest.param(f"sha256:{HEX}", ("sha256",), Digest("sha256", HEX), id="canonical"),
        pytest.param(f"sha256-{HEX}", ("sha256",), Digest("sha256", HEX), id="file-form"),
        pytest.param(f"sha256:{EMPTY_SHA256}", ("sha256",), Digest("sha256", EMPTY_SHA256), id="empty-blob"),
        pytest.param(f"blake3:{HEX}", BOTH, Digest("blake3", HEX), id="blake3-allowed"),
        pytest.param(f"blake3-{HEX}", BOTH, Digest("blake3", HEX), id="blake3-file-form-allowed"),
        pytest.param(f"blake3:{HEX}", ("blake3",), Digest("blake3", HEX), id="blake3-only"),
        pytest.param(f"sha256:{HEX}", BOTH, Digest("sha256", HEX), id="sha256-with-both"),
        pytest.param(f"sha256:{HEX}", ["sha256"], Digest("sha256", HEX), id="algorithms-as-list"),
    ],
)
def test_parse_valid(s, algorithms, want):
    got = Digest.parse(s, algorithms=algorithms)
    assert got == want, f"parse({s!r}) = {got!r}, want {want!r}"


def test_parse_default_accepts_sha256():
    s = f"sha256:{HEX}"
    got = Digest.parse(s)
    want = Digest("sha256", HEX)
    assert got == want, f"parse({s!r}) = {got!r}, want {want!r}"


@pytest.mark.parametrize(
    "s, algorithms",
    [
        pytest.param("", ("sha256",), id="empty"),
        pytest.param("sha256:", ("sha256",), id="alg-colon-only"),
        pytest.param("sha256-", ("sha256",), id="alg-dash-only"),
        pytest.param("sha256", ("sha256",), id="alg-only"),
        pytest.param(HEX, ("sha256",), id="hex-only"),
        pytest.param(f":{HEX}", ("sha256",), id="no-alg"),
        pytest.param(f"sha256:{HEX.upper()}", ("sha256",), id="uppercase-hex"),
        pytest.param(f"sha256-{HEX.upper()}", ("sha256",), id="uppercase-hex-file-form"),
        pytest.param(f"sha256:{HEX[:-1]}A", ("sha256",), id="one-uppercase-digit"),
        pytest.param(f"SHA256:{HEX}", ("sha256",), id="uppercase-alg"),
        pytest.param(f"sha256:{HEX[:63]}", ("sha256",), id="63-hex"),
        pytest.param(f"sha256:{HEX}0", ("sha256",), id="65-hex"),
        pytest.param(f"sha256-{HEX[:63]}", ("sha256",), id="63-hex-file-form"),
        pytest.param(f"sha256-{HEX}0", ("sha256",), id="65-hex-file-form"),
        pytest.param(f"sha256:{HEX[:63]}g", ("sha256",), id="non-hex-digit"),
        pytest.param(f"sha256:{HEX[:63]}\u0663", ("sha256",), id="non-ascii-digit"),
        pytest.param(f"sha256::{HEX}", ("sha256",), id="double-colon"),
        pytest.param(f"sha256_{HEX}", ("sha256",), id="underscore-separator"),
        pytest.param(f" sha256:{HEX}", ("sha256",), id="leading-space"),
        pytest.param(f"sha256:{HEX}\n", ("sha256",), id="trailing-newline"),
        pytest.param(f"md5:{HEX}", ("sha256",), id="wrong-alg"),
        pytest.param(f"sha512:{HEX}", ("sha256", "sha512"), id="unsupported-alg-even-if-asked"),
        pytest.param(f"blake3:{HEX}", ("sha256",), id="blake3-not-allowed"),
        pytest.param(f"blake3-{HEX}", ("sha256",), id="blake3-file-form-not-allowed"),
        pytest.param(f"sha256:{HEX}", ("blake3",), id="sha256-not-allowed"),
        pytest.param(f"sha256:{HEX}", (), id="nothing-allowed"),
    ],
)
def test_parse_invalid(s, algorithms):
    with pytest.raises(InvalidDigestError) as info:
        got = Digest.parse(s, algorithms=algorithms)
        pytest.fail(f"parse({s!r}) = {got!r}, want InvalidDigestError")
    msg = str(info.value)
    assert "invalid digest" in msg, f"parse({s!r}) error = {msg!r}, want it to contain 'invalid digest'"
    assert repr(s) in msg, f"parse({s!r}) error = {msg!r}, want it to contain the offending text"


def test_parse_blake3_rejected_by_default():
    s = f"blake3:{HEX}"
    with pytest.raises(InvalidDigestError, match="invalid digest"):
        Digest.parse(s)


@pytest.mark.parametrize("value", [None, 42, f"sha256:{HEX}".encode()], ids=["none", "int", "bytes"])
def test_parse_non_string(value):
    with pytest.raises(InvalidDigestError, match="invalid digest"):
        Digest.parse(value)


def test_invalid_digest_error_is_value_error():
    with pytest.raises(ValueError):
        Digest.parse("nope")


@pytest.mark.parametrize(
    "algorithm, hex_",
    [
        pytest.param("sha256", HEX.upper(), id="uppercase-hex"),
        pytest.param("sha256", HEX[:63], id="short-hex"),
        pytest.param("sha256", "", id="empty-hex"),
        pytest.param("md5", HEX, id="unsupported-alg"),
        pytest.param("", HEX, id="empty-alg"),
    ],
)
def test_constructor_rejects_malformed(algorithm, hex_):
    with pytest.raises(InvalidDigestError, match="invalid digest"):
        Digest(algorithm, hex_)


@pytest.mark.parametrize(
    "raw, algorithm, want",
    [
        pytest.param(bytes(range(32)), "sha256", Digest("sha256", bytes(range(32)).hex()), id="bytes"),
        pytest.param(bytearray(range(32)), "sha256", Digest("sha256", bytes(range(32)).hex()), id="bytearray"),
        pytest.param(memoryview(bytes(range(32))), "sha256", Digest("sha256", bytes(range(32)).hex()), id="memoryview"),
        pytest.param(b"\xff" * 32, "blake3", Digest("blake3", "f" * 64), id="blake3"),
    ],
)
def test_from_bytes(raw, algorithm, want):
    got = Digest.from_bytes(raw, algorithm)
    assert got == want, f"from_bytes({bytes(raw)!r}, {algorithm!r}) = {got!r}, want {want!r}"
    assert got.raw == bytes(raw), f"{got!r}.raw = {got.raw!r}, want {bytes(raw)!r}"


@pytest.mark.parametrize(
    "raw, algorithm",
    [
        pytest.param(b"", "sha256", id="empty"),
        pytest.param(b"\x00" * 31, "sha256", id="31-bytes"),
        pytest.param(b"\x00" * 33, "sha256", id="33-bytes"),
        pytest.param(b"\x00" * 64, "sha256", id="64-bytes"),
        pytest.param(b"\x00" * 32, "md5", id="unsupported-alg"),
    ],
)
def test_from_bytes_invalid(raw, algorithm):
    with pytest.raises(InvalidDigestError, match="invalid digest"):
        Digest.from_bytes(raw, algorithm)


def test_from_bytes_default_algorithm():
    got = Digest.from_bytes(b"\x00" * 32)
    assert got.algorithm == "sha256", f"from_bytes(...).algorithm = {got.algorithm!r}, want 'sha256'"


@pytest.mark.parametrize(
    "d, want_str, want_filename, want_short",
    [
        pytest.param(Digest("sha256", HEX), f"sha256:{HEX}", f"sha256-{HEX}", "0123456789ab", id="sha256"),
        pytest.param(Digest("blake3", "f" * 64), "blake3:" + "f" * 64, "blake3-" + "f" * 64, "f" * 12, id="blake3"),
    ],
)
def test_text_forms(d, want_str, want_filename, want_short):
    assert str(d) == want_str, f"str({d!r}) = {str(d)!r}, want {want_str!r}"
    assert d.filename == want_filename, f"{d!r}.filename = {d.filename!r}, want {want_filename!r}"
    assert d.short() == want_short, f"{d!r}.short() = {d.short()!r}, want {want_short!r}"


@pytest.mark.parametrize("form", ["canonical", "file"])
def test_text_forms_round_trip(form):
    d = Digest("sha256", EMPTY_SHA256)
    s = str(d) if form == "canonical" else d.filename
    got = Digest.parse(s)
    assert got == d, f"parse({s!r}) = {got!r}, want {d!r}"


def test_equal_and_hashable():
    a = Digest.parse(f"sha256:{HEX}")
    b = Digest.parse(f"sha256-{HEX}")
    assert a == b, f"{a!r} != {b!r}"
    assert len({a, b}) == 1, "equal digests hash differently"
    assert Digest("sha256", HEX) != Digest("blake3", HEX), "algorithm ignored in equality"


def test_frozen():
    d = Digest("sha256", HEX)
    with pytest.raises(AttributeError):
        d.hex = EMPTY_SHA256  # type: ignore[misc]


@pytest.mark.parametrize(
    "data, want_hex",
    [
        pytest.param(b"", EMPTY_SHA256, id="empty"),
        pytest.param(b"abc", ABC_SHA256, id="abc"),
        pytest.param(bytearray(b"abc"), ABC_SHA256, id="bytearray"),
        pytest.param(memoryview(b"xxabcxx")[2:5], ABC_SHA256, id="memoryview-slice"),
        pytest.param(b"\x00" * 100_000, hashlib.sha256(b"\x00" * 100_000).hexdigest(), id="100k-zeros"),
    ],
)
def test_sha256_digest(data, want_hex):
    got = sha256_digest(data)
    want = Digest("sha256", want_hex)
    assert got == want, f"sha256_digest({bytes(data)[:16]!r}...) = {got!r}, want {want!r}"
