"""Tests for chunkpull.names: parsing, validity table, masks, refs, path safety."""

from __future__ import annotations

import pytest

from chunkpull.core.digest import Digest
from chunkpull.errors import InvalidNameError
from chunkpull.core.names import DEFAULT_MASK, Name, Ref, parse_ref

HEX = "0123456789abcdef" * 4
FULL = Name("registry.ollama.ai", "library", "smol", "latest")


# --- Name.parse ---------------------------------------------------------------


@pytest.mark.parametrize(
    "s, want",
    [
        pytest.param("", Name(), id="empty"),
        pytest.param("model", Name(model="model"), id="model"),
        pytest.param("model:tag", Name(model="model", tag="tag"), id="model-tag"),
        pytest.param("ns/model", Name(namespace="ns", model="model"), id="ns-model"),
        pytest.param("ns/model:tag", Name("", "ns", "model", "tag"), id="ns-model-tag"),
        pytest.param("host/ns/model:tag", Name("host", "ns", "model", "tag"), id="full"),
        pytest.param("host:5000/ns/model", Name("host:5000", "ns", "model", ""), id="port-is-not-tag"),
        pytest.param("host:5000/ns/model:tag", Name("host:5000", "ns", "model", "tag"), id="port-and-tag"),
        pytest.param(
            "127.0.0.1:5000/library/smol:latest",
            Name("127.0.0.1:5000", "library", "smol", "latest"),
            id="spec-example-without-scheme",
        ),
        pytest.param("a/b/c/d/e", Name("a", "b/c/d", "e", ""), id="nested-namespace"),
        pytest.param("h:5000/team/vision/detector:v2", Name("h:5000", "team/vision", "detector", "v2"), id="nested-with-port-and-tag"),
        pytest.param("model:a:b", Name("", "", "model:a", "b"), id="last-colon-is-tag"),
        pytest.param("model:", Name(model="model"), id="empty-tag"),
        pytest.param(":tag", Name(tag="tag"), id="tag-only"),
        pytest.param("/model", Name(model="model"), id="leading-slash"),
        pytest.param("host//model", Name("host", "", "model", ""), id="empty-namespace"),
        pytest.param("ns/", Name(namespace="ns"), id="trailing-slash"),
        pytest.param("model:a/b", Name("", "model:a", "b", ""), id="slash-after-colon"),
        pytest.param("Host.Example/NS/Model:Tag", Name("Host.Example", "NS", "Model", "Tag"), id="casing-kept"),
        pytest.param("h/n/m:t@sha256:x", Name("h", "n", "m:t@sha256", "x"), id="digest-not-split"),
    ],
)
def test_parse(s, want):
    got = Name.parse(s)
    # Compare the fields exactly: __eq__ would hide casing mistakes.
    got_fields = (got.host, got.namespace, got.model, got.tag)
    want_fields = (want.host, want.namespace, want.model, want.tag)
    assert got_fields == want_fields, f"parse({s!r}) = {got!r}, want {want!r}"


@pytest.mark.parametrize(
    "s",
    ["", ":", "/", "@", "://", ":::", "///", "a:b:c", "\x00", "modèl", "a" * 10_000, "../..", "\\x"],
    ids=["empty", "colon", "slash", "at", "scheme-sep", "colons", "slashes", "colons-2", "nul",
         "non-ascii", "long", "dotdot", "backslash"],
)
def test_parse_never_raises(s):
    Name.parse(s)


# --- validity table (SPEC section 1) ----------------------------------------------


def _with(part: str, value: str) -> Name:
    fields = {"host": FULL.host, "namespace": FULL.namespace, "model": FULL.model, "tag": FULL.tag}
    fields[part] = value
    return Name(**fields)


