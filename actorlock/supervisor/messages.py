"""The control-socket messages as frozen attrs classes (the coordinator's side of :mod:`.wire`)."""

from __future__ import annotations

from typing import Any, Final

import attrs

from ..errors import ProtocolError
from . import wire


@attrs.frozen
class Hello:
    """A supervisor connects; guest_pid 0 until its guest runs (a reconnect names it)."""

    uuid: str
    supervisor_pid: int
    guest_pid: int
    guest_start: int


@attrs.frozen
class Started:
    guest_pid: int
    guest_start: int


@attrs.frozen
class Exited:
    guest_pid: int
    status: int
    fenced: str  # why the supervisor ran the failure action; empty if the guest exited by itself


@attrs.frozen
class Welcome:
    expires_at: float
    action: str
    kill_grace: float
    fence_timeout: float


@attrs.frozen
class Deadline:
    expires_at: float


@attrs.frozen
class Fence:
    reason: str


@attrs.frozen
class Release:
    pass


Message = Hello | Started | Exited | Welcome | Deadline | Fence | Release

KINDS: Final[dict[str, type[Any]]] = {
    "hello": Hello,
    "started": Started,
    "exited": Exited,
    "welcome": Welcome,
    "deadline": Deadline,
    "fence": Fence,
    "release": Release,
}
_TAGS: Final = {cls: kind for kind, cls in KINDS.items()}


def encode(message: Message) -> bytes:
    fields = attrs.asdict(message)
    if isinstance(message, Fence):
        fields["reason"] = message.reason[: wire.MAX_TEXT]
    try:
        return wire.encode(_TAGS[type(message)], **fields)
    except wire.WireError as exc:
        raise ProtocolError(str(exc)) from None


def decode(body: bytes) -> Message:
    try:
        kind, fields = wire.decode(body)
    except wire.WireError as exc:
        raise ProtocolError(f"supervisor frame: {exc}") from None
    message: Message = KINDS[kind](**fields)
    return message
