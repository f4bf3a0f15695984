"""The actorlock command: demo, leases, --help."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

import actorlock
from actorlock.cli import main

from .support import host_config


@pytest.mark.parametrize("flags", [[], ["--trio"], ["--backend", "memory"]])
def test_demo_runs_the_lifecycle_and_refuses_the_second_host(
    flags: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", *flags]) == 0
    out = capsys.readouterr().out
    for when in (
        "while host-a runs vm1",
        "while host-a's coordinator is down",
        "during the migration",
        "after the migration",
        "after the cancelled migration",
    ):
        assert f"vm2 refused {when}" in out
    assert "resumed its lockspace membership: True" in out
    assert "(same tokens: no gap)" in out
    assert "vm1 migrated in: leases disk:/var/lib/libvirt/images/vm1.qcow2 (token 3)" in out
    assert "vm1 stays on host-b: leases disk:/var/lib/libvirt/images/vm1.qcow2 (token 3)" in out
    assert "vm2 started" in out
    assert "MUST NOT HAPPEN" not in out


def test_leases_shows_holder_mode_token_and_host_liveness(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lockspace = tmp_path / "ls"
    lockspace.mkdir()
    cfg = host_config("host-a", 1, backend="file", file={"lockspace_dir": str(lockspace)})

    async def hold_and_inspect() -> None:
        async with actorlock.open_host(cfg) as host:
            await host.domain("u1", name="vm1").start([actorlock.disk("/d/1.img")])
            await anyio.to_thread.run_sync(
                lambda: main(["leases", "--lockspace", str(lockspace), "--observe", "0.2"])
            )
            await anyio.to_thread.run_sync(
                lambda: main(["leases", "--lockspace", str(lockspace), "--observe", "0", "--json"])
            )

    anyio.run(hold_and_inspect)
    text, _, rest = capsys.readouterr().out.partition("{")
    assert "disk:/d/1.img" in text
    assert "exclusive  host-a  u1 (vm1)" in text
    assert "renewing" in text
    report = json.loads("{" + rest)
    (lease,) = report["leases"]
    assert lease["resource"] == "disk:/d/1.img"
    assert lease["holders"][0]["host"] == "host-a"
    assert lease["holders"][0]["domain"] == "u1"
    assert lease["holders"][0]["token"] == 1


def test_leases_with_a_state_dir_marks_a_guest_without_pid_unfenceable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lockspace, state = tmp_path / "ls", tmp_path / "state"
    lockspace.mkdir()
    cfg = host_config(
        "host-a", 1, backend="file", file={"lockspace_dir": str(lockspace)}, host={"state_dir": str(state)}
    )

    async def hold_and_inspect() -> None:
        async with actorlock.open_host(cfg) as host:
            await host.domain("u1", name="vm1").start([actorlock.disk("/d/1.img")])  # no pid
            await host.domain("u2", name="vm2").start([actorlock.disk("/d/2.img")], pid=os.getpid())
            status = await host.status()
            assert [d.unfenceable for d in status.domains] == [True, False]
            await anyio.to_thread.run_sync(
                lambda: main(
                    [
                        "leases",
                        "--lockspace",
                        str(lockspace),
                        "--observe",
                        "0",
                        "--json",
                        "--state-dir",
                        str(state),
                    ]
                )
            )

    anyio.run(hold_and_inspect)
    report = json.loads(capsys.readouterr().out)
    fencing = {lease["holders"][0]["domain"]: lease["holders"][0]["fencing"] for lease in report["leases"]}
    assert fencing == {"u1": "UNFENCEABLE: no guest pid", "u2": f"pid {os.getpid()}"}
    assert main(["leases", "--lockspace", str(lockspace), "--state-dir", str(tmp_path / "none")]) == 1
    assert "not a state directory" in capsys.readouterr().err


def test_leases_on_a_missing_lockspace_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["leases", "--lockspace", str(tmp_path / "absent")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_keygen_writes_a_private_key_file_and_prints_only_the_public_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from actorlock.transport.zmq import load_keypair

    path = tmp_path / "host.key"
    assert main(["keygen", str(path)]) == 0
    printed = capsys.readouterr().out.strip()
    keys = load_keypair(path)
    assert printed == keys.public
    assert keys.secret not in printed
    assert path.stat().st_mode & 0o777 == 0o600
    assert main(["keygen", str(path)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert load_keypair(path) == keys
    assert main(["keygen", str(tmp_path / "absent-dir" / "k")]) == 1
    assert "cannot write" in capsys.readouterr().err


def test_sim_runs_scenarios_and_reports_zero_violations(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "--hosts", "3", "--scenarios", "4", "--seed", "11"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "violations: 0" in out
    assert "scenarios: 4" in out
    faults = next(line for line in out if line.startswith("faults injected: "))
    assert int(faults.split(": ")[1]) > 0
    assert main(["sim", "--scenarios", "0"]) == 2


@pytest.mark.parametrize("command", [[], ["demo"], ["leases"], ["keygen"], ["sim"], ["chaos"]])
def test_every_command_has_help(command: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "actorlock.cli", *command, "--help"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0
    assert "usage: actorlock" in result.stdout
