"""The unmodified phoenix JavaScript client against a real DPS daphne process."""

import pytest

from tests import phoenix_js

pytestmark = [pytest.mark.processes, pytest.mark.node]

MESSAGES = 5


@pytest.fixture(scope="session")
def phoenix_modules():
    return phoenix_js.install()


@pytest.fixture
async def sessions():
    started = []

    async def start(*args):
        session = await phoenix_js.PhoenixSession.start(*args)
        started.append(session)
        return session

    yield start
    for session in started:
        session.kill()


def mount(node):
    return f"ws://127.0.0.1:{node.port}/socket"


async def test_join_publish_receive_heartbeat_leave(daphne_node, phoenix_modules, sessions):
    subscriber = await sessions(phoenix_modules, mount(daphne_node), "room:js", "subscriber", MESSAGES)
    await subscriber.wait_for("joined")
    publisher = await sessions(phoenix_modules, mount(daphne_node), "room:js", "publisher", MESSAGES)
    for session in (publisher, subscriber):
        events = await session.finish()
        assert [e["n"] for e in events if e["event"] == "received"] == list(range(MESSAGES))
        heartbeats = next(e for e in events if e["event"] == "heartbeats")
        assert heartbeats["sent"] >= 3 and heartbeats["connected"], heartbeats
        assert {"event": "left"} in events
        assert not [e for e in events if e["event"] == "socket_error"], events
    assert sorted(e["n"] for e in publisher.events if e["event"] == "published") == list(range(MESSAGES))
