"""The control-socket wire between a host coordinator and its guest supervisors.

A frame is a 4-byte big-endian length, then one msgpack map: ``v`` (the
version), ``kind`` and exactly the fields :data:`SCHEMA` lists for that kind,
each of the listed type. Nothing else is accepted: unknown kinds or keys,
missing keys, wrong types, extension types and frames over
:data:`MAX_FRAME` all raise :class:`WireError`.

This module imports nothing but the standard library and msgpack: the
supervisor process loads it alone (see :mod:`actorlock.supervisor.shim`), so
a supervised guest does not pay for attrs, anyio or the rest of actorlock.
The coordinator's side wraps these maps in frozen attrs messages
(:mod:`actorlock.supervisor.messages`).
"""

from __future__ import annotations

import struct

import msgpack

# Not `from typing import ...` at run time: the supervisor loads this module,
# and typing costs it ~15 ms and ~1 MiB per guest.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Final, NoReturn

VERSION: Final = 1
MAX_FRAME: Final = 4096  # the largest message is a reason text cut to MAX_TEXT
MAX_TEXT: Final = 1000
_HEADER: Final = struct.Struct(">I")

# kind -> field -> type. Times are on the host clock (CLOCK_BOOTTIME).
SCHEMA: Final[dict[str, dict[str, type]]] = {
    # supervisor -> coordinator
    "hello": {"uuid": str, "supervisor_pid": int, "guest_pid": int, "guest_start": int},
    "started": {"guest_pid": int, "guest_start": int},
    "exited": {"guest_pid": int, "status": int, "fenced": str},
    # coordinator -> supervisor
    "welcome": {"expires_at": float, "action": str, "kill_grace": float, "fence_timeout": float},
    "deadline": {"expires_at": float},
    "fence": {"reason": str},
    "release": {},
}


class WireError(Exception):
    """A frame that breaks the schema (the coordinator raises ProtocolError for it)."""


def encode(kind: str, **fields: Any) -> bytes:
    """One frame of ``kind``; the fields are checked as a decoder would check them."""
    _check(kind, fields)
    body = msgpack.packb({"v": VERSION, "kind": kind, **fields}, use_bin_type=True)
    if len(body) > MAX_FRAME:
        raise WireError(f"{kind} frame of {len(body)} bytes exceeds {MAX_FRAME}")
    return _HEADER.pack(len(body)) + bytes(body)


def _no_ext(code: int, data: bytes) -> NoReturn:
    raise WireError(f"extension type {code} is not allowed")


def decode(body: bytes) -> tuple[str, dict[str, Any]]:
    """The (kind, fields) of one frame's body (the bytes after the length)."""
    if len(body) > MAX_FRAME:
        raise WireError(f"frame of {len(body)} bytes exceeds {MAX_FRAME}")
    try:
        raw = msgpack.unpackb(
            body,
            raw=False,
            strict_map_key=True,
            ext_hook=_no_ext,
            max_str_len=MAX_FRAME,
            max_bin_len=0,
            max_array_len=0,
            max_map_len=16,
        )
    except WireError:
        raise
    except Exception as exc:
        raise WireError(f"undecodable frame: {exc}") from None
    if not isinstance(raw, dict):
        raise WireError(f"a frame must be a map, got {type(raw).__name__}")
    version = raw.pop("v", None)
    if version != VERSION:
        raise WireError(f"unsupported control protocol version {version!r} (this side speaks {VERSION})")
    kind = raw.pop("kind", None)
    if not isinstance(kind, str):
        raise WireError("a frame needs a string 'kind'")
    _check(kind, raw)
    return kind, raw


def _check(kind: str, fields: dict[str, Any]) -> None:
    schema = SCHEMA.get(kind)
    if schema is None:
        raise WireError(f"unknown message kind {kind!r}")
    if set(fields) != set(schema):
        raise WireError(f"{kind}: fields {sorted(fields)} do not match {sorted(schema)}")
    for name, expected in schema.items():
        value: Any = fields[name]
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            fields[name] = value = float(value)
        if not isinstance(value, expected) or isinstance(value, bool):
            raise WireError(f"{kind}.{name} must be {expected.__name__}, got {type(value).__name__}")
        if isinstance(value, int) and not 0 <= value < 1 << 63:
            raise WireError(f"{kind}.{name} out of range: {value}")
        if isinstance(value, str) and len(value) > MAX_TEXT:
            raise WireError(f"{kind}.{name} longer than {MAX_TEXT} characters")


class FrameBuffer:
    """Cuts a byte stream into frame bodies, refusing an oversized length before buffering it."""

    def __init__(self) -> None:
        self._data = bytearray()

    def feed(self, chunk: bytes) -> list[bytes]:
        self._data += chunk
        bodies = []
        while len(self._data) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(self._data)
            if size > MAX_FRAME:
                raise WireError(f"frame length {size} exceeds {MAX_FRAME}")
            if len(self._data) < _HEADER.size + size:
                break
            bodies.append(bytes(self._data[_HEADER.size : _HEADER.size + size]))
            del self._data[: _HEADER.size + size]
        return bodies
