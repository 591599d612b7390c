"""``python -m deploy.probe grpc HOST:PORT [SERVICE]`` or ``python -m deploy.probe http URL``:
a container health check with nothing but the image (compose ``healthcheck``).

Exits 0 when the gRPC health service answers SERVING (for ``SERVICE``, default the
whole server; plaintext, as on ``MAILPLANE_GRPC_HEALTH_PORT``) or the URL answers
200, else 1.
"""

from __future__ import annotations

import sys
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def healthy(kind: str, target: str, service: str = "") -> bool:
    """Whether ``target`` is healthy (see the module docstring); never raises."""
    try:
        if kind == "http":
            with urllib.request.urlopen(target, timeout=2) as answer:
                return bool(answer.status == 200)
        with grpc.insecure_channel(target) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=2
            )
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
    except (OSError, grpc.RpcError):
        return False


def main() -> None:
    """Parses the arguments and exits 0 (healthy) or 1."""
    if len(sys.argv) < 3 or sys.argv[1] not in ("grpc", "http"):
        raise SystemExit(__doc__)
    sys.exit(0 if healthy(*sys.argv[1:4]) else 1)


if __name__ == "__main__":
    main()
