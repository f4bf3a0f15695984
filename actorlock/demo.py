"""``actorlock demo``: the seed's lifecycle and migration sequences, as a timeline.

Three simulated hosts share one lockspace (a temporary directory unless one
is given): host-a and host-b are peers (CURVE-authenticated ZeroMQ on
loopback), host-c stands for every other host and must be refused whenever
it reaches for vm1's disk. ``sleep`` processes stand in for QEMU; vm1's run
under the supervisor each host names (``get_supervisor_path``/``args``, then
``get_child``), as libvirt runs QEMU, so a coordinator that died for good
would not leave them running past its lease.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import Process

from .constants import AcquireFlags, MigrateFlags, NewFlags, ObjectType, ResourceFlags, ResourceType
from .errors import ActorlockError, ResourceBusyError
from .lockmanager import LockManager, LockManagerPlugin, plugin_load
from .lockspace_report import lockspace_report
from .timing_presets import fast_timing
from .transport.zmq import KeyPair, generate_keypair, save_keypair

# Short timings so the demo finishes in seconds (the preset, validated, at 8x: a
# lease of 2 s that a human can watch expire).
DEMO_TIMING = fast_timing(scale=8, renew_interval=0.5, fence_timeout=1.0, host_dead=3.5)
DEMO_PEER = {"endpoint": "tcp://127.0.0.1:*", "migration_timeout": 10.0, "transfer_margin": 1.0}

VM1 = "6f1c3d2e-0000-4000-8000-000000000001"
VM2 = "6f1c3d2e-0000-4000-8000-000000000002"
VM1_DISK = "/var/lib/libvirt/images/vm1.qcow2"
VM1_ISO = "/var/lib/libvirt/images/install.iso"
VM1_DATA = "/var/lib/libvirt/images/vm1-data.qcow2"


class Timeline:
    def __init__(self, out: Callable[[str], Any]) -> None:
        self._out = out
        self._t0 = anyio.current_time()

    def __call__(self, host: str, text: str) -> None:
        ms = (anyio.current_time() - self._t0) * 1000
        self._out(f"[{ms:8.1f} ms] {host:<7} {text}")


class Demo:
    def __init__(self, root: Path, backend: str, out: Callable[[str], Any]) -> None:
        self.root = root
        self.backend = backend
        self.out = out
        self.say = Timeline(out)
        self.keys: dict[str, KeyPair] = {}

    def config(self, name: str, host_id: int, *, peer: str = "") -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "host": {"name": name, "id": host_id, "state_dir": str(self.root / f"state-{name}")},
            "timing": DEMO_TIMING,
            "locking": {"backend": self.backend, "kill_grace": 0.5},
            "file": {"lockspace_dir": str(self.root / "lockspace")},
            "memory": {"lockspace": f"demo-{self.root.name}"},
        }
        if peer:
            cfg["peer"] = {
                **DEMO_PEER,
                "key_file": str(self.root / f"{name}.key"),
                "allowed_keys": [self.keys[peer].public],
            }
        return cfg

    async def manager(
        self, plugin: LockManagerPlugin, uuid: str, name: str, flags: NewFlags = NewFlags.NONE
    ) -> LockManager:
        manager = await plugin.new_manager(ObjectType.DOMAIN, flags)
        manager.set_parameter("uuid", uuid)
        manager.set_parameter("name", name)
        return manager

    async def supervised(self, stack: contextlib.AsyncExitStack, manager: LockManager) -> tuple[Process, int]:
        """Run a stand-in QEMU under the manager's supervisor, as libvirt does; (supervisor, guest pid).

        The supervisor is this process's child (the daemon's role), stopped and
        reaped when ``stack`` closes; stopping it stops its guest.
        """
        argv = [manager.get_supervisor_path(), *manager.get_supervisor_args(), "sleep", "300"]
        supervisor = await stack.enter_async_context(_guest(argv))
        return supervisor, await manager.get_child()

    async def refused(self, plugin: LockManagerPlugin, when: str) -> None:
        """host-c reaches for vm1's disk: it must be refused."""
        vm2 = await self.manager(plugin, VM2, "vm2")
        vm2.register_resource(ResourceType.DISK, VM1_DISK)
        try:
            await vm2.acquire_object()
        except ResourceBusyError as exc:
            holder = ", ".join(f"{d[-4:]}@{h}" for h, d in exc.holders)
            self.say("host-c", f"vm2 refused {when} (disk held by {holder})")
            return
        self.say("host-c", f"vm2 took vm1's disk {when}: THIS MUST NOT HAPPEN")
        raise AssertionError("a third host acquired a disk another host holds")

    async def show_leases(self) -> None:
        if self.backend != "file":
            return
        self.out("")
        self.out(f"$ actorlock leases --lockspace {self.root / 'lockspace'} --observe 0")
        report = await lockspace_report(self.root / "lockspace", observe=0)
        self.out("    " + report.to_text().replace("\n", "\n    "))
        self.out("")


