"""``actorlock explore``: explore the real protocol within bounds and print the report."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import attrs

from .report import ExploreReport, print_report
from .search import explore
from .world import DEFAULT_BOUNDS, THOROUGH_BOUNDS, Bounds, Model

# --- the command line --------------------------------------------------------


def run_explore(bounds: Bounds = DEFAULT_BOUNDS, out: TextIO | None = None) -> ExploreReport:
    """Explore the real protocol within ``bounds`` and print the figures to ``out``.

    Prints ``states explored: N`` and ``violations: V`` (and each violation
    with its trace).
    """
    report = explore(Model(bounds=bounds))
    print_report(report, out if out is not None else sys.stdout)
    return report


def main_explore(argv: Sequence[str] | None = None) -> int:
    """``actorlock explore``: 0 when no rule was broken, 1 otherwise."""
    parser = argparse.ArgumentParser(
        prog="actorlock explore",
        description="Exhaustively explore the lease migration protocol within bounds.",
    )
    parser.add_argument("--thorough", action="store_true", help="larger budgets (takes minutes)")
    parser.add_argument("--losses", type=int, help="messages the network may lose")
    parser.add_argument("--duplicates", type=int, help="messages the network may duplicate")
    parser.add_argument("--backend-faults", type=int, help="backend calls that may fail")
    parser.add_argument("--crashes", type=int, help="hosts that may crash")
    parser.add_argument("--max-depth", type=int, help="events per path at most")
    parser.add_argument("--early-timeouts", type=int, help="requests that may time out while in flight")
    parser.add_argument("--forgets", type=int, help="finished sides that may forget early")
    parser.add_argument("--adversity", type=int, help="budgeted events of any kind per path")
    parser.add_argument("--no-third-host", action="store_true", help="no third host")
    parser.add_argument("--no-progress-check", action="store_true", help="skip the reachability check")
    args = parser.parse_args(argv)
    bounds = THOROUGH_BOUNDS if args.thorough else DEFAULT_BOUNDS
    changes: dict[str, Any] = {}
    for name in (
        "losses",
        "duplicates",
        "backend_faults",
        "crashes",
        "early_timeouts",
        "forgets",
        "adversity",
        "max_depth",
    ):
        value = getattr(args, name)
        if value is not None:
            changes[name] = value
    if args.no_third_host:
        changes["third_host"] = False
    if args.no_progress_check:
        changes["check_progress"] = False
    report = run_explore(attrs.evolve(bounds, **changes))
    return 0 if report.ok else 1
