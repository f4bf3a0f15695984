"""The liveness observer's datings: repeated values by the reading before the read, new ones after it."""

from __future__ import annotations

from actorlock.backends.liveness import LivenessObserver
from actorlock.model import HostRecord

HOST_DEAD = 2.0


class ManualClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def record(counter: int, incarnation: str = "i1") -> HostRecord:
    return HostRecord(name="a", id=1, incarnation=incarnation, counter=counter)


def test_a_repeated_value_is_dated_by_the_reading_before_the_read() -> None:
    clock = ManualClock()
    observer = LivenessObserver(HOST_DEAD, clock)
    clock.now = 1.0
    assert observer.observe(record(5), read_at=0.9).alive  # first seen: dated 1.0
    # Read began at 2.5 (1.5 s after), judged only at 3.5: the stall is not age.
    clock.now = 3.5
    view = observer.observe(record(5), read_at=2.5)
    assert view.alive
    assert view.unchanged_for == 1.5
    clock.now = 3.2
    assert not observer.observe(record(5), read_at=3.1).alive  # 2.1 s unchanged from 1.0


def test_a_slow_read_of_an_older_counter_does_not_restart_the_count() -> None:
    clock = ManualClock()
    observer = LivenessObserver(HOST_DEAD, clock)
    clock.now = 1.0
    observer.observe(record(6), read_at=0.9)  # first seen at 1.0
    clock.now = 2.5
    stale = observer.observe(record(5), read_at=0.8)  # began before counter 6 was written
    assert stale.alive
    assert stale.unchanged_for == 0.0
    clock.now = 3.2
    assert not observer.observe(record(6), read_at=3.1).alive  # still dated from 1.0


def test_a_new_incarnation_with_a_lower_counter_is_a_new_value() -> None:
    clock = ManualClock()
    observer = LivenessObserver(HOST_DEAD, clock)
    clock.now = 1.0
    observer.observe(record(9), read_at=0.9)
    clock.now = 3.5
    view = observer.observe(record(1, incarnation="i2"), read_at=3.4)
    assert view.alive
    assert view.unchanged_for == 0.0
