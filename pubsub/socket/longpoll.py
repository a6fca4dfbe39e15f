"""LongPoll: Phoenix's HTTP transport, at ``/socket/longpoll``, for clients whose websocket cannot get
through (a proxy, an antivirus, a hotel network): phoenix.js falls back to it with ``longPollFallbackMs``.

A session is the very consumer a websocket gets (``PhoenixSocket``: joins, channel classes, auth,
presence, recovery, limits), run over an in-process queue instead of daphne's websocket: a POST's
frames go into its queue, what it sends waits in the session's buffer for the next GET. The wire is
Phoenix's: the HTTP status is always 200 and the real one is the body's ``status`` (410: a new
session, its ``token`` in the body; 200: ``messages``; 204: nothing within the window; 403: refused);
a GET waits up to ``WINDOW`` seconds for a frame; a session no GET has asked for in
``EXPIRY`` windows ends, as its socket would close.

Any node serves any request of a session: the signed token names the session's node and channel,
and a node that does not hold the session passes the request to it over the backbone (a layer
message to the session's channel, the answer to a channel of the asking node), so a plain round-robin balancer works.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
import time
from urllib.parse import parse_qsl, urlencode

import orjson
from channels.layers import get_channel_layer
from django.core import signing

from pubsub.exceptions import TransportError

__all__ = ["LongPoll", "WINDOW", "MAX_LINES"]

logger = logging.getLogger("pubsub.socket.longpoll")

WINDOW = 10.0  # seconds a GET waits for a frame (Phoenix's window_ms)
EXPIRY = 1.5  # in windows: no GET for this long and the session ends (Phoenix: 1.5 x window_ms)
MAX_LINES = 100  # frames in one POST (phoenix.js sends at most 100)
MAX_BODY = 8 * 1024 * 1024
SALT = "dps.longpoll"
TOKEN_HEADER = b"x-phoenix-longpoll-token"
AUTH_HEADER = b"x-phoenix-authtoken"
BEARER = "base64url.bearer.phx."  # how phoenix.js carries authToken on a websocket (pubsub/socket/auth.py)
FORWARD_TIMEOUT = WINDOW + 5.0
HEADERS = [
    (b"content-type", b"application/json; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"access-control-allow-origin", b"*"),
]


class Session:
    """One long-poll client: its consumer, the frames waiting for a GET, when it was last polled."""

    def __init__(self, socket_app, scope: dict, token: str, channel: str, max_buffer: int):
        self.token = token
        self.channel = channel  # its layer channel: requests that reached another node come here
        self.max_buffer = max_buffer
        self.buffer: list[str] = []
        self.buffered = 0
        self.arrived = asyncio.Event()
        self.opened = asyncio.get_running_loop().create_future()
        self.closed = False
        self.polled_at = time.monotonic()
        self.relay: asyncio.Task | None = None  # its requests that reached other nodes (LongPoll._serve_remote)
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.inbox.put_nowait({"type": "websocket.connect"})
        self.task = asyncio.ensure_future(socket_app(scope, self.inbox.get, self._send))

    async def _send(self, message: dict) -> None:
        kind = message["type"]
        if kind == "websocket.accept" and not self.opened.done():
            self.opened.set_result(True)
        elif kind == "websocket.close":
            if not self.opened.done():
                self.opened.set_result(False)
            self.end()
        elif kind == "websocket.send" and message.get("text") is not None:  # (no server binary on LongPoll)
            self.buffer.append(message["text"])
            self.buffered += len(message["text"])
            if self.max_buffer and self.buffered > self.max_buffer:
                logger.info("long-poll session over %d unsent bytes: ended (a slow reader)", self.max_buffer)
                self.end()
        self.arrived.set()

    def post(self, frames: list[str | bytes]) -> None:
        for frame in frames:
            key = "bytes" if isinstance(frame, bytes) else "text"
            self.inbox.put_nowait({"type": "websocket.receive", key: frame})

    async def poll(self, window: float) -> list[str] | None:
        """The frames waiting, at once or as soon as one comes within window; None: none came."""
        self.polled_at = time.monotonic()
        if not self.buffer and not self.closed:
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), window)
            except TimeoutError:
                pass
        self.polled_at = time.monotonic()
        messages, self.buffer, self.buffered = self.buffer, [], 0
        return messages or None

    def end(self) -> None:
        if not self.closed:
            self.closed = True
            self.inbox.put_nowait({"type": "websocket.disconnect", "code": 1000})
            self.arrived.set()


class LongPoll:
    """The ASGI HTTP application at ``/socket/longpoll``; socket_app is the websocket's consumer."""

    def __init__(self, socket_app, max_buffer: int = 1024 * 1024, window: float = WINDOW, origin_allowed=None):
        self.socket_app = socket_app
        self.origin_allowed = origin_allowed or (lambda scope: True)
        self.max_buffer = max_buffer
        self.window = window
        self.expiry = EXPIRY * window
        self.sessions: dict[str, Session] = {}
        self._sweeper: asyncio.Task | None = None

    async def __call__(self, scope, receive, send) -> None:
        method = scope.get("method", "GET")
        if method == "OPTIONS":
            return await self._preflight(scope, send)
        if method not in ("GET", "POST"):
            return await _respond(send, None, status=400)
        layer = get_channel_layer()
        self._start_sweeping()
        # The header (phoenix.js 1.9), else the last token parameter (1.8 appends it after the user's params).
        tokens = [v for k, v in parse_qsl(scope.get("query_string", b"").decode("latin-1")) if k == "token"]
        token = _header(scope, TOKEN_HEADER) or (tokens[-1] if tokens else None)
        where = _unsign(token)
        if method == "POST":
            body = await _body(receive)
            if body is None:
                return await _respond(send, {"status": 413})
            frames = _frames(body, _header(scope, b"content-type") or "")
            if frames is None:
                return await _respond(send, {"status": 400})
            if where is None:
                return await _respond(send, {"status": 410})
            return await _respond(send, await self._request(layer, where, {"op": "send", "frames": frames}))
        if where is not None:
            answer = await self._request(layer, where, {"op": "poll"})
            if answer["status"] != 410:
                return await _respond(send, answer)
        return await _respond(send, await self._open(scope, layer))

    async def _open(self, scope: dict, layer) -> dict:
        """A new session on this node: its consumer connects as a websocket would (vsn, auth, origin)."""
        if not self.origin_allowed(scope):
            return {"status": 403}
        channel = await layer.new_channel("dps.lp.") if layer is not None else f"lp.{secrets.token_hex(8)}"
        token = signing.dumps({"c": channel}, salt=SALT, compress=True)
        session = Session(self.socket_app, _socket_scope(scope), token, channel, self.max_buffer)
        if not await session.opened:
            await session.task
            return {"status": 403}
        self.sessions[channel] = session
        if layer is not None:
            session.relay = asyncio.ensure_future(self._serve_remote(layer, session))
        return {"status": 410, "token": token, "messages": []}

    async def _request(self, layer, channel: str, request: dict) -> dict:
        """Serve a request of the session on channel, here or on the node holding it."""
        session = self.sessions.get(channel)
        if session is not None:
            return await self._serve(session, request)
        if layer is None or not hasattr(layer, "transport") or layer.node_of(channel) in (None, layer.node):
            return {"status": 410}  # gone (ended, or its node restarted)
        # The answer comes back to a channel of this node, through its stream like any send: a
        # waiting poll holds no Redis connection.
        reply_to = await layer.new_channel("dps.lpr.")
        try:
            await layer.send(channel, {"type": "lp.request", "reply_to": reply_to, **request})
            answer = await asyncio.wait_for(layer.receive(reply_to), FORWARD_TIMEOUT)
        except TransportError as exc:
            logger.warning("long-poll request for %s failed: %s", channel, exc)
            return {"status": 500}
        except TimeoutError:
            return {"status": 410}  # its node did not answer: gone (the client opens a new session)
        finally:
            layer.discard_channel(reply_to)
        return answer["answer"]

    async def _serve(self, session: Session, request: dict) -> dict:
        if session.closed:
            self._forget(session)
            return {"status": 410}
        if request["op"] == "send":
            session.post([_decoded(frame) for frame in request["frames"]])
            return {"status": 200}
        messages = await session.poll(self.window)
        if messages is None:
            return {"status": 410} if session.closed else {"status": 204, "token": session.token}
        return {"status": 200, "token": session.token, "messages": messages}

    async def _serve_remote(self, layer, session: Session) -> None:
        """Requests of this session that reached other nodes, from its layer channel."""
        while not session.closed:
            try:
                message = await layer.receive(session.channel)
            except Exception:  # the layer is closing
                return
            if message.get("type") != "lp.request":
                continue
            asyncio.ensure_future(self._answer_remote(layer, session, message))

    async def _answer_remote(self, layer, session: Session, message: dict) -> None:
        answer = await self._serve(session, message)
        try:
            await layer.send(message["reply_to"], {"type": "lp.answer", "answer": answer})
        except TransportError as exc:
            logger.warning("answering a forwarded long-poll request failed: %s", exc)

    def _start_sweeping(self) -> None:
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.ensure_future(self._sweep())

    async def _sweep(self) -> None:
        """End the sessions no GET has asked for in expiry seconds (their clients left)."""
        while self.sessions:
            await asyncio.sleep(min(5.0, self.expiry / 3))
            now = time.monotonic()
            for session in list(self.sessions.values()):
                if session.closed or now - session.polled_at > self.expiry:
                    session.end()
                    self._forget(session)

    def _forget(self, session: Session) -> None:
        """An ended session: its entry, its relay of forwarded requests and its layer channel go."""
        if self.sessions.pop(session.channel, None) is None:
            return
        if session.relay is not None:
            session.relay.cancel()
        layer = get_channel_layer()
        if layer is not None and hasattr(layer, "discard_channel"):
            layer.discard_channel(session.channel)

    async def _preflight(self, scope, send) -> None:
        asked = _header(scope, b"access-control-request-headers") or ""
        headers = [
            (b"access-control-allow-origin", b"*"),
            (b"access-control-allow-headers", asked.encode("latin-1")),
            (b"access-control-allow-methods", b"get, post, options"),
            (b"access-control-max-age", b"3600"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b""})


