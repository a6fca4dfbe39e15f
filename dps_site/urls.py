from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("", include("pubsub.urls")),  # before the admin: it serves admin/ownership/
    path("admin/", admin.site.urls),
]
