"""DestinationRule trafficPolicy beyond TLS: loadBalancer, connectionPool, outlierDetection, at host,
port and subset level. Istio's field names and rules; what Lattice does not do is refused by name."""

from __future__ import annotations

import pytest

from lattice.api import ValidationError, parse_documents

DR = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r}\nspec:\n  host: r\n"
OD = "outlierDetection: {consecutive5xxErrors: 3}"

FULL = """  trafficPolicy:
    loadBalancer:
      simple: LEAST_REQUEST
      warmupDurationSecs: 30s
      localityLbSetting:
        failover: [{from: us-east, to: eu-west}]
        failoverPriority: [topology.istio.io/network, version=v1]
    connectionPool:
      tcp: {maxConnections: 100, connectTimeout: 30ms, tcpKeepalive: {probes: 3, time: 7200s, interval: 75s},
      maxConnectionDuration: 1h, idleTimeout: 0s}
      http: {http1MaxPendingRequests: 10, http2MaxRequests: 1000, maxRequestsPerConnection: 10, maxRetries: 3,
      idleTimeout: 5m,
             h2UpgradePolicy: DO_NOT_UPGRADE, useClientProtocol: true, maxConcurrentStreams: 100}
    outlierDetection:
      consecutive5xxErrors: 7
      consecutiveGatewayErrors: 2
      splitExternalLocalOriginErrors: true
      consecutiveLocalOriginFailures: 4
      interval: 5m
      baseEjectionTime: 15m
      maxEjectionPercent: 100
      minHealthPercent: 20
    portLevelSettings:
    - port: {number: 9080}
      loadBalancer: {consistentHash: {httpCookie: {name: user, path: /, ttl: 0s}, maglev: {tableSize: 65537}}}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy:
      loadBalancer: {consistentHash: {useSourceIp: true, ringHash: {minimumRingSize: 2048}}}
      portLevelSettings:
      - port: {number: 9080}
        loadBalancer: {simple: ROUND_ROBIN, warmup: {duration: 10s, minimumPercent: 10, aggression: 1.5}}
  - name: v2
    trafficPolicy:
      loadBalancer:
        consistentHash: {httpQueryParameterName: q, minimumRingSize: 64}
        localityLbSetting: {distribute: [{from: us-west/zone1/*, to: {"us-west/zone1/*": 80, "us-west/zone2/*": 20}}]}
"""


def _spec(text: str):
    (r,) = parse_documents(DR + text)
    return r


def _errors(text: str) -> list[str]:
    with pytest.raises(ValidationError) as e:
        parse_documents(DR + text, "f.yaml")
    return [str(x) for x in e.value.errors]


def test_every_supported_field_is_accepted_and_round_trips_in_istio_spelling():
    r = _spec(FULL)
    policy = r.spec.traffic_policy
    assert policy.outlier_detection.consecutive_5xx_errors == 7
    assert policy.load_balancer.locality_lb_setting.failover[0].from_ == "us-east"
    assert policy.connection_pool.http.h2_upgrade_policy == "DO_NOT_UPGRADE"
    assert r.spec.subsets[1].traffic_policy.load_balancer.locality_lb_setting.distribute[0].to == {
        "us-west/zone1/*": 80,
        "us-west/zone2/*": 20,
    }
    again = parse_documents(__import__("yaml").safe_dump(r.to_dict()))[0]
    assert again.spec == r.spec
    assert r.to_dict()["spec"]["trafficPolicy"]["outlierDetection"]["consecutive5xxErrors"] == 7
    assert r.to_dict()["spec"]["trafficPolicy"]["loadBalancer"]["localityLbSetting"]["failover"] == [
        {"from": "us-east", "to": "eu-west"}
    ]


@pytest.mark.parametrize("simple", ["UNSPECIFIED", "LEAST_CONN", "LEAST_REQUEST", "ROUND_ROBIN", "RANDOM"])
def test_simple_load_balancers(simple):
    assert (
        _spec(f"  trafficPolicy: {{loadBalancer: {{simple: {simple}}}}}\n").spec.traffic_policy.load_balancer.simple
        == simple
    )


def test_a_subset_may_fail_over_on_the_hosts_outlier_detection():
    r = _spec(
        f"  trafficPolicy: {{{OD}}}\n  subsets: "
        f"[{{name: a, trafficPolicy: {{loadBalancer: {{localityLbSetting: {{failover: [{{from: r1, to: r2}}]}}}}}}}}]\n"
    )
    assert r.spec.subsets[0].traffic_policy.load_balancer.locality_lb_setting.failover_wanted


def test_disabled_locality_needs_no_outlier_detection():
    _spec("  trafficPolicy: {loadBalancer: {localityLbSetting: {enabled: false, failover: [{from: r1, to: r2}]}}}\n")


