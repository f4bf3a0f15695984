"""``python -m actorlock._verify.chaos [options]``: a chaos run; ``... host-process``: a host process.

The driver starts its host processes with ``python -m`` this package and
``host-process``, so one module path serves both.
"""

from __future__ import annotations

import sys

from .agent import host_process_main
from .run import main_chaos


def main(argv: list[str]) -> int:
    if argv[:1] == ["host-process"]:
        return host_process_main()
    return main_chaos(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
