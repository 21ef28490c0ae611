"""The xDS resource types the translator produces, and the order proxies get them in. A leaf
module: the agent and the xDS server name these without loading the translator."""

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
EXTENSION_CONFIG = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"  # gateways' credentialName (SDS)
# Make-before-break: clusters and their endpoints exist before listeners and routes point at them.
# Extension configs (ECDS) and secrets (SDS) are asked for by the listeners that name them.
TYPE_ORDER = (CLUSTER, ENDPOINT, LISTENER, ROUTE, EXTENSION_CONFIG, SECRET)
