"""
Waiting: for a result many may wait for (a job's start, a job's end), and
for anything with a deadline.

Each waiter gets a Deferred of its own, so one that is cancelled (its client
went away) affects no other.
"""

from __future__ import annotations

from typing import Generic, TypeVar, cast

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IReactorTime

T = TypeVar("T")


class Observer(Generic[T]):
    """
    A result that many may wait for. Each waiter gets its own Deferred, so
    one that is cancelled (its client went away) affects no other.
    """

    def __init__(self) -> None:
        self._result: T | None = None
        self._fired = False
        self._waiters: list[Deferred[T]] = []

    def fire(self, result: T) -> None:
        """Fire once; later calls are ignored."""
        if self._fired:
            return
        self._fired, self._result = True, result
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(result)

    def when_fired(self) -> Deferred[T]:
        if self._fired:
            return succeed(cast(T, self._result))

        def forget(d: Deferred[T]) -> None:
            self._waiters.remove(d)

        waiter: Deferred[T] = Deferred(forget)
        self._waiters.append(waiter)
        return waiter


async def with_deadline(
    waiting: Deferred[None], seconds: float, clock: IReactorTime
) -> None:
    """
    Wait for ``waiting`` at most ``seconds``; a timeout is not an error. A
    cancel from outside (the reader went away) still raises ``CancelledError``:
    there is then nobody to answer.
    """
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        waiting.cancel()

    deadline = clock.callLater(seconds, expire)
    try:
        await waiting
    except CancelledError:
        if not expired:
            raise
    finally:
        if deadline.active():
            deadline.cancel()
