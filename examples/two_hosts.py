"""Two host processes hand a guest's disk leases back and forth over ZeroMQ.

    python examples/two_hosts.py [--rounds 3] [--lockspace DIR] [--plaintext] [--backend asyncio|trio]

The script starts two host coordinators as separate child processes
(:func:`actorlock._verify.host_processes.spawn_host`, the harness this
project's own process tests use). Both join one file lockspace
(a temporary directory, or ``--lockspace DIR``) and run a ``[peer]`` service
on loopback, with CURVE by default: each host gets its own key pair and
admits only the other's public key. A ``sleep`` process stands in for QEMU
on each side.

The parent drives the hosts through a line-based control channel
(``host.call("prepare", ...)``; ops: start, incoming, prepare, commit,
cancel, shutdown, status, attach, leases, known, ping). Each host runs the
libvirt lock-manager calls the op names, so every migration crosses
processes over ZeroMQ.

The parent also joins the lockspace itself as host 3 and tries to take each
disk between every two steps; it must be refused every time. After the
round trips it shows a migration that fails (the guest's own transfer broke)
and is cancelled on both sides: the source keeps every lease and token.

Exit status 0 when everything happened as it must; 1 with the reason (and
the tail of each host's log) otherwise.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from functools import partial
from pathlib import Path
from typing import Any

import anyio

import actorlock
from actorlock._verify.host_processes import (
    KILL_GRACE,
    TIMING,
    HostError,
    HostGone,
    HostKeys,
    HostProcess,
    concurrently,
    guest_processes,
    make_keys,
    spawn_host,
    start_guest,
    stop_guest,
)
from actorlock.errors import ActorlockError, ResourceBusyError
from actorlock.lockspace_report import lockspace_report
from actorlock.model import LeaseRecord

GUEST_UUID = "5e1f0a2b-7c3d-4e5f-8a9b-0c1d2e3f4a5b"
GUEST_NAME = "web"
DISKS = ("/images/web-root.qcow2", "/images/web-data.qcow2")
READONLY = ("/images/install.iso",)  # never leased: shows that only writable disks are locked
INTRUDER_UUID = "00000000-0000-4000-8000-00000000dead"


class Unexpected(Exception):
    """Something happened that must not (or did not happen that must)."""


# The condition is what an assert-like helper checks, not a flag: positional like assert's.
def check(condition: bool, problem: str) -> None:  # noqa: FBT001
    if not condition:
        raise Unexpected(problem)


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


def guest_args(pid: int) -> dict[str, Any]:
    return {
        "uuid": GUEST_UUID,
        "name": GUEST_NAME,
        "disks": list(DISKS),
        "readonly": list(READONLY),
        "pid": pid,
    }


def owners(records: Sequence[LeaseRecord]) -> dict[str, list[tuple[str, int]]]:
    """``{key: [(host, token), ...]}`` for the guest's disks."""
    keys = {actorlock.disk(path).key for path in DISKS}
    return {r.key: [(h.owner.host, h.token) for h in r.holders] for r in records if r.key in keys}


