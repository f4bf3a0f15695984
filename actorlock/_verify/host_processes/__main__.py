"""``python -m actorlock._verify.host_processes host --name N --id I ...``: one host process."""

from __future__ import annotations

import argparse
import sys

from .agent import add_host_arguments, host_main


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m actorlock._verify.host_processes")
    sub = parser.add_subparsers(dest="mode", required=True)
    add_host_arguments(sub.add_parser("host", help="run one host coordinator (started by spawn_host)"))
    return host_main(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
