"""``ServiceURL``: the value a service fixture hands out, a URL string that knows its namespace."""

from __future__ import annotations

from typing import Any, Literal, Self
from urllib.parse import urlsplit, urlunsplit

__all__ = ["Isolation", "ServiceURL", "mask_password", "replace_path"]

#: How a fixture isolated the test: its own database, its own Redis database number, its own RabbitMQ
#: vhost, or only a unique name prefix on a shared namespace.
Isolation = Literal["database", "db_number", "vhost", "prefix"]

# The SQLAlchemy async driver that goes with each SQL service, as used in ``scheme+driver://`` URLs.
_SQLALCHEMY_DRIVERS = {"postgres": "asyncpg", "mariadb": "asyncmy"}


def mask_password(url: str) -> str:
    """Return ``url`` with the password (if any) replaced by ``***``; everything else is kept as written."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, tail = rest.partition("/")
    userinfo, at, hostport = authority.rpartition("@")
    if not at:
        return url
    user, colon, _password = userinfo.partition(":")
    if not colon:
        return url
    return f"{scheme}://{user}:***@{hostport}{slash}{tail}"


def replace_path(url: str, path: str) -> str:
    """Return ``url`` with its path replaced by ``/path`` (query and credentials kept)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + path))


class ServiceURL(str):
    """A connection URL handed out by a service fixture, carrying the isolated namespace it points at.

    The string value is the URL to connect to (password included, so drivers can use it). ``repr()``
    masks the password, so assertion messages and logs don't show it. ``namespace`` is the database
    name (postgres, mariadb), the database number (redis), the vhost (rabbitmq) or the name prefix
    (nats, and rabbitmq without its management API); ``isolation`` says which of these it is.
    """

    _service: str
    _namespace: str
    _isolation: Isolation

    def __new__(cls, url: str, *, service: str, namespace: str, isolation: Isolation) -> Self:
        """Build the URL string for ``service`` isolated as ``namespace``."""
        obj = super().__new__(cls, url)
        obj._service = service
        obj._namespace = namespace
        obj._isolation = isolation
        return obj

    @property
    def service(self) -> str:
        """The service name: ``postgres``, ``mariadb``, ``redis``, ``rabbitmq`` or ``nats``."""
        return self._service

    @property
    def namespace(self) -> str:
        """The isolated namespace: database name, Redis database number, vhost or name prefix."""
        return self._namespace

    @property
    def isolation(self) -> Isolation:
        """What ``namespace`` is: ``database``, ``db_number``, ``vhost`` or ``prefix``."""
        return self._isolation

    @property
    def masked(self) -> str:
        """The URL with its password replaced by ``***``, safe to print."""
        return mask_password(str(self))

    def with_driver(self, driver: str) -> str:
        """Return the URL with ``+driver`` added to its scheme (``postgresql+psycopg://...``).

        A driver already in the scheme is replaced.
        """
        scheme, sep, rest = str(self).partition("://")
        if not driver or not sep:
            raise ValueError(f"cannot add driver {driver!r} to {self.masked!r}")
        return f"{scheme.partition('+')[0]}+{driver}://{rest}"

    @property
    def sqlalchemy_url(self) -> str:
        """The SQLAlchemy async URL: ``postgresql+asyncpg://...`` or ``mysql+asyncmy://...``.

        Only the SQL services have one; for the others this raises ``ValueError``.
        """
        driver = _SQLALCHEMY_DRIVERS.get(self._service)
        if driver is None:
            raise ValueError(
                f"the {self._service} URL has no SQLAlchemy form; only postgres and mariadb URLs do"
            )
        return self.with_driver(driver)

    def __repr__(self) -> str:
        return (
            f"ServiceURL({self.masked!r}, service={self._service!r}, "
            f"namespace={self._namespace!r}, isolation={self._isolation!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # The attributes live in the instance dict, which str's default pickling would drop.
        return (_rebuild, (str(self), self._service, self._namespace, self._isolation))


def _rebuild(url: str, service: str, namespace: str, isolation: Isolation) -> ServiceURL:
    return ServiceURL(url, service=service, namespace=namespace, isolation=isolation)
