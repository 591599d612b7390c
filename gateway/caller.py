"""The caller of a request: its key, forwarded as gRPC metadata, and the deadline.

The gateway does not own identity (DESIGN §2): it takes the key from
``Authorization: Bearer <key>`` or ``X-API-Key: <key>`` and forwards it as
``authorization: Bearer <key>``; each service authenticates it. Nothing a client
sends is ever forwarded as the service credential. Plain functions, no FastAPI
dependency: no thread-pool hop and no per-request dependency solving.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from services.chassis import auth
from services.chassis.errors import MailplaneError

#: The OpenAPI security schemes every ``/v1`` operation accepts.
SECURITY_SCHEMES: dict[str, dict[str, str]] = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "`Authorization: Bearer mp_…`"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "`mp_…`"},
}
SECURITY: list[dict[str, list[str]]] = [{"bearer": []}, {"apiKey": []}]


@dataclass(frozen=True, slots=True)
class Caller:
    """What a call to a service needs for this request.

    Attributes:
        metadata: the caller's key and request ID, as gRPC metadata.
        timeout: the deadline of each call, in seconds.
    """

    metadata: tuple[tuple[str, str], ...]
    timeout: float


def caller_of(request: Request) -> Caller:
    """Returns the request's caller.

    Raises:
        MailplaneError: ``unauthenticated`` when no key is sent or it is malformed
            (refused here, before any call: no lookup for junk).
    """
    headers = request.headers
    authorization = headers.get("authorization", "")
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer":
        key = credentials.strip()
    else:
        key = headers.get("x-api-key", "").strip()
    if not key:
        raise MailplaneError(
            "unauthenticated",
            "Send your API key as `Authorization: Bearer <key>` or `X-API-Key: <key>`.",
        )
    if not auth.well_formed(key):
        raise auth.bad_key()
    return Caller(
        metadata=(("authorization", f"Bearer {key}"), ("x-request-id", request_id_of(request))),
        timeout=request.app.state.settings.peer_deadline_seconds,
    )


def request_id_of(request: Request) -> str:
    """The request ID the front middleware assigned (``gateway.front``)."""
    return str(request.scope.get("state", {}).get("request_id", ""))
