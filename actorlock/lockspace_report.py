"""Read-only view of a file (or etcd) lockspace for operators (``actorlock leases``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import attrs

from .backends.base import LeaseBackend
from .backends.file import FileLeaseBackend
from .errors import CorruptStateError, LockspaceError
from .model import HostRecord, HostState, LeaseRecord
from .statestore import FileStateStore

# The report never judges takeover; it only needs "changed or not while watched".
_NEVER = 1e9


@attrs.frozen
class HostLine:
    record: HostRecord
    liveness: str


@attrs.frozen
class LockspaceReport:
    path: str
    lockspace_id: str
    hosts: tuple[HostLine, ...]
    records: tuple[LeaseRecord, ...]
    # From a host's state_dir (--state-dir): (host id, domain uuid) -> guest pid or None.
    guests: tuple[tuple[int, str, int | None], ...] = ()
    # Entries the report skipped, (path, problem): stray, corrupt or special files.
    damaged: tuple[tuple[str, str], ...] = ()

    def fencing_of(self, host_id: int, domain: str) -> str:
        """How a loss would stop this holder's guest, as far as the state_dir tells."""
        for known_host, uuid, pid in self.guests:
            if (known_host, uuid) == (host_id, domain):
                return "UNFENCEABLE: no guest pid" if pid is None else f"pid {pid}"
        return "-"

    def liveness_of(self, host_id: int) -> str:
        for line in self.hosts:
            if line.record.id == host_id:
                return line.liveness
        return "no record"

    def to_json(self) -> dict[str, Any]:
        return {
            "lockspace": self.path,
            "lockspace_id": self.lockspace_id,
            "hosts": [
                {
                    "id": h.record.id,
                    "name": h.record.name,
                    "state": h.record.state.value,
                    "counter": h.record.counter,
                    "incarnation": h.record.incarnation,
                    "peer_endpoint": h.record.peer_endpoint,
                    "liveness": h.liveness,
                }
                for h in self.hosts
            ],
            "leases": [
                {
                    "resource": r.key,
                    "token": r.token,
                    "holders": [
                        {
                            "host": h.owner.host,
                            "host_id": h.owner.host_id,
                            "domain": h.owner.domain,
                            "domain_name": h.owner.domain_name,
                            "mode": h.mode.value,
                            "token": h.token,
                            "host_liveness": self.liveness_of(h.owner.host_id),
                            "fencing": self.fencing_of(h.owner.host_id, h.owner.domain),
                        }
                        for h in r.holders
                    ],
                }
                for r in self.records
            ],
            "damaged": [{"path": path, "problem": problem} for path, problem in self.damaged],
        }

    def to_text(self) -> str:
        lines = [f"lockspace {self.path} (id {self.lockspace_id})", ""]
        host_rows = [("ID", "HOST", "STATE", "COUNTER", "LIVENESS")]
        host_rows += [
            (str(h.record.id), h.record.name, h.record.state.value, str(h.record.counter), h.liveness)
            for h in self.hosts
        ]
        lines += _table(host_rows) if self.hosts else ["no hosts have joined"]
        lines.append("")
        lease_rows = [("RESOURCE", "MODE", "HOST", "DOMAIN", "TOKEN", "HOST LIVENESS", "FENCING")]
        for r in self.records:
            if not r.holders:
                lease_rows.append((r.key, "-", "-", "(free)", str(r.token), "-", "-"))
            for h in r.holders:
                domain = h.owner.domain + (f" ({h.owner.domain_name})" if h.owner.domain_name else "")
                lease_rows.append(
                    (
                        r.key,
                        h.mode.value,
                        h.owner.host,
                        domain,
                        str(h.token),
                        self.liveness_of(h.owner.host_id),
                        self.fencing_of(h.owner.host_id, h.owner.domain),
                    )
                )
        lines += _table(lease_rows) if self.records else ["no lease records"]
        if self.damaged:
            lines += ["", f"{len(self.damaged)} bad entries, skipped above:"]
            lines += [f"BAD {path}: {problem}" for path, problem in self.damaged]
        return "\n".join(lines)


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]


async def lockspace_report(
    path: Path | str, observe: float, state_dir: Path | None = None, *, backend: LeaseBackend | None = None
) -> LockspaceReport:
    """Read every record; watch host records for ``observe`` seconds to judge liveness.

    With ``state_dir`` (one host's), its domains' guest pids are shown next to their leases.
    ``backend`` reads another kind of lockspace (an etcd prefix) named ``path``; it is closed here.
    """
    guests: tuple[tuple[int, str, int | None], ...] = ()
    damaged: list[tuple[str, str]] = []
    if state_dir is not None:
        guests = await _guests_of(state_dir, damaged)
    if backend is None:
        backend = FileLeaseBackend(Path(path), host_dead=_NEVER)
    try:
        lockspace_id = await backend.lockspace_id()
        first = {v.record.id: v.record for v in await backend.hosts()}
        if observe > 0:
            await anyio.sleep(observe)
        last = {v.record.id: v.record for v in await backend.hosts()} if observe > 0 else first
        records = await backend.records()
        if isinstance(backend, FileLeaseBackend):  # skipped entries: only files can be stray or torn
            damaged += [(exc.path, exc.problem) for exc in await backend.damaged()]
    finally:
        await backend.aclose()
    hosts = []
    for host_id in sorted(last):
        record = last[host_id]
        before = first.get(host_id)
        if record.state is HostState.LEFT:
            liveness = "left cleanly"
        elif observe <= 0:
            liveness = "unknown (not observed)"
        elif before is None or (before.incarnation, before.counter) != (record.incarnation, record.counter):
            liveness = "renewing"
        else:
            liveness = f"not renewing for {observe:g}s+"
        hosts.append(HostLine(record, liveness))
    return LockspaceReport(str(path), lockspace_id, tuple(hosts), tuple(records), guests, tuple(damaged))


def etcd_reader(endpoints: Sequence[str], prefix: str) -> LeaseBackend:
    """A read-only handle on the etcd lockspace at ``prefix`` (never joins)."""
    from .backends import make_backend
    from .config import load_config

    table = {"endpoints": list(endpoints), "prefix": prefix}
    return make_backend(load_config({"locking": {"backend": "etcd"}, "etcd": table}))


async def _guests_of(
    state_dir: Path, damaged: list[tuple[str, str]]
) -> tuple[tuple[int, str, int | None], ...]:
    if not await anyio.to_thread.run_sync(state_dir.is_dir):
        raise LockspaceError(str(state_dir), "is not a state directory (no such directory)")
    store = FileStateStore(state_dir)
    host = await store.load_host()
    if host is None:
        raise LockspaceError(str(state_dir), "holds no host.json: not a coordinator's state_dir")
    try:
        domains = await store.load_domains()
    except CorruptStateError as exc:
        domains = list(exc.readable)
        damaged.append((exc.path, exc.problem))
    return tuple((host.id, d.identity.uuid, d.pid) for d in domains)
