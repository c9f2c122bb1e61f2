"""Messaging cost: mainspring's ``Broker`` against the raw clients and FastStream, per backend.

Three measurements in one run, each backend in a namespace of its own (Redis: a database claimed
and flushed for the run; RabbitMQ: a vhost made for the run; NATS: a stream prefix whose streams are
deleted afterwards; Kafka: an in-process librdkafka mock cluster), from the ``MAINSPRING_TEST_*_URL``
settings of the test kit. Payloads are ~200-byte JSON documents built per message.

1. Publish: messages per second and this process's CPU microseconds per message, one publish awaited
   at a time and in batches of 100 (``publish_batch``), against the raw client's floor -- redis-py
   ``XADD`` (also as a one-command pipeline; batches are pipelines of 100), aio-pika with publisher
   confirms (persistent, mandatory; a batch is 100 publishes awaited together), nats-py JetStream
   ``js.publish`` (batches: ``publish_async`` x 100), confluent-kafka ``Producer`` (idempotent,
   ``acks=all``, the transport's ``linger.ms``) -- plus aiokafka, FastStream on Redis, RabbitMQ and
   NATS, and "+ the 7 CloudEvents headers" rows: the raw client sending the headers mainspring puts
   on every record, which separates the cost of the wire format from the cost of the library. A run
   stops after ``--scale`` x 0.7 s (or 20,000 messages); every run publishes to a fresh topic, and
   what a topic needs (a bound queue, a stream) is declared before the clock starts.
2. End to end: the library publishes in batches of 100 while its consumer runs, never more than 300
   messages ahead, for 2 s; the rate is what the handler saw in that window. Then a paced phase (one
   message every 2 ms) gives the latency from publish to handler (the payload carries
   ``time.time()``), p50 and p99. mainspring with ``concurrency=1`` and ``16``, FastStream's
   subscriber, and a raw consumer: an ``XREADGROUP`` loop (100 per read, one ``XACK`` per read), an
   aio-pika consumer with prefetch 32, a nats-py pull consumer fetching 100 at a time, a
   confluent-kafka ``Consumer.consume(100)`` in a thread.
3. Outbox: a PostgreSQL database made for the run with the ``outbox``/``inbox`` tables from their
   metadata; rows inserted with asyncpg ``executemany``, then ``OutboxRelay.run_once`` until nothing
   is pending (and, on a second row, the relay's own loop with ``concurrency=2``: one batch claimed
   while another is published), relaying to Redis and to RabbitMQ: rows per second and the ratio to
   that backend's raw batched publish floor, measured right before each relay round with the same
   records (headers and body) in batches of the relay's size, the median of the per-round ratios.
   Also ``Outbox.add`` per second (one row per transaction, against a Core ``INSERT`` of the same
   row; and 100 per transaction).

Variants take turns in a rotating order within each round; the tables show medians over rounds.
Usage: ``python benchmarks/messaging_bench.py [--backends redis,rabbitmq,nats,kafka]
[--sections publish,e2e,outbox] [--rounds 3] [--scale 1.0] [--quick] [--profile REGEX]``;
``--profile 'redis mainspring.*batch'`` runs every variant whose name (``publish <backend> <impl>
<mode>``, ``e2e <backend> <consumer>``, ``outbox relay <backend>``, ``outbox add ...``) matches the
regular expression under cProfile, timed in CPU time, and prints the top functions to stderr. A
backend that does not answer is left out with a note.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import datetime as dt
import io
import os
import platform
import pstats
import re
import statistics
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any

import orjson

from mainspring.messaging import Broker, Message, build_record, create_transport
from mainspring.testing._isolation import (
    isolated_nats,
    isolated_postgres,
    isolated_rabbitmq,
    isolated_redis,
)
from mainspring.testing._services import SessionState, configured_url, probe

BATCH = 100
WINDOW = 3 * BATCH  # end to end: most messages published but not yet handled
PACE_INTERVAL = 0.002
E2E_TIMEOUT = 120.0
BACKENDS = ("redis", "rabbitmq", "nats", "kafka")
SECTIONS = ("publish", "e2e", "outbox")
TITLES = {"redis": "Redis", "rabbitmq": "RabbitMQ", "nats": "NATS", "kafka": "Kafka"}

# --- payloads ---------------------------------------------------------------------------------------

_BASE: dict[str, Any] = {
    "seq": 0,
    "ts": 0.0,
    "order_id": "ord-7d1c9a52",
    "customer": "cust-004217",
    "amount": 129.95,
    "currency": "EUR",
    "items": [{"sku": "SKU-000042", "qty": 2}, {"sku": "SKU-000977", "qty": 1}],
    "note": "",
}
_sample = dict(_BASE, seq=12345, ts=time.time())
_NOTE = "x" * max(0, 200 - len(orjson.dumps(_sample)))


def payload(seq: int) -> dict[str, Any]:
    """Return message ``seq``: about 200 bytes of JSON, stamped with the current time."""
    return {
        "seq": seq,
        "ts": time.time(),
        "order_id": "ord-7d1c9a52",
        "customer": "cust-004217",
        "amount": 129.95,
        "currency": "EUR",
        "items": [{"sku": "SKU-000042", "qty": 2}, {"sku": "SKU-000977", "qty": 1}],
        "note": _NOTE,
    }


def ce_headers() -> dict[str, str]:
    """The CloudEvents headers mainspring puts on a record, with a fresh id: the raw "+ headers" rows."""
    record = build_record("orders", Message(data=None))
    return dict(record.headers)


def chunks(start: int, count: int, size: int = BATCH) -> Iterator[range]:
    """Yield ranges of at most ``size`` sequence numbers covering ``start .. start + count``."""
    for first in range(start, start + count, size):
        yield range(first, min(first + size, start + count))


# --- profiling --------------------------------------------------------------------------------------


class Profiler:
    """cProfile (CPU time) around the variants whose name matches regular expression ``pattern``."""

    def __init__(self, pattern: str | None) -> None:
        self.pattern = re.compile(pattern, re.IGNORECASE) if pattern else None
        # CPU time, not wall time: on a loaded machine wall time mostly shows preemption in syscalls.
        self.profile = cProfile.Profile(time.process_time)
        self.used = False

    @contextmanager
    def around(self, name: str) -> Iterator[None]:
        if self.pattern is None or not self.pattern.search(name):
            yield
            return
        self.used = True
        self.profile.enable()
        try:
            yield
        finally:
            self.profile.disable()

    def report(self) -> str:
        if not self.used:
            return ""
        out = io.StringIO()
        stats = pstats.Stats(self.profile, stream=out)
        stats.sort_stats("tottime").print_stats(30)
        stats.sort_stats("cumulative").print_stats(40)
        return out.getvalue()


PROFILER = Profiler(None)

# --- shapes -----------------------------------------------------------------------------------------

Publish = Callable[[str, int, int], Awaitable[None]]  # (topic, first seq, count)
Hook = Callable[[str], Awaitable[None]]  # (topic)


@dataclass
class Publisher:
    """One implementation's publish paths on one backend."""

    name: str
    single: Publish | None = None
    batch: Publish | None = None
    prepare: Hook | None = None  # before the clock starts: make the topic accept records
    cleanup: Hook | None = None  # after: delete what the topic holds
    floor: bool = False


