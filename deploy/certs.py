"""``python -m deploy.certs DIR [HOST …]``: a private CA and one certificate for TLS
between services, for deployments with no certificate authority of their own.

Writes ``DIR/ca.crt``, ``DIR/tls.crt`` and ``DIR/tls.key`` (PEM; the names a
Kubernetes ``kubernetes.io/tls`` Secret uses): an EC P-256 CA and a certificate
it signs for every ``HOST`` (default: the five services' names, ``localhost`` and
``127.0.0.1``), usable as server and as client certificate (mutual TLS). Set
``MAILPLANE_GRPC_TLS_CA``, ``_CERT`` and ``_KEY`` to the three files. Existing
files are kept, so a compose one-shot step can run it on every start.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: The services' host names in compose and Kubernetes, and loopback.
DEFAULT_HOSTS = ("pods", "inboxes", "domains", "mailboxes", "messages", "localhost", "127.0.0.1")
#: Validity of both certificates, in days.
VALID_DAYS = 825


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _alt_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def write(folder: Path, hosts: tuple[str, ...] = DEFAULT_HOSTS) -> None:
    """Writes ``ca.crt``, ``tls.crt`` and ``tls.key`` into ``folder`` unless
    ``tls.crt`` is there already.

    Args:
        folder: created if missing; ``tls.key`` is made readable by its owner only.
        hosts: the DNS names and IP addresses the certificate names.
    """
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / "tls.crt").exists():
        return
    now = datetime.datetime.now(datetime.UTC)
    until = now + datetime.timedelta(days=VALID_DAYS)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("Mailplane services CA"))
        .issuer_name(_name("Mailplane services CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.SubjectAlternativeName([_alt_name(h) for h in hosts]), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    (folder / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    key_path = folder / "tls.key"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    (folder / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def main() -> None:
    """Parses ``DIR [HOST …]`` and writes the files."""
    parser = argparse.ArgumentParser(prog="python -m deploy.certs", description=__doc__)
    parser.add_argument("folder", type=Path)
    parser.add_argument("hosts", nargs="*", default=list(DEFAULT_HOSTS))
    arguments = parser.parse_args()
    write(arguments.folder, tuple(arguments.hosts))


if __name__ == "__main__":
    main()
