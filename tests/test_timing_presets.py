"""The one fast timing preset: scaled and overridden, and never returned broken."""

from __future__ import annotations

import pytest

from actorlock.config import load_config
from actorlock.errors import ConfigError
from actorlock.timing_presets import FAST_KILL_GRACE, FAST_TIMING, fast_timing


def test_the_preset_itself_passes_the_rule_load_config_enforces() -> None:
    config = load_config({"timing": dict(FAST_TIMING), "locking": {"kill_grace": FAST_KILL_GRACE}})
    assert config.timing.lease_timeout == FAST_TIMING["lease_timeout"]
    assert fast_timing() == dict(FAST_TIMING)


def test_scale_stretches_the_rule_times_together_and_leaves_io_timeout_alone() -> None:
    doubled = fast_timing(scale=2)
    for name in ("renew_interval", "lease_timeout", "fence_timeout", "host_dead"):
        assert doubled[name] == pytest.approx(2 * FAST_TIMING[name]), name
    assert doubled["io_timeout"] == FAST_TIMING["io_timeout"]
    assert fast_timing(io_timeout=0.8)["io_timeout"] == 0.8


def test_an_override_that_breaks_the_rule_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError) as refused:
        fast_timing(host_dead=0.3)
    assert refused.value.key == "timing.host_dead"
    with pytest.raises(ConfigError) as refused:
        fast_timing(scale=2, renew_interval=0.4)
    assert refused.value.key == "timing.lease_timeout"
