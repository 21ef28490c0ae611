"""The agent's side of the registry: register, heartbeat, deregister — over the agents' TLS API,
authenticated by the workload's certificate. Heartbeats also carry what the agent holds (bundle
version, certificate), and their answers tell it to fetch a new bundle or renew (root rotation)."""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Callable

from lattice.agent.identity import Identity, IdentityError
from lattice.identity import CONTROL_PLANE_NAME
from lattice.agent.registration import Registration
from lattice.agent.web_client import Client, ClientError

log = logging.getLogger("lattice.agent")
UNREACHABLE_SECONDS = 1.0  # a draining sidecar stops waiting for callers when it cannot report the drain


class ControlPlaneError(RuntimeError):
    pass


class RegistryClient:
    def __init__(self, api: str, registration: Registration, healthy: Callable[[], bool], identity: Identity) -> None:
        self.api = api.rstrip("/")
        self.registration = registration
        self.identity = identity
        self.healthy = healthy
        self.heartbeat_now = asyncio.Event()  # set to report a health change at once
        self.draining = False  # the sidecar is stopping: callers are to choose other endpoints
        self._session: Client | None = None

    async def __aenter__(self) -> RegistryClient:
        self._session = Client(timeout=5)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.session.close()

    @property
    def _url(self) -> str:
        return f"{self.api}/agent/v1/workloads/{self.registration.id}"

    @property
    def session(self) -> Client:
        if self._session is None:
            raise RuntimeError("RegistryClient is used inside `async with`: it has no session outside")
        return self._session

    def _tls(self) -> dict:
        return {"ssl": self.identity.ssl(), "server_hostname": CONTROL_PLANE_NAME}

    async def register(self, attempts: int | None = None) -> None:
        """Register, retrying with backoff while the control plane is unreachable."""
        backoff, tried = 0.2, 0
        while True:
            tried += 1
            try:
                body = self.registration.dump() | {"healthy": self.healthy()}
                async with self.session.put(self._url, json=body, **self._tls()) as response:
                    if response.status in (400, 401, 403, 409):
                        raise ControlPlaneError(
                            f"the control plane refused the registration: {(await response.json()).get('error')}"
                        )
                    response.raise_for_status()
                    return
            except (ClientError, TimeoutError) as e:
                if attempts is not None and tried >= attempts:
                    raise ControlPlaneError(f"cannot reach the control plane at {self.api}: {e}") from None
                # The first failure at the default log level (a silent retry loop helps nobody), then quietly.
                (log.warning if tried == 1 else log.info)(
                    "cannot reach the control plane at %s to register (%s); retrying in %.1fs", self.api, e, backoff
                )
            await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, 5.0)

    async def heartbeats(self, interval: float) -> None:
        last = None
        while True:
            try:
                await asyncio.wait_for(self.heartbeat_now.wait(), interval)
            except TimeoutError:
                pass
            self.heartbeat_now.clear()
            healthy = self.healthy()
            try:
                answer = await self._heartbeat(healthy)
                if answer is None:  # expired, or the control plane lost its state
                    await self.register(attempts=1)
                    continue
                if answer.get("bundle_version", 0) != self.identity.bundle_version:
                    await self.identity.refresh_bundle(self.session)
                if answer.get("crl_version", "") != self.identity.crl_version:
                    await self.identity.refresh_crl(self.session)
                if answer.get("renew"):
                    self.identity.renew_now.set()
                if healthy != last:
                    log.info("reported %s", "healthy" if healthy else "unhealthy")
                last = healthy
            except (ClientError, TimeoutError, ControlPlaneError, IdentityError) as e:
                log.debug("heartbeat failed: %s", e)

    async def _heartbeat(self, healthy: bool) -> dict | None:
        """One heartbeat; the control plane's answer, None if it does not know this workload."""
        body = {"healthy": healthy, "draining": self.draining, **self.identity.held()}
        async with self.session.post(f"{self._url}/heartbeat", json=body, **self._tls()) as response:
            if response.status == 404:
                return None
            response.raise_for_status()
            return await response.json()

    async def drain(self, timeout: float) -> bool:
        """Report the workload draining, then wait (at most `timeout` seconds) until every proxy
        connected to the control plane holds that. True if they all do."""
        self.draining = True
        loop = asyncio.get_running_loop()
        deadline, failing_since = loop.time() + timeout, None
        while True:
            try:
                answer = await asyncio.wait_for(self._heartbeat(self.healthy()), max(0.1, deadline - loop.time()))
                if answer is None or answer.get("callers_hold_drain"):
                    return True  # unknown to the control plane: nobody routes to it
                failing_since = None
            except (ClientError, TimeoutError) as e:
                failing_since = failing_since or loop.time()
                if loop.time() - failing_since > UNREACHABLE_SECONDS:  # nobody can learn of it: go on
                    log.warning("the control plane is unreachable (%s): callers cannot learn of the drain", e)
                    return False
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(min(0.05, max(0.0, deadline - loop.time())))

    async def deregister(self) -> None:
        try:
            async with self.session.delete(self._url, timeout=2, **self._tls()):
                pass
        except (ClientError, TimeoutError) as e:
            log.info("could not deregister (%s); the control plane will expire this workload", e)
