"""The wire format of migration messages: one msgpack map per frame.

A frame is a map with a ``type`` tag, the protocol ``version`` and every
field of the message class, nothing more and nothing less. Decoding trusts
nothing: the frame size, string, array and map lengths are bounded before
anything is built (msgpack's Unpacker limits), map keys must be strings,
extension types (timestamps included) are refused, bytes are never turned
into objects by name (no pickle, no class paths), and every field's type
and range is checked. Whatever is wrong, the only exception is
:class:`~actorlock.errors.ProtocolError`, and its message names the problem.

Errors cross the wire as a stable code and a message
(:func:`error_to_wire` / :func:`error_from_wire`), never as a class path.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Final, NoReturn

import attrs
import msgpack

from ..errors import ActorlockError, ProtocolError, error_from_code
from ..model import DomainIdentity, Lease, LeaseMode, LockState
from ..protocol import (
    PROTOCOL_VERSION,
    Cancel,
    CancelReply,
    Commit,
    CommitReply,
    ErrorReply,
    Message,
    Outcome,
    Prepare,
    PrepareReply,
    Query,
    Refuse,
    Status,
)
from .limits import LIMITS

# Names kept for callers; the numbers live in limits.LIMITS, shared with the encoder's checks.
MAX_FRAME_SIZE: Final = LIMITS.frame_size
MAX_STR_LEN: Final = LIMITS.string
MAX_LEASES: Final = LIMITS.leases
MAX_TEXT: Final = LIMITS.text
MAX_UINT: Final = LIMITS.uint

TYPES: Final[dict[str, type[Message]]] = {
    "prepare": Prepare,
    "prepare-reply": PrepareReply,
    "refuse": Refuse,
    "commit": Commit,
    "commit-reply": CommitReply,
    "cancel": Cancel,
    "cancel-reply": CancelReply,
    "query": Query,
    "status": Status,
    "error": ErrorReply,
}
_TAGS: Final = {cls: tag for tag, cls in TYPES.items()}


class _Rejected(Exception):
    """Raised inside msgpack hooks; turned into ProtocolError outside."""


def _no_ext(code: int, data: bytes) -> NoReturn:
    raise _Rejected(f"extension type {code} is not allowed")


def _unpacker() -> Any:
    return msgpack.Unpacker(
        raw=False,
        strict_map_key=True,
        use_list=True,
        ext_hook=_no_ext,
        max_buffer_size=MAX_FRAME_SIZE,
        max_str_len=MAX_STR_LEN,
        max_bin_len=0,
        max_ext_len=0,
        max_array_len=LIMITS.leases,
        max_map_len=LIMITS.map_entries,
    )


# --- field kinds: (encode, decode) pairs; decode raises ValueError with the reason ---


def _bad(expected: str, value: object) -> NoReturn:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    raise ValueError(f"expected {expected}, got {type(value).__name__} {shown}")


def _uint(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_UINT:
        _bad("an integer in 0..2**63-1", value)
    return value


def _text(value: object) -> str:
    if not isinstance(value, str):
        _bad("a string", value)
    _fits(value)
    return value


def _name(value: object) -> str:
    if not isinstance(value, str) or not value:
        _bad("a non-empty string", value)
    _fits(value)
    return value


def _fits(value: str) -> None:
    # The decoder never sees a longer string (msgpack refuses it), so only the
    # encoder can meet one; the length in characters bounds the bytes from below.
    if len(value) > LIMITS.string // 4 and len(value.encode("utf-8", "surrogatepass")) > LIMITS.string:
        raise ValueError(f"a string of at most {LIMITS.string} bytes, got {len(value)} characters")


def _seconds(value: object) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        _bad("a number of seconds", value)
    if not math.isfinite(value) or value < 0:
        _bad("a finite, non-negative number of seconds", value)
    return float(value)


def _outcome(value: object) -> Outcome:
    try:
        return Outcome(_text(value))
    except ValueError:
        _bad(f"one of {[o.value for o in Outcome]}", value)


def _domain(value: object) -> DomainIdentity:
    if not isinstance(value, dict) or set(value) != {"uuid", "name"}:
        _bad("a map with exactly uuid and name", value)
    return DomainIdentity(_name(value["uuid"]), _text(value["name"]))


def _domain_out(domain: DomainIdentity) -> dict[str, str]:
    return {"uuid": domain.uuid, "name": domain.name}


def _lock_state(value: object) -> LockState:
    if not isinstance(value, list):
        _bad("a list of [key, mode, token]", value)
    if len(value) > LIMITS.leases:
        raise ValueError(f"{len(value)} leases, over the wire limit of {LIMITS.leases}")
    leases = []
    for item in value:
        if not isinstance(item, list) or len(item) != 3:
            _bad("a lease as [key, mode, token]", item)
        key, mode, token = item
        try:
            lease_mode = LeaseMode(_text(mode))
        except ValueError:
            _bad(f"a lease mode in {[m.value for m in LeaseMode]}", mode)
        leases.append(Lease(_name(key), lease_mode, _uint(token)))
    return LockState(tuple(leases))


def _lock_state_out(state: LockState) -> list[list[object]]:
    return [[lease.key, lease.mode.value, lease.token] for lease in state.leases]


def _same(value: Any) -> Any:
    return value


def _cut(value: str) -> str:
    return value if len(value) <= MAX_TEXT else value[: MAX_TEXT - 3] + "..."


_Kind = tuple[Callable[[Any], Any], Callable[[object], Any]]

_FIELDS: Final[dict[str, _Kind]] = {
    "version": (_same, _uint),
    "migration_id": (_same, _text),
    "sender": (_same, _name),
    "seq": (_same, _uint),
    "deadline_remaining": (_same, _seconds),
    "domain": (_domain_out, _domain),
    "source_host_id": (_same, _uint),
    "lockspace_kind": (_same, _text),
    "lockspace_id": (_same, _text),
    "lock_state": (_lock_state_out, _lock_state),
    "host_id": (_same, _uint),
    "incarnation": (_same, _text),
    "code": (_same, _name),
    "message": (_cut, _text),
    "reason": (_cut, _text),
    "outcome": (lambda o: o.value, _outcome),
}
_NAMES: Final = {cls: tuple(f.name for f in attrs.fields(cls)) for cls in TYPES.values()}
assert all(name in _FIELDS for names in _NAMES.values() for name in names), "a message field has no codec"


# --- messages -------------------------------------------------------------------


def encode(message: Message) -> bytes:
    """One frame for ``message``.

    Raises:
        ProtocolError: the message is not one the codec knows, a field does
            not fit the wire format, or the frame would exceed MAX_FRAME_SIZE.
    """
    tag = _TAGS.get(type(message))
    if tag is None:
        raise ProtocolError(f"cannot encode {type(message).__name__}: not a protocol message")
    body: dict[str, object] = {"type": tag}
    for name in _NAMES[type(message)]:
        out, check = _FIELDS[name]
        value = out(getattr(message, name))
        try:
            check(value)  # refuse to send what the peer would refuse to read
        except ValueError as exc:
            raise ProtocolError(f"cannot encode field {name!r} of {tag}: {exc}") from None
        body[name] = value
    try:
        frame: bytes = msgpack.packb(body, use_bin_type=True)
    except (UnicodeEncodeError, ValueError, TypeError, OverflowError) as exc:
        # A lone surrogate (undecodable file name bytes) is not UTF-8 text.
        raise ProtocolError(f"cannot encode {tag}: {exc}") from None
    if len(frame) > MAX_FRAME_SIZE:
        raise ProtocolError(f"{tag} message of {len(frame)} bytes exceeds the {MAX_FRAME_SIZE}-byte limit")
    return frame


def decode(frame: bytes) -> Message:
    """The message in ``frame``.

    Raises:
        ProtocolError: for anything but a well-formed message of this
            protocol version; never any other exception.
    """
    body = _unpack(frame)
    tag = body.get("type")
    cls = TYPES.get(tag) if isinstance(tag, str) else None
    if cls is None:
        raise ProtocolError(f"unknown message type {tag!r}")
    version = body.get("version")
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise ProtocolError(f"{tag}: protocol version {version!r} is not supported (this host speaks 1)")
    names = _NAMES[cls]
    given = set(body) - {"type"}
    missing = sorted(set(names) - given)
    extra = sorted(given - set(names))
    if missing:
        raise ProtocolError(f"{tag}: missing field(s) {', '.join(missing)}")
    if extra:
        raise ProtocolError(f"{tag}: unexpected field(s) {', '.join(extra)}")
    values: dict[str, Any] = {}
    for name in names:
        try:
            values[name] = _FIELDS[name][1](body[name])
        except ValueError as exc:
            raise ProtocolError(f"{tag}: field {name!r}: {exc}") from None
    return cls(**values)


def _unpack(frame: bytes) -> dict[str, Any]:
    if not isinstance(frame, bytes | bytearray | memoryview):
        raise ProtocolError(f"a frame must be bytes, not {type(frame).__name__}")
    if len(frame) > MAX_FRAME_SIZE:
        raise ProtocolError(f"frame of {len(frame)} bytes exceeds the {MAX_FRAME_SIZE}-byte limit")
    unpacker = _unpacker()
    try:
        unpacker.feed(frame)
        body = unpacker.unpack()
    except msgpack.OutOfData:
        raise ProtocolError("truncated or empty frame") from None
    except (_Rejected, msgpack.UnpackException, ValueError, TypeError, RecursionError) as exc:
        raise ProtocolError(f"malformed frame: {exc or type(exc).__name__}") from None
    try:
        unpacker.unpack()
    except msgpack.OutOfData:
        pass
    except Exception:  # anything after the message is garbage, however it fails
        raise ProtocolError("trailing garbage after the message") from None
    else:
        raise ProtocolError("trailing data after the message")
    if not isinstance(body, dict):
        raise ProtocolError(f"a message must be a map, not {type(body).__name__}")
    if not all(isinstance(key, str) for key in body):
        raise ProtocolError("map keys must be strings")
    return body


def error_reply_for(frame: bytes, error: ActorlockError, *, sender: str) -> ErrorReply:
    """An ErrorReply answering a frame that could not be handled, e.g. not decoded.

    The migration id and number are taken from the frame when they can be
    read, so the peer can match the answer; otherwise they are empty and 0.
    """
    migration_id, seq = "", 0
    try:
        body = _unpack(frame)
        migration_id = _text(body.get("migration_id"))
        seq = _uint(body.get("seq"))
    except (ProtocolError, ValueError):
        pass
    code, text = error_to_wire(error)
    return ErrorReply(
        migration_id=migration_id if len(migration_id) <= MAX_STR_LEN else "",
        sender=sender,
        seq=seq,
        deadline_remaining=0.0,
        code=code,
        message=text,
    )


# --- errors --------------------------------------------------------------------


def error_to_wire(error: ActorlockError) -> tuple[str, str]:
    """The stable code and message an error travels as."""
    return error.code, _cut(str(error))


def error_from_wire(code: str, message: str) -> ActorlockError:
    """Rebuild an error from its wire code (unknown codes give a plain ActorlockError)."""
    return error_from_code(code, message)
