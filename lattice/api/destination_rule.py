"""Istio `DestinationRule`: subsets and the traffic policy applied to a destination's connections.

Field names are Istio's; anything Lattice does not implement is refused at apply time.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from lattice.api.durations import parse_duration
from lattice.api.networking import IstioSpec, PortSelector


class ClientTLSSettings(IstioSpec):
    """How a sidecar originates TLS to a destination. Certificate fields are file paths on the client's host."""

    mode: Literal["DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"]
    client_certificate: str | None = None
    private_key: str | None = None
    ca_certificates: str | None = None
    credential_name: str | None = None
    subject_alt_names: list[str] = Field(default_factory=list)
    sni: str | None = None
    insecure_skip_verify: bool | None = None
    ca_crl: str | None = None

    @field_validator("credential_name")
    @classmethod
    def _no_secrets(cls, v: str | None) -> str | None:
        if v is not None:
            raise ValueError(
                "credentialName is not supported on DestinationRules: `lattice secret` secrets reach only "
                "gateways' servers, not the clusters a proxy originates TLS on; give clientCertificate, "
                "privateKey and caCertificates file paths on the proxy's host (an egress gateway's own host)"
            )
        return v

    @model_validator(mode="after")
    def _consistent(self) -> ClientTLSSettings:
        problems = self._mode_problems()
        if self.insecure_skip_verify:
            checks = [f for f in ("ca_certificates", "subject_alt_names") if getattr(self, f)]
            if checks:
                problems.append(
                    f"insecureSkipVerify turns off the server-certificate check that {_names(checks)} configure; "
                    "set one or the other"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _mode_problems(self) -> list[str]:
        if self.mode == "MUTUAL":
            missing = [f for f in ("client_certificate", "private_key") if not getattr(self, f)]
            return [f"MUTUAL presents a client certificate: set {_names(missing)}"] if missing else []
        if self.mode == "SIMPLE":
            given = self._given("client_certificate", "private_key")
            return (
                [f"SIMPLE presents no client certificate, so {_names(given)} would be unused; use MUTUAL to send one"]
                if given
                else []
            )
        own_certs = ("client_certificate", "private_key", "ca_certificates", "credential_name", "ca_crl")
        if self.mode == "ISTIO_MUTUAL":
            given = self._given(*own_certs)
            return (
                [
                    f"ISTIO_MUTUAL uses the mesh's own certificates, issued by Lattice; remove {_names(given)} (or "
                    "use MUTUAL to present your own)"
                ]
                if given
                else []
            )
        given = self._given(*own_certs, "subject_alt_names", "sni", "insecure_skip_verify")
        return [f"DISABLE sends plaintext, so {_names(given)} would be unused; remove them"] if given else []

    def _given(self, *fields: str) -> list[str]:
        return [f for f in fields if getattr(self, f) not in (None, "", [])]


def _names(fields: list[str]) -> str:
    return ", ".join(to_camel(f) for f in fields)


# --- trafficPolicy beyond TLS: load balancing, connection pools, outlier detection -----------------

_INT32 = 2**31 - 1
# Locality labels a workload carries (Kubernetes' and Istio's names), read as region/zone/subzone.
LOCALITY_LABELS = ("topology.kubernetes.io/region", "topology.kubernetes.io/zone", "topology.istio.io/subzone")
_MAGLEV_MAX = 5000011


def _duration(v: str | None, minimum: float = 0.001, zero_ok: bool = False) -> str | None:
    """Istio's rule for durations: at least 1ms (some fields also take 0s to mean "off")."""
    if v is None:
        return v
    seconds = parse_duration(v)
    if seconds < minimum and not (zero_ok and seconds == 0):
        raise ValueError(f"must be at least {minimum * 1000:g}ms" + (" (or 0s to turn it off)" if zero_ok else ""))
    return v


def _positive_duration(v: str | None) -> str | None:
    return _duration(v)


def _whole_seconds(v: str | None) -> str | None:
    # Envoy counts TCP keepalive times in whole seconds; a shorter one would become 0 and mean "OS default".
    return _duration(v, minimum=1.0)


class TcpKeepalive(IstioSpec):
    probes: int | None = Field(default=None, ge=0, le=2**32 - 1)
    time: str | None = None
    interval: str | None = None

    _times = field_validator("time", "interval")(_whole_seconds)


class TCPSettings(IstioSpec):
    max_connections: int | None = Field(default=None, ge=0, le=_INT32)
    connect_timeout: str | None = None
    tcp_keepalive: TcpKeepalive | None = None
    max_connection_duration: str | None = None
    idle_timeout: str | None = None

    _durations = field_validator("connect_timeout", "max_connection_duration")(_positive_duration)
    _idle = field_validator("idle_timeout")(lambda v: _duration(v, zero_ok=True))


class HTTPSettings(IstioSpec):
    http1_max_pending_requests: int | None = Field(default=None, ge=0, le=_INT32)
    http2_max_requests: int | None = Field(default=None, ge=0, le=_INT32)
    max_requests_per_connection: int | None = Field(default=None, ge=0, le=_INT32)
    max_retries: int | None = Field(default=None, ge=0, le=_INT32)
    idle_timeout: str | None = None
    # Modelled here, translated with the cluster's protocol (see cds._set_protocol).
    h2_upgrade_policy: Literal["DEFAULT", "DO_NOT_UPGRADE", "UPGRADE"] | None = None
    use_client_protocol: bool | None = None
    max_concurrent_streams: int | None = Field(default=None, ge=0, le=_INT32)

    _idle = field_validator("idle_timeout")(_positive_duration)

    @model_validator(mode="after")
    def _upgrade_or_keep(self) -> HTTPSettings:
        if self.h2_upgrade_policy == "UPGRADE" and self.use_client_protocol:
            raise ValueError(
                "useClientProtocol keeps the client's HTTP version, so it cannot be combined with h2UpgradePolicy: "
                "UPGRADE"
            )
        return self


class ConnectionPoolSettings(IstioSpec):
    tcp: TCPSettings | None = None
    http: HTTPSettings | None = None


class OutlierDetection(IstioSpec):
    consecutive_errors: int | None = None
    split_external_local_origin_errors: bool = False
    consecutive_local_origin_failures: int | None = Field(default=None, ge=0, le=2**32 - 1)
    consecutive_gateway_errors: int | None = Field(default=None, ge=0, le=2**32 - 1)
    consecutive_5xx_errors: int | None = Field(default=None, ge=0, le=2**32 - 1, alias="consecutive5xxErrors")
    interval: str | None = None
    base_ejection_time: str | None = None
    max_ejection_percent: int | None = Field(default=None, ge=0, le=100)
    min_health_percent: int | None = Field(default=None, ge=0, le=100)

    _durations = field_validator("interval", "base_ejection_time")(_positive_duration)

    @field_validator("consecutive_errors")
    @classmethod
    def _deprecated(cls, v: int | None) -> int | None:
        if v is not None:
            # Istio only warns and then ignores it; Lattice never ignores a field silently.
            raise ValueError(
                "consecutiveErrors is deprecated and Istio no longer applies it; use consecutiveGatewayErrors "
                "(502, 503 and 504, what it used to count) or consecutive5xxErrors"
            )
        return v

    @model_validator(mode="after")
    def _local_origin(self) -> OutlierDetection:
        if self.consecutive_local_origin_failures and not self.split_external_local_origin_errors:
            raise ValueError(
                "consecutiveLocalOriginFailures is only counted when splitExternalLocalOriginErrors is true"
            )
        return self


class LocalityDistribute(IstioSpec):
    from_: str = Field(alias="from", min_length=1)
    to: dict[str, int] = Field(min_length=1)

    @model_validator(mode="after")
    def _weights(self) -> LocalityDistribute:
        _check_localities([self.from_])
        _check_localities(list(self.to))
        bad = sorted(k for k, w in self.to.items() if not 1 <= w <= 100)
        if bad:
            raise ValueError(f"locality weights must be in 1..100; check {', '.join(bad)}")
        if sum(self.to.values()) != 100:
            raise ValueError(f"weights in 'to' must add up to 100 (they add up to {sum(self.to.values())})")
        return self


class LocalityFailover(IstioSpec):
    from_: str = Field(alias="from", min_length=1)
    to: str = Field(min_length=1)

    @model_validator(mode="after")
    def _regions(self) -> LocalityFailover:
        if "/" in self.from_ + self.to or "*" in self.from_ + self.to:
            raise ValueError("failover names regions only: no '/' zones and no '*' wildcards")
        if self.from_ == self.to:
            raise ValueError(f"failover from {self.from_!r} to itself; name a different region")
        return self


class LocalityLoadBalancerSetting(IstioSpec):
    distribute: list[LocalityDistribute] = Field(default_factory=list)
    failover: list[LocalityFailover] = Field(default_factory=list)
    failover_priority: list[str] = Field(default_factory=list)
    enabled: bool | None = None

    @model_validator(mode="after")
    def _one_strategy(self) -> LocalityLoadBalancerSetting:
        if self.distribute and (self.failover or self.failover_priority):
            raise ValueError("set 'distribute' or failover ('failover', 'failoverPriority'), not both")
        topology = [p for p in self.failover_priority if p in LOCALITY_LABELS]
        if self.failover and topology:
            raise ValueError(
                f"'failover' already orders regions; remove topology label {topology[0]} from 'failoverPriority' "
                "or drop 'failover'"
            )
        _check_localities([d.from_ for d in self.distribute])
        if any(not p or p.startswith("=") for p in self.failover_priority):
            raise ValueError("failoverPriority entries are label keys, or key=value")
        return self

    @property
    def failover_wanted(self) -> bool:
        return bool(self.failover or self.failover_priority)


def _check_localities(localities: list[str]) -> None:
    """Istio's rules: region[/zone[/subzone]], no empty parts, one '*' at most and only at the end."""
    for loc in localities:
        if any(part == "" for part in loc.split("/")) or loc.count("/") > 2:
            raise ValueError(f"locality {loc!r} must be region, region/zone or region/zone/subzone with no empty parts")
        if "*" in loc and (loc.count("*") > 1 or not loc.endswith("*") or (len(loc) > 1 and not loc.endswith("/*"))):
            raise ValueError(f"locality {loc!r} may use one '*', as its whole last part")
    if len(set(localities)) != len(localities) or ("*" in localities and len(localities) > 1):
        raise ValueError(f"localities overlap: {', '.join(localities)}")


class HTTPCookie(IstioSpec):
    name: str = Field(min_length=1)
    path: str | None = None
    ttl: str | None = None

    _ttl = field_validator("ttl")(lambda v: _duration(v, minimum=0.0))


class RingHash(IstioSpec):
    minimum_ring_size: int | None = Field(default=None, ge=1, le=8388608)


class MagLev(IstioSpec):
    table_size: int = Field(ge=2)

    @field_validator("table_size")
    @classmethod
    def _prime(cls, v: int) -> int:
        if v >= _MAGLEV_MAX or not _is_prime(v):
            raise ValueError(
                f"tableSize must be a prime number below {_MAGLEV_MAX} (Envoy's Maglev needs one); 65537 is the default"
            )
        return v


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % f for f in range(2, int(n**0.5) + 1))


