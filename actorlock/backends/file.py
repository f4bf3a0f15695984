"""Lease backend on a directory: a local disk or shared storage such as NFS.

Layout of a lockspace directory ``DIR``::

    DIR/lockspace.json            format version and the random lockspace id
    DIR/hosts/<id>.json           one liveness record per host id
    DIR/hosts/<id>.lock           companion lock file, never replaced
    DIR/leases/<sha256>.json      one lease record per resource key
    DIR/leases/<sha256>.lock      companion lock file, never replaced

``<sha256>`` is the hex SHA-256 of the UTF-8 resource key (libvirt's
indirect lockspace naming: keys may be long paths with any characters).

Every record is one line of JSON: an object with ``format`` (1), ``type``
("lockspace", "host" or "lease"), its fields, and ``checksum``: ``"sha256:"``
followed by the hex SHA-256 of the object without ``checksum`` serialized
with sorted keys, ``(",", ":")`` separators and ASCII escapes (so a record
reformatted by hand still verifies). Lease records name their key, which
must hash to the file name. A record failing any check raises
:class:`~actorlock.errors.CorruptRecordError` and the operation writes
nothing.

A record is replaced, never modified in place: write a temporary file in the
same directory, fsync it, rename it over the record, fsync the directory. A
crash leaves the old record or the new one, plus perhaps a stray ``.*.tmp``
file that readers ignore. One multi-resource acquisition renames several
records: a crash between those renames leaves the host holding some of them,
as a dead incarnation whose entries peers take over after ``host_dead``.

Writers serialize on the companion ``.lock`` files with open-file-description
locks (``F_OFD_SETLKW``), falling back to ``flock`` on kernels without them.
Both belong to the open file description, so two backend instances in one
process exclude each other, and closing some other descriptor of the file
does not drop the lock (POSIX ``lockf`` locks would fail on both counts).
Keys are locked in sorted order, so multi-resource requests cannot deadlock.
Readers that only list (``records``, ``hosts``) take no lock: a rename
exposes a whole record at once.

The lockspace may hold hostile or broken entries (filemodes and safefile
modules): files and directories are private (0600/0700, or 0660/0770 with
a configured group), a lockspace others can write is refused, no symlink
is followed, no open blocks on a FIFO, reads stop at a size cap. Listings
(``hosts``, ``records`` without keys) skip an entry they cannot decode, log
it once and report it by :meth:`FileLeaseBackend.damaged`; an operation on
a resource or host whose record is bad fails naming that file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import math
import os
import resource
import secrets
import stat
import struct
import sys
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import anyio
import anyio.from_thread
import anyio.to_thread
import attrs
from anyio.lowlevel import EventLoopToken

from ..clock import host_clock
from ..errors import (
    BackendError,
    BackendTimeoutError,
    CorruptRecordError,
    HostIdInUseError,
    InvalidParameterError,
    InvalidStateError,
    LockspaceError,
)
from ..model import (
    Holder,
    HostIdentity,
    HostRecord,
    HostState,
    HostView,
    Lease,
    LeaseMode,
    LeaseOwner,
    LeaseRecord,
    LeaseRequest,
)
from ..safefile import open_regular, read_capped
from .base import BackendCapabilities, HostAdvert
from .filemodes import Modes, check_lockspace, resolve_group
from .ioworker import BatchWorker, Job
from .liveness import LivenessObserver, wait_for_id_free
from .mounts import MOUNTINFO, local_lock_option
from .rules import normalize_requests, plan_acquire, plan_release, plan_transfer

__all__ = ["FORMAT_VERSION", "FileLeaseBackend", "lease_file_name"]

T = TypeVar("T")

log = logging.getLogger(__name__)

FORMAT_VERSION = 1

_META = "lockspace.json"
_HOSTS = "hosts"
_LEASES = "leases"
# A record is one line of JSON: even a disk shared by thousands of domains
# stays far below this; a bigger file is not ours and is not read whole.
MAX_RECORD_SIZE = 16 << 20
# Descriptors left for everything else (renewals, sockets, the state store)
# when one operation holds a lock file per resource.
_FD_RESERVE = 64
# Lock files one batch of operations holds at once (one descriptor each): a
# batch of 64 four-disk starts already shares one sync round, more would
# only hold descriptors and make other hosts wait longer for the locks.
_BATCH_LOCKS = 256
# Threads syncing one batch's temporary files at once. Even one four-disk
# operation gains (measured on a busy virtual disk, interleaved runs: p50
# 1.8 ms for four fsyncs at once, 3.1 ms one after the other).
_SYNCERS = 16

# Older Pythons lack the names; the values are fixed in the Linux ABI.
_LINUX = sys.platform.startswith("linux")
_F_OFD_SETLK: int | None = getattr(fcntl, "F_OFD_SETLK", 37 if _LINUX else None)
_F_OFD_SETLKW: int | None = getattr(fcntl, "F_OFD_SETLKW", 38 if _LINUX else None)
# struct flock {short l_type; short l_whence; off_t l_start; off_t l_len; pid_t l_pid;}
# "0q" pads the end to off_t alignment, as the C compiler does; l_pid must be 0 for OFD locks.
_FLOCK_FORMAT = "hhqqi0q"
_LOCK_WHOLE_FILE = struct.pack(_FLOCK_FORMAT, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
_UNLOCK_WHOLE_FILE = struct.pack(_FLOCK_FORMAT, fcntl.F_UNLCK, os.SEEK_SET, 0, 0, 0)


class _LockMethod:
    # Flipped once if the kernel rejects OFD commands (Linux before 3.15).
    ofd = _F_OFD_SETLKW is not None


class _Abandoned(Exception):
    """The awaiting task gave up (cancelled or timed out): do not commit."""


# One lease operation as the I/O worker runs it: ``step(cancel, locked)`` reads
# and decides with the locks held and returns its answer and the records to
# write, which the batch commits together with the other operations' writes.
_Step = Callable[[threading.Event, set[str]], tuple[T, list["_Write"]]]


class _LeaseJob(Job[T]):
    __slots__ = ("create", "locked", "locks", "step")

    def __init__(self, step: _Step[T], locks: Sequence[str], *, create: bool) -> None:
        super().__init__()
        self.step = step
        self.locks = tuple(locks)
        self.create = create  # False: skip missing lock files (release: no record without one)
        self.locked: set[str] = set()


def _release_lock(fd: int) -> None:
    with contextlib.suppress(OSError):
        _unlock(fd)
    with contextlib.suppress(OSError):
        os.close(fd)


def lease_file_name(key: str) -> str:
    """The file name stem of ``key``'s lease record: hex SHA-256 of the key.

    Args:
        key: a resource key such as ``"disk:/var/lib/images/a.qcow2"``.

    Returns:
        64 hex digits; the record is ``leases/<stem>.json``.
    """
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


# --- locking -----------------------------------------------------------------


def _lock(fd: int) -> None:
    if _LockMethod.ofd and _F_OFD_SETLKW is not None:
        try:
            fcntl.fcntl(fd, _F_OFD_SETLKW, _LOCK_WHOLE_FILE)
            return
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            _LockMethod.ofd = False
    fcntl.flock(fd, fcntl.LOCK_EX)


def _unlock(fd: int) -> None:
    # Explicit unlock rather than relying on close: a process forked while we
    # hold the lock shares the open file description and would keep it locked.
    if _LockMethod.ofd and _F_OFD_SETLK is not None:
        fcntl.fcntl(fd, _F_OFD_SETLK, _UNLOCK_WHOLE_FILE)
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)


def _open_lock(path: str, modes: Modes, *, create: bool) -> int:
    try:
        return open_regular(path, os.O_RDWR)
    except FileNotFoundError:
        if not create:
            raise
    try:
        fd = open_regular(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, modes.file_mode)
    except FileExistsError:
        return open_regular(path, os.O_RDWR)  # created meanwhile by another host
    try:
        modes.new_file(fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_descriptors(path: str, count: int) -> None:
    """Refuse up front an operation that would run out of file descriptors.

    Each lock is an open file description and closing it drops the lock, so
    an operation holds one descriptor per resource until it is done; running
    out half-way would also starve the renewals of descriptors.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or count + _FD_RESERVE <= soft // 2:
        return  # the common case, without counting open descriptors
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:
        in_use = 0
    if in_use + count + _FD_RESERVE > soft:
        raise BackendError(
            f"lockspace {os.path.dirname(os.path.dirname(path))}: one operation on {count} resources "
            f"needs {count} open files at once (one lock file each), but RLIMIT_NOFILE is {soft} with "
            f"{in_use} in use and {_FD_RESERVE} kept for renewals: raise the limit or split the request"
        )


