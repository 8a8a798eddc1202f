"""Registry authentication as the container ecosystem does it: credentials, Basic, and the Docker token flow.

Credentials for a registry host come, first found wins, from:

1. ``Registry(credentials={host: (user, password)})``;
2. the containers auth file: ``$REGISTRY_AUTH_FILE``, else
   ``$XDG_RUNTIME_DIR/containers/auth.json``;
3. Docker's ``$DOCKER_CONFIG/config.json`` (default ``~/.docker/config.json``):
   ``credHelpers[host]`` or ``credsStore`` through ``docker-credential-<name>
   get``, else ``auths[host].auth`` (base64 ``user:password``) or
   ``identitytoken``;
4. ``HF_TOKEN`` for ``hf.co`` and ``huggingface.co``.

``RegistryAuth`` is a requests auth hook bound to one registry host.  It
answers that host's ``401`` challenges: ``Basic`` with the credentials,
``Bearer realm=…,service=…,scope=…`` by asking the realm for a token
(anonymously when there are no credentials), caching it per scope until it
expires, and asking again on a 401 in the middle of a long pull.  It adds
``Authorization`` only to requests for its own host: never to a redirect
target, a ``Content-Location`` on another host, or a mirror (requests also
drops the header on cross-host redirects).  Nothing here prints or logs a
secret.

Imports errors only (and requests).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import requests
import requests.auth

from .errors import RegistryError

__all__ = ["Credentials", "RegistryAuth", "find_credentials", "save_docker_login"]

# A token without expires_in is good for 60 s (the distribution spec's default).
DEFAULT_TOKEN_TTL_S = 60.0
# Ask for a new token this long before the old one expires.
TOKEN_MARGIN_S = 10.0
HELPER_TIMEOUT_S = 10.0
_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')


class Credentials:
    """A user name and a secret (password or token); the secret never appears in repr or str."""

    __slots__ = ("username", "secret", "identity_token")

    def __init__(self, username: str = "", secret: str = "", identity_token: str = "") -> None:
        self.username = username
        self.secret = secret
        self.identity_token = identity_token

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, secret=***)"

    __str__ = __repr__


def _host_key(host: str) -> str:
    """Normalize a registry key as Docker's config files write it ("https://index.docker.io/v1/" -> "index.docker.io")."""
    if "://" in host:
        host = urlsplit(host).netloc
    return host.rstrip("/").lower()


def _from_auths(auths: object, host: str) -> Credentials | None:
    if not isinstance(auths, dict):
        return None
    for key, entry in auths.items():
        if _host_key(str(key)) != host or not isinstance(entry, dict):
            continue
        if entry.get("identitytoken"):
            return Credentials(identity_token=str(entry["identitytoken"]))
        raw = entry.get("auth")
        if raw:
            try:
                user, _, secret = base64.b64decode(str(raw)).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                continue
            return Credentials(user, secret)
        if entry.get("username") and entry.get("password"):
            return Credentials(str(entry["username"]), str(entry["password"]))
    return None


def _from_helper(name: str, host: str) -> Credentials | None:
    exe = shutil.which(f"docker-credential-{name}")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "get"], input=host, capture_output=True, text=True, timeout=HELPER_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    try:
        doc = json.loads(out.stdout)
    except ValueError:
        return None
    user, secret = str(doc.get("Username") or ""), str(doc.get("Secret") or "")
    if not secret:
        return None
    return Credentials(identity_token=secret) if user == "<token>" else Credentials(user, secret)


def _read_json(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def docker_config_path() -> Path:
    base = os.environ.get("DOCKER_CONFIG", "").strip()
    return (Path(base) if base else Path.home() / ".docker") / "config.json"


def find_credentials(host: str, explicit: dict[str, tuple[str, str]] | None = None) -> Credentials | None:
    """Return the credentials for a registry host (``host[:port]``), or None for an anonymous pull."""
    host = _host_key(host)
    for key, (user, secret) in (explicit or {}).items():
        if _host_key(key) == host:
            return Credentials(user, secret)
    auth_file = os.environ.get("REGISTRY_AUTH_FILE", "").strip()
    runtime = os.environ.get("XDG_RUNTIME_DIR", "").strip()
    candidates = [Path(auth_file)] if auth_file else ([Path(runtime) / "containers" / "auth.json"] if runtime else [])
    for path in candidates:
        found = _from_auths(_read_json(path).get("auths"), host)
        if found:
            return found
    config = _read_json(docker_config_path())
    helpers = config.get("credHelpers")
    helper = helpers.get(host) if isinstance(helpers, dict) else None
    if helper or config.get("credsStore"):
        found = _from_helper(str(helper or config["credsStore"]), host)
        if found:
            return found
    found = _from_auths(config.get("auths"), host)
    if found:
        return found
    token = os.environ.get("HF_TOKEN", "").strip()
    if token and host in ("hf.co", "huggingface.co"):
        return Credentials("hf", token)
    return None


def save_docker_login(host: str, username: str, secret: str) -> Path:
    """Write host's credentials into Docker's config.json (``chunkpull login``), as ``docker login`` does; return its path."""
    path = docker_config_path()
    doc = _read_json(path)
    auths = doc.setdefault("auths", {})
    auths[_host_key(host)] = {"auth": base64.b64encode(f"{username}:{secret}".encode()).decode()}
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent="\t")
    os.replace(tmp, path)
    return path


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """Return (scheme, params) of a WWW-Authenticate header (``Bearer realm="…",service="…"``)."""
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), {k.lower(): v for k, v in _CHALLENGE.findall(rest)}


