"""Disk keys: one shared disk, one key, however its absolute path is spelled (issue 10)."""

from __future__ import annotations

from pathlib import Path

import pytest

import actorlock
from actorlock import ResourceType
from actorlock.errors import InvalidParameterError, ResourceBusyError
from actorlock.model import Resource, disk

from .support import host_config, unique


@pytest.mark.parametrize(
    "spelling",
    [
        "/images/a.img",
        "//images/a.img",
        "///images//a.img",
        "/images/./a.img",
        "/images/x/../a.img",
        "/images/a.img/",
    ],
)
def test_absolute_spellings_of_one_path_are_one_key(spelling: str) -> None:
    assert disk(spelling).key == "disk:/images/a.img"


@pytest.mark.parametrize("path", ["images/a.img", "./a.img", "../a.img", "a.img"])
def test_relative_disk_paths_are_refused(path: str) -> None:
    with pytest.raises(InvalidParameterError, match="absolute"):
        disk(path)
    with pytest.raises(InvalidParameterError, match="absolute"):
        Resource(ResourceType.DISK, path)


def test_lease_names_are_not_paths() -> None:
    assert Resource(ResourceType.LEASE, "vm1-lease", lockspace="s").key == "lease:s/vm1-lease"


@pytest.mark.anyio
async def test_two_spellings_cannot_both_hold_the_disk() -> None:
    space = unique()
    async with actorlock.open_host(host_config("a", 1, lockspace=space)) as a:
        await a.domain("u1").start([actorlock.disk("/images/a.img")])
        with pytest.raises(ResourceBusyError):
            await a.domain("u2").start([actorlock.disk("//images/../images/a.img")])


@pytest.mark.anyio
@pytest.mark.parametrize("resolve", [True, False])
async def test_symlinks_are_resolved_only_when_configured(tmp_path: Path, *, resolve: bool) -> None:
    real, link = tmp_path / "real.img", tmp_path / "link.img"
    real.touch()
    link.symlink_to(real)
    cfg = host_config("a", 1, lockspace=unique(), locking={"resolve_disk_symlinks": resolve})
    async with actorlock.open_host(cfg) as a:
        held = await a.domain("u1").start([actorlock.disk(str(link))])
        assert [lease.key for lease in held.leases] == [f"disk:{real if resolve else link}"]
        if resolve:
            with pytest.raises(ResourceBusyError):
                await a.domain("u2").start([actorlock.disk(str(real))])
        else:
            await a.domain("u2").start([actorlock.disk(str(real))])
        await a.domain("u1").unplug(actorlock.disk(str(link)))
        assert (await a.domain("u1").status()).leases == ()
