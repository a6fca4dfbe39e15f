"""Channel classes the tests route topics to (in-process and in daphne subprocesses)."""

from pubsub.socket.channels import Channel, PublishChannel, Reply, Stop

ended: list[tuple[str, str]] = []  # (topic, reason) of every channel that ended in this process

ROUTES = [("room:*", "tests.channel_examples.RoomChannel"), ("lobby", PublishChannel)]


class RoomChannel(Channel):
    """A chat room: a nick per join, replies, broadcasts with and without the sender, stops, crashes."""

    async def join(self, params):
        if params.get("password") == "wrong":
            return Reply.error({"reason": "wrong password", "attempts_left": 2})
        if params.get("crash"):
            raise RuntimeError("join bug")
        self.assigns["nick"] = params.get("nick") or self.identity or "anonymous"
        return {"nick": self.assigns["nick"], "identity": self.identity, "plan": self.assigns.get("plan")}

    async def after_join(self):
        if self.assigns["nick"] == "greeted":
            await self.push("welcome", {"topic": self.topic})

    async def handle_in(self, event, payload):
        if event == "ping":
            return Reply.ok({"pong": payload})
        if event == "refuse":
            return Reply.error("not today")
        if event == "shout":
            await self.broadcast("shout", {"from": self.assigns["nick"], **payload})
            return None
        if event == "say":
            await self.broadcast_from("say", {"from": self.assigns["nick"], **payload})
            return Reply.ok()
        if event == "push_me":
            await self.push("pushed", payload)
            return None
        if event == "bye":
            return Stop(Reply.ok({"bye": self.assigns["nick"]}))
        if event == "quit":
            return Stop()
        if event == "boom":
            raise RuntimeError("handler bug")
        if event == "bad_answer":
            return 42
        return await super().handle_in(event, payload)

    async def terminate(self, reason):
        ended.append((self.topic, reason))


def plan_hook(scope, params):
    """DPS_SOCKET_AUTH hook: the identity and an assign from the connect params."""
    return {"identity": params.get("user"), "plan": params.get("plan", "free")}


class MoodChannel(Channel):
    """Presence with a meta of its own, and updates."""

    def presence_meta(self):
        return {"mood": "fine"}

    async def handle_in(self, event, payload):
        if event == "mood":
            await self.update({"mood": payload["mood"]})
            return Reply.ok()
        return await super().handle_in(event, payload)
