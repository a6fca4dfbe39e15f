"""send_nowait: an ASGI send run in the caller's turn, finished by a task only if it suspends."""

import asyncio

from pubsub.socket.fastlane import send_nowait


async def test_a_send_that_never_suspends_completes_at_once():
    sent = []

    async def send(message):
        sent.append(message)

    send_nowait(send, {"type": "websocket.send", "text": "x"})
    assert sent == [{"type": "websocket.send", "text": "x"}]  # no await in between


async def test_a_send_that_suspends_is_finished_by_a_task():
    sent = []
    gate = asyncio.Event()

    async def send(message):
        sent.append(("started", message["text"]))
        await gate.wait()
        sent.append(("finished", message["text"]))

    send_nowait(send, {"type": "websocket.send", "text": "y"})
    assert sent == [("started", "y")]
    gate.set()
    for _ in range(10):
        await asyncio.sleep(0)
    assert sent == [("started", "y"), ("finished", "y")]