class Demo:
    """The migrations, with every step checked and printed."""

    def __init__(
        self,
        hosts: Mapping[str, HostProcess],
        intruder: actorlock.Host,
        lockspace: Path,
        guests: list[anyio.abc.Process],
    ) -> None:
        self.hosts = hosts
        self.intruder = intruder
        self.lockspace = lockspace
        self.guests = guests
        self.running: dict[str, anyio.abc.Process] = {}  # host name -> its guest process
        self.refusals = 0

    async def holders(self) -> dict[str, list[tuple[str, int]]]:
        return owners(await self.intruder.leases())

    async def expect_holder(self, host: str, what: str) -> dict[str, list[tuple[str, int]]]:
        found = await self.holders()
        for path in DISKS:
            key = actorlock.disk(path).key
            holders = found.get(key, [])
            check(
                [h for h, _ in holders] == [host],
                f"{what}: {key} should be held by host {host} alone, the lockspace says {holders}",
            )
        return found

    async def refused(self, when: str, holder: str) -> None:
        """Host 3 tries each disk: every attempt must be refused, naming ``holder``."""
        domain = self.intruder.domain(INTRUDER_UUID, name="intruder")
        for path in DISKS:
            try:
                await domain.start([actorlock.disk(path)])
            except ResourceBusyError as exc:
                check(
                    [h for h, _ in exc.holders] == [holder],
                    f"host 3 was refused {path} {when}, but the holders named are {exc.holders}",
                )
                self.refusals += 1
            else:
                await domain.shutdown()
                raise Unexpected(f"host 3 acquired {path} {when}: two hosts could write one disk")
        print(f"    host 3 tries every disk {when}: refused, held by {holder}")

    async def show_lockspace(self, title: str, *, with_hosts: bool = False) -> None:
        # Observe briefly so the liveness column says who is renewing.
        report = await lockspace_report(self.lockspace, 0.1)
        text = report.to_text()
        start = text.index("ID") if with_hosts else text.index("RESOURCE")
        table = text[start:]
        print(f"    `actorlock leases` {title}:")
        for line in table.splitlines():
            print(f"      {line}".rstrip())

    async def start(self, name: str) -> None:
        guest = await start_guest(self.guests)
        self.running[name] = guest
        result = await self.hosts[name].call("start", **guest_args(guest.pid))
        tokens = ", ".join(f"{key} #{token}" for key, token in result["leases"])
        print(f"host {name} starts the guest (pid {guest.pid}) in {ms(result['elapsed'])}: {tokens}")
        await self.expect_holder(name, "after the start")
        await self.refused("while it runs", holder=name)
        await self.show_lockspace("after the start", with_hosts=True)

    async def prepare(self, src: str, dst: str, label: str) -> None:
        result = await self.hosts[src].call("prepare", uuid=GUEST_UUID, dest=self.hosts[dst].endpoint)
        where = self.hosts[dst].endpoint
        print(f"  {label} prepare on {src} -> {dst} ({where}): accepted in {ms(result['elapsed'])}")
        await self.refused("after prepare", holder=src)
        guest = await start_guest(self.guests)
        self.running[dst] = guest
        result = await self.hosts[dst].call("incoming", **guest_args(guest.pid))
        print(f"  {label} destination {dst} registered the incoming guest (pid {guest.pid}, no leases yet)")
        await self.refused("with the guest registered on both hosts", holder=src)

    async def migrate(self, src: str, dst: str, label: str) -> None:
        before = await self.expect_holder(src, f"{label} before the migration")
        await self.prepare(src, dst, label)
        # libvirt completes both sides independently; each waits for the other's word.
        done_src, done_dst = await concurrently(
            partial(self.hosts[src].call, "commit", uuid=GUEST_UUID),
            partial(self.hosts[dst].call, "commit", uuid=GUEST_UUID),
        )
        took = f"{src} in {ms(done_src['elapsed'])}, {dst} in {ms(done_dst['elapsed'])}"
        print(f"  {label} both commit: {took}")
        after = await self.expect_holder(dst, f"{label} after the commit")
        for key in sorted(after):
            ((_, old),), ((_, new),) = before[key], after[key]
            check(new == old + 1, f"{key}: the token went {old} -> {new}, expected {old + 1}")
            print(f"      {key}: {src} #{old} -> {dst} #{new}")
        status = await self.hosts[dst].call("status", uuid=GUEST_UUID)
        check(status["phase"] == "running", f"{label}: the guest on {dst} is {status['phase']}, not running")
        await self.refused("after the commit", holder=dst)
        # The source's QEMU exits once the migration is over; then libvirt shuts its lock manager down.
        await stop_guest(self.running.pop(src))
        result = await self.hosts[src].call("shutdown", uuid=GUEST_UUID)
        print(f"  {label} source {src} shut its side down in {ms(result['elapsed'])} (it held nothing)")
        await self.expect_holder(dst, f"{label} after the source's shutdown")
        await self.refused("after the source's shutdown", holder=dst)
        await self.show_lockspace(f"after round {label.strip('[]')}")

    async def failed_migration(self, src: str, dst: str, label: str) -> None:
        before = await self.expect_holder(src, f"{label} before the migration")
        await self.prepare(src, dst, label)
        print(f"  {label} the guest's own migration fails (say QEMU's transfer broke): cancel on both sides")
        await concurrently(
            partial(self.hosts[src].call, "cancel", uuid=GUEST_UUID),
            partial(self.hosts[dst].call, "cancel", uuid=GUEST_UUID),
        )
        after = await self.expect_holder(src, f"{label} after the cancel")
        check(after == before, f"{label}: a cancelled migration changed the leases: {before} -> {after}")
        for key in sorted(after):
            print(f"      {key}: still {src} #{after[key][0][1]}")
        status = await self.hosts[src].call("status", uuid=GUEST_UUID)
        phase = status["phase"]
        check(phase == "running", f"{label}: after the cancel the guest on {src} is {phase}")
        await stop_guest(self.running.pop(dst))
        await self.hosts[dst].call("shutdown", uuid=GUEST_UUID)
        print(f"  {label} the source keeps the guest, every lease and every token; {dst} dropped its side")
        await self.refused("after the cancel", holder=src)

    async def finish(self, holder: str) -> None:
        await stop_guest(self.running.pop(holder))
        await self.hosts[holder].call("shutdown", uuid=GUEST_UUID)
        last = {r.key: r.token for r in await self.intruder.leases()}
        domain = self.intruder.domain(INTRUDER_UUID, name="intruder")
        status = await domain.start([actorlock.disk(path) for path in DISKS])
        got = {lease.key: lease.token for lease in status.leases}
        for key, token in got.items():
            check(token == last[key] + 1, f"{key}: host 3 got token {token} after {last[key]}: not fresh")
        print(f"host {holder} shuts the guest down; now host 3 gets the disks: {got}")
        await domain.shutdown()


