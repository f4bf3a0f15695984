"""A state_dir that is unreadable, corrupt or readable by others (issue 10)."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import pytest

import actorlock
from actorlock.errors import CorruptRecordError, CorruptStateError
from actorlock.model import DomainIdentity
from actorlock.statestore import DomainPhase, DomainState, FileStateStore, HostPersisted

from .support import host_config, unique

pytestmark = pytest.mark.anyio


def this_boot() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_state_files_and_directories_are_private(tmp_path: Path) -> None:
    store = FileStateStore(tmp_path / "state")
    await store.open()
    await store.save_host(HostPersisted("a", 1, "inc"))
    await store.save_domain(DomainState(DomainIdentity("u1"), DomainPhase.RUNNING, pid=42))
    assert mode(tmp_path / "state") == 0o700
    assert mode(tmp_path / "state" / "domains") == 0o700
    assert mode(tmp_path / "state" / "host.json") == 0o600
    assert mode(tmp_path / "state" / "domains" / "u1.json") == 0o600


async def test_a_state_dir_others_can_read_is_made_private(tmp_path: Path) -> None:
    (tmp_path / "state" / "domains").mkdir(parents=True, mode=0o755)
    (tmp_path / "state").chmod(0o755)
    await FileStateStore(tmp_path / "state").open()
    assert mode(tmp_path / "state") == 0o700
    assert mode(tmp_path / "state" / "domains") == 0o700


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b'{"name": "a\xff\xfe", "id": 1, "incarnation": "x"}', "UTF-8"),
        (b'{"name": 7, "id": 1, "incarnation": "x"}', "name"),
        (b'{"name": "a", "id": "1", "incarnation": "x"}', "id"),
        (b'{"name": "a", "id": 1, "incarnation": "x", "renewed_at": "soon"}', "renewed_at"),
        (b"[1, 2]", "object"),
    ],
)
async def test_an_unreadable_host_json_is_a_clear_error(tmp_path: Path, content: bytes, problem: str) -> None:
    store = FileStateStore(tmp_path)
    await store.open()
    (tmp_path / "host.json").write_bytes(content)
    with pytest.raises(CorruptRecordError, match=problem) as caught:
        await store.load_host()
    assert caught.value.path == str(tmp_path / "host.json")


async def test_the_host_does_not_start_on_a_host_json_it_cannot_read(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "host.json").write_bytes(b"\xff\xfe not utf-8")
    cfg = host_config("a", 1, lockspace=unique(), host={"state_dir": str(state)})
    with pytest.raises(CorruptRecordError, match=r"host\.json"):
        async with actorlock.open_host(cfg):
            pass


def domain_file(uuid: str, phase: str = DomainPhase.REGISTERED) -> bytes:
    body = {"uuid": uuid, "name": "", "id": -1, "phase": phase, "pid": None, "pid_start": None}
    return json.dumps({**body, "resources": [], "leases": []}).encode()


async def test_an_unknown_phase_is_refused(tmp_path: Path) -> None:
    store = FileStateStore(tmp_path)
    await store.open()
    (tmp_path / "domains" / "u1.json").write_bytes(domain_file("u1", phase="bogus"))
    (tmp_path / "domains" / "u2.json").write_bytes(domain_file("u2"))
    with pytest.raises(CorruptStateError, match="bogus") as caught:
        await store.load_domains()
    assert caught.value.path == str(tmp_path / "domains" / "u1.json")
    assert [d.identity.uuid for d in caught.value.readable] == ["u2"]


@pytest.mark.parametrize("content", [b"\xff\xfe", b"{", b"[]", b'{"uuid": 5}'])
async def test_a_corrupt_domain_state_after_a_reboot_is_skipped_and_reported(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state"
    (state / "domains").mkdir(parents=True)
    previous_boot = {"name": "a", "id": 1, "incarnation": "old", "boot_id": "gone"}
    (state / "host.json").write_text(json.dumps(previous_boot))
    (state / "domains" / "bad.json").write_bytes(content)
    (state / "domains" / "u2.json").write_bytes(domain_file("u2"))
    cfg = host_config("a", 1, lockspace=unique(), host={"state_dir": str(state)})
    with caplog.at_level(logging.WARNING):
        async with actorlock.open_host(cfg) as host:
            assert "u2" in host.known_domains()
            await host.domain("u3").start([actorlock.disk("/d/3.img")])
    assert any(str(state / "domains" / "bad.json") in r.getMessage() for r in caplog.records)


async def test_a_corrupt_domain_state_on_the_same_boot_stops_the_start(tmp_path: Path) -> None:
    # Its guest may still run with our leases: forgetting it would let another host take them.
    state = tmp_path / "state"
    (state / "domains").mkdir(parents=True)
    host_json = {"name": "a", "id": 1, "incarnation": "old", "boot_id": this_boot()}
    (state / "host.json").write_text(json.dumps(host_json))
    (state / "domains" / "bad.json").write_bytes(b"{")
    cfg = host_config("a", 1, lockspace=unique(), host={"state_dir": str(state)})
    with pytest.raises(CorruptStateError, match="may still be running") as caught:
        async with actorlock.open_host(cfg):
            pass
    assert caught.value.path == str(state / "domains" / "bad.json")


@pytest.mark.parametrize("kind", ["directory", "fifo", "symlink"])
async def test_a_special_file_in_place_of_host_json_is_refused(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "host.json"
    if kind == "directory":
        target.mkdir()
    elif kind == "fifo":
        os.mkfifo(target)
    else:
        (tmp_path / "elsewhere.json").write_text("{}")
        target.symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(CorruptRecordError) as caught:
        await FileStateStore(tmp_path).load_host()
    assert caught.value.path == str(target)
    why = {"directory": "a directory", "fifo": "a FIFO", "symlink": "symbolic link"}
    assert why[kind] in caught.value.problem


def test_every_phase_a_domain_actor_saves_is_known() -> None:
    from actorlock.actors.phases import TRANSITIONS
    from actorlock.statestore import PERSISTED_PHASES

    # A move ends in the phase the actor then saves; a shutdown deletes the state instead.
    saved = {after for after in TRANSITIONS.values()} - {DomainPhase.STOPPED}
    assert saved <= PERSISTED_PHASES
    assert DomainPhase.MIGRATED in saved