# (part, value, valid); every row of the table: first char, other chars, max len.
PART_CASES = [
    # host: first alnum or _, then alnum _ - . :, max 350
    ("host", "a", True), ("host", "Z", True), ("host", "0", True), ("host", "_", True),
    ("host", "-a", False), ("host", ".a", False), ("host", ":5000", False),
    ("host", "a_b-c.d:5000", True), ("host", "127.0.0.1:5000", True),
    ("host", "a/b", False), ("host", "a@b", False), ("host", "a b", False), ("host", "a+b", False),
    ("host", "a\\b", False), ("host", "a%b", False), ("host", "hé", False), ("host", "a\n", False),
    ("host", "a" * 350, True), ("host", "a" * 351, False),
    # namespace: first alnum or _, then alnum _ -, max 80
    ("namespace", "a", True), ("namespace", "Z", True), ("namespace", "0", True), ("namespace", "_", True),
    ("namespace", "-a", False), ("namespace", ".a", False),
    ("namespace", "a_b-C9", True),
    ("namespace", "a.b", False), ("namespace", "a:b", False), ("namespace", "a/b", True),
    ("namespace", "a/", False), ("namespace", "a/../b", False), ("namespace", "/".join("n" * 8), True), ("namespace", "/".join("n" * 9), False),
    ("namespace", "a b", False), ("namespace", "naïve", False),
    ("namespace", "a" * 80, True), ("namespace", "a" * 81, False),
    # model: first alnum or _, then alnum _ - ., max 80
    ("model", "a", True), ("model", "Z", True), ("model", "0", True), ("model", "_", True),
    ("model", "-a", False), ("model", ".a", False),
    ("model", "llama3.2-vision_x", True), ("model", "a..b", True),
    ("model", "a:b", False), ("model", "a/b", False), ("model", "a@b", False), ("model", "a b", False),
    ("model", "a" * 80, True), ("model", "a" * 81, False),
    # tag: first alnum or _, then alnum _ - ., max 80
    ("tag", "a", True), ("tag", "Z", True), ("tag", "0", True), ("tag", "_", True),
    ("tag", "-a", False), ("tag", ".a", False),
    ("tag", "3b-instruct-q4_K_M.v2", True),
    ("tag", "a:b", False), ("tag", "a/b", False), ("tag", "a@b", False), ("tag", "a b", False),
    ("tag", "a" * 80, True), ("tag", "a" * 81, False),
]


def _case_id(case: tuple[str, str, bool]) -> str:
    part, value, valid = case
    shown = value if len(value) <= 20 else f"{value[0]}x{len(value)}"
    return f"{part}-{shown!r}-{'ok' if valid else 'bad'}"


@pytest.mark.parametrize("part, value, valid", PART_CASES, ids=[_case_id(c) for c in PART_CASES])
def test_part_validity(part, value, valid):
    n = _with(part, value)
    got = n.is_fully_qualified()
    assert got == valid, f"{n!r}.is_fully_qualified() = {got}, want {valid}"
    got = n.is_valid()
    assert got == valid, f"{n!r}.is_valid() = {got}, want {valid}"


@pytest.mark.parametrize("part", ["host", "namespace", "model", "tag"])
def test_missing_part_is_valid_but_not_fully_qualified(part):
    n = _with(part, "")
    assert n.is_valid(), f"{n!r}.is_valid() = False, want True"
    assert not n.is_fully_qualified(), f"{n!r}.is_fully_qualified() = True, want False"


@pytest.mark.parametrize(
    "n, want",
    [
        pytest.param(Name(), True, id="empty"),
        pytest.param(Name(model="smol"), True, id="model-only"),
        pytest.param(Name(model="smol", tag="-x"), False, id="bad-tag"),
        pytest.param(Name(namespace="a.b", model="smol"), False, id="bad-namespace"),
    ],
)
def test_is_valid_partial(n, want):
    got = n.is_valid()
    assert got == want, f"{n!r}.is_valid() = {got}, want {want}"


