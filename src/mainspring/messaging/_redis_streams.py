"""How :class:`~mainspring.messaging.redis.RedisTransport` lays records out in Redis, and its Lua scripts.

Keys (``prefix`` defaults to ``ms:``; the topic sits in a ``{hash tag}`` so that every key of one topic
would live in one Redis Cluster slot, where the scripts below may touch several of them -- the layout
is ready for Cluster, which the transport does not accept yet):

* ``ms:{orders}`` -- the topic's stream; every consumer group reads it.
* ``ms:{orders}:delayed`` -- sorted set of records published with a delay (score: due time in
  microseconds of the Redis server clock); moved into the stream when due.
* ``ms:{orders}:retry:<group>`` -- stream of one group's retried and released records (only that group
  reads it; an entry is deleted once acked).
* ``ms:{orders}:retry:<group>:delayed`` -- sorted set of that group's retries waiting for their delay.

A stream entry holds the fields ``body``, ``key`` (only when the record has one) and ``headers`` (the
headers as one JSON object; entries written by earlier versions hold one ``h:<name>`` field per header,
which is still read). One field instead of one per header keeps ``XADD`` and ``XREADGROUP`` cheap.
A sorted-set member holds the same fields, preceded by a unique token, as netstring-like
``<length>:<bytes>`` items, which the move script decodes.
"""

from __future__ import annotations

import itertools
import os
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass

import orjson

from mainspring.messaging._transport import Record

__all__ = [
    "ADD_DELAYED_SCRIPT",
    "DROP_CONSUMER_SCRIPT",
    "MOVE_DUE_SCRIPT",
    "TopicKeys",
    "delayed_member",
    "entry_fields",
    "entry_record",
]

_BODY, _KEY, _HEADERS, _LEGACY_HEADER = b"body", b"key", b"headers", b"h:"

# KEYS[1]: sorted set. ARGV[1]: delay in microseconds; ARGV[2..]: members. The due time is taken from
# the server clock, the same clock MOVE_DUE_SCRIPT compares with, so client clock skew cannot make a
# record come early.
ADD_DELAYED_SCRIPT = """
local t = redis.call('TIME')
local due = string.format('%.0f', tonumber(t[1]) * 1000000 + tonumber(t[2]) + tonumber(ARGV[1]))
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], due, ARGV[i]) end
return #ARGV - 1
"""

