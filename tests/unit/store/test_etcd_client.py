"""The etcd client while members elect a leader.

The moment between a leader's death and the next election cannot be hit on purpose with a real
cluster (it lasts about a second, and a call lands in it or not by chance), so a small gRPC server
here answers as an etcd member does during one: `etcdserver: leader changed` for the first calls,
then the answer. The cluster behaviour around it is tested for real in
tests/integration/test_replicas.py, which kills a member under writes.
"""

from __future__ import annotations

from concurrent import futures

import grpc
import pytest

from lattice.store.etcd_client import EtcdClient
from lattice.store.etcdpb import etcd_pb2 as pb
from lattice.store.model import StoreUnavailable


class _Member(grpc.GenericRpcHandler):
    def __init__(self, refusals: int) -> None:
        self.refusals, self.calls = refusals, []

    def service(self, details):
        method = details.method.rsplit("/", 1)[1]
        request_type = {"Range": pb.RangeRequest, "Txn": pb.TxnRequest}[method]

        def answer(request, context):
            self.calls.append(method)
            if len(self.calls) <= self.refusals:
                context.abort(grpc.StatusCode.UNKNOWN, "etcdserver: leader changed")
            return pb.RangeResponse(count=7) if method == "Range" else pb.TxnResponse(succeeded=True)

        response_type = pb.RangeResponse if method == "Range" else pb.TxnResponse
        return grpc.unary_unary_rpc_method_handler(
            answer, request_deserializer=request_type.FromString, response_serializer=response_type.SerializeToString
        )


@pytest.fixture
def member():
    made = []

    def start(refusals: int) -> tuple[_Member, str]:
        handler = _Member(refusals)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), handlers=[handler])
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        made.append(server)
        return handler, f"127.0.0.1:{port}"

    yield start
    for server in made:
        server.stop(None)


def test_a_read_during_an_election_is_asked_again_until_a_leader_answers(member) -> None:
    handler, endpoint = member(refusals=3)
    client = EtcdClient([endpoint])
    try:
        assert client.call("Range", pb.RangeRequest(key=b"k"), what="read k").count == 7
        assert handler.calls == ["Range"] * 4
    finally:
        client.close()


def test_a_write_during_an_election_is_not_sent_twice(member) -> None:
    handler, endpoint = member(refusals=1)
    client = EtcdClient([endpoint])
    try:
        with pytest.raises(StoreUnavailable, match="write k failed: etcdserver: leader changed"):
            client.call("Txn", pb.TxnRequest(), what="write k")
        assert handler.calls == ["Txn"]
    finally:
        client.close()


def test_a_read_gives_up_at_its_deadline_when_no_leader_comes(member) -> None:
    handler, endpoint = member(refusals=10**6)
    client = EtcdClient([endpoint], timeout=0.5)
    try:
        with pytest.raises(StoreUnavailable, match="read k failed: etcdserver: leader changed .is a quorum"):
            client.call("Range", pb.RangeRequest(key=b"k"), what="read k")
        assert 2 <= len(handler.calls) <= 6
    finally:
        client.close()
