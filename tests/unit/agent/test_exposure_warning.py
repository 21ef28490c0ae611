"""Without capture, `lattice run` says at start what any local user can do to the workload."""

from __future__ import annotations

from lattice.agent.sidecar import exposure_warning
from lattice.api.registration import Registration


def test_the_warning_names_the_exposed_ports_and_the_identity_they_lend():
    reg = Registration.model_validate(
        {
            "id": "ledger-v1-abc.default",
            "name": "ledger-v1",
            "service": "ledger",
            "service_account": "ledger",
            "labels": {"version": "v1"},
            "address": "127.0.10.7",
            "port": 9080,
            "app_port": 3000,
            "outbound_port": 15001,
            "agent_port": 15020,
            "upstreams": [{"service": "db", "namespace": "default", "port": 5432, "local_port": 15432}],
        }
    )
    message = exposure_warning(reg)
    assert "127.0.10.7 port(s) 15001, 15432" in message
    assert "default/ledger" in message and "--capture" in message and "127.0.0.1" in message
