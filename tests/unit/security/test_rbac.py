"""RBAC: permissions, inheritance, wildcards, denial logging, the decorator and the ownership helper."""

from __future__ import annotations

from typing import Any

import pytest

from mainspring.context import bind_context
from mainspring.errors import AuthenticationError, ConfigError, PermissionDeniedError
from mainspring.security import RBAC, Principal, RoleSpec
from mainspring.testing import capture_logs


@pytest.fixture
def rbac() -> RBAC:
    return RBAC(
        {
            "viewer": RoleSpec(permissions={"*:read"}),
            "clerk": RoleSpec(permissions={"orders:write"}, inherits={"viewer"}),
            "manager": RoleSpec(permissions={"orders:*", "refunds:approve"}, inherits={"clerk"}),
            "admin": RoleSpec(permissions={"*"}),
            "support": RoleSpec(permissions={"orders:read_any"}),
        }
    )


def _p(*roles: str, pid: str = "u-1") -> Principal:
    return Principal(id=pid, roles=frozenset(roles))


def test_principal_is_the_context_principal() -> None:
    import mainspring.context

    assert Principal is mainspring.context.Principal


def test_direct_permission_is_allowed(rbac: RBAC) -> None:
    assert rbac.is_allowed(_p("clerk"), "orders:write")


def test_permission_not_granted_is_refused(rbac: RBAC) -> None:
    assert not rbac.is_allowed(_p("clerk"), "orders:delete")
    assert not rbac.is_allowed(_p("viewer"), "orders:write")


def test_inherited_permission_is_allowed_through_several_levels(rbac: RBAC) -> None:
    assert rbac.is_allowed(_p("manager"), "invoices:read")  # manager -> clerk -> viewer (*:read)


def test_resource_wildcard_grants_every_action_of_that_resource_only(rbac: RBAC) -> None:
    assert rbac.is_allowed(_p("manager"), "orders:delete")
    assert not rbac.is_allowed(_p("manager"), "invoices:delete")


def test_action_wildcard_grants_that_action_on_every_resource_only(rbac: RBAC) -> None:
    assert rbac.is_allowed(_p("viewer"), "anything:read")
    assert not rbac.is_allowed(_p("viewer"), "anything:write")


def test_star_grants_everything(rbac: RBAC) -> None:
    assert rbac.is_allowed(_p("admin"), "payments:refund")


def test_star_star_grants_everything() -> None:
    assert RBAC({"root": RoleSpec(permissions={"*:*"})}).is_allowed(_p("root"), "a:b")


def test_unknown_roles_and_no_roles_grant_nothing(rbac: RBAC) -> None:
    assert not rbac.is_allowed(_p("ghost"), "orders:read")
    assert not rbac.is_allowed(_p(), "orders:read")


def test_several_roles_combine(rbac: RBAC) -> None:
    principal = _p("support", "clerk")
    assert rbac.is_allowed(principal, "orders:read_any")
    assert rbac.is_allowed(principal, "orders:write")


def test_permissions_for_is_cached_per_role_set(rbac: RBAC) -> None:
    first = rbac.permissions_for({"clerk", "support"})
    assert first is rbac.permissions_for(["support", "clerk"])
    assert first == frozenset({"orders:write", "*:read", "orders:read_any"})


@pytest.mark.parametrize("bad", ["orders", "orders:*", "*", ":read", "orders:", "a:b:c", "", 5])
def test_checking_a_malformed_or_wildcard_permission_is_a_caller_bug(rbac: RBAC, bad: Any) -> None:
    with pytest.raises(ValueError, match="resource:action"):
        rbac.is_allowed(_p("admin"), bad)


def test_inheritance_cycle_is_refused_at_construction() -> None:
    with pytest.raises(ConfigError, match="cycle") as info:
        RBAC(
            {
                "a": RoleSpec(inherits={"b"}),
                "b": RoleSpec(inherits={"c"}),
                "c": RoleSpec(inherits={"a"}),
            }
        )
    assert info.value.problems[0].value == "a -> b -> c -> a"


def test_self_inheritance_is_a_cycle() -> None:
    with pytest.raises(ConfigError, match="cycle"):
        RBAC({"a": RoleSpec(inherits={"a"})})


