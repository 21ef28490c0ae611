"""Names the API's schemas accept that other layers read without loading the schemas: a leaf
module (the sidecar agent needs these, not pydantic's models)."""

# Istio's protocol names, lower case (lattice.mesh.protocol chooses among them; UDP is refused).
PROTOCOLS = ("http", "https", "http2", "grpc", "grpc-web", "tcp", "tls", "mongo", "mysql", "redis")
PROMETHEUS = "prometheus"  # the Telemetry API's only metrics provider
