"""A lockspace that other users, stray files or a careless mount made hostile (issue 10)."""

from __future__ import annotations

import grp
import os
import stat
import textwrap
from pathlib import Path
from typing import Any

import pytest

from actorlock.backends import make_backend
from actorlock.backends.base import HostAdvert
from actorlock.config import load_config
from actorlock.errors import BackendError, CorruptRecordError, LockspaceError
from actorlock.model import LeaseMode, LeaseRequest

from .lease_files import lease_lock, put_record
from .test_file_backend import (
    OWNER_A,
    OWNER_B,
    A,
    B,
    _valid,
    backend,
    excl,
    joined,
    run_python,
    signed,
    snapshot,
)

pytestmark = pytest.mark.anyio


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def file_modes(directory: Path) -> dict[str, tuple[int, int]]:
    """Mode and group of every file below ``directory``, by relative path."""
    return {
        str(p.relative_to(directory)): (mode(p), p.stat().st_gid) for p in directory.rglob("*") if p.is_file()
    }


def my_group() -> str:
    return grp.getgrgid(os.getegid()).gr_name


# --- permissions ---------------------------------------------------------------


async def test_lock_and_record_files_are_private(tmp_path: Path) -> None:
    a = await joined(tmp_path, A)
    await a.acquire(OWNER_A, [excl("x")])
    await a.renew(HostAdvert())
    for directory in ("hosts", "leases"):
        assert mode(tmp_path / directory) == 0o700
    files = file_modes(tmp_path)
    assert {Path(name).suffix for name in files} == {".json", ".lock"}
    assert {name: m for name, (m, _) in files.items()} == dict.fromkeys(files, 0o600)


async def test_a_configured_group_shares_the_lockspace(tmp_path: Path) -> None:
    group = my_group()
    a = await joined(tmp_path, A, group=group)
    await a.acquire(OWNER_A, [excl("x")])
    for directory in ("hosts", "leases"):
        assert mode(tmp_path / directory) == 0o770
    files = file_modes(tmp_path)
    assert files == dict.fromkeys(files, (0o660, os.getegid()))


async def test_the_group_comes_from_the_file_section(tmp_path: Path) -> None:
    cfg = load_config({"file": {"lockspace_dir": str(tmp_path), "group": my_group()}})
    b = make_backend(cfg)
    await b.join(A, "inc", HostAdvert())
    assert mode(tmp_path / "hosts" / "1.json") == 0o660


async def test_an_unknown_group_is_a_config_error(tmp_path: Path) -> None:
    from actorlock.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        await backend(tmp_path, group="no-such-group-actorlock").open()
    assert caught.value.key == "file.group"


@pytest.mark.parametrize(
    ("name", "bits"),
    [("hosts/1.lock", 0o666), ("hosts/1.json", 0o602), ("leases", 0o777), ("hosts/1.lock", 0o620)],
)
async def test_a_lockspace_others_can_write_is_refused_naming_the_file(
    tmp_path: Path, name: str, bits: int
) -> None:
    await joined(tmp_path, A)
    (tmp_path / name).chmod(bits)
    with pytest.raises(LockspaceError) as caught:
        await joined(tmp_path, B)
    assert caught.value.path == str(tmp_path / name)
    assert "other users" in str(caught.value)


async def test_group_write_is_fine_with_the_configured_group(tmp_path: Path) -> None:
    await joined(tmp_path, A, group=my_group())
    await joined(tmp_path, B, group=my_group())


async def test_files_others_can_only_read_are_made_private(tmp_path: Path) -> None:
    # A lockspace from an older version: 0644 lock files let anyone take a read lock.
    await joined(tmp_path, A)
    (tmp_path / "hosts" / "1.lock").chmod(0o644)
    (tmp_path / "hosts").chmod(0o755)
    await joined(tmp_path, B)
    assert mode(tmp_path / "hosts" / "1.lock") == 0o600
    assert mode(tmp_path / "hosts") == 0o700


# --- stray and corrupt entries -------------------------------------------------


async def test_stray_and_corrupt_host_records_are_skipped_and_reported(tmp_path: Path) -> None:
    a, b = await joined(tmp_path, A), await joined(tmp_path, B)
    (tmp_path / "hosts" / "old-2.json").write_text("{}")
    (tmp_path / "hosts" / "3.json").write_bytes(b"garbage")
    (tmp_path / "hosts" / "4.json").mkdir()
    views = await b.hosts()
    assert [v.record.name for v in views] == ["host-a", "host-b"]
    damaged = {e.path: e.problem for e in await b.damaged()}
    assert set(damaged) == {str(tmp_path / "hosts" / n) for n in ("old-2.json", "3.json", "4.json")}
    assert "directory" in damaged[str(tmp_path / "hosts" / "4.json")]
    # Nothing about host 3 or 4 matters to a lease nobody holds.
    await b.acquire(OWNER_B, [excl("y")])
    await a.renew(HostAdvert())


