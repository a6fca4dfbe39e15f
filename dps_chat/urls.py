from django.urls import path

from dps_chat import views

app_name = "chat"
urlpatterns = [
    path("", views.rooms, name="rooms"),
    path("login/", views.log_in, name="login"),
    path("signup/", views.sign_up, name="signup"),
    path("logout/", views.log_out, name="logout"),
    path("<str:room>/", views.room, name="room"),
]
