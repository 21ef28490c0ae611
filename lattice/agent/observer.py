"""What one sidecar sees of its traffic: the access log stream feeding metrics, window and tap.

The control plane's per-workload telemetry settings arrive inside the listeners the agent relays
(`translate/telemetry.RULES_METADATA`); `on_accept` picks them up whenever Envoy accepts new ones.
"""

from __future__ import annotations

import json
import logging

from envoy.config.listener.v3 import listener_pb2
from envoy.service.discovery.v3 import discovery_pb2

from lattice.agent.access_log import AccessLogReceiver, Peer
from lattice.agent.live import Tap, Window
from lattice.agent.metrics import IstioMetrics, rules_from_metadata
from lattice.agent.records import RequestRecords
from lattice.translate import LISTENER
from lattice.translate.telemetry import RULES_METADATA

log = logging.getLogger("lattice.observer")


class Observer:
    def __init__(self, me: Peer, service: str) -> None:
        self.metrics = IstioMetrics()
        self.window = Window()
        self.tap = Tap()
        self.records = RequestRecords(lambda: self.tap.active)  # for `lattice why`: failures, and all while tapped
        self.receiver = AccessLogReceiver(
            me, service, [self.metrics.observe, self.window.observe, self.tap.publish, self.records.observe]
        )
        self.lock = self.receiver.lock  # take it to read metrics or the window while requests are counted
        self._rules = ""
        self.span_counts: dict[str, int] = {}  # the trace relay's, by outcome (agent/traces.py)

    def render(self) -> str:
        """Istio's metrics, then the agent's own: what it received from Envoy and passed on."""
        lines = [
            "# HELP lattice_agent_access_log_entries_total Access log entries Envoy streamed to the agent.",
            "# TYPE lattice_agent_access_log_entries_total counter",
            f"lattice_agent_access_log_entries_total {self.receiver.received}",
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
        return self.metrics.render() + "\n".join(lines) + "\n"

    def on_accept(self, type_url: str, response: discovery_pb2.DiscoveryResponse) -> None:
        if type_url != LISTENER:
            return
        for resource in response.resources:
            listener = listener_pb2.Listener()
            resource.Unpack(listener)
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
