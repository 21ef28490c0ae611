"""etcd v3's gRPC messages, generated from `etcd.proto` (a wire-compatible subset of etcd's own
rpc.proto and kv.proto) by `generate.py`; `etcd_pb2` is generated code, never edited by hand."""
