"""``timeout(seconds)``: bound an async block or coroutine function, raising ``DeadlineExceededError``."""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import ParamSpec, TypeVar

from mainspring.errors import DeadlineExceededError
from mainspring.resilience._errors import check_seconds, invalid

P = ParamSpec("P")
T = TypeVar("T")


class Timeout:
    """A time budget for async code: an async context manager (entered once) and a decorator.

    Made by :func:`timeout`. When the budget runs out the block is cancelled and
    :class:`~mainspring.errors.DeadlineExceededError` is raised in place of ``TimeoutError``, with the
    budget in its message and in ``details["timeout"]``. As a decorator each call gets its own budget.
    """

    __slots__ = ("_inner", "_label", "seconds")

    def __init__(self, seconds: float, *, label: str | None = None) -> None:
        """Allow ``seconds`` (finite, > 0); ``label`` names the operation in the error message."""
        self.seconds = check_seconds("timeout", "seconds", seconds)
        self._label = label
        self._inner: asyncio.Timeout | None = None

    @property
    def expired(self) -> bool:
        """Whether the budget of the block (entered with ``async with``) ran out."""
        return self._inner is not None and self._inner.expired()

    async def __aenter__(self) -> Timeout:
        if self._inner is not None:
            raise invalid("timeout", "context", "re-entered", "entered once (make one timeout per block)")
        self._inner = asyncio.timeout(self.seconds)
        await self._inner.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._inner is not None  # __aexit__ only runs after __aenter__
        try:
            await self._inner.__aexit__(exc_type, exc, tb)
        except TimeoutError as error:
            if not self._inner.expired():
                raise  # a TimeoutError from inside the block, not our deadline: not ours to rename
            raise self._error() from error

    def _error(self) -> DeadlineExceededError:
        what = f"{self._label} " if self._label else "operation "
        return DeadlineExceededError(
            f"{what}did not finish within its {self.seconds:g} s timeout; raise the timeout if the work "
            "is expected to take longer, or find out why it is slow",
            details={"timeout": self.seconds, **({"operation": self._label} if self._label else {})},
        )

    def __call__(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        """Decorate a coroutine function: every call runs under a fresh budget of the same length."""
        if not inspect.iscoroutinefunction(fn):
            raise invalid("timeout", "decorated function", fn, "a coroutine function (async def)")
        seconds, label = self.seconds, self._label or getattr(fn, "__qualname__", None)

        @functools.wraps(fn)
        async def bounded(*args: P.args, **kwargs: P.kwargs) -> T:
            async with Timeout(seconds, label=label):
                return await fn(*args, **kwargs)

        return bounded


def timeout(seconds: float, *, label: str | None = None) -> Timeout:
    """Return a :class:`Timeout` of ``seconds``: ``async with timeout(2): ...`` or ``@timeout(2)``.

    Raises :class:`~mainspring.errors.ValidationError` if ``seconds`` is not a finite number > 0.
    """
    return Timeout(seconds, label=label)
