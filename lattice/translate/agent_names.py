"""Names the translator's output and the sidecar agent must agree on: secrets, metadata keys, the
peer value, Istio stat names. A leaf module (it builds no Envoy message): the agent imports these
without loading the translator or Envoy's protos.
"""

from __future__ import annotations

from lattice.mesh import telemetry as t

# Secrets (translate/tls.py): the SDS cluster is defined in the bootstrap, the agent's SDS unix socket.
SDS_CLUSTER = "sds-grpc"
CERT_SECRET = "default"
ROOT_SECRET = "ROOTCA"

# Who is at each end (translate/telemetry.py).
PEER_ENV = "LATTICE_PEER"  # set by the agent in Envoy's environment: `peer_value` of its workload
PEER_METADATA = "lattice.peer"  # inbound: the caller's PEER_HEADER, moved to dynamic metadata
ENDPOINT_METADATA = "lattice"  # an endpoint's workload: `peer_value` and ";<principal>"
RULES_METADATA = "lattice.telemetry"  # listener metadata: the Telemetry metric rules for the agent
ENDPOINT_TAG = "peer"  # the ALS custom tag carrying ENDPOINT_METADATA of the upstream host
TAP_RUNTIME_KEY = "lattice.tap"  # percent of requests streamed besides failures: 100 while tapping, else 0
_CANONICAL_SERVICE = ("service.istio.io/canonical-name", "app.kubernetes.io/name", "app")
_CANONICAL_REVISION = ("service.istio.io/canonical-revision", "app.kubernetes.io/version", "version")


def peer_value(name: str, namespace: str, labels, service: str = "") -> str:
    """A workload as PEER_ENV and ENDPOINT_METADATA spell it (names never contain ';'):
    "<workload>;<namespace>;<app>;<version>;<canonical service>;<canonical revision>", the last two
    by Istio's rules (the canonical-name label, else app.kubernetes.io/name, else app, else the
    service; the canonical-revision label, else app.kubernetes.io/version, else version, else latest)."""
    canonical = next((labels[k] for k in _CANONICAL_SERVICE if labels.get(k)), service or name)
    revision = next((labels[k] for k in _CANONICAL_REVISION if labels.get(k)), "latest")
    return ";".join([name, namespace, labels.get("app", ""), labels.get("version", ""), canonical, revision])


# Envoy's stats that count Istio's metrics (translate/istio_stats.py): prefix, tag syntax, stat names.
PREFIX = "lattice"
SEP = "~"
OVERRIDE = "ov_"
COUNT_AND_DURATION, COUNT, DURATION = "rq", "rqc", "rqd"
REQUEST_BYTES, RESPONSE_BYTES, PATHS = "rqb", "rsb", "path"
TCP_OPENED, TCP_CLOSED, TCP_SENT, TCP_RECEIVED = "tcpo", "tcpc", "tcps", "tcpr"
# `~proto` holds the first bytes of the request's content-type, as many as this prefix has: a gRPC
# request's (application/grpc, application/grpc+proto, application/grpc-web...) is exactly it.
GRPC_CONTENT_TYPE = "application/grpc"
TCP_STATS = {t.TCP_OPENED: TCP_OPENED, t.TCP_CLOSED: TCP_CLOSED, t.TCP_SENT: TCP_SENT, t.TCP_RECEIVED: TCP_RECEIVED}

# The outbound listener's credential (translate/proxy_auth.py): the agent puts the htpasswd line of
# its per-proxy secret ("lattice:{SHA}<base64 SHA-1>") in Envoy's environment under this name.
PROXY_USERS_ENV = "LATTICE_PROXY_USERS"
PROXY_USER = "lattice"
