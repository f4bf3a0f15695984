"""Loading the lock plugin: the structured forms, and the awaited form inside a timeout.

``plugin = await plugin_load(...)`` used to enter the host's task group in the
caller's task and return with it open; inside ``with anyio.fail_after(...)``
that corrupted the caller's cancel-scope stack. The host now always runs in a
task that a task group owns: ``async with plugin_load(...) as plugin`` or
``plugin = await task_group.start(run_plugin, ...)``. The awaited form only
checks the name and the configuration and enters nothing; using the plugin
before it runs is a clear InvalidStateError naming those two forms.
"""

from __future__ import annotations

import functools

import anyio
import anyio.lowlevel
import pytest

import actorlock
from actorlock import ObjectType, ResourceType
from actorlock.errors import ConfigError, InvalidParameterError, InvalidStateError
from actorlock.lockmanager import LockManagerPlugin, run_plugin
from actorlock.model import DomainIdentity

from .support import guest_process, host_config, unique

pytestmark = pytest.mark.anyio

NOT_RUNNING = r"not running.*async with plugin_load\(\.\.\.\).*task_group\.start\(run_plugin"


async def use(plugin: LockManagerPlugin, uuid: str, disk: str, pid: int) -> None:
    """Normal use: new manager, acquire, release (pause), re-acquire, shutdown."""
    manager = await plugin.new_manager(ObjectType.DOMAIN)
    manager.set_parameter("uuid", uuid)
    manager.set_parameter("pid", pid)
    manager.register_resource(ResourceType.DISK, disk)
    status = await manager.acquire_object()
    assert [lease.key for lease in status.leases] == [f"disk:{disk}"]
    state = await manager.release_all()
    assert all(not r.holders for r in await plugin.host.leases())
    await manager.acquire_object(state=state)
    await manager.shutdown()
    await manager.free()
    assert all(not r.holders for r in await plugin.host.leases())


async def assert_unloaded(plugin: LockManagerPlugin) -> None:
    with pytest.raises(InvalidStateError, match="unloaded"):
        await plugin.new_manager(ObjectType.DOMAIN)


# -- (a) the awaited form inside a timeout ----------------------------------


async def test_awaited_load_inside_a_timeout_enters_nothing_and_refuses_clearly() -> None:
    cfg = host_config("a", 1, lockspace=unique())
    sibling_done = anyio.Event()

    async def sibling() -> None:
        await anyio.sleep(0.05)
        sibling_done.set()

    with guest_process() as guest:
        async with anyio.create_task_group() as tg:
            tg.start_soon(sibling)
            with anyio.fail_after(60):
                plugin = await actorlock.plugin_load("memory", cfg)
            # The caller's scopes are intact: this sleep, the sibling and the
            # task group's exit all behave.
            await anyio.lowlevel.checkpoint()
            with pytest.raises(InvalidStateError, match=NOT_RUNNING):
                await plugin.new_manager(ObjectType.DOMAIN)
            with pytest.raises(InvalidStateError, match=NOT_RUNNING):
                _ = plugin.host
            # Then run it the documented way: the same plugin object.
            async with plugin:
                await use(plugin, "u1", "/d/1.img", guest.pid)
            await assert_unloaded(plugin)
        assert sibling_done.is_set()


async def test_unloading_a_plugin_that_never_ran_is_harmless() -> None:
    with anyio.fail_after(60):
        plugin = await actorlock.plugin_load("memory", host_config("a", 1, lockspace=unique()))
    await plugin.unload()
    await plugin.unload()
    await assert_unloaded(plugin)
    with pytest.raises(InvalidStateError, match="unloaded"):
        async with plugin:
            pass


async def test_start_inside_a_timeout_bounds_only_the_load() -> None:
    """``with fail_after(t): plugin = await tg.start(run_plugin, ...)``: the timeout
    covers loading, the plugin outlives it, ``unload()`` ends its task."""
    cfg = host_config("a", 1, lockspace=unique())
    with guest_process() as guest:
        async with anyio.create_task_group() as tg:
            with anyio.fail_after(60):
                plugin = await tg.start(run_plugin, "memory", cfg)
            with anyio.move_on_after(0.3):  # longer than lease_timeout: still renewing
                await anyio.sleep_forever()
            await use(plugin, "u1", "/d/1.img", guest.pid)
            await plugin.unload()
            await assert_unloaded(plugin)
        # the task group ended on its own: unload() finished the plugin's task


async def test_async_with_inside_a_timeout() -> None:
    cfg = host_config("a", 1, lockspace=unique())
    with guest_process() as guest:
        with anyio.fail_after(60):
            async with actorlock.plugin_load("memory", cfg) as plugin:
                await use(plugin, "u1", "/d/1.img", guest.pid)
        await assert_unloaded(plugin)