def _socket_scope(scope: dict) -> dict:
    """The websocket scope the session's consumer sees: the request's, less the long-poll token,
    with phoenix.js's authToken header as the bearer subprotocol a websocket would carry."""
    pairs = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    query = [(k, v) for k, v in pairs if k != "token" or (v and not _unsign(v))]  # a user's own token stays
    subprotocols = []
    auth = _header(scope, AUTH_HEADER)
    if auth:
        subprotocols = ["phoenix", BEARER + base64.urlsafe_b64encode(auth.encode()).decode().rstrip("=")]
    return {
        **scope,
        "type": "websocket",
        "scheme": "ws",
        "query_string": urlencode(query).encode("latin-1"),
        "subprotocols": subprotocols,
        "dps.transport": "longpoll",
    }


def _unsign(token: str | None) -> str | None:
    if not token:
        return None
    try:
        return signing.loads(token, salt=SALT)["c"]
    except (signing.BadSignature, KeyError, TypeError):
        return None


def _header(scope: dict, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


async def _body(receive) -> bytes | None:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks)
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if size > MAX_BODY:
            return None
        if not message.get("more_body"):
            return b"".join(chunks)


def _frames(body: bytes, content_type: str) -> list[str] | None:
    """ndjson (what phoenix.js sends): one frame a line, text if it starts with ``[``, else base64
    binary (kept as "b:..." text so it can travel to another node); any other body is one text
    frame (a V1 client's object). None: over MAX_LINES lines."""
    text = body.decode("utf-8", "replace")
    if not content_type.startswith("application/x-ndjson"):
        return [text] if text else []
    lines = [line for line in text.split("\n") if line.strip()]
    if len(lines) > MAX_LINES:
        return None
    return [line if line.startswith("[") else "b:" + line for line in lines]


def _decoded(frame: str) -> str | bytes:
    if frame.startswith("b:"):
        try:
            return base64.b64decode(frame[2:])
        except ValueError:
            return b"\xff"  # a malformed binary frame: the consumer closes the session with 4007
    return frame


async def _respond(send, body: dict | None, status: int = 200) -> None:
    await send({"type": "http.response.start", "status": status, "headers": HEADERS if body is not None else []})
    await send({"type": "http.response.body", "body": orjson.dumps(body) if body is not None else b""})
