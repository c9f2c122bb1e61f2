"""``ServiceURL`` and password masking: the URL works as a string, its repr never shows the password."""

from __future__ import annotations

import pickle
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mainspring.testing import ServiceURL
from mainspring.testing._url import mask_password, replace_path


def _url(url: str, service: str = "postgres") -> ServiceURL:
    return ServiceURL(url, service=service, namespace="ms_t_abc", isolation="database")


def test_service_url_is_the_url_string_with_its_password() -> None:
    url = _url("postgresql://app:hunter2@db:5432/ms_t_abc")
    assert url == "postgresql://app:hunter2@db:5432/ms_t_abc"
    assert str(url) == "postgresql://app:hunter2@db:5432/ms_t_abc"
    assert type(str(url)) is str
    assert url.service == "postgres"
    assert url.namespace == "ms_t_abc"
    assert url.isolation == "database"


def test_service_url_repr_masks_the_password() -> None:
    url = _url("postgresql://app:hunter2@db:5432/ms_t_abc")
    assert "hunter2" not in repr(url)
    assert "postgresql://app:***@db:5432/ms_t_abc" in repr(url)
    assert "hunter2" not in repr([url])
    assert url.masked == "postgresql://app:***@db:5432/ms_t_abc"


def test_service_url_attributes_are_read_only() -> None:
    url = _url("redis://127.0.0.1:6379/3", service="redis")
    with pytest.raises(AttributeError):
        url.namespace = "other"  # type: ignore[misc]


def test_service_url_survives_pickling_with_its_attributes() -> None:
    url = ServiceURL(
        "amqp://guest:guest@h:5672/ms_t_x", service="rabbitmq", namespace="ms_t_x", isolation="vhost"
    )
    copy = pickle.loads(pickle.dumps(url))
    assert copy == url
    assert (copy.service, copy.namespace, copy.isolation) == ("rabbitmq", "ms_t_x", "vhost")


@pytest.mark.parametrize(
    ("url", "service", "expected"),
    [
        ("postgresql://postgres@h:5432/db", "postgres", "postgresql+asyncpg://postgres@h:5432/db"),
        ("mysql://root@h:3306/db", "mariadb", "mysql+asyncmy://root@h:3306/db"),
    ],
)
def test_sqlalchemy_url_adds_the_async_driver(url: str, service: str, expected: str) -> None:
    assert _url(url, service).sqlalchemy_url == expected


def test_sqlalchemy_url_is_refused_for_services_without_sql() -> None:
    with pytest.raises(ValueError, match="redis URL has no SQLAlchemy form"):
        _ = _url("redis://h:6379/1", "redis").sqlalchemy_url


def test_with_driver_replaces_an_existing_driver() -> None:
    url = _url("postgresql+asyncpg://u:p@h/db")
    assert url.with_driver("psycopg") == "postgresql+psycopg://u:p@h/db"


def test_with_driver_rejects_an_empty_driver_without_showing_the_password() -> None:
    with pytest.raises(ValueError, match=r"\*\*\*") as info:
        _url("postgresql://u:secretpw@h/db").with_driver("")
    assert "secretpw" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("postgresql://postgres@h/db", "postgresql://postgres@h/db"),
        ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
        ("amqp://guest:guest@h:5672/", "amqp://guest:***@h:5672/"),
        ("amqp://u:p%40ss@h/vh?heartbeat=5", "amqp://u:***@h/vh?heartbeat=5"),
        ("not a url", "not a url"),
        ("", ""),
    ],
)
def test_mask_password_hides_only_the_password(url: str, expected: str) -> None:
    assert mask_password(url) == expected


@given(
    user=st.text(st.characters(codec="ascii", categories=["Ll", "Nd"]), max_size=8),
    password=st.text(min_size=1, max_size=30),
)
def test_mask_password_never_shows_a_percent_encoded_password(user: str, password: str) -> None:
    secret = "Q" + quote(password, safe="") + "Z"  # uppercase Q: the user and host are lowercase
    url = f"postgresql://{user}:{secret}@db.example:5432/app"
    masked = mask_password(url)
    assert secret not in masked
    assert masked == f"postgresql://{user}:***@db.example:5432/app"


def test_replace_path_keeps_credentials_and_query() -> None:
    assert replace_path("redis://:pw@h:6379/0?x=1", "7") == "redis://:pw@h:6379/7?x=1"
    assert replace_path("nats://h:4222", "a") == "nats://h:4222/a"
