"""Host names are unique among live hosts of a lockspace (issue 10)."""

from __future__ import annotations

import anyio
import pytest

import actorlock
from actorlock.errors import ConfigError
from actorlock.model import HostState
from actorlock.testing import host_faults

from .support import host_config, unique
from .test_migration import host_in_task

pytestmark = pytest.mark.anyio


async def test_a_join_under_the_name_of_a_live_host_with_another_id_is_refused() -> None:
    space = unique()
    async with actorlock.open_host(host_config("a", 1, lockspace=space)) as first:
        with pytest.raises(ConfigError) as caught:
            async with actorlock.open_host(host_config("a", 2, lockspace=space)):
                pass
        assert caught.value.key == "host.name"
        assert "live host 1" in str(caught.value)
        # Nothing was written for the refused host; the first one is untouched.
        records = {view.record.id: view for view in await first.hosts()}
        assert set(records) == {1}
        assert records[1].alive
        assert first.live


async def test_the_name_of_a_host_that_left_or_died_may_be_taken_by_another_id() -> None:
    space = unique()
    async with actorlock.open_host(host_config("a", 1, lockspace=space)):
        pass  # left cleanly
    async with actorlock.open_host(host_config("a", 2, lockspace=space)) as second:
        assert second.live
    async with anyio.create_task_group() as tg:
        async with host_in_task(tg, host_config("b", 3, lockspace=space)) as crashed:
            host_faults.crash(crashed)  # its record stays LIVE, unrenewed
        # Waits until the record has been unchanged for host_dead, then joins.
        async with actorlock.open_host(host_config("b", 4, lockspace=space)) as successor:
            states = {v.record.id: (v.record.state, v.alive) for v in await successor.hosts()}
            assert states[3] == (HostState.LIVE, False)
            assert successor.live
