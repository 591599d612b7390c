"""Settings, read once at start from ``MAILPLANE_*`` environment variables.

Every setting has a development default, so ``make run`` needs none of them
(twelve-factor config). Secrets are ``SecretStr`` and never shown in reprs or logs.

Outside development (``MAILPLANE_ENV=production``) the development defaults of
secrets are well-known values, so they are refused: every secret setting (every
``SecretStr`` field but ``OPTIONAL_SECRETS``) must be set, and not to its
development default, or the process refuses to start naming the settings.
"""

from __future__ import annotations

import ipaddress
import types
import typing
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Secret settings that may stay unset in production: each has a fallback that is
#: itself a required secret (``service_database_url`` is derived from
#: ``database_url`` and ``db_role_password``).
OPTIONAL_SECRETS = frozenset({"service_database_url"})


class Settings(BaseSettings):
    """Every Mailplane setting; each field ``x`` is read from ``MAILPLANE_X``.

    Raises:
        pydantic.ValidationError: a value does not parse, or ``env`` is
            ``production`` and a secret setting is unset or holds its
            development default (the message names each ``MAILPLANE_*``).
    """

    model_config = SettingsConfigDict(env_prefix="MAILPLANE_", frozen=True, extra="ignore")

    #: ``development`` (the default; secrets fall back to well-known development
    #: values) or ``production`` (every secret setting must be set explicitly).
    env: Literal["development", "production"] = "development"

    #: Administrative DSN: used by ``migrate`` to create each service's role and
    #: schema, and (in one-cluster deployments) as the template of the service DSN.
    database_url: SecretStr = SecretStr("postgresql://postgres@127.0.0.1:5432/postgres")
    #: This process's own DSN; when unset, ``database_url`` with the service's
    #: role (``mailplane_<service>``) and ``db_role_password``.
    service_database_url: SecretStr | None = None
    #: Password given to the service roles that ``migrate`` creates.
    db_role_password: SecretStr = SecretStr("mailplane-dev-role")
    #: Connections per process pool (a small machine: 2-4).
    db_pool_size: int = 4
    #: The service credential for operator commands and work no caller started.
    internal_token: SecretStr = SecretStr("mailplane-dev-internal-token")

    #: Interface the gRPC servers and the gateway listen on.
    bind_host: str = "127.0.0.1"
    pods_addr: str = "127.0.0.1:50051"
    inboxes_addr: str = "127.0.0.1:50052"
    domains_addr: str = "127.0.0.1:50053"
    mailboxes_addr: str = "127.0.0.1:50054"
    messages_addr: str = "127.0.0.1:50055"
    #: The MX listener of ``python -m services.messages smtp`` (inbound, no AUTH).
    smtp_inbound_addr: str = "127.0.0.1:2525"
    #: SMTP submission for mail clients (RFC 6409): STARTTLS, and implicit TLS (RFC 8314).
    submission_addr: str = "127.0.0.1:2587"
    submissions_addr: str = "127.0.0.1:2465"
    #: The IMAP listener of ``python -m services.messages imap`` (implicit TLS).
    imap_addr: str = "127.0.0.1:1993"
    #: The PEM certificate chain and private key of the TLS listeners (submission,
    #: IMAP); the local launcher makes a self-signed pair under ``.mailplane/``.
    #: Without them the submission listeners do not start, nor does IMAP.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: Failed IMAP logins allowed per username, and per client IP, in
    #: ``login_failure_window_seconds``; past either, logins are refused unchecked.
    login_failures_per_user: int = 5
    login_failures_per_ip: int = 20
    login_failure_window_seconds: float = 300.0
    #: The largest message the SMTP edge accepts, in bytes (advertised with SIZE).
    max_message_bytes: int = 25 * 1024 * 1024
    #: Messages waiting in the spool beyond which the SMTP edge answers RCPT with
    #: ``452 4.3.1`` until the workers catch up; 0 turns the check off.
    spool_high_water: int = 5000
    #: Days a deleted inbox's address stays reserved for its pod (DESIGN §7.2).
    address_reclaim_days: int = 30
    #: Whether webhooks may target loopback and private addresses (DESIGN §7.1).
    webhook_allow_private: bool = False
    #: Fernet key (urlsafe base64 of 32 bytes) that encrypts webhook signing secrets
    #: at rest; the local launcher generates one. The default is for tests only.
    webhook_secret_key: SecretStr = SecretStr("bWFpbHBsYW5lLWRldi13ZWJob29rLXNlY3JldC1rZXk=")
    #: Webhook deliveries in flight at once per worker process.
    webhook_concurrency: int = 128
    #: Seconds an endpoint has to answer a delivery (DESIGN §7.6: 15 s).
    webhook_timeout_seconds: float = 15.0
    #: Messages one inbox or mailbox may send per minute and per day (DESIGN §7.5;
    #: 0: no limit); over it a send is ``send_rate_limited`` (429, Retry-After).
    send_limit_per_minute: int = 600
    send_limit_per_day: int = 50_000
    #: Hours an outbound delivery is retried on 4xx before it bounces (DESIGN §7.5).
    delivery_max_hours: int = 72
    gateway_port: int = 8080

    #: The platform's own domain, usable by every pod (DESIGN §1).
    shared_domain: str = "mailplane.test"
    #: The MX target custom domains publish (receiving), and its priority.
    mail_host: str = "mx.mailplane.test"
    mx_priority: int = 10
    #: The SPF include custom domains publish (sending).
    spf_include: str = "spf.mailplane.test"
    #: Where inboxes' mail clients read (IMAPS, TLS) and send (submission, STARTTLS).
    imap_host: str = "imap.mailplane.test"
    imap_port: int = 993
    smtp_host: str = "smtp.mailplane.test"
    smtp_port: int = 587
    #: DNS resolvers for domain verification, ``host:port`` comma-separated;
    #: empty means the system resolver.
    dns_nameservers: str = ""
    #: Seconds one DNS lookup may take.
    dns_timeout_seconds: float = 3.0
    #: The port outbound delivery connects to on a recipient domain's MX hosts
    #: (DESIGN §7.1; 25 in production, a local sink's port in tests).
    outbound_port: int = 25
    #: ``host:port`` that relays every outbound message instead of MX delivery;
    #: empty means deliver to each recipient domain's MX hosts.
    smarthost: str = ""
    #: Seconds before the first retry of a deferred delivery; each retry waits
    #: twice as long, up to 12 times this (Postfix: 300 s growing to about an hour).
    delivery_retry_base_seconds: float = 300.0
    #: Deliveries in flight at once per worker process.
    delivery_concurrency: int = 64
    #: Deliveries in flight at once to one destination (a recipient domain, or
    #: the smarthost); Postfix's ``default_destination_concurrency_limit``.
    delivery_destination_concurrency: int = 20
    #: Seconds a leased delivery stays taken; a worker that dies mid-delivery
    #: leaves it to be taken again after this (longer than one SMTP transaction).
    delivery_lease_seconds: float = 900.0
    #: Seconds one SMTP command (connect, greeting, each reply) may take outbound.
    delivery_timeout_seconds: float = 60.0
    #: Fernet key (urlsafe base64 of 32 bytes) that encrypts DKIM private keys at
    #: rest; the domains service refuses to start without it (the local launcher
    #: generates one).
    dkim_encryption_key: SecretStr | None = None
    #: The shared domain's DKIM private key (RSA, PKCS#8 PEM; newlines may be
    #: written ``\n`` to fit one line), selector ``mailplane``: every message
    #: from the shared domain is signed with it (DESIGN §7.5). The domains service
    #: refuses to start without it; the local launcher generates one and writes the
    #: TXT record to publish at ``mailplane._domainkey.<shared domain>`` to
    #: ``<state dir>/shared-dkim.txt``.
    shared_dkim_private_key: SecretStr | None = None
    #: HMAC-SHA-256 key under which the inboxes service stores IMAP/SMTP
    #: passwords (at least 32 bytes; the local launcher generates one). Changing
    #: it invalidates every stored password until its inbox's credentials rotate.
    credential_hash_key: SecretStr = SecretStr("mailplane-dev-credential-hash-key")
    #: HMAC-SHA-256 key that signs page tokens (``services.chassis.pagination``),
    #: shared by every service (the local launcher generates one). Changing it
    #: invalidates the page tokens in flight: clients start again from page one.
    page_token_key: SecretStr = SecretStr("mailplane-dev-page-token-key")
    #: Where the local launcher keeps the embedded database and the dev key.
    state_dir: Path = Path(".mailplane")

    #: How long an authenticated key is trusted without asking again (≤ 5 s).
    auth_cache_seconds: float = 5.0
    #: Deadline of every call to another service, in seconds.
    peer_deadline_seconds: float = 5.0
    #: Intents and pending rows older than this are swept, in seconds.
    stale_intent_seconds: float = 30.0
    #: How often each service sweeps, in seconds.
    sweep_interval_seconds: float = 15.0
    #: ``auto`` (JSON unless stderr is a TTY), ``json`` or ``console``.
    log_format: str = "auto"
    log_level: str = "info"

    #: Port of this process's Prometheus ``/metrics`` listener, on ``bind_host``;
    #: 0 (the default) starts none (``services.chassis.metrics``).
    metrics_port: int = 0
    #: OTLP/HTTP endpoint traces are exported to (``http://collector:4318``);
    #: empty (the default) turns tracing off (``services.chassis.tracing``).
    otlp_endpoint: str = ""
    #: TLS between services (``services.chassis.tls``): this process's PEM
    #: certificate chain and key (served by gRPC servers; presented by clients
    #: when ``grpc_tls_client_auth``), and the PEM bundle peers must chain to.
    grpc_tls_cert: Path | None = None
    grpc_tls_key: Path | None = None
    grpc_tls_ca: Path | None = None
    #: Mutual TLS: servers require a client certificate issued by ``grpc_tls_ca``.
    grpc_tls_client_auth: bool = False
    #: Port of a plaintext gRPC listener serving only ``grpc.health.v1.Health``
    #: (for Kubernetes ``grpc:`` probes, which speak no TLS); 0 starts none.
    grpc_health_port: int = 0

    @model_validator(mode="after")
    def _refuse_development_secrets(self) -> Settings:
        """In production, refuses secret settings left unset or at their
        development default (issue 11: services started on well-known secrets)."""
        if self.env == "development":
            return self
        fields = type(self).model_fields
        refused = [
            setting_name(name)
            for name in secret_settings()
            if name not in OPTIONAL_SECRETS
            and (getattr(self, name) is None or getattr(self, name) == fields[name].default)
        ]
        if refused:
            raise ValueError(
                f"MAILPLANE_ENV={self.env} needs every secret set to a value of its own; "
                f"unset or left at the development default: {', '.join(refused)}"
            )
        return self

    @model_validator(mode="after")
    def _refuse_plaintext_off_loopback(self) -> Settings:
        """Refuses gRPC in plaintext on an interface other than loopback, and a
        half-configured TLS (a certificate without its key; mutual TLS without a
        CA or a certificate). Plaintext is for a development machine only."""
        if (self.grpc_tls_cert is None) != (self.grpc_tls_key is None):
            raise ValueError("MAILPLANE_GRPC_TLS_CERT and MAILPLANE_GRPC_TLS_KEY go together")
        if self.grpc_tls_client_auth and (self.grpc_tls_ca is None or self.grpc_tls_cert is None):
            raise ValueError(
                "MAILPLANE_GRPC_TLS_CLIENT_AUTH needs MAILPLANE_GRPC_TLS_CA and a certificate"
            )
        if self.grpc_tls_cert is None and not is_loopback(self.bind_host):
            raise ValueError(
                f"MAILPLANE_BIND_HOST={self.bind_host} is not loopback: gRPC between services "
                "needs TLS there; set MAILPLANE_GRPC_TLS_CERT, _KEY and _CA"
            )
        return self

    def service_dsn(self, service: str) -> str:
        """Returns the DSN this process uses for ``service``'s own schema.

        Args:
            service: the service name, which is also its schema (``pods``).
        """
        if self.service_database_url is not None:
            return self.service_database_url.get_secret_value()
        return with_credentials(
            self.database_url.get_secret_value(),
            role_name(service),
            self.db_role_password.get_secret_value(),
        )

    def port_of(self, service: str) -> int:
        """Returns the gRPC port ``service`` listens on, from its ``<service>_addr``."""
        addr: str = getattr(self, f"{service}_addr")
        return int(addr.rsplit(":", 1)[1])


