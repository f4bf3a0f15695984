"""History records as JSON lines: how host processes and the driver write them and the driver merges them."""

from __future__ import annotations

import enum
import json
import os
from collections.abc import (
    Iterable,
    Mapping,
)
from pathlib import Path
from typing import Any

import attrs

from ...errors import InvalidParameterError
from ...model import Lease, LeaseMode
from ...testing.history import (
    AcquireRefused,
    CoordinatorCrashed,
    FailureActionRan,
    FaultInjected,
    FaultsHealed,
    GuestDisksChanged,
    GuestStarted,
    GuestStopped,
    GuestWrote,
    History,
    HistoryEvent,
    HostCrashed,
    HostEvent,
    HostJoined,
    HostRecovered,
    LeaseAcquired,
    LeaseHeld,
    LeaseLost,
    LeaseReleased,
    LeasesTransferred,
    LockspaceLost,
    LockspaceRegained,
    MigrationCancelled,
    StopReason,
    TransferredLease,
)

# --- history records as JSON lines ------------------------------------------------------

_EVENT_TYPES: dict[str, type[HistoryEvent]] = {
    cls.__name__: cls
    for cls in (
        AcquireRefused,
        CoordinatorCrashed,
        FailureActionRan,
        FaultInjected,
        FaultsHealed,
        GuestDisksChanged,
        GuestStarted,
        GuestStopped,
        GuestWrote,
        HostCrashed,
        HostEvent,
        HostJoined,
        HostRecovered,
        LeaseAcquired,
        LeaseHeld,
        LeaseLost,
        LeaseReleased,
        LeasesTransferred,
        LockspaceLost,
        LockspaceRegained,
        MigrationCancelled,
    )
}


def _plain(value: object) -> Any:
    """A JSON-ready copy of a record field (enums by value, attrs classes as mappings)."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    cls: Any = type(value)
    if attrs.has(cls):
        return {f.name: _plain(getattr(value, f.name)) for f in attrs.fields(cls)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    return str(value)  # the rest of a HostEvent's fields: kept readable, not typed


def event_to_json(event: HistoryEvent) -> dict[str, Any]:
    """One history record as a JSON-ready mapping (``type`` names its class)."""
    body: dict[str, Any] = {"type": type(event).__name__}
    for field in attrs.fields(type(event)):
        body[field.name] = _plain(getattr(event, field.name))
    return body


def _field_value(cls: type[HistoryEvent], name: str, raw: Any) -> Any:
    if name == "leases":
        if cls is LeasesTransferred:
            return tuple(
                TransferredLease(
                    str(item["key"]), LeaseMode(item["mode"]), int(item["old_token"]), int(item["new_token"])
                )
                for item in raw
            )
        return tuple(Lease(str(item["key"]), LeaseMode(item["mode"]), int(item["token"])) for item in raw)
    if name == "mode":
        return LeaseMode(raw)
    if name == "reason" and cls is GuestStopped:
        return StopReason(raw)
    if name == "time":
        return float(raw)
    return raw


def event_from_json(data: Mapping[str, Any]) -> HistoryEvent:
    """The record :func:`event_to_json` produced.

    Raises:
        InvalidParameterError: an unknown record type or malformed fields.
    """
    cls = _EVENT_TYPES.get(str(data.get("type", "")))
    if cls is None:
        raise InvalidParameterError(f"unknown history record type {data.get('type')!r}")
    try:
        fields = {
            f.name: _field_value(cls, f.name, data[f.name]) for f in attrs.fields(cls) if f.name in data
        }
        return cls(**fields)
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidParameterError(f"malformed {cls.__name__} record: {exc}") from None


def read_history_file(path: str | os.PathLike[str]) -> tuple[list[HistoryEvent], int]:
    """Every record of a JSON-lines history file, in file order, and how many lines were unreadable.

    A process killed while appending can leave at most a torn last line; it
    is skipped (and counted) rather than failing the whole run.
    """
    events: list[HistoryEvent] = []
    bad = 0
    with open(path, "rb") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                events.append(event_from_json(json.loads(line)))
            except (ValueError, InvalidParameterError):
                bad += 1
    return events, bad


def save_history(path: Path, events: Iterable[HistoryEvent]) -> None:
    """Write the driver's records next to the hosts' (for a look at a failed run)."""
    with path.open("w") as f:
        for event in events:
            f.write(json.dumps(event_to_json(event)) + "\n")


def merge_histories(
    workdir: Path, driver_events: Iterable[HistoryEvent], names: Iterable[str]
) -> tuple[History, int]:
    """Every host's history file in ``workdir`` and the driver's records, in time order; and torn lines."""
    events: list[HistoryEvent] = []
    torn = 0
    for name in names:
        path = workdir / f"history-{name}.jsonl"
        if path.exists():
            found, bad = read_history_file(path)
            events.extend(found)
            torn += bad
    events.extend(driver_events)
    # A stable sort: records of one process at one instant keep the order they were written in.
    events.sort(key=lambda e: e.time)
    return History(events), torn
