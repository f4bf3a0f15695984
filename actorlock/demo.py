"""``actorlock demo``: the seed's lifecycle sequences, printed as a timeline.

Two simulated hosts share one lockspace (a temporary directory unless one is
given). A ``sleep`` process stands in for each QEMU guest.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import Process

from .constants import AcquireFlags, NewFlags, ObjectType, ResourceFlags, ResourceType
from .errors import ResourceBusyError
from .inspect import lockspace_report
from .lockmanager import LockManager, LockManagerPlugin, plugin_load

# Short timings so the demo finishes in seconds; the rule host_dead >=
# (lease_timeout + fence_timeout) * 1.01 still holds.
DEMO_TIMING = {"renew_interval": 0.5, "lease_timeout": 2.0, "fence_timeout": 1.0, "host_dead": 3.5}

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


def _config(root: Path, name: str, host_id: int, backend: str) -> dict[str, Any]:
    return {
        "host": {"name": name, "id": host_id, "state_dir": str(root / f"state-{name}")},
        "timing": DEMO_TIMING,
        "locking": {"backend": backend, "kill_grace": 0.5},
        "file": {"lockspace_dir": str(root / "lockspace")},
        "memory": {"lockspace": f"demo-{root.name}"},
    }


async def _manager(
    plugin: LockManagerPlugin, uuid: str, name: str, flags: NewFlags = NewFlags.NONE
) -> LockManager:
    manager = await plugin.new_manager(ObjectType.DOMAIN, flags)
    manager.set_parameter("uuid", uuid)
    manager.set_parameter("name", name)
    return manager


def _leases(status: Any) -> str:
    return ", ".join(f"{lease.key} (token {lease.token})" for lease in status.leases) or "none"


async def run_demo(lockspace: Path | None, backend: str, out: Callable[[str], Any]) -> None:
    with tempfile.TemporaryDirectory(prefix="actorlock-demo-") as tmp:
        root = Path(tmp)

        def prepare() -> None:
            if lockspace is not None:
                (root / "lockspace").symlink_to(lockspace.resolve(), target_is_directory=True)
            else:
                (root / "lockspace").mkdir()

        await anyio.to_thread.run_sync(prepare)
        await _run(root, backend, Timeline(out), out)


async def _run(root: Path, backend: str, say: Timeline, out: Callable[[str], Any]) -> None:
    out(f"actorlock demo: {backend} lockspace at {root / 'lockspace'}")
    a_cfg, b_cfg = _config(root, "host-a", 1, backend), _config(root, "host-b", 2, backend)
    # A sleeping process stands in for QEMU.
    async with await anyio.open_process(["sleep", "300"]) as qemu:
        try:
            plugin_b = await plugin_load(backend, b_cfg)
            try:
                await _lifecycle(a_cfg, plugin_b, qemu, say, out, root)
            finally:
                await plugin_b.unload()
                say("host-b", "plugin unloaded")
        finally:
            if qemu.returncode is None:
                qemu.kill()
    await _show_leases(root, backend, out)


async def _show_leases(root: Path, backend: str, out: Callable[[str], Any]) -> None:
    if backend != "file":
        return
    out("")
    out(f"$ actorlock leases --lockspace {root / 'lockspace'} --observe 0")
    report = await lockspace_report(root / "lockspace", observe=0)
    out("    " + report.to_text().replace("\n", "\n    "))
    out("")


async def _lifecycle(
    a_cfg: dict[str, Any],
    plugin_b: LockManagerPlugin,
    qemu: Process,
    say: Timeline,
    out: Callable[[str], Any],
    root: Path,
) -> None:
    say("host-b", "plugin loaded (joined the lockspace)")
    plugin_a = await plugin_load(a_cfg["locking"]["backend"], a_cfg)
    say("host-a", "plugin loaded (joined the lockspace)")

    vm1 = await _manager(plugin_a, "6f1c3d2e-0000-4000-8000-000000000001", "vm1")
    vm1.set_parameter("pid", qemu.pid)
    vm1.register_resource(ResourceType.DISK, VM1_DISK)
    vm1.register_resource(ResourceType.DISK, VM1_ISO, ResourceFlags.READONLY)
    await vm1.acquire_object(AcquireFlags.REGISTER_ONLY)
    say("host-a", f"vm1 registered, guest pid {qemu.pid} started paused (no leases yet)")
    status = await vm1.acquire_object()
    say("host-a", f"vm1 CPUs started: leases {_leases(status)}; readonly ISO not locked")
    await _show_leases(root, a_cfg["locking"]["backend"], out)

    vm2 = await _manager(plugin_b, "6f1c3d2e-0000-4000-8000-000000000002", "vm2")
    vm2.register_resource(ResourceType.DISK, VM1_DISK)
    try:
        await vm2.acquire_object()
        say("host-b", "vm2 started on vm1's disk: THIS MUST NOT HAPPEN")
    except ResourceBusyError as exc:
        say("host-b", f"vm2 refused: {exc}")

    status = await vm1.acquire_resource(ResourceType.DISK, VM1_DATA)
    say("host-a", f"vm1 hotplug {VM1_DATA}: leases {_leases(status)}")
    status = await vm1.release_resource(ResourceType.DISK, VM1_DATA)
    say("host-a", f"vm1 unplug {VM1_DATA}: leases {_leases(status)}")

    state = await vm1.release_all(save_state=True)
    say("host-a", f"vm1 paused: leases released, lock state saved {state.to_string()}")
    status = await vm1.acquire_object(state=state)
    say("host-a", f"vm1 resumed with that state: leases {_leases(status)}")
    await vm1.free()

    await plugin_a.unload()
    say("host-a", "coordinator stopped (libvirtd restart); vm1 keeps running and keeps its leases")
    try:
        await vm2.acquire_object()
        say("host-b", "vm2 took the disk while host-a restarted: THIS MUST NOT HAPPEN")
    except ResourceBusyError:
        say("host-b", "vm2 still refused while host-a's coordinator is down")
    plugin_a = await plugin_load(a_cfg["locking"]["backend"], a_cfg)
    try:
        say("host-a", f"coordinator back; resumed its lockspace membership: {plugin_a.host.resumed}")
        vm1 = await _manager(plugin_a, "6f1c3d2e-0000-4000-8000-000000000001", "vm1", NewFlags.ATTACH)
        pid = await vm1.get_child()
        status = await vm1.inquire()
        say("host-a", f"vm1 re-attached: guest pid {pid}, leases {_leases(status)} (same tokens: no gap)")

        qemu.terminate()
        await qemu.wait()
        say("host-a", "vm1 guest quit")
        await vm1.shutdown()
        await vm1.free()
        say("host-a", "vm1 shut down: every lease released")

        status = await vm2.acquire_object()
        say("host-b", f"vm2 started: leases {_leases(status)}")
        await vm2.shutdown()
        await vm2.free()
        say("host-b", "vm2 shut down")
    finally:
        await plugin_a.unload()
        say("host-a", "plugin unloaded")
