"""The file lease backend: processes racing, corrupt records, bad lockspaces, crashes."""

from __future__ import annotations

import errno
import fcntl
import functools
import hashlib
import json
import os
import select
import shutil
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from actorlock.backends import file as file_backend
from actorlock.backends.base import BackendCapabilities, HostAdvert, LeaseBackend
from actorlock.backends.file import FORMAT_VERSION, FileLeaseBackend, lease_file_name
from actorlock.errors import (
    BackendError,
    BackendTimeoutError,
    CorruptRecordError,
    InvalidParameterError,
    InvalidStateError,
    LockspaceError,
    ResourceBusyError,
)
from actorlock.model import HostIdentity, LeaseMode, LeaseOwner, LeaseRecord, LeaseRequest

from .lease_files import (
    BLOCK,
    CRASH_EXIT,
    HEAD,
    HEADER,
    MAGIC,
    crash_while_writing,
    lease_lock,
    lease_payloads,
    newest,
    newest_payload,
    put_record,
    slots,
)

HOST_DEAD = 60.0
PROCESS_TIMEOUT = 20.0

A = HostIdentity("host-a", 1)
B = HostIdentity("host-b", 2)
OWNER_A = LeaseOwner(A.name, A.id, "vm-a")
OWNER_B = LeaseOwner(B.name, B.id, "vm-b")


def excl(key: str) -> LeaseRequest:
    return LeaseRequest(key, LeaseMode.EXCLUSIVE)


def backend(directory: Path, **kwargs: Any) -> FileLeaseBackend:
    return FileLeaseBackend(directory, host_dead=HOST_DEAD, poll_interval=0.01, **kwargs)


async def joined(directory: Path, host: HostIdentity, **kwargs: Any) -> FileLeaseBackend:
    b = backend(directory, **kwargs)
    await b.join(host, f"inc-{host.name}", HostAdvert())
    return b


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file's bytes: records, temporary files, lock files holding lease records.

    Empty lock files hold nothing: an operation that fails may leave one.
    """
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and (p.stat().st_size or not p.name.endswith(".lock"))
    }


def names(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def signed(body: dict[str, Any]) -> bytes:
    """A record with the checksum the module documents, whatever its fields."""
    body = {k: v for k, v in body.items() if k != "checksum"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    body["checksum"] = "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()
    return json.dumps(body, indent=2).encode()


def run_python(script: str, *args: str, prefix: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*(prefix or []), sys.executable, "-c", textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
        check=False,
    )


def test_backend_satisfies_the_protocol(tmp_path: Path) -> None:
    b = backend(tmp_path)
    assert isinstance(b, LeaseBackend)
    assert b.kind == "file"
    assert b.capabilities == BackendCapabilities()


@pytest.mark.parametrize(
    "kwargs",
    [{"host_dead": 0}, {"host_dead": 1, "poll_interval": -1}, {"host_dead": 1, "io_timeout": 0}],
)
def test_bad_parameters_are_refused(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidParameterError):
        FileLeaseBackend(tmp_path, **kwargs)


# --- two processes on one lockspace -----------------------------------------

RACER = """
import json, sys
import anyio
from actorlock.backends.base import HostAdvert
from actorlock.backends.file import FileLeaseBackend
from actorlock.errors import ResourceBusyError
from actorlock.model import HostIdentity, LeaseMode, LeaseOwner, LeaseRequest

directory, index, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
host = HostIdentity(f"proc-{index}", index)
owner = LeaseOwner(host.name, host.id, "vm")
# Both request b-N; a-N and c-N are wanted by one process each.
multi = ["a", "b"] if index == 1 else ["c", "b"]

async def attempt(b, keys):
    try:
        await b.acquire(owner, [LeaseRequest(k, LeaseMode.EXCLUSIVE) for k in keys])
    except ResourceBusyError as exc:
        return [list(h) for h in exc.holders]
    return "won"

async def main():
    b = FileLeaseBackend(directory, host_dead=60)
    await b.join(host, f"inc-{index}", HostAdvert())
    print("ready", flush=True)
    await anyio.to_thread.run_sync(sys.stdin.readline)
    results = []
    for n in range(rounds):
        solo = await attempt(b, [f"solo-{n}"])
        both = await attempt(b, [f"{k}-{n}" for k in multi])
        results.append({"solo": solo, "multi": both})
    print(json.dumps(results), flush=True)
    await b.aclose()

