"""Mutual TLS: contexts that refuse what they must, a real loopback server, principals from certificates."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import re
import runpy
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from mainspring.context import Principal
from mainspring.errors import AuthenticationError, ConfigError, ValidationError
from mainspring.security import client_tls_context, principal_from_certificate, server_tls_context
from mainspring.testing import CertificateAuthority, IssuedCertificate, issue_test_cert, make_test_ca

SPIFFE_ID = "spiffe://test.example/ns/shop/sa/orders"
Files = tuple[Path, Path]


@dataclass(frozen=True)
class Pki:
    """One CA with a server and several clients on disk, and a second CA nobody trusts."""

    ca: CertificateAuthority
    ca_file: Path
    other_ca_file: Path
    server: Files
    client: Files
    client_cert: IssuedCertificate
    foreign_client: Files
    expired_client: Files


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca = make_test_ca()
    other = make_test_ca("another CA")
    now = dt.datetime.now(dt.UTC)
    client = ca.issue("orders-service", uris=[SPIFFE_ID], dns_names=["orders.internal"])
    return Pki(
        ca=ca,
        ca_file=ca.write(folder),
        other_ca_file=other.write(folder, "other-ca"),
        server=ca.issue(
            "localhost", dns_names=["localhost"], ip_addresses=["127.0.0.1"], server=True, client=False
        ).write(folder, "server"),
        client=client.write(folder, "client"),
        client_cert=client,
        foreign_client=other.issue("orders-service", uris=[SPIFFE_ID]).write(folder, "foreign"),
        expired_client=ca.issue(
            "orders-service", not_before=now - dt.timedelta(days=3), not_after=now - dt.timedelta(hours=1)
        ).write(folder, "expired"),
    )


# --- A real server on 127.0.0.1 ---------------------------------------------------------------------


@dataclass
class Server:
    port: int
    principals: list[Principal]
    handled: list[int]  # one entry per connection that got past the handshake


@pytest.fixture
async def server(pki: Pki) -> AsyncIterator[Server]:
    principals: list[Principal] = []
    handled: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handled.append(1)
        # Both forms the socket offers must name the same principal.
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        principal = principal_from_certificate(der)
        assert principal_from_certificate(writer.get_extra_info("peercert")) == principal
        principals.append(principal)
        writer.write(principal.id.encode() + b"\n")
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    context = server_tls_context(*pki.server, pki.ca_file)
    srv = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    try:
        yield Server(srv.sockets[0].getsockname()[1], principals, handled)
    finally:
        srv.close()
        await srv.wait_closed()


async def _exchange(port: int, context: ssl.SSLContext) -> bytes:
    """Connect, read until EOF; a refused handshake reads nothing (TLS 1.3) or resets (TLS 1.2)."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    except (ssl.SSLError, ConnectionError):
        return b""
    try:
        return await reader.read()
    except (ssl.SSLError, ConnectionError):
        return b""
    finally:
        writer.close()
        with contextlib.suppress(ssl.SSLError, ConnectionError):  # the server dropped a refused client
            await writer.wait_closed()


VERSIONS = [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3]


@pytest.mark.parametrize("version", VERSIONS, ids=["tls1.2", "tls1.3"])
async def test_a_client_with_a_certificate_from_the_ca_connects_and_its_principal_is_derived(
    pki: Pki, server: Server, version: ssl.TLSVersion
) -> None:
    context = client_tls_context(pki.ca_file, *pki.client)
    context.maximum_version = version

    assert await _exchange(server.port, context) == SPIFFE_ID.encode() + b"\n"
    assert server.principals == [Principal(id=SPIFFE_ID, kind="service", auth_method="mtls")]
    assert server.handled == [1]


