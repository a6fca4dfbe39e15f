"""DPS's settings, read where they are used: ``setting()``, ``DEFAULTS``, the allowed origins and
the Redis URL check. What every ``DPS_*`` name means, its default and its type is one table,
``pubsub/settings_reference.py`` (re-exported here: ``SETTINGS``, ``LAYER_OPTIONS``).

Importing this module needs no configured Django.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

from django.conf import settings

from pubsub.exceptions import ConfigurationError
from pubsub.settings_reference import DEVELOPMENT_SECRET_KEY, DPS, LAYER_OPTIONS, SETTINGS, SITE, LayerOption, Setting

__all__ = [
    "DEFAULTS",
    "DEVELOPMENT_SECRET_KEY",
    "DPS",
    "LAYER_OPTIONS",
    "SETTINGS",
    "SITE",
    "LayerOption",
    "Setting",
    "allowed_origins",
    "check_redis_url",
    "default",
    "setting",
]

_BY_NAME = {entry.name: entry for entry in SETTINGS}

DEFAULTS: dict[str, Any] = {entry.name: entry.default for entry in SETTINGS if entry.kind == DPS}


def default(name: str) -> Any:
    """The default of any ``DPS_*`` setting in SETTINGS (dps_site's, for an environment variable)."""
    return _BY_NAME[name].default


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
