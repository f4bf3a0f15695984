"""The host watchdog (issue 9), on a stand-in device: a plain file that records the pets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

import actorlock
from actorlock.backends.memory import MemoryLeaseBackend, shared_lockspace
from actorlock.errors import ConfigError
from actorlock.testing.events import EventLog
from actorlock.testing.faults import FaultyBackend

from .support import TIMING, host_config, unique

pytestmark = pytest.mark.anyio


def watchdog_config(device: Path, **timing: float) -> dict[str, Any]:
    cfg = host_config("a", 1, lockspace=unique(), watchdog={"device": str(device), "fire_timeout": 0.25})
    cfg["timing"].update(timing)
    return cfg


async def test_the_watchdog_is_petted_while_the_lease_is_fresh_and_not_after_it_is_lost(
    tmp_path: Path,
) -> None:
    device = tmp_path / "watchdog"
    device.touch()
    cfg: Any = watchdog_config(device, host_dead=0.8)
    backend = FaultyBackend(MemoryLeaseBackend(shared_lockspace(cfg["memory"]["lockspace"]), host_dead=0.8))
    events = EventLog()
    async with actorlock.open_host(cfg, backend=backend, event_sink=events.sink) as host:
        await host.domain("u1").start([actorlock.disk("/d/1.img")])
        watchdog = host.watchdog
        assert watchdog is not None
        with anyio.fail_after(5):
            while watchdog.pets < 3:  # noqa: ASYNC110 - counts renewals, no event for each pet
                await anyio.sleep(TIMING["renew_interval"])
        backend.fail("renew")
        with anyio.fail_after(5):
            await events.wait_for("lockspace_lost")
        petted = watchdog.pets
        await anyio.sleep(4 * TIMING["renew_interval"])  # renewals go on failing: no pet
        assert watchdog.pets == petted
        await host.domain("u1").shutdown()
    # Pets are writes to the device; nothing was held at the stop: the magic close disarms it.
    assert device.read_bytes() == b"\0" * petted + b"V"


async def test_a_clean_stop_with_nothing_held_disarms_the_watchdog(tmp_path: Path) -> None:
    device = tmp_path / "watchdog"
    device.touch()
    async with actorlock.open_host(watchdog_config(device, host_dead=0.8)) as host:
        watchdog = host.watchdog
        assert watchdog is not None
        with anyio.fail_after(5):
            while watchdog.pets < 2:  # noqa: ASYNC110 - counts renewals, no event for each pet
                await anyio.sleep(TIMING["renew_interval"])
    assert device.read_bytes().endswith(b"V")


def test_timing_validation_includes_the_watchdog_fire_time(tmp_path: Path) -> None:
    short = watchdog_config(tmp_path / "w", host_dead=2.0)
    short["watchdog"]["fire_timeout"] = 0.1  # below lease_timeout: it would fire on a valid lease
    with pytest.raises(ConfigError, match=r"watchdog\.fire_timeout"):
        actorlock.load_config(short)
    # host_dead 0.6 covers lease_timeout + fence_timeout, not lease_timeout + fire_timeout 0.5
    cfg = watchdog_config(tmp_path / "w")
    cfg["watchdog"]["fire_timeout"] = 0.5
    with pytest.raises(ConfigError, match=r"watchdog\.fire_timeout \+ scheduling_delay"):
        actorlock.load_config(cfg)