@pytest.mark.parametrize("version", VERSIONS, ids=["tls1.2", "tls1.3"])
@pytest.mark.parametrize("who", ["no certificate", "certificate from another CA", "expired certificate"])
async def test_a_client_the_server_cannot_verify_is_refused(
    pki: Pki, server: Server, who: str, version: ssl.TLSVersion
) -> None:
    files = {
        "no certificate": (None, None),
        "certificate from another CA": pki.foreign_client,
        "expired certificate": pki.expired_client,
    }[who]
    context = client_tls_context(pki.ca_file, *files)
    context.maximum_version = version

    assert await _exchange(server.port, context) == b""
    assert server.handled == []  # refused in the handshake: the handler never ran


async def test_a_client_refuses_a_server_its_ca_did_not_issue(pki: Pki, server: Server) -> None:
    context = client_tls_context(pki.other_ca_file, *pki.client)

    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        await asyncio.open_connection("127.0.0.1", server.port, ssl=context)
    assert server.handled == []


# --- Why a handshake fails: both ends in memory, so the server's own error is visible -----------------


def _server_error(server: ssl.SSLContext, client: ssl.SSLContext) -> ssl.SSLError | None:
    """Run a handshake over memory BIOs; return the server's error (None when it accepted the client)."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    tls_client = client.wrap_bio(c_in, c_out, server_hostname="localhost")
    tls_server = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):
        try:
            tls_client.do_handshake()
            done["client"] = True
        except ssl.SSLWantReadError:
            pass
        s_in.write(c_out.read())
        try:
            tls_server.do_handshake()
            done["server"] = True
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError as exc:
            return exc
        c_in.write(s_out.read())
        if all(done.values()):
            # TLS 1.3 verifies the client's certificate when its Finished arrives: give it a read.
            tls_client.write(b"x")
            s_in.write(c_out.read())
            try:
                tls_server.read(1)
            except ssl.SSLError as exc:
                return exc
            return None
    raise AssertionError("the handshake did not finish in 10 rounds")


@pytest.mark.parametrize(
    ("who", "reason"),
    [
        ("no certificate", "PEER_DID_NOT_RETURN_A_CERTIFICATE"),
        ("certificate from another CA", "unable to get local issuer certificate"),
        ("expired certificate", "certificate has expired"),
    ],
)
def test_the_server_refuses_each_bad_client_for_the_right_reason(pki: Pki, who: str, reason: str) -> None:
    files = {
        "no certificate": (None, None),
        "certificate from another CA": pki.foreign_client,
        "expired certificate": pki.expired_client,
    }[who]
    server = server_tls_context(*pki.server, pki.ca_file)

    error = _server_error(server, client_tls_context(pki.ca_file, *files))

    assert error is not None
    assert reason in str(error)
    assert _server_error(server, client_tls_context(pki.ca_file, *pki.client)) is None


def test_an_optional_client_certificate_admits_clients_without_one_but_still_verifies_one(pki: Pki) -> None:
    server = server_tls_context(*pki.server, pki.ca_file, require_client_cert=False)

    assert server.verify_mode == ssl.CERT_OPTIONAL
    assert _server_error(server, client_tls_context(pki.ca_file)) is None
    assert _server_error(server, client_tls_context(pki.ca_file, *pki.client)) is None
    error = _server_error(server, client_tls_context(pki.ca_file, *pki.foreign_client))
    assert error is not None
    assert "unable to get local issuer certificate" in str(error)


def test_contexts_require_tls_1_2_or_newer_and_verify_by_default(pki: Pki) -> None:
    server = server_tls_context(*pki.server, pki.ca_file)
    client = client_tls_context(pki.ca_file)

    assert server.verify_mode == ssl.CERT_REQUIRED
    assert client.verify_mode == ssl.CERT_REQUIRED
    assert client.check_hostname
    assert server.minimum_version == client.minimum_version == ssl.TLSVersion.TLSv1_2
    strict = server_tls_context(*pki.server, pki.ca_file, min_version=ssl.TLSVersion.TLSv1_3)
    assert strict.minimum_version == ssl.TLSVersion.TLSv1_3


# --- Configuration errors ---------------------------------------------------------------------------


def test_missing_files_are_all_named_in_one_config_error(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        server_tls_context(tmp_path / "nope.crt", pki.server[1], tmp_path / "nope-ca.crt")

    assert [(p.path, p.reason) for p in info.value.problems] == [
        ("cert_file", "file not found"),
        ("ca_file", "file not found"),
    ]
    assert "nope.crt" in str(info.value)


def test_an_empty_or_directory_path_is_a_config_error(pki: Pki, tmp_path: Path) -> None:
    empty = tmp_path / "empty.crt"
    empty.write_bytes(b"")

    with pytest.raises(ConfigError) as info:
        client_tls_context(empty, pki.client[0], tmp_path)

    assert [(p.path, p.reason) for p in info.value.problems] == [
        ("ca_file", "file is empty"),
        ("key_file", "is a directory, not a PEM file"),
    ]


def test_a_key_that_does_not_match_the_certificate_is_a_config_error(pki: Pki) -> None:
    with pytest.raises(ConfigError, match="KEY_VALUES_MISMATCH"):
        server_tls_context(pki.server[0], pki.client[1], pki.ca_file)


def test_a_ca_file_without_certificates_is_a_config_error(pki: Pki) -> None:
    with pytest.raises(ConfigError, match=r"ca_file could not be loaded \(NO_CERTIFICATE_OR_CRL_FOUND\)"):
        client_tls_context(pki.client[1])


def test_an_encrypted_key_without_password_fails_instead_of_prompting(pki: Pki, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    key = tmp_path / "encrypted.key"
    key.write_bytes(
        pki.client_cert.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"s3cret"),
        )
    )

    with pytest.raises(ConfigError, match="pass key_password"):
        client_tls_context(pki.ca_file, pki.client[0], key)
    context = client_tls_context(pki.ca_file, pki.client[0], key, key_password=b"s3cret")
    assert context.verify_mode == ssl.CERT_REQUIRED


def test_bad_arguments_are_config_errors(pki: Pki) -> None:
    with pytest.raises(ConfigError, match="needs ca_file"):
        server_tls_context(*pki.server, None)
    with pytest.raises(ConfigError, match="give both or neither"):
        client_tls_context(pki.ca_file, pki.client[0])
    with pytest.raises(ConfigError, match=r"TLS below 1\.2"):
        server_tls_context(*pki.server, pki.ca_file, min_version=ssl.TLSVersion.TLSv1_1)
    no_client_auth = server_tls_context(*pki.server, None, require_client_cert=False)
    assert no_client_auth.verify_mode == ssl.CERT_NONE


# --- Principals from certificates -------------------------------------------------------------------


def _peercert_dict(cert: IssuedCertificate, pki: Pki) -> dict[str, object]:
    """What ssl.SSLSocket.getpeercert() returns for ``cert``, from a real handshake in memory."""
    server = server_tls_context(*pki.server, pki.ca_file)
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    folder = pki.ca_file.parent
    client = client_tls_context(pki.ca_file, *cert.write(folder, f"peer-{cert.certificate.serial_number}"))
    tls_client = client.wrap_bio(c_in, c_out, server_hostname="localhost")
    tls_server = server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for obj, out, peer in ((tls_client, c_out, s_in), (tls_server, s_out, c_in)):
            with contextlib.suppress(ssl.SSLWantReadError):
                obj.do_handshake()
            peer.write(out.read())
    peercert = tls_server.getpeercert()
    assert peercert
    return dict(peercert)


def test_every_certificate_form_gives_the_same_principal(pki: Pki) -> None:
    cert = pki.client_cert
    expected = Principal(id=SPIFFE_ID, kind="service", auth_method="mtls")

    assert principal_from_certificate(cert.certificate) == expected
    assert principal_from_certificate(cert.der) == expected
    assert principal_from_certificate(cert.cert_pem) == expected
    assert principal_from_certificate(_peercert_dict(cert, pki)) == expected


@pytest.mark.parametrize(
    ("sans", "sources", "expected"),
    [
        ({"uris": [SPIFFE_ID], "dns_names": ["orders.internal"]}, ("uri", "dns", "cn"), SPIFFE_ID),
        ({"uris": [SPIFFE_ID], "dns_names": ["orders.internal"]}, ("dns", "uri"), "orders.internal"),
        ({"dns_names": ["orders.internal", "orders"]}, ("uri", "dns", "cn"), "orders.internal"),
        ({}, ("uri", "dns", "cn"), "orders-cn"),
        ({"uris": [SPIFFE_ID]}, ("cn",), "orders-cn"),
    ],
)
def test_the_identity_comes_from_the_first_source_the_certificate_has(
    pki: Pki, sans: dict[str, list[str]], sources: tuple[str, ...], expected: str
) -> None:
    cert = issue_test_cert(pki.ca, "orders-cn", **sans)  # type: ignore[arg-type]

    assert principal_from_certificate(cert.certificate, sources=sources).id == expected  # type: ignore[arg-type]
    assert principal_from_certificate(_peercert_dict(cert, pki), sources=sources).id == expected  # type: ignore[arg-type]


def test_principal_fields_can_be_set_by_the_caller(pki: Pki) -> None:
    principal = principal_from_certificate(
        pki.client_cert.der, kind="workload", tenant="acme", roles=frozenset({"orders"}), scopes=frozenset()
    )

    assert principal == Principal(
        id=SPIFFE_ID, kind="workload", tenant="acme", roles=frozenset({"orders"}), auth_method="mtls"
    )


def test_no_certificate_is_an_authentication_error() -> None:
    with pytest.raises(AuthenticationError, match="no verified client certificate"):
        principal_from_certificate(None)
    with pytest.raises(AuthenticationError, match="no verified client certificate"):
        principal_from_certificate({})  # what getpeercert() returns for an unverified peer


def test_a_certificate_without_an_identity_is_an_authentication_error(pki: Pki) -> None:
    cert = issue_test_cert(pki.ca, "orders-cn", dns_names=["orders.internal"])

    with pytest.raises(AuthenticationError, match="none of uri is present"):
        principal_from_certificate(cert.certificate, sources=["uri"])


def test_two_uri_sans_are_ambiguous(pki: Pki) -> None:
    cert = issue_test_cert(pki.ca, "x", uris=[SPIFFE_ID, "spiffe://test.example/other"])

    with pytest.raises(AuthenticationError, match="2 URI SANs"):
        principal_from_certificate(cert.der)


@pytest.mark.parametrize(
    "bad", [b"not a certificate", 42, {"subject": "CN=x"}, {"subjectAltName": [("DNS",)]}]
)
def test_input_that_is_not_a_certificate_is_a_validation_error(bad: object) -> None:
    with pytest.raises(ValidationError):
        principal_from_certificate(bad)  # type: ignore[arg-type]


def test_unknown_sources_are_a_validation_error(pki: Pki) -> None:
    with pytest.raises(ValidationError, match="sources"):
        principal_from_certificate(pki.client_cert.der, sources=["email"])  # type: ignore[list-item]
    with pytest.raises(ValidationError, match="sources"):
        principal_from_certificate(pki.client_cert.der, sources=[])


def test_the_test_ca_issues_what_a_deployment_would_carry(pki: Pki) -> None:
    server = x509.load_pem_x509_certificate(pki.server[0].read_bytes())
    usages = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    constraints = pki.ca.certificate.extensions.get_extension_for_class(x509.BasicConstraints).value

    assert constraints.ca
    assert list(usages) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert server.issuer == pki.ca.certificate.subject
    assert oct(pki.server[1].stat().st_mode & 0o777) == "0o600"


# --- The documented example -------------------------------------------------------------------------

_DOC = Path(__file__).parents[3] / "docs" / "security-auth.md"


def test_the_mtls_example_in_the_docs_runs(tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(# mtls_example\.py\n.*?)```", _DOC.read_text("utf-8"), re.S)
    assert len(blocks) == 1
    script = tmp_path / "mtls_example.py"
    script.write_text(blocks[0], encoding="utf-8")
    runpy.run_path(str(script), run_name="__main__")