@contextlib.contextmanager
def _locked(paths: Sequence[str], modes: Modes, *, create: bool = True) -> Iterator[set[str]]:
    """Hold exclusive locks on ``paths`` (in the given order); yield the ones locked.

    Lock files are opened per operation rather than cached: measured on ext4,
    open+close adds ~10 us to a 4-resource acquisition that spends ~1.6 ms in
    fsync, while a cache would need per-key thread mutexes (OFD locks do not
    exclude threads sharing a descriptor), a bound on open descriptors, and
    care not to close a descriptor an abandoned worker thread still uses.
    With ``create=False`` missing lock files are skipped: no record can exist
    without one.
    """
    fds: list[int] = []
    locked: set[str] = set()
    if len(paths) > 1:
        _check_descriptors(paths[0], len(paths))
    try:
        for path in paths:
            try:
                fd = _open_lock(path, modes, create=create)
            except FileNotFoundError:
                if create:
                    raise
                continue
            fds.append(fd)
            _lock(fd)
            locked.add(path)
        yield locked
    finally:
        for fd in reversed(fds):
            with contextlib.suppress(OSError):
                _unlock(fd)
            with contextlib.suppress(OSError):
                os.close(fd)


# --- file primitives ---------------------------------------------------------


def _read_file(path: str) -> bytes | None:
    """The whole record file, or None when absent.

    Raises:
        CorruptRecordError: ``path`` is a symlink, a directory, a FIFO or
            another special file, or larger than MAX_RECORD_SIZE.
    """
    for attempt in range(3):
        try:
            fd = open_regular(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            return read_capped(fd, path, MAX_RECORD_SIZE)
        except OSError as exc:
            # NFS: the name may have been renamed over on another client after
            # we opened the old inode; opening again finds the new one.
            if exc.errno != errno.ESTALE or attempt == 2:
                raise
        finally:
            os.close(fd)
    raise AssertionError("unreachable")


def _write_temps(
    items: Sequence[tuple[str, bytes]], modes: Modes, syncers: ThreadPoolExecutor | None = None
) -> list[str]:
    """Write each ``data`` durably to a fresh temporary file next to its ``final`` path.

    All files are written before the first fsync, then two or more are synced
    by the ``syncers`` threads at once: one after the other, each fsync
    waits a whole device round trip for its data blocks (measured: 256
    files 1.3 s one by one on a busy virtual disk whose queue takes 100
    writers at once at 6,000 fsyncs/s).
    """
    temps: list[str] = []
    fds: list[int] = []
    try:
        for final, data in items:
            directory, name = os.path.split(final)
            tmp = os.path.join(directory, f".{name}.{secrets.token_hex(6)}.tmp")
            fds.append(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, modes.file_mode))
            temps.append(tmp)
            modes.new_file(fds[-1])
            view = memoryview(data)
            while view:
                view = view[os.write(fds[-1], view) :]
        if syncers is not None and len(fds) > 1:
            # list() waits for every fsync and raises the first failure.
            list(syncers.map(_fsync_all, [fds[i::_SYNCERS] for i in range(min(_SYNCERS, len(fds)))]))
        else:
            _fsync_all(fds)
        while fds:
            # NFS reports deferred write errors on close: they must fail the write.
            os.close(fds.pop())
    except BaseException:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        for tmp in temps:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise
    return temps


def _fsync_all(fds: Sequence[int]) -> None:
    for fd in fds:
        os.fsync(fd)


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_Write = tuple[str, bytes, bytes | None]


