"""Actor mailboxes: order, replies, crashed handlers, teardown, a full mailbox, cancellation."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from actorlock.actors.mailbox import Actor, Envelope, open_mailbox, run_actor
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


async def test_senders_blocked_by_a_full_mailbox_get_in_in_the_order_they_came() -> None:
    with anyio.fail_after(5):  # a lost wake-up fails the test, never hangs it
        actor = Recorder()
        ref, mailbox = open_mailbox("recorder", size=2)
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_actor, actor, ref, mailbox)
            async with anyio.create_task_group() as senders:
                senders.start_soon(ref.ask, "wait")
                await anyio.wait_all_tasks_blocked()  # the actor holds "wait"; the mailbox is empty
                for i in range(6):
                    senders.start_soon(ref.tell, i)
                    await anyio.wait_all_tasks_blocked()  # each sender in place before the next starts
                assert len(mailbox) == 2  # 0 and 1 queued; 2..5 wait for room
                with pytest.raises(anyio.WouldBlock):
                    ref.tell_nowait("no room")
                actor.gate.set()
            assert await ref.ask("last") == ("done", "last")
            assert actor.seen == ["wait", *range(6), "last"]
            tg.cancel_scope.cancel()


async def test_a_freed_place_goes_to_the_sender_waiting_for_room_not_to_a_newcomer() -> None:
    with anyio.fail_after(5):  # a lost wake-up fails the test, never hangs it
        _, mailbox = open_mailbox("plain", size=1)
        mailbox.put_nowait(Envelope("first", None))
        async with anyio.create_task_group() as tg:
            tg.start_soon(mailbox.put, Envelope("second", None))
            await anyio.wait_all_tasks_blocked()
            assert mailbox.get_nowait().message == "first"  # hands the freed place to "second"
            with pytest.raises(anyio.WouldBlock):
                mailbox.put_nowait(Envelope("third", None))
        assert mailbox.get_nowait().message == "second"
        with pytest.raises(anyio.WouldBlock):
            mailbox.get_nowait()


async def test_closing_keeps_what_is_queued_and_fails_new_and_waiting_senders() -> None:
    with anyio.fail_after(5):  # a lost wake-up fails the test, never hangs it
        _, mailbox = open_mailbox("plain", size=1)
        mailbox.put_nowait(Envelope("queued", None))
        failures: list[BaseException] = []

        async def blocked_sender() -> None:
            try:
                await mailbox.put(Envelope("never", None))
            except ActorStoppedError as exc:
                failures.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(blocked_sender)
            await anyio.wait_all_tasks_blocked()
            mailbox.close()
        assert len(failures) == 1
        assert mailbox.closed
        with pytest.raises(ActorStoppedError):
            mailbox.put_nowait(Envelope("late", None))
        with pytest.raises(ActorStoppedError):
            await mailbox.put(Envelope("late", None))
        assert (await mailbox.get()).message == "queued"
        with pytest.raises(anyio.EndOfStream):
            await mailbox.get()


async def test_closing_wakes_a_reader_waiting_on_an_empty_mailbox() -> None:
    with anyio.fail_after(5):  # a lost wake-up fails the test, never hangs it
        _, mailbox = open_mailbox("plain")
        ended = anyio.Event()

        async def reader() -> None:
            with pytest.raises(anyio.EndOfStream):
                await mailbox.get()
            ended.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(reader)
            await anyio.wait_all_tasks_blocked()
            mailbox.close()
            await ended.wait()


async def test_an_ask_cancelled_while_waiting_for_room_is_never_queued_nor_handled() -> None:
    with anyio.fail_after(5):  # a lost wake-up fails the test, never hangs it
        actor = Recorder()
        ref, mailbox = open_mailbox("recorder", size=1)
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_actor, actor, ref, mailbox)
            async with anyio.create_task_group() as callers:
                callers.start_soon(ref.ask, "wait")
                await anyio.wait_all_tasks_blocked()
                callers.start_soon(ref.tell, "queued")
                await anyio.wait_all_tasks_blocked()
                scope = anyio.CancelScope()

                async def abandoning_caller() -> None:
                    with scope:
                        await ref.ask("abandoned")

                callers.start_soon(abandoning_caller)
                await anyio.wait_all_tasks_blocked()  # waiting for room behind "queued"
                scope.cancel()
                await anyio.wait_all_tasks_blocked()
                assert len(mailbox) == 1
                actor.gate.set()
            assert await ref.ask("next") == ("done", "next")
            assert actor.seen == ["wait", "queued", "next"]
            tg.cancel_scope.cancel()


async def test_an_ask_cancelled_while_handled_runs_to_the_end_and_the_actor_carries_on() -> None:
    with anyio.fail_after(5):  # a lost wake-up fails the test, never hangs it
        actor = Recorder()
        ref, mailbox = open_mailbox("recorder")
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_actor, actor, ref, mailbox)
            scope = anyio.CancelScope()

            async def cancelled_caller() -> None:
                with scope:
                    await ref.ask("wait")
                assert scope.cancelled_caught

            async with anyio.create_task_group() as callers:
                callers.start_soon(cancelled_caller)
                await anyio.wait_all_tasks_blocked()  # the actor is inside the handler
                scope.cancel()
                await anyio.wait_all_tasks_blocked()
                assert actor.seen == []  # still handling: the caller's cancellation does not reach it
                actor.gate.set()
            assert await ref.ask("next") == ("done", "next")
            assert actor.seen == ["wait", "next"]
            tg.cancel_scope.cancel()


async def test_an_ask_from_an_already_cancelled_caller_is_never_handled() -> None:
    with anyio.fail_after(5):  # a lost wake-up fails the test, never hangs it
        actor = Recorder()
        ref, mailbox = open_mailbox("recorder")
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_actor, actor, ref, mailbox)
            with anyio.CancelScope() as scope:
                scope.cancel()
                await ref.ask("never")  # queued without yielding, abandoned at the reply wait
            assert scope.cancelled_caught
            assert await ref.ask("next") == ("done", "next")
            assert actor.seen == ["next"]
            tg.cancel_scope.cancel()
