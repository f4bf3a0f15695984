"""The public API: what `import actorlock` promises."""

from __future__ import annotations

import subprocess
import sys
import types

import actorlock
import actorlock.errors as errors
import actorlock.testing

# Programs outside the project import these names: removing or renaming one
# breaks them, so it must be a deliberate change of this list.
PUBLIC = {
    "AcquireFlags",
    "ActorlockError",
    "Config",
    "Domain",
    "DomainIdentity",
    "DomainStatus",
    "FailureAction",
    "Host",
    "HostStatus",
    "Lease",
    "LeaseMode",
    "LockManager",
    "LockManagerPlugin",
    "LockState",
    "MigrateFlags",
    "NewFlags",
    "ObjectType",
    "Resource",
    "ResourceFlags",
    "ResourceType",
    "disk",
    "load_config",
    "open_host",
    "plugin_load",
    "run_plugin",
}


# The kit for testing daemons against simulated hosts (actorlock.testing): as
# public as the list above, for the programs that test with it.
PUBLIC_TESTING = {
    "ALL_CHECKS",
    "FAULT_KINDS",
    "SIM_TIMING",
    "STORAGE_FAULTS",
    "BackendFactory",
    "Cluster",
    "ConformanceError",
    "EventLog",
    "EventSink",
    "FakeClock",
    "FaultyBackend",
    "FaultyStateStore",
    "ForwardingBackend",
    "GuestState",
    "History",
    "HistoryEvent",
    "HostGoneError",
    "HostState",
    "Rule",
    "Shape",
    "SimGuest",
    "SimHost",
    "SimStorage",
    "Slowness",
    "VirtualClock",
    "Violation",
    "check",
    "check_lease_backend",
    "open_cluster",
    "saturate_thread_pool",
    "virtual_clock",
}


def _shown(module: types.ModuleType) -> set[str]:
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }


def test_every_public_name_is_exported_and_exists() -> None:
    assert set(actorlock.__all__) == PUBLIC
    assert sorted(actorlock.__all__) == actorlock.__all__
    for name in actorlock.__all__:
        assert hasattr(actorlock, name), name


def test_nothing_public_is_left_out_of_all() -> None:
    # What `from actorlock import *` and the docs promise is what the package shows.
    assert _shown(actorlock) == set(actorlock.__all__)


def test_the_testing_kit_exports_exactly_its_public_names() -> None:
    assert set(actorlock.testing.__all__) == PUBLIC_TESTING
    assert len(actorlock.testing.__all__) == len(PUBLIC_TESTING)
    for name in actorlock.testing.__all__:
        assert hasattr(actorlock.testing, name), name
    assert _shown(actorlock.testing) == PUBLIC_TESTING


def test_the_testing_kit_never_loads_the_projects_own_drivers() -> None:
    # actorlock._verify patches trio's private internals: a user of the kit must not get that.
    code = (
        "import sys, actorlock.testing, actorlock.testing.conformance;"
        "print(sorted(m for m in sys.modules if m.startswith('actorlock._verify')))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"


def test_the_seed_api_names_are_all_there() -> None:
    for name in ("plugin_load", "run_plugin", "LockManagerPlugin", "LockManager", "open_host", "load_config"):
        assert name in actorlock.__all__
    for method in (
        "set_parameter",
        "register_resource",
        "acquire_object",
        "release_all",
        "acquire_resource",
        "release_resource",
        "get_child",
        "shutdown",
        "free",
        "get_supervisor_path",
        "get_supervisor_args",
        "prepare_migrate",
        "complete_migrate_in",
    ):
        assert callable(getattr(actorlock.LockManager, method)), method


def test_every_error_derives_from_actorlock_error_and_has_a_unique_code() -> None:
    classes = [
        obj
        for obj in vars(errors).values()
        if isinstance(obj, type) and issubclass(obj, BaseException) and obj.__module__ == errors.__name__
    ]
    assert len(classes) > 10
    for cls in classes:
        assert issubclass(cls, errors.ActorlockError), cls
    codes = [cls.code for cls in classes]
    assert len(codes) == len(set(codes))


def test_errors_round_trip_through_their_wire_code() -> None:
    err = errors.error_from_code("busy", "resource x is busy", resource="x", holders=(("a", "u1"),))
    assert isinstance(err, errors.ResourceBusyError)
    assert err.resource == "x"
    assert str(err) == "resource x is busy"
    assert type(errors.error_from_code("no-such-code", "?")) is errors.ActorlockError
