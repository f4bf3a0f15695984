"""One chaos run from start to report (:func:`run_chaos`), and the ``actorlock chaos`` command line."""

from __future__ import annotations

import argparse
import functools
import os
import random
import tempfile
import time
from collections.abc import (
    Callable,
    Iterator,
    Sequence,
)
from contextlib import contextmanager
from pathlib import Path

import anyio
import anyio.abc

from ...errors import InvalidParameterError
from ...testing.checker import check
from ...testing.history import (
    GuestWrote,
)
from .codec import merge_histories, save_history
from .driver import Driver
from .report import ChaosReport
from .settings import SLACK, TIMING, WORKERS


@contextmanager
def _workdir(path: str | os.PathLike[str] | None) -> Iterator[tuple[Path, bool]]:
    """The run's directory and whether to keep it (a temporary one is removed afterwards)."""
    if path is not None:
        directory = Path(path)
        directory.mkdir(parents=True, exist_ok=True)
        yield directory, True
        return
    with tempfile.TemporaryDirectory(prefix="actorlock-chaos-") as tmp:
        yield Path(tmp), False


async def run_chaos(
    seconds: float,
    seed: int,
    hosts: int = 3,
    out: Callable[[str], object] = print,
    *,
    workdir: str | os.PathLike[str] | None = None,
    plaintext: bool = False,
    host_backends: Sequence[str] = ("asyncio", "trio"),
    fault_gap: tuple[float, float] = (0.8, 1.6),
) -> ChaosReport:
    """Run the chaos workload for ``seconds`` and judge the merged history.

    Args:
        seconds: how long guests are started, stopped and migrated under faults.
        seed: seeds every random choice (the interleaving still depends on timing).
        hosts: how many host processes (at least 2).
        out: where progress and the summary go, one line per call.
        workdir: an existing or new directory to keep everything in (the
            lockspace, histories, logs); a temporary one, removed after, by default.
        plaintext: run the peer service without CURVE.
        host_backends: the event loops of the host processes, used in turn.
        fault_gap: the range of seconds between two faults.

    Returns:
        The report; ``report.violations`` is empty when the run was safe.
    """
    if hosts < 2:
        raise InvalidParameterError(f"a chaos run needs at least 2 hosts, got {hosts}")
    started = time.monotonic()
    with _workdir(workdir) as (directory, keep):
        await anyio.Path(directory / "lockspace").mkdir(exist_ok=keep)
        async with anyio.create_task_group() as tg:
            driver = Driver(
                tg,
                directory,
                seed=seed,
                hosts=hosts,
                plaintext=plaintext,
                host_backends=list(host_backends),
                out=out,
            )
            error: Exception | None = None
            try:
                await driver.start_hosts()
                async with anyio.create_task_group() as chaos:
                    driver.chaos_tg = chaos
                    for index in range(WORKERS):
                        chaos.start_soon(driver.worker, index, name=f"worker {index}")
                    chaos.start_soon(driver.injector, fault_gap, name="fault injector")
                    await anyio.sleep(seconds)
                    driver.stop()
                await driver.finish()
            except Exception as exc:
                error = exc
            finally:
                await driver.close()
                tg.cancel_scope.cancel()
        if error is not None:
            raise error
        save_history(directory / "history-driver.jsonl", driver.history.events)
        history, torn = merge_histories(directory, driver.history.events, driver.slots)
        violations = check(history, host_dead=TIMING["host_dead"], slack=SLACK)
        report = ChaosReport(
            seed=seed,
            hosts=hosts,
            seconds=seconds,
            elapsed=time.monotonic() - started,
            operations=sum(driver.ops[k] for k in ("start", "stop", "migrate", "probe", "tidy", "snapshot")),
            operations_by_kind=dict(driver.ops),
            faults=dict(driver.faults),
            migrations_committed=driver.committed,
            migrations_cancelled=driver.cancelled,
            events=len(history),
            writes=len(history.of(GuestWrote)),
            unreadable_lines=torn,
            violations=tuple(violations),
            workdir=str(directory) if keep else "",
            findings=tuple(driver.findings),
            kill_margins=tuple(driver.kill_margins),
        )
    for line in report.summary():
        out(line)
    return report


def main_chaos(argv: Sequence[str] | None = None) -> int:
    """``actorlock chaos``: run :func:`run_chaos`; exit 1 on violations, 0 otherwise."""
    parser = argparse.ArgumentParser(
        prog="actorlock chaos",
        description="Host processes on loopback, guests under supervisors, under kill -9, SIGSTOP, "
        "stalled storage and restarts; the history is checked.",
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="how long the workload runs (default 20)")
    parser.add_argument("--seed", type=int, help="seed of the random choices (default: random, printed)")
    parser.add_argument("--hosts", type=int, default=3, help="host processes (default 3)")
    parser.add_argument("--workdir", type=Path, help="keep the lockspace, histories and logs here")
    parser.add_argument("--plaintext", action="store_true", help="run the peer service without CURVE")
    parser.add_argument("--backend", default="asyncio", choices=("asyncio", "trio"), help="the driver's loop")
    args = parser.parse_args(argv)
    if args.seconds <= 0:
        parser.error("--seconds must be positive")
    if args.hosts < 2:
        parser.error("--hosts must be at least 2")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    report = anyio.run(
        functools.partial(_run_for_cli, plaintext=args.plaintext),
        args.seconds,
        seed,
        args.hosts,
        args.workdir,
        backend=args.backend,
    )
    return 1 if report.failures else 0


async def _run_for_cli(
    seconds: float, seed: int, hosts: int, workdir: Path | None, *, plaintext: bool
) -> ChaosReport:
    return await run_chaos(seconds, seed, hosts, print, workdir=workdir, plaintext=plaintext)
