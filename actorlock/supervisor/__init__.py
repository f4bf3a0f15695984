"""Guest supervision that survives the coordinator (issue 9).

* :mod:`.shim`: the per-guest supervisor process (``actorlock-supervisor``);
* :mod:`.wire` and :mod:`.messages`: its control-socket protocol;
* :mod:`.service`: the coordinator's side, which pushes lease deadlines;
* :func:`supervisor_path`: where this installation put the executable.
"""

from __future__ import annotations

import functools
import os
import sys
import sysconfig

from ..errors import NotSupportedError
from .service import SOCKET_NAME, SupervisedGuest, SupervisorService

__all__ = [
    "EXECUTABLE",
    "SOCKET_NAME",
    "SupervisedGuest",
    "SupervisorService",
    "supervisor_command",
    "supervisor_path",
]

EXECUTABLE = "actorlock-supervisor"


@functools.cache
def supervisor_path() -> str:
    """The absolute path of the ``actorlock-supervisor`` console script of this installation.

    Looked up once (two local stats in the interpreter's own directories), then cached.
    """
    for directory in (os.path.dirname(sys.executable), sysconfig.get_path("scripts")):
        candidate = os.path.join(directory, EXECUTABLE)
        if os.access(candidate, os.X_OK):
            return os.path.abspath(candidate)
    raise NotSupportedError(
        f"{EXECUTABLE} is not installed next to {sys.executable}: reinstall actorlock (pip install)"
    )


@functools.cache
def supervisor_command() -> list[str]:
    """The same supervisor, started without the console script (``Domain.spawn`` uses it).

    ``python -I -S shim.py --site DIR``: no site processing, which the console
    script's interpreter does (tens of ms, and ~2 MiB kept for the guest's life);
    msgpack, its one dependency, is found in DIR.
    """
    import msgpack

    site = os.path.dirname(os.path.dirname(os.path.abspath(msgpack.__file__)))
    shim = os.path.join(os.path.dirname(os.path.abspath(__file__)), "shim.py")
    return [sys.executable, "-I", "-S", shim, "--site", site]
