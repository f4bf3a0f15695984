"""One exception hierarchy for everything actorlock raises on purpose.

Every error derives from :class:`ActorlockError`; where a builtin fits the
meaning (``ValueError`` for bad input, ``NotImplementedError`` for missing
features) the error derives from it too, so generic handlers keep working.
Details travel as attributes (``err.resource``, ``err.holders``) so callers
never parse messages.

Each class that names a ``code`` registers it when the class is defined, in
one registry (a taken code is refused at import), and
:func:`error_from_code` rebuilds an error from a wire code through the
class's own :meth:`ActorlockError.from_wire`, so a rebuilt error has every
attribute a raised one has.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

_REGISTRY: dict[str, type[ActorlockError]] = {}


class ActorlockError(Exception):
    """Root of every error actorlock raises on purpose."""

    code: ClassVar[str] = "error"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "code" in vars(cls):
            taken = _REGISTRY.setdefault(cls.code, cls)
            if taken is not cls:
                raise TypeError(
                    f"error code {cls.code!r} of {cls.__qualname__} is taken by {taken.__qualname__}"
                )

    @classmethod
    def from_wire(cls, message: str, **fields: Any) -> ActorlockError:
        """Rebuild from the message a peer sent; classes with more attributes override this."""
        return cls(message)

    def _with_text(self, message: str) -> ActorlockError:
        self.args = (message,)  # the sender's text, not one re-formatted from defaults
        return self


_REGISTRY[ActorlockError.code] = ActorlockError


# --- bad input and misuse -------------------------------------------------


class ConfigError(ActorlockError, ValueError):
    """A configuration key is unknown, missing or has a bad value."""

    code = "config"

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"config key {key!r}: {problem}")
        self.key = key
        self.problem = problem

    @classmethod
    def from_wire(cls, message: str, **fields: Any) -> ActorlockError:
        return cls(str(fields.get("key", "")), str(fields.get("problem", message)))._with_text(message)


class InvalidParameterError(ActorlockError, ValueError):
    """A parameter name or value passed to the API is not acceptable."""

    code = "invalid-parameter"


class InvalidStateError(ActorlockError, RuntimeError):
    """The operation is not valid in the object's current state."""

    code = "invalid-state"


class NotSupportedError(ActorlockError, NotImplementedError):
    """The backend or this build does not implement the operation."""

    code = "not-supported"


# --- locking outcomes -----------------------------------------------------


class LockError(ActorlockError):
    """A lease could not be taken, kept or given back."""

    code = "lock"


class ResourceBusyError(LockError):
    """A resource is held elsewhere in a conflicting mode.

    Attributes:
        resource: the resource key that is busy.
        holders: ``(host, domain)`` pairs of the current holders.
    """

    code = "busy"

    def __init__(self, resource: str, holders: Sequence[tuple[str, str]]) -> None:
        who = ", ".join(f"domain {d} on host {h}" for h, d in holders) or "unknown holder"
        super().__init__(f"resource {resource} is busy: held by {who}")
        self.resource = resource
        self.holders = tuple(holders)

    @classmethod
    def from_wire(cls, message: str, **fields: Any) -> ActorlockError:
        err = cls(str(fields.get("resource", "")), tuple(fields.get("holders", ())))
        return err._with_text(message)


class LeaseLostError(LockError):
    """Leases this host believed it held are gone or no longer valid."""

    code = "lease-lost"

    def __init__(self, message: str, resources: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.resources = tuple(resources)

    @classmethod
    def from_wire(cls, message: str, **fields: Any) -> ActorlockError:
        return cls(message, tuple(fields.get("resources", ())))


class StaleLockStateError(LeaseLostError):
    """A saved lock state no longer matches the lockspace (fencing token moved)."""

    code = "stale-state"


class LockspaceLostError(LockError):
    """This host's liveness in the lockspace expired; it may not acquire."""

    code = "lockspace-lost"


class HostIdInUseError(LockError):
    """Another live host already uses this host id or name in the lockspace."""

    code = "host-id-in-use"


class LeaseRequiredError(LockError):
    """The guest has writable disks but no lease while leases are required."""

    code = "lease-required"


# --- storage --------------------------------------------------------------


class BackendError(ActorlockError):
    """The lease backend failed to carry out an operation."""

    code = "backend"


class LockspaceError(BackendError):
    """The lockspace is missing, unreadable or read-only."""

    code = "lockspace"

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"lockspace {path}: {problem}")
        self.path = path
        self.problem = problem

    @classmethod
    def from_wire(cls, message: str, **fields: Any) -> ActorlockError:
        return cls(str(fields.get("path", "")), str(fields.get("problem", message)))._with_text(message)


