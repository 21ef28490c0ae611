"""The control plane's credential for agents' ports, and the bounds on what agents answer.

An agent's port serves readiness and metrics to anyone who can reach it, but its config dump, live
tap, telemetry window and request records only to a caller with that agent's credential: a key the
control plane derives for each proxy id from its signing CA's private key (so every replica sharing
the CA derives the same one) and hands the agent with each certificate, over the agents' TLS API.
The app never sees it; the CLI reaches those endpoints only through the control plane's admin API.

Answers from agents are read with a size bound and checked before they join a mesh-wide view
(`bounded_json`), so one agent cannot exhaust the control plane's memory or break a view for
everyone with a malformed answer.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Callable

import aiohttp

AGENT_KEY_HEADER = "Authorization"
MAX_ANSWER_BYTES = 4 << 20  # one agent's answer (a window summary, request records)


class AgentAnswerError(ValueError):
    pass


def derive_key(ca_private_pem: bytes, proxy_id: str) -> str:
    secret = hashlib.sha256(b"lattice agent port\0" + ca_private_pem).digest()
    return hmac.new(secret, proxy_id.encode(), hashlib.sha256).hexdigest()


def credential_middleware(key_for: Callable[[str, int], str | None]):
    """An aiohttp client middleware adding the agent's credential to requests for an agent's port;
    `key_for(host, port)` names the key (None: not an agent port we know)."""

    async def middleware(request: aiohttp.ClientRequest, handler):
        key = key_for(request.url.host or "", request.url.port or 0)
        if key:
            request.headers[AGENT_KEY_HEADER] = f"Bearer {key}"
        return await handler(request)

    return middleware


async def bounded_json(response: aiohttp.ClientResponse, limit: int = MAX_ANSWER_BYTES) -> object:
    """The answer's JSON, or AgentAnswerError if it is larger than `limit` or not JSON."""
    if response.content_length is not None and response.content_length > limit:
        raise AgentAnswerError(f"answer of {response.content_length} bytes is over the {limit}-byte bound")
    body = await response.content.read(limit + 1)
    if len(body) > limit:
        raise AgentAnswerError(f"answer is over the {limit}-byte bound")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise AgentAnswerError(f"answer is not JSON: {e}") from None


MAX_ROWS = 10_000  # rows of one kind in one agent's window summary
_PEER_ROW = {
    "reporter": str,
    "peer_workload": str,
    "peer_namespace": str,
    "peer_principal": str,
    "service": str,
    "mtls": bool,
    "requests": int,
    "failures": int,
    "latency": dict,
    "tcp_opened": int,
    "tcp_bytes": int,
}
_PATH_ROW = {
    "reporter": str,
    "peer_workload": str,
    "method": str,
    "path": str,
    "service": str,
    "requests": int,
    "failures": int,
    "best_ms": (int, float),
    "worst_ms": (int, float),
    "last_ms": (int, float),
}


def check_window(summary: object) -> dict:
    """An agent's window summary, if it has the shape agents send (AgentAnswerError otherwise):
    one agent's malformed answer must not break `stat`, `top` or `edges` for the whole mesh."""
    if not isinstance(summary, dict):
        raise AgentAnswerError("a window summary is a JSON object")
    for kind, shape in (("peers", _PEER_ROW), ("paths", _PATH_ROW)):
        rows = summary.get(kind)
        if not isinstance(rows, list) or len(rows) > MAX_ROWS:
            raise AgentAnswerError(f"{kind}: a list of at most {MAX_ROWS} rows")
        for i, row in enumerate(rows):
            _check_row(row, shape, f"{kind}[{i}]")
    return summary


def _check_row(row: object, shape: dict, where: str) -> None:
    if not isinstance(row, dict):
        raise AgentAnswerError(f"{where}: an object")
    for field, kind in shape.items():
        value = row.get(field)
        if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
            raise AgentAnswerError(f"{where}.{field}: missing or of the wrong type")
        if isinstance(value, int | float) and not isinstance(value, bool) and not 0 <= value < 1e15:
            raise AgentAnswerError(f"{where}.{field}: out of range")
    if row["reporter"] not in ("source", "destination"):
        raise AgentAnswerError(f"{where}.reporter: source or destination")
    for bucket, count in row.get("latency", {}).items():
        if not isinstance(count, int) or isinstance(count, bool) or not str(bucket).isdigit() or count < 0:
            raise AgentAnswerError(f"{where}.latency: bucket index -> count")


MAX_RECORDS = 1_000  # request records in one agent's answer


def check_records(answer: object) -> dict:
    """An agent's request records (`/lattice/v1/requests`), if shaped as agents send them."""
    records = answer.get("records") if isinstance(answer, dict) else None
    if not isinstance(answer, dict) or not isinstance(records, list) or len(records) > MAX_RECORDS:
        raise AgentAnswerError(f"records: a list of at most {MAX_RECORDS}")
    for i, record in enumerate(records):
        if not isinstance(record, dict) or not isinstance(record.get("time", 0), int | float):
            raise AgentAnswerError(f"records[{i}]: an object with a numeric time")
    return answer
