"""Frozen values shared by the actors, the backends and the wire."""

from __future__ import annotations

import enum
import functools
import json
import os
import posixpath
from collections.abc import Iterable, Sequence

import attrs

from .constants import ResourceFlags, ResourceType
from .errors import InvalidParameterError

MAX_HOST_ID = 2000  # as sanlock: small ids keep per-host records cheap to scan


class LeaseMode(enum.Enum):
    """Exclusive: one holder. Shared: any number of shared holders, no exclusive one."""

    EXCLUSIVE = "exclusive"
    SHARED = "shared"


def _check_host_id(_inst: object, _attr: object, value: int) -> None:
    if not 1 <= value <= MAX_HOST_ID:
        raise InvalidParameterError(f"host id must be in 1..{MAX_HOST_ID}, got {value}")


def _check_nonempty(_inst: object, attr: attrs.Attribute[str], value: str) -> None:
    if not value:
        raise InvalidParameterError(f"{attr.name} must not be empty")
    _check_text(_inst, attr, value)


def _check_text(_inst: object, attr: attrs.Attribute[str], value: str) -> None:
    # Names travel in lease records, state files and peer frames, all UTF-8:
    # a lone surrogate (os.fsdecode of bytes that are not UTF-8) cannot.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidParameterError(
            f"{attr.name} {value!r} is not valid Unicode text "
            f"({exc.reason} at position {exc.start}; file names must be UTF-8)"
        ) from None


@attrs.frozen
class HostIdentity:
    """Who a host is in a lockspace: a unique name and a numeric id."""

    name: str = attrs.field(validator=_check_nonempty)
    id: int = attrs.field(validator=_check_host_id)


@attrs.frozen
class DomainIdentity:
    """A guest as libvirt names it: uuid (the key), name and numeric id."""

    uuid: str = attrs.field(validator=_check_nonempty)
    name: str = attrs.field(default="", validator=_check_text)
    id: int = -1


def _check_disk_path(inst: Resource, attr: attrs.Attribute[str], value: str) -> None:
    _check_nonempty(inst, attr, value)
    if inst.type is ResourceType.DISK and not value.startswith("/"):
        raise InvalidParameterError(
            f"disk path {value!r} must be absolute: a relative path names different files on different hosts"
        )


def normalize_disk_path(path: str) -> str:
    """``path`` without ``//``, ``.`` and ``..`` (lexically, as libvirt's paths are compared).

    Symlinks are not resolved here (no I/O): every host must name a shared
    disk by the same path, or enable ``[locking] resolve_disk_symlinks``.
    """
    normal = posixpath.normpath(path)
    # POSIX lets "//" at the start mean something else; on Linux it does not.
    return "/" + normal.lstrip("/")


def resolve_disk_symlinks(resources: Sequence[Resource]) -> tuple[Resource, ...]:
    """Each disk with its path's symlinks resolved (file system I/O: call from a worker thread)."""
    return tuple(
        attrs.evolve(r, name=os.path.realpath(r.name)) if r.type is ResourceType.DISK else r
        for r in resources
    )


@attrs.frozen
class Resource:
    """One thing a guest registers: a disk path or an explicit lease.

    Readonly resources are never locked; shared ones take a shared lease.
    A disk's path must be absolute; its key is the normalized path.
    """

    type: ResourceType
    name: str = attrs.field(validator=_check_disk_path)
    flags: ResourceFlags = ResourceFlags.NONE
    lockspace: str = attrs.field(default="", validator=_check_text)
    path: str = attrs.field(default="", validator=_check_text)
    offset: int = 0

    # Cached (in slots of their own, outside the fields: equality, hashing and
    # the wire ignore them): every start asks each resource for them again.
    @functools.cached_property
    def key(self) -> str:
        """The lockspace-wide key of the lease protecting this resource."""
        if self.type is ResourceType.DISK:
            return "disk:" + normalize_disk_path(self.name)
        return f"lease:{self.lockspace}/{self.name}"

    @functools.cached_property
    def mode(self) -> LeaseMode:
        return LeaseMode.SHARED if self.flags & ResourceFlags.SHARED else LeaseMode.EXCLUSIVE

    @functools.cached_property
    def readonly(self) -> bool:
        return bool(self.flags & ResourceFlags.READONLY)


