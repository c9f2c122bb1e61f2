"""Cache cost: mainspring's caches against a floor, raw redis-py and the usual libraries.

Four measurements in one run, on a Redis database claimed for the run (``isolated_redis``: flushed
before and after), from ``MAINSPRING_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``):

1. L1 hit, ns/op: ``MemoryCache.get`` against a dict of ``(value, expires_at)`` with a clock check
   (the floor, as an ``async def`` and as a plain function), cachetools ``TTLCache``, cashews
   (``mem://``) and aiocache ``SimpleMemoryCache``; ``MemoryCache.sync.get`` against the plain floor.
2. L2 hit, µs/op, sequential and 50 concurrent tasks (each reading its own keys, so no read is
   coalesced): ``RedisCache.get`` against raw ``redis.asyncio`` + ``orjson.loads``, cashews (redis)
   and aiocache ``RedisCache``, every client with a pool of 50 connections.
3. Stampede: loader calls for 1 process x 1,000 concurrent misses of one key and 4 processes x 250
   (``get_or_set(..., lock=True)``), against cashews ``@cache(..., lock=True)`` and aiocache
   ``@cached_stampede``; the loader takes 100 ms; two rounds, each shown.
4. Zipf (10k keys, s=1.0, 100k ``get_or_set`` calls by 50 tasks): ``MultiLevelCache`` (an L1 of
   1,000 entries, TinyLFU, + Redis, invalidation channel on) against ``RedisCache`` alone: wall time,
   Redis GETs (counted on the cache's client), loader calls and calls degraded by a Redis
   timeout; medians of two rounds.

Rounds alternate the variants (rotating their order); timings are medians. Usage:
``python benchmarks/cache_bench.py [--rounds 7] [--scale 1.0]``.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import platform
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import version
from itertools import accumulate
from multiprocessing.synchronize import Barrier
from typing import Any
from urllib.parse import urlsplit

import aiocache
import cachetools
import orjson
import redis
import redis.asyncio
from aiocache import RedisCache as AioRedisCache
from aiocache import SimpleMemoryCache, cached_stampede
from cashews import Cache as CashewsCache

from mainspring.cache import MemoryCache, MultiLevelCache, RedisCache, create_cache
from mainspring.testing._isolation import isolated_redis
from mainspring.testing._services import configured_url, probe

VALUE = {"id": 42, "name": "Ada Lovelace", "email": "ada@example.com", "roles": ["admin", "dev"]}
TTL = 600
Get = Callable[[str], Awaitable[Any]]
Outcome = tuple[int, int]  # loader calls, callers that failed
ASYNC_FLOOR = "floor: dict + expiry, async def"
SYNC_FLOOR = "floor: dict + expiry, plain function"
SYNC_VARIANTS = (SYNC_FLOOR, "mainspring MemoryCache.sync.get", "cachetools TTLCache.get")


def _rotate(names: list[str], round_no: int) -> list[str]:
    shift = round_no % len(names)
    return names[shift:] + names[:shift]


def _redis_parts(url: str) -> tuple[str, int, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 6379, int(parts.path.strip("/") or 0)


# --- 1. L1 hits -------------------------------------------------------------------------------------


async def l1_hits(rounds: int, scale: float) -> dict[str, float]:
    """Return the median ns per hit of each in-process variant."""
    keys = [f"user:{i}" for i in range(1000)]
    ops = keys * max(1, round(20 * scale))
    floor: dict[str, tuple[Any, float]] = {}
    clock = time.monotonic
    for key in keys:
        floor[key] = (VALUE, clock() + TTL)

    async def floor_get(key: str) -> Any:
        entry = floor.get(key)
        if entry is not None and clock() < entry[1]:
            return entry[0]
        return None

    def floor_get_sync(key: str) -> Any:
        entry = floor.get(key)
        if entry is not None and clock() < entry[1]:
            return entry[0]
        return None

    ttl_cache: cachetools.TTLCache[str, Any] = cachetools.TTLCache(maxsize=10_000, ttl=TTL)
    mine = MemoryCache(max_size=10_000)
    cashews = CashewsCache()
    cashews.setup("mem://?size=10000")
    aio = SimpleMemoryCache()
    for key in keys:
        ttl_cache[key] = VALUE
        await mine.set(key, VALUE, ttl=TTL)
        await cashews.set(key, VALUE, expire=TTL)
        await aio.set(key, VALUE, ttl=TTL)

    async def timed_async(get: Get) -> float:
        started = time.perf_counter()
        for key in ops:
            await get(key)
        return time.perf_counter() - started

    async def timed_sync(get: Callable[[str], Any]) -> float:
        started = time.perf_counter()
        for key in ops:
            get(key)
        return time.perf_counter() - started

    variants: dict[str, Callable[[], Awaitable[float]]] = {
        ASYNC_FLOOR: lambda: timed_async(floor_get),
        "mainspring MemoryCache.get": lambda: timed_async(mine.get),
        "cashews mem://": lambda: timed_async(cashews.get),
        "aiocache SimpleMemoryCache": lambda: timed_async(aio.get),
        SYNC_FLOOR: lambda: timed_sync(floor_get_sync),
        "mainspring MemoryCache.sync.get": lambda: timed_sync(mine.sync.get),
        "cachetools TTLCache.get": lambda: timed_sync(ttl_cache.get),
    }
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for round_no in range(rounds + 1):  # round 0 warms up and is not counted
        for name in _rotate(list(variants), round_no):
            elapsed = await variants[name]()
            if round_no:
                samples[name].append(elapsed / len(ops) * 1e9)
    await cashews.close()
    await aio.close()
    return {name: statistics.median(s) for name, s in samples.items()}


# --- 2. L2 hits -------------------------------------------------------------------------------------


async def l2_hits(url: str, rounds: int, scale: float) -> dict[str, dict[str, float]]:
    """Return the median µs per hit of each Redis variant, sequential and at 50 concurrent tasks."""
    host, port, db = _redis_parts(url)
    keys = [f"user:{i}" for i in range(1000)]
    # Short batches and three times the rounds: the load of a shared machine then hits every variant alike.
    seq_ops = keys[: max(50, round(300 * scale))]
    per_task = max(4, round(20 * scale))
    payload = orjson.dumps(VALUE)

    raw = redis.asyncio.Redis(
        connection_pool=redis.asyncio.BlockingConnectionPool.from_url(url, max_connections=50)
    )
    mine = RedisCache(url, namespace="bench_l2", max_connections=50)
    cashews = CashewsCache()
    cashews.setup(url, client_side=False, max_connections=50)
    aio = AioRedisCache(
        endpoint=host,
        port=port,
        db=db,
        namespace="aiocache_l2",
        pool_max_size=50,
        connection_pool_class=redis.asyncio.BlockingConnectionPool,
    )
    await mine.start()
    for key in keys:
        await raw.set(f"raw:{key}", payload, ex=TTL)
        await mine.set(key, VALUE, ttl=TTL)
        await cashews.set(f"cashews:{key}", VALUE, expire=TTL)
        await aio.set(key, VALUE, ttl=TTL)

    async def raw_get(key: str) -> Any:
        data = await raw.get("raw:" + key)
        return None if data is None else orjson.loads(data)

    async def cashews_get(key: str) -> Any:
        return await cashews.get("cashews:" + key)

    getters: dict[str, Get] = {
        "raw redis.asyncio + orjson": raw_get,
        "mainspring RedisCache.get": mine.get,
        "cashews redis://": cashews_get,
        "aiocache RedisCache": aio.get,
    }
    for name, get in getters.items():  # every variant must really hit
        if await get(keys[0]) != VALUE:
            raise RuntimeError(f"{name} did not return the stored value")

    async def sequential(get: Get) -> float:
        started = time.perf_counter()
        for key in seq_ops:
            await get(key)
        return (time.perf_counter() - started) / len(seq_ops)

    async def concurrent(get: Get) -> float:
        async def task(offset: int) -> None:
            for i in range(per_task):
                await get(keys[(offset * per_task + i) % len(keys)])

        started = time.perf_counter()
        await asyncio.gather(*(task(t) for t in range(50)))
        return (time.perf_counter() - started) / (50 * per_task)

    samples: dict[str, dict[str, list[float]]] = {
        mode: {name: [] for name in getters} for mode in ("sequential", "50 concurrent")
    }
    for round_no in range(3 * rounds + 1):
        for name in _rotate(list(getters), round_no):
            seq = await sequential(getters[name])
            conc = await concurrent(getters[name])
            if round_no:
                samples["sequential"][name].append(seq * 1e6)
                samples["50 concurrent"][name].append(conc * 1e6)
    await mine.stop()
    await raw.aclose()
    await cashews.close()
    await aio.close()
    return {mode: {n: statistics.median(s) for n, s in by.items()} for mode, by in samples.items()}


# --- 3. Stampede ------------------------------------------------------------------------------------

STAMPEDE_VARIANTS = ("mainspring get_or_set", "cashews @cache(lock=True)", "aiocache @cached_stampede")


async def _stampede(
    variant: str, url: str, key: str, callers: int, lock: bool, barrier: Barrier | None
) -> Outcome:
    host, port, db = _redis_parts(url)
    calls = 0

    async def load() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.1)
        return VALUE

    call: Callable[[], Awaitable[Any]]
    closer: Callable[[], Awaitable[None]]
    if variant == "mainspring get_or_set":
        mine = RedisCache(url, namespace="bench_stampede", max_connections=50, timeout=5.0)
        await mine.start()

        async def call() -> Any:
            return await mine.get_or_set(key, load, ttl=TTL, lock=lock, lock_wait=10.0)

        closer = mine.stop
    elif variant == "cashews @cache(lock=True)":
        cashews = CashewsCache()
        cashews.setup(url, client_side=False, max_connections=50)
        # lock=True is cashews' cross-process lock; protected (the default) its in-process single flight.
        call = cashews(ttl=TTL, key=key, lock=lock)(load)
        closer = cashews.close
    else:
        # Its default pool raises "Too many connections" past 100 callers (redis-py >= 6): a blocking one.
        decorator = cached_stampede(
            lease=2,
            ttl=TTL,
            key=key,
            cache=aiocache.Cache.REDIS,
            endpoint=host,
            port=port,
            db=db,
            pool_max_size=50,
            connection_pool_class=redis.asyncio.BlockingConnectionPool,
        )
        call = decorator(load)

        async def closer() -> None:
            await decorator.cache.close()

    if barrier is not None:
        barrier.wait(30)  # every process starts its callers at the same moment
    results = await asyncio.gather(*(call() for _ in range(callers)), return_exceptions=True)
    await closer()
    # A caller that raised or got something else than the loader's value failed.
    return calls, sum(1 for result in results if result != VALUE)


def _stampede_process(
    variant: str, url: str, key: str, callers: int, barrier: Barrier, out: multiprocessing.Queue[Outcome]
) -> None:
    out.put(asyncio.run(_stampede(variant, url, key, callers, True, barrier)))


def stampede(url: str, rounds: int) -> dict[str, dict[str, list[Outcome]]]:
    """Return (loader calls, failed callers) of each variant per round, for 1 and for 4 processes."""
    ctx = multiprocessing.get_context("spawn")
    results: dict[str, dict[str, list[Outcome]]] = {
        "1 process x 1,000": {v: [] for v in STAMPEDE_VARIANTS},
        "4 processes x 250, lock": {v: [] for v in STAMPEDE_VARIANTS},
    }
    for round_no in range(rounds):
        for variant in _rotate(list(STAMPEDE_VARIANTS), round_no):
            tag = variant.split()[0]
            one = asyncio.run(_stampede(variant, url, f"s1-{tag}-{round_no}", 1000, False, None))
            results["1 process x 1,000"][variant].append(one)
            barrier = ctx.Barrier(4)
            out: multiprocessing.Queue[Outcome] = ctx.Queue()
            key = f"s4-{tag}-{round_no}"
            procs = [
                ctx.Process(target=_stampede_process, args=(variant, url, key, 250, barrier, out))
                for _ in range(4)
            ]
            for proc in procs:
                proc.start()
            outcomes = [out.get(timeout=60) for _ in procs]
            for proc in procs:
                proc.join(30)
            results["4 processes x 250, lock"][variant].append(
                (sum(calls for calls, _ in outcomes), sum(failed for _, failed in outcomes))
            )
    return results


# --- 4. Zipf ----------------------------------------------------------------------------------------


def _zipf(keys: int, s: float, count: int, seed: int) -> list[str]:
    weights = list(accumulate(1 / (rank**s) for rank in range(1, keys + 1)))
    rng = random.Random(seed)
    return [f"item:{rank}" for rank in rng.choices(range(keys), cum_weights=weights, k=count)]


def _count_gets(cache: RedisCache) -> list[int]:
    # INFO commandstats is server-wide (other clients' GETs too): count this cache's own GETs instead.
    client = cache._client
    get = client.get
    counter = [0]

    def counting_get(*args: Any, **kwargs: Any) -> Any:
        counter[0] += 1
        return get(*args, **kwargs)

    client.get = counting_get
    return counter


async def _zipf_run(cache: Any, ops: list[str]) -> int:
    calls = 0

    async def worker(chunk: list[str]) -> None:
        nonlocal calls
        for key in chunk:

            async def load(key: str = key) -> dict[str, Any]:
                nonlocal calls
                calls += 1
                return {"key": key, **VALUE}

            await cache.get_or_set(key, load, ttl=TTL)

    size = -(-len(ops) // 50)
    await asyncio.gather(*(worker(ops[i : i + size]) for i in range(0, len(ops), size)))
    return calls


def zipf(url: str, rounds: int, scale: float) -> dict[str, dict[str, float]]:
    """Return medians of wall time, Redis GETs and loader calls per variant."""
    ops = _zipf(10_000, 1.0, max(1000, round(100_000 * scale)), seed=7)
    samples: dict[str, dict[str, list[float]]] = {}

    async def one(variant: str, namespace: str) -> tuple[float, int, int, int]:
        cache: Any
        if variant == "MultiLevelCache":
            query = f"max_size=1000&namespace={namespace}&l1_max_ttl=60"
            cache = create_cache(url.replace("redis://", "memory+redis://", 1) + "?" + query)
            assert isinstance(cache, MultiLevelCache)
        else:
            cache = RedisCache(url, namespace=namespace, max_connections=50)
        async with cache:
            gets = _count_gets(cache.l2 if isinstance(cache, MultiLevelCache) else cache)
            started = time.perf_counter()
            calls = await _zipf_run(cache, ops)
            elapsed = time.perf_counter() - started
        return elapsed, gets[0], calls, cache.stats().errors

    variants = ["MultiLevelCache", "RedisCache"]
    for round_no in range(rounds):
        for variant in _rotate(variants, round_no):
            elapsed, gets, calls, errors = asyncio.run(one(variant, f"zipf{round_no}{variant[0]}"))
            by = samples.setdefault(variant, {"wall s": [], "GETs": [], "loader calls": [], "errors": []})
            by["wall s"].append(elapsed)
            by["GETs"].append(gets)
            by["loader calls"].append(calls)
            by["errors"].append(errors)
    return {v: {m: statistics.median(s) for m, s in by.items()} for v, by in samples.items()}


# --- report -----------------------------------------------------------------------------------------


def _outcome(outcome: Outcome) -> str:
    calls, failed = outcome
    return f"{calls} ({failed} callers failed)" if failed else str(calls)


def report(
    l1: dict[str, float],
    l2: dict[str, dict[str, float]],
    stamp: dict[str, dict[str, list[Outcome]]],
    zipf_res: dict[str, dict[str, float]],
) -> str:
    """Render the results as markdown tables."""
    lines = ["| L1 hit | ns/op | vs floor |", "|---|---:|---:|"]
    for name, ns in l1.items():
        floor = SYNC_FLOOR if name in SYNC_VARIANTS else ASYNC_FLOOR
        lines.append(f"| {name} | {ns:,.0f} | {ns / l1[floor]:.2f}x |")
    lines += [
        "",
        "| L2 hit | sequential µs/op | vs raw | 50 concurrent µs/op | vs raw |",
        "|---|---:|---:|---:|---:|",
    ]
    raw = "raw redis.asyncio + orjson"
    for name in l2["sequential"]:
        seq, conc = l2["sequential"][name], l2["50 concurrent"][name]
        lines.append(
            f"| {name} | {seq:,.1f} | {seq / l2['sequential'][raw]:.2f}x | {conc:,.1f} | "
            f"{conc / l2['50 concurrent'][raw]:.2f}x |"
        )
    lines += [
        "",
        "| stampede: loader calls per round | " + " | ".join(STAMPEDE_VARIANTS) + " |",
        "|---|" + "---:|" * len(STAMPEDE_VARIANTS),
    ]
    for case, by in stamp.items():
        lines.append(
            f"| {case} | " + " | ".join(", ".join(map(_outcome, by[v])) for v in STAMPEDE_VARIANTS) + " |"
        )
    lines += [
        "",
        "| Zipf 100k get_or_set | wall | Redis GETs | loader calls | degraded calls |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, by in zipf_res.items():
        lines.append(
            f"| {name} | {by['wall s']:.2f} s | {by['GETs']:,.0f} | {by['loader calls']:,.0f} | "
            f"{by['errors']:,.0f} |"
        )
    return "\n".join(lines)


@contextmanager
def _redis_for_run() -> Iterator[str]:
    url = configured_url("redis")
    problem = probe("redis", url)
    if problem is not None:
        raise SystemExit(f"Redis is needed for this benchmark: {problem}")
    with isolated_redis(url) as isolated:
        yield str(isolated)


def _progress(step: str, started: float) -> None:
    print(f"{step} done at {time.perf_counter() - started:.0f} s", file=sys.stderr)


def main() -> int:
    """Run the benchmark and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the operations per round")
    args = parser.parse_args()
    started = time.perf_counter()
    l1 = asyncio.run(l1_hits(args.rounds, args.scale))
    _progress("L1 hits", started)
    with _redis_for_run() as url:
        l2 = asyncio.run(l2_hits(url, args.rounds, args.scale))
        _progress("L2 hits", started)
        stamp = stampede(url, 2)
        _progress("stampede", started)
        zipf_res = zipf(url, 2, args.scale)
        _progress("Zipf", started)
    peers = ", ".join(f"{name} {version(name)}" for name in ("redis", "cachetools", "cashews", "aiocache"))
    print(
        f"Python {platform.python_version()}, {peers}, {args.rounds} rounds, medians; "
        f"{time.perf_counter() - started:.0f} s\n"
    )
    print(report(l1, l2, stamp, zipf_res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
