"""Where a local migration call (prepare, complete) learns its answer."""

from __future__ import annotations

import anyio

from ..protocol import Call, CompleteCaller, Outcome

__all__ = ["CallResult"]


class CallResult:
    """Settled once, by the migration driver, with the machine's answer or an error."""

    def __init__(self) -> None:
        self._done = anyio.Event()
        self.answer: CompleteCaller | None = None
        self.error: BaseException | None = None

    @classmethod
    def nothing_to_cancel(cls) -> CallResult:
        """Cancelling what the source already cancelled (or what expired): nothing to undo."""
        result = cls()
        result.settle(CompleteCaller(Call.COMPLETE, Outcome.CANCELLED))
        return result

    def settle(self, answer: CompleteCaller | None = None, error: BaseException | None = None) -> None:
        if not self._done.is_set():
            self.answer, self.error = answer, error
            self._done.set()

    async def wait(self) -> CompleteCaller:
        await self._done.wait()
        if self.error is not None:
            raise self.error
        assert self.answer is not None
        if self.answer.error is not None:
            raise self.answer.error
        return self.answer
