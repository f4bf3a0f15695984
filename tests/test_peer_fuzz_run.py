"""Hostile frames at a real host's CURVE peer socket: no crash, no state change (issue 10).

The million-frame run is ``benchmarks/bench_peer_fuzz.py``; here a short
run in the suite and a longer one marked slow.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from actorlock.testing.peer_fuzz import KINDS, FuzzOutcome, fuzz_real_host

from .support import guest_process

pytestmark = pytest.mark.anyio


def check(outcome: FuzzOutcome, count: int) -> None:
    report = outcome.report
    assert report.sent == count
    assert set(KINDS) <= set(report.by_kind)
    assert report.answered > count // 3  # the host kept answering throughout
    assert outcome.stranger_frames >= 1
    assert outcome.leases_after == outcome.leases_before
    assert outcome.incoming_after == 0
    assert outcome.domains_after == ()  # no frame made the target run a domain
    assert outcome.losses == 0
    assert outcome.renewals > 0
    assert outcome.migrated_after


async def test_a_short_hostile_run_changes_nothing(tmp_path: Path) -> None:
    with guest_process() as guest:
        outcome = await fuzz_real_host(3_000, seed=11, key_dir=tmp_path, guest_pid=guest.pid)
    check(outcome, 3_000)


@pytest.mark.slow
async def test_a_long_hostile_run_changes_nothing(tmp_path: Path) -> None:
    with guest_process() as guest:
        outcome = await fuzz_real_host(100_000, seed=12, key_dir=tmp_path, guest_pid=guest.pid)
    check(outcome, 100_000)