# --- merge ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "s, mask, want",
    [
        pytest.param("smol", DEFAULT_MASK, Name("registry.ollama.ai", "library", "smol", "latest"), id="model"),
        pytest.param("smol:7b", DEFAULT_MASK, Name("registry.ollama.ai", "library", "smol", "7b"), id="model-tag"),
        pytest.param("me/smol", DEFAULT_MASK, Name("registry.ollama.ai", "me", "smol", "latest"), id="ns-model"),
        pytest.param("h.io/me/smol:1", DEFAULT_MASK, Name("h.io", "me", "smol", "1"), id="full-kept"),
        pytest.param("h.io//smol", DEFAULT_MASK, Name("h.io", "library", "smol", "latest"), id="empty-namespace"),
        pytest.param("", DEFAULT_MASK, Name("registry.ollama.ai", "library", "", "latest"), id="mask-model-ignored"),
        pytest.param("smol", "example.com/library/_:latest", Name("example.com", "library", "smol", "latest"),
                     id="custom-mask"),
        pytest.param("smol", Name("example.com", "x", "_", "v1"), Name("example.com", "x", "smol", "v1"),
                     id="mask-as-name"),
        pytest.param("-bad:tag", DEFAULT_MASK, Name("registry.ollama.ai", "library", "-bad", "tag"),
                     id="invalid-part-kept"),
    ],
)
def test_merge(s, mask, want):
    got = Name.parse(s).merge(mask)
    got_fields = (got.host, got.namespace, got.model, got.tag)
    want_fields = (want.host, want.namespace, want.model, want.tag)
    assert got_fields == want_fields, f"parse({s!r}).merge({mask!r}) = {got!r}, want {want!r}"


def test_merge_mask_str_and_name_agree():
    n = Name.parse("smol")
    got, want = n.merge(DEFAULT_MASK), n.merge(Name.parse(DEFAULT_MASK))
    assert got == want, f"merge(str) = {got!r}, merge(Name) = {want!r}"


def test_merge_rejects_other_mask_types():
    with pytest.raises(TypeError):
        Name.parse("smol").merge(42)  # type: ignore[arg-type]


# --- case-insensitive comparison ---------------------------------------------------


@pytest.mark.parametrize(
    "a, b, equal",
    [
        pytest.param("Registry.Ollama.AI/Library/Smol:Latest", "registry.ollama.ai/library/smol:latest", True,
                     id="all-parts"),
        pytest.param("SMOL", "smol", True, id="model-only"),
        pytest.param("smol:Q4_K_M", "smol:q4_k_m", True, id="tag"),
        pytest.param("smol", "smol2", False, id="different-model"),
        pytest.param("a/smol", "b/smol", False, id="different-namespace"),
        pytest.param("smol:latest", "smol", False, id="missing-tag-differs"),
    ],
)
def test_case_insensitive_eq_and_hash(a, b, equal):
    na, nb = Name.parse(a), Name.parse(b)
    assert (na == nb) == equal, f"parse({a!r}) == parse({b!r}) is {na == nb}, want {equal}"
    assert (na != nb) != equal, f"parse({a!r}) != parse({b!r}) is {na != nb}, want {not equal}"
    if equal:
        assert hash(na) == hash(nb), f"hash(parse({a!r})) != hash(parse({b!r}))"
        assert len({na, nb}) == 1, f"set of parse({a!r}), parse({b!r}) has 2 members, want 1"


def test_casing_kept():
    s = "Registry.Ollama.AI/Library/Smol:Latest"
    n = Name.parse(s)
    assert str(n) == s, f"str(parse({s!r})) = {str(n)!r}, want {s!r}"
    assert n.path_parts() == ("Registry.Ollama.AI", "Library", "Smol", "Latest"), f"{n!r}.path_parts() lost casing"
    assert {n: 1}[Name.parse(s.lower())] == 1, "dict lookup with other casing failed"


def test_not_equal_to_string():
    n = Name.parse("smol")
    assert n != "smol", "Name compared equal to a str"


# --- str and display_shortest ----------------------------------------------------------


@pytest.mark.parametrize(
    "n, want",
    [
        pytest.param(FULL, "registry.ollama.ai/library/smol:latest", id="full"),
        pytest.param(Name(model="smol"), "smol", id="model"),
        pytest.param(Name(model="smol", tag="1"), "smol:1", id="model-tag"),
        pytest.param(Name(namespace="me", model="smol"), "me/smol", id="ns-model"),
        pytest.param(Name(host="h.io", model="smol"), "h.io//smol", id="host-no-namespace"),
        pytest.param(Name(tag="1"), ":1", id="tag-only"),
        pytest.param(Name(), "", id="empty"),
    ],
)
def test_str_round_trips(n, want):
    got = str(n)
    assert got == want, f"str({n!r}) = {got!r}, want {want!r}"
    back = Name.parse(got)
    assert (back.host, back.namespace, back.model, back.tag) == (n.host, n.namespace, n.model, n.tag), (
        f"parse({got!r}) = {back!r}, want {n!r}"
    )


