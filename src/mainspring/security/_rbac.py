"""Role-based access control: roles grant permissions, roles inherit roles, permissions have wildcards.

A permission is ``resource:action`` (``orders:write``). A granted permission may use ``*`` for either
part (``orders:*``, ``*:read``) or be ``*`` alone (everything). Checked permissions are concrete.
The principal is :class:`mainspring.context.Principal`; only its ``roles`` count here (token scopes
are the token layer's business).
"""

from __future__ import annotations

import functools
import inspect
import re
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final, ParamSpec, TypeVar, cast

from mainspring.context import Principal, get_context
from mainspring.errors import AuthenticationError, ConfigError, ConfigProblem, PermissionDeniedError
from mainspring.logging import get_logger

__all__ = ["RBAC", "RoleSpec"]

log = get_logger("mainspring.security")

P = ParamSpec("P")
R = TypeVar("R")

_PART: Final = r"[A-Za-z0-9_.\-]+"
_CONCRETE_RE: Final = re.compile(rf"{_PART}:{_PART}")
_GRANT_RE: Final = re.compile(rf"\*|(?:{_PART}|\*):(?:{_PART}|\*)")
# Distinct role sets seen in practice are few; the bound only guards against unbounded growth.
_CACHE_SIZE: Final = 1024


@dataclass(frozen=True, slots=True)
class RoleSpec:
    """What a role grants: its own ``permissions`` and the roles it ``inherits`` from."""

    permissions: frozenset[str] = frozenset()
    inherits: frozenset[str] = frozenset()

    def __init__(self, permissions: Iterable[str] = (), inherits: Iterable[str] = ()) -> None:
        # A bare str would be split into characters; refuse it rather than grant "o", "r", ...
        for name, value in (("permissions", permissions), ("inherits", inherits)):
            if isinstance(value, str):
                raise ConfigError(
                    f"RoleSpec {name} must be a collection of strings, not a str",
                    problems=[ConfigProblem(name, "a str, expected a list or set", value)],
                )
        object.__setattr__(self, "permissions", frozenset(permissions))
        object.__setattr__(self, "inherits", frozenset(inherits))


def _check_permission(permission: object) -> str:
    if not isinstance(permission, str) or not _CONCRETE_RE.fullmatch(permission):
        raise ValueError(
            f"permission to check must be 'resource:action' without wildcards, got {permission!r}"
        )
    return permission