def disk(path: str, *, shared: bool = False, readonly: bool = False) -> Resource:
    """A DISK resource, the common case."""
    flags = ResourceFlags.NONE
    if shared:
        flags |= ResourceFlags.SHARED
    if readonly:
        flags |= ResourceFlags.READONLY
    return Resource(ResourceType.DISK, path, flags)


@attrs.frozen
class LeaseOwner:
    """The holder side of a lease: which domain on which host."""

    host: str
    host_id: int
    domain: str
    domain_name: str = ""


@attrs.frozen
class LeaseRequest:
    """Ask for ``key`` in ``mode``; with ``expect_token``, only if nobody took it since."""

    key: str
    mode: LeaseMode
    expect_token: int | None = None


@attrs.frozen
class Lease:
    """A lease a domain holds, with the fencing token its acquisition was given."""

    key: str
    mode: LeaseMode
    token: int


@attrs.frozen
class Holder:
    """One holder entry in a lease record."""

    owner: LeaseOwner
    mode: LeaseMode
    token: int
    incarnation: str = ""  # the holder host's incarnation when it acquired


@attrs.frozen
class LeaseRecord:
    """What the lockspace stores for one resource key.

    ``token`` is the last fencing token issued for the key; it only grows,
    and the record outlives its holders so a token is never issued twice.
    """

    key: str
    token: int = 0
    holders: tuple[Holder, ...] = ()

    def held_by(self, owner: LeaseOwner) -> Holder | None:
        for h in self.holders:
            if h.owner == owner:
                return h
        return None


class HostState(enum.Enum):
    LIVE = "live"
    LEFT = "left"  # left cleanly holding nothing; no need to wait for host_dead


@attrs.frozen
class HostRecord:
    """A host's liveness record in the lockspace.

    Other hosts never compare clocks: they note, on their own monotonic
    clock, when ``(incarnation, counter)`` last changed. ``boot_id`` and
    ``renewed_monotonic`` are read back only by the host that wrote them.
    """

    name: str
    id: int
    incarnation: str
    counter: int
    state: HostState = HostState.LIVE
    boot_id: str = ""
    renewed_monotonic: float = 0.0
    peer_endpoint: str = ""
    public_key: str = ""


@attrs.frozen
class HostView:
    """A host record as one observer judges it."""

    record: HostRecord
    alive: bool
    unchanged_for: float  # seconds on the observer's clock since the record last changed


class MigrationRole(enum.StrEnum):
    """Which end of a migration a host is."""

    SOURCE = "source"
    DESTINATION = "destination"


@attrs.frozen
class LockState:
    """The leases a paused or migrating guest held, as a portable string."""

    leases: tuple[Lease, ...] = ()

    def to_string(self) -> str:
        body = [[lease.key, lease.mode.value, lease.token] for lease in self.leases]
        return json.dumps({"v": 1, "leases": body}, separators=(",", ":"))

    @classmethod
    def from_string(cls, text: str) -> LockState:
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("v") != 1:
                raise ValueError("unknown lock state version")
            leases = tuple(
                Lease(str(key), LeaseMode(mode), _as_int(token)) for key, mode, token in data["leases"]
            )
        except (ValueError, TypeError, KeyError) as exc:
            raise InvalidParameterError(f"malformed lock state {text[:80]!r}: {exc}") from None
        return cls(leases)

    @classmethod
    def of(cls, leases: Iterable[Lease]) -> LockState:
        return cls(tuple(sorted(leases, key=lambda lease: lease.key)))


def _as_int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"expected an integer, got {value!r}")
    return value
