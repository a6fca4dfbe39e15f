"""stop_tasks ends loops even when a library swallowed their first cancellation."""

import asyncio

from pubsub.core.tasks import stop_tasks


async def test_a_loop_that_swallows_one_cancellation_is_still_stopped():
    swallowed = []

    async def stubborn_loop():
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                if not swallowed:  # what redis-py 8.1 does on Python 3.11, once in a while
                    swallowed.append(True)
                    asyncio.current_task().uncancel()
                    continue
                raise

    task = asyncio.create_task(stubborn_loop())
    await asyncio.sleep(0)
    await asyncio.wait_for(stop_tasks([task], interval=0.05), 5)
    assert task.cancelled() and swallowed


async def test_nothing_to_stop():
    await stop_tasks([])
