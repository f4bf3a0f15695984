"""Seeding trio's scheduler: the one place that patches trio's private internals.

Why this exists: ``actorlock sim`` promises that the same seed gives the same
result, event for event. trio shuffles each batch of tasks runnable at the
same instant with a module-level random generator, so a virtual clock alone
does not make a run repeat; trio's own Hypothesis plugin makes that choice
deterministic the same way as here (sort the batch by task creation order,
shuffle with a seeded generator). Both names are private, so this is best
effort: without them a scenario still runs, it just may not repeat.

Only this project's verification drivers use it; the public kit
(:mod:`actorlock.testing`) never imports it.
"""

from __future__ import annotations

import random

from ..testing.clock import VirtualClock

__all__ = ["SeededVirtualClock", "seeded_virtual_clock"]


class SeededVirtualClock(VirtualClock):
    """A :class:`VirtualClock` that also seeds trio's choice among runnable tasks when the run starts."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self._seed = seed

    def start_clock(self) -> None:
        seed_trio_scheduler(self._seed)


def seeded_virtual_clock(seed: int | None = None) -> VirtualClock:
    """A virtual clock; with ``seed``, trio's scheduling is seeded too (see the module)."""
    return VirtualClock() if seed is None else SeededVirtualClock(seed)


def seed_trio_scheduler(seed: int) -> None:
    """Make trio's choice among simultaneously runnable tasks repeatable (best effort)."""
    try:
        from trio._core import _run
    except ImportError:  # pragma: no cover - trio reorganised
        return
    generator = getattr(_run, "_r", None)
    if isinstance(generator, random.Random) and hasattr(_run, "_ALLOW_DETERMINISTIC_SCHEDULING"):
        _run._ALLOW_DETERMINISTIC_SCHEDULING = True  # type: ignore[misc]
        generator.seed(seed)
