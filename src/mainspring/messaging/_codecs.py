"""Message codecs: JSON (orjson, the default), msgpack and Avro.

A codec turns a payload into bytes plus the headers a reader needs (the content type, and for Avro
the writer schema's fingerprint) and back. Typed handlers validate the decoded value with pydantic,
so codecs only deal in plain values (dicts, lists, scalars); pydantic models are dumped in JSON mode
before encoding.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import orjson
from pydantic import BaseModel

from mainspring._compat import require
from mainspring.errors import BadRequestError, ConfigError, ValidationError
from mainspring.messaging._transport import SCHEMA_FINGERPRINT

__all__ = [
    "AvroCodec",
    "Codec",
    "IncompatibleSchemaError",
    "InvalidPayloadError",
    "JsonCodec",
    "MsgpackCodec",
    "plain",
]


class InvalidPayloadError(ValidationError):
    """A received payload could not be decoded or did not validate; it goes to the dead letters at once."""

    code = "invalid_payload"


class IncompatibleSchemaError(InvalidPayloadError):
    """A received Avro payload was written with a schema the consumer cannot read."""

    code = "incompatible_schema"


def plain(data: Any) -> Any:
    """Return ``data`` as plain values: pydantic models dumped in JSON mode, everything else as is."""
    if isinstance(data, BaseModel):
        return data.model_dump(mode="json")
    return data


class Codec(Protocol):
    """Turns payloads into bytes and back."""

    #: The MIME type written to the ``content-type`` header.
    content_type: str

    def encode(self, data: Any) -> tuple[bytes, Mapping[str, str]]:
        """Return the body and any extra headers a reader needs."""
        ...

    def decode(self, body: bytes, headers: Mapping[str, str]) -> Any:
        """Return the plain value in ``body``; raise :class:`InvalidPayloadError` when it is unreadable."""
        ...


_NO_HEADERS: Mapping[str, str] = {}


class JsonCodec:
    """JSON through orjson (UTF-8, datetimes as RFC 3339, UUIDs as strings)."""

    content_type = "application/json"

    def encode(self, data: Any) -> tuple[bytes, Mapping[str, str]]:
        """Serialize ``data`` (a pydantic model, dict, list or scalar) to JSON bytes."""
        if isinstance(data, BaseModel):
            return data.__pydantic_serializer__.to_json(data), _NO_HEADERS
        if isinstance(data, bytes | bytearray | memoryview):
            raise BadRequestError(
                "JsonCodec cannot encode raw bytes; publish a dict or model, or choose another codec",
                code="invalid_message",
            )
        try:
            return orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS), _NO_HEADERS
        except TypeError as exc:
            raise BadRequestError(
                f"message data is not JSON-serializable: {exc}", code="invalid_message"
            ) from exc

    def decode(self, body: bytes, headers: Mapping[str, str]) -> Any:
        """Parse JSON bytes."""
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise InvalidPayloadError(f"payload is not valid JSON: {exc}") from exc


class MsgpackCodec:
    """MessagePack (needs ``mainspring[messaging]``)."""

    content_type = "application/msgpack"

    def __init__(self) -> None:
        """Load msgpack, or say which extra to install."""
        self._msgpack = require("msgpack", extra="messaging")

    def encode(self, data: Any) -> tuple[bytes, Mapping[str, str]]:
        """Pack ``data`` (models are dumped to plain values first)."""
        try:
            body: bytes = self._msgpack.packb(plain(data), use_bin_type=True, datetime=False)
        except TypeError as exc:
            raise BadRequestError(
                f"message data cannot be encoded as msgpack: {exc}", code="invalid_message"
            ) from exc
        return body, _NO_HEADERS

    def decode(self, body: bytes, headers: Mapping[str, str]) -> Any:
        """Unpack msgpack bytes."""
        try:
            return self._msgpack.unpackb(body, raw=False)
        except (ValueError, self._msgpack.UnpackException) as exc:
            raise InvalidPayloadError(f"payload is not valid msgpack: {exc}") from exc


class AvroCodec:
    """Avro binary encoding with a schema given by the producer or consumer (needs ``mainspring[messaging]``).

    The writer schema's CRC-64-AVRO fingerprint travels in the ``ms_schema_fingerprint`` header. A reader
    decodes records written with its own schema, or with one of ``writer_schemas`` (older or newer
    versions it knows) through Avro schema resolution; anything else raises
    :class:`IncompatibleSchemaError`, and the broker dead-letters the message with that reason.
    """

    content_type = "application/avro"

    def __init__(
        self, schema: Mapping[str, Any], *, writer_schemas: Iterable[Mapping[str, Any]] = ()
    ) -> None:
        """Parse ``schema`` (and the known ``writer_schemas``); a bad schema raises :class:`ConfigError`."""
        self._fastavro = require("fastavro", extra="messaging")
        self._schema, self.fingerprint = self._parse(schema)
        self._writers: dict[str, Any] = {self.fingerprint: self._schema}
        for other in writer_schemas:
            parsed, fingerprint = self._parse(other)
            self._writers.setdefault(fingerprint, parsed)
        self._headers = {SCHEMA_FINGERPRINT: self.fingerprint}

    def _parse(self, schema: Mapping[str, Any]) -> tuple[Any, str]:
        from fastavro.schema import fingerprint, to_parsing_canonical_form

        try:
            parsed = self._fastavro.parse_schema(dict(schema))
        except (ValueError, TypeError, KeyError, self._fastavro.schema.SchemaParseException) as exc:
            raise ConfigError(f"invalid Avro schema: {exc}") from exc
        return parsed, str(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))

    def encode(self, data: Any) -> tuple[bytes, Mapping[str, str]]:
        """Write ``data`` with the codec's schema."""
        out = io.BytesIO()
        try:
            self._fastavro.schemaless_writer(out, self._schema, plain(data))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise BadRequestError(
                f"message data does not match the Avro schema: {exc}", code="invalid_message"
            ) from exc
        return out.getvalue(), self._headers

    def decode(self, body: bytes, headers: Mapping[str, str]) -> Any:
        """Read ``body`` with the writer schema named by its fingerprint, resolved to the codec's schema."""
        fingerprint = headers.get(SCHEMA_FINGERPRINT)
        if fingerprint is None:
            raise IncompatibleSchemaError("Avro payload has no ms_schema_fingerprint header")
        writer = self._writers.get(fingerprint)
        if writer is None:
            raise IncompatibleSchemaError(
                f"Avro payload written with unknown schema {fingerprint}; the reader knows "
                f"{sorted(self._writers)}"
            )
        try:
            return self._fastavro.schemaless_reader(io.BytesIO(body), writer, self._schema)
        except self._fastavro.read.SchemaResolutionError as exc:
            raise IncompatibleSchemaError(f"Avro schema {fingerprint} cannot be read as ours: {exc}") from exc
        except (ValueError, TypeError, EOFError, IndexError, UnicodeDecodeError) as exc:
            raise InvalidPayloadError(f"payload is not valid Avro: {exc}") from exc
