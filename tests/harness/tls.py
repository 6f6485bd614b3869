"""Certificates for mutual-TLS tests, made fresh in a test's tmp_path: a CA, a server
certificate for 127.0.0.1, client certificates (signed by the CA, or self-signed), and the
Envoy cluster that presents one of them to a TLS listener on loopback."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .envoy import IDLE_CLOSE_FIRST, static_cluster


@dataclass(frozen=True)
class Pem:
    """A certificate and its private key, as PEM files."""
    cert: Path
    key: Path


def _write(directory: Path, name: str, cert: x509.Certificate, key) -> Pem:
    pem = Pem(directory / f"{name}.crt", directory / f"{name}.key")
    pem.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return pem


def _certificate(subject: str, key, issuer: x509.Name | None = None, issuer_key=None,
                 names: list[x509.GeneralName] = (), ca: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (x509.CertificateBuilder()
               .subject_name(name).issuer_name(issuer or name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


class Authority:
    """A CA that issues certificates into `directory`."""

    def __init__(self, directory: Path, name: str = "test-ca"):
        self.directory = directory
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._cert = _certificate(name, self._key, ca=True)
        self.pem = _write(directory, name, self._cert, self._key)

    def issue(self, name: str, names: list[x509.GeneralName]) -> Pem:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(name, key, self._cert.subject, self._key, names)
        return _write(self.directory, name, cert, key)

    def server(self, name: str = "server") -> Pem:
        return self.issue(name, [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])

    def client(self, dns: str, name: str = "client") -> Pem:
        return self.issue(name, [x509.DNSName(dns)])


def self_signed(directory: Path, name: str, dns: str) -> Pem:
    key = ec.generate_private_key(ec.SECP256R1())
    return _write(directory, name, _certificate(name, key, names=[x509.DNSName(dns)]), key)


def tls_cluster(name: str, port: int, trusted_ca: Path, client: Pem | None) -> dict:
    """The harness's STATIC cluster to 127.0.0.1:`port`, over TLS, checking the server against
    `trusted_ca` and presenting `client` (none: an anonymous TLS client)."""
    common = {"validation_context": {"trusted_ca": {"filename": str(trusted_ca)},
                                     "match_typed_subject_alt_names": [{
                                         "san_type": "IP_ADDRESS",
                                         "matcher": {"exact": "127.0.0.1"}}]}}
    if client is not None:
        common["tls_certificates"] = [{"certificate_chain": {"filename": str(client.cert)},
                                       "private_key": {"filename": str(client.key)}}]
    return {
        **static_cluster(name, port),
        # As for the plain IdP cluster: Envoy closes an idle connection before Node does.
        "typed_extension_protocol_options": IDLE_CLOSE_FIRST,
        "transport_socket": {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
                         "UpstreamTlsContext",
                "common_tls_context": common,
            },
        },
    }