@pytest.mark.parametrize(
    "s, mask, want",
    [
        pytest.param("registry.ollama.ai/library/smol:latest", DEFAULT_MASK, "smol", id="all-default"),
        pytest.param("registry.ollama.ai/library/smol:7b", DEFAULT_MASK, "smol:7b", id="tag-differs"),
        pytest.param("registry.ollama.ai/me/smol:latest", DEFAULT_MASK, "me/smol", id="namespace-differs"),
        pytest.param("h.io/library/smol:latest", DEFAULT_MASK, "h.io/library/smol", id="host-differs-keeps-ns"),
        pytest.param("REGISTRY.ollama.ai/Library/smol:LATEST", DEFAULT_MASK, "smol", id="case-insensitive"),
        pytest.param("example.com/library/smol:latest", "example.com/library/_:latest", "smol", id="custom-mask"),
        pytest.param("smol", DEFAULT_MASK, "smol", id="partial"),
    ],
)
def test_display_shortest(s, mask, want):
    n = Name.parse(s)
    got = n.display_shortest(mask)
    assert got == want, f"parse({s!r}).display_shortest({mask!r}) = {got!r}, want {want!r}"
    back = Name.parse(got).merge(mask)
    assert back == n.merge(mask), f"parse({got!r}).merge({mask!r}) = {back!r}, want {n.merge(mask)!r}"


def test_display_shortest_default_mask():
    got = FULL.display_shortest()
    assert got == "smol", f"{FULL!r}.display_shortest() = {got!r}, want 'smol'"


# --- parse_ref ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "s, mask, want",
    [
        pytest.param(
            "http://127.0.0.1:5000/library/smol:latest", DEFAULT_MASK,
            Ref("http", Name("127.0.0.1:5000", "library", "smol", "latest")),
            id="spec-example",
        ),
        pytest.param("smol", DEFAULT_MASK, Ref("https", FULL), id="default-scheme"),
        pytest.param("https://smol", DEFAULT_MASK, Ref("https", FULL), id="https"),
        pytest.param("http://smol", DEFAULT_MASK, Ref("http", FULL), id="http"),
        pytest.param("https+insecure://smol", DEFAULT_MASK, Ref("https+insecure", FULL), id="https-insecure"),
        pytest.param("HTTP://smol", DEFAULT_MASK, Ref("http", FULL), id="scheme-case-insensitive"),
        pytest.param(f"smol@sha256:{HEX}", DEFAULT_MASK, Ref("https", FULL, Digest("sha256", HEX)), id="digest"),
        pytest.param(f"smol@sha256-{HEX}", DEFAULT_MASK, Ref("https", FULL, Digest("sha256", HEX)),
                     id="digest-file-form"),
        pytest.param(
            f"http://h.io:5000/me/smol:1@sha256:{HEX}", DEFAULT_MASK,
            Ref("http", Name("h.io:5000", "me", "smol", "1"), Digest("sha256", HEX)),
            id="everything",
        ),
        pytest.param("smol", "example.com/library/_:latest",
                     Ref("https", Name("example.com", "library", "smol", "latest")), id="mask-str"),
        pytest.param("smol", Name("example.com", "library", "_", "latest"),
                     Ref("https", Name("example.com", "library", "smol", "latest")), id="mask-name"),
    ],
)
def test_parse_ref(s, mask, want):
    got = parse_ref(s, mask)
    assert got == want, f"parse_ref({s!r}) = {got!r}, want {want!r}"


def test_parse_ref_default_mask():
    got = parse_ref("smol")
    want = Ref("https", FULL, None)
    assert got == want, f"parse_ref('smol') = {got!r}, want {want!r}"


