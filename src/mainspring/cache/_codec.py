"""Entries and their byte form: codecs, compression and the frame every byte-backed cache stores.

A stored value is either a *plain integer* (ASCII decimal, what Redis ``INCRBY`` reads and writes) or a
*frame*: a header byte with the high bit set that records the codec and the compression, a flags byte,
optional metadata (freshness, ttl, stale window, loader time), optional tag versions, then the payload.
Because the header says how the payload was made, any reader decodes any entry, whatever codec the
writer was configured with, as long as the reader knows that codec.
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import importlib.util
import math
import pickle
import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import orjson

from mainspring._compat import require
from mainspring.errors import ConfigError, ConfigProblem, InternalError

__all__ = [
    "CODEC_IDS",
    "COMPRESSION_IDS",
    "Codec",
    "CodecError",
    "CompressionName",
    "Entry",
    "JsonCodec",
    "MsgpackCodec",
    "PickleCodec",
    "Serializer",
    "is_plain_int",
]

CompressionName = Literal["none", "gzip", "lz4", "zstd"]

#: Built-in codec ids (header bits 3-6); 4-7 are reserved, 8-15 are for custom codecs.
CODEC_IDS: dict[str, int] = {"bytes": 0, "json": 1, "msgpack": 2, "pickle": 3}
#: Compression ids (header bits 0-2); 4-7 are reserved.
COMPRESSION_IDS: dict[str, int] = {"none": 0, "gzip": 1, "lz4": 2, "zstd": 3}

_FRAME_VERSION = 1
_FLAG_NONE = 0x01
_FLAG_META = 0x02
_FLAG_TAGS = 0x04
_META = struct.Struct("<dddd")
_TAG_LEN = struct.Struct("<H")
_TAG_VERSION = struct.Struct("<q")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_MAC_SIZE = 32


class CodecError(InternalError):
    """A value could not be encoded, or stored bytes could not be decoded (500).

    Raised to the caller only when *encoding* fails (the value does not suit the codec); a stored entry
    that cannot be decoded is a cache miss, counted and logged by the cache, never this exception.
    """

    code = "cache_codec"


@dataclass(slots=True)
class Entry:
    """One cached value with what the cache needs to know about it.

    ``fresh_until`` is the cache clock's time the value stops being fresh (``inf``: never); ``ttl`` is
    the ttl it was written with (refresh-ahead needs it); ``stale_ttl`` how long after ``fresh_until``
    it may still be served when the loader fails; ``delta`` how many seconds the loader took (XFetch);
    ``tags`` the ``(tag, version)`` pairs current when it was written.
    """

    value: Any
    fresh_until: float = math.inf
    ttl: float | None = None
    stale_ttl: float = 0.0
    delta: float = 0.0
    tags: tuple[tuple[str, int], ...] = ()


def is_plain_int(entry: Entry) -> bool:
    """Say whether ``entry`` is a bare counter: stored as ASCII digits, usable by ``incr``."""
    value = entry.value
    return (
        type(value) is int
        and not entry.tags
        and entry.stale_ttl == 0.0
        and entry.delta == 0.0
        and _INT64_MIN <= value <= _INT64_MAX
    )


# --- codecs -----------------------------------------------------------------------------------------


@runtime_checkable
class Codec(Protocol):
    """Turns values into bytes and back; ``codec_id`` (8-15 for custom codecs) goes in the header byte."""

    @property
    def name(self) -> str:
        """A short name for messages (``"json"``)."""
        ...

    @property
    def codec_id(self) -> int:
        """The id recorded in the header byte: 8-15 for a custom codec."""
        ...

    def encode(self, value: Any) -> bytes:
        """Return the bytes of ``value``; raise ``TypeError``/``ValueError`` if it cannot be encoded."""
        ...

    def decode(self, data: bytes) -> Any:
        """Return the value ``data`` encodes; raise any exception if it is not valid."""
        ...


class JsonCodec:
    """JSON through orjson (the default): fast, readable, language-neutral; returns JSON types."""

    name: ClassVar[str] = "json"
    codec_id: ClassVar[int] = CODEC_IDS["json"]

    def encode(self, value: Any) -> bytes:
        """Encode with orjson (dicts need str keys; ints up to 64 bits; dataclasses become dicts)."""
        return orjson.dumps(value)

    def decode(self, data: bytes) -> Any:
        """Decode with orjson."""
        return orjson.loads(data)


class MsgpackCodec:
    """MessagePack (extra ``cache``): compact, keeps bytes apart from str; tuples come back as lists."""

    name: ClassVar[str] = "msgpack"
    codec_id: ClassVar[int] = CODEC_IDS["msgpack"]

    def __init__(self) -> None:
        """Import msgpack, or raise ``MissingDependencyError`` naming the extra."""
        self._msgpack = require("msgpack", extra="cache", feature="the msgpack cache codec")

    def encode(self, value: Any) -> bytes:
        """Pack ``value`` with binary and str types kept apart."""
        packed: bytes = self._msgpack.packb(value, use_bin_type=True)
        return packed

    def decode(self, data: bytes) -> Any:
        """Unpack ``data``; map keys may be of any type."""
        return self._msgpack.unpackb(data, raw=False, strict_map_key=False)


class PickleCodec:
    """Pickle, opt-in only, HMAC-SHA256 signed: unsigned or badly signed data is refused, never loaded.

    Unpickling runs code chosen by whoever wrote the bytes, so a reader only unpickles what a holder of
    the key signed. ``keys``: the first signs, every one verifies (rotate by prepending a new key).
    """

    name: ClassVar[str] = "pickle"
    codec_id: ClassVar[int] = CODEC_IDS["pickle"]
    #: Shortest accepted key, in bytes.
    MIN_KEY_BYTES: ClassVar[int] = 32

    def __init__(self, keys: str | bytes | Sequence[str | bytes]) -> None:
        """Check the keys; ``ConfigError`` if there is none or one is shorter than 32 bytes."""
        items = [keys] if isinstance(keys, str | bytes) else list(keys)
        encoded = [k.encode() if isinstance(k, str) else bytes(k) for k in items]
        if not encoded or any(len(k) < self.MIN_KEY_BYTES for k in encoded):
            raise ConfigError(
                "the pickle cache codec needs a signing key of at least 32 bytes",
                problems=[
                    ConfigProblem(
                        "cache.pickle_key",
                        "set a random key of at least 32 bytes (e.g. `python -c 'import secrets; "
                        "print(secrets.token_urlsafe(32))'`), the same on every instance",
                    )
                ],
            )
        self._keys = encoded

    def encode(self, value: Any) -> bytes:
        """Pickle ``value`` (protocol 5) and prefix the HMAC-SHA256 of the pickle."""
        data = pickle.dumps(value, protocol=5)
        return hmac.new(self._keys[0], data, hashlib.sha256).digest() + data

    def decode(self, data: bytes) -> Any:
        """Verify the signature with every key, then unpickle; ``ValueError`` if none matches."""
        if len(data) <= _MAC_SIZE:
            raise ValueError("pickle payload is too short to carry a signature")
        mac, body = data[:_MAC_SIZE], data[_MAC_SIZE:]
        for key in self._keys:
            if hmac.compare_digest(mac, hmac.new(key, body, hashlib.sha256).digest()):
                return pickle.loads(body)
        raise ValueError("pickle payload signature does not match any configured key; refused")


class _BytesCodec:
    """Raw ``bytes`` values, whatever the configured codec: stored as they are."""

    name: ClassVar[str] = "bytes"
    codec_id: ClassVar[int] = CODEC_IDS["bytes"]

    def encode(self, value: Any) -> bytes:
        return bytes(value)

    def decode(self, data: bytes) -> Any:
        return bytes(data)


# --- compression ------------------------------------------------------------------------------------


class _Compression:
    name: ClassVar[str] = "none"

    def compress(self, data: bytes) -> bytes:
        return data

    def decompress(self, data: bytes, limit: int) -> bytes:
        return data


class _Gzip(_Compression):
    name: ClassVar[str] = "gzip"

    def compress(self, data: bytes) -> bytes:
        return gzip.compress(data, compresslevel=6, mtime=0)

    def decompress(self, data: bytes, limit: int) -> bytes:
        inflater = zlib.decompressobj(wbits=31)
        out = inflater.decompress(data, limit + 1)
        if len(out) > limit:
            raise ValueError(f"gzip payload inflates past {limit} bytes")
        if not inflater.eof:
            raise ValueError("gzip payload is truncated")
        return out


class _Lz4(_Compression):
    name: ClassVar[str] = "lz4"

    def __init__(self) -> None:
        self._frame = require("lz4.frame", extra="cache", feature="lz4 cache compression")

    def compress(self, data: bytes) -> bytes:
        compressed: bytes = self._frame.compress(data, store_size=True)
        return compressed

    def decompress(self, data: bytes, limit: int) -> bytes:
        inflater = self._frame.LZ4FrameDecompressor()
        out: bytes = inflater.decompress(data, max_length=limit + 1)
        if len(out) > limit:
            raise ValueError(f"lz4 payload inflates past {limit} bytes")
        if not inflater.eof:
            raise ValueError("lz4 payload is truncated")
        return out


class _Zstd(_Compression):
    name: ClassVar[str] = "zstd"

    def __init__(self) -> None:
        self._zstd: ModuleType = require("zstandard", extra="cache", feature="zstd cache compression")
        self._compressor = self._zstd.ZstdCompressor(level=3, write_content_size=True)

    def compress(self, data: bytes) -> bytes:
        compressed: bytes = self._compressor.compress(data)
        return compressed

    def decompress(self, data: bytes, limit: int) -> bytes:
        size = self._zstd.frame_content_size(data)
        if size > limit:
            raise ValueError(f"zstd payload declares {size} bytes, more than {limit}")
        out: bytes = self._zstd.ZstdDecompressor().decompress(data, max_output_size=limit)
        return out


_COMPRESSIONS: dict[str, type[_Compression]] = {
    "none": _Compression,
    "gzip": _Gzip,
    "lz4": _Lz4,
    "zstd": _Zstd,
}


# --- the frame --------------------------------------------------------------------------------------


def _read_tags(data: bytes, pos: int) -> tuple[tuple[tuple[str, int], ...], int]:
    """Return the tag versions of a frame starting at ``pos``, and the position after them."""
    count = data[pos]
    pos += 1
    tags = []
    for _ in range(count):
        (length,) = _TAG_LEN.unpack_from(data, pos)
        pos += _TAG_LEN.size
        tag = data[pos : pos + length].decode()
        pos += length
        (version,) = _TAG_VERSION.unpack_from(data, pos)
        pos += _TAG_VERSION.size
        tags.append((tag, version))
    return tuple(tags), pos


class Serializer:
    """Encodes :class:`Entry` objects to bytes and back, with one writing codec and any reading codec.

    ``codec`` writes (``"json"``, ``"msgpack"``, ``"pickle"`` or a :class:`Codec`); ``codecs`` adds
    custom codecs readers should understand; ``compression`` applies to payloads of at least
    ``compress_min_size`` bytes when it makes them smaller; ``pickle_key`` (one key or several, first
    signs) enables the pickle codec for reading and writing. Optional codecs and compressions are
    imported here, so a missing extra fails when the cache is built, not at the first write.
    """

    #: Largest payload a frame may decode to; a bigger (or lying) one is undecodable, not a memory spike.
    DEFAULT_MAX_DECODED_SIZE: ClassVar[int] = 64 * 1024 * 1024

    def __init__(
        self,
        codec: str | Codec = "json",
        *,
        codecs: Iterable[Codec] = (),
        compression: CompressionName = "none",
        compress_min_size: int = 1024,
        pickle_key: str | bytes | Sequence[str | bytes] | None = None,
        max_decoded_size: int = DEFAULT_MAX_DECODED_SIZE,
    ) -> None:
        """Build the codec table; ``ConfigError`` for an unknown name or a clashing custom codec id."""
        table: dict[int, Codec] = {0: _BytesCodec(), 1: JsonCodec()}
        problems: list[ConfigProblem] = []
        if pickle_key is not None:
            table[3] = PickleCodec(pickle_key)
        for custom in (*codecs, *([codec] if not isinstance(codec, str) else [])):
            if not 8 <= custom.codec_id <= 15:
                problems.append(
                    ConfigProblem("cache.codec", "custom codecs take a codec_id from 8 to 15", repr(custom))
                )
            elif table.get(custom.codec_id, custom) is not custom:
                problems.append(
                    ConfigProblem("cache.codec", f"two codecs share codec_id {custom.codec_id}", custom.name)
                )
            else:
                table[custom.codec_id] = custom
        if isinstance(codec, str):
            if codec == "msgpack":
                table[2] = MsgpackCodec()
            elif codec == "pickle" and pickle_key is None:
                problems.append(
                    ConfigProblem("cache.pickle_key", "the pickle codec needs pickle_key (32+ bytes)")
                )
            elif codec not in ("json", "pickle"):
                problems.append(ConfigProblem("cache.codec", "use json, msgpack or pickle", repr(codec)))
        if compression not in _COMPRESSIONS:
            problems.append(
                ConfigProblem("cache.compression", "use none, gzip, lz4 or zstd", repr(compression))
            )
        if problems:
            raise ConfigError("invalid cache codec configuration", problems=problems)
        if 2 not in table and importlib.util.find_spec("msgpack") is not None:
            # Read msgpack entries written by other instances whenever the extra is installed; without
            # it such entries read as misses.
            table[2] = MsgpackCodec()
        self._codecs = table
        self._writer: Codec = table[CODEC_IDS[codec]] if isinstance(codec, str) else codec
        self._compression = _COMPRESSIONS[compression]()
        self._compression_id = COMPRESSION_IDS[compression]
        self._readers: dict[int, _Compression] = {0: _Compression(), 1: _Gzip()}
        self._readers[self._compression_id] = self._compression
        self._min_size = compress_min_size
        self._max_decoded = max_decoded_size

    @property
    def codec_name(self) -> str:
        """The name of the writing codec."""
        return self._writer.name

    @property
    def compression_name(self) -> str:
        """The name of the compression used for large payloads."""
        return self._compression.name

    def encode(self, entry: Entry) -> bytes:
        """Return the stored form of ``entry``; :class:`CodecError` if its value does not suit the codec."""
        if is_plain_int(entry):
            return str(entry.value).encode()
        value = entry.value
        flags = _FRAME_VERSION << 4
        codec_id = 0
        compression_id = 0
        payload = b""
        if value is None:
            flags |= _FLAG_NONE
        else:
            codec = self._codecs[0] if type(value) is bytes else self._writer
            codec_id = codec.codec_id
            try:
                payload = codec.encode(value)
            except (TypeError, ValueError, OverflowError, pickle.PicklingError) as exc:
                raise CodecError(
                    f"cannot encode a {type(value).__name__} with the {codec.name} cache codec ({exc}); "
                    "store JSON-able values, or configure codec='msgpack'/'pickle' or a custom codec",
                    details={"codec": codec.name, "type": type(value).__name__},
                ) from exc
            if self._compression_id and len(payload) >= self._min_size:
                compressed = self._compression.compress(payload)
                if len(compressed) < len(payload):
                    payload, compression_id = compressed, self._compression_id
        parts = [bytes((0x80 | codec_id << 3 | compression_id, 0))]
        if entry.fresh_until != math.inf or entry.ttl is not None or entry.stale_ttl or entry.delta:
            flags |= _FLAG_META
            parts.append(_META.pack(entry.fresh_until, entry.ttl or 0.0, entry.stale_ttl, entry.delta))
        if entry.tags:
            flags |= _FLAG_TAGS
            parts.append(bytes((len(entry.tags),)))
            for tag, version in entry.tags:
                raw = tag.encode()
                parts.append(_TAG_LEN.pack(len(raw)) + raw + _TAG_VERSION.pack(version))
        parts[0] = bytes((parts[0][0], flags))
        parts.append(payload)
        return b"".join(parts)

    def decode(self, data: bytes) -> Entry:
        """Return the entry ``data`` holds; :class:`CodecError` saying why it cannot be read."""
        # One frame, no helper calls on the common path: this runs on every cache hit.
        try:
            if not data:
                raise CodecError("undecodable cache entry: empty")
            header = data[0]
            if header < 0x80:
                return Entry(int(data))
            if len(data) < 2 or data[1] >> 4 != _FRAME_VERSION:
                raise CodecError("undecodable cache entry: unknown frame version")
            flags = data[1]
            fresh_until, ttl, stale_ttl, delta = math.inf, 0.0, 0.0, 0.0
            tags: tuple[tuple[str, int], ...] = ()
            pos = 2
            if flags & _FLAG_META:
                fresh_until, ttl, stale_ttl, delta = _META.unpack_from(data, pos)
                pos += _META.size
            if flags & _FLAG_TAGS:
                tags, pos = _read_tags(data, pos)
            if flags & _FLAG_NONE:
                return Entry(None, fresh_until, ttl or None, stale_ttl, delta, tags)
            codec = self._codecs.get((header >> 3) & 0x0F)
            if codec is None:
                raise CodecError(
                    f"undecodable cache entry: codec id {(header >> 3) & 0x0F} is not configured here"
                )
            payload = data[pos:]
            compression_id = header & 0x07
            if compression_id:
                reader = self._readers.get(compression_id)
                if reader is None:
                    name = next(
                        (n for n, i in COMPRESSION_IDS.items() if i == compression_id), str(compression_id)
                    )
                    reader = self._compression_reader(name)
                payload = reader.decompress(payload, self._max_decoded)
            return Entry(codec.decode(payload), fresh_until, ttl or None, stale_ttl, delta, tags)
        except CodecError:
            raise
        except Exception as exc:
            # Whatever a codec, a decompressor or struct raises on bad input: the entry is unreadable.
            raise CodecError(f"undecodable cache entry: {type(exc).__name__}: {exc}") from exc

    def _compression_reader(self, name: str) -> _Compression:
        factory = _COMPRESSIONS.get(name)
        if factory is None:
            raise CodecError(f"undecodable cache entry: unknown compression {name!r}")
        reader = factory()  # MissingDependencyError when the extra is missing: undecodable, see decode()
        self._readers[COMPRESSION_IDS[name]] = reader
        return reader
