"""Who is connecting: signed tokens, the socket-auth policies, and the identity in join authorization."""

import asyncio
import base64
import json
import subprocess
import sys

import pytest
import websockets

from pubsub.exceptions import InvalidToken
from pubsub.socket import tokens
from tests import phoenix_js
from tests.processes import ROOT, dps_env

KEY = "dps-test-secret-key"
OWN_ROOMS = "tests.auth_hooks.own_rooms_only"


@pytest.fixture(autouse=True)
def test_key(settings):
    settings.SECRET_KEY = KEY


def test_a_token_names_its_identity_and_claims():
    assert tokens.verify(tokens.sign("alice", room="r1")) == ("alice", {"room": "r1"})


@pytest.mark.parametrize(
    "token, why",
    [
        (lambda: tokens.sign("alice")[:-2] + "xx", "invalid"),  # tampered
        (lambda: "not a token", "invalid"),
        (lambda: "", "invalid"),
    ],
)
def test_bad_tokens_are_refused(token, why):
    with pytest.raises(InvalidToken, match=why):
        tokens.verify(token())


def test_an_expired_token_is_refused():
    with pytest.raises(InvalidToken, match="expired"):
        tokens.verify(tokens.sign("alice"), max_age=-1)


def test_a_token_signed_with_another_key_is_refused(settings):
    token = tokens.sign("alice")
    settings.SECRET_KEY = "another key"
    with pytest.raises(InvalidToken, match="invalid"):
        tokens.verify(token)


def test_dpstoken_prints_one_token_on_one_line():
    result = subprocess.run(
        [sys.executable, "manage.py", "dpstoken", "bob"],
        cwd=ROOT,
        env=dps_env(DPS_SECRET_KEY=KEY),
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.count("\n") == 1
    assert tokens.verify(result.stdout.strip()) == ("bob", {})


async def _join(url, topic, **connect):
    async with websockets.connect(url, **connect) as ws:
        await ws.send(json.dumps(["1", "1", topic, "phx_join", {}]))
        return json.loads(await asyncio.wait_for(ws.recv(), 10))[4]


async def _refused(url, **connect):
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(url, **connect)
    return refused.value.response.status_code


@pytest.mark.processes
async def test_optional_auth_admits_anonymous_and_valid_tokens_and_refuses_bad_ones(daphne_factory):
    node = daphne_factory(DPS_SECRET_KEY=KEY, DPS_JOIN_AUTHORIZER=OWN_ROOMS)
    alice = tokens.sign("alice")
    assert (await _join(node.url(), "room:open"))["status"] == "ok"  # anonymous
    assert (await _join(node.url(), "private:alice"))["status"] == "error"  # anonymous is nobody
    assert (await _join(node.url(f"vsn=2.0.0&token={alice}"), "private:alice"))["status"] == "ok"
    assert (await _join(node.url(f"vsn=2.0.0&token={alice}"), "private:bob")) == {
        "status": "error",
        "response": {"reason": "unauthorized"},
    }
    bearer = "base64url.bearer.phx." + base64.urlsafe_b64encode(alice.encode()).decode().rstrip("=")
    async with websockets.connect(node.url(), subprotocols=["phoenix", bearer]) as ws:
        assert ws.subprotocol == "phoenix"
        await ws.send(json.dumps(["1", "1", "private:alice", "phx_join", {}]))
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))[4]["status"] == "ok"
    assert await _refused(node.url("vsn=2.0.0&token=forged")) == 403
    assert "refused websocket" in node.output() and "invalid token" in node.output()


@pytest.mark.processes
async def test_required_auth_refuses_sockets_without_a_valid_token(daphne_factory):
    node = daphne_factory(DPS_SECRET_KEY=KEY, DPS_SOCKET_AUTH="required")
    assert await _refused(node.url()) == 403
    assert await _refused(node.url(f"vsn=2.0.0&token={tokens.sign('alice')[:-1]}")) == 403
    assert (await _join(node.url(f"vsn=2.0.0&token={tokens.sign('alice')}"), "room:1"))["status"] == "ok"


@pytest.mark.processes
async def test_a_hook_decides_the_identity(daphne_factory):
    node = daphne_factory(DPS_SOCKET_AUTH="tests.auth_hooks.by_name_param", DPS_JOIN_AUTHORIZER=OWN_ROOMS)
    assert (await _join(node.url("vsn=2.0.0&name=carol"), "private:carol"))["status"] == "ok"
    assert await _refused(node.url("vsn=2.0.0&name=mallory")) == 403
    assert "mallory is not welcome" in node.output()


@pytest.mark.processes
@pytest.mark.node
@pytest.mark.parametrize("how", ["params", "authToken"])
async def test_the_phoenix_client_sends_its_token_both_ways(daphne_factory, how):
    node = daphne_factory(DPS_SECRET_KEY=KEY, DPS_SOCKET_AUTH="required", DPS_JOIN_AUTHORIZER=OWN_ROOMS)
    modules = phoenix_js.install()
    outcomes = []
    for topic in ("private:dave", "private:erin"):
        process = await asyncio.create_subprocess_exec(
            "node",
            str(ROOT / "tests" / "js" / "phoenix_auth.js"),
            f"ws://127.0.0.1:{node.port}/socket",
            topic,
            how,
            tokens.sign("dave"),
            env={**phoenix_js.os.environ, "NODE_PATH": str(modules)},
            stdout=asyncio.subprocess.PIPE,
        )
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        await asyncio.wait_for(process.wait(), 30)
        outcomes.append(json.loads(line)["event"])
    assert outcomes == ["joined", "refused"]


