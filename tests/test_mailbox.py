"""The per-channel mailbox: bounded, one wake-up per message, nothing left behind by a cancelled receive."""

import asyncio

from pubsub.node.mailbox import Mailbox


async def test_put_get_in_order_and_bounded():
    mailbox = Mailbox(capacity=2)
    assert mailbox.put(1) and mailbox.put(2)
    assert not mailbox.put(3), "a full mailbox refuses"
    assert [await mailbox.get(), await mailbox.get()] == [1, 2]


async def test_a_cancelled_receive_leaves_no_waiter():
    mailbox = Mailbox(capacity=10)
    receiving = asyncio.ensure_future(mailbox.get())
    await asyncio.sleep(0)
    assert len(mailbox.waiters) == 1
    receiving.cancel()
    await asyncio.gather(receiving, return_exceptions=True)
    assert not mailbox.waiters, "the idle-channel sweeper must see nobody receiving"


async def test_a_waiting_receiver_gets_the_next_message():
    mailbox = Mailbox(capacity=10)
    receiving = asyncio.ensure_future(mailbox.get())
    await asyncio.sleep(0)
    mailbox.put("hello")
    assert await asyncio.wait_for(receiving, 1) == "hello"