class RBAC:
    """Resolve roles to permissions and check principals against them.

    ``roles`` maps role names to :class:`RoleSpec`. Unknown inherited roles, inheritance cycles and
    malformed permissions raise :class:`~mainspring.errors.ConfigError` at construction. A principal's
    roles that are not defined here grant nothing. Resolved permission sets are cached per role set.
    """

    def __init__(self, roles: Mapping[str, RoleSpec]) -> None:
        problems: list[ConfigProblem] = []
        for role, spec in roles.items():
            if not isinstance(spec, RoleSpec):
                problems.append(ConfigProblem(f"roles.{role}", "must be a RoleSpec", type(spec).__name__))
                continue
            for permission in sorted(spec.permissions):
                if not isinstance(permission, str) or not _GRANT_RE.fullmatch(permission):
                    problems.append(
                        ConfigProblem(
                            f"roles.{role}.permissions",
                            "must be 'resource:action', '*' allowed for either part, or '*'",
                            repr(permission),
                        )
                    )
            for parent in sorted(spec.inherits):
                if parent not in roles:
                    problems.append(
                        ConfigProblem(f"roles.{role}.inherits", "names a role that is not defined", parent)
                    )
        if problems:
            raise ConfigError("invalid RBAC roles", problems=problems)
        self._roles: dict[str, RoleSpec] = dict(roles)
        cycle = self._find_cycle()
        if cycle:
            raise ConfigError(
                "invalid RBAC roles",
                problems=[ConfigProblem("roles", "role inheritance has a cycle", " -> ".join(cycle))],
            )
        self._per_role = {role: self._expand(role) for role in self._roles}
        self._cache: dict[frozenset[str], frozenset[str]] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RBAC(roles={sorted(self._roles)})"

    def _find_cycle(self) -> list[str] | None:
        # Depth-first search with colours; returns the first cycle found as a path.
        state: dict[str, int] = {}
        stack: list[str] = []

        def visit(role: str) -> list[str] | None:
            state[role] = 1
            stack.append(role)
            for parent in sorted(self._roles[role].inherits):
                if state.get(parent) == 1:
                    return [*stack[stack.index(parent) :], parent]
                if parent not in state:
                    found = visit(parent)
                    if found:
                        return found
            stack.pop()
            state[role] = 2
            return None

        for role in sorted(self._roles):
            if role not in state:
                found = visit(role)
                if found:
                    return found
        return None

    def _expand(self, role: str) -> frozenset[str]:
        granted: set[str] = set()
        todo = [role]
        seen: set[str] = set()
        while todo:
            current = todo.pop()
            if current in seen:
                continue
            seen.add(current)
            spec = self._roles[current]
            granted |= spec.permissions
            todo.extend(spec.inherits)
        return frozenset(granted)

    def permissions_for(self, roles: Iterable[str]) -> frozenset[str]:
        """Return the permissions (wildcards as granted) of a set of roles, inheritance included."""
        key = frozenset(roles)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        resolved = frozenset().union(*(self._per_role.get(role, frozenset()) for role in key))
        with self._lock:
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
            self._cache[key] = resolved
        return resolved

    @staticmethod
    def _grants(granted: frozenset[str], permission: str) -> bool:
        resource, _, action = permission.partition(":")
        return (
            permission in granted
            or f"{resource}:*" in granted
            or f"*:{action}" in granted
            or "*" in granted
            or "*:*" in granted
        )

    def is_allowed(self, principal: Principal, permission: str) -> bool:
        """Return whether ``principal``'s roles grant ``permission`` (a concrete ``resource:action``).

        Raises :class:`ValueError` for a malformed permission: that is a bug in the caller.
        """
        return self._grants(self.permissions_for(principal.roles), _check_permission(permission))

    def require(self, principal: Principal | None, *permissions: str) -> None:
        """Return if ``principal`` holds every one of ``permissions``; raise otherwise.

        ``None`` raises :class:`~mainspring.errors.AuthenticationError`. A missing permission raises
        :class:`~mainspring.errors.PermissionDeniedError` naming what is missing, logged with the
        principal's id (never a credential).
        """
        checked = [_check_permission(p) for p in permissions]
        if principal is None:
            raise AuthenticationError("authentication required: no principal in the request context")
        granted = self.permissions_for(principal.roles)
        missing = [p for p in checked if not self._grants(granted, p)]
        if missing:
            log.warning(
                "permission_denied",
                principal_id=principal.id,
                principal_kind=principal.kind,
                tenant=principal.tenant,
                missing=missing,
            )
            raise PermissionDeniedError(
                f"permission denied: missing {', '.join(missing)}", details={"missing": missing}
            )

    def require_owner_or(self, principal: Principal | None, owner_id: str, permission: str) -> None:
        """Return if ``principal`` owns the resource (its id is ``owner_id``) or holds ``permission``.

        Otherwise behaves like :meth:`require` (``orders:read_any`` lets support staff read every order).
        """
        _check_permission(permission)
        if principal is not None and principal.id == owner_id:
            return
        self.require(principal, permission)

    def require_permissions(self, *permissions: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """Decorate a sync or async function to :meth:`require` ``permissions`` of the context principal.

        The principal is read from :func:`mainspring.context.get_context` at each call, so bind it
        (``bind_context(principal=...)``) before calling. Raises at decoration time for a malformed
        permission.
        """
        for permission in permissions:
            _check_permission(permission)

        def decorate(func: Callable[P, R]) -> Callable[P, R]:
            if inspect.iscoroutinefunction(func):
                async_func = cast(Callable[P, Awaitable[object]], func)

                @functools.wraps(func)
                async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> object:
                    self.require(get_context().principal, *permissions)
                    return await async_func(*args, **kwargs)

                return cast(Callable[P, R], async_wrapper)

            @functools.wraps(func)
            def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
                self.require(get_context().principal, *permissions)
                return func(*args, **kwargs)

            return wrapper

        return decorate
