"""Istio's stats tag-extraction rules, in every Envoy's bootstrap: Envoy's own statistics carry the
labels Istio's dashboards and documentation query.

Envoy turns a stat name into a Prometheus name plus labels with these rules: each regex's first
capture group is cut from the name, its second (if any) becomes the tag's value. The list is
Istio's (its bootstrap's `stats_tags`, `use_all_default_tags: false`), so for example
- `cluster.outbound|9080||reviews.default.svc.cluster.local.upstream_rq_total` reads
  `envoy_cluster_upstream_rq_total{cluster_name="outbound|9080||reviews.default.svc.cluster.local"}`
  (Envoy's default rule would cut the cluster name at its first dot);
- `http.inbound_0.0.0.0_9080.rbac.istio_dry_run_deny_.shadow_denied` reads
  `envoy_http_inbound_0_0_0_0_9080_rbac{authz_dry_run_action="deny",authz_dry_run_result="denied"}`,
  the series Istio's authorization dry-run task queries;
- `http.inbound_0.0.0.0_9080.rbac.denied` reads `envoy_http_inbound_0_0_0_0_9080_rbac{authz_enforce_result="denied"}`.

Istio's list also has one rule per Istio label for stats that encode labels in their names
(`reporter=.=destination;.;`); no stat here does (Istio's metrics come from the agent), and
Envoy runs every unanchored rule on every new stat name, which slowed sidecar start-up measurably
on a loaded machine, so they are left out until something emits such names.

The HTTP connection manager and listener rules take only address-like prefixes (digits, dots,
underscores, brackets, hex): a prefix with a name in it (`inbound_0.0.0.0_9080`) stays in the
metric name, as in Istio. Envoy evaluates these as ECMAScript regexes.
"""

from __future__ import annotations

# An address-like stat prefix: IPv4 (`10.0.0.1_80`) or IPv6 (`[__1]_80`) forms only.
_ADDRESS = r"((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))"

# (tag, regex), in Istio's order: the order matters where two rules could match one part.
ENVOY_RULES = (
    # `cluster.<name>.`, keeping a Kubernetes-style FQDN (`reviews.default.svc.cluster.local`) whole.
    ("cluster_name", r"^cluster\.((.+?(\..+?\.svc\.cluster\.local)?)\.)"),
    ("tcp_prefix", r"^tcp\.((.*?)\.)\w+?$"),
    ("response_code", r"_rq(_(\d{3}))$"),
    ("response_code_class", r"_rq(_(\dxx))$"),
    ("http_conn_manager_listener_prefix", rf"^listener(?=\.).*?\.http\.({_ADDRESS}\.)"),
    ("http_conn_manager_prefix", rf"^http\.({_ADDRESS}\.)"),
    ("listener_address", rf"^listener\.({_ADDRESS}\.)"),
    ("mongo_prefix", r"^mongo\.(.+?)\.(collection|cmd|cx_|op_|delays_|decoding_)(.*?)$"),
)
TRAILING_RULES = (
    ("cache", r"(cache\.(.+?)\.)"),
    ("component", r"(component\.(.+?)\.)"),
    ("tag", r"(tag\.(.+?);\.)"),
    ("wasm_filter", r"(wasm_filter\.(.+?)\.)"),
    # AuthorizationPolicy: enforced decisions, and dry-run ones (RBAC shadow rules whose stat
    # prefix is `istio_dry_run_<action>_`, translate/authz.py).
    ("authz_enforce_result", r"rbac(\.(allowed|denied))"),
    ("authz_dry_run_action", r"(\.istio_dry_run_(allow|deny)_)"),
    ("authz_dry_run_result", r"(\.shadow_(allowed|denied))"),
)


def stats_tags() -> list[dict]:
    """The bootstrap's `stats_config.stats_tags`."""
    return [{"tag_name": name, "regex": regex} for name, regex in ENVOY_RULES + TRAILING_RULES]


def stats_config() -> dict:
    """The bootstrap's `stats_config`: Istio's tag rules instead of Envoy's defaults."""
    return {"stats_tags": stats_tags(), "use_all_default_tags": False}