anyio.run(main)
"""


def _readline(proc: subprocess.Popen[bytes], deadline: float) -> bytes:
    assert proc.stdout is not None
    line = b""
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        ready, _, _ = select.select([proc.stdout], [], [], max(remaining, 0))
        if not ready:
            raise AssertionError("child process did not answer in time")
        chunk = os.read(proc.stdout.fileno(), 1 << 16)
        if not chunk:
            raise AssertionError(f"child process exited early: {line!r}")
        line += chunk
    return line


def test_two_processes_race_and_exactly_one_wins_each_round(tmp_path: Path) -> None:
    rounds = 25
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(tmp_path), str(i), str(rounds)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i in (1, 2)
    ]
    try:
        deadline = time.monotonic() + PROCESS_TIMEOUT
        for proc in procs:
            assert _readline(proc, deadline) == b"ready\n"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
        outputs = [proc.communicate(timeout=PROCESS_TIMEOUT) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err.decode()
    results = [json.loads(out) for out, _ in outputs]

    async def on_disk() -> dict[str, LeaseRecord]:
        reader = backend(tmp_path)
        return {r.key: r for r in await reader.records()}

    records = anyio.run(on_disk)
    names = {1: ["proc-1", "vm"], 2: ["proc-2", "vm"]}
    for n in range(rounds):
        for kind in ("solo", "multi"):
            outcome = {i: results[i - 1][n][kind] for i in (1, 2)}
            winners = [i for i, o in outcome.items() if o == "won"]
            assert len(winners) == 1, f"round {n} {kind}: {outcome}"
            (loser,) = {1, 2} - set(winners)
            assert outcome[loser] == [names[winners[0]]], f"loser of round {n} {kind} saw {outcome[loser]}"
        solo_holder = records[f"solo-{n}"].holders[0].owner.host_id
        assert solo_holder == next(i for i in (1, 2) if results[i - 1][n]["solo"] == "won")
        multi_winner = next(i for i in (1, 2) if results[i - 1][n]["multi"] == "won")
        assert [h.owner.host_id for h in records[f"b-{n}"].holders] == [multi_winner]
        # All or nothing: the loser's other key was never written.
        assert (f"a-{n}" in records) == (multi_winner == 1)
        assert (f"c-{n}" in records) == (multi_winner == 2)


@pytest.mark.anyio
async def test_flock_fallback_still_excludes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(file_backend._LockMethod, "ofd", False)
    a, b = await joined(tmp_path, A), await joined(tmp_path, B)
    won: list[str] = []
    for n in range(5):

        async def race(who: FileLeaseBackend, owner: LeaseOwner, key: str) -> None:
            try:
                await who.acquire(owner, [excl(key)])
            except ResourceBusyError:
                return
            won.append(key)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(race, a, OWNER_A, f"k{n}")
                tg.start_soon(race, b, OWNER_B, f"k{n}")
    assert won == [f"k{n}" for n in range(5)]


# --- corrupt records -----------------------------------------------------------


def _valid(key: str = "bad") -> dict[str, Any]:
    holder = {
        "host": "host-a",
        "host_id": 1,
        "domain": "vm-a",
        "domain_name": "",
        "mode": "exclusive",
        "token": 3,
        "incarnation": "inc-host-a",
    }
    return {"format": FORMAT_VERSION, "type": "lease", "key": key, "token": 3, "holders": [holder]}


def _edited(**changes: Any) -> bytes:
    body = _valid()
    body.update(changes)
    return signed(body)


def _holder_edited(**changes: Any) -> bytes:
    body = _valid()
    body["holders"][0].update(changes)
    return signed(body)


def _unsigned_edit() -> bytes:
    record = json.loads(signed(_valid()))
    record["token"] = 4
    return json.dumps(record).encode()


def _without(field: str) -> bytes:
    body = _valid()
    del body[field]
    return signed(body)


CORRUPTIONS = {
    "garbage": b"\x00\xff this is not json",
    "empty": b"",
    "torn": signed(_valid())[:40],
    "not-an-object": b"[1, 2]",
    "wrong-key": signed(_valid("some-other-key")),
    "bad-checksum": _unsigned_edit(),
    "no-checksum": json.dumps(_valid()).encode(),
    "token-as-string": _edited(token="3"),
    "token-as-bool": _edited(token=True),
    "negative-token": _edited(token=-1),
    "holders-not-list": _edited(holders={"a": 1}),
    "missing-holders": _without("holders"),
    "unknown-field": _edited(extra=1),
    "future-format": _edited(format=FORMAT_VERSION + 1),
    "old-format": _edited(format=1),
    "wrong-type": _edited(type="host"),
    "bad-mode": _holder_edited(mode="sideways"),
    "host-id-as-float": _holder_edited(host_id=1.0),
    "holder-token-ahead": _holder_edited(token=9),
    "nan": signed(_valid()).replace(b'"token": 3,', b'"token": NaN,', 1),
}


def _flip(data: bytearray, offset: int) -> None:
    data[offset + HEAD.size] ^= 0xFF  # the first checksum byte


def _both_torn(data: bytearray) -> None:
    _flip(data, 0)
    _flip(data, 4096)


def _slot_zero_torn_other_garbage(data: bytearray) -> None:
    _flip(data, 0)
    data[4096 : 4096 + 16] = b"not a slot at al"


def _both_future_format(data: bytearray) -> None:
    for offset in (0, 4096):
        _, _, _, seq, length, _ = HEAD.unpack_from(data, offset)
        payload = bytes(data[offset + HEADER : offset + HEADER + length])
        head = HEAD.pack(MAGIC, FORMAT_VERSION + 1, 0, seq, length, 0)
        data[offset : offset + HEADER] = head + hashlib.sha256(head + payload).digest()


def _both_too_long(data: bytearray) -> None:
    for offset in (0, 4096):
        struct.pack_into("<I", data, offset + 24, 1 << 30)  # the length field


def _garbage(data: bytearray) -> None:
    data[:] = b"garbage"


# Whole-file damage to a lease file whose two slots both hold a record: no valid copy is left.
FILE_CORRUPTIONS = {
    "both-slots-torn": _both_torn,
    "one-torn-one-garbage": _slot_zero_torn_other_garbage,
    "both-future-format": _both_future_format,
    "both-lengths-past-the-end": _both_too_long,
    "garbage": _garbage,
}


@pytest.mark.anyio
@pytest.mark.parametrize("content", CORRUPTIONS.values(), ids=list(CORRUPTIONS))
async def test_corrupt_lease_record_raises_and_changes_nothing(tmp_path: Path, content: bytes) -> None:
    """A record whose slot is whole (its checksum holds) but whose JSON is bad: corrupt, never skipped."""
    a, b = await joined(tmp_path, A), await joined(tmp_path, B)
    await a.acquire(OWNER_A, [excl("good"), excl("bad")])
    await a.release(OWNER_A, ["good"])
    path = lease_lock(tmp_path, "bad")
    put_record(path, content)
    await _check_corrupt(tmp_path, a, b, path)


@pytest.mark.anyio
@pytest.mark.parametrize("damage", FILE_CORRUPTIONS.values(), ids=list(FILE_CORRUPTIONS))
async def test_a_lease_file_with_no_valid_slot_left_raises_and_changes_nothing(
    tmp_path: Path, damage: Any
) -> None:
    """Both slots present and bad (or not a lease file at all): corrupt, naming the file."""
    a, b = await joined(tmp_path, A), await joined(tmp_path, B)
    await a.acquire(OWNER_A, [excl("good"), excl("bad")])
    await a.release(OWNER_A, ["good", "bad"])
    path = lease_lock(tmp_path, "bad")
    assert sorted(s.offset for s in slots(path) if s.valid) == [0, 4096]
    data = bytearray(path.read_bytes())
    damage(data)
    path.write_bytes(bytes(data))
    await _check_corrupt(tmp_path, a, b, path)


async def _check_corrupt(tmp_path: Path, a: FileLeaseBackend, b: FileLeaseBackend, path: Path) -> None:
    before = snapshot(tmp_path)

    with pytest.raises(CorruptRecordError) as info:
        await b.acquire(OWNER_B, [excl("good"), excl("bad")])
    assert info.value.path == str(path)
    # A listing skips the bad record and reports it (issue 10); operations on it still fail.
    assert [r.key for r in await b.records()] == ["good"]
    assert [e.path for e in await b.damaged()] == [str(path)]
    for operation in (
        b.records(["bad"]),
        a.release(OWNER_A, ["good", "bad"]),
        a.acquire(OWNER_A, [excl("bad")]),
    ):
        with pytest.raises(CorruptRecordError):
            await operation
    assert snapshot(tmp_path) == before
    (good,) = await b.records(["good"])
    assert good.holders == ()


@pytest.mark.anyio
async def test_a_valid_hand_written_record_is_accepted(tmp_path: Path) -> None:
    """The documented format is the real one: a record written by hand reads back."""
    a = await joined(tmp_path, A)
    put_record(lease_lock(tmp_path, "bad"), signed(_valid()))
    (record,) = await a.records(["bad"])
    assert (record.token, record.holders[0].owner) == (3, LeaseOwner("host-a", 1, "vm-a", ""))
    (lease,) = await a.acquire(OWNER_A, [excl("bad")])
    assert lease.token == 3  # host-a's vm-a already held it: idempotent


@pytest.mark.anyio
async def test_corrupt_host_record_of_a_holder_blocks_the_acquisition(tmp_path: Path) -> None:
    a, b = await joined(tmp_path, A), await joined(tmp_path, B)
    await a.acquire(OWNER_A, [excl("x")])
    host_file = tmp_path / "hosts" / "1.json"
    edited = json.loads(host_file.read_bytes())
    edited["counter"] = 7  # checksum left as it was
    host_file.write_text(json.dumps(edited))
    before = snapshot(tmp_path)
    with pytest.raises(CorruptRecordError) as info:
        await b.acquire(OWNER_B, [excl("w"), excl("x")])
    assert info.value.path == str(host_file)
    # A listing skips the bad record and reports it (issue 10).
    assert [v.record.id for v in await b.hosts()] == [2]
    assert [e.path for e in await b.damaged()] == [str(host_file)]
    assert snapshot(tmp_path) == before


@pytest.mark.anyio
async def test_corrupt_lockspace_meta_is_reported(tmp_path: Path) -> None:
    (tmp_path / "lockspace.json").write_bytes(b"{}")
    with pytest.raises(CorruptRecordError) as info:
        await backend(tmp_path).lockspace_id()
    assert info.value.path == str(tmp_path / "lockspace.json")


# --- unusable lockspaces --------------------------------------------------------


@pytest.mark.anyio
async def test_missing_lockspace_directory_is_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    b = backend(missing)
    with pytest.raises(LockspaceError) as info:
        await b.open()
    assert (info.value.path, info.value.problem) == (str(missing), "does not exist")
    with pytest.raises(LockspaceError):
        await b.join(A, "inc", HostAdvert())
    assert not missing.exists()


@pytest.mark.anyio
async def test_a_file_is_not_a_lockspace(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("hello")
    with pytest.raises(LockspaceError) as info:
        await backend(path).lockspace_id()
    assert (info.value.path, info.value.problem) == (str(path), "is not a directory")


@pytest.mark.anyio
async def test_a_file_in_place_of_a_subdirectory_is_reported_before_writing(tmp_path: Path) -> None:
    (tmp_path / "leases").write_text("")
    with pytest.raises(LockspaceError) as info:
        await backend(tmp_path).open()
    assert info.value.path == str(tmp_path / "leases")
    assert names(tmp_path) == ["leases"]


READ_ONLY_PROBE = """
import sys
import anyio
from actorlock.backends.file import FileLeaseBackend
from actorlock.errors import LockspaceError