class ConsistentHashLB(IstioSpec):
    http_header_name: str | None = Field(default=None, min_length=1)
    http_cookie: HTTPCookie | None = None
    use_source_ip: bool | None = None
    http_query_parameter_name: str | None = Field(default=None, min_length=1)
    ring_hash: RingHash | None = None
    maglev: MagLev | None = None
    minimum_ring_size: int | None = Field(default=None, ge=1, le=8388608)  # deprecated Istio field, still applied

    @model_validator(mode="after")
    def _one_key_one_algorithm(self) -> ConsistentHashLB:
        keys = [
            k
            for k in ("http_header_name", "http_cookie", "use_source_ip", "http_query_parameter_name")
            if getattr(self, k)
        ]
        if len(keys) != 1:
            raise ValueError(
                "set exactly one hash key of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName "
                f"(got {_names(keys) or 'none'})"
            )
        algorithms = [k for k in ("ring_hash", "maglev", "minimum_ring_size") if getattr(self, k) is not None]
        if len(algorithms) > 1:
            raise ValueError(
                f"set one of ringHash, maglev or the deprecated minimumRingSize (got {_names(algorithms)})"
            )
        return self


class WarmupConfiguration(IstioSpec):
    duration: str
    minimum_percent: float | None = Field(default=None, ge=0, le=100)
    aggression: float | None = Field(default=None, ge=1)

    _window = field_validator("duration")(_positive_duration)


