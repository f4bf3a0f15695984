"""What every benchmark prints: one table of rows, each against the floor measured in the same run.

A row is a rate (or a size) with its latency percentiles, the name of the
floor it is compared with, and the ratio to that floor; ``--json`` writes the
same rows, plus the machine and its load average, for other tools. Figures
only: nothing is asserted (timing assertions would fail on a busy machine).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio


def pct(samples: list[float], q: float) -> float:
    """The ``q`` quantile of ``samples`` (nearest rank); 0 for no samples."""
    if not samples:
        return 0.0
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(parser: argparse.ArgumentParser, main_async: Callable[[argparse.Namespace], Awaitable[None]]) -> None:
    """Add the options every benchmark has, parse, and run ``main_async(args)``."""
    parser.add_argument("--trio", action="store_true", help="run on trio")
    parser.add_argument("--dir", default=None, help="where to put the temporary lockspaces")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args()
    # Domains without a guest pid warn on every start: not what is measured here.
    logging.getLogger("actorlock").setLevel(logging.ERROR)
    anyio.run(main_async, args, backend="trio" if args.trio else "asyncio")


def load_average() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except OSError:
        return (0.0, 0.0, 0.0)


class Table:
    """Rows of one benchmark run; ``add`` prints each as it is measured."""

    def __init__(self, title: str, unit: str = "cycles/s") -> None:
        self.title = title
        self.unit = unit
        self.rows: list[dict[str, Any]] = []
        self.notes: list[str] = []
        one, five, _ = load_average()
        print(
            f"{title}: python {sys.version.split()[0]}, {os.cpu_count()} cpus, "
            f"load average {one:.2f} (5 min {five:.2f}) at start"
        )
        header = f"{'bench':<44} {self.unit:>11} {'p50 ms':>9} {'p99 ms':>9} {'n':>7}"
        print(f"{header}  {'floor':<32} {'ratio':>7}")

    def add(
        self,
        name: str,
        rate: float,
        latencies: list[float] | None = None,
        *,
        floor: str = "",
        goal: str = "",
        extra: dict[str, Any] | None = None,
        by: str = "rate",
    ) -> float:
        """Record and print one row; ``floor`` names an earlier row: the ratio is rate / its rate.

        With ``by="p50"`` the ratio is this row's p50 over the floor's (for
        latencies, where the floor is the smaller one).
        """
        samples = latencies or []
        p50_ms = pct(samples, 0.5) * 1e3
        base_row = next((row for row in self.rows if row["name"] == floor), None) if floor else None
        ratio = None
        if base_row is not None and by == "p50":
            ratio = p50_ms / base_row["p50_ms"] if base_row["p50_ms"] else None
        elif base_row is not None:
            ratio = rate / base_row["rate"] if base_row["rate"] else None
        row: dict[str, Any] = {
            "name": name,
            "rate": rate,
            "unit": self.unit,
            "p50_ms": p50_ms,
            "p99_ms": pct(samples, 0.99) * 1e3,
            "n": len(samples),
            "floor": floor or None,
            "ratio": ratio,
            "ratio_of": by,
            "goal": goal or None,
            **(extra or {}),
        }
        self.rows.append(row)
        shown = f"{ratio:6.2f}x" if ratio is not None else "      -"
        if ratio is not None and by == "p50":
            shown += " p50"
        print(
            f"{name:<44} {rate:11.1f} {row['p50_ms']:9.2f} {row['p99_ms']:9.2f} {len(samples):7d}  "
            f"{floor or '(is a floor)':<32} {shown}" + (f"   goal: {goal}" if goal else "")
        )
        return rate

    def add_latencies(self, name: str, latencies: list[float], **options: Any) -> float:
        """A row of operations run one after another: its rate is their count over their total time."""
        return self.add(name, len(latencies) / sum(latencies), latencies, **options)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(text)

    def write_json(self, path: str | None) -> None:
        if not path:
            return
        one, five, fifteen = load_average()
        document = {
            "title": self.title,
            "python": sys.version.split()[0],
            "cpus": os.cpu_count(),
            "load_average_at_end": [one, five, fifteen],
            "rows": self.rows,
            "notes": self.notes,
        }
        Path(path).write_text(json.dumps(document, indent=1) + "\n")
        print(f"wrote {path}")
