"""Log in (or sign up), pick a room, chat: plain Django views around one page of phoenix.js."""

import logging
import re

from django.contrib.auth import login, logout
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import AuthenticationForm, UserCreationForm
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from pubsub import presence
from pubsub.exceptions import TransportError

logger = logging.getLogger(__name__)

ROOMS = ("lobby", "random", "help")
SIGNUP_IDS = "signup_%s"  # the two forms share a page: their fields need ids of their own
ROOM_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,40}$")


def log_in(request):
    form = AuthenticationForm(request, data=request.POST or None)
    if request.method == "POST" and form.is_valid():
        login(request, form.get_user())
        return redirect(request.GET.get("next") or "chat:rooms")
    return render(request, "dps_chat/login.html", {"form": form, "signup": UserCreationForm(auto_id=SIGNUP_IDS)})


def sign_up(request):
    form = UserCreationForm(request.POST or None, auto_id=SIGNUP_IDS)
    if request.method == "POST" and form.is_valid():
        login(request, form.save())
        return redirect("chat:rooms")
    return render(request, "dps_chat/login.html", {"form": AuthenticationForm(request), "signup": form})


@require_POST
def log_out(request):
    logout(request)
    return redirect("chat:login")


@login_required(login_url="chat:login")
def rooms(request):
    wanted = request.GET.get("room", "").strip().lower()
    if wanted:
        return redirect("chat:room", room=wanted) if ROOM_NAME.match(wanted) else redirect("chat:rooms")
    listed = []
    for name in ROOMS:
        try:
            online = presence.stats(f"chat:{name}")["num_users"]
        except TransportError as exc:  # the list still works without the counts
            logger.warning("presence of chat:%s unavailable: %s", name, exc)
            online = None
        listed.append({"name": name, "online": online})
    return render(request, "dps_chat/rooms.html", {"rooms": listed})


@login_required(login_url="chat:login")
def room(request, room):
    if not ROOM_NAME.match(room):
        raise Http404("no such room")
    return render(request, "dps_chat/room.html", {"room": room})
