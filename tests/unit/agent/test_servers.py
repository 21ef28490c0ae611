"""The agent's list of control-plane replicas: the order tried, names expanded, addresses learned."""

from __future__ import annotations

from lattice.agent.servers import ControlPlaneAddress, ControlPlanes


def test_starts_on_the_first_given_and_moves_round_the_list() -> None:
    planes = ControlPlanes("https://127.0.0.1:1001, https://127.0.0.2:1002/,https://127.0.0.3:1003")
    assert len(planes) == 3
    assert planes.current.agent == "https://127.0.0.1:1001"
    assert [planes.advance().agent for _ in range(3)] == [
        "https://127.0.0.2:1002",
        "https://127.0.0.3:1003",
        "https://127.0.0.1:1001",
    ]


def test_one_server_stays_one() -> None:
    planes = ControlPlanes("https://127.0.0.1:15012")
    assert len(planes) == 1
    assert planes.advance().agent == "https://127.0.0.1:15012"


def test_a_name_with_several_addresses_starts_on_the_name_then_tries_each_address(monkeypatch) -> None:
    import socket

    def resolve(host, port, type=0):  # the resolver is the machine's; this name is made up for the test
        assert host == "cp.example"
        return [(socket.AF_INET, type, 6, "", (a, port)) for a in ("10.0.0.1", "10.0.0.2")]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    planes = ControlPlanes("https://cp.example:15012")
    assert [a.agent for a in planes.known] == [
        "https://cp.example:15012",
        "https://10.0.0.1:15012",
        "https://10.0.0.2:15012",
    ]


def test_learned_replicas_join_the_list_and_the_one_in_use_stays_in_use() -> None:
    planes = ControlPlanes("https://127.0.0.1:1001")
    planes.set_xds("127.0.0.1:2001")
    planes.learn(
        [
            {"agent": "https://127.0.0.1:1001", "xds": "127.0.0.1:2001"},
            {"agent": "https://127.0.0.5:1005", "xds": "127.0.0.5:2005"},
            {"agent": "https://0.0.0.0:1006", "xds": "0.0.0.0:2006"},  # no address to reach: left out
        ]
    )
    assert planes.current == ControlPlaneAddress("https://127.0.0.1:1001", "127.0.0.1:2001")
    assert planes.advance() == ControlPlaneAddress("https://127.0.0.5:1005", "127.0.0.5:2005")
    assert len(planes) == 2
