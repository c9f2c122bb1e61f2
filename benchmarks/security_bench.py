"""Security benchmarks: one function per section, one table per section, ratios against a peer library.

Passwords section: argon2id ``hash`` and ``verify`` at mainspring's defaults (``PasswordHasher()``) against
argon2-cffi at the same parameters, milliseconds per operation.

JWT section: verify (and sign) access tokens with mainspring's ``TokenService`` against PyJWT called
directly, for EdDSA, RS256, ES256 and HS256. Both sides use key objects loaded once (PyJWT gets the
``cryptography`` key object, or the secret bytes for HS256) and check the same things: signature,
``exp``, ``iat``, ``iss``, ``aud`` and the required claims. Rounds alternate the variants; the table shows
median microseconds per operation and mainspring / PyJWT (below 1.00 means mainspring is faster).

Usage: ``python benchmarks/security_bench.py [--rounds 15] [--ops 2000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import argon2
import cryptography
import jwt as pyjwt
import limits

from mainspring.security import (
    JwtAlgorithm,
    JwtKey,
    KeyRing,
    Limit,
    PasswordHasher,
    RateLimiter,
    Strategy,
    TokenService,
)
from mainspring.testing._isolation import isolated_redis

ISSUER = "https://auth.example.test"
AUDIENCE = "orders-api"
REQUIRED = ["exp", "iat", "iss", "aud", "sub", "jti"]


def _per_op_us(fn: Callable[[], object], ops: int) -> float:
    start = time.perf_counter()
    for _ in range(ops):
        fn()
    return (time.perf_counter() - start) / ops * 1e6


def _measure(variants: dict[str, Callable[[], object]], rounds: int, ops: int) -> dict[str, float]:
    for fn in variants.values():  # warm up, and fail fast if a variant raises
        _per_op_us(fn, max(1, ops // 10))
    samples: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(rounds):
        # Rotate the order so background load on a shared machine hits every variant alike.
        for name in names[r % len(names) :] + names[: r % len(names)]:
            samples[name].append(_per_op_us(variants[name], ops))
    return {name: statistics.median(values) for name, values in samples.items()}


def jwt_section(rounds: int, ops: int) -> list[tuple[str, float, float]]:
    """Verify and sign with mainspring and PyJWT; rows of (operation, mainspring µs, PyJWT µs)."""
    rows: list[tuple[str, float, float]] = []
    algorithms: tuple[JwtAlgorithm, ...] = ("EdDSA", "RS256", "ES256", "HS256")
    for alg in algorithms:
        key = JwtKey.generate(alg, kid=f"bench-{alg}")
        svc = TokenService(KeyRing(key), issuer=ISSUER, audience=AUDIENCE)
        token = svc.issue("user-1", claims={"scope": "orders:read orders:write", "tenant": "acme"})
        # Same key material for PyJWT, as loaded objects (what a careful PyJWT user would hold).
        verify_key: Any = key.verification_key
        sign_key: Any = key.signing_material
        options: Any = {"require": REQUIRED}
        now = int(time.time())
        payload = {
            "iss": ISSUER,
            "sub": "user-1",
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + 900,
            "jti": "bench",
            "scope": "orders:read orders:write",
            "tenant": "acme",
        }
        header = {"kid": key.kid}

        def ours_verify(svc: TokenService = svc, token: str = token) -> object:
            return svc.verify(token)

        def peer_verify(
            token: str = token, k: Any = verify_key, alg: str = alg, opts: Any = options
        ) -> object:
            return pyjwt.decode(token, k, algorithms=[alg], audience=AUDIENCE, issuer=ISSUER, options=opts)

        def ours_sign(svc: TokenService = svc) -> object:
            return svc.issue("user-1", claims={"scope": "orders:read orders:write", "tenant": "acme"})

        def peer_sign(
            k: Any = sign_key, alg: str = alg, body: dict[str, Any] = payload, head: dict[str, str] = header
        ) -> object:
            return pyjwt.encode(body, k, algorithm=alg, headers=head)

        assert pyjwt.decode(token, verify_key, algorithms=[alg], audience=AUDIENCE, issuer=ISSUER)["sub"]
        assert svc.verify(pyjwt.encode(payload, sign_key, algorithm=alg, headers=header)).subject
        slow = alg in ("RS256",)  # RSA signing is ~1 ms: fewer operations keep the run short
        res = _measure({"ours_verify": ours_verify, "peer_verify": peer_verify}, rounds, ops)
        rows.append((f"verify {alg}", res["ours_verify"], res["peer_verify"]))
        res = _measure({"ours_sign": ours_sign, "peer_sign": peer_sign}, rounds, ops // 10 if slow else ops)
        rows.append((f"sign {alg}", res["ours_sign"], res["peer_sign"]))
    return rows


# --- Passwords ---------------------------------------------------------------------------------------

PASSWORD = "correct horse battery staple"


def password_section(rounds: int, ops: int) -> list[tuple[str, float, float]]:
    """argon2id hash and verify at mainspring's defaults against argon2-cffi at the same parameters.

    Rows of (operation, mainspring ms, argon2-cffi ms). mainspring adds NFKC normalisation and input
    checks; both run the same C library with m=19456 KiB, t=2, p=1, 16-byte salt, 32-byte hash.
    """
    ours = PasswordHasher()
    peer = argon2.PasswordHasher(
        time_cost=2, memory_cost=19456, parallelism=1, hash_len=32, salt_len=16, type=argon2.Type.ID
    )
    stored = ours.hash(PASSWORD)
    assert peer.verify(stored, PASSWORD)
    assert ours.verify(peer.hash(PASSWORD), PASSWORD)

    def ours_hash() -> object:
        return ours.hash(PASSWORD)

    def peer_hash() -> object:
        return peer.hash(PASSWORD)

    def ours_verify() -> object:
        return ours.verify(stored, PASSWORD)

    def peer_verify() -> object:
        return peer.verify(stored, PASSWORD)

    rows: list[tuple[str, float, float]] = []
    res = _measure({"ours": ours_hash, "peer": peer_hash}, rounds, ops)
    rows.append(("hash (argon2id, m=19456 KiB, t=2, p=1)", res["ours"] / 1000, res["peer"] / 1000))
    res = _measure({"ours": ours_verify, "peer": peer_verify}, rounds, ops)
    rows.append(("verify (match)", res["ours"] / 1000, res["peer"] / 1000))
    return rows


# --- Rate limiting ----------------------------------------------------------------------------------

RATELIMIT_KEYS = 1_000
RATELIMIT_TASKS = 50
RateRow = tuple[str, str, float, float, float]


async def _decisions_per_s(decide: Callable[[int], Awaitable[object]], ops: int, tasks: int) -> float:
    async def worker(first: int, count: int) -> None:
        for i in range(first, first + count):
            await decide(i % RATELIMIT_KEYS)

    share = ops // tasks
    start = time.perf_counter()
    await asyncio.gather(*(worker(t * share, share) for t in range(tasks)))
    return share * tasks / (time.perf_counter() - start)


async def _ratelimit_runs(url: str, rounds: int, ops: int) -> list[RateRow]:
    from limits import RateLimitItemPerMinute
    from limits.aio.storage import RedisStorage
    from limits.aio.strategies import FixedWindowRateLimiter, SlidingWindowCounterRateLimiter

    Decide = Callable[[int], Awaitable[object]]
    # A quota no run reaches, so every side takes the "allowed" path (the common one) every time.
    quota = 10**6
    ours = RateLimiter(url, timeout=5, max_connections=RATELIMIT_TASKS)
    storage = RedisStorage(
        url.replace("redis://", "async+redis://", 1),
        implementation="redispy",
        max_connections=RATELIMIT_TASKS,
    )
    fixed = FixedWindowRateLimiter(storage)
    sliding = SlidingWindowCounterRateLimiter(storage)
    item = RateLimitItemPerMinute(quota)
    keys = [f"user:{i}" for i in range(RATELIMIT_KEYS)]
    rows: list[RateRow] = []
    async with ours:
        variants: dict[str, tuple[str, dict[str, Decide]]] = {}
        for strategy, peer, peer_name in (
            (Strategy.FIXED_WINDOW, fixed, "fixed window"),
            (Strategy.SLIDING_WINDOW, sliding, "sliding window counter"),
            (Strategy.GCRA, fixed, "fixed window (it has no GCRA)"),
        ):
            limit = Limit(quota, 60, strategy=strategy)

            async def ours_hit(i: int, limit: Limit = limit) -> object:
                return await ours.hit(keys[i], limit)

            async def peer_hit(i: int, peer: Any = peer) -> object:
                return await peer.hit(item, keys[i])

            async def peer_hit_stats(i: int, peer: Any = peer) -> object:
                # What a Decision carries (remaining, reset) costs limits a second round trip.
                return await peer.hit(item, keys[i]) and await peer.get_window_stats(item, keys[i])

            assert (await ours.hit(keys[0], limit)).allowed
            assert await peer_hit(0)
            assert await peer_hit_stats(0)
            variants[strategy.value] = (
                peer_name,
                {"ours": ours_hit, "peer": peer_hit, "peer_stats": peer_hit_stats},
            )
        for tasks in (1, RATELIMIT_TASKS):
            for name, (peer_name, fns) in variants.items():
                samples: dict[str, list[float]] = {label: [] for label in fns}
                for fn in fns.values():  # warm the connection pools
                    await _decisions_per_s(fn, ops // 5, tasks)
                labels = list(fns)
                for r in range(rounds):
                    # Rotate the order so background load on a shared machine hits every variant alike.
                    for label in labels[r % 3 :] + labels[: r % 3]:
                        samples[label].append(await _decisions_per_s(fns[label], ops, tasks))
                med = {label: statistics.median(values) for label, values in samples.items()}
                concurrency = "sequential" if tasks == 1 else f"{tasks} tasks"
                rows.append(
                    (f"{name}, {concurrency}", peer_name, med["ours"], med["peer"], med["peer_stats"])
                )
    return rows


def ratelimit_section(rounds: int, ops: int) -> list[RateRow]:
    """Rate-limit decisions per second on Redis, mainspring against ``limits`` (async, redis-py), same run.

    Rows of (strategy and concurrency, the ``limits`` strategy compared, ours/s, limits ``hit``/s,
    limits ``hit`` + ``get_window_stats``/s). The Redis database is claimed for the run and flushed.
    """
    base = os.environ.get("MAINSPRING_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    with isolated_redis(base) as url:
        return asyncio.run(_ratelimit_runs(str(url), rounds, ops))


def _print_rate_table(rows: list[RateRow]) -> None:
    print("\n### Rate limiting (Redis, decisions/s)\n")
    version = limits.__version__
    print(
        f"| mainspring strategy | limits {version} strategy | mainspring | limits hit | ours / hit "
        "| limits hit + stats | ours / hit + stats |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, peer, ours, hit, hit_stats in rows:
        print(
            f"| {name} | {peer} | {ours:,.0f} | {hit:,.0f} | {ours / hit:.2f}x | {hit_stats:,.0f} "
            f"| {ours / hit_stats:.2f}x |"
        )


def _print_table(title: str, peer: str, rows: list[tuple[str, float, float]], unit: str = "µs") -> None:
    print(f"\n### {title}\n")
    print(f"| operation | mainspring {unit} | {peer} {unit} | mainspring / {peer} |")
    print("|---|---:|---:|---:|")
    for name, ours, theirs in rows:
        print(f"| {name} | {ours:,.1f} | {theirs:,.1f} | {ours / theirs:.2f}x |")


def main(argv: list[str] | None = None) -> int:
    """Run every section and print Markdown tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--ops", type=int, default=2000)
    args = parser.parse_args(argv)
    print(
        f"Python {platform.python_version()}, cryptography {cryptography.__version__}, "
        f"PyJWT {pyjwt.__version__}; {args.rounds} rounds x {args.ops} ops, medians"
    )
    _print_table("JWT", f"PyJWT {pyjwt.__version__}", jwt_section(args.rounds, args.ops))
    # A hash is ~20-50 ms: a handful per round.
    peer = f"argon2-cffi {importlib.metadata.version('argon2-cffi')}"
    _print_table("Passwords", peer, password_section(args.rounds, max(3, args.ops // 200)), unit="ms")
    # Redis round trips dominate and vary more than CPU work: fewer, longer rounds.
    _print_rate_table(ratelimit_section(max(3, args.rounds // 3), args.ops))
    return 0


if __name__ == "__main__":
    sys.exit(main())
