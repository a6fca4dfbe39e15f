"""Django settings for DPS. Every DPS_* environment variable is read here, and only here.

Their defaults, types and meanings are the table in pubsub/conf.py (SETTINGS).
"""

import os
from pathlib import Path

from pubsub.conf import DEFAULTS, DEVELOPMENT_SECRET_KEY, check_redis_url, default
from pubsub.exceptions import ConfigurationError
from pubsub.transport.redis_clients import is_cluster

BASE_DIR = Path(__file__).resolve().parent.parent


def _env_number(name, default, kind=int):
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return kind(raw)
    except ValueError:
        wanted = "an integer" if kind is int else "a number"
        raise ConfigurationError(f"{name}={raw!r} is not {wanted}; unset it or give {wanted}.") from None


def _env_list(name, default):
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def _env_routes(name, default):
    """``pattern=dotted.Class`` pairs, comma-separated, in order."""
    raw = os.environ.get(name)
    if not raw:
        return default
    routes = [tuple(part.strip() for part in item.split("=", 1)) for item in raw.split(",") if item.strip()]
    for route in routes:
        if len(route) != 2 or not all(route):
            raise ConfigurationError(f"{name}={raw!r}: give pattern=dotted.Class pairs, e.g. room:*=chat.channels.Room")
    return routes


DPS_NODE = os.environ.get("DPS_NODE", default("DPS_NODE"))
DPS_TOPIC_SERVERS = _env_list("DPS_TOPIC_SERVERS", default("DPS_TOPIC_SERVERS"))
DPS_REDIS_URL = os.environ.get("DPS_REDIS_URL") or None
if DPS_REDIS_URL is not None:
    check_redis_url(DPS_REDIS_URL)
DPS_REDIS_WAIT_REPLICAS = _env_number("DPS_REDIS_WAIT_REPLICAS", default("DPS_REDIS_WAIT_REPLICAS"))
DPS_REDIS_WAIT_TIMEOUT = _env_number("DPS_REDIS_WAIT_TIMEOUT", default("DPS_REDIS_WAIT_TIMEOUT"), float)
if DPS_REDIS_WAIT_REPLICAS and DPS_REDIS_URL and is_cluster(DPS_REDIS_URL):
    raise ConfigurationError(
        f"DPS_REDIS_WAIT_REPLICAS={DPS_REDIS_WAIT_REPLICAS} needs one Redis with replicas (redis://); "
        "on a Redis Cluster it is not supported yet: unset it."
    )
DPS_MAX_FRAME_BYTES = _env_number("DPS_MAX_FRAME_BYTES", DEFAULTS["DPS_MAX_FRAME_BYTES"])
DPS_MAX_CHANNELS = _env_number("DPS_MAX_CHANNELS", DEFAULTS["DPS_MAX_CHANNELS"])
DPS_IDLE_TIMEOUT = _env_number("DPS_IDLE_TIMEOUT", DEFAULTS["DPS_IDLE_TIMEOUT"], float)
DPS_CHANNEL_CAPACITY = _env_number("DPS_CHANNEL_CAPACITY", default("DPS_CHANNEL_CAPACITY"))
DPS_STREAM_MAXLEN = _env_number("DPS_STREAM_MAXLEN", default("DPS_STREAM_MAXLEN"))
DPS_JOIN_AUTHORIZER = os.environ.get("DPS_JOIN_AUTHORIZER") or DEFAULTS["DPS_JOIN_AUTHORIZER"]
DPS_LIVENESS_TTL = _env_number("DPS_LIVENESS_TTL", default("DPS_LIVENESS_TTL"), float)
DPS_PRESENCE_WINDOW = _env_number("DPS_PRESENCE_WINDOW", default("DPS_PRESENCE_WINDOW"), float)
DPS_HISTORY_SIZE = _env_number("DPS_HISTORY_SIZE", default("DPS_HISTORY_SIZE"))
DPS_HISTORY_TTL = _env_number("DPS_HISTORY_TTL", default("DPS_HISTORY_TTL"), float)
DPS_RECOVERY_LIMIT = _env_number("DPS_RECOVERY_LIMIT", DEFAULTS["DPS_RECOVERY_LIMIT"])
DPS_MAX_CONNECTIONS = _env_number("DPS_MAX_CONNECTIONS", DEFAULTS["DPS_MAX_CONNECTIONS"])
DPS_PUBLISH_RATE = _env_number("DPS_PUBLISH_RATE", DEFAULTS["DPS_PUBLISH_RATE"], float)
DPS_PUBLISH_BURST = _env_number("DPS_PUBLISH_BURST", DEFAULTS["DPS_PUBLISH_BURST"])
DPS_MAX_SEND_BUFFER = _env_number("DPS_MAX_SEND_BUFFER", DEFAULTS["DPS_MAX_SEND_BUFFER"])
DPS_SOCKET_AUTH = os.environ.get("DPS_SOCKET_AUTH") or DEFAULTS["DPS_SOCKET_AUTH"]
# Channel classes by topic: "room:*=chat.channels.Room,*=pubsub.channels.PublishChannel".
# This site also serves the browser chat (/chat/) on topics chat:<room>.
DPS_CHANNELS = _env_routes("DPS_CHANNELS", [("chat:*", "dps_chat.channels.ChatRoom"), *DEFAULTS["DPS_CHANNELS"]])
LOGIN_URL = "chat:login"
DPS_TOKEN_MAX_AGE = _env_number("DPS_TOKEN_MAX_AGE", DEFAULTS["DPS_TOKEN_MAX_AGE"], float)
DPS_API_KEY = os.environ.get("DPS_API_KEY", DEFAULTS["DPS_API_KEY"])  # unset: no HTTP API (/api/ is 404)
DPS_RING = os.environ.get("DPS_RING") or default("DPS_RING")
if DPS_RING not in ("static", "live"):
    raise ConfigurationError(f"DPS_RING={DPS_RING!r}: use 'static' (DPS_TOPIC_SERVERS) or 'live' (registered servers).")