def _leases(status: Any) -> str:
    return ", ".join(f"{lease.key} (token {lease.token})" for lease in status.leases) or "none"


@contextlib.asynccontextmanager
async def _guest(argv: list[str] | None = None) -> AsyncIterator[Process]:
    async with await anyio.open_process(argv or ["sleep", "300"], stdin=None, stdout=None) as qemu:
        try:
            yield qemu
        finally:
            if qemu.returncode is None:
                qemu.kill()


async def run_demo(lockspace: Path | None, backend: str, out: Callable[[str], Any]) -> None:
    with tempfile.TemporaryDirectory(prefix="actorlock-demo-") as tmp:
        root = Path(tmp)
        demo = Demo(root, backend, out)

        def prepare() -> None:
            if lockspace is not None:
                (root / "lockspace").symlink_to(lockspace.resolve(), target_is_directory=True)
            else:
                (root / "lockspace").mkdir()
            for name in ("host-a", "host-b"):
                demo.keys[name] = KeyPair(*generate_keypair())
                save_keypair(root / f"{name}.key", demo.keys[name])

        await anyio.to_thread.run_sync(prepare)
        out(f"actorlock demo: {backend} lockspace at {root / 'lockspace'}")
        async with contextlib.AsyncExitStack() as guests:
            async with plugin_load(backend, demo.config("host-b", 2, peer="host-a")) as plugin_b:
                demo.say("host-b", "plugin loaded (joined the lockspace, peer service up)")
                async with plugin_load(backend, demo.config("host-c", 3)) as plugin_c:
                    demo.say("host-c", "plugin loaded (joined the lockspace)")
                    await _single_host(demo, plugin_b, plugin_c, guests)
                demo.say("host-c", "plugin unloaded")
            demo.say("host-b", "plugin unloaded")
        await demo.show_leases()


async def _single_host(
    demo: Demo, plugin_b: LockManagerPlugin, plugin_c: LockManagerPlugin, guests: contextlib.AsyncExitStack
) -> None:
    say = demo.say
    a_cfg = demo.config("host-a", 1, peer="host-b")
    async with plugin_load(demo.backend, a_cfg) as plugin_a:
        say("host-a", "plugin loaded (joined the lockspace, peer service up)")

        vm1 = await demo.manager(plugin_a, VM1, "vm1")
        vm1.register_resource(ResourceType.DISK, VM1_DISK)
        vm1.register_resource(ResourceType.DISK, VM1_ISO, ResourceFlags.READONLY)
        await vm1.acquire_object(AcquireFlags.REGISTER_ONLY)
        qemu_a, pid = await demo.supervised(guests, vm1)
        say("host-a", f"vm1 registered, guest pid {pid} started paused under supervisor {qemu_a.pid}")
        status = await vm1.acquire_object()
        say("host-a", f"vm1 CPUs started: leases {_leases(status)}; readonly ISO not locked")
        await demo.show_leases()
        await demo.refused(plugin_c, "while host-a runs vm1")

        status = await vm1.acquire_resource(ResourceType.DISK, VM1_DATA)
        say("host-a", f"vm1 hotplug {VM1_DATA}: leases {_leases(status)}")
        status = await vm1.release_resource(ResourceType.DISK, VM1_DATA)
        say("host-a", f"vm1 unplug {VM1_DATA}: leases {_leases(status)}")

        state = await vm1.release_all(save_state=True)
        say("host-a", f"vm1 paused: leases released, lock state saved {state.to_string()}")
        status = await vm1.acquire_object(state=state)
        say("host-a", f"vm1 resumed with that state: leases {_leases(status)}")
        await vm1.free()

    say("host-a", "coordinator stopped (libvirtd restart); vm1 keeps running and keeps its leases")
    await demo.refused(plugin_c, "while host-a's coordinator is down")
    async with plugin_load(demo.backend, a_cfg) as plugin_a:
        say("host-a", f"coordinator back; resumed its lockspace membership: {plugin_a.host.resumed}")
        vm1 = await demo.manager(plugin_a, VM1, "vm1", NewFlags.ATTACH)
        pid = await vm1.get_child()
        status = await vm1.inquire()
        say("host-a", f"vm1 re-attached: guest pid {pid}, leases {_leases(status)} (same tokens: no gap)")
        await _migrations(demo, plugin_a, plugin_b, plugin_c, vm1, qemu_a, guests)
    say("host-a", "plugin unloaded")


