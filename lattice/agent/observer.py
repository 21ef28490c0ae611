"""What one sidecar sees of its traffic: Envoy's own counts, read once a second, and the stream of
failed (or tapped) requests.

Envoy counts Istio's metrics itself; `poll_forever` reads them every `POLL_SECONDS` into the live
window, and `render` names them for Prometheus. The access log stream carries failures always and
every request while someone taps: `start_tap` / `stop_tap` switch the latter on Envoy's runtime
(admin `/runtime_modify`), so no config is pushed and no listener drains.
The control plane's per-workload telemetry settings arrive inside the listeners the agent relays
(`translate/telemetry.RULES_METADATA`); `on_accept` picks them up whenever Envoy accepts new ones.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from lattice.agent import envoy_stats
from lattice.agent.access_log import AccessLogReceiver, Peer
from lattice.agent.envoy import EnvoyProcess
from lattice.agent.live import Tap, Window
from lattice.agent.metrics import IstioMetrics, rules_from_metadata
from lattice.agent.records import RequestRecords
from lattice.translate import LISTENER
from lattice.translate import agent_names as s
from lattice.translate.agent_names import RULES_METADATA, TAP_RUNTIME_KEY

log = logging.getLogger("lattice.observer")
POLL_SECONDS = 1.0
# Envoy merges its threads' histograms when its admin is asked for stats, after answering: one cheap
# ask first, and the read a moment later sees what was counted up to then.
MERGE_SECONDS = 0.05


def _listener_view() -> Any:  # a message class built at runtime: no static fields to check
    """A Listener as the agent reads it: its name and metadata only, with listener.proto's field
    numbers (1 and 6). The rest of each Listener stays unparsed bytes, so the agent never loads
    listener.proto and the hundred filter and socket messages it pulls in."""
    file = descriptor_pb2.FileDescriptorProto(
        name="lattice/agent/listener_view.proto",
        package="lattice.agent",
        syntax="proto3",
        dependency=[base_pb2.DESCRIPTOR.name],
    )
    view = file.message_type.add(name="ListenerView")
    optional = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    view.field.add(name="name", number=1, label=optional, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING)
    view.field.add(
        name="metadata",
        number=6,
        label=optional,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
        type_name=".envoy.config.core.v3.Metadata",
    )
    pool = descriptor_pool.Default()  # where base.proto's Metadata is
    try:
        pool.FindFileByName(file.name)
    except KeyError:
        pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("lattice.agent.ListenerView"))


ListenerView = _listener_view()


class Observer:
    def __init__(self, me: Peer, service: str) -> None:
        self.metrics = IstioMetrics()
        self.window = Window()
        self.tap = Tap()
        self.records = RequestRecords(lambda: self.tap.active)  # for `lattice why`: failures, and all while tapped
        self.receiver = AccessLogReceiver(me, service, [self.tap.publish, self.records.observe])
        self.lock = self.receiver.lock  # take it to read the records while entries arrive
        self.envoy: EnvoyProcess | None = None  # once the sidecar has one
        self._rules = ""
        self._tapping = asyncio.Lock()
        self._recording = asyncio.Lock()  # one read at a time: each records what changed since the last
        self.span_counts: dict[str, int] = {}  # the trace relay's, by outcome (agent/traces.py)

    async def read(self) -> envoy_stats.Reading | None:
        """One read of Envoy's counts of our series; None if Envoy's admin does not answer."""
        if self.envoy is None:
            return None
        await self.envoy.admin("/stats", {"filter": "^$"})
        await asyncio.sleep(MERGE_SECONDS)
        status, body = await self.envoy.admin("/stats", envoy_stats.STATS_QUERY)
        if status != 200:
            return None
        try:
            return envoy_stats.parse(body)
        except (ValueError, KeyError, TypeError) as e:
            log.warning("cannot read Envoy's stats: %s", e)
            return None

    async def poll_forever(self) -> None:
        """The live window, filled from Envoy's counts once a second."""
        while True:
            await self.refresh()
            await asyncio.sleep(POLL_SECONDS)

    async def refresh(self) -> None:
        """What Envoy counted since the last read, into the window (also right before it is asked)."""
        async with self._recording:
            reading = await self.read()
            if reading is not None:
                self.window.record(reading)

    async def render(self) -> str:
        """Istio's metrics, then the agent's own: what Envoy recorded, and what it streamed."""
        reading = await self.read() or envoy_stats.Reading()
        recorded = sum(
            sum(c for _, _, c in bins)
            for (stat, _), bins in reading.histograms.items()
            if stat in (s.COUNT_AND_DURATION, s.COUNT, s.DURATION)
        ) + sum(total for (stat, _), total in reading.counters.items() if stat == s.TCP_CLOSED)
        lines = [
            "# HELP lattice_agent_access_log_entries_total Access log entries Envoy recorded: "
            "every request and TCP connection its stats logger counted.",
            "# TYPE lattice_agent_access_log_entries_total counter",
            f"lattice_agent_access_log_entries_total {recorded}",
            "# HELP lattice_agent_access_log_streamed_total Access log entries Envoy streamed to the agent: "
            "failed requests, and all while tapping.",
            "# TYPE lattice_agent_access_log_streamed_total counter",
            f"lattice_agent_access_log_streamed_total {self.receiver.received}",
        ]
        if self.span_counts:
            lines += [
                "# HELP lattice_agent_spans_total Spans Envoy sent to the agent, by what became of them.",
                "# TYPE lattice_agent_spans_total counter",
            ]
            lines += [
                f'lattice_agent_spans_total{{outcome="{outcome}"}} {n}'
                for outcome, n in sorted(self.span_counts.items())
            ]
        lines += [
            "# HELP lattice_agent_access_log_messages_dropped_total Access log messages not counted: the agent "
            "fell too far behind.",
            "# TYPE lattice_agent_access_log_messages_dropped_total counter",
            f"lattice_agent_access_log_messages_dropped_total {self.receiver.dropped}",
        ]
        return self.metrics.render(reading) + "\n".join(lines) + "\n"

    async def start_tap(self) -> asyncio.Queue:
        """A watcher's queue; Envoy streams every request from now on (not only failures)."""
        async with self._tapping:
            if not self.tap.active:
                await self._stream_all(True)
            return self.tap.watch()

    async def stop_tap(self, queue: asyncio.Queue) -> None:
        async with self._tapping:
            self.tap.unwatch(queue)
            if not self.tap.active:
                await self._stream_all(False)

    async def _stream_all(self, on: bool) -> None:
        if self.envoy is None:
            return
        status, body = await self.envoy.admin("/runtime_modify", {TAP_RUNTIME_KEY: "100" if on else "0"}, post=True)
        if status != 200:
            log.warning("cannot switch Envoy's request stream %s: %s", "on" if on else "off", body[:200])

    def on_accept(self, type_url: str, response: discovery_pb2.DiscoveryResponse) -> None:
        if type_url != LISTENER:
            return
        for resource in response.resources:
            listener = ListenerView.FromString(resource.value)
            fields = listener.metadata.filter_metadata.get(RULES_METADATA)
            if fields is None:
                continue
            text = fields.fields["config"].string_value if "config" in fields.fields else ""
            if text == self._rules:
                return
            try:
                config = json.loads(text)
                self.metrics.set_rules(rules_from_metadata(config.get("rules", [])))
            except (
                ValueError,
                TypeError,
                AttributeError,
            ) as e:  # a newer control plane's rules: keep counting as before
                log.warning("cannot read the metric rules of listener %s: %s", listener.name, e)
                return
            self._rules = text
            if config.get("service"):
                self.receiver.service = config["service"]
            return
