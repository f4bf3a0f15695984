"""Guest processes: is a pid still our guest, and how to power it off.

A pid alone can be reused by the kernel, so we remember the process start
time (field 22 of /proc/PID/stat) with it and compare both.
"""

from __future__ import annotations

import contextlib
import os
import signal

import anyio


def _read_stat(pid: int) -> tuple[str, int] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm may hold spaces and parentheses: fields start after the last ')'.
    fields = raw[raw.rfind(b")") + 2 :].split()
    return fields[0].decode(), int(fields[19])


def process_start_time_sync(pid: int) -> int | None:
    stat = _read_stat(pid)
    return None if stat is None else stat[1]


def is_running_sync(pid: int, start_time: int | None) -> bool:
    """True if ``pid`` exists, is not a zombie and (when given) started at ``start_time``."""
    stat = _read_stat(pid)
    if stat is None:
        return False
    state, started = stat
    if state in ("Z", "X"):
        return False
    return start_time is None or started == start_time


async def process_start_time(pid: int) -> int | None:
    return await anyio.to_thread.run_sync(process_start_time_sync, pid)


async def is_running(pid: int, start_time: int | None, limiter: anyio.CapacityLimiter | None = None) -> bool:
    """Whether the guest still runs; ``limiter``: whose worker threads read /proc (None: the default).

    Abandoned when cancelled, so a fence attempt stays bounded by its
    timeout even if the read should hang.
    """
    return await anyio.to_thread.run_sync(
        is_running_sync, pid, start_time, limiter=limiter, abandon_on_cancel=True
    )


async def power_off(
    pid: int, start_time: int | None, grace: float, limiter: anyio.CapacityLimiter | None = None
) -> bool:
    """SIGTERM, then SIGKILL after ``grace`` seconds; True once the guest is gone.

    Waits on a pidfd (readable when the process exits, child or not) so no
    polling is needed; falls back to polling where pidfds are unavailable.
    The signals go through the pidfd (direct system calls); the one /proc
    read that checks the process start time runs in ``limiter``'s threads,
    which fencing keeps apart from lease traffic.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except OSError:
        pidfd = -1
    try:
        # Checked after opening the pidfd, so the fd cannot refer to a reused pid.
        if not await is_running(pid, start_time, limiter):
            return True
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, max(grace, 1.0))):
            if pidfd >= 0:
                signal.pidfd_send_signal(pidfd, sig)
            else:
                _signal(pid, sig)
            with anyio.move_on_after(wait):
                await _wait_exit(pid, start_time, pidfd, limiter)
                return True
        return False
    finally:
        if pidfd >= 0:
            os.close(pidfd)


async def _wait_exit(
    pid: int, start_time: int | None, pidfd: int, limiter: anyio.CapacityLimiter | None
) -> None:
    if pidfd >= 0:
        await anyio.wait_readable(pidfd)
        return
    while await is_running(pid, start_time, limiter):  # noqa: ASYNC110 - no event exists without a pidfd
        await anyio.sleep(0.01)


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
