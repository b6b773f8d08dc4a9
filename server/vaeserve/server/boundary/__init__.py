"""The request boundary every call passes through, gRPC and HTTP alike: ids, auth, admission, status, logs, metrics."""
