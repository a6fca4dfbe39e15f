from django.apps import AppConfig


class ChatConfig(AppConfig):
    """The browser chat served at /chat/: DPS seen from a user's side."""

    name = "dps_chat"
    label = "dps_chat"
