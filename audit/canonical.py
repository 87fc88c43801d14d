"""The exact bytes a record is hashed over, and the hash itself.

Encoding: RFC 8785 (JSON Canonicalization Scheme): sorted keys, no insignificant white space,
UTF-8, ECMAScript number formatting. It depends on nothing of the machine (dict order, float
formatting, locale, timezone); times enter it only as UTC strings formatted here.

Every record, receipt and checkpoint is encoded, so the encoder is on the hot path. Values made
only of objects, arrays, strings, integers, booleans and null (what the scheme's events are)
are encoded by orjson with sorted keys, which gives RFC 8785's bytes for exactly those values
(a property test compares the two); anything else (a float, a key outside the Basic
Multilingual Plane, another type) goes to the ``rfc8785`` reference encoder.

Record hash, algorithm ``sha256-jcs-v1``:
    SHA-256( b"circuit-audit-record-v1\\x00" || previous record hash (32 bytes) || body bytes )
The first record's previous hash is 32 zero bytes.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from typing import Any

import orjson
import rfc8785

ALGORITHM = "sha256-jcs-v1"
RECORD_DOMAIN = b"circuit-audit-record-v1\x00"
GENESIS_HASH = bytes(32)
INTEGER_MAX = 2**53 - 1  # RFC 8785 numbers are IEEE 754 doubles: integers beyond are refused


def canonical(value: Any) -> bytes:
    if _plain(value):
        try:
            return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
        except orjson.JSONEncodeError:
            pass  # a lone surrogate, nesting too deep: the reference encoder gives the refusal
    return rfc8785.dumps(value)


def _plain(value: Any) -> bool:
    """Whether orjson's sorted encoding of ``value`` is RFC 8785's: only dicts with string keys
    in the Basic Multilingual Plane (RFC 8785 sorts keys by UTF-16 code units, orjson by code
    points: the two orders differ only beyond it), lists, strings, integers within
    ±INTEGER_MAX, booleans and None. Floats are left out: ECMAScript formats them its own way."""
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is dict:
            for key in item:
                if type(key) is not str or not (key.isascii() or max(key) <= "\uffff"):
                    return False
            stack.extend(item.values())
        elif kind is list:
            stack.extend(item)
        elif kind is int:
            if not -INTEGER_MAX <= item <= INTEGER_MAX:
                return False
        elif kind is not str and kind is not bool and item is not None:
            return False
    return True


def utc_text(moment: datetime) -> str:
    """A timestamp as the chain writes it: UTC, microseconds, ``Z``; never local time."""
    if moment.tzinfo is None:
        raise ValueError("audit timestamps must be timezone-aware")
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def record_hash(previous: bytes, body: bytes) -> bytes:
    return hashlib.sha256(RECORD_DOMAIN + previous + body).digest()


def record_line(body: bytes, digest: bytes, previous: bytes) -> bytes:
    """The archive's line for a record: itself the canonical JSON of
    ``{"body": <body>, "hash": <hex>, "prev": <hex>}``, so the body's bytes sit at a fixed
    offset and a verifier hashes them as stored, without re-encoding."""
    return b'{"body":' + body + b',"hash":"' + digest.hex().encode() + b'","prev":"' + previous.hex().encode() + b'"}'


LINE_PREFIX = b'{"body":'
LINE_SUFFIX_LENGTH = len(b',"hash":"') + 64 + len(b'","prev":"') + 64 + len(b'"}')  # 149
_LINE_LENGTH_MIN = len(LINE_PREFIX) + 2 + LINE_SUFFIX_LENGTH


def split_line(line: bytes) -> tuple[bytes, bytes, bytes]:
    """(body, hash hex, prev hex) of an archive line, or ValueError if it is not one."""
    n = len(line)
    if (n < _LINE_LENGTH_MIN or line[:8] != LINE_PREFIX or line[n - 149:n - 140] != b',"hash":"'
            or line[n - 76:n - 66] != b'","prev":"' or line[n - 2:] != b'"}'):
        raise ValueError("not a record line")
    return line[8:n - 149], line[n - 140:n - 76], line[n - 66:n - 2]
