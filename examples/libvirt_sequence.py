"""The seed document's guest-startup and shutdown sequence, call for call.

QEMU (a ``sleep`` here) runs under the supervisor the lock manager names, as
in the seed's migration sequence: ``[get_supervisor_path(), *get_supervisor_args(),
*qemu_argv]``, then ``get_child()`` for its pid. Killing the supervisor kills
the guest; so does the supervisor itself if no coordinator renews the lease.

python examples/libvirt_sequence.py
"""

from __future__ import annotations

import tempfile

import anyio

import actorlock
from actorlock import ObjectType, ResourceFlags, ResourceType


async def main() -> None:
    with tempfile.TemporaryDirectory() as lockspace, tempfile.TemporaryDirectory() as state_dir:
        cfg = {
            # state_dir: the restart journal, and the supervisors' control socket.
            "host": {"name": "hv1", "id": 1, "state_dir": state_dir},
            "timing": {"renew_interval": 0.5, "lease_timeout": 2.0, "fence_timeout": 1.0, "host_dead": 3.5},
            "locking": {"kill_grace": 0.5},
            "file": {"lockspace_dir": lockspace},
        }
        # At libvirtd startup: the plugin runs until the block ends (libvirtd shutdown).
        # A daemon whose plugin outlives a block uses a task group instead:
        #     plugin = await task_group.start(actorlock.run_plugin, "file", cfg)
        #     ...
        #     await plugin.unload()
        async with actorlock.plugin_load("file", cfg) as plugin:
            # At guest startup
            manager = await plugin.new_manager(ObjectType.DOMAIN, 0)
            manager.set_parameter("id", 1)
            manager.set_parameter("uuid", "c7a5fdbd-cdaf-9455-926a-d65c16db1809")
            manager.set_parameter("name", "demo")
            manager.register_resource(ResourceType.DISK, "/var/lib/libvirt/images/demo.img")
            manager.register_resource(
                ResourceType.DISK, "/var/lib/libvirt/images/cd.iso", ResourceFlags.READONLY
            )
            status = await manager.acquire_object()
            print("acquired:", [(lease.key, lease.token) for lease in status.leases])
            # run QEMU under the supervisor (virCommandExec of [path, *args, *qemu_argv])
            command = [manager.get_supervisor_path(), *manager.get_supervisor_args(), "sleep", "30"]
            async with await anyio.open_process(command, stdout=None) as supervisor:
                qemu_pid = await manager.get_child()
                print(f"QEMU runs as pid {qemu_pid} under supervisor {supervisor.pid}")
                # ... then at guest shutdown: kill(supervisorpid) stops QEMU with it
                supervisor.terminate()
                await supervisor.wait()
            await manager.shutdown()
            await manager.free()
            print("released; records:", [(r.key, len(r.holders)) for r in await plugin.host.leases()])
        # At libvirtd shutdown: leaving the block unloads the plugin (virLockManagerPluginUnload)


if __name__ == "__main__":
    anyio.run(main)
