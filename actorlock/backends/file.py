"""Lease backend on a directory: a local disk or shared storage such as NFS.

Layout of a lockspace directory ``DIR``::

    DIR/lockspace.json            format version (2) and the random lockspace id
    DIR/hosts/<id>.json           one liveness record per host id
    DIR/hosts/<id>.lock           companion lock file, never replaced
    DIR/leases/<sha256>.lock      lock file holding the lease record of one resource key

``<sha256>`` is the hex SHA-256 of the UTF-8 resource key (libvirt's
indirect lockspace naming: keys may be long paths with any characters).

Every record is one line of JSON: an object with ``format`` (2), ``type``
("lockspace", "host" or "lease"), its fields, and ``checksum``: ``"sha256:"``
followed by the hex SHA-256 of the object without ``checksum`` serialized
with sorted keys, ``(",", ":")`` separators and ASCII escapes (so a record
reformatted by hand still verifies). Lease records name their key, which
must hash to the file name. A record failing any check raises
:class:`~actorlock.errors.CorruptRecordError` and the operation writes
nothing.

Host records and ``lockspace.json`` are replaced, never modified in place:
temporary file, fsync, rename over the record, fsync of the directory.

A lease record lives inside its lock file, which is never replaced, and is
updated in place (docs/lockspace.md argues the safety of each step). The
file holds two slots; each is a 64-byte header (magic ``\\x89ALEASE\\n``,
format, sequence number, payload length, SHA-256 over the header and the
payload) followed by the JSON record, padded to 4 KiB blocks. A write goes
to the slot that does not hold the newest whole record (its checksum holds),
then the file is fdatasynced; a reader takes the whole slot with the highest
sequence. A torn write therefore damages only the older copy. Slot 0 is at offset 0,
the other one at 4 KiB times a power of two, far enough to clear the
record it must not touch (records under 4 KiB: 0 and 4096). An empty file,
or one whose only trace is a torn first write, holds no record; a file
whose slots are present but none whole is corrupt. A record that is not
known to be durable is fdatasynced before its older slot is overwritten.

Writers serialize on the lock files with open-file-description locks
(``F_OFD_SETLKW``), falling back to ``flock`` on kernels without them.
Both belong to the open file description, so two backend instances in one
process exclude each other, and closing some other descriptor of the file
does not drop the lock (POSIX ``lockf`` locks would fail on both counts).
Keys are locked in sorted order, so multi-resource requests cannot deadlock.
Records are read and written through the locked descriptor. Readers that
only list (``records``, ``hosts``) take no lock: a torn or half-copied
newest slot reads as the older one, as a record not yet renamed did.

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
import functools
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
from .base import BackendCapabilities, HostAdvert, holder_fields
from .filemodes import Modes, check_lockspace, resolve_group
from .ioworker import BatchWorker, Job
from .liveness import LivenessObserver, wait_for_id_free
from .mounts import MOUNTINFO, local_lock_option
from .rules import normalize_requests, plan_acquire, plan_release, plan_transfer

__all__ = ["FORMAT_VERSION", "FileLeaseBackend", "lease_file_name"]

T = TypeVar("T")

log = logging.getLogger(__name__)

# 2: lease records inside their lock files, updated in place (1: leases/<sha256>.json, replaced).
FORMAT_VERSION = 2

_META = "lockspace.json"
_HOSTS = "hosts"
_LEASES = "leases"
# A record is one line of JSON: even a disk shared by thousands of domains
# stays far below this; a bigger file is not ours and is not read whole. A
# lease slot (header and record) is held to the same bound.
MAX_RECORD_SIZE = 16 << 20

# A lease slot: magic, format, reserved (0), sequence, payload length,
# reserved (0), then the SHA-256 of those 32 bytes and the payload.
_SLOT_MAGIC = b"\x89ALEASE\n"
_SLOT_HEAD = struct.Struct("<8sIIQII")
_SLOT_HEADER = _SLOT_HEAD.size + 32
_BLOCK = 4096
_MAX_PAYLOAD = MAX_RECORD_SIZE - _SLOT_HEADER
# Slots sit at offset 0 and at 4 KiB x 2^k, each at most MAX_RECORD_SIZE long
# and the second never past MAX_RECORD_SIZE: no lock file of ours is larger.
_MAX_LOCK_FILE = 2 * MAX_RECORD_SIZE
_MAX_SEQUENCE = (1 << 64) - 1
# Lease files whose newest record this backend wrote and synced itself (file
# name stem -> the slot's digest, which covers its sequence): only those are
# known durable without a sync. About 250 bytes each.
_DURABLE_MEMORY = 1 << 16
# Descriptors left for everything else (renewals, sockets, the state store)
# when one operation holds a lock file per resource.
_FD_RESERVE = 64
# Lock files one batch of operations holds at once (one descriptor each): a
# batch of 64 four-disk starts already shares one sync round, more would
# only hold descriptors and make other hosts wait longer for the locks.
_BATCH_LOCKS = 256
# Threads syncing one batch's lease files at once. Even one four-disk
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
# and decides with the locks held (``locked``: lock file path -> its locked
# descriptor, through which the records are read) and returns its answer and
# the records to write, which the batch commits with the other jobs' writes.
_Step = Callable[[threading.Event, Mapping[str, int]], tuple[T, list["_Write"]]]


class _LeaseJob(Job[T]):
    __slots__ = ("create", "locked", "locks", "step")

    def __init__(self, step: _Step[T], locks: Sequence[str], *, create: bool) -> None:
        super().__init__()
        self.step = step
        self.locks = tuple(locks)
        self.create = create  # False: skip missing lock files (release: no record without one)
        self.locked: dict[str, int] = {}


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
        64 hex digits; the record is in ``leases/<stem>.lock``.
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
    if create and modes.gid is None:
        # Nothing to set on a new file: one open whether it exists or not
        # (a batch of starts creates hundreds).
        return open_regular(path, os.O_RDWR | os.O_CREAT, modes.file_mode)
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
    """The whole record file (a host record, ``lockspace.json``), or None when absent.

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


