"""The simulator's seeded clock: worker-thread calls run inline only where asked, still waiting for tokens."""

from __future__ import annotations

import threading

import anyio
import anyio.to_thread

from actorlock._verify.trio_scheduling import seeded_virtual_clock


async def _thread_of_a_worker_call() -> int:
    return await anyio.to_thread.run_sync(threading.get_ident)


def _run_on(clock: object) -> int:
    return anyio.run(_thread_of_a_worker_call, backend="trio", backend_options={"clock": clock})


def test_a_clock_with_inline_worker_calls_runs_them_in_the_event_loops_thread() -> None:
    assert _run_on(seeded_virtual_clock(1, inline_worker_calls=True)) == threading.get_ident()


def test_other_runs_keep_their_worker_threads_after_an_inline_run() -> None:
    _run_on(seeded_virtual_clock(1, inline_worker_calls=True))  # installs the wrapper
    assert _run_on(seeded_virtual_clock(1)) != threading.get_ident()
    assert anyio.run(_thread_of_a_worker_call, backend="asyncio") != threading.get_ident()


def test_an_inline_worker_call_still_waits_for_a_token_of_its_limiter() -> None:
    async def main() -> list[str]:
        order: list[str] = []
        limiter = anyio.CapacityLimiter(1)

        async def call() -> None:
            await anyio.to_thread.run_sync(order.append, "call", limiter=limiter)

        async with anyio.create_task_group() as tg:
            await limiter.acquire()
            tg.start_soon(call)
            await anyio.sleep(1.0)  # virtual time: the call waits for the token all along
            order.append("released")
            limiter.release()
        return order

    order = anyio.run(
        main, backend="trio", backend_options={"clock": seeded_virtual_clock(1, inline_worker_calls=True)}
    )
    assert order == ["released", "call"]
