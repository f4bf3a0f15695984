"""The destination believes the lockspace, not the source's word, about a commit (issue 10)."""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import pytest

import actorlock
from actorlock.errors import MigrationError
from actorlock.model import Lease, LeaseOwner

from .support import guest_process, unique
from .test_migration import DISKS, incoming_vm, owners, peer_config, start_vm

pytestmark = pytest.mark.anyio

SHORT = {"migration_timeout": 1.5, "prepare_timeout": 1.0, "transfer_margin": 0.5}


async def test_a_commit_the_lockspace_does_not_show_is_not_reported_in() -> None:
    space = unique()
    with guest_process() as guest:
        async with (
            await actorlock.plugin_load("memory", peer_config("a", 1, space, **SHORT)) as a,
            await actorlock.plugin_load("memory", peer_config("b", 2, space, **SHORT)) as b,
        ):

            async def lying_transfer(
                source: LeaseOwner, destination: LeaseOwner, incarnation: str, leases: Sequence[Lease]
            ) -> tuple[Lease, ...]:
                # Claims the move without making it, with tokens of its own.
                return tuple(Lease(x.key, x.mode, x.token + 100) for x in leases)

            a.host._coordinator.transfer = lying_transfer  # type: ignore[method-assign,assignment]
            source = await start_vm(a, guest.pid)
            before = owners(await a.host.leases())
            await source.prepare_migrate(b.host.peer_endpoint)
            dest = await incoming_vm(b, guest.pid)
            failures: list[BaseException] = []

            async def complete_in() -> None:
                try:
                    await dest.complete_migrate_in(0)
                except MigrationError as exc:
                    failures.append(exc)

            with anyio.fail_after(20):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(complete_in)
                    tg.start_soon(source.complete_migrate_in, 0)
            assert len(failures) == 1, "the destination reported a commit the lockspace does not show"
            assert "source kept the leases" in str(failures[0])
            assert owners(await a.host.leases()) == before
            assert set(before) == {f"disk:{p}" for p in DISKS}
