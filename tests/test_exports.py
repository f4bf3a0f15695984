"""The public API: what `import actorlock` promises."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest

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
    "crash",
    "freeze",
    "open_cluster",
    "saturate_thread_pool",
    "thaw",
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
    checked: list[type[errors.ActorlockError]] = []
    for cls in classes:
        assert issubclass(cls, errors.ActorlockError), cls
        checked.append(cls)
    codes = [cls.code for cls in checked]
    assert len(codes) == len(set(codes))


def test_errors_round_trip_through_their_wire_code() -> None:
    err = errors.error_from_code("busy", "resource x is busy", resource="x", holders=(("a", "u1"),))
    assert isinstance(err, errors.ResourceBusyError)
    assert err.resource == "x"
    assert str(err) == "resource x is busy"
    assert type(errors.error_from_code("no-such-code", "?")) is errors.ActorlockError


def test_one_registry_holds_every_code_the_core_and_the_protocol_define() -> None:
    import actorlock.protocol as protocol

    codes = errors.registered_codes()
    defined = [
        obj
        for module in (errors, protocol)
        for obj in vars(module).values()
        if isinstance(obj, type) and issubclass(obj, errors.ActorlockError) and "code" in vars(obj)
    ]
    assert protocol.IllegalEventError in defined
    for cls in defined:
        assert codes[cls.code] is cls, cls


def test_a_taken_error_code_is_refused_when_the_class_is_defined() -> None:
    with pytest.raises(TypeError, match=r"'busy' of .*Again is taken by ResourceBusyError"):

        class Again(errors.ActorlockError):
            code = "busy"

    assert errors.registered_codes()["busy"] is errors.ResourceBusyError


def test_every_rebuilt_error_keeps_the_senders_text_and_has_its_attributes() -> None:
    for code, cls in errors.registered_codes().items():
        err = errors.error_from_code(code, "the sender's words")
        assert type(err) is cls, code
        assert str(err) == "the sender's words", code
    busy = errors.error_from_code("busy", "m")
    assert (busy.resource, busy.holders) == ("", ())  # type: ignore[attr-defined]
    config = errors.error_from_code("config", "m", key="timing.lease_timeout")
    assert isinstance(config, errors.ConfigError)
    assert (config.key, config.problem) == ("timing.lease_timeout", "m")
    corrupt = errors.error_from_code("corrupt-record", "m", path="/x")
    assert isinstance(corrupt, errors.CorruptRecordError)
    assert (corrupt.path, corrupt.problem) == ("/x", "m")
