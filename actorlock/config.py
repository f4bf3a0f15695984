"""Configuration: frozen records loaded from TOML; every error names its key.

The timing rule that keeps two hosts from ever running one disk:
a host fences its guests once ``lease_timeout`` has passed since its last
successful renewal *started* (noticed up to ``scheduling_delay`` late), and
gives the failure action ``fence_timeout`` to finish; another host may take
a lease only after it has seen the holder's record unchanged for
``host_dead``, dated by clock readings taken before its reads. So
``host_dead`` must exceed ``lease_timeout + fence_timeout +
scheduling_delay`` (docs/timing.md has the derivation, and why
``io_timeout`` does not appear in it).
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs

from .constants import FailureAction
from .errors import ConfigError

BACKENDS = ("etcd", "file", "memory", "nop")
# Monotonic clocks of two hosts may tick at slightly different rates (NTP slews
# by up to 500 ppm); the margin below covers that many times over.
CLOCK_RATE_MARGIN = 0.01
# Shortest timing value accepted. Every renewal and lease operation is a
# worker-thread round trip ending in an fsync (milliseconds on real storage),
# and a loaded event loop runs timers that late: a 1e-9 s renew_interval would
# renew back to back and starve everything else without renewing any faster.
MIN_INTERVAL = 0.01
# The last fifth of fence_timeout belongs to SIGKILL: the kernel needs time to
# tear a guest down (freeing a large guest's memory takes a while) and the
# fence to see it gone before another host may take over.
SIGKILL_SHARE = 0.2


@attrs.frozen
class HostConfig:
    name: str = "localhost"
    id: int = 1
    state_dir: Path | None = None


def _default_scheduling_delay(timing: TimingConfig) -> float:
    return timing.lease_timeout / 10


@attrs.frozen
class TimingConfig:
    renew_interval: float = 2.0
    lease_timeout: float = 10.0
    host_dead: float = 20.0
    fence_timeout: float = 5.0
    io_timeout: float = 10.0
    # How late the event loop may run the expiry timer (load, GC, a busy
    # thread holding the GIL); default lease_timeout / 10.
    scheduling_delay: float = attrs.field(default=attrs.Factory(_default_scheduling_delay, takes_self=True))

    def validate(self) -> None:
        names = ("renew_interval", "lease_timeout", "host_dead", "fence_timeout", "io_timeout")
        for name in names:
            if not getattr(self, name) > 0:
                raise ConfigError(f"timing.{name}", f"must be a positive number, got {getattr(self, name)}")
            if getattr(self, name) < MIN_INTERVAL:
                raise ConfigError(
                    f"timing.{name}",
                    f"must be at least {MIN_INTERVAL} s (each renewal or lease operation is an "
                    f"fsynced write through a worker thread; shorter would only load the host), "
                    f"got {getattr(self, name)}",
                )
        if not 0 <= self.scheduling_delay < self.lease_timeout:
            raise ConfigError(
                "timing.scheduling_delay",
                f"must be at least 0 and below lease_timeout ({self.lease_timeout}), "
                f"got {self.scheduling_delay}",
            )
        if self.lease_timeout < 2 * self.renew_interval:
            raise ConfigError(
                "timing.lease_timeout",
                f"must be at least twice renew_interval ({self.renew_interval}) so a host "
                f"gets two tries to renew before it expires, got {self.lease_timeout}",
            )
        floor = (self.lease_timeout + self.fence_timeout + self.scheduling_delay) * (1 + CLOCK_RATE_MARGIN)
        if self.host_dead < floor:
            raise ConfigError(
                "timing.host_dead",
                f"must be at least (lease_timeout + fence_timeout + scheduling_delay) * "
                f"{1 + CLOCK_RATE_MARGIN} = {floor:.3f} so a host fences its guests before another "
                f"may take over, got {self.host_dead}",
            )


@attrs.frozen
class LockingConfig:
    backend: str = "file"
    failure_action: FailureAction = FailureAction.POWEROFF
    auto_disk_leases: bool = True
    # None: libvirt's default, required exactly when disks are not leased automatically.
    require_lease_for_disks: bool | None = None
    kill_grace: float = 3.0
    # Resolve symlinks in disk paths before they become lease keys, so that a
    # link and its target are one disk. Off by default: it reads the file
    # system (bounded by io_timeout), and hosts must agree on it.
    resolve_disk_symlinks: bool = False

    @property
    def leases_required(self) -> bool:
        if self.require_lease_for_disks is None:
            return not self.auto_disk_leases
        return self.require_lease_for_disks


@attrs.frozen
class FileConfig:
    lockspace_dir: Path | None = None
    # Empty: lockspace files are the owner's only (0600/0700). A group name:
    # 0660/0770 in that group, for coordinators running as different users.
    group: str = ""


@attrs.frozen
class MemoryConfig:
    lockspace: str = "default"


@attrs.frozen
class EtcdConfig:
    """The etcd backend: a cluster's client URLs and this lockspace's key prefix (docs/etcd.md)."""

    endpoints: tuple[str, ...] = ("http://127.0.0.1:2379",)
    prefix: str = "/actorlock/default"
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    user: str = ""
    password: str = ""
    # One HTTP round trip to one member; a member that takes longer is skipped
    # for the next one (a stopped member accepts connections but never answers).
    request_timeout: float = 2.0

    def validate(self) -> None:
        if not self.endpoints:
            raise ConfigError("etcd.endpoints", "must list at least one client URL")
        for url in self.endpoints:
            if not url.startswith(("http://", "https://")):
                raise ConfigError("etcd.endpoints", f"must be http:// or https:// URLs, got {url!r}")
        if not self.prefix.startswith("/") or self.prefix.rstrip("/") == "":
            raise ConfigError("etcd.prefix", f"must start with / and name a key space, got {self.prefix!r}")
        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigError("etcd.key_file", "cert_file and key_file go together")
        if bool(self.user) != bool(self.password):
            raise ConfigError("etcd.password", "user and password go together")
        if not self.request_timeout > 0:
            raise ConfigError(
                "etcd.request_timeout", f"must be a positive number, got {self.request_timeout}"
            )


@attrs.frozen
class PeerConfig:
    """Peer coordination (migration) over ZeroMQ."""

    endpoint: str = ""  # where this host's ROUTER binds; empty: no migration
    key_file: Path | None = None  # CURVE key pair written by `actorlock keygen`
    allowed_keys: tuple[str, ...] = ()  # Z85 public keys of peers we talk to
    plaintext: bool = False  # no CURVE at all: only when said explicitly
    migration_timeout: float = 60.0  # prepare to commit, at most
    prepare_timeout: float = 10.0  # wait for the destination's answer to PREPARE
    retry_interval: float = 0.25  # resend unanswered requests this often
    transfer_margin: float = 2.0  # no commit starts later than this before the deadline
    request_timeout: float = 2.0  # one request/response round trip, at most
    # An incoming migration holds a driver and a socket until it ends: bound how many.
    max_incoming_per_peer: int = 8  # pending incoming migrations from one peer host
    max_incoming: int = 32  # pending incoming migrations from all peers together
    max_requests_per_peer: int = 64  # requests from one connection handled at once


@attrs.frozen
class WatchdogConfig:
    """A host watchdog petted only while every held lease is fresh (sanlock's wdmd does the same).

    A host whose coordinator is stuck, or whose fences do not confirm, stops
    petting, and the device resets the host ``fire_timeout`` after the last
    pet: before ``host_dead`` (validated).
    """

    device: Path | None = None  # e.g. /dev/watchdog; None: no watchdog
    fire_timeout: float = 10.0  # the device's timeout: it resets the host this long after the last pet

    def validate(self, timing: TimingConfig) -> None:
        if self.device is None:
            return
        if self.fire_timeout < timing.lease_timeout:
            raise ConfigError(
                "watchdog.fire_timeout",
                f"must be at least timing.lease_timeout ({timing.lease_timeout}) so it never fires "
                f"while the lease is still valid, got {self.fire_timeout}",
            )
        floor = (timing.lease_timeout + self.fire_timeout + timing.scheduling_delay) * (1 + CLOCK_RATE_MARGIN)
        if timing.host_dead < floor:
            raise ConfigError(
                "timing.host_dead",
                f"must be at least (lease_timeout + watchdog.fire_timeout + scheduling_delay) * "
                f"{1 + CLOCK_RATE_MARGIN} = {floor:.3f} so the watchdog resets a stuck host before "
                f"another may take over, got {timing.host_dead}",
            )


@attrs.frozen
class Config:
    """The whole configuration of one host coordinator."""

    host: HostConfig = HostConfig()
    timing: TimingConfig = TimingConfig()
    locking: LockingConfig = LockingConfig()
    file: FileConfig = FileConfig()
    memory: MemoryConfig = MemoryConfig()
    peer: PeerConfig = PeerConfig()
    watchdog: WatchdogConfig = WatchdogConfig()
    etcd: EtcdConfig = EtcdConfig()


def load_config(source: str | Path | Mapping[str, Any] | Config | None = None) -> Config:
    """Load a configuration from a TOML file path or a mapping of the same shape.

    Raises:
        ConfigError: naming the key that is unknown, missing or has a bad value.
    """
    if source is None:
        return _validated(Config())
    if isinstance(source, Config):
        return _validated(source)
    if isinstance(source, (str, Path)):
        path = Path(source)
        try:
            data: Mapping[str, Any] = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError("<file>", f"config file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError("<file>", f"cannot read config file {path}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("<file>", f"{path} is not valid TOML: {exc}") from None
    elif isinstance(source, Mapping):
        data = source
    else:
        raise ConfigError("<root>", f"expected a path or a mapping, got {type(source).__name__}")
    return _validated(_parse(data))


_SECTIONS: dict[str, type[Any]] = {
    "host": HostConfig,
    "timing": TimingConfig,
    "locking": LockingConfig,
    "file": FileConfig,
    "memory": MemoryConfig,
    "peer": PeerConfig,
    "watchdog": WatchdogConfig,
    "etcd": EtcdConfig,
}


def _parse(data: Mapping[str, Any]) -> Config:
    sections: dict[str, Any] = {}
    for section, body in data.items():
        cls = _SECTIONS.get(section)
        if cls is None:
            raise ConfigError(section, f"unknown section (known: {', '.join(_SECTIONS)})")
        if not isinstance(body, Mapping):
            raise ConfigError(section, "must be a table")
        fields = {f.name: f for f in attrs.fields(cls)}
        values: dict[str, Any] = {}
        for key, value in body.items():
            if key not in fields:
                raise ConfigError(f"{section}.{key}", f"unknown key (known: {', '.join(fields)})")
            values[key] = _convert(f"{section}.{key}", fields[key].type, value)
        sections[section] = cls(**values)
    return Config(**sections)


def _normalized(config: Config) -> Config:
    """``config`` with every value checked and converted as if it came from TOML.

    A Config built in code skips :func:`_parse`: a string or an int too large
    for a float would otherwise surface as a raw TypeError or OverflowError in
    the arithmetic of the checks.
    """
    sections: dict[str, Any] = {}
    for section, cls in _SECTIONS.items():
        body = getattr(config, section)
        if not isinstance(body, cls):
            raise ConfigError(section, f"must be a {cls.__name__}, got {type(body).__name__}")
        values: dict[str, Any] = {}
        for field in attrs.fields(cls):
            value = getattr(body, field.name)
            optional = str(field.type).endswith("| None")
            values[field.name] = (
                value
                if optional and value is None
                else _convert(f"{section}.{field.name}", field.type, value)
            )
        sections[section] = attrs.evolve(body, **values)
    return Config(**sections)


def _convert(key: str, annotation: object, value: Any) -> Any:
    kind = str(annotation)
    convert = _CONVERTERS.get(kind)
    if convert is None:
        raise ConfigError(key, f"unsupported type {kind}")  # pragma: no cover - a bug in this module
    return convert(key, value)


# One checker per field type that Config uses, keyed by the annotation's text
# (the module uses postponed annotations, so that is what attrs reports).


def _to_bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, f"must be true or false, got {value!r}")
    return value


def _to_optional_bool(key: str, value: Any) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise ConfigError(key, f"must be true or false, got {value!r}")
    return value


def _to_int(key: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(key, f"must be an integer, got {value!r}")
    return value


def _to_seconds(key: str, value: Any) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ConfigError(key, f"must be a number of seconds, got {value!r}")
    try:
        seconds = float(value)
    except OverflowError:
        # str() of such an int may itself refuse (int_max_str_digits): say its size instead.
        bits = int(value).bit_length()
        raise ConfigError(key, f"must be a finite number of seconds, got a {bits}-bit integer") from None
    if not math.isfinite(seconds):
        raise ConfigError(key, f"must be a finite number of seconds, got {value!r}")
    return seconds


def _to_str(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(key, f"must be a string, got {value!r}")
    return value


def _to_path(key: str, value: Any) -> Path:
    if not isinstance(value, (str, Path)) or not str(value):
        raise ConfigError(key, f"must be a non-empty path, got {value!r}")
    return Path(value)


def _to_strings(key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ConfigError(key, f"must be a list of strings, got {value!r}")
    return tuple(value)


def _to_failure_action(key: str, value: Any) -> FailureAction:
    try:
        return FailureAction(value)
    except ValueError:
        choices = ", ".join(a.value for a in FailureAction)
        raise ConfigError(key, f"must be one of {choices}, got {value!r}") from None


_CONVERTERS: dict[str, Callable[[str, Any], Any]] = {
    "bool": _to_bool,
    "bool | None": _to_optional_bool,
    "int": _to_int,
    "float": _to_seconds,
    "str": _to_str,
    "Path | None": _to_path,
    "tuple[str, ...]": _to_strings,
    "FailureAction": _to_failure_action,
}


def _validated(config: Config) -> Config:
    config = _normalized(config)
    config.timing.validate()
    config.watchdog.validate(config.timing)
    if not config.host.name:
        raise ConfigError("host.name", "must not be empty")
    if not 1 <= config.host.id <= 2000:
        raise ConfigError("host.id", f"must be in 1..2000, got {config.host.id}")
    if config.locking.backend not in BACKENDS:
        choices = ", ".join(BACKENDS)
        raise ConfigError("locking.backend", f"must be one of {choices}, got {config.locking.backend!r}")
    kill_by = config.timing.fence_timeout * (1 - SIGKILL_SHARE)
    if not 0 < config.locking.kill_grace <= kill_by:
        raise ConfigError(
            "locking.kill_grace",
            f"must be positive and at most {1 - SIGKILL_SHARE:g} * timing.fence_timeout = {kill_by:g} so "
            f"SIGKILL follows SIGTERM with time left for the guest to die before another host may "
            f"take over, got {config.locking.kill_grace}",
        )
    peer = config.peer
    for name in (
        "migration_timeout",
        "prepare_timeout",
        "retry_interval",
        "transfer_margin",
        "request_timeout",
    ):
        if not getattr(peer, name) > 0:
            raise ConfigError(f"peer.{name}", f"must be a positive number, got {getattr(peer, name)}")
    for name in ("max_incoming_per_peer", "max_incoming", "max_requests_per_peer"):
        value = getattr(peer, name)
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 100_000:
            raise ConfigError(f"peer.{name}", f"must be an integer in 1..100000, got {value!r}")
    if peer.max_incoming_per_peer > peer.max_incoming:
        raise ConfigError(
            "peer.max_incoming_per_peer", f"must not exceed peer.max_incoming ({peer.max_incoming})"
        )
    if peer.transfer_margin >= peer.migration_timeout:
        raise ConfigError(
            "peer.transfer_margin", f"must be below peer.migration_timeout ({peer.migration_timeout})"
        )
    if peer.endpoint and not peer.plaintext and peer.key_file is None:
        raise ConfigError(
            "peer.key_file", "a peer endpoint needs a CURVE key file (actorlock keygen), or plaintext = true"
        )
    _check_peer_addresses(peer)
    if not config.memory.lockspace:
        raise ConfigError("memory.lockspace", "must not be empty")
    if config.locking.backend == "etcd":
        config.etcd.validate()
    return config


# ZeroMQ's Z85 alphabet; a CURVE public key is 32 bytes, 40 characters.
_Z85 = re.compile(r"[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}")
_TCP = re.compile(r"tcp://(?:\[[0-9A-Fa-f:.]+\]|[^\s/:\[\]]+):(\*|[0-9]{1,5})")


def _check_peer_addresses(peer: PeerConfig) -> None:
    for key in peer.allowed_keys:
        if not _Z85.fullmatch(key):
            raise ConfigError("peer.allowed_keys", f"{key!r} is not a 40-character Z85 CURVE public key")
    endpoint = peer.endpoint
    if not endpoint:
        return
    tcp = _TCP.fullmatch(endpoint)
    if tcp is not None:
        if tcp.group(1) != "*" and not 0 < int(tcp.group(1)) <= 65535:
            raise ConfigError("peer.endpoint", f"port of {endpoint!r} is not in 1..65535")
        return
    for scheme in ("ipc://", "inproc://"):
        rest = endpoint[len(scheme) :]
        if endpoint.startswith(scheme) and rest and not rest.isspace():
            return
    raise ConfigError(
        "peer.endpoint", f"must be tcp://HOST:PORT, ipc://PATH or inproc://NAME, got {endpoint!r}"
    )
