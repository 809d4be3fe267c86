"""Generated gRPC stubs of the moldau.v1 API (by scripts/gen_proto.py)."""