@pytest.mark.parametrize(
    "s, want_msg",
    [
        pytest.param("ftp://smol", 'unsupported scheme "ftp"', id="ftp"),
        pytest.param("file:///etc/passwd", "unsupported scheme", id="file"),
        pytest.param("https+foo://smol", "unsupported scheme", id="unknown-plus"),
        pytest.param("smol@sha256:abc", "invalid digest", id="short-digest"),
        pytest.param("smol@", "invalid digest", id="empty-digest"),
        pytest.param("smol@sha256:", "invalid digest", id="alg-only-digest"),
        pytest.param(f"smol@sha256:{HEX.upper()}", "invalid digest", id="uppercase-digest"),
        pytest.param(f"smol@blake3:{HEX}", "invalid digest", id="blake3-digest"),
        pytest.param(f"smol@md5:{HEX}", "invalid digest", id="wrong-alg-digest"),
        pytest.param("://", 'invalid or missing name: ""', id="seed-empty-scheme-and-name"),
        pytest.param("", 'invalid or missing name: ""', id="empty"),
        pytest.param("http://", 'invalid or missing name: ""', id="scheme-only"),
        pytest.param(f"@sha256:{HEX}", 'invalid or missing name: ""', id="digest-only"),
        pytest.param("-smol", 'invalid or missing name: "-smol"', id="bad-first-char"),
        pytest.param("a b", 'invalid or missing name: "a b"', id="space"),
        pytest.param('a"b', 'invalid or missing name: "a\\"b"', id="go-quoting-quote"),
        pytest.param("a\nb", 'invalid or missing name: "a\\nb"', id="go-quoting-newline"),
        pytest.param("host:5000/smol", 'invalid or missing name: "host:5000/smol"', id="port-needs-namespace"),
        pytest.param("h/a//b/m", 'invalid or missing name: "h/a//b/m"', id="empty-namespace-level"),
        pytest.param("h/a/-b/m", 'invalid or missing name: "h/a/-b/m"', id="bad-namespace-level"),
        pytest.param("h/" + "n/" * 9 + "m", 'invalid or missing name', id="too-many-namespace-levels"),
        pytest.param("http://-x/y/z", 'invalid or missing name: "-x/y/z"', id="quotes-name-part"),
    ],
)
def test_parse_ref_invalid(s, want_msg):
    with pytest.raises(InvalidNameError) as info:
        got = parse_ref(s)
        pytest.fail(f"parse_ref({s!r}) = {got!r}, want InvalidNameError")
    msg = str(info.value)
    assert want_msg in msg, f"parse_ref({s!r}) error = {msg!r}, want it to contain {want_msg!r}"


@pytest.mark.parametrize("value", [None, 42], ids=["none", "int"])
def test_parse_ref_non_string(value):
    with pytest.raises(InvalidNameError, match="invalid or missing name"):
        parse_ref(value)  # type: ignore[arg-type]


def test_invalid_name_error_is_value_error():
    with pytest.raises(ValueError):
        parse_ref("-")


def test_invalid_digest_chained():
    with pytest.raises(InvalidNameError) as info:
        parse_ref("smol@sha256:abc")
    assert info.value.__cause__ is not None, "invalid digest error not chained with 'from'"


@pytest.mark.parametrize(
    "s, want_url, want_verify",
    [
        pytest.param("http://127.0.0.1:5000/library/smol:latest", "http://127.0.0.1:5000/v2/library/smol", True,
                     id="spec-example"),
        pytest.param("smol", "https://registry.ollama.ai/v2/library/smol", True, id="default"),
        pytest.param("https+insecure://h.io/me/smol:1", "https://h.io/v2/me/smol", False, id="insecure"),
        pytest.param(f"h.io/me/smol@sha256:{HEX}", "https://h.io/v2/me/smol", True, id="digest-not-in-base"),
    ],
)
def test_ref_base_url_and_verify_tls(s, want_url, want_verify):
    ref = parse_ref(s)
    assert ref.base_url == want_url, f"parse_ref({s!r}).base_url = {ref.base_url!r}, want {want_url!r}"
    assert ref.verify_tls == want_verify, f"parse_ref({s!r}).verify_tls = {ref.verify_tls}, want {want_verify}"


# --- path safety -----------------------------------------------------------------------------

TRAVERSAL = [
    "..", ".", "../x", "./x", "a/../../b", "../../../etc/passwd", "ns/..", "../..",
    "x:..", "x:.", "..:latest", "model:../../x", "h/ns/m:t/x", "model:a/b",
    ".hidden", "ns/.hidden", "..//x", "../ns/x", "..\\..\\x", "a\\b", "x:\\..",
    "http://../x/y", "x/..:latest", "h.io/../m", "~/x", "%2e%2e/x", "x\x00", "x\n",
]