async def test_a_corrupt_lease_record_is_fatal_only_to_its_resource(tmp_path: Path) -> None:
    a = await joined(tmp_path, A)
    await a.acquire(OWNER_A, [excl("good"), excl("bad")])
    lease_lock(tmp_path, "bad").write_bytes(b"garbage")
    assert [r.key for r in await a.records()] == ["good"]
    assert [e.path for e in await a.damaged()] == [str(lease_lock(tmp_path, "bad"))]
    with pytest.raises(CorruptRecordError):
        await a.records(["bad"])
    await a.acquire(OWNER_B, [excl("other")])


@pytest.mark.parametrize("kind", ["directory", "fifo", "symlink", "huge"])
async def test_a_special_file_in_place_of_a_record_is_refused_naming_it(tmp_path: Path, kind: str) -> None:
    a, b = await joined(tmp_path, A), await joined(tmp_path, B)
    await a.acquire(OWNER_A, [excl("x")])
    await a.release(OWNER_A, ["x"])
    path = lease_lock(tmp_path, "x")  # the lease record lives in its lock file
    path.unlink()
    outside = tmp_path.parent / f"{tmp_path.name}-outside.lock"
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)  # an open for reading would block forever without O_NONBLOCK
    elif kind == "symlink":
        put_record(outside, signed(_valid("x")))
        path.symlink_to(outside)
    else:
        path.write_bytes(b" " * (64 << 20))
    before = snapshot(tmp_path) if kind != "fifo" else None
    why = {"directory": "a directory", "fifo": "a FIFO", "symlink": "symbolic link", "huge": "larger than"}
    for operation in (b.acquire(OWNER_B, [excl("x")]), b.records(["x"])):
        with pytest.raises(CorruptRecordError) as caught:
            await operation
        assert caught.value.path == str(path)
        assert why[kind] in caught.value.problem
    assert [e.path for e in await b.damaged()] == [str(path)]
    assert await b.records() == []
    if before is not None:
        assert snapshot(tmp_path) == before


async def test_a_directory_in_place_of_a_host_record_names_that_file(tmp_path: Path) -> None:
    await joined(tmp_path, A)
    (tmp_path / "hosts" / "2.json").mkdir()
    with pytest.raises(BackendError) as caught:
        await joined(tmp_path, B)
    assert str(tmp_path / "hosts" / "2.json") in str(caught.value)


async def test_a_symlinked_lockspace_subdirectory_is_refused(tmp_path: Path) -> None:
    space, elsewhere = tmp_path / "space", tmp_path / "elsewhere"
    space.mkdir(mode=0o700)
    elsewhere.mkdir(mode=0o700)
    (space / "leases").symlink_to(elsewhere)
    with pytest.raises(LockspaceError) as caught:
        await joined(space, A)
    assert caught.value.path == str(space / "leases")
    assert os.listdir(elsewhere) == []


@pytest.mark.parametrize(
    "holders",
    [
        [("h1", 1, "exclusive"), ("h2", 2, "exclusive")],
        [("h1", 1, "exclusive"), ("h2", 2, "shared")],
        [("h1", 1, "shared"), ("h1", 1, "shared")],
    ],
)
async def test_contradictory_records_are_refused_as_corrupt(
    tmp_path: Path, holders: list[tuple[str, int, str]]
) -> None:
    b = await joined(tmp_path, B)
    body: dict[str, Any] = _valid("x")
    template = body["holders"][0]
    body["holders"] = [
        {**template, "host": h, "host_id": i, "domain": "vm", "mode": m, "token": 3} for h, i, m in holders
    ]
    put_record(lease_lock(tmp_path, "x"), signed(body))
    with pytest.raises(CorruptRecordError, match="contradict"):
        await b.acquire(OWNER_B, [LeaseRequest("x", LeaseMode.SHARED)])


# --- mounts ----------------------------------------------------------------------


def fake_mountinfo(tmp_path: Path, mount_point: Path, fstype: str, options: str) -> Path:
    info = tmp_path / "mountinfo"
    info.write_text(
        "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        f"40 22 0:50 / {mount_point} rw,relatime shared:2 - {fstype} srv:/export rw,{options}\n"
    )
    return info


