"""Eviction for the in-memory cache: LRU, and W-TinyLFU (a frequency sketch guarding a segmented LRU).

A policy tracks the entries (``Node``), their count and weight, and answers each insert with the nodes
to drop so the cache stays within its bounds. The cache keeps the key -> node dict itself, so a hit
costs one dict lookup plus :meth:`Policy.touch`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict
from typing import Any

__all__ = ["FrequencySketch", "LruPolicy", "Node", "Policy", "TinyLfuPolicy"]

WINDOW, PROBATION, PROTECTED, REMOVED = 0, 1, 2, -1
_HALVE = bytes(i >> 1 for i in range(256))
_COUNTER_MAX = 15


class Node:
    """One stored entry: key, what is stored, and what the fast path and the policy need."""

    __slots__ = ("expires", "fresh", "key", "segment", "stored", "value", "weight")

    def __init__(self, key: str, stored: Any, value: Any, fresh: float, expires: float, weight: int) -> None:
        """Make a node; ``fresh`` is ``-inf`` when the fast path must not serve it (tags, bytes store)."""
        self.key = key
        self.stored = stored
        self.value = value
        self.fresh = fresh
        self.expires = expires
        self.weight = weight
        self.segment = WINDOW


class Policy(ABC):
    """Bookkeeping and victim choice of one eviction policy."""

    def __init__(self, max_entries: int | None, max_weight: int | None) -> None:
        """Bound the cache to ``max_entries`` entries and/or ``max_weight`` bytes (``None``: no bound)."""
        self.max_entries = max_entries
        self.max_weight = max_weight
        self.count = 0
        self.weight = 0

    def over(self) -> bool:
        """Say whether the tracked entries exceed a bound."""
        return (self.max_entries is not None and self.count > self.max_entries) or (
            self.max_weight is not None and self.weight > self.max_weight
        )

    @abstractmethod
    def insert(self, node: Node) -> list[Node]:
        """Track a new ``node``; return the nodes evicted to make room (possibly ``node`` itself)."""

    @abstractmethod
    def replace(self, old: Node, new: Node) -> list[Node]:
        """Put ``new`` in the place of ``old`` (same key), count it as an access; return evicted nodes."""

    @abstractmethod
    def remove(self, node: Node) -> None:
        """Stop tracking ``node`` (deleted or expired); a no-op if it is not tracked."""

    @abstractmethod
    def touch(self, node: Node) -> None:
        """Record a hit on ``node``; called on the hot path, so it must be cheap."""

    @abstractmethod
    def clear(self) -> None:
        """Forget every node."""


class LruPolicy(Policy):
    """Least recently used: an ordered dict, the oldest access first."""

    def __init__(self, max_entries: int | None, max_weight: int | None) -> None:
        """Start empty."""
        super().__init__(max_entries, max_weight)
        self._order: OrderedDict[str, Node] = OrderedDict()

    def insert(self, node: Node) -> list[Node]:
        """Append ``node`` as the most recent, then evict the oldest while over a bound."""
        self._order[node.key] = node
        self.count += 1
        self.weight += node.weight
        return self._evict()

    def replace(self, old: Node, new: Node) -> list[Node]:
        """Swap the node in place and make it the most recent."""
        self._order[new.key] = new
        self._order.move_to_end(new.key)
        self.weight += new.weight - old.weight
        return self._evict()

    def remove(self, node: Node) -> None:
        """Forget ``node`` if it is the one tracked under its key."""
        if self._order.get(node.key) is node:
            del self._order[node.key]
            self.count -= 1
            self.weight -= node.weight

    def touch(self, node: Node) -> None:
        """Make ``node`` the most recent."""
        # try/except rather than contextlib.suppress: this is the hot path, and suppress costs a lot.
        try:  # noqa: SIM105
            self._order.move_to_end(node.key)
        except KeyError:
            pass  # removed by another thread between its lookup and this touch: nothing to reorder

    def clear(self) -> None:
        """Forget every node."""
        self._order.clear()
        self.count = self.weight = 0

    def _evict(self) -> list[Node]:
        victims = []
        while self._order and self.over():
            _, victim = self._order.popitem(last=False)
            self.count -= 1
            self.weight -= victim.weight
            victims.append(victim)
        return victims


class FrequencySketch:
    """A count-min sketch of 4-bit-style counters (saturating at 15) with periodic halving (aging).

    Indexes come from ``hash(key)``: a process-local estimate that is never stored nor shared, so the
    per-process salt of ``hash()`` does no harm here and its speed (cached on str objects) matters.
    """

    def __init__(self, capacity: int) -> None:
        """Size the sketch for about ``capacity`` distinct keys; age every ``10 * capacity`` increments.

        Each row has 4 counters per expected key (as Caffeine's 16 per key over 4 rows), which keeps
        collisions from inflating a newcomer's estimate past a popular key's.
        """
        width = 1 << max(6, (max(4 * capacity, 1) - 1).bit_length())
        self._width = width
        self._mask = width - 1
        self._table = bytearray(4 * width)
        self._sample = 10 * max(capacity, 16)
        self._additions = 0

    def _slots(self, key: str) -> tuple[int, int, int, int]:
        h = hash(key)
        a = h & 0xFFFFFFFF
        b = ((h >> 32) & 0xFFFFFFFF) | 1
        m, w = self._mask, self._width
        return a & m, w + ((a + b) & m), 2 * w + ((a + 2 * b) & m), 3 * w + ((a + 3 * b) & m)

    def increment(self, key: str) -> None:
        """Count one access of ``key``."""
        table = self._table
        added = False
        for slot in self._slots(key):
            if table[slot] < _COUNTER_MAX:
                table[slot] += 1
                added = True
        if added:
            self._additions += 1
            if self._additions >= self._sample:
                self.age()

    def estimate(self, key: str) -> int:
        """Return the estimated recent access count of ``key`` (0-15)."""
        table = self._table
        return min(table[slot] for slot in self._slots(key))

    def age(self) -> None:
        """Halve every counter, so old popularity fades."""
        self._table = bytearray(self._table.translate(_HALVE))
        self._additions //= 2


class TinyLfuPolicy(Policy):
    """W-TinyLFU: a 1% window LRU, then a segmented main LRU (20% probation, 80% protected).

    A new entry enters the window; the window's oldest entry then competes with the main region's
    eviction victim and only gets in if the sketch says it is used more often. So a scan of one-off
    keys passes through the window without pushing out what is popular.

    Hits are recorded in a small buffer and applied on the next write (as Caffeine does under load);
    hits beyond :attr:`READ_BUFFER` between two writes are dropped, which samples popularity instead
    of counting it and keeps a hit at one list append.
    """

    READ_BUFFER = 256

    def __init__(
        self, max_entries: int | None, max_weight: int | None, expected_entries: int = 10_000
    ) -> None:
        """Size the regions for ``max_entries`` (or ``expected_entries`` when only bytes are bounded)."""
        super().__init__(max_entries, max_weight)
        capacity = max_entries or expected_entries
        self._window_cap = max(1, capacity // 100)
        self._protected_cap = max(1, int((capacity - self._window_cap) * 0.8))
        self._window: OrderedDict[str, Node] = OrderedDict()
        self._probation: OrderedDict[str, Node] = OrderedDict()
        self._protected: OrderedDict[str, Node] = OrderedDict()
        self._segments = (self._window, self._probation, self._protected)
        self.sketch = FrequencySketch(capacity)
        self._reads: list[Node] = []

    def touch(self, node: Node) -> None:
        """Buffer the hit (dropped when the buffer is full)."""
        if len(self._reads) < self.READ_BUFFER:
            self._reads.append(node)

    def drain(self) -> None:
        """Apply the buffered hits to the sketch and the recency order."""
        reads, self._reads = self._reads, []
        for node in reads:
            if node.segment != REMOVED:
                self._access(node)

    def _access(self, node: Node) -> None:
        self.sketch.increment(node.key)
        segment = node.segment
        if segment == PROBATION:
            del self._probation[node.key]
            node.segment = PROTECTED
            self._protected[node.key] = node
            while len(self._protected) > self._protected_cap:
                _, demoted = self._protected.popitem(last=False)
                demoted.segment = PROBATION
                self._probation[demoted.key] = demoted
        else:
            self._segments[segment].move_to_end(node.key)

    def insert(self, node: Node) -> list[Node]:
        """Add ``node`` to the window; move window overflow to probation through the admission duel."""
        self.drain()
        self.sketch.increment(node.key)
        node.segment = WINDOW
        self._window[node.key] = node
        self.count += 1
        self.weight += node.weight
        victims: list[Node] = []
        while len(self._window) > self._window_cap:
            _, candidate = self._window.popitem(last=False)
            candidate.segment = PROBATION
            self._probation[candidate.key] = candidate
            if self.over():
                self._duel(candidate, victims)
        self._evict_while_over(victims)
        return victims

    def _duel(self, candidate: Node, victims: list[Node]) -> None:
        while self.over():
            victim: Node | None = next(iter(self._probation.values()))
            if victim is candidate:
                victim = next(iter(self._protected.values()), None)
            if victim is None:
                self._drop(candidate, victims)
                return
            # Ties keep the incumbent: a newcomer must be strictly more popular to get in.
            if self.sketch.estimate(candidate.key) > self.sketch.estimate(victim.key):
                self._drop(victim, victims)
            else:
                self._drop(candidate, victims)
                return

    def _evict_while_over(self, victims: list[Node]) -> None:
        while self.over():
            segment = self._probation or self._protected or self._window
            if not segment:
                return
            self._drop(next(iter(segment.values())), victims)

    def _drop(self, node: Node, victims: list[Node]) -> None:
        del self._segments[node.segment][node.key]
        node.segment = REMOVED
        self.count -= 1
        self.weight -= node.weight
        victims.append(node)

    def replace(self, old: Node, new: Node) -> list[Node]:
        """Put ``new`` in ``old``'s segment and count an access."""
        self.drain()
        if old.segment == REMOVED:
            return self.insert(new)
        new.segment = old.segment
        self._segments[old.segment][new.key] = new
        old.segment = REMOVED
        self.weight += new.weight - old.weight
        self._access(new)
        victims: list[Node] = []
        self._evict_while_over(victims)
        return victims

    def remove(self, node: Node) -> None:
        """Forget ``node`` if it is tracked."""
        if node.segment != REMOVED and self._segments[node.segment].get(node.key) is node:
            del self._segments[node.segment][node.key]
            node.segment = REMOVED
            self.count -= 1
            self.weight -= node.weight

    def clear(self) -> None:
        """Forget every node (the sketch keeps its counts)."""
        for segment in self._segments:
            for node in segment.values():
                node.segment = REMOVED
            segment.clear()
        self._reads.clear()
        self.count = self.weight = 0
