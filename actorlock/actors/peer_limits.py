"""What a host accepts from its peers, and how much of it at once.

Kept apart from the host actor so the rules read in one place.
"""

from __future__ import annotations

from ..errors import InvalidStateError
from ..model import LockState
from ..transport.limits import check_lock_state


def check_offer(offer: LockState) -> None:
    """Refuse, on the source, a lock state no peer would accept.

    Raises:
        InvalidStateError: the guest holds no leases.
        ProtocolError: the lock state does not fit in a migration message.
    """
    if not offer.leases:
        raise InvalidStateError(
            "the guest holds no leases: peers refuse a migration with an empty lock state"
        )
    check_lock_state(offer)
