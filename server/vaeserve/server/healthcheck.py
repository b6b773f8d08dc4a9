"""`vaeserve-healthcheck`: the standard gRPC health check against the local server, for container probes.

Exit status 0 only when the server answers SERVING. The port comes from the same settings as the
server's (flags, VAESERVE_PORT, the config file), so the probe follows the server's configuration.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from vaeserve.server.boundary.auth import read_tokens
from vaeserve.server.settings import Settings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vaeserve-healthcheck", description=__doc__)
    parser.add_argument("--target", help="host:port (default: 127.0.0.1 and the configured port)")
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    settings = Settings()
    target = args.target or f"127.0.0.1:{settings.port}"
    # With --auth-health the probe needs a token: the server's own first one (the probe runs beside it).
    tokens = settings.auth_tokens or settings.admin_tokens
    metadata = [("authorization", f"Bearer {read_tokens(tokens)[0]}")] if settings.auth_health and tokens else None
    with grpc.insecure_channel(target) as channel:
        try:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=args.timeout, metadata=metadata)
        except grpc.RpcError as exc:
            print(f"{target}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{target}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
