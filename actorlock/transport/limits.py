"""The wire limits, in one table that both the encoder and the decoder read.

A frame one side may send is exactly a frame the other side will read: the
decoder builds its msgpack limits from :data:`LIMITS`, the encoder checks
the same numbers before anything leaves, and a migration checks its lock
state against them before it starts, so an oversized lock state is a clear
error to the local caller instead of a peer that never answers.
"""

from __future__ import annotations

from typing import Final

import attrs
import msgpack

from ..errors import ProtocolError
from ..model import LockState


@attrs.frozen
class WireLimits:
    """Bounds of one protocol frame, in bytes or items."""

    frame_size: int = 1 << 20
    string: int = 8192  # a lease key holds a path (PATH_MAX is 4096); UTF-8 bytes
    leases: int = 4096
    map_entries: int = 32
    text: int = 2000  # human-readable reasons are cut to this many characters on encode
    uint: int = (1 << 63) - 1
    # The zmq envelope around a codec frame (routing id, request id, kind).
    envelope: int = 1024

    @property
    def message_size(self) -> int:
        """What a zmq socket accepts: one frame plus its envelope."""
        return self.frame_size + self.envelope

    @property
    def non_lease_bytes(self) -> int:
        """An upper bound of everything but the lock state in any message that carries one.

        At most eight strings (ids, names, lockspace, reason), each within
        ``string`` bytes, plus the map keys and numbers around them.
        """
        return 8 * self.string + 1024


LIMITS: Final = WireLimits()


def check_lock_state(state: LockState, limits: WireLimits = LIMITS) -> None:
    """Refuse a lock state that no migration message could carry.

    Sized with the largest token a transfer could hand out, so the commit
    reply that returns the moved leases fits too.

    Raises:
        ProtocolError: too many leases, a key too long, or too many bytes.
    """
    count = len(state.leases)
    if count > limits.leases:
        raise ProtocolError(
            f"lock state of {count} leases exceeds the wire limit of {limits.leases} leases: "
            "a migration cannot carry it"
        )
    body = []
    for lease in state.leases:
        size = len(lease.key.encode("utf-8", "surrogatepass"))
        if size > limits.string:
            raise ProtocolError(
                f"lease key {lease.key[:60]!r}... is {size} bytes, over the wire limit of "
                f"{limits.string}: a migration cannot carry it"
            )
        body.append([lease.key, lease.mode.value, limits.uint])
    try:
        size = len(msgpack.packb(body, use_bin_type=True))
    except (UnicodeEncodeError, ValueError) as exc:
        raise ProtocolError(f"lock state cannot be sent: {exc}") from None
    room = limits.frame_size - limits.non_lease_bytes
    if size > room:
        raise ProtocolError(
            f"lock state of {count} leases takes up to {size} bytes, over the {room}-byte limit "
            f"for the lock state of one migration message ({limits.frame_size}-byte frames)"
        )
