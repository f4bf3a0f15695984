"""Configuration loading: TOML or mapping, every error names its key."""

from __future__ import annotations

from pathlib import Path

import pytest

import actorlock
from actorlock import FailureAction
from actorlock.errors import ConfigError

SAMPLE = Path(__file__).resolve().parent.parent / "config" / "actorlock.toml"


def test_the_sample_config_loads_with_its_documented_values() -> None:
    cfg = actorlock.load_config(SAMPLE)
    assert (cfg.host.name, cfg.host.id) == ("host-a", 1)
    assert cfg.host.state_dir == Path("/var/lib/actorlock/state")
    assert (cfg.timing.renew_interval, cfg.timing.lease_timeout, cfg.timing.host_dead) == (2.0, 10.0, 20.0)
    assert cfg.file.lockspace_dir == Path("/var/lib/actorlock/lockspace")
    assert cfg.locking.failure_action is FailureAction.POWEROFF
    assert cfg.locking.leases_required is False


def test_a_mapping_with_the_same_shape_loads_too() -> None:
    cfg = actorlock.load_config({"host": {"name": "b", "id": 2}, "timing": {"renew_interval": 1}})
    assert cfg.host.name == "b"
    assert cfg.timing.renew_interval == 1.0
    assert isinstance(cfg.timing.renew_interval, float)


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"hots": {}}, "hots"),
        ({"host": {"nmae": "x"}}, "host.nmae"),
        ({"host": {"id": "1"}}, "host.id"),
        ({"host": {"id": 0}}, "host.id"),
        ({"host": {"id": 2001}}, "host.id"),
        ({"host": {"name": ""}}, "host.name"),
        ({"timing": {"renew_interval": -1}}, "timing.renew_interval"),
        ({"timing": {"renew_interval": True}}, "timing.renew_interval"),
        ({"timing": {"lease_timeout": 3.0}}, "timing.lease_timeout"),
        ({"timing": {"host_dead": 14.0}}, "timing.host_dead"),
        ({"locking": {"failure_action": "restart"}}, "locking.failure_action"),
        ({"locking": {"backend": "sanlock"}}, "locking.backend"),
        ({"locking": {"kill_grace": 6.0}}, "locking.kill_grace"),
        ({"locking": {"auto_disk_leases": "yes"}}, "locking.auto_disk_leases"),
        ({"file": {"lockspace_dir": 5}}, "file.lockspace_dir"),
        ({"peer": {"allowed_keys": "abc"}}, "peer.allowed_keys"),
        ({"host": "a"}, "host"),
    ],
)
def test_bad_values_raise_config_error_naming_the_key(data: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        actorlock.load_config(data)
    assert caught.value.key == key
    assert key in str(caught.value)


def test_a_missing_file_and_bad_toml_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        actorlock.load_config(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[host\nname=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        actorlock.load_config(bad)


def test_config_errors_are_value_errors_and_actorlock_errors() -> None:
    with pytest.raises(ValueError):
        actorlock.load_config({"host": {"id": -3}})
    with pytest.raises(actorlock.ActorlockError):
        actorlock.load_config({"host": {"id": -3}})
