"""JWS compact serialization primitives: base64url, strict parsing and the rejection error.

Kept separate from the key ring so the parsing rules (size limit, alphabet, JSON objects) live in one
place and every rejection goes through :func:`reject`, which never puts the token into the message.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any, NoReturn

import orjson

from mainspring.errors import AuthenticationError

#: Tokens longer than this are refused before any decoding (RFC 8725 suggests bounding input sizes).
MAX_TOKEN_BYTES = 8 * 1024

# One regex pass in C checks the whole alphabet; a lone '=' or '+' would otherwise be silently dropped
# or translated by the lenient base64 decoder.
_COMPACT_JWS = re.compile(r"([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]*)\.([A-Za-z0-9_-]*)")

_PAD = ("", "", "==", "=")


def reject(reason: str, message: str) -> NoReturn:
    """Raise the :class:`AuthenticationError` for a rejected token; ``reason`` is a stable short tag."""
    raise AuthenticationError(f"JWT rejected: {message}", code="invalid_token", details={"reason": reason})


def b64url_encode(data: bytes) -> str:
    """Encode ``data`` as unpadded base64url text."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str, what: str) -> bytes:
    """Decode unpadded base64url ``text`` (already checked against the alphabet); reject bad lengths."""
    pad = _PAD[len(text) % 4]
    if len(text) % 4 == 1:
        reject("malformed", f"the {what} is not valid base64url (impossible length)")
    try:
        return base64.urlsafe_b64decode(text + pad)
    except (binascii.Error, ValueError):
        reject("malformed", f"the {what} is not valid base64url")


def split_compact(token: str | bytes) -> tuple[str, str, str]:
    """Split a compact JWS into its three base64url parts after the size and alphabet checks."""
    if isinstance(token, bytes | bytearray):
        if len(token) > MAX_TOKEN_BYTES:
            reject("too_large", f"the token is {len(token)} bytes, over the {MAX_TOKEN_BYTES}-byte limit")
        try:
            token = bytes(token).decode("ascii")
        except UnicodeDecodeError:
            reject("malformed", "the token is not ASCII; send the compact serialization as is")
    elif not isinstance(token, str):
        reject("malformed", f"expected the token as str or bytes, got {type(token).__name__}")
    if len(token) > MAX_TOKEN_BYTES:
        reject(
            "too_large",
            f"the token is {len(token)} bytes, over the {MAX_TOKEN_BYTES}-byte limit; "
            "keep claims small or send references instead",
        )
    match = _COMPACT_JWS.fullmatch(token)
    if match is None:
        dots = token.count(".")
        if dots == 4:
            reject("malformed", "the token has five parts (JWE); only signed tokens (JWS) are accepted")
        if dots != 2:
            reject("malformed", f"a JWS has three dot-separated parts, this token has {dots + 1}")
        reject("malformed", "the token contains characters outside the base64url alphabet")
    header, payload, signature = match.groups()
    return header, payload, signature


def decode_json_object(text: str, what: str) -> dict[str, Any]:
    """Decode a base64url JSON object (a JOSE header or a claims set); reject anything else."""
    raw = b64url_decode(text, what)
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        reject("malformed", f"the {what} is not valid JSON")
    if not isinstance(value, dict):
        reject("malformed", f"the {what} must be a JSON object, got {type(value).__name__}")
    return value


def encode_json(value: dict[str, Any]) -> str:
    """Serialize ``value`` as compact JSON and base64url-encode it."""
    return b64url_encode(orjson.dumps(value))
