from django.contrib import admin
from django.urls import path

from pubsub.admin import ownership_view
from pubsub.metrics import metrics_view

urlpatterns = [
    path("admin/ownership/", admin.site.admin_view(ownership_view), name="dps-ownership"),
    path("admin/", admin.site.urls),
    path("metrics", metrics_view, name="dps-metrics"),
]