def _replace(directory: str, writes: Sequence[_Write], cancel: threading.Event, modes: Modes) -> None:
    """Replace records: ``(path, new bytes, bytes read before or None)`` each.

    All temporary files are written and synced before the first rename, and
    one directory fsync covers every rename. If a rename or the directory
    sync fails, the records already renamed are put back as they were.
    """
    if writes and not _commit(directory, [(cancel, writes)], modes)[0]:
        raise _Abandoned


def _commit(
    directory: str,
    groups: Sequence[tuple[threading.Event, Sequence[_Write]]],
    modes: Modes,
    syncers: ThreadPoolExecutor | None = None,
) -> list[bool]:
    """Group commit: replace the records of several operations with one sync round.

    Every group's temporary files are written, then synced (on a journaling
    file system the first fsync commits the others' data too, so the later
    ones are cheap), then a group whose ``cancel`` is set is dropped (its
    caller gave up: it must not change anything), the others are renamed,
    and one directory fsync covers every rename. Returns, per group, whether
    it was committed. A failure of any rename or of the directory sync puts
    back every record already renamed and raises: the whole batch failed.
    """
    flat = [(i, write) for i, (_, writes) in enumerate(groups) for write in writes]
    if not flat:
        return [not cancel.is_set() for cancel, _ in groups]
    pending = _write_temps([(path, data) for _, (path, data, _) in flat], modes, syncers)
    try:
        committed = [not cancel.is_set() for cancel, _ in groups]
        done: list[tuple[str, bytes | None]] = []
        try:
            for (i, (path, _, before)), tmp in zip(flat, list(pending), strict=True):
                if not committed[i]:
                    continue  # unlinked below with the other leftovers
                os.rename(tmp, path)
                pending.remove(tmp)
                done.append((path, before))
            if done:
                _fsync_dir(directory)
        except BaseException:
            _undo(directory, done, modes)
            raise
    finally:
        for tmp in pending:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return committed


def _undo(directory: str, done: Sequence[tuple[str, bytes | None]], modes: Modes) -> None:
    # Best effort: the storage is already failing, and the caller raises anyway.
    for path, before in reversed(done):
        with contextlib.suppress(OSError):
            if before is None:
                os.unlink(path)
            else:
                (tmp,) = _write_temps([(path, before)], modes)
                os.rename(tmp, path)
    with contextlib.suppress(OSError):
        _fsync_dir(directory)


def _os_error(root: str, exc: OSError) -> BackendError:
    path = exc.filename if isinstance(exc.filename, str) else root
    problems = {
        errno.EACCES: "permission denied",
        errno.EPERM: "operation not permitted",
        errno.EROFS: "is on a read-only file system",
        errno.ENOENT: "does not exist",
        errno.ENOTDIR: "is not a directory",
        errno.ENOSPC: "no space left on device",
        errno.EDQUOT: "disk quota exceeded",
    }
    problem = problems.get(exc.errno or 0)
    if problem is not None:
        return LockspaceError(path, problem)
    if exc.errno in (errno.EMFILE, errno.ENFILE):
        return BackendError(f"lockspace {root}: {path}: {exc.strerror} (RLIMIT_NOFILE is too low)")
    return BackendError(f"lockspace {root}: {path}: {exc.strerror or exc}")


# --- record encoding ---------------------------------------------------------


