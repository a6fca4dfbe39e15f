"""Which channel class serves a topic: the DPS_CHANNELS routes, Phoenix's ``channel "room:*", Room``.

A route is ``(pattern, class)``: a pattern is a topic, or a prefix ending in ``*`` (``*`` alone
matches every topic); the first matching route wins; a topic no route matches is refused with
Phoenix's ``unmatched topic`` reply.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.utils.module_loading import import_string

from pubsub.exceptions import ConfigurationError
from pubsub.socket.channels import Channel

__all__ = ["ChannelRoutes", "DEFAULT_ROUTES"]

DEFAULT_ROUTES = (("*", "pubsub.channels.PublishChannel"),)


class ChannelRoutes:
    """The routes, checked and imported once; ``match(topic)`` is the class or None."""

    def __init__(self, routes: Iterable = DEFAULT_ROUTES):
        self._ordered: list[tuple[str, bool, type[Channel]]] = []  # (pattern, is_prefix, class)
        for route in routes:
            pattern, channel_class = self._check(route)
            is_prefix = pattern.endswith("*")
            self._ordered.append((pattern[:-1] if is_prefix else pattern, is_prefix, channel_class))

    def match(self, topic: str) -> type[Channel] | None:
        for pattern, is_prefix, channel_class in self._ordered:
            if topic.startswith(pattern) if is_prefix else topic == pattern:
                return channel_class
        return None

    @staticmethod
    def _check(route) -> tuple[str, type[Channel]]:
        try:
            pattern, target = route
        except (TypeError, ValueError):
            raise ConfigurationError(
                f"DPS_CHANNELS: {route!r} is not a (pattern, class) pair, e.g. ('room:*', 'chat.channels.Room')"
            ) from None
        if not isinstance(pattern, str) or not pattern or "*" in pattern[:-1]:
            raise ConfigurationError(
                f"DPS_CHANNELS: pattern {pattern!r} must be a topic or a prefix ending in '*' ('*' only at the end)"
            )
        if isinstance(target, str):
            try:
                target = import_string(target)
            except ImportError as exc:
                raise ConfigurationError(f"DPS_CHANNELS: {route[1]!r} cannot be imported: {exc}") from None
        if not (isinstance(target, type) and issubclass(target, Channel)):
            raise ConfigurationError(f"DPS_CHANNELS: {target!r} is not a subclass of pubsub.channels.Channel")
        return pattern, target
