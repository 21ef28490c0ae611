"""Finding and calling the control plane's REST API."""

from __future__ import annotations

import errno
import json
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable

import typer

from lattice.cli.output import fail
from lattice.server.config import ADMIN_TOKEN_FILE, lattice_home, read_discovery


# `--server` is the control plane to talk to, in every command: the REST API for these, the agent
# API for a sidecar's (`AgentServerOpt`). Each accepts the other's default address too (see `_this_api`),
# and several replicas, comma-separated.
API_PORT, AGENT_PORT = 15080, 15012
ServerOpt = typer.Option(
    None,
    "--server",
    envvar="LATTICE_SERVER",
    help="The control plane to talk to: its REST API, http://HOST:15080 (HOST alone will do; replicas "
    "comma-separated, tried in turn; default: from $LATTICE_HOME/server.json).",
)
AgentServerOpt = typer.Option(
    None,
    "--server",
    envvar="LATTICE_AGENT_SERVER",
    help="The control plane to talk to: its agent API, https://HOST:15012 (HOST alone will do; default: from "
    "$LATTICE_HOME/server.json).",
)


class ApiError(Exception):
    def __init__(self, message: str, status: int = 0, body: dict | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body or {}


def agent_url(explicit: str | None = None) -> str:
    """The control plane's agent API (certificates, registration), for `lattice run`/`agent`/`gateway`.
    Several addresses may be given, comma-separated; each is read alike."""
    return _discover(explicit, "LATTICE_AGENT_SERVER", "agent", ("https", AGENT_PORT), ("http", API_PORT))


def server_url(explicit: str | None = None) -> str:
    """The control plane's admin REST API, for every other command."""
    return _discover(explicit, "LATTICE_SERVER", "api", ("http", API_PORT), ("https", AGENT_PORT))


def _discover(explicit: str | None, variable: str, key: str, wanted: tuple, other: tuple) -> str:
    """An explicit URL, else $variable, else what the running server wrote under $LATTICE_HOME."""
    url = explicit or os.environ.get(variable)
    if url:
        return ",".join(_this_api(u.strip(), wanted, other) for u in url.split(",") if u.strip())
    info = read_discovery(lattice_home())
    if info is None:
        raise ApiError(
            f"no control plane is running for LATTICE_HOME={lattice_home()}; start one with `lattice server` or "
            f"pass --server {wanted[0]}://HOST:{wanted[1]}"
        )
    return info[key]


def _this_api(url: str, wanted: tuple[str, int], other: tuple[str, int]) -> str:
    """`url` as an address of the API wanted: HOST alone gets its scheme and default port, HOST:PORT
    its scheme; the other API's default address on a host (the agent API's https://HOST:15012 or
    HOST:15012 given to a REST command, or the reverse) means this API's default address on that host."""
    scheme, sep, rest = url.rstrip("/").rpartition("://")
    host, _, port = rest.rpartition(":") if _has_port(rest) else (rest, "", "")
    if not port or (scheme or other[0], port) == (other[0], str(other[1])):
        scheme, port = wanted[0], str(wanted[1])
    scheme = scheme or wanted[0]
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # a bare IPv6 address
    return f"{scheme}://{host}:{port}"


def _has_port(hostport: str) -> bool:
    """Whether HOST:PORT ends in a port ([v6]:PORT too; a bare IPv6 address has none)."""
    head, sep, tail = hostport.rpartition(":")
    if not sep or not tail.isdigit():
        return False
    return head.startswith("[") and head.endswith("]") or ":" not in head


def admin_credential() -> str:
    """The admin token: $LATTICE_ADMIN_TOKEN, or the file `lattice server` wrote under $LATTICE_HOME."""
    token = os.environ.get("LATTICE_ADMIN_TOKEN")
    if token:
        return token.strip()
    try:
        return (lattice_home() / ADMIN_TOKEN_FILE).read_text().strip()
    except OSError:
        return ""


def connect(server: str | None) -> Client:
    """A client of the admin API, or a clear error and exit."""
    try:
        return Client(server_url(server))
    except ApiError as e:
        fail(str(e))


def call(fn, *args, **kwargs):
    """fn(*args), with an API error turned into a clear message and exit."""
    try:
        return fn(*args, **kwargs)
    except ApiError as e:
        fail(str(e))


class Client:
    """The admin REST API at `base`: one URL, or several comma-separated (replicas of one control
    plane, as `lattice run --server` takes them). A replica that refuses the connection or cannot
    be found is skipped for the next; one that answers, even with an error, is the answer."""

    def __init__(self, base: str, timeout: float = 10.0, token: str | None = None) -> None:
        self.bases = [b.strip().rstrip("/") for b in base.split(",") if b.strip()] or [base]
        self.timeout = timeout
        self.token = admin_credential() if token is None else token

    @property
    def base(self) -> str:
        """The replica in use: the first given, or the first that took a connection."""
        return self.bases[0]

    def _open(self, url_path: str, make: Callable[[str], urllib.request.Request], timeout: float | None):
        """urlopen on each replica in turn until one takes the connection; that one comes first after."""
        for i, base in enumerate(self.bases):
            try:
                response = urllib.request.urlopen(make(base + url_path), timeout=timeout)
            except urllib.error.URLError as e:
                if i + 1 < len(self.bases) and _not_connected(e):
                    continue
                raise
            self.bases.insert(0, self.bases.pop(i))
            return response
        raise AssertionError("unreachable: the last replica's error is raised")

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        query: dict | None = None,
        content_type: str = "application/yaml",
    ) -> dict:
        url_path = path + (f"?{urllib.parse.urlencode(query)}" if query else "")
        headers = {"Content-Type": content_type} if body is not None else {}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"

        def make(url: str) -> urllib.request.Request:
            return urllib.request.Request(url, data=body, method=method, headers=headers)

        try:
            with self._open(url_path, make, self.timeout) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as e:
            payload = _json(e.read())
            message = payload.get("error") or f"HTTP {e.code}"
            if e.code == 401 and not self.token:
                message += f"; no admin token found in {lattice_home() / ADMIN_TOKEN_FILE} or $LATTICE_ADMIN_TOKEN"
            raise ApiError(message, e.code, payload) from None
        except (urllib.error.URLError, OSError) as e:
            raise self._unreachable(e) from None

    def get(self, path: str, **query) -> dict:
        return self.request("GET", path, query={k: v for k, v in query.items() if v is not None} or None)

    def stream(self, endpoint: str, query: dict):
        """The JSON objects of a streaming (one per line) answer, as they arrive; no read timeout."""
        url_path = f"{endpoint}?{urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})}"
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            with self._open(url_path, lambda url: urllib.request.Request(url, headers=headers), None) as response:
                for line in response:
                    if line.strip():
                        yield json.loads(line)
        except urllib.error.HTTPError as e:
            raise ApiError(_json(e.read()).get("error") or f"HTTP {e.code}", e.code) from None
        except (urllib.error.URLError, OSError) as e:
            raise self._unreachable(e) from None

    def _unreachable(self, error: OSError) -> ApiError:
        reason = getattr(error, "reason", error)
        at = ", ".join(self.bases)
        return ApiError(f"cannot reach the control plane at {at}: {reason}; is `lattice server` running?")


def _not_connected(error: urllib.error.URLError) -> bool:
    """Whether the request never reached the replica (refused, no such host, no route), so another
    may take it without it being done twice."""
    reason = error.reason
    if isinstance(error, urllib.error.HTTPError) or not isinstance(reason, OSError):
        return False
    return isinstance(reason, (ConnectionRefusedError, socket.gaierror)) or reason.errno in (
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
    )


def _json(raw: bytes) -> dict:
    try:
        value = json.loads(raw)
    except ValueError:
        return {"error": raw.decode(errors="replace")[:500]}
    return value if isinstance(value, dict) else {"error": str(value)}
