"""Prometheus metrics of a node (``/metrics`` on its daphne port) and of a topic server (``--metrics-port``).

The processes count in plain dicts (``layer.stats``, ``TopicServer.stats``); a
collector turns them into metric families at scrape time, so the hot path pays
no metric-library cost. No label per topic: cardinality stays bounded.
"""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from pubsub.core.messages import CONTROL_GROUP

__all__ = ["node_registry", "topic_server_registry", "metrics_view"]

NODE_COUNTERS = {
    "connections_opened": "websocket connections accepted",
    "joins": "topic joins accepted",
    "publishes": "publish frames accepted",
    "group_sends": "group_send calls (publishes and server broadcasts)",
    "delivered": "messages handed to local channels",
    "dropped": "messages dropped because a channel was full",
    "malformed": "stream entries skipped as malformed",
    "sequence_gaps": "jumps in a topic's sequence numbers",
    "duplicates": "repeated messages dropped by sequence number",
    "connections_refused": "websockets refused before the upgrade: DPS_MAX_CONNECTIONS reached",
    "slow_readers_cut": "websockets closed with 4008: unsent bytes over DPS_MAX_SEND_BUFFER, not draining",
    "publishes_rate_limited": "publishes refused with 'rate limited' (DPS_PUBLISH_RATE)",
    "connections_refused_auth": "websockets refused before the upgrade by DPS_SOCKET_AUTH",
    "connections_refused_origin": "websockets refused before the upgrade: Origin not in DPS_ALLOWED_ORIGINS",
    "dropped_by_owner": "times an owner had taken this node for dead (it announced its topics again)",
}
TOPIC_SERVER_COUNTERS = {
    "published": "messages received for its topics",
    "node_messages": "messages sent to nodes (one per node per message)",
    "lost_node_messages": "node messages that could not be sent",
    "malformed": "inbox entries skipped as malformed",
    "expired_nodes": "nodes dropped for a missed heartbeat",
}


class _StatsCollector:
    """Counters from a stats dict, gauges from a function, read at every scrape."""

    def __init__(self, prefix: str, stats: Callable[[], dict], counters: dict, gauges: Callable[[], dict]):
        self.prefix, self.stats, self.counters, self.gauges = prefix, stats, counters, gauges

    def collect(self):
        stats = self.stats()
        for name, documentation in self.counters.items():
            yield CounterMetricFamily(f"{self.prefix}_{name}", documentation, value=stats.get(name, 0))
        for name, (documentation, value) in self.gauges().items():
            yield GaugeMetricFamily(f"{self.prefix}_{name}", documentation, value=value)


def node_registry(layer) -> CollectorRegistry:
    def gauges():
        stats = layer.stats
        return {
            "connections": ("open websocket connections", stats["connections_opened"] - stats["connections_closed"]),
            "channels": ("local channels with a mailbox", len(layer._mailboxes)),
            "topics": ("topics with local members", len(layer._groups) - (CONTROL_GROUP in layer._groups)),
            "stream_lag_seconds": ("age of the newest entry read from this node's stream", layer.stream_lag),
        }

    return _registry(_StatsCollector("dps_node", lambda: layer.stats, NODE_COUNTERS, gauges))


def topic_server_registry(server) -> CollectorRegistry:
    def gauges():
        return {
            "topics": ("topics with members on some node", server.user_topics()),
            "nodes": ("nodes holding members of its topics", len(server.node_topics)),
            "inbox_lag_seconds": ("age of the newest inbox entry read", server.inbox_lag),
        }

    return _registry(_StatsCollector("dps_topicserver", lambda: server.stats, TOPIC_SERVER_COUNTERS, gauges))


def _registry(collector: _StatsCollector) -> CollectorRegistry:
    registry = CollectorRegistry()  # one per process being measured, not the global default
    registry.register(collector)
    return registry


_registries: dict[int, CollectorRegistry] = {}


def metrics_view(request):
    """``GET /metrics``: this node's metrics in the Prometheus text format."""
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    registry = _registries.get(id(layer))
    if registry is None:
        registry = _registries[id(layer)] = node_registry(layer)
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