async def main():
    try:
        await FileLeaseBackend(sys.argv[1], host_dead=1).open()
    except LockspaceError as exc:
        print(exc.path)
        print(exc.problem)
    else:
        print("opened")

anyio.run(main)
"""


@contextmanager
def read_only(directory: Path) -> Iterator[None]:
    directory.chmod(0o555)
    try:
        yield
    finally:
        directory.chmod(0o755)


def test_read_only_lockspace_is_refused(tmp_path: Path) -> None:
    lockspace = tmp_path / "ro"
    lockspace.mkdir()
    prefix: list[str] = []
    if os.geteuid() == 0:
        # Root ignores permission bits (CAP_DAC_OVERRIDE), so probe from a
        # child process whose capability bounding set lacks the override.
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root and setpriv is missing: cannot make a directory unwritable")
        prefix = [setpriv, "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"]
    with read_only(lockspace):
        if prefix:
            probe = "import os, sys; print(os.access(sys.argv[1], os.W_OK))"
            check = run_python(probe, str(lockspace), prefix=prefix)
            if check.stdout.strip() != "False":
                pytest.skip(f"could not drop root's file capabilities: {check.stdout}{check.stderr}")
        result = run_python(READ_ONLY_PROBE, str(lockspace), prefix=prefix)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [str(lockspace), "is not writable (permission denied)"]
    assert list(lockspace.iterdir()) == []


# --- crashes -------------------------------------------------------------------


@pytest.mark.anyio
async def test_stray_temporary_and_hidden_files_are_ignored(tmp_path: Path) -> None:
    a = await joined(tmp_path, A)
    (first,) = await a.acquire(OWNER_A, [excl("x")])
    await a.release(OWNER_A, ["x"])
    lock = lease_lock(tmp_path, "x")
    old = lock.read_bytes()
    newer = json.loads(newest_payload(lock) or b"")
    newer["token"] = 99
    # Hidden files in leases/ are nobody's lease file (an older version's temporary files).
    (lock.parent / f".{lock.stem}.json.deadbeef0000.tmp").write_bytes(signed(newer))
    # A host record: a crash after writing the temporary file and before the rename.
    (tmp_path / "hosts" / ".2.json.abcdef012345.tmp").write_bytes(b"{")

    b = await joined(tmp_path, B)
    assert [h.record.id for h in await b.hosts()] == [1, 2]
    assert [(r.key, r.token) for r in await b.records()] == [("x", first.token)]
    assert await b.damaged() == []
    assert lock.read_bytes() == old
    (second,) = await b.acquire(OWNER_B, [excl("x")])
    assert second.token == first.token + 1


# (fault, n, bytes of the nth slot write that land; negative: all but that many): the crasher's acquisition of
# k1, k2, k3 dies before its first or third slot write, in the middle of one
# (header cut short, record cut short inside its checksum), or before a sync.
CRASHES = [
    ("before-write", 0, 0),
    ("before-write", 2, 0),
    ("torn-write", 0, 30),
    ("torn-write", 2, 100),
    ("torn-write", 1, HEADER),
    ("torn-write", 1, -10),
    # The records are A's: the crasher syncs them before writing (syncs 0-2), then writes all three.
    ("before-sync", 0, 0),
    ("before-sync", 3, 0),
]


@pytest.mark.parametrize(("fault", "nth", "keep"), CRASHES, ids=[f"{f}-{n}-{k}" for f, n, k in CRASHES])
def test_crash_during_an_update_leaves_whole_records(tmp_path: Path, fault: str, nth: int, keep: int) -> None:
    """Each record is the old one or the new one after the writer dies, whatever step it died at."""
    keys = ("k1", "k2", "k3")

    async def prepare() -> dict[str, bytes | None]:
        a = await joined(tmp_path, A)
        await a.acquire(OWNER_A, [excl(k) for k in keys])
        await a.release(OWNER_A, list(keys))
        return {k: newest_payload(lease_lock(tmp_path, k)) for k in keys}

    old = anyio.run(prepare)
    result = crash_while_writing(tmp_path, keys, fault, nth, keep=keep)
    assert result.returncode == CRASH_EXIT, result.stdout + result.stderr
    assert [p.name for p in (tmp_path / "leases").iterdir() if not p.name.endswith(".lock")] == []
    # The process died: what it wrote stays in the page cache, what it did not write never happened.
    written = (len(keys) if nth >= len(keys) else 0) if fault == "before-sync" else nth

    async def after() -> None:
        b = await joined(tmp_path, B)
        records = {r.key: r for r in await b.records()}
        assert await b.damaged() == []
        for n, key in enumerate(keys):
            new = n < written
            assert (newest_payload(lease_lock(tmp_path, key)) == old[key]) is not new
            assert [h.owner.host for h in records[key].holders] == (["crasher"] if new else [])
        # The dead process's locks died with it: the other keys are free now.
        free = [excl(k) for k in keys[written:]]
        with anyio.fail_after(10):
            leases = await b.acquire(OWNER_B, free)
        assert all(lease.token == 2 for lease in leases)

    anyio.run(after)


@pytest.mark.parametrize("keep", [0, 8, 30, HEADER, 100, -10])
def test_a_crash_in_the_first_write_of_a_record_leaves_no_record(tmp_path: Path, keep: int) -> None:
    """A torn first write is no record: its caller was never answered, so nobody holds a token from it."""

    async def prepare() -> None:
        await joined(tmp_path, A)

    anyio.run(prepare)
    result = crash_while_writing(tmp_path, ["fresh"], "torn-write", 0, keep=keep)
    assert result.returncode == CRASH_EXIT, result.stdout + result.stderr
    lock = lease_lock(tmp_path, "fresh")
    assert (lock.stat().st_size == keep) if keep >= 0 else (0 < lock.stat().st_size < BLOCK)
    assert newest(lock) is None

    async def after() -> None:
        b = await joined(tmp_path, B)
        assert await b.records() == []
        assert await b.records(["fresh"]) == []
        assert await b.damaged() == []
        (lease,) = await b.acquire(OWNER_B, [excl("fresh")])
        assert lease.token == 1
        (record,) = await b.records(["fresh"])
        assert [h.owner for h in record.holders] == [OWNER_B]

    anyio.run(after)


@pytest.mark.anyio
@pytest.mark.parametrize("failing", ["pwrite", "fdatasync"])
async def test_a_failed_write_puts_back_what_was_already_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    a = await joined(tmp_path, A)
    await a.acquire(OWNER_A, [excl("k1"), excl("k2"), excl("k3")])
    await a.release(OWNER_A, ["k2"])
    before = snapshot(tmp_path)
    payloads = lease_payloads(tmp_path)
    records = await a.records()
    real = getattr(os, failing)
    calls: list[int] = []

    def failing_call(fd: int, *args: Any) -> Any:
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(errno.EIO, "Input/output error")
        return real(fd, *args)

    b = await joined(tmp_path, B)
    monkeypatch.setattr(os, failing, failing_call)
    with pytest.raises(BackendError, match="Input/output error"):
        await b.acquire(OWNER_B, [excl("k0"), excl("k2"), excl("k4")])
    monkeypatch.undo()
    assert len(calls) >= 2
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k.startswith("hosts/1") or k == "lockspace.json"} == {
        k: v for k, v in before.items() if k.startswith("hosts/1") or k == "lockspace.json"
    }
    # Every record reads as before; the new files hold none.
    assert {k: v for k, v in lease_payloads(tmp_path).items() if k in payloads} == payloads
    assert newest(lease_lock(tmp_path, "k0")) is None
    assert newest(lease_lock(tmp_path, "k4")) is None
    assert await b.records() == records
    assert await b.records(["k0", "k4"]) == []
    assert await b.damaged() == []


# --- persistence, timeouts, layout -------------------------------------------------


@pytest.mark.anyio
async def test_tokens_and_id_survive_reopening(tmp_path: Path) -> None:
    a = await joined(tmp_path, A)
    lockspace_id = await a.lockspace_id()
    for _ in range(3):
        await a.acquire(OWNER_A, [excl("x")])
        await a.release(OWNER_A, ["x"])
    await a.leave(clean=True)
    await a.aclose()

    again = backend(tmp_path)
    assert await again.lockspace_id() == lockspace_id
    previous = await again.join(A, "inc-2", HostAdvert())
    assert previous is not None
    assert previous.incarnation == "inc-host-a"
    (lease,) = await again.acquire(OWNER_A, [excl("x")])
    assert lease.token == 4


@contextmanager
def held_lock(path: Path) -> Iterator[None]:
    """Hold the OFD write lock on ``path`` the way another host would."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack("hhqqi0q", fcntl.F_WRLCK, 0, 0, 0, 0))
        yield
    finally:
        os.close(fd)