async def _migrations(
    demo: Demo,
    plugin_a: LockManagerPlugin,
    plugin_b: LockManagerPlugin,
    plugin_c: LockManagerPlugin,
    vm1_a: LockManager,
    qemu_a: Process,
    guests: contextlib.AsyncExitStack,
) -> None:
    say = demo.say
    b_uri = plugin_b.host.peer_endpoint
    await vm1_a.prepare_migrate(b_uri)
    say("host-a", f"vm1 prepare_migrate({b_uri}): host-b verified the offered leases")
    vm1_b = await demo.manager(plugin_b, VM1, "vm1", NewFlags.MIGRATE)
    vm1_b.register_resource(ResourceType.DISK, VM1_DISK)
    vm1_b.register_resource(ResourceType.DISK, VM1_ISO, ResourceFlags.READONLY)
    qemu_b, pid_b = await demo.supervised(guests, vm1_b)
    say("host-b", f"vm1 incoming: guest pid {pid_b} started paused under its own supervisor")
    await demo.refused(plugin_c, "during the migration")
    async with anyio.create_task_group() as tg:
        tg.start_soon(vm1_b.complete_migrate_in, 0)
        tg.start_soon(vm1_a.complete_migrate_in, 0)
    status = await vm1_b.inquire()
    say("host-b", f"vm1 migrated in: leases {_leases(status)} (one atomic transfer, tokens bumped)")
    qemu_a.terminate()  # the source's supervisor, released from host-a's deadline by the commit
    await qemu_a.wait()
    await vm1_a.shutdown()
    await vm1_a.free()
    say("host-a", "vm1's old guest stopped; source shut down (nothing left to release)")
    await demo.refused(plugin_c, "after the migration")

    a_uri = plugin_a.host.peer_endpoint
    await vm1_b.prepare_migrate(a_uri)
    say("host-b", f"vm1 prepare_migrate({a_uri}) back to host-a")
    async with contextlib.AsyncExitStack() as incoming:
        vm1_a = await demo.manager(plugin_a, VM1, "vm1", NewFlags.MIGRATE)
        vm1_a.register_resource(ResourceType.DISK, VM1_DISK)
        vm1_a.register_resource(ResourceType.DISK, VM1_ISO, ResourceFlags.READONLY)
        await demo.supervised(incoming, vm1_a)
        say("host-a", "vm1 incoming; then QEMU's migration fails: both sides cancel")
        async with anyio.create_task_group() as tg:
            tg.start_soon(vm1_a.complete_migrate_in, MigrateFlags.CANCEL)
            tg.start_soon(vm1_b.complete_migrate_in, MigrateFlags.CANCEL)
        await vm1_a.shutdown()
        await vm1_a.free()
    status = await vm1_b.inquire()
    say("host-b", f"vm1 stays on host-b: leases {_leases(status)} (unchanged)")
    await demo.refused(plugin_c, "after the cancelled migration")

    qemu_b.terminate()
    await qemu_b.wait()
    await vm1_b.shutdown()
    await vm1_b.free()
    say("host-b", "vm1 guest quit; shut down: every lease released")

    vm2 = await demo.manager(plugin_c, VM2, "vm2")
    vm2.register_resource(ResourceType.DISK, VM1_DISK)
    try:
        status = await vm2.acquire_object()
    except ActorlockError as exc:
        say("host-c", f"vm2 could not start on the freed disk: {exc}")
        raise
    say("host-c", f"vm2 started: leases {_leases(status)}")
    await vm2.shutdown()
    await vm2.free()
    say("host-c", "vm2 shut down")
