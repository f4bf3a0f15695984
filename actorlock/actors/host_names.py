"""One live host per name in a lockspace.

Peers name hosts in their messages and operators read names in reports, so
two live hosts with one name would make one lookup take the first match and
another the last. A join under a name that a live host with another id
uses is refused; a name left by a host that left cleanly, or died, is free
once that host is judged dead (its record unchanged for host_dead).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio

from ..errors import ConfigError
from ..model import HostIdentity, HostView


async def wait_for_name_free(
    read_hosts: Callable[[], Awaitable[list[HostView]]], me: HostIdentity, *, poll: float
) -> None:
    """Return once no live host of another id uses ``me.name``.

    A rival's record that changes while we watch is a live host: refused at
    once. One that stays unchanged is judged dead by the backend after
    host_dead, and the name is free then.

    Raises:
        ConfigError: (key ``host.name``) a live host with another id uses the name.
    """
    first_seen: dict[int, tuple[str, int]] = {}
    while True:
        rivals = [
            view.record
            for view in await read_hosts()
            if view.alive and view.record.name == me.name and view.record.id != me.id
        ]
        if not rivals:
            return
        for record in rivals:
            seen = first_seen.setdefault(record.id, (record.incarnation, record.counter))
            if seen != (record.incarnation, record.counter):
                raise ConfigError(
                    "host.name",
                    f"{me.name!r} is the name of live host {record.id} in this lockspace; "
                    f"host {me.id} needs a name of its own",
                )
        await anyio.sleep(poll)