def test_diamond_inheritance_is_not_a_cycle() -> None:
    rbac = RBAC(
        {
            "base": RoleSpec(permissions={"x:read"}),
            "left": RoleSpec(inherits={"base"}),
            "right": RoleSpec(inherits={"base"}),
            "top": RoleSpec(inherits={"left", "right"}),
        }
    )
    assert rbac.is_allowed(_p("top"), "x:read")


def test_unknown_inherited_role_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        RBAC({"a": RoleSpec(inherits={"missing"})})
    assert info.value.problems[0].path == "roles.a.inherits"


@pytest.mark.parametrize("bad", ["orders", "orders:write:now", "or ders:read", "**", ""])
def test_malformed_granted_permission_is_refused(bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        RBAC({"a": RoleSpec(permissions={bad})})
    assert info.value.problems[0].path == "roles.a.permissions"


def test_role_spec_refuses_a_bare_string() -> None:
    with pytest.raises(ConfigError, match="not a str"):
        RoleSpec(permissions="orders:read")
    with pytest.raises(ConfigError, match="not a str"):
        RoleSpec(inherits="viewer")


def test_non_role_spec_value_is_refused() -> None:
    with pytest.raises(ConfigError):
        RBAC({"a": {"permissions": ["x:y"]}})  # type: ignore[dict-item]


def test_require_passes_when_all_permissions_are_held(rbac: RBAC) -> None:
    rbac.require(_p("clerk"), "orders:write", "orders:read")


def test_require_denies_naming_every_missing_permission_and_logs_it(rbac: RBAC) -> None:
    principal = Principal(id="u-42", roles=frozenset({"viewer"}), tenant="t-1", auth_method="password")
    with capture_logs() as logs, pytest.raises(PermissionDeniedError) as info:
        rbac.require(principal, "orders:read", "orders:write", "refunds:approve")
    assert info.value.details == {"missing": ["orders:write", "refunds:approve"]}
    assert "orders:write" in info.value.message
    assert len(logs) == 1
    record = logs[0]
    assert record["event"] == "permission_denied"
    assert record["principal_id"] == "u-42"
    assert record["missing"] == ["orders:write", "refunds:approve"]


def test_require_without_principal_is_an_authentication_error(rbac: RBAC) -> None:
    with pytest.raises(AuthenticationError):
        rbac.require(None, "orders:read")


def test_owner_may_act_without_the_permission(rbac: RBAC) -> None:
    rbac.require_owner_or(_p(pid="u-7"), "u-7", "orders:read_any")


def test_non_owner_needs_the_permission(rbac: RBAC) -> None:
    rbac.require_owner_or(_p("support", pid="u-8"), "u-7", "orders:read_any")
    with pytest.raises(PermissionDeniedError):
        rbac.require_owner_or(_p("viewer", pid="u-8"), "u-7", "orders:read_any")


def test_owner_helper_without_principal_is_an_authentication_error(rbac: RBAC) -> None:
    with pytest.raises(AuthenticationError):
        rbac.require_owner_or(None, "u-7", "orders:read_any")


def test_owner_helper_validates_the_permission_even_for_the_owner(rbac: RBAC) -> None:
    with pytest.raises(ValueError, match="resource:action"):
        rbac.require_owner_or(_p(pid="u-7"), "u-7", "orders")


def test_decorator_on_a_sync_function_reads_the_context_principal(rbac: RBAC) -> None:
    @rbac.require_permissions("orders:write")
    def place(n: int) -> int:
        return n * 2

    with bind_context(principal=_p("clerk")):
        assert place(21) == 42
    with bind_context(principal=_p("viewer")), pytest.raises(PermissionDeniedError):
        place(1)
    with pytest.raises(AuthenticationError):
        place(1)


async def test_decorator_on_an_async_function_reads_the_context_principal(rbac: RBAC) -> None:
    calls: list[str] = []

    @rbac.require_permissions("refunds:approve", "orders:read")
    async def approve(order_id: str) -> str:
        calls.append(order_id)
        return f"approved {order_id}"

    with bind_context(principal=_p("manager")):
        assert await approve("o-1") == "approved o-1"
    with bind_context(principal=_p("clerk")), pytest.raises(PermissionDeniedError):
        await approve("o-2")
    with pytest.raises(AuthenticationError):
        await approve("o-3")
    assert calls == ["o-1"]
    assert approve.__name__ == "approve"


def test_decorator_refuses_malformed_permissions_at_decoration_time(rbac: RBAC) -> None:
    with pytest.raises(ValueError, match="resource:action"):
        rbac.require_permissions("orders:*")
