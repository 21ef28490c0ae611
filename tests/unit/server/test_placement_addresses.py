"""Issue 14, finding 10: registration accepted link-local metadata addresses (169.254.169.254)
from an agent on the control plane's own host, and callers' sidecars would then send requests
(with their headers) to the cloud's metadata service."""

from __future__ import annotations

import pytest

from lattice.api.registration import Registration
from lattice.server.placement import PlacementRefused, check_address


def _reg(address: str, local_address: str = "") -> Registration:
    return Registration.model_validate(
        {
            "id": "mallory-v1-abc.default",
            "name": "mallory-v1",
            "service": "mallory",
            "service_account": "mallory",
            "address": address,
            "local_address": local_address,
            "port": 9080,
            "app_port": 3000,
            "outbound_port": 15001,
            "agent_port": 15020,
        }
    )


@pytest.mark.parametrize("address", ["169.254.169.254", "fe80::1", "224.0.0.1", "0.0.0.0", "240.0.0.1"])
@pytest.mark.parametrize("peer", [None, "127.0.0.1", "10.0.0.5"])
def test_no_one_registers_where_no_workload_lives(address, peer):
    with pytest.raises(PlacementRefused) as e:
        check_address(_reg(address), peer, "10.0.0.1")
    assert e.value.status == 400 and address in str(e.value)


def test_loopback_leases_and_own_host_addresses_still_register():
    check_address(_reg("127.0.10.4"), "127.0.0.1", "127.0.0.1")
    check_address(_reg("10.0.0.5", local_address="127.0.10.4"), "10.0.0.5", "10.0.0.1")
    with pytest.raises(PlacementRefused):
        check_address(_reg("10.0.0.5", local_address="169.254.169.254"), "10.0.0.5", "10.0.0.1")
