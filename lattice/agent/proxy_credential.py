"""The outbound listener's credential (proxy mode): a random secret per proxy that only the app holds.

Envoy asks for it on the outbound listener (translate/proxy_auth.py). The agent makes it at start
and hands it out three ways, and nowhere else (never logged, never on a command line, never sent
to the control plane):
- to the app, inside `HTTP_PROXY`/`http_proxy` (`http://lattice:<secret>@127.0.10.x:15001`),
  which curl, Python's urllib and requests, and Go turn into `Proxy-Authorization` by themselves;
- to Envoy, as the htpasswd line of its SHA-1 in Envoy's environment (PROXY_USERS_ENV);
- to apps started apart from `lattice run` (or under `lattice agent`): the same lines in
  `proxy.env` (0600) in the sidecar's run directory (0700), a file `set -a; . proxy.env` or
  systemd's `EnvironmentFile=` reads.
An agent that took over (agent/handover.py) reads the secret back from that file: the app it
adopts keeps the environment it was started with.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from pathlib import Path

from lattice.translate.agent_names import PROXY_USER, PROXY_USERS_ENV

FILE = "proxy.env"
_VARIABLES = ("HTTP_PROXY", "http_proxy")


class ProxyCredential:
    def __init__(self, secret: str) -> None:
        self._secret = secret

    def __repr__(self) -> str:  # never the secret, whatever prints this
        return "ProxyCredential(<secret>)"

    @classmethod
    def for_run_dir(cls, run_dir: Path) -> ProxyCredential:
        """The secret written in `run_dir` (an agent taking over), or a new one."""
        path = run_dir / FILE
        if path.exists():
            for line in path.read_text().splitlines():
                if line.startswith("HTTP_PROXY="):
                    userinfo = line.split("://", 1)[1].split("@", 1)[0]
                    return cls(userinfo.split(":", 1)[1])
        return cls(secrets.token_urlsafe(32))  # 256 bits, URL-safe: no escaping in the proxy URL

    def url(self, address: str, port: int) -> str:
        return f"http://{PROXY_USER}:{self._secret}@{address}:{port}"

    def envoy_env(self) -> dict[str, str]:
        """What Envoy's basic_auth filter reads: the user and the SHA-1 of the secret, htpasswd style."""
        digest = base64.b64encode(hashlib.sha1(self._secret.encode()).digest()).decode()
        return {PROXY_USERS_ENV: f"{PROXY_USER}:{{SHA}}{digest}"}

    def app_env(self, address: str, port: int) -> dict[str, str]:
        return dict.fromkeys(_VARIABLES, self.url(address, port))

    def write(self, run_dir: Path, address: str, port: int) -> Path:
        """`proxy.env`, readable by this user alone; never through a link someone else planted."""
        path = run_dir / FILE
        text = "# The credential of this workload's outbound listener (lattice run); keep it private.\n" + "".join(
            f"{name}={value}\n" for name, value in self.app_env(address, port).items()
        )
        temporary = run_dir / f".{FILE}.{os.getpid()}"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(temporary, path)
        return path