class LoadBalancerSettings(IstioSpec):
    simple: Literal["UNSPECIFIED", "LEAST_CONN", "RANDOM", "PASSTHROUGH", "ROUND_ROBIN", "LEAST_REQUEST"] | None = None
    consistent_hash: ConsistentHashLB | None = None
    locality_lb_setting: LocalityLoadBalancerSetting | None = None
    warmup_duration_secs: str | None = None
    warmup: WarmupConfiguration | None = None

    _warmup_secs = field_validator("warmup_duration_secs")(_positive_duration)

    @field_validator("simple")
    @classmethod
    def _no_passthrough(cls, v: str | None) -> str | None:
        if v == "PASSTHROUGH":
            raise ValueError(
                "PASSTHROUGH forwards to the caller's original destination address, which exists only with transparent "
                "capture; Lattice sidecars receive outbound calls as an HTTP proxy, so there is none to forward to"
            )
        return v

    @model_validator(mode="after")
    def _consistent(self) -> LoadBalancerSettings:
        if self.simple is not None and self.consistent_hash is not None:
            raise ValueError("set either simple or consistentHash, not both")
        warm = [f for f in ("warmup_duration_secs", "warmup") if getattr(self, f) is not None]
        if warm and (self.consistent_hash is not None or self.simple == "RANDOM"):
            raise ValueError(f"{_names(warm)} (slow start) works only with ROUND_ROBIN and LEAST_REQUEST")
        if len(warm) == 2:
            raise ValueError("set warmup or the deprecated warmupDurationSecs, not both")
        return self


