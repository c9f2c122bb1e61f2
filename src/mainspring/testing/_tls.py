"""A throwaway certificate authority for TLS and mTLS tests: a CA, server and client certificates.

Keys are ECDSA P-256 (fast to generate); certificates are what a real deployment would carry (basic
constraints, key usage, extended key usage, SANs), so a test exercises the same verification path.
Nothing here is fit for production use: the keys are unencrypted and meant to live in ``tmp_path``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CertificateAuthority", "IssuedCertificate", "issue_test_cert", "make_test_ca"]

_ONE_DAY = dt.timedelta(days=1)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write(path: Path, data: bytes, *, private: bool) -> Path:
    path.write_bytes(data)
    if private:
        os.chmod(path, 0o600)
    return path


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """A certificate and its private key, with PEM forms and a way to write them to files."""

    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        """The certificate as PEM."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM."""
        return _key_pem(self.private_key)

    @property
    def der(self) -> bytes:
        """The certificate as DER (what ``getpeercert(binary_form=True)`` returns)."""
        return self.certificate.public_bytes(serialization.Encoding.DER)

    def write(self, directory: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
        """Write ``<name>.crt`` and ``<name>.key`` (mode 0600) into ``directory``; return both paths."""
        folder = Path(directory)
        cert = _write(folder / f"{name}.crt", self.cert_pem, private=False)
        key = _write(folder / f"{name}.key", self.key_pem, private=True)
        return cert, key


@dataclass(frozen=True, slots=True)
class CertificateAuthority:
    """A self-signed CA that issues test certificates (see :func:`make_test_ca`)."""

    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        """The CA certificate as PEM: the ``ca_file`` content for TLS contexts."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def write(self, directory: str | os.PathLike[str], name: str = "ca") -> Path:
        """Write the CA certificate to ``<directory>/<name>.crt`` and return the path."""
        return _write(Path(directory) / f"{name}.crt", self.cert_pem, private=False)

    def issue(
        self,
        common_name: str,
        *,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
        uris: Sequence[str] = (),
        server: bool = False,
        client: bool = True,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> IssuedCertificate:
        """Issue a leaf certificate; see :func:`issue_test_cert`."""
        return issue_test_cert(
            self,
            common_name,
            dns_names=dns_names,
            ip_addresses=ip_addresses,
            uris=uris,
            server=server,
            client=client,
            not_before=not_before,
            not_after=not_after,
        )


def make_test_ca(common_name: str = "mainspring test CA", *, valid_days: int = 2) -> CertificateAuthority:
    """Create a self-signed CA certificate and key, valid from a day ago for ``valid_days`` days.

    >>> ca = make_test_ca()
    >>> ca.certificate.subject.rfc4514_string()
    'CN=mainspring test CA'
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _ONE_DAY)
        .not_valid_after(now + dt.timedelta(days=valid_days))
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(cert, key)


def issue_test_cert(
    ca: CertificateAuthority,
    common_name: str,
    *,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    uris: Sequence[str] = (),
    server: bool = False,
    client: bool = True,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> IssuedCertificate:
    """Issue a leaf certificate signed by ``ca``.

    ``dns_names``, ``ip_addresses`` and ``uris`` (e.g. ``"spiffe://test.example/orders"``) become SANs;
    ``server``/``client`` set the extended key usages. Validity defaults to a day ago until a day from
    now; pass ``not_after`` in the past for an expired certificate. A server certificate for local
    tests: ``issue_test_cert(ca, "localhost", dns_names=["localhost"], ip_addresses=["127.0.0.1"],
    server=True, client=False)``.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    start = not_before or now - _ONE_DAY
    end = not_after or now + _ONE_DAY
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] if server else []
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(min(start, end - dt.timedelta(seconds=1)))
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.private_key.public_key()), critical=False
        )
    )
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    alt_names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    alt_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    alt_names += [x509.UniformResourceIdentifier(uri) for uri in uris]
    if alt_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    return IssuedCertificate(builder.sign(ca.private_key, hashes.SHA256()), key)
