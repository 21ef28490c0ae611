"""Without capture, `lattice run` says at start what other local users can and cannot do to the workload."""

from __future__ import annotations

from lattice.agent.sidecar import exposure_warning
from lattice.api.registration import Registration


def _registration(upstreams: list[dict]) -> Registration:
    return Registration.model_validate(
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
            "upstreams": upstreams,
        }
    )


def test_the_warning_names_what_the_credential_protects_and_what_stays_exposed():
    message = exposure_warning(
        _registration([{"service": "db", "namespace": "default", "port": 5432, "local_port": 15432}])
    )
    assert "outbound listener (127.0.10.7:15001) answers only requests carrying the credential" in message
    assert "--upstream port(s) 15432 on 127.0.10.7, which cannot carry a credential" in message
    assert "default/ledger" in message and "--capture" in message and "127.0.0.1" in message


def test_without_upstream_ports_only_the_apps_own_port_is_left_exposed():
    message = exposure_warning(_registration([]))
    assert "--upstream" not in message and "credential" in message and "127.0.0.1" in message