class Sink:
    """Counts handled messages by ``seq`` and records latencies of the paced phase."""

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.duplicates = 0
        self.paced_from = 1 << 62
        self.latencies: list[float] = []
        self.target = 0
        self.done = asyncio.Event()

    def expect(self, target: int) -> None:
        self.target = target
        if len(self.seen) >= target:
            self.done.set()
        else:
            self.done.clear()

    def handle(self, data: Any) -> None:
        if isinstance(data, bytes | str):
            data = orjson.loads(data)
        seq = data["seq"]
        if seq in self.seen:
            self.duplicates += 1
            return
        if seq >= self.paced_from:
            self.latencies.append(time.time() - data["ts"])
        self.seen.add(seq)
        if len(self.seen) >= self.target:
            self.done.set()


@dataclass
class Feed:
    """What an end-to-end variant hands the harness while its consumer runs."""

    batch: Publish
    single: Publish


Consumer = Callable[[str, Sink], AbstractAsyncContextManager[Feed]]


def _feed(pub: Publisher) -> Feed:
    if pub.batch is None or pub.single is None:
        raise ValueError(f"{pub.name} cannot feed an end-to-end run: it needs both publish paths")
    return Feed(pub.batch, pub.single)


@dataclass
class E2EResult:
    rate: float
    cpu: float
    p50: float
    p99: float
    duplicates: int = 0