class CorruptRecordError(BackendError):
    """A stored record cannot be decoded; nothing was changed."""

    code = "corrupt-record"

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"corrupt record {path}: {problem}")
        self.path = path
        self.problem = problem

    @classmethod
    def from_wire(cls, message: str, **fields: Any) -> ActorlockError:
        return cls(str(fields.get("path", "")), str(fields.get("problem", message)))._with_text(message)


class CorruptStateError(CorruptRecordError):
    """A file in the state_dir cannot be decoded.

    Attributes:
        readable: the domain states that were read fine, for a caller that
            may safely go on without the bad one (after a reboot).
    """

    code = "corrupt-state"

    def __init__(self, path: str, problem: str, readable: Sequence[Any] = ()) -> None:
        super().__init__(path, problem)
        self.readable = tuple(readable)


class BackendTimeoutError(BackendError):
    """The lease backend did not answer within its I/O timeout."""

    code = "backend-timeout"


class EtcdUnavailableError(BackendTimeoutError):
    """No member of the etcd cluster answered within the I/O timeout."""

    code = "etcd-unavailable"


class EtcdRequestError(BackendError):
    """etcd refused a request (a bad request, a missing lease, permissions)."""

    code = "etcd-request"

    def __init__(self, path: str, status: int, message: str) -> None:
        super().__init__(f"etcd {path}: HTTP {status}: {message}")
        self.path = path
        self.status = status
        self.message = message

    @classmethod
    def from_wire(cls, message: str, **fields: Any) -> ActorlockError:
        path, status = str(fields.get("path", "")), int(fields.get("status", 0))
        return cls(path, status, str(fields.get("message", message)))._with_text(message)


# --- guests and actors ----------------------------------------------------


class GuestNotRunningError(ActorlockError):
    """The guest process recorded for a domain is not alive."""

    code = "guest-not-running"


class SupervisorError(ActorlockError):
    """A guest's supervisor did not start it, exited first, or is not available."""

    code = "supervisor"


class ActorStoppedError(ActorlockError, RuntimeError):
    """The actor has stopped; it takes no more messages."""

    code = "actor-stopped"


# --- peers and migration --------------------------------------------------


class PeerError(ActorlockError):
    """A peer coordinator failed, refused or could not be reached."""

    code = "peer"


class PeerUnreachableError(PeerError):
    """No answer from the peer coordinator before the deadline."""

    code = "peer-unreachable"


class PeerRefusedError(PeerError):
    """The peer coordinator answered with a refusal."""

    code = "peer-refused"


class ProtocolError(ActorlockError, ValueError):
    """A message broke the wire format or the protocol's rules."""

    code = "protocol"


class MigrationError(ActorlockError):
    """A migration step failed or is not allowed in the current state."""

    code = "migration"


def error_from_code(code: str, message: str, **fields: Any) -> ActorlockError:
    """Rebuild a local error from a code received on the wire.

    Unknown codes become a plain :class:`ActorlockError`. ``fields`` fill the
    attributes the class carries (``resource=``, ``holders=``...); those not
    given get the class's defaults. The protocol's errors register when
    :mod:`actorlock.protocol` is imported (the codec imports it).
    """
    return _REGISTRY.get(code, ActorlockError).from_wire(message, **fields)


def registered_codes() -> dict[str, type[ActorlockError]]:
    """Every error code and its class, as defined so far."""
    return dict(_REGISTRY)
