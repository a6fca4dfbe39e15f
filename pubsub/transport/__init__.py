"""Byte-moving backends behind TopicRingLayer: Redis streams and in-memory."""

from pubsub.transport.base import Transport, inbox_stream, node_stream
from pubsub.transport.memory import MemoryTransport

__all__ = ["MemoryTransport", "Transport", "inbox_stream", "node_stream"]
