from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

urlpatterns = [
    path("", include("pubsub.urls")),  # before the admin: it serves admin/ownership/
    path("admin/", admin.site.urls),
    path("chat/", include("dps_chat.urls")),
    path("", RedirectView.as_view(url="/chat/", permanent=False)),
]
