"""Regenerate etcd_pb2.py from etcd.proto (run from anywhere).

Needs grpcio-tools, which Lattice does not need at run time: `pip install grpcio-tools==1.74.0`
in any virtualenv (its protoc emits code for protobuf >= 6.31, the floor xds-protos sets too),
then `python lattice/store/etcdpb/generate.py`. The generated module is checked in, so installing
Lattice never runs protoc. No *_pb2_grpc stubs: the client calls etcd's four services by method
path (lattice/store/etcd_client.py), which pins no grpcio version.
"""

import pathlib
import sys

from grpc_tools import protoc

HERE = pathlib.Path(__file__).resolve().parent


def main() -> int:
    code = protoc.main(["protoc", f"-I{HERE}", f"--python_out={HERE}", "etcd.proto"])
    if code:
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
