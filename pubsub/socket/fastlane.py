"""Writing a pre-encoded frame to a local socket without a task or a layer round trip per subscriber.

Phoenix calls this fastlaning: a broadcast is encoded once, then written
straight to every local subscriber's socket. In Channels, each delivery would
otherwise wake the consumer's receive task, run its dispatch loop, and create a
new receive task (the 210-340 µs of daphne CPU per delivery measured with stock
Channels). The node reader instead calls a consumer's fastlane, which writes
through the ASGI ``send`` right away.

On daphne, ``frame_writer`` goes one step further for an open, uncompressed,
plain-TCP websocket: it builds the text frame itself and hands it to the
socket when Twisted holds nothing unsent for it. Through daphne's ``send`` each
frame costs autobahn's sendMessage, then Twisted's write registers the socket
for writability (an epoll_ctl), writes it on the loop's next turn and
unregisters it (another epoll_ctl): with one broadcast per loop turn (a node
reading its stream one entry at a time) that was about half of a node's CPU.
Anything else (bytes already queued in Twisted, a closing socket, TLS,
compression, a frame autobahn would fragment) takes daphne's own path, so the
order of a socket's frames and Twisted's buffer (the slow-reader meter,
pubsub/socket/backpressure.py) stay as they were.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

try:  # daphne's websocket protocol raises this for a send on a connection that just closed
    from autobahn.exception import Disconnected
except ImportError:  # pragma: no cover - another ASGI server

    class Disconnected(Exception):
        pass


__all__ = ["Disconnected", "send_nowait", "frame_writer"]

_OPEN = 3  # autobahn's WebSocketProtocol.STATE_OPEN
_EWOULDBLOCK = (BlockingIOError, InterruptedError)


def frame_writer(send: Callable[[dict], Awaitable[None]]) -> Callable[[str], bool]:
    """A function that writes one text frame to the socket behind an ASGI send, in the caller's turn.

    Like ``send_nowait(send, {"type": "websocket.send", "text": text})``, and on daphne
    (a plain TCP websocket without compression) much cheaper: see the module's docstring.
    It returns True when bytes of the socket are left in Twisted's buffer (the kernel did not
    take them all: the slow-reader guard looks at such a socket), and raises what daphne's
    send raises (autobahn's Disconnected on a socket that has closed).
    """
    protocol = _direct_protocol(send)
    if protocol is None:

        def send_text(text: str) -> bool:
            send_nowait(send, {"type": "websocket.send", "text": text})
            return False

        return send_text
    transport = protocol.transport
    limit = min(protocol.autoFragmentSize or 1 << 62, protocol.maxMessagePayloadSize or 1 << 62)

    def write(text: str) -> bool:
        payload = text.encode()
        size = len(payload)
        if (
            protocol.state != _OPEN
            or size > limit
            or transport.disconnecting
            or not transport.connected
            or transport._writeDisconnected
            or protocol.send_queue
            or protocol._perMessageCompress is not None
        ):
            send_nowait(send, {"type": "websocket.send", "text": text})
            return bool(transport.dataBuffer or transport._tempDataLen)
        if size < 126:
            frame = bytes((0x81, size)) + payload
        elif size < 65536:
            frame = b"\x81\x7e" + size.to_bytes(2, "big") + payload
        else:
            frame = b"\x81\x7f" + size.to_bytes(8, "big") + payload
        if transport.dataBuffer or transport._tempDataLen:
            transport.write(frame)  # behind what Twisted is writing already: it keeps the order
            return True
        try:
            sent = transport.socket.send(frame)
        except _EWOULDBLOCK:
            sent = 0
        except OSError:
            sent = 0  # Twisted's own write will meet the error and close the connection its way
        if sent < len(frame):
            transport.write(frame[sent:])
            return True
        return False

    return write


def _direct_protocol(send):
    """daphne's autobahn protocol behind send when its frames can be written directly, else None."""
    args = getattr(send, "args", ())
    protocol = args[0] if args else None
    transport = getattr(protocol, "transport", None)
    needed = ("socket", "dataBuffer", "_tempDataLen", "connected", "disconnecting", "_writeDisconnected", "write")
    if transport is None or getattr(transport, "TLS", True) or not all(hasattr(transport, a) for a in needed):
        return None
    if getattr(protocol, "logOctets", True) or getattr(protocol, "logFrames", True):
        return None  # autobahn logs what it sends: let it
    if not all(hasattr(protocol, a) for a in ("state", "send_queue", "_perMessageCompress", "autoFragmentSize")):
        return None
    if not hasattr(protocol, "maxMessagePayloadSize"):
        return None
    return protocol


def send_nowait(send: Callable[[dict], Awaitable[None]], message: dict) -> None:
    """Run ``send(message)`` now, in the caller's turn of the event loop.

    daphne's send never suspends (it hands the bytes to Twisted), so it finishes
    here; a server whose send does suspend gets the rest finished by a task.
    """
    coroutine = send(message)
    try:
        suspended_on = coroutine.send(None)
    except StopIteration:
        return
    asyncio.ensure_future(_finish(coroutine, suspended_on))


async def _finish(coroutine: Coroutine, suspended_on: Any) -> None:
    await _Resume(coroutine, suspended_on)


class _Resume:
    """Awaitable that carries on a coroutine which already ran up to its first suspension."""

    def __init__(self, coroutine: Coroutine, suspended_on: Any):
        self.coroutine, self.suspended_on = coroutine, suspended_on

    def __await__(self):
        value = self.suspended_on
        while True:
            try:
                sent = yield value
            except BaseException as exc:  # cancellation and errors go to the coroutine
                try:
                    value = self.coroutine.throw(exc)
                except StopIteration as stop:
                    return stop.value
                continue
            try:
                value = self.coroutine.send(sent)
            except StopIteration as stop:
                return stop.value
