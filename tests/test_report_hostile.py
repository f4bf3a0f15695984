"""`actorlock leases` on a lockspace with bad entries: every good record shown, the bad ones marked."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

import actorlock
from actorlock.cli import main

from .lease_files import lease_lock
from .support import host_config


def test_leases_prints_every_good_record_and_marks_the_bad(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lockspace = tmp_path / "ls"
    lockspace.mkdir()
    cfg = host_config("host-a", 1, backend="file", file={"lockspace_dir": str(lockspace)})

    async def hold() -> None:
        async with actorlock.open_host(cfg) as host:
            await host.domain("u1").start([actorlock.disk("/d/1.img")])
            await host.domain("u2").start([actorlock.disk("/d/2.img")])

    anyio.run(hold)
    bad_lease = lease_lock(lockspace, "disk:/d/2.img")
    bad_lease.write_bytes(b"garbage")
    (lockspace / "hosts" / "old-2.json").write_text("{}")
    (lockspace / "hosts" / "3.json").mkdir()
    assert main(["leases", "--lockspace", str(lockspace), "--observe", "0"]) == 0
    assert main(["leases", "--lockspace", str(lockspace), "--observe", "0", "--json"]) == 0
    text, _, rest = capsys.readouterr().out.partition("{")
    assert "disk:/d/1.img" in text
    assert "host-a" in text
    for path in (bad_lease, lockspace / "hosts" / "old-2.json", lockspace / "hosts" / "3.json"):
        assert f"BAD {path}" in text
    report = json.loads("{" + rest)
    assert [lease["resource"] for lease in report["leases"]] == ["disk:/d/1.img"]
    assert [h["name"] for h in report["hosts"]] == ["host-a"]
    assert {d["path"] for d in report["damaged"]} == {
        str(bad_lease),
        str(lockspace / "hosts" / "old-2.json"),
        str(lockspace / "hosts" / "3.json"),
    }
