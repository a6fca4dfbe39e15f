"""Who does what in a dpsverify run, decided before any socket opens. No I/O.

Subscribers: subscriber i joins topic i mod T, on URL (i mod T + i div T) mod U, so every topic
has subscribers on every URL once it has U of them, and the URLs get about as many each.

Publishers: one socket may publish at most ``socket_rate`` a second (keep it under the server's
per-socket limit, DPS_PUBLISH_RATE, 50/s by default) and join at most ``MAX_TOPICS_PER_SOCKET``
topics (DPS_MAX_CHANNELS). Id k goes to topic k mod T. The topics fall into chunks of at most
that many (topic t in chunk t mod C); a chunk's publishes go round robin over its sockets, as
many as its share of the rate needs, and at least one socket per URL in all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["MAX_TOPICS_PER_SOCKET", "VSN", "Plan", "PublisherPlan", "socket_url", "make_plan"]

MAX_TOPICS_PER_SOCKET = 100  # DPS_MAX_CHANNELS' default, as Phoenix
VSN = "2.0.0"


def socket_url(url: str) -> str:
    """The websocket address of a Phoenix socket endpoint, as phoenix.js makes it:
    ``ws://host:4000/socket`` -> ``ws://host:4000/socket/websocket?vsn=2.0.0``; an address that
    already ends in ``/websocket`` keeps its path. ValueError, saying what to give, otherwise."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is no number
    except ValueError as exc:
        raise ValueError(f"{url!r} is not a usable URL ({exc}); e.g. ws://127.0.0.1:4000/socket") from None
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"{url!r} is not a websocket URL; give ws://HOST:PORT/socket (or wss://)")
    path = parts.path.rstrip("/")
    if not path.endswith("/websocket"):
        path += "/websocket"
    query = [(key, value) for key, value in parse_qsl(parts.query) if key != "vsn"] + [("vsn", VSN)]
    return urlunsplit((parts.scheme, parts.netloc, path, urlencode(query), ""))


@dataclass(frozen=True)
class PublisherPlan:
    url: int  # index into the URLs
    topics: tuple[int, ...]  # indexes of the topics it joins


@dataclass(frozen=True)
class Plan:
    topics: int
    urls: int
    subscribers: tuple[tuple[int, int], ...]  # (topic, url) per subscriber
    publishers: tuple[PublisherPlan, ...]
    chunks: int
    chunk_start: tuple[int, ...]  # the index of each chunk's first publisher
    chunk_sockets: tuple[int, ...]

    def route(self, k: int) -> tuple[int, int]:
        """(topic, publisher) of id k."""
        topic = k % self.topics
        chunk = topic % self.chunks
        size = len(range(chunk, self.topics, self.chunks))
        local = (k // self.topics) * size + topic // self.chunks  # ids of this chunk before k
        return topic, self.chunk_start[chunk] + local % self.chunk_sockets[chunk]

    def socket_rate(self, rate: float) -> float:
        """The highest rate any publisher socket publishes at, for a total rate."""
        return max(
            rate * len(range(chunk, self.topics, self.chunks)) / self.topics / self.chunk_sockets[chunk]
            for chunk in range(self.chunks)
        )


def make_plan(topics: int, subscribers: int, urls: int, rate: float, socket_rate: float) -> Plan:
    if topics < 1 or urls < 1 or subscribers < topics or rate <= 0 or socket_rate <= 0:
        raise ValueError("need topics >= 1, urls >= 1, subscribers >= topics, rate > 0 and socket_rate > 0")
    chunks = math.ceil(topics / MAX_TOPICS_PER_SOCKET)
    sockets = [
        max(math.ceil(rate * len(range(chunk, topics, chunks)) / topics / socket_rate), math.ceil(urls / chunks))
        for chunk in range(chunks)
    ]
    publishers, starts = [], []
    for chunk, count in enumerate(sockets):
        starts.append(len(publishers))
        for _ in range(count):
            publishers.append(PublisherPlan(len(publishers) % urls, tuple(range(chunk, topics, chunks))))
    placed = tuple((i % topics, (i % topics + i // topics) % urls) for i in range(subscribers))
    return Plan(topics, urls, placed, tuple(publishers), chunks, tuple(starts), tuple(sockets))
