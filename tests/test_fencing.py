"""A fence attempt stays bounded by fence_timeout whatever its one /proc read does."""

from __future__ import annotations

import os
import threading
from typing import Any

import anyio
import pytest

import actorlock
import actorlock.guest
from actorlock.backends.memory import MemoryLeaseBackend, shared_lockspace
from actorlock.model import DomainIdentity
from actorlock.testing.events import EventLog
from actorlock.testing.faults import FaultyBackend

from .support import TIMING, host_config, unique

pytestmark = pytest.mark.anyio


async def test_a_hung_proc_read_does_not_stretch_a_fence_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    unblock = threading.Event()
    real = actorlock.guest.is_running_sync
    hang = {"on": False}

    def hanging(pid: int, start_time: int | None) -> bool:
        if hang["on"]:
            unblock.wait(10)  # stands for a /proc read that never returns
        return real(pid, start_time)

    monkeypatch.setattr(actorlock.guest, "is_running_sync", hanging)
    paused: list[DomainIdentity] = []
    paused_once = anyio.Event()

    async def pause(identity: DomainIdentity, pid: int | None) -> None:
        paused.append(identity)
        paused_once.set()

    backend = FaultyBackend(MemoryLeaseBackend(shared_lockspace(unique()), host_dead=TIMING["host_dead"]))
    events = EventLog()
    cfg: Any = host_config("a", 1, locking={"failure_action": "pause"})
    try:
        host = actorlock.open_host(cfg, backend=backend, pause_callback=pause, event_sink=events.sink)
        async with host as a:
            await a.domain("u1").start([actorlock.disk("/d/1.img")], pid=os.getpid())
            hang["on"] = True
            backend.fail("renew")
            with anyio.fail_after(TIMING["lease_timeout"] + TIMING["fence_timeout"] + 1.0):
                lost = await events.wait_for("lockspace_lost")
                failed = await events.wait_for("fence_failed", domain="u1")
            assert failed.time - lost.time < TIMING["fence_timeout"] + 0.3
            assert "timed out" in str(failed.fields["result"])
            assert not unblock.is_set()  # the read was still hung when the attempt gave up
            hang["on"] = False
            unblock.set()
            with anyio.fail_after(2.0):  # and the retry, with /proc answering again, pauses the guest
                await paused_once.wait()
            assert paused == [DomainIdentity("u1")]
    finally:
        unblock.set()
