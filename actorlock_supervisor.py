"""The ``actorlock-supervisor`` console script: runs actorlock/supervisor/shim.py alone.

A top-level module so that starting a guest's supervisor does not import the
actorlock package (anyio, attrs, the coordinator: ~20 MiB and ~120 ms per
guest); it finds the package's directory without executing it.
"""

from __future__ import annotations

import importlib.util
import os
import sys


def main() -> int:
    package = importlib.util.find_spec("actorlock")
    if package is None or not package.submodule_search_locations:
        sys.stderr.write("actorlock-supervisor: the actorlock package is not installed\n")
        return 2
    path = os.path.join(next(iter(package.submodule_search_locations)), "supervisor", "shim.py")
    spec = importlib.util.spec_from_file_location("actorlock_supervisor_shim", path)
    assert spec is not None
    assert spec.loader is not None
    shim = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shim)
    code: int = shim.main()
    return code


if __name__ == "__main__":
    sys.exit(main())
