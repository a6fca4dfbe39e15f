"""The HTTP API, on every node: ``POST /api/publish``, ``/api/broadcast``, ``/api/presence``
and ``/api/presence_stats``.

For services that are not Python, or not this Django project: one request publishes to one topic
(or to several), reaching every subscriber on every node like a client's ``publish``. It exists
only when ``DPS_API_KEY`` is set (otherwise 404), and every request carries that key as
``Authorization: apikey KEY`` or ``X-API-Key: KEY`` (compared in constant time). A repeated
``idempotency_key`` for the same topic within five minutes is accepted and delivered once: the
topic's owner remembers the keys it has seen.
"""

from __future__ import annotations

import hmac

import orjson
from channels.layers import get_channel_layer
from django.http import Http404, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from pubsub.conf import setting
from pubsub.core import protocol
from pubsub.core.messages import broadcast_message
from pubsub.exceptions import TransportError
from pubsub.http import presence

__all__ = ["publish_view", "broadcast_view", "presence_view", "presence_stats_view"]

_MAX_KEY_LENGTH = 200


class _BadRequest(Exception):
    """A body that is not JSON, or a missing or mistyped field (the message names it)."""


@csrf_exempt
async def publish_view(request):
    """``{"topic", "event", "payload", "idempotency_key"?}`` -> ``{"result": {}}``."""
    return await _handle(request, many=False)


@csrf_exempt
async def broadcast_view(request):
    """``{"topics": [...], "event", "payload", "idempotency_key"?}`` -> ``{"result": {"topics": n}}``."""
    return await _handle(request, many=True)


@csrf_exempt
async def presence_view(request):
    """``{"topic"}`` -> ``{"result": {"presence": {key: {"metas": [...]}}}}``."""
    return await _presence(request, counted=False)


@csrf_exempt
async def presence_stats_view(request):
    """``{"topic"}`` -> ``{"result": {"num_clients": n, "num_users": m}}``."""
    return await _presence(request, counted=True)


async def _presence(request, counted: bool):
    refusal = _refusal(request)
    if refusal is not None:
        return refusal
    try:
        (topic,) = _topics(_json_object(request.body), many=False)
    except _BadRequest as exc:
        return _error(400, str(exc))
    try:
        found = await presence.alist(topic)
    except TransportError as exc:
        return _error(503, f"unavailable: {exc}")
    return JsonResponse({"result": presence.count(found) if counted else {"presence": found}})


def _refusal(request) -> JsonResponse | None:
    """What every API request must pass: the API is on (else 404), POST, the key."""
    if not setting("DPS_API_KEY"):
        raise Http404("the HTTP API is off: set DPS_API_KEY")
    if request.method != "POST":
        return _error(405, "use POST")
    if not _authorized(request):
        return _error(401, "a missing or wrong API key: send 'Authorization: apikey KEY' or 'X-API-Key: KEY'")
    return None


async def _handle(request, many: bool):
    refusal = _refusal(request)
    if refusal is not None:
        return refusal
    try:
        topics, event, payload, key = _parse(request.body, many)
    except _BadRequest as exc:
        return _error(400, str(exc))
    layer = get_channel_layer()
    try:
        for topic in topics:
            message = broadcast_message(topic, event, payload)
            if key is None:
                await layer.group_send(topic, message)
            else:
                await layer.group_send_once(topic, message, key)
    except TransportError as exc:
        return _error(503, f"unavailable: {exc}")
    return JsonResponse({"result": {"topics": len(topics)} if many else {}})


def _authorized(request) -> bool:
    given = request.headers.get("X-API-Key", "")
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "apikey":
        given = credentials.strip()
    return hmac.compare_digest(given.encode(), setting("DPS_API_KEY").encode())


def _parse(body: bytes, many: bool):
    data = _json_object(body)
    topics = _topics(data, many)
    event = data.get("event")
    if not isinstance(event, str) or not event or event.startswith("phx_"):
        raise _BadRequest("event: a non-empty name not starting with phx_ is required")
    payload = data.get("payload")
    if not isinstance(payload, dict):
        raise _BadRequest("payload: a JSON object is required")
    key = data.get("idempotency_key")
    if key is not None and (not isinstance(key, str) or not key or len(key) > _MAX_KEY_LENGTH):
        raise _BadRequest(f"idempotency_key: a string of 1-{_MAX_KEY_LENGTH} characters")
    return topics, event, payload, key


def _json_object(body: bytes) -> dict:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise _BadRequest("the body is not JSON") from None
    if not isinstance(data, dict):
        raise _BadRequest("the body must be a JSON object")
    return data


def _topics(data: dict, many: bool) -> list[str]:
    if many:
        topics = data.get("topics")
        if not isinstance(topics, list) or not topics:
            raise _BadRequest("topics: a non-empty list of topics is required")
    else:
        topics = [data.get("topic")]
    field = "topics" if many else "topic"
    for topic in topics:
        if not isinstance(topic, str) or not protocol.valid_topic(topic):
            raise _BadRequest(f"{field}: 1-255 printable characters without whitespace, not {topic!r:.60}")
    return topics


def _error(status: int, message: str) -> JsonResponse:
    return JsonResponse({"error": {"message": message}}, status=status)