def _unsupported(what: str):
    def check(v):
        if v is not None:
            raise ValueError(what)
        return v

    return check


class PolicyFields(IstioSpec):
    """What a traffic policy and a port-level policy share."""

    load_balancer: LoadBalancerSettings | None = None
    connection_pool: ConnectionPoolSettings | None = None
    outlier_detection: OutlierDetection | None = None
    tls: ClientTLSSettings | None = None

    def failover_problem(self, inherited_outlier: OutlierDetection | None = None) -> str | None:
        """Istio applies locality failover only with outlier detection (else Envoy never sees an endpoint
        ejected and never moves down a priority); it warns and ignores. Lattice refuses it instead."""
        locality = self.load_balancer.locality_lb_setting if self.load_balancer else None
        if locality is None or not locality.failover_wanted or locality.enabled is False:
            return None
        if self.outlier_detection is None and inherited_outlier is None:
            return (
                "loadBalancer.localityLbSetting failover takes effect only together with outlierDetection; add "
                "outlierDetection to this policy"
            )
        return None


class PortTrafficPolicy(PolicyFields):
    port: PortSelector

    @model_validator(mode="after")
    def _failover(self) -> PortTrafficPolicy:
        # A port-level policy replaces the whole policy for its port (nothing inherited), so it needs its own.
        problem = self.failover_problem()
        if problem:
            raise ValueError(problem)
        return self


class TrafficPolicy(PolicyFields):
    port_level_settings: list[PortTrafficPolicy] = Field(default_factory=list)
    tunnel: dict | None = None
    proxy_protocol: dict | None = None

    _tunnel = field_validator("tunnel")(
        _unsupported("tunnel (TCP carried over HTTP CONNECT or POST to a tunnel target) is not supported by Lattice")
    )
    _proxy_protocol = field_validator("proxy_protocol")(
        _unsupported("proxyProtocol (sending a PROXY protocol header upstream) is not supported by Lattice")
    )

    @field_validator("port_level_settings")
    @classmethod
    def _unique_ports(cls, v: list[PortTrafficPolicy]) -> list[PortTrafficPolicy]:
        ports = [p.port.number for p in v]
        dupes = sorted({n for n in ports if ports.count(n) > 1})
        if dupes:
            raise ValueError(f"each port may appear once; repeated: {', '.join(map(str, dupes))}")
        return v


class Subset(IstioSpec):
    name: str = Field(min_length=1)
    labels: dict[str, str] = Field(default_factory=dict)
    traffic_policy: TrafficPolicy | None = None


class DestinationRuleSpec(IstioSpec):
    host: str = Field(min_length=1)
    traffic_policy: TrafficPolicy | None = None
    subsets: list[Subset] = Field(default_factory=list)

    @field_validator("subsets")
    @classmethod
    def _unique(cls, v: list[Subset]) -> list[Subset]:
        names = [s.name for s in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"subset names must be unique; repeated: {', '.join(dupes)}")
        return v

    @model_validator(mode="after")
    def _failover_needs_outlier_detection(self) -> DestinationRuleSpec:
        # A subset's policy inherits the host's outlierDetection, so this is checked here, not per policy.
        host = self.traffic_policy
        problems = [f"trafficPolicy.{p}" for p in [host.failover_problem() if host else None] if p]
        for i, s in enumerate(self.subsets):
            problem = (
                s.traffic_policy.failover_problem(host.outlier_detection if host else None)
                if s.traffic_policy
                else None
            )
            problems += [f"subsets[{i}].trafficPolicy.{problem}"] if problem else []
        if problems:
            raise ValueError("; ".join(problems))
        return self