def _canonical(body: Mapping[str, object]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode(
        "ascii"
    )


def _checksum(body: Mapping[str, object]) -> str:
    return "sha256:" + hashlib.sha256(_canonical(body)).hexdigest()


def _encode(kind: str, fields: Mapping[str, object]) -> bytes:
    # One line of canonical JSON with the checksum appended as the last key:
    # one C-accelerated dump (indent= would use the pure-Python encoder, 3x
    # slower), and still plain JSON for people and for jq.
    body = _canonical({"format": FORMAT_VERSION, "type": kind, **fields})
    digest = hashlib.sha256(body).hexdigest()
    return body[:-1] + b',"checksum":"sha256:' + digest.encode("ascii") + b'"}\n'


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not a number")


class _Fields:
    """Typed, checked access to one decoded JSON object of a record."""

    def __init__(self, path: str, value: object, what: str) -> None:
        if not isinstance(value, dict):
            raise CorruptRecordError(path, f"{what} is not a JSON object")
        self._path = path
        self._what = what
        self._data: dict[str, object] = value
        self._used: set[str] = set()

    def corrupt(self, problem: str) -> CorruptRecordError:
        return CorruptRecordError(self._path, f"{self._what}: {problem}")

    def _get(self, name: str) -> object:
        if name not in self._data:
            raise self.corrupt(f"missing field {name!r}")
        self._used.add(name)
        return self._data[name]

    def text(self, name: str, *, nonempty: bool = False) -> str:
        value = self._get(name)
        if not isinstance(value, str):
            raise self.corrupt(f"field {name!r} must be a string, got {value!r}")
        if nonempty and not value:
            raise self.corrupt(f"field {name!r} is empty")
        return value

    def integer(self, name: str, minimum: int) -> int:
        value = self._get(name)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.corrupt(f"field {name!r} must be an integer, got {value!r}")
        if value < minimum:
            raise self.corrupt(f"field {name!r} must be at least {minimum}, got {value}")
        return value

    def number(self, name: str) -> float:
        value = self._get(name)
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise self.corrupt(f"field {name!r} must be a number, got {value!r}")
        return float(value)

    def array(self, name: str) -> list[object]:
        value = self._get(name)
        if not isinstance(value, list):
            raise self.corrupt(f"field {name!r} must be a list, got {value!r}")
        return value

    def finish(self) -> None:
        extra = sorted(set(self._data) - self._used)
        if extra:
            raise self.corrupt(f"unknown fields {extra}")


def _load(path: str, data: bytes, kind: str) -> _Fields:
    try:
        value = json.loads(data, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise CorruptRecordError(path, f"not valid JSON: {exc}") from None
    fields = _Fields(path, value, f"{kind} record")
    version = fields.integer("format", 0)
    if version != FORMAT_VERSION:
        raise fields.corrupt(f"unsupported format version {version}")
    assert isinstance(value, dict)
    checksum = value.pop("checksum", None)
    if not isinstance(checksum, str):
        raise fields.corrupt("missing checksum")
    if checksum != _checksum(value):
        raise fields.corrupt("checksum mismatch (torn or edited record)")
    if fields.text("type") != kind:
        raise fields.corrupt(f"type is {value['type']!r}, expected {kind!r}")
    return fields


def _encode_lease(record: LeaseRecord) -> bytes:
    holders = [
        {
            "host": h.owner.host,
            "host_id": h.owner.host_id,
            "domain": h.owner.domain,
            "domain_name": h.owner.domain_name,
            "mode": h.mode.value,
            "token": h.token,
            "incarnation": h.incarnation,
        }
        for h in record.holders
    ]
    return _encode("lease", {"key": record.key, "token": record.token, "holders": holders})


def _decode_lease(path: str, stem: str, data: bytes) -> LeaseRecord:
    fields = _load(path, data, "lease")
    key = fields.text("key", nonempty=True)
    if lease_file_name(key) != stem:
        raise fields.corrupt(f"holds key {key!r}, which does not belong in this file")
    token = fields.integer("token", 0)
    holders = tuple(_decode_holder(path, value, token) for value in fields.array("holders"))
    fields.finish()
    _check_consistent(path, holders)
    return LeaseRecord(key, token, holders)


def _check_consistent(path: str, holders: Sequence[Holder]) -> None:
    """Refuse a well-formed record no correct writer produces: trusting it could grant a disk twice."""
    exclusive = [h for h in holders if h.mode is LeaseMode.EXCLUSIVE]
    if exclusive and len(holders) > 1:
        who = ", ".join(f"{h.owner.domain} on {h.owner.host} ({h.mode.value})" for h in holders)
        problem = f"holders contradict each other (an exclusive one among others): {who}"
        raise CorruptRecordError(path, problem)
    entries = [(h.owner, h.incarnation) for h in holders]
    if len(set(entries)) != len(entries):
        raise CorruptRecordError(path, "holders contradict each other: one holder listed twice")


def _decode_holder(path: str, value: object, record_token: int) -> Holder:
    fields = _Fields(path, value, "lease record holder")
    owner = LeaseOwner(
        host=fields.text("host"),
        host_id=fields.integer("host_id", 1),
        domain=fields.text("domain"),
        domain_name=fields.text("domain_name"),
    )
    try:
        mode = LeaseMode(fields.text("mode"))
    except ValueError:
        raise fields.corrupt(f"unknown mode {fields.text('mode')!r}") from None
    token = fields.integer("token", 1)
    if token > record_token:
        raise fields.corrupt(f"token {token} is newer than the record's {record_token}")
    incarnation = fields.text("incarnation")
    fields.finish()
    return Holder(owner, mode, token, incarnation)


def _encode_host(record: HostRecord) -> bytes:
    if not math.isfinite(record.renewed_monotonic):
        raise InvalidParameterError(f"renewed_monotonic must be finite, got {record.renewed_monotonic}")
    return _encode(
        "host",
        {
            "name": record.name,
            "id": record.id,
            "incarnation": record.incarnation,
            "counter": record.counter,
            "state": record.state.value,
            "boot_id": record.boot_id,
            "renewed_monotonic": record.renewed_monotonic,
            "peer_endpoint": record.peer_endpoint,
            "public_key": record.public_key,
        },
    )


def _decode_host(path: str, data: bytes, host_id: int) -> HostRecord:
    fields = _load(path, data, "host")
    found = fields.integer("id", 1)
    if found != host_id:
        raise fields.corrupt(f"holds host id {found}, expected {host_id}")
    name = fields.text("name")
    incarnation = fields.text("incarnation")
    counter = fields.integer("counter", 0)
    try:
        state = HostState(fields.text("state"))
    except ValueError:
        raise fields.corrupt(f"unknown state {fields.text('state')!r}") from None
    record = HostRecord(
        name=name,
        id=found,
        incarnation=incarnation,
        counter=counter,
        state=state,
        boot_id=fields.text("boot_id"),
        renewed_monotonic=fields.number("renewed_monotonic"),
        peer_endpoint=fields.text("peer_endpoint"),
        public_key=fields.text("public_key"),
    )
    fields.finish()
    return record


def _decode_named_host(path: str, stem: str, data: bytes) -> HostRecord:
    if not (stem.isascii() and stem.isdigit()) or stem != str(int(stem)):
        raise CorruptRecordError(path, "file name is not a host id (a stray file): skipped")
    return _decode_host(path, data, int(stem))


def _decode_meta(path: str, data: bytes) -> str:
    fields = _load(path, data, "lockspace")
    lockspace_id = fields.text("id", nonempty=True)
    fields.finish()
    return lockspace_id


def _unwritable(path: str) -> str | None:
    """Why the directory cannot be used for writing, or None if it can."""
    if not os.access(path, os.R_OK):
        return "is not readable (permission denied)"
    if os.access(path, os.W_OK | os.X_OK):
        return None
    try:
        read_only = bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    return "is on a read-only file system" if read_only else "is not writable (permission denied)"


# --- the backend -------------------------------------------------------------


class FileLeaseBackend:
    """One host's handle on a lockspace directory.

    The constructor does no I/O. The directory is checked, and ``hosts/``,
    ``leases/`` and ``lockspace.json`` created inside it if missing, by
    :meth:`open` or else by the first operation; a problem raises
    :class:`~actorlock.errors.LockspaceError` before anything is written.

    Lease operations run their whole locked read-decide-write sequence on
    one long-lived I/O thread, in batches that share one sync round (group
    commit: docs/lockspace.md), so no lock is ever held across an await;
    host records (join, renew, leave) keep their own worker thread. A task
    that is cancelled or hits ``io_timeout`` abandons its operation: it is
    dropped if its batch has not started renaming records, and otherwise
    finishes its (atomic) update. After a :class:`BackendTimeoutError` from
    ``acquire`` the leases may therefore exist; ``release`` is idempotent, so
    releasing them is the safe cleanup (it queues behind the acquisition).

    Args:
        lockspace_dir: an existing directory, local or on shared storage.
        host_dead: seconds a host's record must stay unchanged, as this
            observer sees it, before its leases may be taken over.
        poll_interval: seconds between reads while ``join`` waits for a host
            id to become free.
        clock: this observer's clock, read on the event loop thread only.
        io_timeout: seconds an operation may take before it raises
            :class:`~actorlock.errors.BackendTimeoutError`; None waits forever.
        group: a group name: files are 0660 and directories 0770 in that
            group (hosts running as different users); empty: owner only.
        mountinfo: the mount table read at join to refuse an NFS mount whose
            locks stay local to this client.
    """

    kind = "file"
    capabilities = BackendCapabilities()

    def __init__(
        self,
        lockspace_dir: str | os.PathLike[str],
        *,
        host_dead: float,
        poll_interval: float = 0.1,
        clock: Callable[[], float] = host_clock,
        io_timeout: float | None = None,
        group: str = "",
        mountinfo: str = MOUNTINFO,
    ) -> None:
        if not host_dead > 0:
            raise InvalidParameterError(f"host_dead must be positive, got {host_dead}")
        if not poll_interval >= 0:
            raise InvalidParameterError(f"poll_interval must not be negative, got {poll_interval}")
        if io_timeout is not None and not io_timeout > 0:
            raise InvalidParameterError(f"io_timeout must be positive, got {io_timeout}")
        self.path = os.path.abspath(os.fspath(lockspace_dir))
        self._hosts_dir = os.path.join(self.path, _HOSTS)
        self._leases_dir = os.path.join(self.path, _LEASES)
        # Only ever used on the event loop thread: worker threads hand the
        # records they read to the loop (see _judge) instead of calling it.
        self._observer = LivenessObserver(host_dead, clock)
        self._poll = poll_interval
        self._io_timeout = io_timeout
        self._host: HostIdentity | None = None
        self._incarnation = ""
        self._lockspace_id: str | None = None
        self._closed = False
        self._liveness_limiter: anyio.CapacityLimiter | None = None
        self._group = group
        self._mountinfo = mountinfo
        self._modes = Modes()
        # Lease traffic (not renewals: they keep their own thread, see _liveness).
        self._worker: BatchWorker[_LeaseJob[Any]] = BatchWorker("actorlock-lockspace", self._run_batch)
        self._sync_pool: ThreadPoolExecutor | None = None  # made and used by the worker thread only
        self._step_token: EventLoopToken | None = None  # worker thread only: the running job's loop
        # Entries a listing skipped and logged: each is logged once, not per listing.
        self._reported: set[tuple[str, str]] = set()

    def __repr__(self) -> str:
        return f"<FileLeaseBackend {self.path!r}>"

    # --- plumbing ---

    def _liveness(self) -> anyio.CapacityLimiter:
        # Renewals get their own worker thread: behind a pool saturated by
        # lease traffic (1,000 domains starting at once) a renewal once waited
        # past lease_timeout and the host fenced every guest.
        if self._liveness_limiter is None:
            self._liveness_limiter = anyio.CapacityLimiter(1)
        return self._liveness_limiter

    async def _run(
        self,
        fn: Callable[[threading.Event], T],
        *,
        abandonable: bool = True,
        limiter: anyio.CapacityLimiter | None = None,
    ) -> T:
        """Run ``fn(cancel)`` in a worker thread after opening the lockspace.

        With ``abandonable=False`` the caller waits for the thread whatever
        happens (no io_timeout, cancellation deferred): for operations whose
        outcome must be known before anyone looks at the records again.
        """
        if self._closed:
            raise InvalidStateError("file lease backend is closed")
        cancel = threading.Event()

        def job() -> T:
            self._open_sync()
            return fn(cancel)

        try:
            with self._errors_named():
                if not abandonable:
                    return await anyio.to_thread.run_sync(job, limiter=limiter)
                with anyio.fail_after(self._io_timeout):
                    return await anyio.to_thread.run_sync(job, abandon_on_cancel=True, limiter=limiter)
        finally:
            cancel.set()

    @contextlib.contextmanager
    def _errors_named(self) -> Iterator[None]:
        """A timeout as BackendTimeoutError, an OSError as the backend error naming the file."""
        try:
            yield
        except TimeoutError as exc:
            raise BackendTimeoutError(
                f"lockspace {self.path}: no answer within {self._io_timeout} s"
            ) from exc
        except OSError as exc:
            raise _os_error(self.path, exc) from exc

    async def _submit(
        self, step: _Step[T], locks: Sequence[str] = (), *, create: bool = True, abandonable: bool = True
    ) -> T:
        """Run one lease operation in the I/O worker's next batch; answered after its batch's sync.

        Bounded by io_timeout and abandonable as :meth:`_run` is, except with
        ``abandonable=False``.
        """
        if self._closed:
            raise InvalidStateError("file lease backend is closed")
        job = _LeaseJob(step, locks, create=create)
        with self._errors_named():
            await self._worker.submit(job, bound=self._io_timeout, abandonable=abandonable)
            return job.result()

    def _run_batch(self, jobs: list[_LeaseJob[Any]]) -> list[_LeaseJob[Any]]:
        """The I/O worker's batch: lock, decide, one group commit, unlock; returns the jobs left for later.

        Jobs whose lock files overlap an earlier job's in this batch wait for
        the next one (two descriptions of one lock file exclude each other
        even in one thread), as do jobs behind them on the same files, so
        each file's operations keep their order. All lock files of the batch
        are taken in one sorted order, like one operation's: no deadlock
        with another host's batch or operation.
        """
        try:
            self._open_sync()
        except BaseException as exc:
            for job in jobs:
                job.fail(exc)
            return []
        batch, later = self._select_batch(jobs)
        with contextlib.ExitStack() as unlock:
            self._lock_batch(batch, unlock)
            self._decide_and_commit(batch)
        return later

    def _select_batch(self, jobs: list[_LeaseJob[Any]]) -> tuple[list[_LeaseJob[Any]], list[_LeaseJob[Any]]]:
        """This batch's jobs (no two sharing a lock file, within the descriptor bound) and those left."""
        batch: list[_LeaseJob[Any]] = []
        later: list[_LeaseJob[Any]] = []
        claimed: set[str] = set()
        blocked: set[str] = set()
        for job in jobs:
            paths = set(job.locks)
            if paths & (claimed | blocked) or (batch and len(claimed) + len(paths) > _BATCH_LOCKS):
                later.append(job)
                blocked |= paths
                continue
            try:
                if len(claimed) + len(paths) > 1 and job.locks:
                    _check_descriptors(job.locks[0], len(claimed) + len(paths))
            except BaseException as exc:
                if batch:
                    later.append(job)  # may fit in a batch of its own
                    blocked |= paths
                else:
                    job.fail(exc)
                continue
            batch.append(job)
            claimed |= paths
        return batch, later

    def _decide_and_commit(self, batch: list[_LeaseJob[Any]]) -> None:
        """Under the batch's locks: each job decides, then one group commit makes them durable."""
        commits: list[tuple[_LeaseJob[Any], list[_Write]]] = []
        for job in batch:
            if job.error is not None:
                continue
            if job.cancel.is_set():
                job.fail(_Abandoned())
                continue
            try:
                self._step_token = job.token
                job.value, writes = job.step(job.cancel, job.locked)
            except BaseException as exc:
                job.fail(exc)
                continue
            if writes:
                commits.append((job, writes))
        if not commits:
            return
        try:
            groups = [(job.cancel, w) for job, w in commits]
            done = _commit(self._leases_dir, groups, self._modes, self._syncers())
        except BaseException as exc:
            for job, _ in commits:
                job.fail(exc)
        else:
            for (job, _), ok in zip(commits, done, strict=True):
                if not ok:
                    job.fail(_Abandoned())

    def _syncers(self) -> ThreadPoolExecutor | None:
        # Lease traffic only (renewals write one file and sync it themselves):
        # a pool stuck on hung storage never holds up a renewal. None once
        # closed: a batch still in flight syncs alone rather than leak a pool.
        if self._closed:
            return None
        if self._sync_pool is None:
            self._sync_pool = ThreadPoolExecutor(_SYNCERS, thread_name_prefix="actorlock-fsync")
        return self._sync_pool

    def _lock_batch(self, batch: Sequence[_LeaseJob[Any]], unlock: contextlib.ExitStack) -> None:
        """Take every job's lock files in one sorted order; a file that fails fails only its job."""
        for path, i in sorted((path, i) for i, job in enumerate(batch) for path in job.locks):
            job = batch[i]
            if job.error is not None:
                continue
            try:
                fd = _open_lock(path, self._modes, create=job.create)
            except FileNotFoundError as exc:
                if job.create:
                    job.fail(exc)
                continue
            except BaseException as exc:
                job.fail(exc)
                continue
            unlock.callback(_release_lock, fd)
            try:
                _lock(fd)
            except BaseException as exc:
                job.fail(exc)
                continue
            job.locked.add(path)

    def _open_sync(self) -> None:
        if self._lockspace_id is not None:
            return
        root = self.path
        try:
            st = os.stat(root)
        except FileNotFoundError:
            raise LockspaceError(root, "does not exist") from None
        except OSError as exc:
            raise LockspaceError(root, f"cannot be examined: {exc.strerror}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise LockspaceError(root, "is not a directory")
        # Check everything before creating anything: no half-made lockspace.
        missing: list[str] = []
        for directory in (root, self._hosts_dir, self._leases_dir):
            try:
                # lstat below the root: a symlinked hosts/ or leases/ would
                # lead every write out of the lockspace.
                sub = os.stat(directory) if directory == root else os.lstat(directory)
            except FileNotFoundError:
                missing.append(directory)
                continue
            if stat.S_ISLNK(sub.st_mode):
                raise LockspaceError(directory, "is a symbolic link: refused (never followed)")
            if not stat.S_ISDIR(sub.st_mode):
                raise LockspaceError(directory, "is not a directory")
            problem = _unwritable(directory)
            if problem is not None:
                raise LockspaceError(directory, problem)
        self._modes = modes = Modes(resolve_group(self._group))
        meta = os.path.join(root, _META)
        try:
            check_lockspace(root, (self._hosts_dir, self._leases_dir), meta, modes)
            for directory in missing:
                try:
                    os.mkdir(directory, modes.dir_mode)
                except FileExistsError:
                    continue
                modes.new_dir(directory)
            data = _read_file(meta)
            if data is None:
                data = self._create_meta(meta)
            if missing:
                _fsync_dir(root)
        except OSError as exc:
            raise _os_error(root, exc) from exc
        self._lockspace_id = _decode_meta(meta, data)

    def _create_meta(self, meta: str) -> bytes:
        (tmp,) = _write_temps([(meta, _encode("lockspace", {"id": uuid.uuid4().hex}))], self._modes)
        try:
            # link() fails if the name exists, so racing creators agree on the
            # first complete file; rename would let the last one win.
            os.link(tmp, meta)
        except FileExistsError:
            pass
        except OSError as exc:
            if exc.errno in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise LockspaceError(self.path, "file system does not support hard links") from None
            raise
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        _fsync_dir(self.path)
        data = _read_file(meta)
        if data is None:
            raise LockspaceError(meta, "vanished while the lockspace was being created")
        return data

    def _check_mount_sync(self) -> None:
        found = local_lock_option(self.path, self._mountinfo)
        if found is not None:
            mount_point, option = found
            raise LockspaceError(
                self.path,
                f"is on an NFS mount ({mount_point}) with option {option}: its locks stay local to "
                "this host, so two hosts could both be granted a disk; mount it with network locks",
            )

    def _listing(
        self, directory: str, decode: Callable[[str, str, bytes], T]
    ) -> tuple[list[T], list[CorruptRecordError]]:
        """Decode every record in ``directory``; the ones that fail are returned apart, not raised.

        ``decode(path, stem, data)`` checks the name and the content.
        """
        found: list[T] = []
        bad: list[CorruptRecordError] = []
        for name in sorted(os.listdir(directory)):
            if name.startswith(".") or name.endswith(".lock"):
                continue
            path = os.path.join(directory, name)
            try:
                if not name.endswith(".json"):
                    raise CorruptRecordError(path, "is not a record (a stray file): skipped")
                data = _read_file(path)
                if data is not None:
                    found.append(decode(path, name[: -len(".json")], data))
            except CorruptRecordError as exc:
                bad.append(exc)
        return found, bad

    def _report(self, bad: Sequence[CorruptRecordError]) -> None:
        for exc in bad:
            if (exc.path, exc.problem) not in self._reported:
                self._reported.add((exc.path, exc.problem))
                log.warning("lockspace %s: skipping a bad entry: %s", self.path, exc)

    def _lease_paths(self, key: str) -> tuple[str, str, str]:
        stem = lease_file_name(key)
        base = os.path.join(self._leases_dir, stem)
        return base + ".json", base + ".lock", stem

    def _host_paths(self, host_id: int) -> tuple[str, str]:
        base = os.path.join(self._hosts_dir, str(host_id))
        return base + ".json", base + ".lock"

    def _read_host_sync(self, host_id: int) -> HostRecord | None:
        path, _ = self._host_paths(host_id)
        data = _read_file(path)
        return None if data is None else _decode_host(path, data, host_id)

    def _read_leases_sync(
        self, keys: Sequence[str]
    ) -> tuple[dict[str, LeaseRecord], dict[str, bytes | None]]:
        records: dict[str, LeaseRecord] = {}
        raw: dict[str, bytes | None] = {}
        for key in keys:
            path, _, stem = self._lease_paths(key)
            data = raw[key] = _read_file(path)
            if data is not None:
                records[key] = _decode_lease(path, stem, data)
        return records, raw

    def _lease_writes(
        self, updated: Mapping[str, LeaseRecord], raw: Mapping[str, bytes | None]
    ) -> list[_Write]:
        return [(self._lease_paths(k)[0], _encode_lease(r), raw[k]) for k, r in updated.items()]

    def _judge(
        self,
        owner: LeaseOwner,
        requests: Sequence[LeaseRequest],
        records: Mapping[str, LeaseRecord],
        read_at: float,
        cancel: threading.Event,
    ) -> dict[Holder, bool]:
        """Liveness of the holders plan_acquire may ask about.

        Runs in the worker thread with the lease locks held. The host records
        are read here, after the lease records, and judged on the event loop
        (the observer is not thread-safe) as of ``read_at``: the loop's clock
        sampled before this operation was dispatched, so before these reads.
        Waiting for locks, the reads and any stall before the judgement only
        make the record look younger, never older (liveness module).
        """
        wanted: list[Holder] = []
        for req in requests:
            record = records.get(req.key)
            if record is None:
                continue
            # Only our current incarnation's entry is ours; an older one of the
            # same owner must be judged like anybody else's (it is dead).
            mine = [h for h in record.holders if h.owner == owner and h.incarnation == self._incarnation]
            if mine and mine[0].mode is req.mode:
                continue
            wanted.extend(h for h in record.holders if h not in mine)
        if not wanted:
            return {}
        host_records: dict[int, HostRecord | None] = {}
        pairs: list[tuple[Holder, HostRecord | None]] = []
        for holder in wanted:
            host_id = holder.owner.host_id
            if host_id not in host_records:
                host_records[host_id] = self._read_host_sync(host_id)
            pairs.append((holder, host_records[host_id]))
        if cancel.is_set():
            raise _Abandoned
        # The loop of the job being run (the worker thread may have been started by an earlier one).
        return anyio.from_thread.run_sync(self._judge_on_loop, pairs, read_at, token=self._step_token)

    def _judge_on_loop(
        self, pairs: Sequence[tuple[Holder, HostRecord | None]], read_at: float
    ) -> dict[Holder, bool]:
        return {holder: self._observer.holder_alive(holder, record, read_at) for holder, record in pairs}

    # --- LeaseBackend ---

    async def open(self) -> None:
        """Check the lockspace directory and create its layout if missing.

        Raises:
            LockspaceError: the directory is missing, not a directory, or not
                writable; nothing was created.
            CorruptRecordError: ``lockspace.json`` is malformed.
        """
        await self._submit(lambda cancel, locked: (None, []))

    async def lockspace_id(self) -> str:
        """The random id stored in ``lockspace.json`` when the lockspace was created."""
        if self._lockspace_id is None:
            await self.open()
        assert self._lockspace_id is not None
        return self._lockspace_id

    def _require_host(self) -> HostIdentity:
        if self._host is None:
            raise InvalidStateError("backend has not joined the lockspace")
        return self._host

    async def join(self, host: HostIdentity, incarnation: str, advert: HostAdvert) -> HostRecord | None:
        """Write this host's liveness record; see :meth:`LeaseBackend.join`."""

        async def read() -> HostRecord | None:
            return await self._run(lambda cancel: self._read_host_sync(host.id), limiter=self._liveness())

        await self._run(lambda cancel: self._check_mount_sync())
        previous = await wait_for_id_free(read, incarnation, self._observer, self._poll)
        record = HostRecord(
            name=host.name,
            id=host.id,
            incarnation=incarnation,
            counter=previous.counter + 1 if previous is not None else 1,
            boot_id=advert.boot_id,
            renewed_monotonic=advert.renewed_monotonic,
            peer_endpoint=advert.peer_endpoint,
            public_key=advert.public_key,
        )
        data = _encode_host(record)

        def swap(cancel: threading.Event) -> None:
            path, lock = self._host_paths(host.id)
            with _locked([lock], self._modes):
                raw = _read_file(path)
                current = None if raw is None else _decode_host(path, raw, host.id)
                # We judged ``previous``; anything else means another host
                # wrote the record meanwhile and is using the id.
                if current != previous:
                    who = "" if current is None else f" by {current.name!r} ({current.incarnation})"
                    raise HostIdInUseError(f"host id {host.id} was written{who} while joining")
                _replace(self._hosts_dir, [(path, data, raw)], cancel, self._modes)

        await self._run(swap, limiter=self._liveness())
        self._host, self._incarnation = host, incarnation
        return previous

    async def renew(self, advert: HostAdvert) -> HostRecord:
        """Rewrite this host's record with a bumped counter.

        Raises:
            InvalidStateError: not joined, or another incarnation took the id.
        """
        host = self._require_host()
        incarnation = self._incarnation

        def renew(cancel: threading.Event) -> HostRecord:
            path, lock = self._host_paths(host.id)
            with _locked([lock], self._modes):
                raw = _read_file(path)
                me = None if raw is None else _decode_host(path, raw, host.id)
                if me is None or me.incarnation != incarnation:
                    now = "no record" if me is None else f"incarnation {me.incarnation}"
                    raise InvalidStateError(f"host id {host.id} was taken over ({now})")
                new = attrs.evolve(
                    me,
                    counter=me.counter + 1,
                    state=HostState.LIVE,
                    boot_id=advert.boot_id,
                    renewed_monotonic=advert.renewed_monotonic,
                    peer_endpoint=advert.peer_endpoint,
                    public_key=advert.public_key,
                )
                _replace(self._hosts_dir, [(path, _encode_host(new), raw)], cancel, self._modes)
            return new

        return await self._run(renew, limiter=self._liveness())

    async def leave(self, *, clean: bool) -> None:
        """Stop being a member; ``clean`` marks the record LEFT."""
        host = self._host
        if host is None:
            return
        incarnation = self._incarnation

        def leave(cancel: threading.Event) -> None:
            path, lock = self._host_paths(host.id)
            with _locked([lock], self._modes):
                raw = _read_file(path)
                me = None if raw is None else _decode_host(path, raw, host.id)
                if me is not None and me.incarnation == incarnation:
                    left = attrs.evolve(me, counter=me.counter + 1, state=HostState.LEFT)
                    _replace(self._hosts_dir, [(path, _encode_host(left), raw)], cancel, self._modes)

        if clean:
            await self._run(leave)
        self._host = None

    async def hosts(self) -> list[HostView]:
        """Every host record, judged by this observer, sorted by host id."""

        read_at = self._observer.now()
        found, bad = await self._submit(
            lambda cancel, locked: (self._listing(self._hosts_dir, _decode_named_host), [])
        )
        self._report(bad)
        return [self._observer.observe(record, read_at) for record in sorted(found, key=lambda r: r.id)]

    async def damaged(self) -> list[CorruptRecordError]:
        """Entries of the hosts and leases folders that listings skip: stray, corrupt or special files.

        Each error names its file; ``actorlock leases`` shows them.
        """

        def read(cancel: threading.Event, locked: set[str]) -> tuple[list[CorruptRecordError], list[_Write]]:
            _, bad_hosts = self._listing(self._hosts_dir, _decode_named_host)
            _, bad_leases = self._listing(self._leases_dir, _decode_lease)
            return bad_hosts + bad_leases, []

        return await self._submit(read)

    async def acquire(self, owner: LeaseOwner, requests: Sequence[LeaseRequest]) -> tuple[Lease, ...]:
        """Take every requested lease or none; see :meth:`LeaseBackend.acquire`."""
        self._require_host()
        incarnation = self._incarnation
        wanted = normalize_requests(requests)
        read_at = self._observer.now()

        def acquire(cancel: threading.Event, locked: set[str]) -> tuple[tuple[Lease, ...], list[_Write]]:
            records, raw = self._read_leases_sync([req.key for req in wanted])
            alive = self._judge(owner, wanted, records, read_at, cancel)
            updated, leases = plan_acquire(records, owner, incarnation, wanted, lambda h: alive.get(h, True))
            return leases, self._lease_writes(updated, raw)

        return await self._submit(acquire, [self._lease_paths(req.key)[1] for req in wanted])

    async def release(self, owner: LeaseOwner, keys: Sequence[str]) -> None:
        """Drop ``owner``'s entries for ``keys``; others' entries and absent keys are left alone."""
        ordered = sorted(set(keys))

        paths = {self._lease_paths(k)[1]: k for k in ordered}

        def release(cancel: threading.Event, locked: set[str]) -> tuple[None, list[_Write]]:
            present = [paths[lock] for lock in sorted(locked)]
            records, raw = self._read_leases_sync(present)
            return None, self._lease_writes(plan_release(records, owner, present), raw)

        if ordered:
            await self._submit(release, list(paths), create=False)

    async def transfer(
        self,
        source: LeaseOwner,
        destination: LeaseOwner,
        destination_incarnation: str,
        leases: Sequence[Lease],
    ) -> tuple[Lease, ...]:
        """Move ``leases`` from ``source`` to ``destination`` atomically; see :meth:`LeaseBackend.transfer`.

        All the records are rewritten under their locks in one directory
        sync; a crash between renames is rolled forward by a retried transfer.
        """
        self._require_host()
        incarnation = self._incarnation
        keys = sorted({lease.key for lease in leases})

        def transfer(cancel: threading.Event, locked: set[str]) -> tuple[tuple[Lease, ...], list[_Write]]:
            records, raw = self._read_leases_sync(keys)
            updated, moved = plan_transfer(
                records, source, incarnation, destination, destination_incarnation, leases
            )
            return moved, self._lease_writes(updated, raw)

        # Not abandonable: a commit still running in a thread after we gave up
        # could land after a backend query that concluded it had not.
        locks = [self._lease_paths(k)[1] for k in keys]
        return await self._submit(transfer, locks, abandonable=False)

    async def records(self, keys: Sequence[str] | None = None) -> list[LeaseRecord]:
        """Lease records for ``keys`` (all when None), sorted by key."""
        wanted = None if keys is None else sorted(set(keys))

        def read(cancel: threading.Event, locked: set[str]) -> tuple[list[LeaseRecord], list[_Write]]:
            if wanted is not None:
                records, _ = self._read_leases_sync(wanted)
                return [records[k] for k in wanted if k in records], []
            found, bad = self._listing(self._leases_dir, _decode_lease)
            skipped.extend(bad)
            return sorted(found, key=lambda r: r.key), []

        skipped: list[CorruptRecordError] = []
        try:
            return await self._submit(read)
        finally:
            self._report(skipped)

    async def aclose(self) -> None:
        """Refuse further operations. Idempotent; no descriptor outlives an operation."""
        self._closed = True
        pool, self._sync_pool = self._sync_pool, None
        if pool is not None:
            pool.shutdown(wait=False)  # never waits for storage: a batch in flight finishes alone
