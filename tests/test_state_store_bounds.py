"""A hung state_dir: every state write is bounded by io_timeout, and a late write never wins."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import anyio
import pytest

import actorlock
from actorlock.errors import BackendTimeoutError
from actorlock.statestore import DomainState, FileStateStore, MemoryStateStore

from .support import host_config

pytestmark = pytest.mark.anyio

IO_TIMEOUT = 0.3
VALVE = 5.0  # a hung write gives up after this long, so the old code fails instead of hanging


class HungSaves(MemoryStateStore):
    """Domain saves (and deletes, once told) hang, as on a dead NFS state_dir, until released."""

    def __init__(self) -> None:
        super().__init__()
        self.hang = False
        self.hung = 0
        self.hanging = anyio.Event()

    async def _maybe_hang(self) -> None:
        if self.hang:
            self.hung += 1
            self.hanging.set()
            await anyio.sleep(VALVE)

    async def save_domain(self, state: DomainState) -> None:
        await self._maybe_hang()
        await super().save_domain(state)

    async def delete_domain(self, uuid: str) -> None:
        await self._maybe_hang()
        await super().delete_domain(uuid)


def config(space: str) -> dict[str, object]:
    cfg = host_config("h1", 1, lockspace=space)
    cfg["timing"] = {**cfg["timing"], "io_timeout": IO_TIMEOUT}
    return cfg


async def test_a_start_whose_state_cannot_be_saved_fails_in_time_and_gives_its_leases_back() -> None:
    space = f"hung-{uuid.uuid4().hex}"
    store = HungSaves()
    async with actorlock.open_host(config(space), state_store=store) as host:
        store.hang = True
        began = anyio.current_time()
        with pytest.raises(BackendTimeoutError, match="state store"):
            await host.domain("u1").start([actorlock.disk("/d/1.img")])
        assert anyio.current_time() - began < IO_TIMEOUT * 3
        assert store.hung >= 1
        status = await host.domain("u1").status()
        assert status.phase != "running"
        assert status.leases == ()
        store.hang = False
        # Given back: the same host (any domain) can take the disk now.
        other = await host.domain("u2").start([actorlock.disk("/d/1.img")])
        assert [lease.key for lease in other.leases] == ["disk:/d/1.img"]


async def test_a_shutdown_on_a_hung_state_dir_fails_in_time_and_can_be_retried() -> None:
    space = f"hung-{uuid.uuid4().hex}"
    store = HungSaves()
    async with actorlock.open_host(config(space), state_store=store) as host:
        vm = host.domain("u1")
        await vm.start([actorlock.disk("/d/1.img")])
        store.hang = True
        with anyio.fail_after(IO_TIMEOUT * 3), pytest.raises(BackendTimeoutError):
            await vm.shutdown()
        store.hang = False
        await vm.shutdown()
        assert "u1" not in store.domains


async def test_leaving_open_host_is_not_held_up_by_a_hung_state_dir() -> None:
    space = f"hung-{uuid.uuid4().hex}"
    store = HungSaves()
    began = anyio.current_time()
    with anyio.move_on_after(IO_TIMEOUT * 4) as scope:
        async with actorlock.open_host(config(space), state_store=store) as host:
            store.hang = True
            async with anyio.create_task_group() as tg:
                tg.start_soon(host.domain("u1").start, [actorlock.disk("/d/1.img")])
                await store.hanging.wait()
                tg.cancel_scope.cancel()
    assert not scope.cancelled_caught, "the host block could not be left while a state write hung"
    assert anyio.current_time() - began < IO_TIMEOUT * 4


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # no event loop needed: one run is enough
def test_a_late_write_never_replaces_a_newer_state(tmp_path: Path, anyio_backend: str) -> None:
    store = FileStateStore(tmp_path)
    path = tmp_path / "host.json"
    older, newer = store._issue(path), store._issue(path)
    store._replace(path, {"write": "newer"}, newer)
    store._replace(path, {"write": "older"}, older)  # an abandoned thread finishing late
    assert json.loads(path.read_text()) == {"write": "newer"}
    deleted = store._issue(path)
    store._replace(path, {"write": "late"}, newer)
    store._delete(path, deleted)
    assert not path.exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no temporary file left behind
