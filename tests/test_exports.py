"""The public API: what `import actorlock` promises."""

from __future__ import annotations

import actorlock
import actorlock.errors as errors


def test_every_public_name_is_exported_and_exists() -> None:
    for name in actorlock.__all__:
        assert getattr(actorlock, name) is not None, name
    assert sorted(actorlock.__all__) == actorlock.__all__


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
