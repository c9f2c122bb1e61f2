"""FakeClock: monotonic seconds that move only when a test says so (imported by the resilience tests)."""

from __future__ import annotations


class FakeClock:
    """Monotonic seconds that advance on demand; ``sleep`` advances them instead of waiting."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def sleep_sync(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