# KEYS: delayed set, topic stream, group retry set, group retry stream. ARGV[1]: most members moved per
# set; ARGV[2]: MAXLEN of the topic stream (0: none). XADD and ZREM of one member happen in the same
# script, so a due record is never lost nor moved twice. Returns, per set, the microseconds until its
# next member is due (-1: empty).
MOVE_DUE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function decode(member)
  local fields, pos = {}, 1
  while pos <= #member do
    local colon = string.find(member, ':', pos, true)
    local size = tonumber(string.sub(member, pos, colon - 1))
    fields[#fields + 1] = string.sub(member, colon + 1, colon + size)
    pos = colon + size + 1
  end
  table.remove(fields, 1)
  return fields
end
local function move(set, stream, maxlen)
  local due = redis.call('ZRANGEBYSCORE', set, '-inf', string.format('%.0f', now),
                         'LIMIT', 0, tonumber(ARGV[1]))
  for _, member in ipairs(due) do
    if maxlen > 0 then
      redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', unpack(decode(member)))
    else
      redis.call('XADD', stream, '*', unpack(decode(member)))
    end
    redis.call('ZREM', set, member)
  end
  local first = redis.call('ZRANGE', set, 0, 0, 'WITHSCORES')
  if first[2] == nil then return -1 end
  return math.max(0, tonumber(first[2]) - now)
end
return {move(KEYS[1], KEYS[2], tonumber(ARGV[2])), move(KEYS[3], KEYS[4], 0)}
"""

# KEYS[1]: stream. ARGV: group, consumer. Deletes the consumer only when it has no pending entry
# (XGROUP DELCONSUMER would drop them from the group, and they would never be redelivered).
DROP_CONSUMER_SCRIPT = """
local pending = redis.pcall('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if type(pending) ~= 'table' or pending.err ~= nil or #pending > 0 then return -1 end
return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
"""


@dataclass(frozen=True, slots=True)
class TopicKeys:
    """The Redis keys of one topic (see the module docstring)."""

    stream: str
    delayed: str

    @classmethod
    def of(cls, prefix: str, topic: str) -> TopicKeys:
        """Return the keys of ``topic`` under ``prefix``."""
        stream = f"{prefix}{{{topic}}}"
        return cls(stream=stream, delayed=f"{stream}:delayed")

    def retry(self, group: str) -> str:
        """Return the retry stream of ``group``."""
        return f"{self.stream}:retry:{group}"

    def retry_delayed(self, group: str) -> str:
        """Return the sorted set of ``group``'s retries waiting for their delay."""
        return f"{self.retry(group)}:delayed"


def pack_xadd(key: bytes, fields: Mapping[bytes, bytes], trim: bytes | None) -> bytes:
    """Return ``XADD key [MAXLEN ~ trim] * field value ...`` in the Redis protocol (RESP)."""
    head = (
        b"*%d\r\n$4\r\nXADD\r\n$%d\r\n%s\r\n" % (3 + 2 * len(fields), len(key), key)
        if trim is None
        else b"*%d\r\n$4\r\nXADD\r\n$%d\r\n%s\r\n$6\r\nMAXLEN\r\n$1\r\n~\r\n$%d\r\n%s\r\n"
        % (6 + 2 * len(fields), len(key), key, len(trim), trim)
    )
    parts = [head, b"$1\r\n*\r\n"]
    for name, value in fields.items():
        parts.append(b"$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(name), name, len(value), value))
    return b"".join(parts)


def entry_fields(record: Record, headers: Mapping[str, str] | None = None) -> dict[bytes, bytes]:
    """Return the stream entry fields of ``record`` (with ``headers`` instead of its own, if given)."""
    body = record.body
    fields = {_BODY: body if type(body) is bytes else bytes(body)}
    if record.key is not None:
        fields[_KEY] = record.key.encode()
    chosen = record.headers if headers is None else headers
    if chosen:
        fields[_HEADERS] = orjson.dumps(chosen if type(chosen) is dict else dict(chosen))
    return fields


def _decode_headers(raw: bytes) -> dict[str, str]:
    try:
        decoded = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}  # not written by us: like any field of someone else's, ignored
    if not isinstance(decoded, dict):
        return {}
    return {name: value if isinstance(value, str) else str(value) for name, value in decoded.items()}


def entry_record(topic: str, fields: Mapping[bytes, bytes]) -> Record:
    """Return the record a stream entry holds (fields other than ours are ignored)."""
    raw = fields.get(_HEADERS)
    headers = _decode_headers(raw) if raw is not None else {}
    if len(fields) > 3 or raw is None:  # an entry written with one ``h:<name>`` field per header
        for name, value in fields.items():
            if name.startswith(_LEGACY_HEADER):
                headers.setdefault(
                    name[len(_LEGACY_HEADER) :].decode(errors="replace"), value.decode(errors="replace")
                )
    key = fields.get(_KEY)
    return Record(
        topic=topic,
        body=fields.get(_BODY, b""),
        headers=headers,
        key=None if key is None else key.decode(errors="replace"),
    )


# Members with the same due time are ordered by their bytes: a fixed-width, increasing token keeps the
# records of one delayed batch in their publish order (and makes equal records distinct members).
_SEQUENCE = itertools.count()
_PROCESS = f"{os.getpid() % 10**7:07d}{secrets.token_hex(4)}"


def delayed_member(fields: Mapping[bytes, bytes]) -> bytes:
    """Return the sorted-set member holding ``fields`` behind a unique, increasing token."""
    token = f"{time.time_ns():020d}{next(_SEQUENCE) % 10**10:010d}{_PROCESS}".encode()
    items = [token]
    for name, value in fields.items():
        items += (name, value)
    return b"".join(b"%d:%s" % (len(item), item) for item in items)
