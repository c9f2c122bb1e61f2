"""SessionManager signing and validation, the cookie attributes, and CSRF tokens."""

from __future__ import annotations

import base64

import pytest
from pydantic import SecretStr

from mainspring.context import Principal
from mainspring.errors import AuthenticationError, PermissionDeniedError, ValidationError
from mainspring.security import CsrfProtect, MemorySessionStore, Session, SessionCookie, SessionManager
from mainspring.testing import capture_logs

SECRET = "k" * 32
OTHER = "o" * 32
ALICE = Principal("alice", roles=frozenset({"customer"}))


def manager(**kwargs: object) -> SessionManager:
    options: dict[str, object] = {"secret": SECRET, **kwargs}
    return SessionManager(MemorySessionStore(), **options)  # type: ignore[arg-type]


# -- signing ------------------------------------------------------------------------------------------


async def test_cookie_value_is_id_dot_signature_and_repr_hides_the_id() -> None:
    sessions = manager()
    session = await sessions.create(principal=ALICE)
    session_id, _, signature = sessions.cookie_value(session).partition(".")
    assert session_id == session.id
    assert len(session_id) >= 43
    assert len(signature) == 43
    assert session.id not in repr(session)
    assert session.csrf_secret not in repr(session)


async def test_tampered_signature_is_rejected_with_reason() -> None:
    sessions = manager()
    session = await sessions.create(principal=ALICE)
    cookie = sessions.cookie_value(session)
    forged = cookie[:-2] + ("AA" if not cookie.endswith("AA") else "BB")
    with pytest.raises(AuthenticationError, match="not validly signed"):
        await sessions.require(forged)
    assert await sessions.load(forged) is None


@pytest.mark.parametrize("value", ["", "no-dot", ".", "é.é", "a" * 300 + ".x"])
async def test_malformed_cookies_are_no_session(value: str) -> None:
    assert await manager().load(value) is None


async def test_an_id_signed_by_another_secret_is_rejected() -> None:
    store = MemorySessionStore()
    theirs = SessionManager(store, secret=OTHER)
    session = await theirs.create(principal=ALICE)
    ours = SessionManager(store, secret=SECRET)
    assert await ours.load(theirs.cookie_value(session)) is None


async def test_secret_rotation_old_cookies_verify_new_ones_are_signed_with_the_first() -> None:
    store = MemorySessionStore()
    old = SessionManager(store, secret=OTHER)
    session = await old.create(principal=ALICE)
    rotated = SessionManager(store, secret=[SecretStr(SECRET), OTHER])
    assert await rotated.load(old.cookie_value(session)) is not None
    fresh = await rotated.create()
    assert rotated.cookie_value(fresh) == SessionManager(store, secret=SECRET).cookie_value(fresh)


@pytest.mark.parametrize("secret", ["short", b"x" * 31, []])
def test_a_weak_or_missing_secret_is_refused(secret: object) -> None:
    with pytest.raises(ValidationError, match="secret"):
        manager(secret=secret)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"idle_timeout": 0}, "idle_timeout must be positive"),
        ({"absolute_timeout": float("inf")}, "absolute_timeout must be positive"),
        ({"idle_timeout": 7200, "absolute_timeout": 3600}, "must not exceed absolute_timeout"),
    ],
)
def test_bad_timeouts_are_refused(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        manager(**options)


async def test_data_that_is_not_json_is_refused_clearly() -> None:
    with pytest.raises(ValidationError, match="JSON-serialisable"):
        await manager().create(data={"when": object()})


async def test_forged_cookie_is_logged_without_the_cookie() -> None:
    sessions = manager()
    session = await sessions.create()
    forged = session.id + ".bad"
    with capture_logs() as logs:
        assert await sessions.load(forged) is None
    assert [r["event"] for r in logs] == ["session_rejected"]
    assert session.id not in str(logs)


# -- cookie attributes --------------------------------------------------------------------------------


async def test_default_cookie_is_secure_httponly_samesite_lax_session_cookie() -> None:
    sessions = manager()
    session = await sessions.create()
    header = sessions.set_cookie_header(session)
    assert header.startswith(f"session={sessions.cookie_value(session)}; ")
    attributes = header.split("; ")[1:]
    assert set(attributes) == {"Path=/", "HttpOnly", "Secure", "SameSite=Lax"}


def test_clear_header_expires_the_cookie_with_the_same_attributes() -> None:
    header = SessionCookie(name="__Host-sid").clear_header()
    assert header.startswith("__Host-sid=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT")
    assert "Secure" in header
    assert "HttpOnly" in header


def test_persistent_cookie_with_domain() -> None:
    header = SessionCookie(max_age=3600, domain="shop.example", same_site="strict").header("v")
    assert header == "session=v; Max-Age=3600; Path=/; Domain=shop.example; HttpOnly; Secure; SameSite=Strict"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"same_site": "none", "secure": False}, "SameSite=None cookies must be Secure"),
        ({"name": "__Host-s", "domain": "a.example"}, "__Host- cookie"),
        ({"name": "bad name"}, "not a valid cookie name"),
        ({"same_site": "sometimes"}, "same_site must be"),
    ],
)
def test_unsafe_cookie_settings_are_refused(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        SessionCookie(**options)  # type: ignore[arg-type]


# -- CSRF ---------------------------------------------------------------------------------------------


def session_with(csrf_secret: str) -> Session:
    return Session(id="id", principal=ALICE, data={}, csrf_secret=csrf_secret, created_at=0, last_seen_at=0)


def test_tokens_are_masked_differently_each_time_and_all_verify() -> None:
    csrf = CsrfProtect()
    session = session_with("c" * 43)
    first, second = csrf.token(session), csrf.token(session)
    assert first != second
    assert csrf.is_valid(session, first)
    assert csrf.is_valid(session, second)
    assert "c" * 43 not in base64.urlsafe_b64decode(first + "==").decode("latin-1")


def test_a_token_of_another_session_is_invalid() -> None:
    csrf = CsrfProtect()
    token = csrf.token(session_with("a" * 43))
    assert not csrf.is_valid(session_with("b" * 43), token)


@pytest.mark.parametrize("presented", [None, "", "!!!", "abcd", "é" * 10, "A" * 1000])
def test_malformed_tokens_are_invalid(presented: str | None) -> None:
    assert not CsrfProtect().is_valid(session_with("a" * 43), presented)


def test_verify_skips_safe_methods_and_rejects_unsafe_ones_with_403() -> None:
    csrf = CsrfProtect()
    session = session_with("a" * 43)
    csrf.verify(session, "GET", None)
    csrf.verify(session, "post", csrf.token(session))
    with (
        capture_logs() as logs,
        pytest.raises(PermissionDeniedError, match="X-CSRF-Token header is missing") as info,
    ):
        csrf.verify(session, "DELETE", None)
    assert info.value.code == "csrf_failed"
    assert info.value.http_status == 403
    assert logs[0]["event"] == "csrf_rejected"
    assert logs[0]["principal_id"] == "alice"


def test_custom_header_and_safe_methods() -> None:
    csrf = CsrfProtect(header_name="X-XSRF-Token", safe_methods=["get"])
    assert not csrf.requires_check("GET")
    assert csrf.requires_check("HEAD")
    with pytest.raises(PermissionDeniedError, match="X-XSRF-Token header is invalid"):
        csrf.verify(session_with("a" * 43), "PUT", "garbage")
    with pytest.raises(ValidationError):
        CsrfProtect(header_name="bad header")
