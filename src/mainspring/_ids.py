"""The library's ids: UUID version 7 (RFC 9562) for rows (:mod:`mainspring.db`) and messages, and
random 128-bit request and correlation ids (:mod:`mainspring.context`).

Layout (section 5.7): unix_ts_ms (48) | ver (4) = 0b0111 | rand_a (12) | var (2) = 0b10 | rand_b (62).
The 12 bits of rand_a and the top 30 bits of rand_b form a 42-bit counter ("method 1", section 6.2):
seeded at random each new millisecond with its top bit clear, so at least 2**41 increments fit before it
overflows, and incremented by one for each further id in the same millisecond. The low 32 bits of rand_b
stay random for every id, so guessing a neighbour's id still needs 32 bits of luck.

Ids from one process are strictly increasing, also within one millisecond and when the wall clock steps
back. The random bits come from a generator seeded by the OS (and reseeded in a forked child): ids must
be unique, not secret, and a system call per id would cost more than the rest of the id.
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid

__all__ = ["random_hex128", "uuid7", "uuid7_int", "uuid7_str"]

_COUNTER_BITS = 42
_COUNTER_MAX = (1 << _COUNTER_BITS) - 1
_SEED_MASK = (1 << (_COUNTER_BITS - 1)) - 1
_RANDOM_BITS = 32
_VERSION_7 = 0x7 << 76
_VARIANT_RFC = 0b10 << 62


class _State:
    """The last timestamp and counter handed out; guarded by a lock, made anew in a forked child."""

    __slots__ = ("counter", "last_ms", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.last_ms = -1
        self.counter = 0


_state = _State()
# The random bits of every id the library makes. A private instance: an application's random.seed()
# cannot touch it.
_random = random.Random()


def _reset_after_fork() -> None:
    # A forked child must not continue the parent's counter or random sequence: both would repeat ids.
    global _state
    _state = _State()
    _random.seed()


os.register_at_fork(after_in_child=_reset_after_fork)


def uuid7_int() -> int:
    """Return a new version-7 UUID as its 128-bit integer."""
    state = _state
    with state.lock:
        rand = _random.getrandbits(_COUNTER_BITS + _RANDOM_BITS)
        now_ms = time.time_ns() // 1_000_000
        if now_ms > state.last_ms:
            state.last_ms = now_ms
            state.counter = (rand >> _RANDOM_BITS) & _SEED_MASK
        else:
            # Same millisecond, or the wall clock stepped back: keep the last timestamp and count on,
            # so ids stay strictly increasing. On counter overflow borrow the next millisecond (6.2).
            state.counter += 1
            if state.counter > _COUNTER_MAX:
                state.last_ms += 1
                state.counter = (rand >> _RANDOM_BITS) & _SEED_MASK
        ts_ms = state.last_ms
        counter = state.counter
    tail = rand & ((1 << _RANDOM_BITS) - 1)
    rand_a = counter >> 30
    rand_b = ((counter & ((1 << 30) - 1)) << _RANDOM_BITS) | tail
    return ((ts_ms & 0xFFFF_FFFF_FFFF) << 80) | _VERSION_7 | (rand_a << 64) | _VARIANT_RFC | rand_b


def random_hex128() -> str:
    """Return 128 random bits as 32 lowercase hex digits (request and correlation ids)."""
    return f"{_random.getrandbits(128):032x}"


def uuid7() -> uuid.UUID:
    """Return a new version-7 UUID."""
    return uuid.UUID(int=uuid7_int())


def uuid7_str() -> str:
    """Return a new version-7 UUID in its canonical text form (``str(uuid7())``, without the object)."""
    h = f"{uuid7_int():032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
