"""Lease backends behind one interface, and the factory that picks one from config."""

from __future__ import annotations

from collections.abc import Callable

from ..clock import host_clock
from ..config import Config
from ..errors import ConfigError
from .base import BackendCapabilities, HostAdvert, LeaseBackend

__all__ = ["BackendCapabilities", "HostAdvert", "LeaseBackend", "make_backend"]


def make_backend(config: Config, *, clock: Callable[[], float] = host_clock) -> LeaseBackend:
    """Build the backend that ``config.locking.backend`` names."""
    kind = config.locking.backend
    poll = config.timing.renew_interval
    host_dead = config.timing.host_dead
    if kind == "memory":
        from .memory import MemoryLeaseBackend, shared_lockspace

        return MemoryLeaseBackend(
            shared_lockspace(config.memory.lockspace), host_dead=host_dead, poll_interval=poll, clock=clock
        )
    if kind == "file":
        from .file import FileLeaseBackend

        if config.file.lockspace_dir is None:
            raise ConfigError("file.lockspace_dir", "the file backend needs a lockspace directory")
        return FileLeaseBackend(
            config.file.lockspace_dir,
            host_dead=host_dead,
            poll_interval=poll,
            clock=clock,
            io_timeout=config.timing.io_timeout,
            group=config.file.group,
        )
    if kind == "etcd":
        try:
            from .etcd import EtcdLeaseBackend
            from .etcd_client import EtcdClient
        except ImportError as exc:
            raise ConfigError(
                "locking.backend", f"the etcd backend needs httpx: pip install 'actorlock[etcd]' ({exc})"
            ) from None

        etcd = config.etcd
        etcd.validate()
        client = EtcdClient(
            etcd.endpoints,
            io_timeout=config.timing.io_timeout,
            request_timeout=etcd.request_timeout,
            ca_file=etcd.ca_file,
            cert_file=etcd.cert_file,
            key_file=etcd.key_file,
            user=etcd.user,
            password=etcd.password,
        )
        return EtcdLeaseBackend(
            client,
            etcd.prefix,
            host_dead=host_dead,
            poll_interval=poll,
            clock=clock,
            io_timeout=config.timing.io_timeout,
        )
    if kind == "nop":
        from .nop import NopLeaseBackend

        return NopLeaseBackend()
    raise ConfigError("locking.backend", f"unknown backend {kind!r}")
