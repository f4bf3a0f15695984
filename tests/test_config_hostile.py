"""Hostile and careless configurations (issue 10): each refused with a ConfigError naming its key."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

import actorlock
from actorlock.config import Config, LockingConfig, PeerConfig, TimingConfig
from actorlock.errors import ConfigError

# A CURVE public key as zmq.curve_keypair() prints it: 40 characters of Z85.
GOOD_KEY = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"timing": {"lease_timeout": float("inf"), "host_dead": float("inf")}}, "timing.lease_timeout"),
        ({"timing": {"host_dead": float("nan")}}, "timing.host_dead"),
        ({"timing": {"io_timeout": float("inf")}}, "timing.io_timeout"),
        ({"timing": {"io_timeout": 1e-9}}, "timing.io_timeout"),
        ({"peer": {"migration_timeout": float("inf")}}, "peer.migration_timeout"),
        ({"timing": {"renew_interval": 1e-9}}, "timing.renew_interval"),
        ({"locking": {"kill_grace": 4.999}}, "locking.kill_grace"),
        ({"locking": {"kill_grace": float("nan")}}, "locking.kill_grace"),
        ({"peer": {"allowed_keys": ["abc"]}}, "peer.allowed_keys"),
        ({"peer": {"allowed_keys": [GOOD_KEY[:-1] + " "]}}, "peer.allowed_keys"),
        ({"peer": {"endpoint": "http://10.0.0.1:7470", "plaintext": True}}, "peer.endpoint"),
        ({"peer": {"endpoint": "tcp://10.0.0.1", "plaintext": True}}, "peer.endpoint"),
        ({"peer": {"endpoint": "tcp://10.0.0.1:99999", "plaintext": True}}, "peer.endpoint"),
        ({"peer": {"endpoint": "ipc://", "plaintext": True}}, "peer.endpoint"),
        ({"timing": {"renew_interval": 10**400}}, "timing.renew_interval"),
    ],
)
def test_hostile_values_are_refused_naming_the_key(data: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        actorlock.load_config(data)
    assert caught.value.key == key


@pytest.mark.parametrize(
    ("config", "key"),
    [
        (Config(timing=TimingConfig(renew_interval="2")), "timing.renew_interval"),  # type: ignore[arg-type]
        (Config(timing=TimingConfig(host_dead=10**400)), "timing.host_dead"),
        (Config(locking=LockingConfig(kill_grace="1")), "locking.kill_grace"),  # type: ignore[arg-type]
        (Config(peer=PeerConfig(allowed_keys="abc")), "peer.allowed_keys"),  # type: ignore[arg-type]
        (Config(timing="fast"), "timing"),  # type: ignore[arg-type]
    ],
)
def test_a_config_object_of_wrong_types_gives_config_error(config: Config, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        actorlock.load_config(config)
    assert caught.value.key == key


def test_good_keys_and_endpoints_are_accepted() -> None:
    endpoints = (
        "tcp://10.0.0.1:7470",
        "tcp://*:7470",
        "tcp://[::1]:7470",
        "tcp://h:*",
        "ipc:///run/a",
        "inproc://x",
    )
    for endpoint in endpoints:
        peer = {"endpoint": endpoint, "plaintext": True, "allowed_keys": [GOOD_KEY]}
        cfg = actorlock.load_config({"peer": peer})
        assert cfg.peer.endpoint == endpoint
        assert cfg.peer.allowed_keys == (GOOD_KEY,)


def test_a_config_object_is_normalized_like_a_mapping() -> None:
    cfg = actorlock.load_config(Config(timing=TimingConfig(renew_interval=1)))
    assert isinstance(cfg.timing.renew_interval, float)
    assert attrs.evolve(cfg) == cfg


def test_kill_grace_leaves_a_fifth_of_fence_timeout_for_sigkill() -> None:
    assert actorlock.load_config({"locking": {"kill_grace": 4.0}}).locking.kill_grace == 4.0
    with pytest.raises(ConfigError, match="SIGKILL"):
        actorlock.load_config({"locking": {"kill_grace": 4.01}})
