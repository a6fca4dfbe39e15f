"""Who is present in a topic, from server code: ``pubsub.presence.list(topic)``.

The public import path; the code lives in pubsub/http/presence.py."""

from pubsub.http.presence import alist, astats, list, stats

__all__ = ["alist", "list", "astats", "stats"]