@dataclass
class Results:
    publish: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # backend/impl/mode
    floors: dict[str, dict[str, str]] = field(default_factory=dict)  # backend -> mode -> impl
    e2e: dict[str, dict[str, E2EResult]] = field(default_factory=dict)
    outbox: dict[str, float] = field(default_factory=dict)
    # outbox row -> (its raw batched publish floor, median of the per-round relay/floor ratios)
    outbox_floors: dict[str, tuple[float, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _rotate(names: list[str], round_no: int) -> list[str]:
    shift = round_no % len(names) if names else 0
    return names[shift:] + names[:shift]


_topic_counter = iter(range(10**9))


def fresh_topic(tag: str) -> str:
    """A topic name no earlier variant used (letters, digits and ``_``: valid on every backend)."""
    return f"b_{tag}_{next(_topic_counter)}"


def _tag(name: str) -> str:
    return "".join(c for c in name.lower() if c.isalnum())[:12]


# --- mainspring (every backend) ---------------------------------------------------------------------


def mainspring_publisher(broker: Broker, prepare: Hook | None, cleanup: Hook | None) -> Publisher:
    async def single(topic: str, first: int, count: int) -> None:
        publish = broker.publish
        for seq in range(first, first + count):
            await publish(topic, payload(seq))

    async def batch(topic: str, first: int, count: int) -> None:
        for part in chunks(first, count):
            await broker.publish_batch(topic, [payload(seq) for seq in part])

    return Publisher("mainspring", single, batch, prepare, cleanup)


def mainspring_consumer(
    make_transport: Callable[[], Any], concurrency: int, on_topic: Hook | None = None
) -> Consumer:
    @asynccontextmanager
    async def run(topic: str, sink: Sink) -> AsyncIterator[Feed]:
        broker = Broker(make_transport(), fetch_timeout=1.0)

        async def handler(data: dict[str, Any]) -> None:
            sink.handle(data)

        broker.add_subscriber(topic, handler, group="bench", concurrency=concurrency)
        await broker.start()
        if on_topic is not None:
            await on_topic(topic)
        try:
            pub = mainspring_publisher(broker, None, None)
            yield _feed(pub)
        finally:
            await broker.stop(drain_timeout=5.0)

    return run


# --- Redis ------------------------------------------------------------------------------------------


class RedisBench:
    """Redis Streams: mainspring, raw redis-py, FastStream."""

    name = "redis"

    def __init__(self, url: str) -> None:
        self.url = url

    async def open(self) -> None:
        import redis.asyncio as aioredis
        from faststream.redis import RedisBroker

        self.raw = aioredis.Redis.from_url(self.url)
        self.ms = Broker(create_transport(self.url))
        await self.ms.start()
        self.fs = RedisBroker(self.url, logger=None)
        await self.fs.connect()

    async def close(self) -> None:
        await self.ms.stop(drain_timeout=0)
        await self.fs.stop()
        await self.raw.aclose()

    def ms_key(self, topic: str) -> str:
        return self.ms.transport.keys(topic).stream  # type: ignore[attr-defined]

    def publishers(self) -> list[Publisher]:
        raw = self.raw

        async def drop(key: str) -> None:
            await raw.delete(key)

        async def ms_cleanup(topic: str) -> None:
            await drop(self.ms_key(topic))

        async def raw_single(topic: str, first: int, count: int) -> None:
            key = "raw:" + topic
            for seq in range(first, first + count):
                await raw.xadd(key, {"data": orjson.dumps(payload(seq))})

        async def raw_single_pipe(topic: str, first: int, count: int) -> None:
            key = "raw:" + topic
            for seq in range(first, first + count):
                async with raw.pipeline(transaction=False) as pipe:
                    pipe.xadd(key, {"data": orjson.dumps(payload(seq))})
                    await pipe.execute()

        async def raw_batch(topic: str, first: int, count: int) -> None:
            key = "raw:" + topic
            for part in chunks(first, count):
                async with raw.pipeline(transaction=False) as pipe:
                    for seq in part:
                        pipe.xadd(key, {"data": orjson.dumps(payload(seq))})
                    await pipe.execute()

        async def raw_cleanup(topic: str) -> None:
            await drop("raw:" + topic)

        async def raw_batch_headers(topic: str, first: int, count: int) -> None:
            key = "raw:" + topic
            for part in chunks(first, count):
                async with raw.pipeline(transaction=False) as pipe:
                    for seq in part:
                        fields = {"h:" + k: v for k, v in ce_headers().items()}
                        fields["data"] = orjson.dumps(payload(seq)).decode()
                        pipe.xadd(key, fields)
                    await pipe.execute()

        fs = self.fs

        async def fs_single(topic: str, first: int, count: int) -> None:
            key = "fs:" + topic
            for seq in range(first, first + count):
                await fs.publish(payload(seq), stream=key)

        async def fs_batch(topic: str, first: int, count: int) -> None:
            # FastStream's publish_batch is for lists only; for streams it takes a redis-py pipeline.
            key = "fs:" + topic
            client = fs._connection
            for part in chunks(first, count):
                async with client.pipeline(transaction=False) as pipe:
                    for seq in part:
                        await fs.publish(payload(seq), stream=key, pipeline=pipe)
                    await pipe.execute()

        async def fs_cleanup(topic: str) -> None:
            await drop("fs:" + topic)

        return [
            mainspring_publisher(self.ms, None, ms_cleanup),
            Publisher("redis-py XADD", raw_single, raw_batch, None, raw_cleanup, floor=True),
            Publisher("redis-py XADD, 1-command pipeline", raw_single_pipe, None, None, raw_cleanup),
            Publisher("redis-py XADD + the 7 CloudEvents fields", None, raw_batch_headers, None, raw_cleanup),
            Publisher("FastStream (pipeline for batches)", fs_single, fs_batch, None, fs_cleanup),
        ]

    def consumers(self) -> dict[str, Consumer]:
        url = self.url

        @asynccontextmanager
        async def fs_run(topic: str, sink: Sink) -> AsyncIterator[Feed]:
            from faststream.redis import RedisBroker, StreamSub

            key = "fs:" + topic
            fs = RedisBroker(url, logger=None)

            @fs.subscriber(stream=StreamSub(key, group="bench", consumer="c1"))
            async def handler(body: dict[str, Any]) -> None:
                sink.handle(body)

            await fs.start()
            try:

                async def batch(topic: str, first: int, count: int) -> None:
                    for part in chunks(first, count):
                        async with fs._connection.pipeline(transaction=False) as pipe:
                            for seq in part:
                                await fs.publish(payload(seq), stream=key, pipeline=pipe)
                            await pipe.execute()

                async def single(topic: str, first: int, count: int) -> None:
                    for seq in range(first, first + count):
                        await fs.publish(payload(seq), stream=key)

                yield Feed(batch, single)
            finally:
                await fs.stop()
                await self.raw.delete(key)

        @asynccontextmanager
        async def raw_run(topic: str, sink: Sink) -> AsyncIterator[Feed]:
            import redis.asyncio as aioredis

            key = "raw:" + topic
            client = aioredis.Redis.from_url(url)
            await client.xgroup_create(key, "bench", id="0", mkstream=True)

            async def loop() -> None:
                while True:
                    reply = await client.xreadgroup("bench", "c1", {key: ">"}, count=BATCH, block=1000)
                    for _stream, entries in reply or ():
                        ids = []
                        for entry_id, fields in entries:
                            sink.handle(fields[b"data"])
                            ids.append(entry_id)
                        if ids:
                            await client.xack(key, "bench", *ids)

            task = asyncio.create_task(loop())
            raw = self.raw

            async def batch(topic: str, first: int, count: int) -> None:
                for part in chunks(first, count):
                    async with raw.pipeline(transaction=False) as pipe:
                        for seq in part:
                            pipe.xadd(key, {"data": orjson.dumps(payload(seq))})
                        await pipe.execute()

            async def single(topic: str, first: int, count: int) -> None:
                for seq in range(first, first + count):
                    await raw.xadd(key, {"data": orjson.dumps(payload(seq))})

            try:
                yield Feed(batch, single)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await client.aclose()
                await raw.delete(key)

        async def ms_drop(topic: str) -> None:
            return None

        return {
            "raw XREADGROUP loop": raw_run,
            "mainspring, concurrency 1": mainspring_consumer(lambda: create_transport(url), 1),
            "mainspring, concurrency 16": mainspring_consumer(lambda: create_transport(url), 16),
            "FastStream StreamSub (group)": fs_run,
        }


# --- RabbitMQ ---------------------------------------------------------------------------------------


class RabbitBench:
    """RabbitMQ: mainspring, raw aio-pika with publisher confirms, FastStream."""

    name = "rabbitmq"

    def __init__(self, url: str) -> None:
        self.url = url

    async def open(self) -> None:
        import aio_pika
        from faststream.rabbit import ExchangeType, RabbitBroker, RabbitExchange

        self.aio_pika = aio_pika
        self.conn = await aio_pika.connect(self.url)
        self.channel = await self.conn.channel(publisher_confirms=True)
        self.exchange = await self.channel.declare_exchange("raw", aio_pika.ExchangeType.TOPIC, durable=True)
        self.admin = await self.conn.channel(publisher_confirms=False)
        self.ms = Broker(create_transport(self.url))
        await self.ms.start()
        self.fs = RabbitBroker(self.url, logger=None)
        await self.fs.connect()
        self.fs_exchange = RabbitExchange("fs", type=ExchangeType.TOPIC, durable=True)
        await self.fs.declare_exchange(self.fs_exchange)
        self.queues: dict[str, Any] = {}

    async def close(self) -> None:
        await self.ms.stop(drain_timeout=0)
        await self.fs.stop()
        await self.conn.close()

    def sink(self, exchange: str) -> tuple[Hook, Hook]:
        """Hooks that bind a durable queue to ``exchange`` for the topic, and delete it afterwards."""

        async def prepare(topic: str) -> None:
            queue = await self.admin.declare_queue(f"sink.{exchange}.{topic}", durable=True)
            await queue.bind(exchange, routing_key=topic)
            self.queues[f"{exchange}/{topic}"] = queue

        async def cleanup(topic: str) -> None:
            queue = self.queues.pop(f"{exchange}/{topic}", None)
            if queue is not None:
                await queue.delete(if_unused=False, if_empty=False)

        return prepare, cleanup

    def publishers(self) -> list[Publisher]:
        aio_pika = self.aio_pika
        exchange = self.exchange
        persistent = aio_pika.DeliveryMode.PERSISTENT

        async def raw_one(topic: str, seq: int) -> None:
            message = aio_pika.Message(orjson.dumps(payload(seq)), delivery_mode=persistent)
            await exchange.publish(message, routing_key=topic, mandatory=True)

        async def raw_single(topic: str, first: int, count: int) -> None:
            for seq in range(first, first + count):
                await raw_one(topic, seq)

        async def raw_batch(topic: str, first: int, count: int) -> None:
            for part in chunks(first, count):
                await asyncio.gather(*(raw_one(topic, seq) for seq in part))

        async def raw_one_headers(topic: str, seq: int) -> None:
            message = aio_pika.Message(
                orjson.dumps(payload(seq)), headers=ce_headers(), delivery_mode=persistent
            )
            await exchange.publish(message, routing_key=topic, mandatory=True)

        async def raw_single_headers(topic: str, first: int, count: int) -> None:
            for seq in range(first, first + count):
                await raw_one_headers(topic, seq)

        async def raw_batch_headers(topic: str, first: int, count: int) -> None:
            for part in chunks(first, count):
                await asyncio.gather(*(raw_one_headers(topic, seq) for seq in part))

        fs, fs_exchange = self.fs, self.fs_exchange

        async def fs_one(topic: str, seq: int) -> None:
            await fs.publish(payload(seq), exchange=fs_exchange, routing_key=topic, persist=True)

        async def fs_single(topic: str, first: int, count: int) -> None:
            for seq in range(first, first + count):
                await fs_one(topic, seq)

        async def fs_batch(topic: str, first: int, count: int) -> None:
            for part in chunks(first, count):
                await asyncio.gather(*(fs_one(topic, seq) for seq in part))

        ms_exchange = self.ms.transport.exchange  # type: ignore[attr-defined]
        return [
            mainspring_publisher(self.ms, *self.sink(ms_exchange)),
            Publisher("aio-pika, confirms", raw_single, raw_batch, *self.sink("raw"), floor=True),
            Publisher(
                "aio-pika + the 7 CloudEvents headers",
                raw_single_headers,
                raw_batch_headers,
                *self.sink("raw"),
            ),
            Publisher("FastStream (gather for batches)", fs_single, fs_batch, *self.sink("fs")),
        ]

    def consumers(self) -> dict[str, Consumer]:
        url = self.url
        aio_pika = self.aio_pika

        @asynccontextmanager
        async def raw_run(topic: str, sink: Sink) -> AsyncIterator[Feed]:
            conn = await aio_pika.connect(url)
            channel = await conn.channel(publisher_confirms=False)
            await channel.set_qos(prefetch_count=32)
            queue = await channel.declare_queue(f"raw.{topic}", durable=True)
            await queue.bind("raw", routing_key=topic)

            async def on_message(message: Any) -> None:
                sink.handle(message.body)
                await message.ack()

            tag = await queue.consume(on_message)
            pub = next(p for p in self.publishers() if p.floor)
            try:
                yield _feed(pub)
            finally:
                await queue.cancel(tag)
                await queue.delete(if_unused=False, if_empty=False)
                await conn.close()

        @asynccontextmanager
        async def fs_run(topic: str, sink: Sink) -> AsyncIterator[Feed]:
            from faststream.rabbit import RabbitBroker, RabbitQueue

            fs = RabbitBroker(url, logger=None)
            queue = RabbitQueue(f"fs.{topic}", durable=True, routing_key=topic)

            @fs.subscriber(queue, self.fs_exchange)
            async def handler(body: dict[str, Any]) -> None:
                sink.handle(body)

            await fs.start()

            async def one(seq: int) -> None:
                await fs.publish(payload(seq), exchange=self.fs_exchange, routing_key=topic, persist=True)

            async def batch(topic: str, first: int, count: int) -> None:
                for part in chunks(first, count):
                    await asyncio.gather(*(one(seq) for seq in part))

            async def single(topic: str, first: int, count: int) -> None:
                for seq in range(first, first + count):
                    await one(seq)

            try:
                yield Feed(batch, single)
            finally:
                await fs.stop()
                with contextlib.suppress(Exception):
                    await self.admin.queue_delete(f"fs.{topic}")

        return {
            "raw aio-pika consumer, prefetch 32": raw_run,
            "mainspring, concurrency 1": mainspring_consumer(lambda: create_transport(url), 1),
            "mainspring, concurrency 16": mainspring_consumer(lambda: create_transport(url), 16),
            "FastStream subscriber": fs_run,
        }


# --- NATS -------------------------------------------------------------------------------------------


class NatsBench:
    """NATS JetStream: mainspring, raw nats-py, FastStream."""

    name = "nats"

    def __init__(self, url: str, namespace: str) -> None:
        self.url = url
        self.ns = namespace

    async def open(self) -> None:
        import nats
        from faststream.nats import NatsBroker

        self.nc = await nats.connect(self.url)
        self.js = self.nc.jetstream()
        self.jsm = self.nc.jsm()
        self.ms = Broker(create_transport(self.url, prefix=self.ns))
        await self.ms.start()
        self.fs = NatsBroker(self.url, logger=None)
        await self.fs.connect()

    async def close(self) -> None:
        await self.ms.stop(drain_timeout=0)
        await self.fs.stop()
        await self.nc.close()

    def subject(self, impl: str, topic: str) -> str:
        return f"{self.ns}.{impl}.{topic}"

    def stream(self, impl: str, topic: str) -> str:
        return f"{self.ns}_{impl}_{topic}"

    def stream_hooks(self, impl: str) -> tuple[Hook, Hook]:
        from nats.js.api import StorageType

        async def prepare(topic: str) -> None:
            await self.jsm.add_stream(
                name=self.stream(impl, topic), subjects=[self.subject(impl, topic)], storage=StorageType.FILE
            )

        async def cleanup(topic: str) -> None:
            await self.jsm.delete_stream(self.stream(impl, topic))

        return prepare, cleanup

    def publishers(self) -> list[Publisher]:
        js = self.js

        async def raw_single(topic: str, first: int, count: int) -> None:
            subject = self.subject("raw", topic)
            for seq in range(first, first + count):
                await js.publish(subject, orjson.dumps(payload(seq)))

        async def raw_batch(topic: str, first: int, count: int) -> None:
            subject = self.subject("raw", topic)
            for part in chunks(first, count):
                futures = [await js.publish_async(subject, orjson.dumps(payload(seq))) for seq in part]
                await asyncio.gather(*futures)

        async def raw_batch_headers(topic: str, first: int, count: int) -> None:
            subject = self.subject("raw", topic)
            for part in chunks(first, count):
                futures = []
                for seq in part:
                    headers = ce_headers()
                    headers["Nats-Msg-Id"] = headers["ce_id"]  # mainspring de-duplicates by ce_id
                    futures.append(
                        await js.publish_async(subject, orjson.dumps(payload(seq)), headers=headers)
                    )
                await asyncio.gather(*futures)

        fs = self.fs

        async def fs_single(topic: str, first: int, count: int) -> None:
            subject, stream = self.subject("fs", topic), self.stream("fs", topic)
            for seq in range(first, first + count):
                await fs.publish(payload(seq), subject, stream=stream)

        async def fs_batch(topic: str, first: int, count: int) -> None:
            subject, stream = self.subject("fs", topic), self.stream("fs", topic)
            for part in chunks(first, count):
                await asyncio.gather(*(fs.publish(payload(seq), subject, stream=stream) for seq in part))

        transport: Any = self.ms.transport

        async def ms_cleanup(topic: str) -> None:
            await self.jsm.delete_stream(transport.stream_name(topic))

        return [
            mainspring_publisher(self.ms, None, ms_cleanup),
            Publisher("nats-py js.publish", raw_single, raw_batch, *self.stream_hooks("raw"), floor=True),
            Publisher(
                "nats-py + the 7 CloudEvents headers, Nats-Msg-Id",
                None,
                raw_batch_headers,
                *self.stream_hooks("raw"),
            ),
            Publisher("FastStream (gather for batches)", fs_single, fs_batch, *self.stream_hooks("fs")),
        ]

    def consumers(self) -> dict[str, Consumer]:
        url, ns = self.url, self.ns

        @asynccontextmanager
        async def raw_run(topic: str, sink: Sink) -> AsyncIterator[Feed]:
            import nats
            from nats.js.api import StorageType

            nc = await nats.connect(url)
            js = nc.jetstream()
            subject, stream = self.subject("raw", topic), self.stream("raw", topic)
            await self.jsm.add_stream(name=stream, subjects=[subject], storage=StorageType.FILE)
            psub = await js.pull_subscribe(subject, durable="bench", stream=stream)

            async def loop() -> None:
                while True:
                    try:
                        msgs = await psub.fetch(BATCH, timeout=1.0)
                    except nats.errors.TimeoutError:
                        continue
                    for msg in msgs:
                        sink.handle(msg.data)
                        await msg.ack()

            task = asyncio.create_task(loop())
            pub = next(p for p in self.publishers() if p.floor)
            try:
                yield _feed(pub)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await nc.close()
                await self.jsm.delete_stream(stream)

        @asynccontextmanager
        async def fs_run(topic: str, sink: Sink) -> AsyncIterator[Feed]:
            from faststream.nats import JStream, NatsBroker, PullSub

            subject, stream = self.subject("fs", topic), self.stream("fs", topic)
            fs = NatsBroker(url, logger=None)

            @fs.subscriber(
                subject,
                stream=JStream(stream, subjects=[subject]),
                durable="bench",
                pull_sub=PullSub(batch_size=32, timeout=1.0),
            )
            async def handler(body: dict[str, Any]) -> None:
                sink.handle(body)

            await fs.start()

            async def batch(topic: str, first: int, count: int) -> None:
                for part in chunks(first, count):
                    await asyncio.gather(*(fs.publish(payload(seq), subject, stream=stream) for seq in part))

            async def single(topic: str, first: int, count: int) -> None:
                for seq in range(first, first + count):
                    await fs.publish(payload(seq), subject, stream=stream)

            try:
                yield Feed(batch, single)
            finally:
                await fs.stop()
                with contextlib.suppress(Exception):
                    await self.jsm.delete_stream(stream)

        return {
            "raw pull consumer, fetch 100": raw_run,
            "mainspring, concurrency 1": mainspring_consumer(lambda: create_transport(url, prefix=ns), 1),
            "mainspring, concurrency 16": mainspring_consumer(lambda: create_transport(url, prefix=ns), 16),
            "FastStream PullSub(batch_size=32)": fs_run,
        }


# --- Kafka ------------------------------------------------------------------------------------------


class KafkaBench:
    """Kafka on the librdkafka mock cluster: mainspring, raw confluent-kafka, aiokafka."""

    name = "kafka"
    linger_ms = 5  # the transport's default, given to the raw producers too

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.url = f"kafka://{bootstrap}"

    async def open(self) -> None:
        import confluent_kafka

        self.ms = Broker(create_transport(self.url, prefix="ms"))
        await self.ms.start()
        self.producer = confluent_kafka.Producer(
            {
                "bootstrap.servers": self.bootstrap,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": self.linger_ms,
            }
        )
        self.stopping = threading.Event()

        def poll() -> None:
            while not self.stopping.is_set():
                self.producer.poll(0.1)

        self.poller = threading.Thread(target=poll, name="bench-kafka-poller", daemon=True)
        self.poller.start()
        self.aiokafka: Any = None
        try:
            from aiokafka import AIOKafkaProducer

            producer = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap,
                acks="all",
                enable_idempotence=True,
                linger_ms=self.linger_ms,
            )
            await asyncio.wait_for(producer.start(), 10)
            self.aiokafka = producer
        except Exception as exc:  # noqa: BLE001 - a benchmark peer that cannot start is left out, with a note
            print(f"aiokafka left out: {type(exc).__name__}: {exc}", file=sys.stderr)

    async def close(self) -> None:
        await self.ms.stop(drain_timeout=0)
        await asyncio.to_thread(self.producer.flush, 10)
        self.stopping.set()
        await asyncio.to_thread(self.poller.join)
        if self.aiokafka is not None:
            await self.aiokafka.stop()

    def publishers(self) -> list[Publisher]:
        producer = self.producer

        def produce(
            loop: asyncio.AbstractEventLoop, topic: str, seq: int, *, headers: bool = False
        ) -> asyncio.Future[None]:
            future: asyncio.Future[None] = loop.create_future()

            def report(error: Any, _message: Any) -> None:
                def settle() -> None:
                    if future.done():
                        return
                    if error is not None:
                        future.set_exception(RuntimeError(str(error)))
                    else:
                        future.set_result(None)

                loop.call_soon_threadsafe(settle)

            extra = [(k, v.encode()) for k, v in ce_headers().items()] if headers else None
            producer.produce(topic, orjson.dumps(payload(seq)), headers=extra, on_delivery=report)
            return future

        async def raw_single(topic: str, first: int, count: int) -> None:
            loop = asyncio.get_running_loop()
            for seq in range(first, first + count):
                await produce(loop, "raw." + topic, seq)

        async def raw_batch(topic: str, first: int, count: int) -> None:
            loop = asyncio.get_running_loop()
            for part in chunks(first, count):
                await asyncio.gather(*(produce(loop, "raw." + topic, seq) for seq in part))

        async def raw_batch_headers(topic: str, first: int, count: int) -> None:
            loop = asyncio.get_running_loop()
            for part in chunks(first, count):
                await asyncio.gather(*(produce(loop, "raw." + topic, seq, headers=True) for seq in part))

        publishers = [
            mainspring_publisher(self.ms, None, None),
            Publisher("confluent-kafka Producer", raw_single, raw_batch, floor=True),
            Publisher("confluent-kafka + the 7 CloudEvents headers", None, raw_batch_headers),
        ]
        aio = self.aiokafka
        if aio is not None:

            async def aio_single(topic: str, first: int, count: int) -> None:
                for seq in range(first, first + count):
                    await aio.send_and_wait("aio." + topic, orjson.dumps(payload(seq)))

            async def aio_batch(topic: str, first: int, count: int) -> None:
                for part in chunks(first, count):
                    futures = [await aio.send("aio." + topic, orjson.dumps(payload(seq))) for seq in part]
                    await asyncio.gather(*futures)

            publishers.append(Publisher("aiokafka", aio_single, aio_batch))
        return publishers

    def consumers(self) -> dict[str, Consumer]:
        import confluent_kafka

        url, bootstrap = self.url, self.bootstrap
        # The mock cluster answers a fetch only after fetch.wait.max.ms (default 500) even when records
        # are waiting, where a real broker answers once fetch.min.bytes are there: every consumer here
        # gets 10 ms, or the latencies would be the mock's 500 ms.
        fast_fetch = {"fetch.wait.max.ms": 10}

        def transport() -> Any:
            return create_transport(url, prefix="ms", consumer_options=fast_fetch)

        @asynccontextmanager
        async def raw_run(topic: str, sink: Sink) -> AsyncIterator[Feed]:
            consumer = confluent_kafka.Consumer(
                {
                    "bootstrap.servers": bootstrap,
                    "group.id": "bench-raw-" + topic,
                    "auto.offset.reset": "earliest",
                    "enable.auto.commit": False,
                    **fast_fetch,
                }
            )
            consumer.subscribe(["raw." + topic])
            stopping = threading.Event()

            def poll() -> list[Any]:
                return [] if stopping.is_set() else consumer.consume(BATCH, 0.05)

            async def loop() -> None:
                while not stopping.is_set():
                    messages = await asyncio.to_thread(poll)
                    for message in messages:
                        if message.error() is None:
                            sink.handle(message.value())
                    if messages:
                        consumer.commit(asynchronous=True)

            task = asyncio.create_task(loop())
            pub = next(p for p in self.publishers() if p.floor)
            try:
                yield _feed(pub)
            finally:
                stopping.set()
                await asyncio.gather(task, return_exceptions=True)
                await asyncio.to_thread(consumer.close)

        return {
            "raw confluent-kafka Consumer, consume(100) in a thread": raw_run,
            "mainspring, concurrency 1": mainspring_consumer(transport, 1),
            "mainspring, concurrency 16": mainspring_consumer(transport, 16),
        }


# --- sections ---------------------------------------------------------------------------------------


@dataclass
class Sizes:
    """Message counts and time budgets (a variant stops at whichever comes first)."""

    single: int  # most messages per single-publish run
    batch: int  # most messages per batched run
    seconds: float  # time budget of one publish run
    e2e_seconds: float  # length of the end-to-end throughput window
    paced: int  # messages of the paced latency phase
    outbox: int  # rows pre-filled per relay run
    adds: int  # Outbox.add calls, one per transaction (five times as many in batches of 100)
    rounds: int


async def _timed(
    name: str, fn: Publish, topic: str, count: int, step: int, budget: float
) -> tuple[float, float]:
    """Publish up to ``count`` messages in calls of ``step`` for at most ``budget`` seconds.

    Return messages per second and this process's CPU microseconds per message.
    """
    done = 0
    with PROFILER.around(name):
        cpu = time.process_time()
        started = time.perf_counter()
        deadline = started + budget
        while done < count:
            await fn(topic, done, step)
            done += step
            if time.perf_counter() >= deadline:
                break
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu
    return done / elapsed, cpu / done * 1e6


async def publish_section(bench: Any, sizes: Sizes, backend: str) -> dict[str, dict[str, float]]:
    """Return the median msgs/s per implementation and mode ("single", "batch")."""
    publishers: list[Publisher] = bench.publishers()
    samples: dict[str, dict[str, list[float]]] = {
        p.name: {"single": [], "batch": [], "single_cpu": [], "batch_cpu": []} for p in publishers
    }
    jobs = [(p, mode) for p in publishers for mode in ("single", "batch") if getattr(p, mode) is not None]
    for p, mode in jobs:  # warm-up: connections, declarations, code paths
        topic = fresh_topic(_tag(p.name))
        if p.prepare:
            await p.prepare(topic)
        await getattr(p, mode)(topic, 0, 20)
        if p.cleanup:
            await p.cleanup(topic)
    for round_no in range(sizes.rounds):
        for index in _rotate(list(range(len(jobs))), round_no):
            p, mode = jobs[index]
            topic = fresh_topic(_tag(p.name))
            if p.prepare:
                await p.prepare(topic)
            count, step = (sizes.single, 10) if mode == "single" else (sizes.batch, BATCH)
            name = f"publish {backend} {p.name} {mode}"
            rate, cpu = await _timed(name, getattr(p, mode), topic, count, step, sizes.seconds)
            samples[p.name][mode].append(rate)
            samples[p.name][mode + "_cpu"].append(cpu)
            if p.cleanup:
                await p.cleanup(topic)
    return {name: {mode: statistics.median(s) for mode, s in by.items() if s} for name, by in samples.items()}


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def _wait(sink: Sink, target: int) -> None:
    sink.expect(target)
    await asyncio.wait_for(sink.done.wait(), E2E_TIMEOUT)


async def _e2e_once(name: str, consumer: Consumer, sizes: Sizes) -> tuple[float, float, list[float], int]:
    """Run one consumer: a throughput window with the publisher kept ahead, then a paced phase."""
    sink = Sink()
    topic = fresh_topic(_tag(name))
    async with consumer(topic, sink) as feed:
        # Warm-up: the consumer is running and has handled something before the clock starts.
        warm_first = 10**8
        await feed.batch(topic, warm_first, 20)
        await _wait(sink, 20)
        # Throughput: publish in batches of 100 while keeping at most WINDOW messages unhandled, for
        # e2e_seconds; the rate is what the consumer handled in that window.
        published = 0
        with PROFILER.around(f"e2e {name}"):
            cpu = time.process_time()
            started = time.perf_counter()
            base = len(sink.seen)
            deadline = started + sizes.e2e_seconds
            while time.perf_counter() < deadline:
                if published - (len(sink.seen) - base) >= WINDOW:
                    await asyncio.sleep(0.001)
                    continue
                await feed.batch(topic, published, BATCH)
                published += BATCH
            handled = len(sink.seen) - base
            rate = handled / (time.perf_counter() - started)
            cpu = (time.process_time() - cpu) / max(1, handled) * 1e6
        await _wait(sink, 20 + published)  # drain before measuring latency
        first = 2 * 10**8
        sink.paced_from = first
        for seq in range(first, first + sizes.paced):
            await feed.single(topic, seq, 1)
            await asyncio.sleep(PACE_INTERVAL)
        await _wait(sink, 20 + published + sizes.paced)
    return rate, cpu, sink.latencies, sink.duplicates


async def e2e_section(bench: Any, sizes: Sizes, backend: str, notes: list[str]) -> dict[str, E2EResult]:
    consumers: dict[str, Consumer] = bench.consumers()
    rates: dict[str, list[float]] = {name: [] for name in consumers}
    cpus: dict[str, list[float]] = {name: [] for name in consumers}
    latencies: dict[str, list[float]] = {name: [] for name in consumers}
    duplicates: dict[str, int] = dict.fromkeys(consumers, 0)
    rounds = max(1, min(sizes.rounds, 2))
    for round_no in range(rounds):
        for name in _rotate(list(consumers), round_no):
            try:
                rate, cpu, lat, dup = await _e2e_once(f"{backend} {name}", consumers[name], sizes)
            except TimeoutError:
                notes.append(f"{TITLES[backend]} end to end, {name}: not all messages handled in time")
                continue
            rates[name].append(rate)
            cpus[name].append(cpu)
            latencies[name].extend(lat)
            duplicates[name] += dup
    return {
        name: E2EResult(
            statistics.median(rates[name]),
            statistics.median(cpus[name]),
            _quantile(latencies[name], 0.5) * 1000,
            _quantile(latencies[name], 0.99) * 1000,
            duplicates[name],
        )
        for name in consumers
        if rates[name]
    }


# --- outbox -----------------------------------------------------------------------------------------

RawBatch = list[tuple[dict[str, str], bytes]]  # (headers, body) of records of one topic


class RedisRawFloor:
    """redis-py: a batch is one pipeline of ``XADD`` with the fields the transport writes."""

    def __init__(self, url: str) -> None:
        import redis.asyncio as aioredis

        self.raw = aioredis.Redis.from_url(url)
        self.keys: set[str] = set()

    async def prepare(self, topic: str) -> None:
        self.keys.add("raw:" + topic)

    async def publish(self, topic: str, batch: RawBatch) -> None:
        async with self.raw.pipeline(transaction=False) as pipe:
            for headers, body in batch:
                pipe.xadd("raw:" + topic, {"body": body, "headers": orjson.dumps(headers)})
            await pipe.execute()

    async def close(self) -> None:
        if self.keys:
            await self.raw.delete(*self.keys)
        await self.raw.aclose()


class RabbitRawFloor:
    """aio-pika with confirms (persistent, mandatory, headers): a batch's publishes awaited together."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.queues: list[Any] = []

    async def open(self) -> None:
        import aio_pika

        self.aio_pika = aio_pika
        self.conn = await aio_pika.connect(self.url)
        channel = await self.conn.channel(publisher_confirms=True)
        self.exchange = await channel.declare_exchange("raw", aio_pika.ExchangeType.TOPIC, durable=True)
        self.admin = await self.conn.channel(publisher_confirms=False)

    async def prepare(self, topic: str) -> None:
        queue = await self.admin.declare_queue(f"sink.raw.{topic}", durable=True)
        await queue.bind("raw", routing_key=topic)
        self.queues.append(queue)

    async def publish(self, topic: str, batch: RawBatch) -> None:
        persistent = self.aio_pika.DeliveryMode.PERSISTENT
        await asyncio.gather(
            *(
                self.exchange.publish(
                    self.aio_pika.Message(body, headers=headers, delivery_mode=persistent),
                    routing_key=topic,
                    mandatory=True,
                )
                for headers, body in batch
            )
        )

    async def close(self) -> None:
        for queue in self.queues:
            await queue.delete(if_unused=False, if_empty=False)
        await self.conn.close()


async def outbox_section(
    pg_url: str,
    targets: dict[str, Callable[[], Any]],
    sizes: Sizes,
    results: Results,
    relay_batch: int = 200,
) -> None:
    """Relay N pre-filled outbox rows to each target; also time ``Outbox.add``.

    Each target is ``make() -> (broker, on_topic hook or None, raw floor)``. Right before each relay
    round the raw floor publishes records of the same shape (the CloudEvents headers and body the
    relay sends), as many, in batches of ``relay_batch``: the ratio is taken per round, then the
    median.
    """
    import asyncpg
    from sqlalchemy import MetaData

    from mainspring.db import NAMING_CONVENTION, Database
    from mainspring.events import InboxEntry, Outbox, OutboxEntry, OutboxRelay

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    for model in (OutboxEntry, InboxEntry):
        model.__table__.to_metadata(metadata)
    from mainspring.testing._url import ServiceURL

    assert isinstance(pg_url, ServiceURL)
    async with Database(pg_url.sqlalchemy_url, pool_size=5) as db:
        await db.create_all(metadata)
        conn = await asyncpg.connect(str(pg_url))
        try:
            outbox = Outbox(db)
            # Outbox.add: one row per transaction, and 100 per transaction.
            adds = sizes.adds
            started = time.perf_counter()
            for seq in range(adds):
                async with db.transaction():
                    await outbox.add("b_adds", payload(seq))
            results.outbox["Outbox.add, 1 row per transaction"] = adds / (time.perf_counter() - started)
            # The floor of the above: the same row inserted with SQLAlchemy Core, one per transaction.
            table = OutboxEntry.__table__
            started = time.perf_counter()
            for seq in range(adds):
                record = build_record("b_adds", Message(data=payload(seq)))
                async with db.engine.begin() as core:
                    await core.execute(
                        table.insert().values(
                            message_id=record.headers["ce_id"],
                            topic="b_adds",
                            headers=dict(record.headers),
                            body=record.body,
                            created_at=dt.datetime.now(dt.UTC),
                            attempts=0,
                        )
                    )
            results.outbox["Core INSERT of the same row, 1 per transaction"] = adds / (
                time.perf_counter() - started
            )
            with PROFILER.around("outbox add 100 per transaction"):
                started = time.perf_counter()
                for part in chunks(0, adds * 5):
                    async with db.transaction():
                        for seq in part:
                            await outbox.add("b_adds", payload(seq))
            results.outbox["Outbox.add, 100 rows per transaction"] = (
                adds * 5 / (time.perf_counter() - started)
            )
            if hasattr(outbox, "add_many"):
                started = time.perf_counter()
                for part in chunks(0, adds * 5):
                    async with db.transaction():
                        await outbox.add_many("b_adds", [payload(seq) for seq in part])
                results.outbox["Outbox.add_many, 100 rows per call and transaction"] = (
                    adds * 5 / (time.perf_counter() - started)
                )
            await conn.execute("TRUNCATE outbox")
            for backend, make in targets.items():
                # concurrency 1: run_once until nothing is pending; 2: the relay's own loops.
                for concurrency in (1, 2):
                    samples: list[float] = []
                    floors: list[float] = []
                    ratios: list[float] = []
                    for _round in range(max(1, min(sizes.rounds, 2))):
                        broker, on_topic, floor = await make()
                        topic = fresh_topic("outbox")
                        try:
                            if on_topic is not None:
                                await on_topic(topic)
                            await floor.prepare(topic)
                            rows = []
                            created = dt.datetime.now(dt.UTC)
                            for seq in range(sizes.outbox):
                                record = build_record(topic, Message(data=payload(seq)))
                                rows.append(
                                    (
                                        record.headers["ce_id"],
                                        topic,
                                        orjson.dumps(dict(record.headers)).decode(),
                                        record.body,
                                        created,
                                    )
                                )
                            await conn.executemany(
                                "INSERT INTO outbox (message_id, topic, key, headers, body, created_at,"
                                " attempts) VALUES ($1, $2, NULL, $3::jsonb, $4, $5, 0)",
                                rows,
                            )
                            await conn.execute("ANALYZE outbox")
                            # The paired floor: the same records (fresh ids) through the raw client.
                            built = (
                                build_record(topic, Message(data=payload(n))) for n in range(sizes.outbox)
                            )
                            raw = [(dict(r.headers), r.body) for r in built]
                            with PROFILER.around(f"outbox floor {backend}"):
                                started = time.perf_counter()
                                for first in range(0, len(raw), relay_batch):
                                    await floor.publish(topic, raw[first : first + relay_batch])
                                floors.append(len(raw) / (time.perf_counter() - started))
                            relay = OutboxRelay(
                                db,
                                broker,
                                batch_size=relay_batch,
                                listen=False,
                                poll_interval=0.01,
                                concurrency=concurrency,
                            )
                            relayed = 0
                            with PROFILER.around(f"outbox relay {backend} x{concurrency}"):
                                started = time.perf_counter()
                                if concurrency == 1:
                                    while True:
                                        done = await relay.run_once()
                                        if not done:
                                            break
                                        relayed += done
                                else:
                                    await relay.start()
                                    try:
                                        for _ in range(60_000):  # at most 60 s
                                            if relay.stats.published >= sizes.outbox:
                                                break
                                            await asyncio.sleep(0.001)
                                    finally:
                                        await relay.stop()
                                    relayed = relay.stats.published
                                elapsed = time.perf_counter() - started
                            if relayed != sizes.outbox:
                                results.notes.append(
                                    f"outbox relay to {TITLES[backend]}: {relayed} of {sizes.outbox} "
                                    "rows relayed"
                                )
                            samples.append(relayed / elapsed)
                            ratios.append(samples[-1] / floors[-1])
                        finally:
                            await broker.stop(drain_timeout=0)
                            await floor.close()
                            await conn.execute("TRUNCATE outbox")
                    label = "" if relay_batch == 200 else f", batch_size={relay_batch}"
                    label += "" if concurrency == 1 else f", concurrency={concurrency}"
                    name = f"OutboxRelay{label} to {TITLES[backend]}"
                    results.outbox[name] = statistics.median(samples)
                    if ratios:
                        results.outbox_floors[name] = (statistics.median(floors), statistics.median(ratios))
        finally:
            await conn.close()
        await db.drop_all(metadata)


# --- report -----------------------------------------------------------------------------------------


def _rate(value: float | None) -> str:
    return "" if value is None else f"{value:,.0f}"


def _ratio(value: float | None, floor: float | None) -> str:
    if value is None or not floor:
        return ""
    return f"{value / floor:.2f}x"


def _cpu(value: float | None) -> str:
    return "" if value is None else f"{value:,.0f}"


def report(results: Results) -> str:
    """Render the results as markdown tables."""
    lines: list[str] = []
    if results.publish:
        lines += [
            "| publish | implementation | one at a time, msgs/s | vs floor | CPU µs/msg "
            "| batches of 100, msgs/s | vs floor | CPU µs/msg |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for backend, by_impl in results.publish.items():
            floor_name = results.floors[backend]["floor"]
            floor = by_impl.get(floor_name, {})
            for impl, modes in by_impl.items():
                label = f"{impl} (floor)" if impl == floor_name else impl
                single, batch = modes.get("single"), modes.get("batch")
                lines.append(
                    f"| {TITLES[backend]} | {label} | {_rate(single)} | "
                    f"{_ratio(single, floor.get('single'))} | {_cpu(modes.get('single_cpu'))} | "
                    f"{_rate(batch)} | {_ratio(batch, floor.get('batch'))} | {_cpu(modes.get('batch_cpu'))} |"
                )
    if results.e2e:
        lines += [
            "",
            "| end to end | consumer | msgs/s | vs raw | CPU µs/msg | p50 ms | p99 ms |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for backend, by_name in results.e2e.items():
            raw = next((r.rate for n, r in by_name.items() if n.startswith("raw")), None)
            for name, r in by_name.items():
                dup = f" ({r.duplicates} duplicates)" if r.duplicates else ""
                lines.append(
                    f"| {TITLES[backend]} | {name}{dup} | {r.rate:,.0f} | {_ratio(r.rate, raw)} | "
                    f"{r.cpu:,.0f} | {r.p50:.1f} | {r.p99:.1f} |"
                )
    if results.outbox:
        lines += [
            "",
            "| outbox | rows/s | raw batched publish floor, same records and batch, msgs/s "
            "| vs floor (median of per-round ratios) |",
            "|---|---:|---:|---:|",
        ]
        for name, rate in results.outbox.items():
            floor_value, ratio = results.outbox_floors.get(name, (None, None))
            vs = "" if ratio is None else f"{ratio:.2f}x"
            lines.append(f"| {name} | {rate:,.0f} | {_rate(floor_value)} | {vs} |")
    if results.notes:
        lines += ["", *(f"Note: {note}" for note in results.notes)]
    return "\n".join(lines)


# --- main -------------------------------------------------------------------------------------------


def _progress(step: str, started: float) -> None:
    print(f"{step} done at {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)


def _sizes(args: argparse.Namespace) -> Sizes:
    if args.quick:
        base = Sizes(
            single=2_000, batch=20_000, seconds=0.2, e2e_seconds=0.5, paced=30, outbox=500, adds=30,
            rounds=1,
        )  # fmt: skip
    else:
        base = Sizes(
            single=2_000, batch=20_000, seconds=0.7, e2e_seconds=2.0, paced=150, outbox=3_000, adds=200,
            rounds=3,
        )  # fmt: skip
    s = args.scale
    return Sizes(
        single=max(50, round(base.single * s)),
        batch=max(BATCH, round(base.batch * s)),
        seconds=base.seconds * s,
        e2e_seconds=base.e2e_seconds * s,
        paced=max(20, round(base.paced * s)),
        outbox=max(200, round(base.outbox * s)),
        adds=max(20, round(base.adds * s)),
        rounds=args.rounds or base.rounds,
    )


def _service(name: str, stack: ExitStack, state: SessionState, notes: list[str]) -> Any:
    """Return an isolated URL of service ``name`` (cleaned up with ``stack``), or None with a note."""
    url = configured_url(name)
    problem = probe(name, url)
    if problem is not None:
        notes.append(f"{name} left out: {problem}")
        return None
    if name == "redis":
        return stack.enter_context(isolated_redis(url))
    if name == "rabbitmq":
        return stack.enter_context(isolated_rabbitmq(url, state))
    if name == "nats":
        return stack.enter_context(isolated_nats(url))
    return stack.enter_context(isolated_postgres(url))


async def run(args: argparse.Namespace, urls: dict[str, Any], sizes: Sizes, started: float) -> Results:
    results = Results()
    benches: dict[str, Callable[[], Any]] = {}
    if "redis" in urls:
        benches["redis"] = lambda: RedisBench(str(urls["redis"]))
    if "rabbitmq" in urls:
        benches["rabbitmq"] = lambda: RabbitBench(str(urls["rabbitmq"]))
    if "nats" in urls:
        benches["nats"] = lambda: NatsBench(str(urls["nats"]), urls["nats"].namespace)
    if "kafka" in urls:
        benches["kafka"] = lambda: KafkaBench(urls["kafka"])
    for backend in args.backends:
        if backend not in benches:
            continue
        bench = benches[backend]()
        try:
            await bench.open()
        except Exception as exc:  # noqa: BLE001 - one broken backend must not stop the others
            results.notes.append(f"{TITLES[backend]} left out: {type(exc).__name__}: {exc}")
            continue
        try:
            if "publish" in args.sections:
                publishers = bench.publishers()
                results.floors[backend] = {"floor": next(p.name for p in publishers if p.floor)}
                results.publish[backend] = await publish_section(bench, sizes, backend)
                _progress(f"{backend} publish", started)
            if "e2e" in args.sections:
                results.e2e[backend] = await e2e_section(bench, sizes, backend, results.notes)
                _progress(f"{backend} end to end", started)
        except Exception as exc:  # noqa: BLE001 - report what failed, keep the other backends
            results.notes.append(f"{TITLES[backend]} failed: {type(exc).__name__}: {exc}")
            import traceback

            traceback.print_exc()
        finally:
            await bench.close()
    if "outbox" in args.sections and "postgres" in urls:
        targets: dict[str, Callable[[], Any]] = {}
        if "redis" in urls and "redis" in args.backends:

            async def redis_target() -> tuple[Broker, Hook | None, RedisRawFloor]:
                broker = Broker(create_transport(str(urls["redis"])))
                await broker.start()
                return broker, None, RedisRawFloor(str(urls["redis"]))

            targets["redis"] = redis_target
        if "rabbitmq" in urls and "rabbitmq" in args.backends:

            async def rabbit_target() -> tuple[Broker, Hook | None, RabbitRawFloor]:
                broker = Broker(create_transport(str(urls["rabbitmq"])))
                await broker.start()
                floor = RabbitRawFloor(str(urls["rabbitmq"]))
                await floor.open()

                async def bind(topic: str) -> None:
                    # A group queue must exist, or RabbitMQ returns the records as unroutable.
                    sub = await broker.transport.subscribe(topic, "sink", prefetch=1)
                    await sub.close()

                return broker, bind, floor

            targets["rabbitmq"] = rabbit_target
        try:
            await outbox_section(urls["postgres"], targets, sizes, results, args.relay_batch)
        except Exception as exc:  # noqa: BLE001 - report it with the rest
            results.notes.append(f"outbox section failed: {type(exc).__name__}: {exc}")
            import traceback

            traceback.print_exc()
        _progress("outbox", started)
    return results


def main() -> int:
    """Run the benchmark and print the tables."""
    global PROFILER
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backends", default=",".join(BACKENDS), help="comma-separated: " + ",".join(BACKENDS)
    )
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help="comma-separated: " + ",".join(SECTIONS)
    )
    parser.add_argument("--rounds", type=int, default=0, help="rounds (default 3, --quick 1)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the message counts")
    parser.add_argument("--quick", action="store_true", help="a smoke run of about 30 seconds")
    parser.add_argument("--relay-batch", type=int, default=200, help="OutboxRelay batch_size (its default)")
    parser.add_argument("--profile", default=None, help="cProfile the variants whose name matches this regex")
    args = parser.parse_args()
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(args.backends) - set(BACKENDS)) + sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown backend or section: {', '.join(unknown)}")
    PROFILER = Profiler(args.profile)
    sizes = _sizes(args)
    started = time.perf_counter()
    notes: list[str] = []
    state = SessionState()
    with ExitStack() as stack:
        urls: dict[str, Any] = {}
        for name in ("redis", "rabbitmq", "nats"):
            if name in args.backends:
                url = _service(name, stack, state, notes)
                if url is not None:
                    urls[name] = url
        if "outbox" in args.sections:
            url = _service("postgres", stack, state, notes)
            if url is not None:
                urls["postgres"] = url
        if "kafka" in args.backends:
            try:
                from mainspring.testing._kafka import mock_kafka_cluster

                cluster = stack.enter_context(mock_kafka_cluster(1))
                urls["kafka"] = cluster.bootstrap_servers
            except Exception as exc:  # noqa: BLE001 - no mock cluster: leave Kafka out, with a note
                notes.append(f"kafka left out: {type(exc).__name__}: {exc}")
        results = asyncio.run(run(args, urls, sizes, started))
    results.notes[:0] = notes
    peers = ", ".join(
        f"{name} {version(name)}"
        for name in ("redis", "aio-pika", "nats-py", "confluent-kafka", "aiokafka", "faststream", "asyncpg")
    )
    print(
        f"Python {platform.python_version()}, {peers}; {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f}; {sizes.rounds} rounds, medians; publish runs of up to "
        f"{sizes.batch:,} messages or {sizes.seconds:g} s, end to end {sizes.e2e_seconds:g} s + "
        f"{sizes.paced:,} paced, outbox {sizes.outbox:,} rows; {time.perf_counter() - started:.0f} s\n"
    )
    print(report(results))
    profile = PROFILER.report()
    if profile:
        print(profile, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
