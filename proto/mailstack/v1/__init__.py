"""Generated protobuf and gRPC stubs of the mailstack.v1 API (see scripts/gen_proto.py)."""
