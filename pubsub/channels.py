"""Channel classes: what a joined topic does (Phoenix's channel API in Python).

The public import path; the code lives in pubsub/socket/channels.py."""

from pubsub.socket.channels import Channel, PublishChannel, Reply, Stop

__all__ = ["Channel", "PublishChannel", "Reply", "Stop"]
