"""DPS's HTTP pages: the admin's ownership page, Prometheus metrics and the publishing API.

Include them before the admin's own URLs: ``path("", include("pubsub.urls"))``.
"""

from django.contrib import admin
from django.urls import path

from pubsub.admin import ownership_view
from pubsub.http.api import broadcast_view, presence_stats_view, presence_view, publish_view
from pubsub.http.metrics import metrics_view

urlpatterns = [
    path("admin/ownership/", admin.site.admin_view(ownership_view), name="dps-ownership"),
    path("metrics", metrics_view, name="dps-metrics"),
    path("api/publish", publish_view, name="dps-api-publish"),
    path("api/broadcast", broadcast_view, name="dps-api-broadcast"),
    path("api/presence", presence_view, name="dps-api-presence"),
    path("api/presence_stats", presence_stats_view, name="dps-api-presence-stats"),
]