DPS_LIVE_RING = DPS_RING == "live"

SECRET_KEY = os.environ.get("DPS_SECRET_KEY") or DEVELOPMENT_SECRET_KEY
# Tokens are only as secret as SECRET_KEY: every process says so at start while this one is in use.
DPS_USING_DEVELOPMENT_KEY = SECRET_KEY == DEVELOPMENT_SECRET_KEY
DEBUG = os.environ.get("DPS_DEBUG", default("DPS_DEBUG")) == "1"
ALLOWED_HOSTS = _env_list("DPS_ALLOWED_HOSTS", default("DPS_ALLOWED_HOSTS"))
# Web pages that may open a socket: by default the site's own hosts, any port, http or https.
DPS_ALLOWED_ORIGINS = _env_list("DPS_ALLOWED_ORIGINS", ",".join(ALLOWED_HOSTS))

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "pubsub",
    "topicserver",
    "dps_chat",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",  # the admin's CSS and JS, served by daphne itself
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "dps_site.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
ASGI_APPLICATION = "dps_site.asgi.application"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DPS_SQLITE_PATH", str(BASE_DIR / "db.sqlite3")),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"  # Django sets the process's TZ from this, so log times are UTC (its default is America/Chicago)
STATIC_URL = "static/"
WHITENOISE_USE_FINDERS = True  # no collectstatic step needed

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "pubsub.layer.TopicRingLayer",
        "CONFIG": {
            "node": DPS_NODE,
            "topic_servers": DPS_TOPIC_SERVERS,
            "redis_url": DPS_REDIS_URL,
            "capacity": DPS_CHANNEL_CAPACITY,
            "stream_maxlen": DPS_STREAM_MAXLEN,
            "redis_wait_replicas": DPS_REDIS_WAIT_REPLICAS,
            "redis_wait_timeout": DPS_REDIS_WAIT_TIMEOUT,
            "liveness_ttl": DPS_LIVENESS_TTL,
            "presence_window": DPS_PRESENCE_WINDOW,
            "history_size": DPS_HISTORY_SIZE,
            "history_ttl": DPS_HISTORY_TTL,
            "live_ring": DPS_LIVE_RING,
        },
    }
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "pubsub": {
            "handlers": ["console"],
            "level": os.environ.get("DPS_LOG_LEVEL", default("DPS_LOG_LEVEL")),
            "propagate": False,
        },
        "topicserver": {
            "handlers": ["console"],
            "level": os.environ.get("DPS_LOG_LEVEL", default("DPS_LOG_LEVEL")),
            "propagate": False,
        },
    },
}