TP = "  trafficPolicy: "
LB = TP + "{loadBalancer: "
CH = LB + "{consistentHash: "
CP = TP + "{connectionPool: "
ODT = TP + "{outlierDetection: "
LOC = LB + "{localityLbSetting: "


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            LB + "{simple: PASSTHROUGH}}\n",
            "spec.trafficPolicy.loadBalancer.simple: PASSTHROUGH forwards to the caller's original destination "
            "address, which exists only with transparent capture",
        ),
        (LB + "{simple: LEAST_CONNECTIONS}}\n", "spec.trafficPolicy.loadBalancer.simple: Input should be"),
        (
            LB + "{simple: RANDOM, consistentHash: {useSourceIp: true}}}\n",
            "spec.trafficPolicy.loadBalancer: set either simple or consistentHash, not both",
        ),
        (
            CH + "{ringHash: {minimumRingSize: 8}}}}\n",
            "spec.trafficPolicy.loadBalancer.consistentHash: set exactly one hash key of httpHeaderName, "
            "httpCookie, useSourceIp or httpQueryParameterName (got none)",
        ),
        (CH + "{httpHeaderName: x, useSourceIp: true}}}\n", "(got httpHeaderName, useSourceIp)"),
        (
            CH + "{httpHeaderName: x, maglev: {tableSize: 65536}}}}\n",
            "spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize: tableSize must be a prime number "
            "below 5000011",
        ),
        (
            CH + "{httpHeaderName: x, maglev: {tableSize: 5000011}}}}\n",
            "tableSize must be a prime number below 5000011",
        ),
        (
            CH + "{httpHeaderName: x, maglev: {}}}}\n",
            "spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize: Field required",
        ),
        (
            CH + "{httpHeaderName: x, ringHash: {minimumRingSize: 8}, maglev: {tableSize: 7}}}}\n",
            "set one of ringHash, maglev or the deprecated minimumRingSize (got ringHash, maglev)",
        ),
        (
            CH + "{httpHeaderName: x, minimumRingSize: 8, ringHash: {minimumRingSize: 8}}}}\n",
            "(got ringHash, minimumRingSize)",
        ),
        (
            CH + "{httpCookie: {path: /}}}}\n",
            "spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.name: Field required",
        ),
        (
            CH + "{httpCookie: {name: u, ttl: soon}}}}\n",
            "spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.ttl: 'soon' is not a duration",
        ),
        (
            CH + "{httpCookie: {name: u, attributes: [{name: SameSite, value: Strict}]}}}}\n",
            "spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.attributes: unknown field",
        ),
        (
            LB + "{simple: RANDOM, warmupDurationSecs: 10s}}\n",
            "spec.trafficPolicy.loadBalancer: warmupDurationSecs (slow start) works only with ROUND_ROBIN and "
            "LEAST_REQUEST",
        ),
        (
            LB + "{consistentHash: {useSourceIp: true}, warmup: {duration: 10s}}}\n",
            "warmup (slow start) works only with ROUND_ROBIN and LEAST_REQUEST",
        ),
        (
            LB + "{warmupDurationSecs: 10s, warmup: {duration: 10s}}}\n",
            "set warmup or the deprecated warmupDurationSecs, not both",
        ),
        (
            LB + "{warmup: {duration: 10s, aggression: 0.5}}}\n",
            "spec.trafficPolicy.loadBalancer.warmup.aggression: Input should be greater than or equal to 1",
        ),
        (LB + "{warmup: {minimumPercent: 10}}}\n", "spec.trafficPolicy.loadBalancer.warmup.duration: Field required"),
        (
            CP + "{tcp: {maxConnections: -1}}}\n",
            "spec.trafficPolicy.connectionPool.tcp.maxConnections: Input should be greater than or equal to 0",
        ),
        (
            CP + "{tcp: {connectTimeout: 0s}}}\n",
            "spec.trafficPolicy.connectionPool.tcp.connectTimeout: must be at least 1ms",
        ),
        (
            CP + "{tcp: {idleTimeout: 0.5ms}}}\n",
            "spec.trafficPolicy.connectionPool.tcp.idleTimeout: must be at least 1ms (or 0s to turn it off)",
        ),
        (
            CP + "{tcp: {tcpKeepalive: {time: 500ms}}}}\n",
            "spec.trafficPolicy.connectionPool.tcp.tcpKeepalive.time: must be at least 1000ms",
        ),
        (
            CP + "{http: {http2MaxRequests: 4294967296}}}\n",
            "spec.trafficPolicy.connectionPool.http.http2MaxRequests: Input should be less than or equal to 2147483647",
        ),
        (
            CP + "{http: {h2UpgradePolicy: UPGRADE, useClientProtocol: true}}}\n",
            "spec.trafficPolicy.connectionPool.http: useClientProtocol keeps the client's HTTP version",
        ),
        (
            CP + "{http: {maxRetries: 3, retryBudget: {percent: 20}}}}\n",
            "spec.trafficPolicy.connectionPool.http.retryBudget: unknown field",
        ),
        (
            ODT + "{consecutiveErrors: 5}}\n",
            "spec.trafficPolicy.outlierDetection.consecutiveErrors: consecutiveErrors is deprecated and Istio no "
            "longer applies it; use consecutiveGatewayErrors",
        ),
        (
            ODT + "{consecutiveLocalOriginFailures: 2}}\n",
            "spec.trafficPolicy.outlierDetection: consecutiveLocalOriginFailures is only counted when "
            "splitExternalLocalOriginErrors is true",
        ),
        (
            ODT + "{maxEjectionPercent: 101}}\n",
            "spec.trafficPolicy.outlierDetection.maxEjectionPercent: Input should be less than or equal to 100",
        ),
        (ODT + "{interval: 0s}}\n", "spec.trafficPolicy.outlierDetection.interval: must be at least 1ms"),
        (
            LOC + "{distribute: [{from: 'r1/*', to: {'r1/*': 100}}], failover: [{from: r1, to: r2}]}}, " + OD + "}\n",
            "spec.trafficPolicy.loadBalancer.localityLbSetting: set 'distribute' or failover",
        ),
        (
            LOC + "{distribute: [{from: 'r1/*', to: {'r1/*': 60, 'r2/*': 30}}]}}}\n",
            "spec.trafficPolicy.loadBalancer.localityLbSetting.distribute[0]: weights in 'to' must add up to 100 "
            "(they add up to 90)",
        ),
        (
            LOC + "{distribute: [{from: 'r1/*', to: {'r1/*': 0, 'r2/*': 100}}]}}}\n",
            "locality weights must be in 1..100; check r1/*",
        ),
        (
            LOC + "{distribute: [{from: 'r1/*/z', to: {'r1/*': 100}}]}}}\n",
            "locality 'r1/*/z' may use one '*', as its whole last part",
        ),
        (
            LOC + "{distribute: [{from: 'r1//z', to: {'r1/*': 100}}]}}}\n",
            "locality 'r1//z' must be region, region/zone or region/zone/subzone",
        ),
        (LOC + "{distribute: [{from: 'r1/*', to: {'*': 50, 'r2': 50}}]}}}\n", "localities overlap"),
        (
            LOC + "{failover: [{from: r1, to: r1}]}}, " + OD + "}\n",
            "spec.trafficPolicy.loadBalancer.localityLbSetting.failover[0]: failover from 'r1' to itself",
        ),
        (LOC + "{failover: [{from: r1/a, to: r2}]}}, " + OD + "}\n", "failover names regions only"),
        (
            LOC + "{failover: [{from: r1, to: r2}], failoverPriority: [topology.kubernetes.io/zone]}}, " + OD + "}\n",
            "'failover' already orders regions; remove topology label topology.kubernetes.io/zone",
        ),
        (
            LOC + "{failover: [{from: r1, to: r2}]}}}\n",
            "spec: trafficPolicy.loadBalancer.localityLbSetting failover takes effect only together with "
            "outlierDetection",
        ),
        (LOC + "{failoverPriority: [version]}}}\n", "takes effect only together with outlierDetection"),
        (
            "  subsets: [{name: a, trafficPolicy: {loadBalancer: {localityLbSetting: {failover: [{from: r1, to: "
            "r2}]}}}}]\n",
            "spec: subsets[0].trafficPolicy.loadBalancer.localityLbSetting failover takes effect only",
        ),
        (
            TP
            + "{"
            + OD
            + ", portLevelSettings: [{port: {number: 80}, loadBalancer: {localityLbSetting: {failoverPriority: "
            "[version]}}}]}\n",
            "spec.trafficPolicy.portLevelSettings[0]: loadBalancer.localityLbSetting failover takes effect only "
            "together with outlierDetection",
        ),
        (
            TP + "{tunnel: {protocol: CONNECT, targetHost: example.com, targetPort: 443}}\n",
            "spec.trafficPolicy.tunnel: tunnel (TCP carried over HTTP CONNECT or POST to a tunnel target) is not "
            "supported by Lattice",
        ),
        (
            TP + "{proxyProtocol: {version: V1}}\n",
            "spec.trafficPolicy.proxyProtocol: proxyProtocol (sending a PROXY protocol header upstream) is not "
            "supported by Lattice",
        ),
        (
            TP + "{portLevelSettings: [{port: {number: 80}, proxyProtocol: {version: V1}}]}\n",
            "spec.trafficPolicy.portLevelSettings[0].proxyProtocol: unknown field",
        ),
    ],
)
def test_bad_policy_names_the_field_and_the_reason(text, expected):
    errors = _errors(text)
    assert any(expected in e for e in errors), errors
