"""The public API: what `import actorlock` promises."""

from __future__ import annotations

import types

import actorlock
import actorlock.errors as errors

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


def test_every_public_name_is_exported_and_exists() -> None:
    assert set(actorlock.__all__) == PUBLIC
    assert sorted(actorlock.__all__) == actorlock.__all__
    for name in actorlock.__all__:
        assert hasattr(actorlock, name), name


def test_nothing_public_is_left_out_of_all() -> None:
    # What `from actorlock import *` and the docs promise is what the package shows.
    shown = {
        name
        for name, value in vars(actorlock).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert shown == set(actorlock.__all__)


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
