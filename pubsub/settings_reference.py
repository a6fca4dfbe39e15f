"""DPS's settings: one table of every ``DPS_*`` name, with its default, type and meaning.

``SETTINGS`` is that table, and the only place a default is written down. It holds two kinds:

- ``DPS``: DPS's own Django settings, read through :func:`setting`. A project that adds DPS sets
  only what it changes; ``DEFAULTS`` is these settings' defaults. ``dps_site`` reads each from the
  environment variable of the same name.
- ``SITE``: what ``dps_site/settings.py`` reads from the environment and hands on, to the channel
  layer's ``CONFIG``, to Django's own settings, or to the management commands. Another project
  sets the thing it feeds directly.

``LAYER_OPTIONS`` describes the channel layer's options, ``CHANNEL_LAYERS["default"]["CONFIG"]``:
the keyword parameters of ``pubsub.layer.TopicRingLayer.__init__``, whose signature holds their
defaults. The configuration page of the docs is rendered from both tables
(``docs/hooks/settings_reference.py``), and ``tests/test_settings_reference.py`` checks that they
name every ``DPS_*`` setting and layer option the code uses, and nothing else.

Importing this module needs nothing of Django or DPS.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["DPS", "SITE", "Setting", "SETTINGS", "LayerOption", "LAYER_OPTIONS", "DEVELOPMENT_SECRET_KEY"]

DPS = "dps"  # a DPS setting: a Django setting with its default in DEFAULTS
SITE = "site"  # read from the environment by dps_site/settings.py


@dataclass(frozen=True)
class Setting:
    name: str
    kind: str  # DPS or SITE
    default: Any  # DPS: the Django setting's default; SITE: what dps_site uses when the variable is unset
    type: str
    meaning: str  # one line
    env: bool = True  # dps_site reads the environment variable of this name (False: it derives the setting)
    shown_default: str = ""  # the default in words, where the value alone would not say it
    site_default: str = ""  # DPS: dps_site's default, where it differs from the Django setting's
    feeds: str = ""  # SITE: what it sets (a layer option, a Django setting)
    layer_option: str = ""  # the TopicRingLayer parameter it sets, if any (its default must agree)


DEVELOPMENT_SECRET_KEY = "dps-insecure-development-key-set-DPS_SECRET_KEY-in-production"

SETTINGS: tuple[Setting, ...] = (
    # DPS's own Django settings (pubsub reads them with setting()).
    Setting(
        "DPS_CHANNELS",
        DPS,
        [("*", "pubsub.channels.PublishChannel")],
        "list of (pattern, dotted class) pairs; env: comma-separated `pattern=dotted.Class`",
        "channel classes by topic: the first matching pattern wins; a pattern is a topic or a prefix ending in `*`",
        site_default="`chat:*=dps_chat.channels.ChatRoom,*=pubsub.channels.PublishChannel`",
    ),
    Setting(
        "DPS_MAX_FRAME_BYTES", DPS, 65536, "int", "largest client frame in bytes; a larger one closes the socket (4009)"
    ),
    Setting(
        "DPS_MAX_CHANNELS",
        DPS,
        100,
        "int",
        "topics one socket may join, as Phoenix; one more gets the error reply `too many channels joined`",
    ),
    Setting(
        "DPS_IDLE_TIMEOUT",
        DPS,
        60.0,
        "float, seconds",
        "time without a client frame before the socket is closed (4001); phoenix.js sends a heartbeat every 30 s",
    ),
    Setting(
        "DPS_JOIN_AUTHORIZER",
        DPS,
        "pubsub.authorization.allow_all",
        "dotted path",
        "the hook `(scope, topic, params)`, plain or async, that allows or refuses each join",
    ),
    Setting(
        "DPS_MAX_CONNECTIONS",
        DPS,
        20_000,
        "int",
        "open websockets per node; past it a new one is refused before the upgrade (HTTP 403); `0`: no limit",
    ),
    Setting(
        "DPS_PUBLISH_RATE",
        DPS,
        50.0,
        "float, events/s",
        "client events (publishes and your channels' events) per second per socket, sustained; "
        "over it: error reply `rate limited`; `0`: no limit",
    ),
    Setting(
        "DPS_PUBLISH_BURST", DPS, 200, "int", "client events a socket may send at once on top of `DPS_PUBLISH_RATE`"
    ),
    Setting(
        "DPS_MAX_SEND_BUFFER",
        DPS,
        1024 * 1024,
        "int, bytes",
        "unsent bytes a socket may hold while it does not read before it is closed (4008); `0`: no limit",
    ),
    Setting(
        "DPS_RECOVERY_LIMIT",
        DPS,
        300,
        "int",
        "missed messages a rejoining socket may recover; more is answered `recovered: false`",
    ),
    Setting(
        "DPS_SOCKET_AUTH",
        DPS,
        "optional",
        "`optional`, `required` or a dotted path",
        "who may connect: anyone (a bad token is refused), only a valid token or session, "
        "or your hook `(scope, params)`",
    ),
    Setting("DPS_TOKEN_MAX_AGE", DPS, 86400.0, "float, seconds", "how long a socket token stays valid"),
    Setting(
        "DPS_ALLOWED_ORIGINS",
        DPS,
        None,
        "list of origins or hosts; env: comma-separated",
        "pages that may open a socket: an origin, or a host (any port and scheme; `.example.com`: its "
        "subdomains too); a client that sends no Origin is let through",
        shown_default="`None`: the hosts of `ALLOWED_HOSTS`",
        site_default="`DPS_ALLOWED_HOSTS`",
    ),
    Setting(
        "DPS_API_KEY",
        DPS,
        "",
        "str",
        "the key of the HTTP API (`/api/publish`, `/api/broadcast`, `/api/presence`, `/api/presence_stats`); "
        "empty: no API (404)",
    ),
    Setting(
        "DPS_USING_DEVELOPMENT_KEY",
        DPS,
        False,
        "bool",
        "true while `SECRET_KEY` is the development key from the source: every process warns at start and "
        "the admin page shows it; dps_site sets it from `DPS_SECRET_KEY`",
        env=False,
    ),
    # What dps_site/settings.py reads from the environment and hands on.
    Setting(
        "DPS_NODE",
        SITE,
        "ws-1",
        "name",
        "this websocket node's name: 1-64 letters, digits, `-` or `_`, unique in the cluster",
        feeds="layer `node`",
        layer_option="node",
    ),
    Setting(
        "DPS_TOPIC_SERVERS",
        SITE,
        "ts-1",
        "comma-separated names",
        "the ring with `DPS_RING=static` and in the embedded mode; on the live ring, "
        "the nodes' ring until a topic server has registered",
        feeds="layer `topic_servers`",
        layer_option="topic_servers",
    ),
    Setting(
        "DPS_REDIS_URL",
        SITE,
        None,
        "Redis URL",
        "unset: embedded, one process over an in-memory transport; set: a cluster over Redis (>= 6.2), "
        "`redis://`, `rediss://`, `unix://`, or a Redis Cluster, `redis+cluster://` or "
        "`rediss+cluster://[user:password@]host:port[,host:port...]`; a malformed URL stops every process at start",
        shown_default="unset",
        feeds="layer `redis_url`",
        layer_option="redis_url",
    ),
    Setting(
        "DPS_REDIS_WAIT_REPLICAS",
        SITE,
        0,
        "int",
        "replicas that must have an append before the publisher gets `ok` (Redis `WAIT`); "
        "one Redis with replicas only (refused with a Redis Cluster)",
        feeds="layer `redis_wait_replicas`",
        layer_option="redis_wait_replicas",
    ),
    Setting(
        "DPS_REDIS_WAIT_TIMEOUT",
        SITE,
        1.0,
        "float, seconds",
        "how long to wait for those replicas; fewer in time: error reply `unavailable` "
        "(the message may still be delivered)",
        feeds="layer `redis_wait_timeout`",
        layer_option="redis_wait_timeout",
    ),
    Setting(
        "DPS_CHANNEL_CAPACITY",
        SITE,
        1000,
        "int",
        "messages queued per channel before new ones are dropped (and counted)",
        feeds="layer `capacity`",
        layer_option="capacity",
    ),
    Setting(
        "DPS_STREAM_MAXLEN",
        SITE,
        100_000,
        "int",
        "the bound of every stream (`MAXLEN ~`)",
        feeds="layer `stream_maxlen`",
        layer_option="stream_maxlen",
    ),
    Setting(
        "DPS_LIVENESS_TTL",
        SITE,
        5.0,
        "float, seconds",
        "time without a heartbeat before a node or topic server counts as dead",
        feeds="layer `liveness_ttl`",
        layer_option="liveness_ttl",
    ),
    Setting(
        "DPS_PRESENCE_WINDOW",
        SITE,
        0.1,
        "float, seconds",
        "time over which a topic's presence changes are gathered into one `presence_diff`",
        feeds="layer `presence_window`",
        layer_option="presence_window",
    ),
    Setting(
        "DPS_HISTORY_SIZE",
        SITE,
        100,
        "int",
        "messages kept per topic for recovery; `0`: no history",
        feeds="layer `history_size`",
        layer_option="history_size",
    ),
    Setting(
        "DPS_HISTORY_TTL",
        SITE,
        300.0,
        "float, seconds",
        "how long a topic's history lives after its last message",
        feeds="layer `history_ttl`",
        layer_option="history_ttl",
    ),
    Setting(
        "DPS_RING",
        SITE,
        "live",
        "`live` or `static`",
        "`live`: the ring is the running topic servers, with failover; `static`: it is `DPS_TOPIC_SERVERS`; "
        "the same on every process",
        feeds="`DPS_LIVE_RING`",
    ),
    Setting(
        "DPS_LIVE_RING",
        SITE,
        True,
        "bool",
        "`DPS_RING` is `live`",
        env=False,
        feeds="layer `live_ring`",
        layer_option="live_ring",
    ),
    Setting(
        "DPS_SECRET_KEY",
        SITE,
        DEVELOPMENT_SECRET_KEY,
        "str",
        "signs tokens and sessions; set it, the same on every process, in production",
        shown_default="a development key (every process warns about it)",
        feeds="Django's `SECRET_KEY`",
    ),
    Setting(
        "DPS_DEBUG",
        SITE,
        "",
        "`1` or unset",
        "`1` turns Django's debug mode on",
        shown_default="unset",
        feeds="Django's `DEBUG`",
    ),
    Setting(
        "DPS_ALLOWED_HOSTS",
        SITE,
        "127.0.0.1,localhost,[::1]",
        "comma-separated hosts",
        "the host names this site answers to",
        feeds="Django's `ALLOWED_HOSTS`",
    ),
    Setting(
        "DPS_LOG_LEVEL",
        SITE,
        "INFO",
        "a logging level",
        "how much the `pubsub` and `topicserver` loggers say",
        feeds="`LOGGING`",
    ),
    Setting(
        "DPS_SQLITE_PATH",
        SITE,
        None,
        "a file path",
        "the SQLite database (users, sessions, the admin)",
        shown_default="`db.sqlite3` beside `manage.py`",
        feeds="`DATABASES['default']['NAME']`",
    ),
)


@dataclass(frozen=True)
class LayerOption:
    type: str
    meaning: str  # one line
    env: str = ""  # the DPS_* variable dps_site sets it from, if any


# The keyword parameters of TopicRingLayer.__init__ (their defaults are in its signature).
LAYER_OPTIONS: dict[str, LayerOption] = {
    "node": LayerOption("str", "this node's name; every channel name carries it", "DPS_NODE"),
    "topic_servers": LayerOption(
        "iterable of names",
        "the ring when it is static (and in the embedded mode); on the live ring, the ring until a topic "
        "server has registered",
        "DPS_TOPIC_SERVERS",
    ),
    "redis_url": LayerOption(
        "str or None",
        "`None`: embedded, node and topic servers in this process over memory; a URL: a cluster over Redis",
        "DPS_REDIS_URL",
    ),
    "transport": LayerOption("a Transport or None", "a transport to use instead of one made from `redis_url` (tests)"),
    "capacity": LayerOption(
        "int", "messages a channel holds before new ones are dropped (and counted)", "DPS_CHANNEL_CAPACITY"
    ),
    "expiry": LayerOption(
        "int, seconds", "a channel nobody has received on for this long is forgotten, with its groups"
    ),
    "channel_capacity": LayerOption(
        "dict or None", "capacities by channel name, `{glob or regex: capacity}`, as in Channels' own layers"
    ),
    "stream_maxlen": LayerOption("int", "the bound of every stream (`MAXLEN ~`)", "DPS_STREAM_MAXLEN"),
    "redis_wait_replicas": LayerOption(
        "int", "replicas that must have an append before it is acknowledged (Redis `WAIT`)", "DPS_REDIS_WAIT_REPLICAS"
    ),
    "redis_wait_timeout": LayerOption("float, seconds", "how long `WAIT` waits for them", "DPS_REDIS_WAIT_TIMEOUT"),
    "liveness_ttl": LayerOption(
        "float, seconds", "time without a heartbeat before a process counts as dead", "DPS_LIVENESS_TTL"
    ),
    "presence_window": LayerOption(
        "float, seconds", "what topic servers gather a topic's presence changes over", "DPS_PRESENCE_WINDOW"
    ),
    "history_size": LayerOption(
        "int", "messages topic servers keep per topic for recovery (`0`: none)", "DPS_HISTORY_SIZE"
    ),
    "history_ttl": LayerOption(
        "float, seconds", "how long a topic's history lives after its last message", "DPS_HISTORY_TTL"
    ),
    "live_ring": LayerOption(
        "bool",
        "`True`: the ring follows the running topic servers, with failover; `False`: `topic_servers`, fixed",
        "DPS_RING",
    ),
    "drain_on_sigterm": LayerOption(
        "bool",
        "on SIGTERM, close the sockets in batches, leave every topic, then let the process stop "
        "(`pubsub.asgi` turns it on in a websocket node)",
    ),
}
