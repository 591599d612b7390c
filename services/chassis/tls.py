"""TLS between services: gRPC server and channel credentials from settings.

Configured with ``MAILPLANE_GRPC_TLS_CERT`` and ``MAILPLANE_GRPC_TLS_KEY`` (PEM
files: this process's certificate chain and private key), ``MAILPLANE_GRPC_TLS_CA``
(PEM bundle that peers' certificates must chain to) and
``MAILPLANE_GRPC_TLS_CLIENT_AUTH`` (servers require a client certificate from
that CA, and clients present their own: mutual TLS). A server's certificate must
name the host its peers dial (``pods`` in ``pods:50051``).

Plaintext is for loopback only: the settings refuse a non-loopback
``MAILPLANE_BIND_HOST`` without TLS (``services.chassis.config``).
"""

from __future__ import annotations

import grpc

from services.chassis.config import Settings


def _read(path: object) -> bytes:
    with open(str(path), "rb") as file:
        return file.read()


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """Returns the gRPC server credentials of ``settings``, or ``None`` for plaintext.

    Raises:
        OSError: a configured file cannot be read.
    """
    if settings.grpc_tls_cert is None or settings.grpc_tls_key is None:
        return None
    return grpc.ssl_server_credentials(
        [(_read(settings.grpc_tls_key), _read(settings.grpc_tls_cert))],
        root_certificates=_read(settings.grpc_tls_ca) if settings.grpc_tls_ca else None,
        require_client_auth=settings.grpc_tls_client_auth,
    )


def channel_credentials(settings: Settings) -> grpc.ChannelCredentials | None:
    """Returns the credentials of channels to peers, or ``None`` for plaintext.

    TLS is on when a CA (``MAILPLANE_GRPC_TLS_CA``) or a certificate is
    configured; with client auth, the process's own certificate is presented.

    Raises:
        OSError: a configured file cannot be read.
    """
    if settings.grpc_tls_ca is None and settings.grpc_tls_cert is None:
        return None
    mutual = settings.grpc_tls_client_auth and settings.grpc_tls_cert and settings.grpc_tls_key
    return grpc.ssl_channel_credentials(
        root_certificates=_read(settings.grpc_tls_ca) if settings.grpc_tls_ca else None,
        private_key=_read(settings.grpc_tls_key) if mutual else None,
        certificate_chain=_read(settings.grpc_tls_cert) if mutual else None,
    )
