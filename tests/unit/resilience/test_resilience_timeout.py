"""``timeout``: DeadlineExceededError with the budget, not TimeoutError; bad budgets refused."""

from __future__ import annotations

import asyncio
import math

import pytest

from mainspring.errors import DeadlineExceededError, ValidationError
from mainspring.resilience import timeout


async def test_block_over_budget_raises_deadline_exceeded_with_budget_in_message() -> None:
    with pytest.raises(DeadlineExceededError, match=r"0\.01 s timeout") as caught:
        async with timeout(0.01, label="fetch order"):
            await asyncio.sleep(10)
    assert caught.value.details["timeout"] == 0.01
    assert "fetch order" in caught.value.message
    assert isinstance(caught.value.__cause__, TimeoutError)


async def test_block_within_budget_returns_normally() -> None:
    async with timeout(5) as budget:
        await asyncio.sleep(0)
    assert budget.expired is False


async def test_timeout_error_raised_inside_block_is_not_renamed() -> None:
    with pytest.raises(TimeoutError):
        async with timeout(5):
            raise TimeoutError("the driver's own")


async def test_decorator_gives_each_call_a_fresh_budget() -> None:
    @timeout(0.2)
    async def work(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "done"

    assert await asyncio.gather(work(0), work(0)) == ["done", "done"]
    with pytest.raises(DeadlineExceededError, match="work"):
        await work(10)
    assert await work(0) == "done"


async def test_many_concurrent_tasks_each_get_their_own_deadline() -> None:
    @timeout(0.2)
    async def work(slow: bool) -> int:
        await asyncio.sleep(10 if slow else 0)
        return 1

    results = await asyncio.gather(*(work(i % 2 == 0) for i in range(50)), return_exceptions=True)
    assert sum(isinstance(r, DeadlineExceededError) for r in results) == 25
    assert results.count(1) == 25


@pytest.mark.parametrize("seconds", [0, -1, math.inf, math.nan, "1", True])
def test_bad_budget_is_a_validation_error(seconds: object) -> None:
    with pytest.raises(ValidationError, match="seconds"):
        timeout(seconds)  # type: ignore[arg-type]


def test_decorating_a_sync_function_is_refused() -> None:
    with pytest.raises(ValidationError, match="coroutine function"):
        timeout(1)(lambda: None)  # type: ignore[arg-type]


async def test_one_timeout_object_cannot_be_entered_twice() -> None:
    budget = timeout(5)
    async with budget:
        pass
    with pytest.raises(ValidationError, match="entered once"):
        async with budget:
            pass