@pytest.mark.anyio
async def test_io_timeout_raises_and_the_abandoned_attempt_writes_nothing(tmp_path: Path) -> None:
    a = await joined(tmp_path, A, io_timeout=0.2)
    b = await joined(tmp_path, B)
    lock = lease_lock(tmp_path, "x")
    with held_lock(lock), anyio.fail_after(5), pytest.raises(BackendTimeoutError):
        await a.acquire(OWNER_A, [excl("x")])
    with anyio.fail_after(5):
        (lease,) = await b.acquire(OWNER_B, [excl("x")])
    assert lease.token == 1
    (record,) = await b.records(["x"])
    assert [h.owner for h in record.holders] == [OWNER_B]


@pytest.mark.anyio
async def test_racing_creators_agree_on_one_lockspace_id(tmp_path: Path) -> None:
    ids: list[str] = []

    async def open_one() -> None:
        ids.append(await backend(tmp_path).lockspace_id())

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(open_one)
    assert len(ids) == 8
    assert len(set(ids)) == 1
    assert names(tmp_path) == ["hosts", "leases", "lockspace.json"]


@pytest.mark.anyio
async def test_layout_and_record_format(tmp_path: Path) -> None:
    a = await joined(tmp_path, A)
    key = "disk:/var/lib/images/ü é.qcow2"
    (lease,) = await a.acquire(OWNER_A, [excl(key)])
    stem = hashlib.sha256(key.encode()).hexdigest()
    assert lease_file_name(key) == stem
    assert names(tmp_path / "leases") == [f"{stem}.lock"]
    assert names(tmp_path / "hosts") == ["1.json", "1.lock"]
    lock = lease_lock(tmp_path, key)
    # The first record: slot 0, sequence 1, then zeros where the second slot will go.
    assert lock.stat().st_size == 8192
    (first,) = slots(lock)
    assert (first.offset, first.seq, first.valid) == (0, 1, True)
    header = lock.read_bytes()[:HEADER]
    assert HEAD.unpack(header[: HEAD.size]) == (MAGIC, FORMAT_VERSION, 0, 1, len(first.payload), 0)
    record = json.loads(first.payload)
    assert (record["format"], record["type"], record["key"], record["token"]) == (
        FORMAT_VERSION,
        "lease",
        key,
        lease.token,
    )
    assert json.loads(signed(record))["checksum"] == record["checksum"]
    # Each write goes to the other slot: 4096, then 0 again; the size never changes.
    await a.release(OWNER_A, [key])
    assert [(s.offset, s.seq) for s in slots(lock)] == [(0, 1), (4096, 2)]
    await a.acquire(OWNER_A, [excl(key)])
    assert [(s.offset, s.seq) for s in slots(lock)] == [(0, 3), (4096, 2)]
    assert lock.stat().st_size == 8192
    host = json.loads((tmp_path / "hosts" / "1.json").read_bytes())
    assert (host["type"], host["name"], host["id"], host["state"]) == ("host", "host-a", 1, "live")
    meta = json.loads((tmp_path / "lockspace.json").read_bytes())
    assert (meta["format"], meta["type"]) == (FORMAT_VERSION, "lockspace")