@pytest.mark.parametrize(
    ("fstype", "options", "bad"),
    [
        ("nfs", "vers=3,nolock,addr=10.0.0.1", "nolock"),
        ("nfs4", "vers=4.2,local_lock=all", "local_lock=all"),
        ("nfs4", "vers=4.2,local_lock=posix", "local_lock=posix"),
    ],
)
async def test_an_nfs_mount_with_local_locks_is_refused_at_join(
    tmp_path: Path, fstype: str, options: str, bad: str
) -> None:
    space = tmp_path / "space"
    space.mkdir(mode=0o700)
    info = fake_mountinfo(tmp_path, space, fstype, options)
    b = backend(space, mountinfo=str(info))
    with pytest.raises(LockspaceError, match=bad) as caught:
        await b.join(A, "inc", HostAdvert())
    assert not (space / "hosts" / "1.json").exists()
    assert str(caught.value).count(bad) >= 1


async def test_an_nfs_mount_with_network_locks_is_fine(tmp_path: Path) -> None:
    space = tmp_path / "space"
    space.mkdir(mode=0o700)
    info = fake_mountinfo(tmp_path, space, "nfs4", "vers=4.2,local_lock=none,addr=10.0.0.1")
    await backend(space, mountinfo=str(info)).join(A, "inc", HostAdvert())


async def test_a_mount_point_with_a_space_is_matched(tmp_path: Path) -> None:
    space = tmp_path / "lock space"
    space.mkdir(mode=0o700)
    info = tmp_path / "mountinfo"
    escaped = str(space).replace(" ", "\\040")
    info.write_text(f"40 22 0:50 / {escaped} rw - nfs srv:/x rw,nolock\n")
    with pytest.raises(LockspaceError, match="nolock"):
        await backend(space, mountinfo=str(info)).join(A, "inc", HostAdvert())


# --- descriptors -----------------------------------------------------------------


def test_an_acquisition_past_the_descriptor_limit_fails_clearly_and_keeps_what_is_held(
    tmp_path: Path,
) -> None:
    script = """
    import resource, sys
    import anyio
    from actorlock.backends.base import HostAdvert
    from actorlock.backends.file import FileLeaseBackend
    from actorlock.errors import BackendError
    from actorlock.model import HostIdentity, LeaseMode, LeaseOwner, LeaseRequest

    async def main():
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
        b = FileLeaseBackend(sys.argv[1], host_dead=60.0)
        await b.join(HostIdentity("a", 1), "inc", HostAdvert())
        owner = LeaseOwner("a", 1, "vm")
        await b.acquire(owner, [LeaseRequest("kept", LeaseMode.EXCLUSIVE)])
        try:
            await b.acquire(owner, [LeaseRequest(f"disk{i}", LeaseMode.EXCLUSIVE) for i in range(400)])
        except BackendError as exc:
            print("refused:", exc)
        (kept,) = await b.records(["kept"])
        print("kept:", [h.owner.domain for h in kept.holders])
        print("records:", len(await b.records()))
        await b.renew(HostAdvert())
        print("renewed")

    anyio.run(main)
    """
    done = run_python(textwrap.dedent(script), str(tmp_path))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("refused:"), lines
    assert "RLIMIT_NOFILE" in lines[0]
    assert lines[1:] == ["kept: ['vm']", "records: 1", "renewed"]


async def test_an_acquisition_within_the_limit_still_works(tmp_path: Path) -> None:
    a = await joined(tmp_path, A)
    leases = await a.acquire(OWNER_A, [excl(f"d{i}") for i in range(100)])
    assert len(leases) == 100


async def test_a_world_writable_sticky_root_is_refused(tmp_path: Path) -> None:
    space = tmp_path / "space"
    space.mkdir()
    space.chmod(0o1777)
    with pytest.raises(LockspaceError) as caught:
        await backend(space).open()
    assert caught.value.path == str(space)
    assert os.listdir(space) == []


@pytest.mark.parametrize("kind", ["directory", "fifo", "symlink"])
async def test_a_special_file_in_place_of_a_lock_file_is_refused_naming_it(tmp_path: Path, kind: str) -> None:
    a = await joined(tmp_path, A)
    await a.acquire(OWNER_A, [excl("kept")])
    lock = lease_lock(tmp_path, "x")
    if kind == "directory":
        lock.mkdir()
    elif kind == "fifo":
        os.mkfifo(lock)
    else:
        lock.symlink_to(tmp_path / "hosts" / "1.lock")
    with pytest.raises(CorruptRecordError) as caught:
        await a.acquire(OWNER_A, [excl("kept"), excl("x")])
    assert caught.value.path == str(lock)
    (kept,) = await a.records(["kept"])
    assert [h.owner for h in kept.holders] == [OWNER_A]
    # The lock file is where x's record would be: reading it is refused too, naming it.
    with pytest.raises(CorruptRecordError) as caught:
        await a.records(["x"])
    assert caught.value.path == str(lock)
