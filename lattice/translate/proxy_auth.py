"""The outbound listener's credential, for workloads run without capture (proxy mode).

Without a network namespace of its own, a workload's outbound listener (127.0.10.x:15001, the
app's `HTTP_PROXY`) is on a loopback every local user reaches; whatever it forwards leaves with
the workload's certificate. So the listener asks for a credential only the app holds: the agent
makes a random secret per proxy, gives it to the app inside `HTTP_PROXY`
(`http://lattice:<secret>@127.0.10.x:15001`; curl, Python, Go send it as `Proxy-Authorization:
Basic ...` by themselves) and to Envoy as the htpasswd line of its SHA-1 in Envoy's own
environment (agent_names.PROXY_USERS_ENV). The control plane never holds it: this config names
the variable, not the secret.

- Envoy's basic_auth filter, first in the chain, checks `Proxy-Authorization` before any other
  filter sees the request. It compares SHA-1 digests of what the client sent, not the secret
  itself, so an early-exit comparison reveals nothing an attacker can use to guess it.
- Its refusal (a 401) becomes the proxy's 407 with `Proxy-Authenticate: Basic realm="lattice"`
  (a local reply mapper matching basic_auth's response details, so no other 401 is touched).
- The header is removed before routing: no upstream ever sees the credential.

A captured workload's app names no proxy (its connections are redirected) and so sends no
credential; its listener is in the workload's own namespace instead (translate/capture.py).
`--upstream` ports cannot ask for one: their clients dial them as the service itself.
"""

from __future__ import annotations

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.common.mutation_rules.v3 import mutation_rules_pb2
from envoy.config.core.v3 import base_pb2
from envoy.extensions.access_loggers.filters.cel.v3 import cel_pb2
from envoy.extensions.filters.http.basic_auth.v3 import basic_auth_pb2
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm

from lattice.mesh import Workload
from lattice.translate.agent_names import PROXY_USERS_ENV
from lattice.translate.protos import pack

BASIC_AUTH = "envoy.filters.http.basic_auth"
HEADER_MUTATION = "envoy.filters.http.header_mutation"
HEADER = "proxy-authorization"
REALM = 'Basic realm="lattice"'
# basic_auth's response details all end so (no_credential_, invalid_scheme_, invalid_format_,
# invalid_credential_for_basic_auth): its refusals, and nothing else, become 407.
_REFUSED = "response.code_details.endsWith('_for_basic_auth')"


def required(proxy: Workload) -> bool:
    """A sidecar's outbound listener asks for the credential unless its app is captured."""
    return proxy.kind == "sidecar" and not proxy.capture


def http_filters(proxy: Workload, port: int | None) -> list[hcm.HttpFilter]:
    """The check and the removal, for the shared outbound listener (`port` None) only."""
    if port is not None or not required(proxy):
        return []
    check = basic_auth_pb2.BasicAuth(
        users=base_pb2.DataSource(environment_variable=PROXY_USERS_ENV), authentication_header=HEADER
    )
    removal = header_mutation_pb2.HeaderMutation(
        mutations=header_mutation_pb2.Mutations(request_mutations=[mutation_rules_pb2.HeaderMutation(remove=HEADER)])
    )
    return [
        hcm.HttpFilter(name=BASIC_AUTH, typed_config=pack(check)),
        hcm.HttpFilter(name=HEADER_MUTATION, typed_config=pack(removal)),
    ]


def configure(manager: hcm.HttpConnectionManager, proxy: Workload) -> None:
    """Turn the filter's 401 into the proxy's 407, with the challenge clients answer."""
    if not required(proxy):
        return
    refused = accesslog_pb2.AccessLogFilter(
        extension_filter=accesslog_pb2.ExtensionFilter(
            name="envoy.access_loggers.extension_filters.cel",
            typed_config=pack(cel_pb2.ExpressionFilter(expression=_REFUSED)),
        )
    )
    challenge = base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key="proxy-authenticate", value=REALM),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    )
    manager.local_reply_config.mappers.append(
        hcm.ResponseMapper(
            filter=refused,
            status_code={"value": 407},
            headers_to_add=[challenge],
            body=base_pb2.DataSource(
                inline_string="proxy authentication required: use the HTTP_PROXY lattice run gave the app\n"
            ),
        )
    )