async def run_demo(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="two-hosts-") as tmp:
        workdir = Path(tmp)
        lockspace = args.lockspace
        if lockspace is None:
            lockspace = workdir / "lockspace"
            lockspace.mkdir()
        keys: dict[str, HostKeys | None] = dict.fromkeys(("a", "b"))
        if not args.plaintext:
            keys.update(make_keys(workdir, ["a", "b"]))
        hosts: dict[str, HostProcess] = {}
        try:
            with anyio.fail_after(60):
                async with AsyncExitStack() as stack:
                    guests = await stack.enter_async_context(guest_processes())

                    async def spawn(name: str, host_id: int) -> None:
                        host = spawn_host(
                            name, host_id, lockspace, workdir, keys=keys[name], backend=args.backend
                        )
                        hosts[name] = await stack.enter_async_context(host)

                    # One after the other: the exit stack is not for concurrent use.
                    await spawn("a", 1)
                    await spawn("b", 2)
                    security = "plain text" if args.plaintext else "CURVE, each host admits the other's key"
                    print(f"lockspace {lockspace}; peer service: {security}")
                    for host in hosts.values():
                        print(f"host {host.name}: pid {host.pid}, peer endpoint {host.endpoint}")
                    intruder_config = {
                        "host": {"name": "host-3", "id": 3},
                        "timing": TIMING,
                        "locking": {"backend": "file", "kill_grace": KILL_GRACE},
                        "file": {"lockspace_dir": str(lockspace)},
                    }
                    intruder = await stack.enter_async_context(actorlock.open_host(intruder_config))
                    print(
                        "host-3 (this script) joins the lockspace; it tries to take the disks at every step"
                    )
                    demo = Demo(hosts, intruder, lockspace, guests)
                    await demo.start("a")
                    src, dst = "a", "b"
                    for round_no in range(1, args.rounds + 1):
                        print(f"round {round_no}: migrate the guest {src} -> {dst}")
                        await demo.migrate(src, dst, f"[{round_no}]")
                        src, dst = dst, src
                    print(f"round {args.rounds + 1}: a migration {src} -> {dst} that fails")

                    await demo.failed_migration(src, dst, f"[{args.rounds + 1}]")
                    await demo.finish(src)
                    summary = f"{args.rounds} migrations committed, 1 cancelled"
                    print(f"ok: {summary}; host 3 was refused {demo.refusals} times")
        except (Unexpected, HostError, HostGone, ActorlockError, TimeoutError) as exc:
            print(f"two_hosts: FAILED: {exc}", file=sys.stderr)
            for host in hosts.values():
                tail = host.log_tail()
                if tail:
                    print(f"--- log of host {host.name} (last lines) ---\n{tail}", file=sys.stderr)
            return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="migrations to commit (default 3)")
    parser.add_argument("--lockspace", type=Path, help="an existing lockspace directory (default: temporary)")
    parser.add_argument("--plaintext", action="store_true", help="run the peer service without CURVE")
    parser.add_argument("--backend", default="asyncio", choices=("asyncio", "trio"))
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    started = time.perf_counter()
    status = anyio.run(run_demo, args, backend=args.backend)
    print(f"({time.perf_counter() - started:.1f} s)")
    return status


if __name__ == "__main__":
    sys.exit(main())