def _write_temp(final: str, data: bytes, modes: Modes) -> str:
    """Write ``data`` durably to a fresh temporary file next to ``final``; returns its path."""
    directory, name = os.path.split(final)
    tmp = os.path.join(directory, f".{name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, modes.file_mode)
    try:
        modes.new_file(fd)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    try:
        os.close(fd)  # NFS reports deferred write errors on close: they must fail the write.
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fdatasync(fd: int) -> None:
    sync = getattr(os, "fdatasync", None) or os.fsync  # macOS has no fdatasync
    sync(fd)


def _replace(
    directory: str, path: str, data: bytes, before: bytes | None, cancel: threading.Event, modes: Modes
) -> None:
    """Replace one host record: temporary file, fsync, rename over ``path``, directory fsync.

    Dropped (raising _Abandoned) if ``cancel`` is set before the rename. If
    the directory sync fails, the record is put back as ``before`` (best
    effort: the storage is failing) and the error raised.
    """
    tmp = _write_temp(path, data, modes)
    try:
        if cancel.is_set():
            raise _Abandoned
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    try:
        _fsync_dir(directory)
    except BaseException:
        _put_back(directory, path, before, modes)
        raise


def _put_back(directory: str, path: str, before: bytes | None, modes: Modes) -> None:
    with contextlib.suppress(OSError):
        if before is None:
            os.unlink(path)
        else:
            os.rename(_write_temp(path, before, modes), path)
    with contextlib.suppress(OSError):
        _fsync_dir(directory)


# --- lease records in their lock files ------------------------------------------------


@attrs.frozen
class _Slot:
    """The newest whole slot of a lease file: where it starts, its sequence, the bytes it spans."""

    offset: int
    seq: int
    span: int
    digest: bytes


@attrs.frozen
class _Write:
    """One lease record to write in place: ``data`` at ``offset`` of the lock file ``path``.

    ``before`` is the newest whole slot read under the lock (None: the file
    held no record); the write never touches it.
    """

    path: str
    stem: str
    offset: int
    slot: bytes
    length: int  # the slot and the zeros after it
    seq: int
    digest: bytes
    before: _Slot | None
    record: LeaseRecord | None = None  # what ``slot`` encodes, kept to skip decoding it again

    @property
    def data(self) -> bytes:
        # Padded when written, not before: a batch of 256 first records would
        # otherwise hold 2 MiB of zeros at once (and keep it, in malloc's arena).
        return self.slot.ljust(self.length, b"\0")


def _span(length: int) -> int:
    """The bytes a slot of ``length`` bytes (header included) occupies: whole 4 KiB blocks."""
    return -(-length // _BLOCK) * _BLOCK


def _slot_position(length: int) -> int:
    """The first slot position past offset 0 (4 KiB times a power of two) at least ``length``."""
    position = _BLOCK
    while position < length:
        position *= 2
    return position


def _slot_offsets(size: int) -> Iterator[int]:
    """Every place a slot may start in a lease file of ``size`` bytes."""
    yield 0
    offset = _BLOCK
    while offset < size:
        yield offset
        offset *= 2


def _pread(fd: int, length: int, offset: int) -> bytes:
    chunks: list[bytes] = []
    while length > 0:
        chunk = os.pread(fd, length, offset)
        if not chunk:
            break
        chunks.append(chunk)
        length -= len(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _pwrite(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def _encode_slot(payload: bytes, seq: int) -> tuple[bytes, bytes]:
    """A slot (header and payload, unpadded) and its digest."""
    head = _SLOT_HEAD.pack(_SLOT_MAGIC, FORMAT_VERSION, 0, seq, len(payload), 0)
    digest = hashlib.sha256(head + payload).digest()
    return head + digest + payload, digest


def _slot_headers(
    read: Callable[[int, int], bytes], size: int
) -> tuple[list[tuple[int, int, int, bytes]], list[str], int]:
    """The slot headers of a file of ``size`` bytes: ``(sequence, offset, length, header)`` each.

    Also what is wrong with the torn ones, and how many traces of a write
    past the first there are: a slot header (or any bytes but zeros) at a
    slot position past offset 0 and past the length slot 0's header claims.
    """
    headers: list[tuple[int, int, int, bytes]] = []
    problems: list[str] = []
    traces = 0
    claimed = 0
    for offset in _slot_offsets(size):
        header = read(offset, _SLOT_HEADER)
        if header[: len(_SLOT_MAGIC)] != _SLOT_MAGIC:
            if offset >= max(claimed, 1) and header.strip(b"\0"):
                traces += 1
                problems.append(f"slot at {offset}: no slot header")
            continue
        traces += offset > 0
        if len(header) < _SLOT_HEADER:
            problems.append(f"slot at {offset}: header cut short")
            continue
        seq, length = _SLOT_HEAD.unpack(header[: _SLOT_HEAD.size])[3:5]
        if offset + _SLOT_HEADER + length > size:
            problems.append(f"slot at {offset}: record of {length} bytes runs past the end of the file")
            continue
        if offset == 0:
            claimed = _SLOT_HEADER + length
        headers.append((seq, offset, length, header))
    return headers, problems, traces


def _read_slots(fd: int, path: str) -> tuple[_Slot | None, bytes | None]:
    """The newest whole slot of a lease file and its record; ``(None, None)`` when it holds none.

    A slot is whole when its checksum holds; a torn one (cut short, or its
    checksum failing) is passed over. The whole slot with the highest
    sequence counts, and must be one this format writes, else the file is
    corrupt: falling back past a whole newer slot could roll the record
    back. No whole slot and no record: the file is empty, or its only trace
    is a torn first write (offset 0 starts with the magic or zeros, and
    nothing but zeros lies at the other slot positions past the length slot
    0's header claims); its writer's caller was never answered.

    Raises:
        CorruptRecordError: the file is larger than a lease file of ours may
            be, its newest whole slot is not of this format, or slots are
            present and none is whole.
    """
    # Both slots of a record under 4 KiB in one read, which also tells the
    # size of such a file (a read of a regular file stops short only at its
    # end): no fstat for the common case.
    head = os.pread(fd, 2 * _BLOCK + 1, 0)
    size = len(head) if len(head) <= 2 * _BLOCK else os.fstat(fd).st_size
    if size > _MAX_LOCK_FILE:
        raise CorruptRecordError(path, f"is larger than {_MAX_LOCK_FILE} bytes: refused")
    if size == 0:
        return None, None

    def read(offset: int, length: int) -> bytes:
        if offset + length <= len(head):
            return head[offset : offset + length]
        return _pread(fd, length, offset)

    headers, problems, traces = _slot_headers(read, size)
    for seq, offset, length, header in sorted(headers, reverse=True):
        payload = read(offset + _SLOT_HEADER, length)
        if hashlib.sha256(header[: _SLOT_HEAD.size] + payload).digest() != header[_SLOT_HEAD.size :]:
            problems.append(f"slot at {offset}: checksum mismatch (torn or edited)")
            continue
        _, version, reserved, _, _, reserved2 = _SLOT_HEAD.unpack(header[: _SLOT_HEAD.size])
        if version != FORMAT_VERSION:
            raise CorruptRecordError(path, f"its newest slot (at {offset}) has unsupported format {version}")
        if reserved or reserved2 or seq == 0 or length > _MAX_PAYLOAD:
            raise CorruptRecordError(path, f"its newest slot (at {offset}) has a malformed header")
        return _Slot(offset, seq, _span(_SLOT_HEADER + length), header[_SLOT_HEAD.size :]), payload
    start = head[: len(_SLOT_MAGIC)]
    if not traces and (start == _SLOT_MAGIC[: len(start)] or not start.strip(b"\0")):
        return None, None
    if not problems:
        problems.append("no slot header at offset 0")
    why = "; ".join(problems)
    raise CorruptRecordError(path, f"holds no valid copy of its lease record ({why}): both slots are damaged")


def _read_unlocked(path: str) -> tuple[_Slot | None, bytes | None]:
    """Read a lease file without its lock (listings): a write under way may tear the newest slot.

    That reads as the older copy; a read finding no valid copy is retried
    before the file is called corrupt.
    """
    try:
        fd = open_regular(path, os.O_RDONLY)
    except FileNotFoundError:
        return None, None
    try:
        for attempt in range(3):
            try:
                return _read_slots(fd, path)
            except CorruptRecordError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")
    finally:
        os.close(fd)


def _read_lease(path: str, stem: str, fd: int | None) -> tuple[_Slot | None, LeaseRecord | None]:
    """The record in lease file ``path`` and the slot it came from, through ``fd`` if locked.

    A valid slot whose record does not decode is corrupt, not skipped: its
    checksum says a writer put it there whole, so falling back to the older
    slot could roll the record back.
    """
    slot, payload = _read_slots(fd, path) if fd is not None else _read_unlocked(path)
    if slot is None or payload is None:
        return None, None
    return slot, _decode_lease(path, stem, payload)


def _plan_write(
    path: str, stem: str, payload: bytes, before: _Slot | None, record: LeaseRecord | None = None
) -> _Write:
    """Where and what to write so that ``before``, the newest whole slot, stays untouched.

    A first record (``before`` None) goes to offset 0, followed by zeros up
    to the end of the place the second slot will take: later writes then
    overwrite allocated blocks and never change the file's size (fdatasync
    has no metadata to commit). Otherwise the record goes to offset 0 when
    it ends before ``before`` starts, else to the first slot position past
    ``before``: 0 and 4096 in turn for records under 4 KiB.

    Raises:
        BackendError: the record is larger than a slot may hold, or the
            file's sequence numbers are used up; nothing was written.
    """
    if len(payload) > _MAX_PAYLOAD:
        raise BackendError(
            f"{path}: the lease record would take {len(payload)} bytes, more than the {_MAX_PAYLOAD} "
            "a lease record may take (too many holders): refused, nothing was written"
        )
    seq = 1 if before is None else before.seq + 1
    if seq > _MAX_SEQUENCE:
        raise BackendError(
            f"{path}: the lease record's sequence number is at its maximum ({_MAX_SEQUENCE}); "
            "no writer gets there in practice, so the file was edited: stop the hosts and repair it"
        )
    slot, digest = _encode_slot(payload, seq)
    span = _span(len(slot))
    if before is None:
        offset, end = 0, 2 * _slot_position(span)
    elif before.offset >= span:
        offset, end = 0, span
    else:
        offset = _slot_position(max(span, before.offset + before.span))
        end = offset + span
    if end > _MAX_LOCK_FILE:  # only behind a slot no writer of ours put there
        raise BackendError(
            f"{path}: no room for the lease record past its slot at {before and before.offset}"
        )
    return _Write(path, stem, offset, slot, end - offset, seq, digest, before, record)


def _run_all(calls: Sequence[Callable[[], None]]) -> None:
    for call in calls:
        call()


def _sync(fds: Sequence[int], syncers: ThreadPoolExecutor | None, directory: str | None = None) -> None:
    """fdatasync every file of ``fds`` (and fsync ``directory``), several at once with ``syncers``.

    One after the other, each sync waits a whole device round trip
    (measured: 256 files 1.3 s one by one on a busy virtual disk whose
    queue takes 100 writers at once at 6,000 fsyncs/s). Raises the first
    failure once every sync has returned.
    """
    calls: list[Callable[[], None]] = [functools.partial(_fdatasync, fd) for fd in fds]
    if directory is not None:
        calls.append(functools.partial(_fsync_dir, directory))
    if syncers is not None and len(calls) > 1:
        # list() waits for every sync and raises the first failure.
        list(syncers.map(_run_all, [calls[i::_SYNCERS] for i in range(min(_SYNCERS, len(calls)))]))
    else:
        _run_all(calls)


def _commit(
    directory: str,
    groups: Sequence[tuple[threading.Event, Sequence[_Write]]],
    fds: Mapping[str, int],
    durable: dict[str, bytes],
    syncers: ThreadPoolExecutor | None = None,
) -> list[bool]:
    """Group commit: write the lease records of several operations in place, with one sync round.

    1. Files whose newest record this backend does not know to be durable
       (``durable``: file name stem -> digest of the slot it wrote and
       synced) are fdatasynced first: the write overwrites the other slot,
       so the newest must survive a crash in the middle of it.
    2. A group whose ``cancel`` is set is dropped: its caller gave up and
       it changes nothing. The writes that follow are the point of no return.
    3. Every remaining record is written into its slot (``fds``: lock file
       path -> its locked descriptor),
    4. then every file written is fdatasynced, several at once, with one
       fsync of ``directory`` when a file got its first record (its entry
       must be durable too) or held a record step 1 had to sync.

    Returns, per group, whether it was committed. A failure in step 3 or 4
    zeroes the header of every slot written (best effort: the storage is
    failing), so that the record each file held before is the newest again,
    and raises: the whole batch failed. Nothing is written before step 3.
    """
    flat = [(i, write) for i, (_, writes) in enumerate(groups) for write in writes]
    unsure = [
        write
        for _, write in flat
        if write.before is not None and durable.get(write.stem) != write.before.digest
    ]
    if unsure:
        _sync([fds[write.path] for write in unsure], syncers)
        for write in unsure:
            assert write.before is not None
            _remember(durable, write.stem, write.before.digest)
    committed = [not cancel.is_set() for cancel, _ in groups]
    todo = [write for i, write in flat if committed[i]]
    if not todo:
        return committed
    started: list[_Write] = []
    try:
        for write in todo:
            started.append(write)
            _pwrite(fds[write.path], write.data, write.offset)
        new_entry = bool(unsure) or any(write.before is None for write in todo)
        _sync([fds[write.path] for write in todo], syncers, directory if new_entry else None)
    except BaseException:
        _invalidate(started, fds)
        raise
    for write in todo:
        _remember(durable, write.stem, write.digest)
    return committed


def _remember(durable: dict[str, bytes], stem: str, digest: bytes) -> None:
    durable.pop(stem, None)
    durable[stem] = digest
    while len(durable) > _DURABLE_MEMORY:
        del durable[next(iter(durable))]  # the oldest: forgetting only costs a sync


def _invalidate(writes: Sequence[_Write], fds: Mapping[str, int]) -> None:
    """Undo a failed batch: zero the header of each slot written, then sync. Best effort.

    Each write went to the slot that did not hold the newest record, so
    with its header gone the record before is the newest again (or, after
    a first write, the file holds no record).
    """
    for write in writes:
        with contextlib.suppress(OSError):
            _pwrite(fds[write.path], bytes(_SLOT_HEADER), write.offset)
    for write in writes:
        with contextlib.suppress(OSError):
            _fdatasync(fds[write.path])


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
    holders = [holder_fields(h) for h in record.holders]
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
    """The lockspace id in ``lockspace.json``.

    Raises:
        LockspaceError: the lockspace has another format version: hosts of
            two versions on one lockspace could each grant the same disk.
        CorruptRecordError: the file is malformed.
    """
    with contextlib.suppress(ValueError, RecursionError):
        value = json.loads(data, parse_constant=_reject_constant)
        version = value.get("format") if isinstance(value, dict) else None
        if isinstance(version, int) and not isinstance(version, bool) and version != FORMAT_VERSION:
            raise LockspaceError(path, _other_format(version))
    fields = _load(path, data, "lockspace")
    lockspace_id = fields.text("id", nonempty=True)
    fields.finish()
    return lockspace_id


def _other_format(version: int) -> str:
    if version > FORMAT_VERSION:
        return (
            f"has lockspace format {version}, newer than this actorlock's {FORMAT_VERSION}: "
            "upgrade actorlock on this host"
        )
    return (
        f"has lockspace format {version}, written by an older actorlock that kept lease records "
        f"in leases/*.json; this version keeps them in the lock files (format {FORMAT_VERSION}), and "
        "hosts of the two versions on one lockspace could each grant the same disk. Stop every "
        "host using this lockspace (their guests lose their leases), then start them all with "
        "a new, empty lockspace directory"
    )


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
    dropped if its batch has not started writing records, and otherwise
    finishes its update (each record whole, old or new). After a :class:`BackendTimeoutError` from
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
        # Worker thread only: lease file stem -> digest of the newest slot this
        # backend wrote and synced there, which needs no sync before its older
        # slot is overwritten (_commit).
        self._durable: dict[str, bytes] = {}
        # Worker thread only: lease file stem -> (slot digest, record) of records
        # this backend wrote. A slot read back whose checksum holds and whose
        # digest is the same holds the very bytes encoded from that record,
        # so it needs no JSON decoding (measured: a fifth of the worker
        # thread's CPU at 100 domains at once went to decoding our own records).
        self._written: dict[str, tuple[bytes, LeaseRecord]] = {}
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
            fds = {path: fd for job, _ in commits for path, fd in job.locked.items()}
            done = _commit(self._leases_dir, groups, fds, self._durable, self._syncers())
        except BaseException as exc:
            for job, _ in commits:
                job.fail(exc)
        else:
            for (job, writes), ok in zip(commits, done, strict=True):
                if not ok:
                    job.fail(_Abandoned())
                    continue
                for write in writes:
                    if write.record is not None:
                        self._written.pop(write.stem, None)
                        self._written[write.stem] = (write.digest, write.record)
            while len(self._written) > _DURABLE_MEMORY:
                del self._written[next(iter(self._written))]  # the oldest: forgetting only costs a decode

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
            job.locked[path] = fd

    def _open_sync(self) -> None:
        if self._lockspace_id is not None:
            return
        root = self.path
        # Check everything before creating anything: no half-made lockspace.
        missing = self._missing_dirs()
        self._modes = modes = Modes(resolve_group(self._group))
        meta = os.path.join(root, _META)
        try:
            check_lockspace(root, (self._hosts_dir, self._leases_dir), meta, modes)
            data = _read_file(meta)
            if data is not None:
                _decode_meta(meta, data)  # a lockspace of another format is refused before any change
            for directory in missing:
                try:
                    os.mkdir(directory, modes.dir_mode)
                except FileExistsError:
                    continue
                modes.new_dir(directory)
            if data is None:
                data = self._create_meta(meta)
            if missing:
                _fsync_dir(root)
        except OSError as exc:
            raise _os_error(root, exc) from exc
        self._lockspace_id = _decode_meta(meta, data)

    def _missing_dirs(self) -> list[str]:
        """Check the root, ``hosts/`` and ``leases/``; returns the subdirectories to create."""
        root = self.path
        try:
            st = os.stat(root)
        except FileNotFoundError:
            raise LockspaceError(root, "does not exist") from None
        except OSError as exc:
            raise LockspaceError(root, f"cannot be examined: {exc.strerror}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise LockspaceError(root, "is not a directory")
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
        return missing

    def _create_meta(self, meta: str) -> bytes:
        tmp = _write_temp(meta, _encode("lockspace", {"id": uuid.uuid4().hex}), self._modes)
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

    def _host_listing(self) -> tuple[list[HostRecord], list[CorruptRecordError]]:
        """Decode every host record; the ones that fail are returned apart, not raised."""
        found: list[HostRecord] = []
        bad: list[CorruptRecordError] = []
        for name in sorted(os.listdir(self._hosts_dir)):
            if name.startswith(".") or name.endswith(".lock"):
                continue
            path = os.path.join(self._hosts_dir, name)
            try:
                if not name.endswith(".json"):
                    raise CorruptRecordError(path, "is not a record (a stray file): skipped")
                data = _read_file(path)
                if data is not None:
                    found.append(_decode_named_host(path, name[: -len(".json")], data))
            except CorruptRecordError as exc:
                bad.append(exc)
        return found, bad

    def _lease_listing(self) -> tuple[list[LeaseRecord], list[CorruptRecordError]]:
        """Every lease record (one per lock file holding one), read without locks; bad files apart.

        Unlocked: a record being written reads as the one before it. On NFS
        a file nobody here has locked may also be served from a stale cache.
        """
        found: list[LeaseRecord] = []
        bad: list[CorruptRecordError] = []
        for name in sorted(os.listdir(self._leases_dir)):
            if name.startswith("."):
                continue
            path = os.path.join(self._leases_dir, name)
            try:
                if not name.endswith(".lock"):
                    raise CorruptRecordError(path, "is not a lease lock file (a stray file): skipped")
                _, record = _read_lease(path, name[: -len(".lock")], None)
                if record is not None:
                    found.append(record)
            except CorruptRecordError as exc:
                bad.append(exc)
        return found, bad

    def _report(self, bad: Sequence[CorruptRecordError]) -> None:
        for exc in bad:
            if (exc.path, exc.problem) not in self._reported:
                self._reported.add((exc.path, exc.problem))
                log.warning("lockspace %s: skipping a bad entry: %s", self.path, exc)

    def _lease_paths(self, key: str) -> tuple[str, str]:
        """The lock file holding ``key``'s record, and its stem."""
        stem = lease_file_name(key)
        return os.path.join(self._leases_dir, stem + ".lock"), stem

    def _host_paths(self, host_id: int) -> tuple[str, str]:
        base = os.path.join(self._hosts_dir, str(host_id))
        return base + ".json", base + ".lock"

    def _read_host_sync(self, host_id: int) -> HostRecord | None:
        path, _ = self._host_paths(host_id)
        data = _read_file(path)
        return None if data is None else _decode_host(path, data, host_id)

    def _read_leases_sync(
        self, keys: Sequence[str], locked: Mapping[str, int]
    ) -> tuple[dict[str, LeaseRecord], dict[str, _Slot | None]]:
        """The records of ``keys`` and the slots they were read from.

        Through the locked descriptor where ``locked`` has one, else without a lock.
        """
        records: dict[str, LeaseRecord] = {}
        slots: dict[str, _Slot | None] = {}
        for key in keys:
            path, stem = self._lease_paths(key)
            fd = locked.get(path)
            slot, payload = _read_slots(fd, path) if fd is not None else _read_unlocked(path)
            slots[key] = slot
            if slot is None or payload is None:
                continue
            known = self._written.get(stem)
            if known is not None and known[0] == slot.digest:
                records[key] = known[1]
            else:
                records[key] = _decode_lease(path, stem, payload)
        return records, slots

    def _lease_writes(
        self, updated: Mapping[str, LeaseRecord], slots: Mapping[str, _Slot | None]
    ) -> list[_Write]:
        return [_plan_write(*self._lease_paths(k), _encode_lease(r), slots[k], r) for k, r in updated.items()]

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
                _replace(self._hosts_dir, path, data, raw, cancel, self._modes)

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
                new = advert.renewal_of(me)
                _replace(self._hosts_dir, path, _encode_host(new), raw, cancel, self._modes)
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
                    _replace(self._hosts_dir, path, _encode_host(left), raw, cancel, self._modes)

        if clean:
            await self._run(leave)
        self._host = None

    async def hosts(self) -> list[HostView]:
        """Every host record, judged by this observer, sorted by host id."""

        read_at = self._observer.now()
        found, bad = await self._submit(lambda cancel, locked: (self._host_listing(), []))
        self._report(bad)
        return [self._observer.observe(record, read_at) for record in sorted(found, key=lambda r: r.id)]

    async def damaged(self) -> list[CorruptRecordError]:
        """Entries of the hosts and leases folders that listings skip: stray, corrupt or special files.

        Each error names its file; ``actorlock leases`` shows them.
        """

        def read(
            cancel: threading.Event, locked: Mapping[str, int]
        ) -> tuple[list[CorruptRecordError], list[_Write]]:
            _, bad_hosts = self._host_listing()
            _, bad_leases = self._lease_listing()
            return bad_hosts + bad_leases, []

        return await self._submit(read)

    async def acquire(self, owner: LeaseOwner, requests: Sequence[LeaseRequest]) -> tuple[Lease, ...]:
        """Take every requested lease or none; see :meth:`LeaseBackend.acquire`."""
        self._require_host()
        incarnation = self._incarnation
        wanted = normalize_requests(requests)
        read_at = self._observer.now()

        def acquire(
            cancel: threading.Event, locked: Mapping[str, int]
        ) -> tuple[tuple[Lease, ...], list[_Write]]:
            records, slots = self._read_leases_sync([req.key for req in wanted], locked)
            alive = self._judge(owner, wanted, records, read_at, cancel)
            updated, leases = plan_acquire(records, owner, incarnation, wanted, lambda h: alive.get(h, True))
            return leases, self._lease_writes(updated, slots)

        return await self._submit(acquire, [self._lease_paths(req.key)[0] for req in wanted])

    async def release(self, owner: LeaseOwner, keys: Sequence[str]) -> None:
        """Drop ``owner``'s entries for ``keys``; others' entries and absent keys are left alone."""
        ordered = sorted(set(keys))

        paths = {self._lease_paths(k)[0]: k for k in ordered}

        def release(cancel: threading.Event, locked: Mapping[str, int]) -> tuple[None, list[_Write]]:
            present = [paths[lock] for lock in sorted(locked)]
            records, slots = self._read_leases_sync(present, locked)
            return None, self._lease_writes(plan_release(records, owner, present), slots)

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

        All the records are rewritten under their locks in one sync round; a
        crash between their writes is rolled forward by a retried transfer.
        """
        self._require_host()
        incarnation = self._incarnation
        keys = sorted({lease.key for lease in leases})

        def transfer(
            cancel: threading.Event, locked: Mapping[str, int]
        ) -> tuple[tuple[Lease, ...], list[_Write]]:
            records, slots = self._read_leases_sync(keys, locked)
            updated, moved = plan_transfer(
                records, source, incarnation, destination, destination_incarnation, leases
            )
            return moved, self._lease_writes(updated, slots)

        # Not abandonable: a commit still running in a thread after we gave up
        # could land after a backend query that concluded it had not.
        locks = [self._lease_paths(k)[0] for k in keys]
        return await self._submit(transfer, locks, abandonable=False)

    async def records(self, keys: Sequence[str] | None = None) -> list[LeaseRecord]:
        """Lease records for ``keys`` (all when None), sorted by key."""
        wanted = None if keys is None else sorted(set(keys))

        def read(
            cancel: threading.Event, locked: Mapping[str, int]
        ) -> tuple[list[LeaseRecord], list[_Write]]:
            if wanted is not None:
                records, _ = self._read_leases_sync(wanted, locked)
                return [records[k] for k in wanted if k in records], []
            found, bad = self._lease_listing()
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
