"""The admin's "Topic ownership" page: the ring, live topic servers and nodes, topics and owners."""

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.contrib import admin
from django.core.paginator import Paginator
from django.http import JsonResponse
from django.template.response import TemplateResponse

from pubsub.conf import setting
from pubsub.core.protocol import valid_topic
from pubsub.core.ring import HashRing
from pubsub.http.ownership import SORT_KEYS, build_report, collect, rebalance_preview, sort_topics
from pubsub.socket.tokens import DEVELOPMENT_KEY_WARNING

__all__ = ["ownership_view"]

PAGE_SIZE = 50

admin.site.site_header = "DPS administration"
admin.site.index_template = "admin/pubsub/index.html"


def ownership_view(request):
    """Staff only (wrapped in admin_view); ``?topic=`` looks one up, ``?sort=&dir=&page=`` order the topics,
    ``?format=json`` returns the whole report for scripts."""
    layer = get_channel_layer()
    servers, nodes, (generation, members) = async_to_sync(collect)(layer)
    live = layer.live_ring and bool(members)
    ring = HashRing(members) if live else layer.ring
    report = build_report(ring, servers, nodes, layer.liveness_ttl)
    sort = request.GET.get("sort", "topic")
    sort = sort if sort in SORT_KEYS else "topic"
    descending = request.GET.get("dir") == "desc"
    page = Paginator(sort_topics(report.topics, sort, descending), PAGE_SIZE).get_page(request.GET.get("page"))
    joining = request.GET.get("add", "").strip() or _next_member_name(ring.members)
    looked_up = request.GET.get("topic", "").strip()
    lookup = None
    if looked_up:
        known = next((row for row in report.topics if row.topic == looked_up), None)
        lookup = {"topic": looked_up, "valid": valid_topic(looked_up), "owner": ring.owner(looked_up), "row": known}
    if request.GET.get("format") == "json":
        return JsonResponse(_as_json(report, lookup))
    context = {
        **admin.site.each_context(request),
        "title": "Topic ownership",
        "report": report,
        "shares": sorted(ring.shares().items()),
        "page": page,
        "sort": sort,
        "descending": descending,
        "sort_keys": SORT_KEYS,
        "node_names": [row.name for row in report.nodes],
        "lookup": lookup,
        "joining": joining,
        "preview": rebalance_preview(ring, [row.topic for row in report.topics], joining),
        "mode": "embedded (one process, in memory)" if layer.embedded else "cluster over Redis",
        "ring_source": f"live, generation {generation}" if live else "static (DPS_TOPIC_SERVERS)",
        "ttl": layer.liveness_ttl,
        "development_key_warning": DEVELOPMENT_KEY_WARNING if setting("DPS_USING_DEVELOPMENT_KEY") else None,
    }
    return TemplateResponse(request, "admin/pubsub/ownership.html", context)


def _as_json(report, lookup) -> dict:
    return {
        "ring": report.ring.shares(),
        "servers": [vars(row) for row in report.servers],
        "nodes": [vars(row) for row in report.nodes],
        "topics": [{**vars(row), "total": row.total} for row in report.topics],
        "lookup": {"topic": lookup["topic"], "owner": lookup["owner"]} if lookup else None,
    }


def _next_member_name(members) -> str:
    number = len(members) + 1
    while f"ts-{number}" in members:
        number += 1
    return f"ts-{number}"