# -- (b) the structured forms -------------------------------------------------


async def test_async_with_plugin_load() -> None:
    with guest_process() as guest:
        async with actorlock.plugin_load("memory", host_config("a", 1, lockspace=unique())) as plugin:
            await use(plugin, "u1", "/d/1.img", guest.pid)
        await assert_unloaded(plugin)


async def test_async_with_await_plugin_load_still_works() -> None:
    with guest_process() as guest:
        async with await actorlock.plugin_load("memory", host_config("a", 1, lockspace=unique())) as plugin:
            await use(plugin, "u1", "/d/1.img", guest.pid)
        await assert_unloaded(plugin)


async def test_task_group_start_then_unload_from_another_task() -> None:
    space = unique()
    with guest_process() as guest:
        async with anyio.create_task_group() as tg:
            plugin = await tg.start(run_plugin, "memory", host_config("a", 1, lockspace=space))
            await use(plugin, "u1", "/d/1.img", guest.pid)
            async with anyio.create_task_group() as inner:
                inner.start_soon(plugin.unload)
            await assert_unloaded(plugin)
        # The lockspace is free for a new host with the same identity.
        async with actorlock.plugin_load("memory", host_config("a", 1, lockspace=space)) as again:
            await use(again, "u2", "/d/2.img", guest.pid)


async def test_task_group_start_passes_keywords_with_partial() -> None:
    calls: list[DomainIdentity] = []

    async def pause(domain: DomainIdentity, pid: int | None) -> None:  # never called here
        calls.append(domain)

    cfg = host_config("a", 1, lockspace=unique(), locking={"failure_action": "pause"})
    async with anyio.create_task_group() as tg:
        plugin = await tg.start(functools.partial(run_plugin, pause_callback=pause), "memory", cfg)
        assert plugin.name == "memory"
        assert not plugin.host.resumed
        await plugin.unload()
    assert calls == []


async def test_cancelling_the_task_group_stops_the_plugin() -> None:
    async with anyio.create_task_group() as tg:
        plugin = await tg.start(run_plugin, "memory", host_config("a", 1, lockspace=unique()))
        tg.cancel_scope.cancel()
    await assert_unloaded(plugin)
    await plugin.unload()  # still idempotent


async def test_unload_inside_the_block_from_a_nested_scope() -> None:
    """Unloading early, even under a timeout of its own, must not pop the host's
    task group out from under the caller's scopes."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(anyio.sleep, 0.05)
        async with actorlock.plugin_load("memory", host_config("a", 1, lockspace=unique())) as plugin:
            with anyio.fail_after(60):
                await plugin.unload()
            await assert_unloaded(plugin)
            await anyio.lowlevel.checkpoint()


async def test_entering_a_running_plugin_again_is_an_invalid_state() -> None:
    async with actorlock.plugin_load("memory", host_config("a", 1, lockspace=unique())) as plugin:
        with pytest.raises(InvalidStateError, match="already"):
            async with plugin:
                pass
        await plugin.new_manager(ObjectType.DOMAIN)  # unharmed


# -- errors come out as they are, not wrapped ----------------------------------


async def test_an_unknown_plugin_is_refused_by_every_form() -> None:
    cfg = host_config("a", 1)
    with pytest.raises(InvalidParameterError, match="unknown lock plugin"):
        await actorlock.plugin_load("sync-manager", cfg)
    with pytest.raises(InvalidParameterError, match="unknown lock plugin"):
        async with actorlock.plugin_load("sync-manager", cfg):
            pass
    async with anyio.create_task_group() as tg:
        with pytest.raises(InvalidParameterError, match="unknown lock plugin"):
            await tg.start(run_plugin, "sync-manager", cfg)


async def test_a_start_up_failure_is_raised_as_is() -> None:
    # failure_action = pause without a pause_callback fails in the host's start-up
    cfg = host_config("a", 1, lockspace=unique(), locking={"failure_action": "pause"})
    with pytest.raises(ConfigError, match="pause_callback"):
        async with actorlock.plugin_load("memory", cfg):
            pass
    plugin = await actorlock.plugin_load("memory", cfg)
    with pytest.raises(ConfigError, match="pause_callback"):
        async with plugin:
            pass
    await assert_unloaded(plugin)
    async with anyio.create_task_group() as tg:
        with pytest.raises(ConfigError, match="pause_callback"):
            await tg.start(run_plugin, "memory", cfg)


async def test_an_error_in_the_block_is_raised_as_is() -> None:
    with pytest.raises(LookupError, match="mine"):
        async with actorlock.plugin_load("memory", host_config("a", 1, lockspace=unique())) as plugin:
            raise LookupError("mine")
    await assert_unloaded(plugin)
