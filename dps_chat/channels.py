"""The chat's rooms (topics ``chat:<room>``): logged-in users only, messages stamped by the server."""

import time

from pubsub.channels import Channel, Reply

MAX_MESSAGE = 2000


class ChatRoom(Channel):
    async def join(self, params):
        if self.identity is None:
            return Reply.error("log in to chat")
        return None

    def presence_meta(self) -> dict:
        return {"name": self.name}

    @property
    def name(self) -> str:
        return self.assigns.get("username") or self.identity

    async def handle_in(self, event, payload):
        if event != "new_msg":
            return await super().handle_in(event, payload)
        body = payload.get("body") if isinstance(payload, dict) else None
        if not isinstance(body, str) or not body.strip() or len(body) > MAX_MESSAGE:
            return Reply.error(f"a message is 1-{MAX_MESSAGE} characters")
        # The sender's name comes from its session, not from the client: nobody can speak as another.
        await self.broadcast("new_msg", {"user": self.name, "body": body.strip(), "at": int(time.time())})
        return Reply.ok()
