"""Hooks the socket-auth tests point DPS_JOIN_AUTHORIZER and DPS_SOCKET_AUTH at."""

from pubsub.socket.auth import Refused


def own_rooms_only(scope, topic, params):
    """private:<name> only for the socket whose identity is <name>; other topics for anyone."""
    if topic.startswith("private:"):
        return scope["dps.identity"].name == topic.split(":", 1)[1]
    return True


async def by_name_param(scope, params):
    """Identity from a ``name`` connect param; mallory is refused, with a reason."""
    if params.get("name") == "mallory":
        raise Refused("mallory is not welcome")
    return {"identity": params.get("name"), "role": "guest"}
