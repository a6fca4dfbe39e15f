import pytest

from tests.processes import DaphneNode, RedisClusterServer, RedisServer, TopicServerProcess, stop_all

# What the multi-process suites run on: one Redis, and a Redis Cluster of 3 masters.
REDIS_KINDS = ["redis", "redis-cluster"]


@pytest.fixture
def daphne_node():
    """One embedded DPS node (no Redis) in a real daphne process."""
    node = DaphneNode()
    yield node
    node.stop()


@pytest.fixture
def daphne_factory():
    """Start daphne nodes with given DPS_* settings; all are stopped at teardown."""
    started = []

    def start(**settings):
        node = DaphneNode(**settings)
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()


@pytest.fixture
def redis_server():
    """A private redis-server for one test; never the machine's 6379."""
    server = RedisServer()
    yield server
    server.stop()


class Cluster:
    """redis-server (one, or a Redis Cluster), topic servers and daphne nodes as real processes;
    stop() ends them all."""

    def __init__(
        self,
        topic_servers=("ts-1", "ts-2"),
        nodes=("ws-a", "ws-b"),
        topic_server_args=None,
        redis="redis",
        **settings,
    ):
        self.topic_server_args = topic_server_args or {}
        if redis == "redis":
            self.redis = RedisServer()
        else:  # "redis-cluster": 3 masters; "redis-cluster-replicated": and a replica each
            self.redis = RedisClusterServer(masters=3, replicas=int(redis == "redis-cluster-replicated"))
        self.settings = {"DPS_TOPIC_SERVERS": ",".join(topic_servers), "DPS_REDIS_URL": self.redis.url, **settings}
        self.topic_servers = {}
        self.nodes = {}
        try:  # each kind side by side: their Python start-ups overlap
            for name in topic_servers:
                self.start_topic_server(name, wait=False)
            for server in self.topic_servers.values():
                server.wait_ready()
            for name in nodes:
                self.start_node(name, wait=False)
            for node in self.nodes.values():
                node.wait_ready()
        except BaseException:
            self.stop()
            raise

    def start_topic_server(self, name, wait=True):
        args = self.topic_server_args.get(name, ())
        self.topic_servers[name] = TopicServerProcess(name, self.redis, args, wait, **self.settings)
        return self.topic_servers[name]

    def start_node(self, name, application="dps_site.asgi:application", wait=True):
        self.nodes[name] = DaphneNode(application, wait=wait, DPS_NODE=name, **self.settings)
        return self.nodes[name]

    def stop(self):
        stop_all(self.nodes.values())  # nodes drain first, all at once; then the owners; then Redis
        stop_all(self.topic_servers.values())
        self.redis.stop()


@pytest.fixture(scope="module", params=REDIS_KINDS)
def cluster(request):
    """2 topic servers and 2 daphne nodes over a private Redis (one, then a Redis Cluster), shared
    by a module's tests."""
    started = Cluster(redis=request.param)
    yield started
    started.stop()


@pytest.fixture
def cluster_factory():
    """Clusters a test may break (kill, restart); all are stopped at teardown."""
    started = []

    def start(**kwargs):
        started.append(Cluster(**kwargs))
        return started[-1]

    yield start
    for each in started:
        each.stop()


@pytest.fixture
def browser_factory():
    """Start headless Chromium browsers (each its own user); all are quit at teardown."""
    from tests.browsers import start_chromium

    started = []

    def start():
        started.append(start_chromium())
        return started[-1]

    yield start
    for session in started:
        session.quit()


@pytest.fixture
def browser(browser_factory):
    return browser_factory()


@pytest.fixture
async def open_communicator():
    """Connect Channels' WebsocketCommunicator to an ASGI app; all are disconnected and the
    layer flushed at teardown."""
    from channels.layers import get_channel_layer
    from channels.testing import WebsocketCommunicator

    opened = []

    async def open_one(application, path="/socket/websocket?vsn=2.0.0"):
        communicator = WebsocketCommunicator(application, path)
        connected, _ = await communicator.connect(5)
        assert connected, f"connect refused for {path}"
        opened.append(communicator)
        return communicator

    yield open_one
    for communicator in opened:
        await communicator.disconnect()
    await get_channel_layer().flush()
