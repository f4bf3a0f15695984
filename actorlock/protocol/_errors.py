"""Errors of the migration protocol, refining the ones in :mod:`actorlock.errors`.

Each class has its own stable ``code`` so the reason survives the wire;
they register in :mod:`actorlock.errors`' one registry when defined.
"""

from __future__ import annotations

from typing import Any

from ..errors import ActorlockError, LeaseLostError, MigrationError, PeerRefusedError, ProtocolError


class MigrationProtocolError(ProtocolError):
    """A migration message or event broke the protocol's rules."""

    code = "migration-protocol"


class IllegalEventError(MigrationProtocolError):
    """A local event is not allowed in the machine's current state; nothing changed."""

    code = "illegal-event"


class StaleMessageError(MigrationProtocolError):
    """A peer request is older than one already seen from that peer."""

    code = "stale-message"


class UnknownMigrationError(MigrationProtocolError):
    """No migration with this id is known here (never started, or long forgotten)."""

    code = "unknown-migration"


class MigrationRefusedError(PeerRefusedError, MigrationError):
    """The destination refused PREPARE; the source keeps every lease.

    Attributes:
        remote_code: the error code the destination gave.
    """

    code = "migration-refused"

    def __init__(self, message: str, remote_code: str = "") -> None:
        super().__init__(message)
        self.remote_code = remote_code

    @classmethod
    def from_wire(cls, message: str, **fields: Any) -> ActorlockError:
        return cls(message, str(fields.get("remote_code", "")))


class MigrationCancelledError(MigrationError):
    """The migration was cancelled (locally, by the peer, or by a failed transfer)."""

    code = "migration-cancelled"


class MigrationTimeoutError(MigrationCancelledError):
    """The migration deadline passed before both sides agreed to commit."""

    code = "migration-timeout"


class MigrationCommittedError(MigrationError):
    """Cancel refused: the leases have already moved to the destination."""

    code = "migration-committed"


class MigrationLeasesLostError(LeaseLostError, MigrationError):
    """After a failed transfer neither side holds every lease of the domain."""

    code = "migration-leases-lost"


PROTOCOL_ERRORS: tuple[type[Exception], ...] = (
    MigrationProtocolError,
    IllegalEventError,
    StaleMessageError,
    UnknownMigrationError,
    MigrationRefusedError,
    MigrationCancelledError,
    MigrationTimeoutError,
    MigrationCommittedError,
    MigrationLeasesLostError,
)
