"""DPS's own settings and their defaults: a project that adds DPS sets only what it changes.

The channel layer's options (node name, topic servers, Redis URL, ...) are not here: they
are ``CHANNEL_LAYERS["default"]["CONFIG"]``, the layer's constructor arguments.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

from django.conf import settings

from pubsub.exceptions import ConfigurationError

__all__ = ["DEFAULTS", "setting", "allowed_origins", "check_redis_url"]

DEFAULTS: dict[str, Any] = {
    "DPS_CHANNELS": [("*", "pubsub.channels.PublishChannel")],  # (topic pattern, channel class), first match
    "DPS_MAX_FRAME_BYTES": 65536,
    "DPS_MAX_CHANNELS": 100,  # topics joined per socket, as Phoenix
    "DPS_IDLE_TIMEOUT": 60.0,  # seconds without a frame (phoenix.js sends a heartbeat every 30 s)
    "DPS_JOIN_AUTHORIZER": "pubsub.authorization.allow_all",
    "DPS_MAX_CONNECTIONS": 20_000,  # open sockets per node
    "DPS_PUBLISH_RATE": 50.0,  # client events per second per socket, sustained
    "DPS_PUBLISH_BURST": 200,
    "DPS_MAX_SEND_BUFFER": 1024 * 1024,  # unsent bytes per socket before a slow reader is cut off
    "DPS_RECOVERY_LIMIT": 300,  # missed messages a rejoining socket may recover, at most
    "DPS_SOCKET_AUTH": "optional",
    "DPS_TOKEN_MAX_AGE": 86400.0,
    "DPS_ALLOWED_ORIGINS": None,  # None: the hosts of ALLOWED_HOSTS
    "DPS_API_KEY": "",  # empty: no HTTP API
    "DPS_USING_DEVELOPMENT_KEY": False,
}


def setting(name: str) -> Any:
    """The project's value of a DPS setting, else its default."""
    return getattr(settings, name, DEFAULTS[name])


def allowed_origins() -> list[str]:
    """DPS_ALLOWED_ORIGINS, else the site's own hosts (as Django's runserver allows them under DEBUG)."""
    origins = setting("DPS_ALLOWED_ORIGINS")
    if origins is not None:
        return list(origins)
    hosts = list(settings.ALLOWED_HOSTS)
    if not hosts and settings.DEBUG:
        hosts = [".localhost", "127.0.0.1", "[::1]"]
    return hosts


EXAMPLE_REDIS_URL = "redis://127.0.0.1:6379/0"


def check_redis_url(url, name="DPS_REDIS_URL"):
    """Return url if it is a Redis URL redis-py reads as meant; else raise ConfigurationError naming the setting."""
    problem = _redis_url_problem(url)
    if problem:
        from pubsub.transport.redis_clients import is_cluster

        example = "redis+cluster://10.0.0.5:7000,10.0.0.6:7000" if is_cluster(url) else EXAMPLE_REDIS_URL
        raise ConfigurationError(f"{name}={url!r} is not a usable Redis URL: {problem}; e.g. {example}")
    return url


def _redis_url_problem(url):
    from pubsub.transport.redis_clients import cluster_members, is_cluster

    if is_cluster(url):
        try:
            cluster_members(url)
        except ValueError as exc:
            return str(exc)
        return None
    try:
        parsed = urlparse(url)
        port = parsed.port
    except ValueError as exc:  # e.g. a port that is not a number
        return str(exc)
    if parsed.scheme not in ("redis", "rediss", "unix"):
        return "it must start with redis://, rediss://, unix:// or redis+cluster://"
    if parsed.scheme == "unix":
        return None if parsed.path else "a unix:// URL needs the socket's path"
    if port == 0:
        return "port 0"
    database = parsed.path.strip("/")
    if database and not database.isdigit():  # redis-py would quietly use database 0
        return f"the database {database!r} is not a number"
    return None
