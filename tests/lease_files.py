"""Lease records inside their lock files, as docs/lockspace.md documents them; and crashes while writing them.

The slot format is written out here from the documentation, not imported
from the backend, so a file built here checks that the documented format is
the real one. :func:`crash_while_writing` is the crash harness of the file
backend: a child process joins a lockspace and dies at a chosen point of a
lease write, including in the middle of one (a torn slot).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import attrs

from actorlock.backends.file import FORMAT_VERSION

MAGIC = b"\x89ALEASE\n"
# magic, format, reserved, sequence, payload length, reserved; then SHA-256 of those 32 bytes and the payload.
HEAD = struct.Struct("<8sIIQII")
HEADER = HEAD.size + 32
BLOCK = 4096
CRASH_EXIT = 17


def lease_lock(directory: Path, key: str) -> Path:
    """The lock file holding ``key``'s lease record in the lockspace ``directory``."""
    return directory / "leases" / f"{hashlib.sha256(key.encode()).hexdigest()}.lock"


def slot(payload: bytes, seq: int, *, version: int = FORMAT_VERSION) -> bytes:
    """One slot as documented: header and payload, not padded."""
    head = HEAD.pack(MAGIC, version, 0, seq, len(payload), 0)
    return head + hashlib.sha256(head + payload).digest() + payload


def padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % BLOCK)


def write_at(path: Path, data: bytes, offset: int) -> None:
    """``data`` at ``offset`` of ``path`` (created if missing), the rest of the file left alone."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def write_slot(path: Path, payload: bytes, *, seq: int, offset: int = 0) -> None:
    """Put one valid slot, padded to whole 4 KiB blocks, at ``offset`` of ``path``."""
    write_at(path, padded(slot(payload, seq)), offset)


def put_record(path: Path, payload: bytes, *, seq: int = 1) -> None:
    """Make ``path`` hold just ``payload`` in slot 0, as a first write leaves it."""
    path.write_bytes(b"")
    write_slot(path, payload, seq=seq)


@attrs.frozen
class SlotView:
    """A slot header found in a lease file, and whether its checksum holds."""

    offset: int
    seq: int
    valid: bool
    payload: bytes


def slots(path: Path) -> list[SlotView]:
    """Every slot header (magic found) at the documented positions: 0 and 4 KiB x 2^k."""
    data = path.read_bytes()
    found: list[SlotView] = []
    offsets = [0]
    offset = BLOCK
    while offset < len(data):
        offsets.append(offset)
        offset *= 2
    for offset in offsets:
        header = data[offset : offset + HEADER]
        if len(header) < HEADER or header[:8] != MAGIC:
            continue
        _, _, _, seq, length, _ = HEAD.unpack(header[: HEAD.size])
        payload = data[offset + HEADER : offset + HEADER + length]
        valid = hashlib.sha256(header[: HEAD.size] + payload).digest() == header[HEAD.size :]
        found.append(SlotView(offset, seq, valid and len(payload) == length, payload))
    return found


def newest(path: Path) -> SlotView | None:
    """The valid slot with the highest sequence, or None."""
    valid = [s for s in slots(path) if s.valid]
    return max(valid, key=lambda s: s.seq) if valid else None


def newest_payload(path: Path) -> bytes | None:
    found = newest(path)
    return None if found is None else found.payload


def lease_payloads(directory: Path) -> dict[str, bytes | None]:
    """The newest record of every lease file, by file name: what a byte snapshot of .json records was."""
    leases = directory / "leases"
    return {p.name: newest_payload(p) for p in sorted(leases.iterdir()) if p.name.endswith(".lock")}


# --- the crash harness -------------------------------------------------------------

CRASHER = """
import json, os, sys
import anyio
from actorlock.backends.base import HostAdvert
from actorlock.backends.file import FileLeaseBackend
from actorlock.model import HostIdentity, LeaseMode, LeaseOwner, LeaseRequest

directory, fault, operation = sys.argv[1], sys.argv[2], sys.argv[5]
nth, keep = int(sys.argv[3]), int(sys.argv[4])
keys = json.loads(sys.argv[6])
host = HostIdentity("crasher", 3)
owner = LeaseOwner(host.name, host.id, "vm")
real_pwrite, real_sync = os.pwrite, os.fdatasync
count = {"pwrite": 0, "sync": 0}

def pwrite(fd, data, offset):
    n = count["pwrite"]
    count["pwrite"] += 1
    if n == nth and fault == "before-write":
        os._exit(EXIT)
    if n == nth and fault == "torn-write":
        # The first `keep` bytes reach the file (negative: all of the slot but
        # its last -keep bytes), then the machine is gone.
        data = bytes(data)
        cut = keep if keep >= 0 else HEADER + int.from_bytes(data[24:28], "little") + keep
        real_pwrite(fd, data[:cut], offset)
        os._exit(EXIT)
    return real_pwrite(fd, data, offset)

def fdatasync(fd):
    n = count["sync"]
    count["sync"] += 1
    if n == nth and fault == "before-sync":
        os._exit(EXIT)
    real_sync(fd)

async def main():
    b = FileLeaseBackend(directory, host_dead=60)
    await b.join(host, "inc-crasher", HostAdvert())
    os.pwrite, os.fdatasync = pwrite, fdatasync
    if operation == "acquire":
        await b.acquire(owner, [LeaseRequest(k, LeaseMode.EXCLUSIVE) for k in keys])
    else:
        await b.release(owner, keys)
    print("finished without crashing", flush=True)

anyio.run(main)
""".replace("EXIT", str(CRASH_EXIT)).replace("HEADER", str(HEADER))

# Where the harness kills the writer.
FAULTS = ("before-write", "torn-write", "before-sync")


def crash_while_writing(
    directory: Path,
    keys: Sequence[str],
    fault: str,
    nth: int,
    *,
    keep: int = 0,
    operation: str = "acquire",
    timeout: float = 20.0,
) -> subprocess.CompletedProcess[str]:
    """Host "crasher" (id 3) runs ``operation`` on ``keys`` and dies at its ``nth`` lease write or sync.

    ``fault``: ``before-write`` (the nth slot write never starts),
    ``torn-write`` (only its first ``keep`` bytes reach the file, or with a
    negative ``keep`` all of the slot but its last ``-keep`` bytes: a write
    torn by a crash), ``before-sync`` (every slot written, the process dies
    before the nth fdatasync). The child exits with :data:`CRASH_EXIT`.
    """
    if fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r} (known: {', '.join(FAULTS)})")
    return subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(CRASHER),
            str(directory),
            fault,
            str(nth),
            str(keep),
            operation,
            json.dumps(list(keys)),
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
