"""When is the demo mesh ready: every workload registered, healthy, connected, and holding its config."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

import aiohttp

XDS_TYPES = ("Cluster", "ClusterLoadAssignment", "Listener", "RouteConfiguration")


class NotReady(Exception):
    pass


def waiting_on(proxy: dict | None) -> str | None:
    """Why one workload is not ready yet (in the mesh's words), or None if it is."""
    if proxy is None:
        return "registering"
    if not proxy["healthy"]:
        return "app starting"
    if not proxy["connected"]:
        return "connecting"
    unsynced = [t for t in XDS_TYPES if proxy["types"].get(t, {}).get("state") != "SYNCED"]
    return f"syncing {', '.join(unsynced)}" if unsynced else None


def pending(status: dict, names: Iterable[str]) -> dict[str, str]:
    """name -> reason, for each expected workload (`<service>-<version>`) that is not ready."""
    by_name = {p["name"]: p for p in status["proxies"]}
    reasons = {name: waiting_on(by_name.get(name)) for name in names}
    return {name: reason for name, reason in reasons.items() if reason}


async def fetch_status(session: aiohttp.ClientSession, api: str) -> dict:
    async with session.get(f"{api}/api/v1/status") as response:
        response.raise_for_status()
        return await response.json()


async def wait_until_ready(
    api: str,
    names: list[str],
    progress: Callable[[dict[str, str]], None],
    check_alive: Callable[[], None],
    headers: dict[str, str],
    timeout: float = 60.0,
) -> dict:
    """The status once all `names` are ready; `progress` hears what is pending, `check_alive` may raise."""
    deadline = time.monotonic() + timeout
    left = {name: "registering" for name in names}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5), headers=headers) as session:
        while time.monotonic() < deadline:
            check_alive()
            status = await fetch_status(session, api)
            left = pending(status, names)
            progress(left)
            if not left:
                return status
            await asyncio.sleep(0.1)
    raise NotReady(f"not ready after {timeout:.0f} s: " + ", ".join(f"{n} ({r})" for n, r in left.items()))