@pytest.mark.anyio
async def test_aclose_is_idempotent_and_final(tmp_path: Path) -> None:
    a = await joined(tmp_path, A)
    await a.aclose()
    await a.aclose()
    with pytest.raises(InvalidStateError):
        await a.records()


@pytest.mark.anyio
async def test_same_instance_serializes_concurrent_acquisitions(tmp_path: Path) -> None:
    """Operations of one instance run in parallel threads; the file locks keep them apart."""
    a = await joined(tmp_path, A)
    won: list[LeaseOwner] = []

    async def race(domain: str) -> None:
        owner = LeaseOwner(A.name, A.id, domain)
        try:
            await a.acquire(owner, [excl("x"), excl("y")])
        except ResourceBusyError:
            return
        won.append(owner)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for n in range(10):
                tg.start_soon(race, f"vm-{n}")
    assert len(won) == 1
    records = await a.records()
    assert [[h.owner for h in r.holders] for r in records] == [won, won]


@pytest.mark.anyio
async def test_renewal_is_not_starved_by_a_saturated_worker_pool(tmp_path: Path) -> None:
    """A pool full of lease traffic must not delay the renewal that keeps the host live."""
    import threading

    from actorlock.backends.base import HostAdvert
    from actorlock.backends.file import FileLeaseBackend
    from actorlock.model import HostIdentity

    backend = FileLeaseBackend(tmp_path, host_dead=5.0)
    await backend.join(HostIdentity("a", 1), "inc", HostAdvert())
    release = threading.Event()
    pool = anyio.to_thread.current_default_thread_limiter()
    try:
        async with anyio.create_task_group() as tg:
            for _ in range(int(pool.total_tokens)):
                tg.start_soon(functools.partial(anyio.to_thread.run_sync, release.wait))
            await anyio.wait_all_tasks_blocked()
            assert pool.available_tokens == 0
            try:
                with anyio.fail_after(5):
                    record = await backend.renew(HostAdvert())
            finally:
                release.set()  # also on failure, or the blocked workers would hang the test
        assert record.counter == 2
    finally:
        release.set()
        await backend.aclose()
