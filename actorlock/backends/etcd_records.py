"""How one lockspace lays out its keys in etcd, and how records are encoded.

Under the lockspace prefix ``P``:

* ``P/meta/id``: the lockspace's id, written once by whoever comes first;
* ``P/host/NNNN``: a host's liveness record (JSON), never attached to a lease,
  so a dead host's record stays readable and its counter keeps growing;
* ``P/alive/NNNN``: ``incarnation/lease`` attached to that incarnation's etcd
  lease: the server deletes it when the lease expires;
* ``P/res/KEY``: a resource's lease record (JSON), never attached to a lease,
  so its fencing token outlives every holder.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import CorruptRecordError
from ..model import Holder, HostRecord, HostState, LeaseMode, LeaseOwner, LeaseRecord
from .base import holder_fields


class KeyLayout:
    """Key names of one lockspace under ``prefix``."""

    def __init__(self, prefix: str) -> None:
        self.root = prefix.rstrip("/") + "/"
        self.meta_id = self.root + "meta/id"
        self.hosts = self.root + "host/"
        self.alive_dir = self.root + "alive/"
        self.records = self.root + "res/"

    def host(self, host_id: int) -> str:
        return f"{self.hosts}{host_id:04d}"

    def alive(self, host_id: int) -> str:
        return f"{self.alive_dir}{host_id:04d}"

    def record(self, key: str) -> str:
        return self.records + key

    def record_key(self, etcd_key: str) -> str:
        return etcd_key[len(self.records) :]

    @staticmethod
    def host_id(etcd_key: str) -> int:
        return int(etcd_key.rsplit("/", 1)[1])


def alive_value(incarnation: str, lease: int) -> str:
    return f"{incarnation}/{lease:x}"


def alive_incarnation(value: bytes) -> str:
    return value.decode(errors="replace").rsplit("/", 1)[0]


def encode_record(record: LeaseRecord) -> str:
    holders = [holder_fields(h) for h in record.holders]
    return json.dumps({"v": 1, "token": record.token, "holders": holders}, separators=(",", ":"))


def decode_record(key: str, etcd_key: str, value: bytes) -> LeaseRecord:
    try:
        data: Any = json.loads(value)
        holders = tuple(
            Holder(
                LeaseOwner(str(h["host"]), int(h["host_id"]), str(h["domain"]), str(h["domain_name"])),
                LeaseMode(h["mode"]),
                int(h["token"]),
                str(h["incarnation"]),
            )
            for h in data["holders"]
        )
        return LeaseRecord(key, int(data["token"]), holders)
    except (ValueError, TypeError, KeyError) as exc:
        raise CorruptRecordError(etcd_key, f"{type(exc).__name__}: {exc}") from None


def encode_host(record: HostRecord, lease: int) -> str:
    body = {
        "v": 1,
        "name": record.name,
        "id": record.id,
        "incarnation": record.incarnation,
        "counter": record.counter,
        "state": record.state.value,
        "boot_id": record.boot_id,
        "renewed_monotonic": record.renewed_monotonic,
        "peer_endpoint": record.peer_endpoint,
        "public_key": record.public_key,
        "lease": lease,
    }
    return json.dumps(body, separators=(",", ":"))


def decode_host(etcd_key: str, value: bytes) -> HostRecord:
    try:
        data: Any = json.loads(value)
        return HostRecord(
            name=str(data["name"]),
            id=int(data["id"]),
            incarnation=str(data["incarnation"]),
            counter=int(data["counter"]),
            state=HostState(data["state"]),
            boot_id=str(data["boot_id"]),
            renewed_monotonic=float(data["renewed_monotonic"]),
            peer_endpoint=str(data["peer_endpoint"]),
            public_key=str(data["public_key"]),
        )
    except (ValueError, TypeError, KeyError) as exc:
        raise CorruptRecordError(etcd_key, f"{type(exc).__name__}: {exc}") from None
