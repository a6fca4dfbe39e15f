"""The join authorization hook (setting DPS_JOIN_AUTHORIZER names it).

A hook is called as ``hook(scope, topic, params)``, plain or async, and answers:
- True or None: the join is allowed;
- False: refused with ``{"reason": "unauthorized"}``;
- a string: refused with that string as the reason;
- a dict: refused, and the dict is the reply's response.
It runs on the event loop: wrap database work in ``channels.db.database_sync_to_async``.
"""

from __future__ import annotations

import inspect
from typing import Any

from django.utils.module_loading import import_string

from pubsub.exceptions import ConfigurationError

__all__ = ["allow_all", "load_authorizer", "authorize"]


def allow_all(scope: dict, topic: str, params: Any) -> bool:
    """The default: every join of a valid topic is allowed."""
    return True


def load_authorizer(path: str):
    try:
        hook = import_string(path)
    except ImportError as exc:
        raise ConfigurationError(f"DPS_JOIN_AUTHORIZER={path!r} cannot be imported: {exc}") from None
    if not callable(hook):
        raise ConfigurationError(f"DPS_JOIN_AUTHORIZER={path!r} is not callable.")
    return hook


async def authorize(hook, scope: dict, topic: str, params: Any) -> dict | None:
    """None if the join may go ahead, else the error response to send."""
    verdict = hook(scope, topic, params)
    if inspect.isawaitable(verdict):
        verdict = await verdict
    if verdict is True or verdict is None:
        return None
    if verdict is False:
        return {"reason": "unauthorized"}
    if isinstance(verdict, str):
        return {"reason": verdict}
    if isinstance(verdict, dict):
        return verdict
    raise TypeError(f"join authorizer returned {verdict!r}; expected True, None, False, a string or a dict")
