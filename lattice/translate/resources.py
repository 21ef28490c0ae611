"""The translator's output and its entry point."""

from __future__ import annotations

from dataclasses import dataclass
from operator import attrgetter, itemgetter

from google.protobuf.message import Message

from lattice.mesh import MeshSnapshot, Workload
from lattice.translate import cds, eds, extensions, gateway, lds, rds
from lattice.translate.type_urls import CLUSTER, ENDPOINT, EXTENSION_CONFIG, LISTENER, ROUTE, SECRET, TYPE_ORDER


@dataclass(frozen=True)
class Resources:
    """Generated resources for one proxy: type URL -> ((name, message), ...) sorted by name."""

    by_type: dict[str, tuple[tuple[str, Message], ...]]

    def names(self, type_url: str) -> list[str]:
        return [name for name, _ in self.by_type.get(type_url, ())]


def translate(snapshot: MeshSnapshot, proxy: Workload) -> Resources:
    return Resources({t: translate_type(snapshot, proxy, t) for t in TYPE_ORDER})


def translate_type(snapshot: MeshSnapshot, proxy: Workload, type_url: str) -> tuple[tuple[str, Message], ...]:
    """One type of `translate`'s output, sorted by name. Each type is built on its own, so a caller
    may rebuild only the types whose inputs changed."""
    # A gateway proxy serves its Gateways' ports instead of an app's; it reaches the mesh as sidecars do.
    edge = proxy.kind == "gateway"
    if type_url == CLUSTER:
        produced = gateway.clusters(snapshot, proxy) if edge else cds.clusters(snapshot, proxy)
    elif type_url == ENDPOINT:
        produced = eds.load_assignments(snapshot, proxy)
    elif type_url == LISTENER:
        produced = gateway.listeners(snapshot, proxy) if edge else lds.listeners(snapshot, proxy)
    elif type_url == SECRET:
        produced = gateway.secrets(snapshot, proxy) if edge else []
    elif type_url == EXTENSION_CONFIG:
        produced = extensions.extension_configs(snapshot.extensions_for(proxy), snapshot.wasm_modules)
    else:
        produced = gateway.route_configurations(snapshot, proxy) if edge else rds.route_configurations(snapshot, proxy)
    name = _NAME[type_url]
    return tuple(sorted(((name(m), m) for m in produced), key=_first))


# Endpoints are named by their cluster; everything else by its own name.
_NAME = {
    CLUSTER: attrgetter("name"),
    ENDPOINT: attrgetter("cluster_name"),
    LISTENER: attrgetter("name"),
    ROUTE: attrgetter("name"),
    EXTENSION_CONFIG: attrgetter("name"),
    SECRET: attrgetter("name"),
}
_first = itemgetter(0)
