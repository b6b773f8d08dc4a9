"""A bare gRPC echo server: the floor any gRPC service pays per call, for the same message sizes.

One unary method on raw bytes (no protobuf), answering a fixed-size payload. Run as
`python -m bench.echo PORT REPLY_BYTES`; it prints "ready" once listening.
"""

from __future__ import annotations

import asyncio
import sys

import grpc

METHOD = "/bench.Echo/Call"


async def serve(port: int, reply_bytes: int) -> None:
    reply = b"\0" * reply_bytes

    async def call(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return reply

    handler = grpc.method_handlers_generic_handler("bench.Echo", {"Call": grpc.unary_unary_rpc_method_handler(call)})
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), int(sys.argv[2])))
