"""Mutual TLS: server and client ``ssl.SSLContext`` builders, and the principal a client certificate names.

The contexts are the standard library's, hardened: TLS 1.2 at least, certificates verified against the
CA file you give (not the system store, which would let any public CA vouch for a client), and, on the
server, a client certificate required. File problems surface as :class:`ConfigError` listing every bad
file at once, when the context is built, not on the first handshake. The contexts need only the
standard library; ``cryptography`` is imported only to read a certificate given as bytes or as a
``cryptography`` object.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal

from mainspring.context import Principal
from mainspring.errors import AuthenticationError, ConfigError, ConfigProblem, ValidationError

if TYPE_CHECKING:
    from cryptography import x509

__all__ = [
    "IdentitySource",
    "client_tls_context",
    "principal_from_certificate",
    "server_tls_context",
]

#: Where :func:`principal_from_certificate` may take the identity from.
IdentitySource = Literal["uri", "dns", "cn"]
_SOURCES: tuple[IdentitySource, ...] = ("uri", "dns", "cn")
_PathLike = str | os.PathLike[str]


def _check_min_version(min_version: ssl.TLSVersion) -> None:
    if not isinstance(min_version, ssl.TLSVersion) or min_version not in (
        ssl.TLSVersion.TLSv1_2,
        ssl.TLSVersion.TLSv1_3,
    ):
        raise ConfigError(
            "TLS context: min_version must be ssl.TLSVersion.TLSv1_2 or TLSv1_3",
            problems=[ConfigProblem("min_version", "TLS below 1.2 is not allowed", value=repr(min_version))],
        )


def _check_files(files: Mapping[str, _PathLike | None]) -> None:
    """Open every given file once, so a missing or unreadable one is named before OpenSSL sees it."""
    problems: list[ConfigProblem] = []
    for name, path in files.items():
        if path is None:
            continue
        shown = os.fspath(path)
        try:
            with open(path, "rb") as handle:
                empty = not handle.read(1)
        except FileNotFoundError:
            problems.append(ConfigProblem(name, "file not found", value=repr(shown)))
        except PermissionError:
            problems.append(ConfigProblem(name, "file not readable (permission denied)", value=repr(shown)))
        except IsADirectoryError:
            problems.append(ConfigProblem(name, "is a directory, not a PEM file", value=repr(shown)))
        except OSError as exc:
            problems.append(ConfigProblem(name, f"cannot read: {exc.strerror}", value=repr(shown)))
        else:
            if empty:
                problems.append(ConfigProblem(name, "file is empty", value=repr(shown)))
    if problems:
        raise ConfigError("TLS context: certificate files cannot be used", problems=problems)


def _ssl_reason(exc: ssl.SSLError) -> str:
    # The OpenSSL reason ("KEY_VALUES_MISMATCH", "NO_CERTIFICATE_OR_CRL_FOUND") says what is wrong.
    return exc.reason or (exc.strerror or str(exc)).split(" (_ssl.c")[0]


def _load_chain(
    context: ssl.SSLContext, cert_file: _PathLike, key_file: _PathLike, password: str | bytes | None
) -> None:
    def no_password() -> bytes:
        # Without a callback OpenSSL would prompt on the terminal and hang a service.
        raise ConfigError(
            "TLS context: key_file is encrypted; pass key_password",
            problems=[ConfigProblem("key_file", "encrypted, no key_password given")],
        )

    try:
        context.load_cert_chain(cert_file, key_file, password=no_password if password is None else password)
    except ssl.SSLError as exc:
        reason = _ssl_reason(exc)
        raise ConfigError(
            f"TLS context: cert_file and key_file could not be loaded ({reason}); check that both are PEM, "
            "that the key matches the certificate and that key_password is right",
            problems=[
                ConfigProblem("cert_file", f"OpenSSL: {reason}", value=repr(os.fspath(cert_file))),
                ConfigProblem("key_file", f"OpenSSL: {reason}", value=repr(os.fspath(key_file))),
            ],
        ) from None


def _load_ca(context: ssl.SSLContext, ca_file: _PathLike) -> None:
    try:
        context.load_verify_locations(cafile=ca_file)
    except ssl.SSLError as exc:
        reason = _ssl_reason(exc)
        raise ConfigError(
            f"TLS context: ca_file could not be loaded ({reason}); it must hold PEM CA certificates",
            problems=[ConfigProblem("ca_file", f"OpenSSL: {reason}", value=repr(os.fspath(ca_file)))],
        ) from None


def server_tls_context(
    cert_file: _PathLike,
    key_file: _PathLike,
    ca_file: _PathLike | None,
    *,
    require_client_cert: bool = True,
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2,
    key_password: str | bytes | None = None,
) -> ssl.SSLContext:
    """Build a server context that verifies client certificates against ``ca_file``.

        ``cert_file`` is the server's PEM certificate (chain), ``key_file`` its unencrypted PEM key, and
        ``ca_file`` the PEM bundle of the CAs allowed to issue client certificates (``key_password`` when
    the key is encrypted). With
        ``require_client_cert=False`` a client may connect without a certificate, but one it presents is
        still verified (``ca_file`` may then be ``None``: no client certificate is asked for). Raises
        :class:`ConfigError` naming every missing, unreadable or malformed file.
    """
    _check_min_version(min_version)
    if require_client_cert and ca_file is None:
        raise ConfigError(
            "TLS server context: require_client_cert=True needs ca_file, the CAs that issue client "
            "certificates",
            problems=[ConfigProblem("ca_file", "required when client certificates are required")],
        )
    _check_files({"cert_file": cert_file, "key_file": key_file, "ca_file": ca_file})
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = min_version
    _load_chain(context, cert_file, key_file, key_password)
    if ca_file is not None:
        _load_ca(context, ca_file)
        context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


def client_tls_context(
    ca_file: _PathLike,
    cert_file: _PathLike | None = None,
    key_file: _PathLike | None = None,
    *,
    check_hostname: bool = True,
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2,
    key_password: str | bytes | None = None,
) -> ssl.SSLContext:
    """Build a client context that verifies the server against ``ca_file`` and presents ``cert_file``.

    ``cert_file`` and ``key_file`` (PEM; ``key_password`` when encrypted) are the client's own
    certificate and key, given together or not at all. The server's certificate must chain to
    ``ca_file`` and, unless ``check_hostname=False``, name the host connected to (an IP SAN when
    connecting by address). Raises :class:`ConfigError` naming every missing, unreadable or malformed
    file.
    """
    _check_min_version(min_version)
    if (cert_file is None) != (key_file is None):
        missing = "key_file" if key_file is None else "cert_file"
        raise ConfigError(
            "TLS client context: cert_file and key_file go together; give both or neither",
            problems=[ConfigProblem(missing, "missing while the other is set")],
        )
    _check_files({"ca_file": ca_file, "cert_file": cert_file, "key_file": key_file})
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname by default
    context.minimum_version = min_version
    context.check_hostname = check_hostname
    _load_ca(context, ca_file)
    if cert_file is not None and key_file is not None:
        _load_chain(context, cert_file, key_file, key_password)
    return context


if TYPE_CHECKING:
    PeerCertificate = x509.Certificate | bytes | Mapping[str, object]


def _names_from_x509(cert: x509.Certificate) -> dict[IdentitySource, list[str]]:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    names: dict[IdentitySource, list[str]] = {"uri": [], "dns": [], "cn": []}
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        pass
    else:
        names["uri"] = san.get_values_for_type(x509.UniformResourceIdentifier)
        names["dns"] = san.get_values_for_type(x509.DNSName)
    for attribute in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
        value = attribute.value
        names["cn"].append(value if isinstance(value, str) else value.decode("utf-8", "replace"))
    return names


def _pairs(value: object) -> list[tuple[object, object]]:
    if not isinstance(value, tuple | list) or not all(
        isinstance(pair, tuple | list) and len(pair) == 2 for pair in value
    ):
        raise ValidationError(
            "client certificate: the mapping is not what ssl.SSLSocket.getpeercert() returns",
            errors=[{"loc": ["cert"], "msg": "malformed getpeercert() dict"}],
        )
    return [(pair[0], pair[1]) for pair in value]


def _names_from_dict(cert: Mapping[str, object]) -> dict[IdentitySource, list[str]]:
    # The shape ssl.SSLSocket.getpeercert() returns: "subject" is a tuple of RDNs, each a tuple of
    # (name, value) pairs; "subjectAltName" a tuple of (type, value) pairs.
    names: dict[IdentitySource, list[str]] = {"uri": [], "dns": [], "cn": []}
    for kind, value in _pairs(cert.get("subjectAltName", ())):
        if kind == "URI":
            names["uri"].append(str(value))
        elif kind == "DNS":
            names["dns"].append(str(value))
    subject = cert.get("subject", ())
    for rdn in subject if isinstance(subject, tuple | list) else _pairs(subject):
        for name, value in _pairs(rdn):
            if name == "commonName":
                names["cn"].append(str(value))
    return names


def _parse(cert: object) -> dict[IdentitySource, list[str]]:
    if cert is None or (isinstance(cert, Mapping) and not cert):
        # getpeercert() gives None without a certificate and {} when it was not verified (CERT_NONE).
        raise AuthenticationError("no verified client certificate: the peer presented none")
    if isinstance(cert, Mapping):
        return _names_from_dict(cert)
    from cryptography import x509

    if isinstance(cert, x509.Certificate):
        return _names_from_x509(cert)
    if isinstance(cert, bytes | bytearray | memoryview):
        data = bytes(cert)
        try:
            parsed = (
                x509.load_pem_x509_certificate(data)
                if data.lstrip().startswith(b"-----BEGIN")
                else x509.load_der_x509_certificate(data)
            )
        except ValueError:
            raise ValidationError(
                "client certificate: the bytes are not a DER (or PEM) X.509 certificate",
                errors=[{"loc": ["cert"], "msg": "not a certificate"}],
            ) from None
        return _names_from_x509(parsed)
    raise ValidationError(
        f"client certificate: expected a cryptography Certificate, DER bytes or a getpeercert() dict, "
        f"got {type(cert).__name__}",
        errors=[{"loc": ["cert"], "msg": "unsupported type"}],
    )


def principal_from_certificate(
    cert: PeerCertificate | None,
    *,
    sources: Sequence[IdentitySource] = _SOURCES,
    kind: str = "service",
    tenant: str | None = None,
    roles: frozenset[str] = frozenset(),
    scopes: frozenset[str] = frozenset(),
) -> Principal:
    """Return the :class:`Principal` a (verified) client certificate names.

    ``cert`` is a ``cryptography`` :class:`~cryptography.x509.Certificate`, its DER bytes
    (``ssl_object.getpeercert(binary_form=True)``) or the dict ``getpeercert()`` returns. The id is
    taken from the first of ``sources`` the certificate has: ``"uri"`` (the URI SAN, e.g. a SPIFFE
    id ``spiffe://example.org/ns/shop/sa/orders``; more than one is ambiguous and rejected), ``"dns"``
    (the first DNS SAN), ``"cn"`` (the subject common name). ``auth_method`` is ``"mtls"``.

    This function reads the certificate; it does not verify it. Pass only what the TLS handshake
    verified (a context from :func:`server_tls_context`). Raises :class:`AuthenticationError` when there
    is no certificate or it names no identity, :class:`ValidationError` for input that is not a
    certificate.
    """
    unknown = [s for s in sources if s not in _SOURCES]
    if unknown or not sources:
        raise ValidationError(
            f"principal_from_certificate: sources must be a non-empty sequence of {list(_SOURCES)}, "
            f"got {list(sources)!r}",
            errors=[{"loc": ["sources"], "msg": "unknown identity source"}],
        )
    names = _parse(cert)
    for source in sources:
        values = names[source]
        if not values:
            continue
        if source == "uri" and len(values) > 1:
            raise AuthenticationError(
                f"client certificate has {len(values)} URI SANs; its identity is ambiguous "
                "(SPIFFE allows one)"
            )
        identity = values[0].strip()
        if identity:
            return Principal(
                id=identity, kind=kind, tenant=tenant, roles=roles, scopes=scopes, auth_method="mtls"
            )
    raise AuthenticationError(
        f"client certificate names no identity: none of {', '.join(sources)} is present"
    )
