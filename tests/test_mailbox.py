"""Actor mailboxes: order, replies, crashed handlers, teardown."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from actorlock.actors.mailbox import Actor, open_mailbox, run_actor
from actorlock.errors import ActorStoppedError

pytestmark = pytest.mark.anyio


class Recorder(Actor[Any]):
    name = "recorder"

    def __init__(self) -> None:
        self.seen: list[Any] = []
        self.gate = anyio.Event()
        self.stopped = False

    async def handle(self, message: Any) -> Any:
        if message == "boom":
            raise ValueError("handler crashed")
        if message == "wait":
            await self.gate.wait()
        self.seen.append(message)
        return ("done", message)

    async def on_stop(self) -> None:
        self.stopped = True


async def test_messages_are_handled_one_at_a_time_in_arrival_order() -> None:
    actor = Recorder()
    ref, mailbox = open_mailbox("recorder")
    async with anyio.create_task_group() as tg:
        tg.start_soon(run_actor, actor, ref, mailbox)
        for i in range(20):
            await ref.tell(i)
        assert await ref.ask("last") == ("done", "last")
        assert actor.seen == [*range(20), "last"]
        tg.cancel_scope.cancel()


async def test_a_crashed_handler_fails_the_caller_and_the_actor_carries_on() -> None:
    actor = Recorder()
    ref, mailbox = open_mailbox("recorder")
    async with anyio.create_task_group() as tg:
        tg.start_soon(run_actor, actor, ref, mailbox)
        with pytest.raises(ValueError, match="handler crashed"):
            await ref.ask("boom")
        assert await ref.ask("after") == ("done", "after")
        tg.cancel_scope.cancel()


async def test_stopping_fails_every_queued_ask_and_later_sends() -> None:
    actor = Recorder()
    ref, mailbox = open_mailbox("recorder")
    errors: list[BaseException] = []

    async def ask(message: str) -> None:
        try:
            await ref.ask(message)
        except ActorStoppedError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as outer, anyio.create_task_group() as actor_tg:
        actor_tg.start_soon(run_actor, actor, ref, mailbox)
        outer.start_soon(ask, "wait")
        await anyio.wait_all_tasks_blocked()  # trio starts tasks in random order
        outer.start_soon(ask, "queued-1")
        outer.start_soon(ask, "queued-2")
        await anyio.wait_all_tasks_blocked()
        actor_tg.cancel_scope.cancel()
    assert len(errors) == 3
    assert actor.stopped
    with pytest.raises(ActorStoppedError):
        await ref.ask("too late")
    with pytest.raises(ActorStoppedError):
        ref.tell_nowait("too late")


async def test_an_ask_cancelled_before_the_actor_starts_on_it_is_skipped() -> None:
    actor = Recorder()
    ref, mailbox = open_mailbox("recorder")
    async with anyio.create_task_group() as tg:
        tg.start_soon(run_actor, actor, ref, mailbox)
        scope = anyio.CancelScope()

        async def abandoning_caller() -> None:
            with scope:
                await ref.ask("abandoned")

        async with anyio.create_task_group() as callers:
            callers.start_soon(ref.ask, "wait")
            await anyio.wait_all_tasks_blocked()
            callers.start_soon(abandoning_caller)
            await anyio.wait_all_tasks_blocked()  # queued behind "wait", awaiting its reply
            scope.cancel()
            await anyio.wait_all_tasks_blocked()
            actor.gate.set()
        assert await ref.ask("next") == ("done", "next")
        assert actor.seen == ["wait", "next"]
        tg.cancel_scope.cancel()
