"""Short timings for tests, demos and simulations: one preset, scaled, and always validated.

The rule ``load_config`` enforces (docs/timing.md) holds for every preset
this module returns: a broken one fails here, with the ConfigError naming the
key, not in the middle of a run. ``scale`` stretches the four times of the
rule together (a busy machine, separate interpreters); ``io_timeout`` is not
in the rule and is given on its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from .config import load_config

__all__ = ["FAST_KILL_GRACE", "FAST_TIMING", "fast_timing"]

_RULE_TIMES = ("renew_interval", "lease_timeout", "fence_timeout", "host_dead")

# host_dead 0.6 >= (lease_timeout 0.25 + fence_timeout 0.2 + scheduling_delay 0.025) * 1.01.
FAST_TIMING: Mapping[str, float] = MappingProxyType(
    {
        "renew_interval": 0.05,
        "lease_timeout": 0.25,
        "fence_timeout": 0.2,
        "host_dead": 0.6,
        "io_timeout": 2.0,
    }
)
FAST_KILL_GRACE = 0.05  # well inside fence_timeout: SIGKILL follows SIGTERM in time


def fast_timing(
    *, scale: float = 1.0, io_timeout: float | None = None, **overrides: float
) -> dict[str, float]:
    """:data:`FAST_TIMING` with its rule times times ``scale``, then ``overrides``; validated.

    Raises:
        ConfigError: the result breaks the timing rule (the key is named).
    """
    timing = {name: FAST_TIMING[name] * scale for name in _RULE_TIMES}
    timing["io_timeout"] = FAST_TIMING["io_timeout"] if io_timeout is None else io_timeout
    timing.update(overrides)
    # Judged with a kill_grace that fits any fence_timeout: the preset is about timing only.
    load_config({"timing": timing, "locking": {"kill_grace": timing["fence_timeout"] / 4}})
    return timing


load_config({"timing": dict(FAST_TIMING), "locking": {"kill_grace": FAST_KILL_GRACE}})
