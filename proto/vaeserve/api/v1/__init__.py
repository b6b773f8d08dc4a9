"""Generated protobuf and gRPC stubs for the vaeserve.api.v1 package (do not edit; `make proto`)."""