@pytest.mark.processes
async def test_only_allowed_origins_may_open_a_socket(daphne_factory):
    """By default the site's own hosts (any port, http or https); no Origin: a non-browser client."""
    node = daphne_factory()
    assert (await _join(node.url(), "room:1"))["status"] == "ok"
    for allowed in ("http://127.0.0.1:8000", "https://localhost", "http://[::1]:3000"):
        assert (await _join(node.url(), "room:1", origin=allowed))["status"] == "ok", allowed
    assert await _refused(node.url(), origin="https://evil.example") == 403
    assert "refused websocket from origin https://evil.example" in node.output()
    chat = daphne_factory(DPS_ALLOWED_ORIGINS="https://chat.example.com,.example.org")
    assert (await _join(chat.url(), "room:1", origin="https://chat.example.com"))["status"] == "ok"
    assert (await _join(chat.url(), "room:1", origin="https://app.example.org"))["status"] == "ok"
    assert await _refused(chat.url(), origin="http://127.0.0.1:8000") == 403


@pytest.mark.processes
def test_every_process_warns_while_the_development_key_is_in_use(daphne_factory, redis_server):
    from tests.processes import TopicServerProcess

    warning = "SECRET_KEY is the development key"
    assert warning in daphne_factory().output()
    assert warning not in daphne_factory(DPS_SECRET_KEY=KEY).output()
    server = TopicServerProcess("ts-1", redis_server)
    try:
        assert warning in server.output()
    finally:
        server.stop()


DISCONNECTER = """
import django, sys
django.setup()
import pubsub
pubsub.disconnect(sys.argv[1])
"""


@pytest.mark.processes
async def test_disconnect_closes_an_identitys_sockets_on_every_node(cluster_factory):
    cluster = cluster_factory(DPS_SECRET_KEY=KEY)
    a, b = (node.url("vsn=2.0.0&token={}") for node in cluster.nodes.values())
    alice, bob = tokens.sign("alice"), tokens.sign("bob")
    sockets = {
        "alice@a": await websockets.connect(a.format(alice)),
        "alice@a2": await websockets.connect(a.format(alice)),
        "alice@b": await websockets.connect(b.format(alice)),
        "bob@a": await websockets.connect(a.format(bob)),
    }
    env = dps_env(DPS_REDIS_URL=cluster.redis.url, DPS_TOPIC_SERVERS="ts-1,ts-2", DPS_SECRET_KEY=KEY)
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", DISCONNECTER, "alice"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    for name in ("alice@a", "alice@a2", "alice@b"):
        with pytest.raises(websockets.ConnectionClosed) as closed:
            async with asyncio.timeout(10):
                await sockets[name].recv()
        assert closed.value.rcvd.code == 4001, name
    bob_ws = sockets["bob@a"]
    await bob_ws.send(json.dumps([None, "h", "phoenix", "heartbeat", {}]))
    assert json.loads(await asyncio.wait_for(bob_ws.recv(), 10))[4]["status"] == "ok", "bob stays connected"
    await bob_ws.close()


def _log_in(port: int, username: str, password: str) -> str:
    """Log in through the admin's login form on a real node; returns the session cookie header."""
    import http.cookiejar
    import re
    import urllib.parse
    import urllib.request

    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    login = f"http://127.0.0.1:{port}/admin/login/"
    page = opener.open(login, timeout=10).read().decode()
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    form = urllib.parse.urlencode(
        {"csrfmiddlewaretoken": csrf, "username": username, "password": password, "next": "/admin/"}
    ).encode()
    opener.open(urllib.request.Request(login, data=form, headers={"Referer": login}), timeout=10).read()
    cookies = {cookie.name: cookie.value for cookie in jar}
    assert "sessionid" in cookies, "the login did not succeed"
    return "; ".join(f"{name}={value}" for name, value in cookies.items())


@pytest.mark.processes
async def test_a_logged_in_session_identifies_the_socket(daphne_factory, tmp_path):
    """A page of the same site needs no token: its session cookie makes the socket its user's."""
    from tests.processes import prepare_database

    database = prepare_database(tmp_path / "db.sqlite3", username="frank", password="frank-pass")
    node = daphne_factory(**database, DPS_SECRET_KEY=KEY, DPS_SOCKET_AUTH="required", DPS_JOIN_AUTHORIZER=OWN_ROOMS)
    assert await _refused(node.url()) == 403  # required: no token, no session
    cookie = _log_in(node.port, "frank", "frank-pass")
    headers = {"Cookie": cookie}
    assert (await _join(node.url(), "private:1", additional_headers=headers))["status"] == "ok"  # frank is user 1
    assert (await _join(node.url(), "private:2", additional_headers=headers))["status"] == "error"
