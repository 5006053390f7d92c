"""`Startable`: the `with` and `async with` forms of something started and stopped by blocking calls.

The local servers (`servers.BackgroundServer`, `mail.inbox.Inbox`) each run on a thread of their own and
are started and stopped from outside it. Both are used in a `with` block (the demo, synchronous tests)
and in an `async with` block (asynchronous tests); there `start` and `stop` run in a worker thread,
because they wait for the server's thread, and waiting on the event loop's thread would stall the loop.
"""

from __future__ import annotations

import abc
import asyncio
from types import TracebackType
from typing import Self


class Startable(abc.ABC):
    """`with thing:` or `async with thing:` starts it on entry and stops it on exit, errors or not."""

    @abc.abstractmethod
    def start(self) -> None:
        """Start, and return once running; raise if it cannot be started."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop, and return once stopped; nothing happens when it is not running."""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.stop)
