"""Stopping background tasks for sure.

redis-py 8.1 on Python 3.11 can swallow a task's cancellation when it arrives
while a command runs under the client's socket timeout (measured here: a ping
cancelled within ~1 ms completes and the task carries on; same family as
redis-py#2551 and #2028). A loop cancelled once may therefore keep looping, so
cancellation is repeated until the task has really ended, and every background loop
calls ``raise_if_cancelling()`` each turn: a loop whose cancellation was swallowed ends at
its next turn (asyncio.run and async_to_sync cancel a loop's tasks only once, then wait).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

__all__ = ["stop_tasks", "raise_if_cancelling"]

logger = logging.getLogger(__name__)


def raise_if_cancelling() -> None:
    """End the current task if it was asked to stop (a library may have swallowed the CancelledError)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError()


async def stop_tasks(tasks: Iterable[asyncio.Task], interval: float = 0.5, tries: int = 20) -> None:
    """Cancel tasks and wait for all of them to end, cancelling again those that carry on."""
    pending = [task for task in tasks if not task.done()]
    for _ in range(tries):
        if not pending:
            break
        for task in pending:
            task.cancel()
        done, still = await asyncio.wait(pending, timeout=interval)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                logger.error("task %s ended with %r", task.get_name(), task.exception())
        pending = list(still)
    if pending:
        logger.error("tasks still running after repeated cancellation: %s", [t.get_name() for t in pending])
