"""The cluster's CA and the apiserver's serving certificate, as kubeadm makes them.

In-cluster clients (kubernetes_asyncio's ``load_incluster_config``, client-go's
``rest.InClusterConfig``) only speak HTTPS, verifying the server against the
``ca.crt`` mounted into their pod; so beside its plain-HTTP port (for kubeconfigs) the
fake also serves HTTPS with a certificate from this CA, for ``127.0.0.1`` (where
``KUBERNETES_SERVICE_HOST`` points here) and the ``kubernetes.default.svc`` names.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

NAMES = ["kubernetes", "kubernetes.default", "kubernetes.default.svc"]


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _builder(subject: x509.Name, issuer: x509.Name, public_key, now) -> x509.CertificateBuilder:
    """A certificate valid from a few minutes ago for a day (a test's lifetime)."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )


class ClusterCA:
    """A CA (``ca_pem``, as in ``kube-root-ca.crt``) and a server context signed by it."""

    def __init__(self, workdir: Path, cluster_domain: str = "cluster.local"):
        now = datetime.datetime.now(datetime.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes")])
        ca = (
            _builder(ca_name, ca_name, ca_key.public_key(), now)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_encipherment=False,
                    content_commitment=False,
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
        names = [*NAMES, f"kubernetes.default.svc.{cluster_domain}", "localhost"]
        san = [x509.DNSName(n) for n in names]
        san += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ("127.0.0.1", "10.96.0.1")]
        server_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")])
        cert = (
            _builder(server_name, ca_name, key.public_key(), now)
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        self.ca_pem = _pem(ca).decode()
        workdir.mkdir(parents=True, exist_ok=True)
        self.cert_file = workdir / "apiserver.crt"
        self.key_file = workdir / "apiserver.key"
        self.cert_file.write_bytes(_pem(cert))
        self.key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        self.key_file.chmod(0o600)

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context