@pytest.mark.parametrize("s", TRAVERSAL, ids=[repr(s) for s in TRAVERSAL])
def test_traversal_not_fully_qualified(s):
    n = Name.parse(s).merge(DEFAULT_MASK)
    assert not n.is_fully_qualified(), f"parse({s!r}).merge(DEFAULT_MASK) = {n!r} is fully qualified, want not"
    with pytest.raises(InvalidNameError, match="invalid or missing name"):
        got = parse_ref(s)
        pytest.fail(f"parse_ref({s!r}) = {got!r}, want InvalidNameError")


# Inputs that look hostile but parse to harmless, fully qualified names.
HARMLESS = ["/etc/passwd", "a..b", "h..io/ns/m:t", "x.:y.", "_/_/_:_", "host:5000//m", "x:a/b/c", "h/team/vision/detector:v2"]


@pytest.mark.parametrize("s", TRAVERSAL + HARMLESS, ids=[repr(s) for s in TRAVERSAL + HARMLESS])
def test_fully_qualified_parts_are_safe_path_components(s):
    n = Name.parse(s).merge(DEFAULT_MASK)
    if not n.is_fully_qualified():
        return
    for part in n.path_parts():
        assert part not in ("", ".", ".."), f"parse({s!r}) gives path part {part!r}"
        assert "/" not in part and "\\" not in part, f"parse({s!r}) gives path part {part!r} with a separator"
        assert not part.startswith("."), f"parse({s!r}) gives hidden or relative path part {part!r}"


@pytest.mark.parametrize("s", HARMLESS, ids=[repr(s) for s in HARMLESS])
def test_harmless_lookalikes_are_accepted(s):
    n = Name.parse(s).merge(DEFAULT_MASK)
    assert n.is_fully_qualified(), f"parse({s!r}).merge(DEFAULT_MASK) = {n!r} not fully qualified, want it to be"


@pytest.mark.parametrize(
    "n",
    [
        pytest.param(Name("..", "ns", "m", "t"), id="host-dotdot"),
        pytest.param(Name("h", "..", "m", "t"), id="namespace-dotdot"),
        pytest.param(Name("h", "ns", "..", "t"), id="model-dotdot"),
        pytest.param(Name("h", "ns", "m", ".."), id="tag-dotdot"),
        pytest.param(Name("h", "ns", "m", "."), id="tag-dot"),
        pytest.param(Name("/etc", "ns", "m", "t"), id="absolute-host"),
        pytest.param(Name("h", "ns", "m", "a/b"), id="slash-in-tag"),
        pytest.param(Name("h", "ns", "m", "../../x"), id="traversal-in-tag"),
        pytest.param(Name("h", "a/../b", "m", "t"), id="traversal-in-namespace"),
        pytest.param(Name("h", "a//b", "m", "t"), id="empty-namespace-level"),
        pytest.param(Name("h", "/a", "m", "t"), id="absolute-namespace"),
        pytest.param(Name("h", "ns", "m/../x", "t"), id="slash-in-model"),
        pytest.param(Name("h", "ns", "m", ""), id="missing-tag"),
    ],
)
def test_path_parts_rejects_unsafe(n):
    with pytest.raises(InvalidNameError, match="invalid or missing name"):
        got = n.path_parts()
        pytest.fail(f"{n!r}.path_parts() = {got!r}, want InvalidNameError")


def test_nested_namespace_is_one_directory_per_level():
    n = Name.parse("h:5000/team/vision/detector:v2")
    assert n.path_parts() == ("h:5000", "team", "vision", "detector", "v2")
    assert parse_ref("http://h:5000/team/vision/detector:v2").base_url == "http://h:5000/v2/team/vision/detector"
    # Without its host a nested name would read as host/namespace, so ls keeps the host.
    assert n.display_shortest("h:5000/team/_:v2") == "h:5000/team/vision/detector"
    assert Name.parse(n.display_shortest()).merge(DEFAULT_MASK) == n


def test_path_parts_fully_qualified():
    got = FULL.path_parts()
    want = ("registry.ollama.ai", "library", "smol", "latest")
    assert got == want, f"{FULL!r}.path_parts() = {got!r}, want {want!r}"