class RegistryAuth(requests.auth.AuthBase):
    """Answer one registry host's auth challenges (see the module docstring); thread-safe, shared by a pull's workers."""

    def __init__(self, host: str, credentials: Credentials | None, *, timeout_s: tuple[float, float] = (10.0, 30.0),
                 get: Callable[..., requests.Response] = requests.get, clock=time.monotonic) -> None:
        self.host = _host_key(host)
        self.credentials = credentials
        self.timeout_s = timeout_s
        # How the token realm is asked: the pull's transport passes a GET with
        # its own TLS trust (private CAs) and proxy settings.
        self._get = get
        self._clock = clock
        self._lock = threading.Lock()
        self._scheme: str | None = None  # what the host asked for: "basic" or "bearer"
        self._challenge: dict[str, str] = {}
        self._tokens: dict[str, tuple[str, float]] = {}  # scope -> (token, expires at)

    def refusal_hint(self) -> str:
        """Say what to do about a final 401/403 from this host."""
        if self.credentials is None:
            return (f"no credentials for {self.host} were found: run `chunkpull login {self.host}`, "
                    "or add them to REGISTRY_AUTH_FILE or Docker's config.json")
        who = f"user {self.credentials.username!r}" if self.credentials.username else "the stored token"
        return f"the registry refused {who} for {self.host}: check the credentials and that they grant pull access"

    def _mine(self, url: str) -> bool:
        return urlsplit(url).netloc.lower() == self.host

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        if not self._mine(r.url):
            return r
        header = self._header(self._scope_for(r.url), fresh=False)
        if header:
            r.headers["Authorization"] = header
        r.register_hook("response", self._handle_401)
        return r

    def _scope_for(self, url: str) -> str:
        # /v2/<repository>/(manifests|blobs|chunksums)/… -> repository:<repository>:pull
        path = urlsplit(url).path
        m = re.match(r"/v2/(.+?)/(?:manifests|blobs|chunksums|tags)/", path)
        return f"repository:{m.group(1)}:pull" if m else self._challenge.get("scope", "")

    def _header(self, scope: str, *, fresh: bool) -> str | None:
        with self._lock:
            if self._scheme == "basic" and self.credentials and self.credentials.username:
                pair = f"{self.credentials.username}:{self.credentials.secret}".encode()
                return "Basic " + base64.b64encode(pair).decode()
            if self._scheme != "bearer":
                return None
            token = self._tokens.get(scope)
            if token and not fresh and self._clock() < token[1]:
                return f"Bearer {token[0]}"
            return f"Bearer {self._fetch_token(scope)}"

    def _fetch_token(self, scope: str) -> str:
        """Ask the realm for a token for scope (the lock is held); cache it."""
        realm = self._challenge.get("realm", "")
        if not realm.startswith(("https://", "http://")):
            raise RegistryError(401, "UNAUTHORIZED", f"the registry's token realm {realm[:100]!r} is not an http(s) URL", f"https://{self.host}")
        params = {k: v for k, v in (("service", self._challenge.get("service", "")), ("scope", scope)) if v}
        auth = None
        c = self.credentials
        if c is not None and c.identity_token:
            params.update(grant_type="refresh_token", refresh_token=c.identity_token)
        elif c is not None and c.username:
            auth = (c.username, c.secret)
        try:
            r = self._get(realm, params=params, auth=auth, timeout=self.timeout_s)
        except requests.RequestException as err:
            raise RegistryError(0, "UNAUTHORIZED", f"cannot reach the token server: {type(err).__name__}", realm.split("?", 1)[0]) from None
        if r.status_code != 200:
            who = "with the stored credentials" if auth or (c and c.identity_token) else "anonymously (run `chunkpull login` or set credentials)"
            raise RegistryError(r.status_code, "UNAUTHORIZED", f"the token server refused a token for {scope or 'the registry'} {who}", realm.split("?", 1)[0])
        try:
            doc = r.json()
            token = str(doc.get("token") or doc.get("access_token") or "")
            ttl = float(doc.get("expires_in") or DEFAULT_TOKEN_TTL_S)
        except (ValueError, AttributeError):
            token, ttl = "", 0.0
        if not token:
            raise RegistryError(r.status_code, "UNAUTHORIZED", "the token server answered without a token", realm.split("?", 1)[0])
        self._tokens[scope] = (token, self._clock() + max(0.0, ttl - TOKEN_MARGIN_S))
        return token

    def _handle_401(self, r: requests.Response, **kwargs) -> requests.Response:
        if r.status_code != 401 or not self._mine(r.url) or getattr(r.request, "chunkpull_retried", False):
            return r
        scheme, params = parse_challenge(r.headers.get("WWW-Authenticate", ""))
        if scheme not in ("basic", "bearer"):
            return r
        with self._lock:
            self._scheme, self._challenge = scheme, params
        if scheme == "basic" and not (self.credentials and self.credentials.username):
            return r  # nothing to answer with: the 401 stands
        scope = params.get("scope") or self._scope_for(r.url)
        # Another worker may have fetched a new token since this request was
        # sent: use it rather than asking the realm again.
        sent = r.request.headers.get("Authorization")
        header = self._header(scope, fresh=False)
        if header is None or header == sent:
            header = self._header(scope, fresh=True)
        if header is None:
            return r
        r.content  # noqa: B018 - drain the 401's body so the connection can be reused
        r.close()
        prep = r.request.copy()
        prep.headers["Authorization"] = header
        prep.chunkpull_retried = True  # one answer per challenge: a second 401 is final
        again = r.connection.send(prep, **kwargs)
        again.history.append(r)
        again.request = prep
        return again
