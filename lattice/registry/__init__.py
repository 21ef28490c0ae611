"""Services and endpoints: which workloads run where, and whether they are healthy.

Parts:
- `registry` — `Registry`: register / heartbeat / deregister / expire, persisted in the store so a
               control-plane restart keeps every endpoint.

Rules: a workload exists while its agent heartbeats; one silent for longer than the heartbeat
timeout is dropped. Health is the agent's probe of its app: an unhealthy endpoint stays listed but
receives no traffic. The clock is injected so expiry is testable without sleeping.
With several replicas on etcd, a workload lives on an etcd lease that every heartbeat renews,
whichever replica hears it; expiry is the lease's, and `Registry.sync` brings in what other
replicas registered or what expired.
"""

from lattice.registry.registry import Registry

__all__ = ["Registry"]
