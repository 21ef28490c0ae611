"""Draining: when may a stopping workload's sidecar stop taking requests?

`lattice run`, told to stop, reports its workload draining (EDS health DRAINING: callers keep the
requests they sent it, and choose other endpoints for new ones). It may close its listeners once
every connected proxy holds that: its stream has answered from a mesh snapshot in which the
workload is draining, and the proxy ACKed (or NACKed) everything it was sent. A proxy the push
changed nothing for holds it as soon as its stream has looked at that snapshot.
"""

from __future__ import annotations

from lattice.mesh import MeshSnapshot
from lattice.xds import StatusBoard


def callers_hold_drain(snapshot: MeshSnapshot, pending: bool, board: StatusBoard, workload_id: str) -> bool:
    """Every connected proxy but the workload's own holds `workload_id` as draining."""
    workload = snapshot.workload(workload_id)
    if pending or workload is None or not workload.draining:
        return False
    needed = label_order(snapshot.version)
    for proxy in board.all():
        if not proxy.connected or proxy.node_id == workload_id:
            continue
        if label_order(proxy.seen_label) < needed:
            return False
        if any(t.sent_version != t.acked_version and not t.nack for t in proxy.types.values()):
            return False
    return True


def label_order(label: str) -> tuple[int, ...]:
    """Mesh snapshot versions ("<store revision>.<registry generation>") in the order they were made."""
    try:
        return tuple(int(part) for part in label.split("."))
    except ValueError:
        return ()