def secret_settings() -> list[str]:
    """Returns the field names of every secret setting (typed ``SecretStr``), in
    declaration order, e.g. ``["database_url", …, "internal_token", …]``."""
    return [
        name
        for name, field in Settings.model_fields.items()
        if SecretStr in _members(field.annotation)
    ]


def _members(annotation: Any) -> tuple[Any, ...]:
    """The types of a union annotation (``SecretStr | None``), or the type itself."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return typing.get_args(annotation)
    return (annotation,)


def setting_name(field: str) -> str:
    """Returns the environment variable of a settings field: ``MAILPLANE_<FIELD>``."""
    return f"MAILPLANE_{field.upper()}"


def from_environment(**kwargs: Any) -> Settings:
    """Returns ``Settings(**kwargs)`` (the environment, plus e.g. ``_env_file``),
    for a process's entry point.

    Raises:
        SystemExit: the settings are refused; its message (printed by Python on
            exit, with status 1) says which settings and why.
    """
    try:
        return Settings(**kwargs)
    except ValidationError as exc:
        reasons = "; ".join(
            f"{setting_name(str(error['loc'][0])) + ': ' if error['loc'] else ''}"
            f"{error['msg'].removeprefix('Value error, ')}"
            for error in exc.errors()
        )
        raise SystemExit(f"Mailplane refuses to start: {reasons}") from None


def is_loopback(host: str) -> bool:
    """Tells whether ``host`` (an address or ``localhost``) is a loopback interface."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def role_name(service: str) -> str:
    """Returns the PostgreSQL role that owns ``service``'s schema."""
    return f"mailplane_{service}"


def with_credentials(dsn: str, user: str, password: str) -> str:
    """Returns ``dsn`` with its user and password replaced (host, query kept)."""
    parts = urlsplit(dsn)
    host = parts.netloc.rsplit("@", 1)[-1] if "@" in parts.netloc else parts.netloc
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
