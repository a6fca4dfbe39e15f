"""``manage.py runtopicserver --name ts-1``: flags, signals and logging around TopicServer."""

import asyncio
import logging
import signal

from channels.layers import get_channel_layer
from django.core.management.base import BaseCommand, CommandError
from prometheus_client import start_http_server

from pubsub.conf import check_redis_url
from pubsub.core.tasks import stop_tasks
from pubsub.exceptions import ConfigurationError, TransportError
from pubsub.http.metrics import topic_server_registry
from pubsub.socket.tokens import warn_if_development_key
from pubsub.transport.factory import redis_transport
from pubsub.transport.redis_clients import connection_problem
from topicserver.server import TopicServer

logger = logging.getLogger("topicserver")


class Command(BaseCommand):
    help = (
        "Run one topic server: the owner of the topics the hash ring gives it (DPS_RING=live: the running "
        "topic servers; DPS_RING=static: DPS_TOPIC_SERVERS)."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--name", required=True, help="this server's name; with DPS_RING=static it must be in DPS_TOPIC_SERVERS"
        )
        configured = (self.layer.redis_url or "unset").replace("%", "%%")
        parser.add_argument(
            "--redis-url",
            default=self.layer.redis_url,
            help=f"the Redis to serve over (default: DPS_REDIS_URL, {configured})",
        )
        parser.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port (default: none)")
        parser.add_argument(
            "--metrics-host", default="127.0.0.1", help="address of the metrics port (default: %(default)s)"
        )

    @property
    def layer(self):
        """The nodes' layer, never started: the one source of the Redis URL, ring and TTL a topic server
        shares with them (CHANNEL_LAYERS["default"]["CONFIG"]; in dps_site, the DPS_* variables)."""
        return get_channel_layer()

    def handle(self, *args, name, redis_url, metrics_port, metrics_host, **options):
        ring = self.layer.static_ring
        if not self.layer.configured_live_ring and name not in ring:
            raise CommandError(
                f"--name {name!r} is not in the ring DPS_TOPIC_SERVERS={','.join(ring.members)}: "
                "add it to DPS_TOPIC_SERVERS of every process, or run one of those names."
            )
        if not redis_url:
            raise CommandError(
                "runtopicserver needs Redis: set DPS_REDIS_URL (e.g. redis://127.0.0.1:6379/0) or pass --redis-url. "
                "Without Redis, daphne runs its topic servers in-process (the embedded mode)."
            )
        source = "DPS_REDIS_URL" if redis_url == self.layer.redis_url else "--redis-url"
        try:
            check_redis_url(redis_url, source)
        except ConfigurationError as exc:
            raise CommandError(str(exc)) from None
        problem = connection_problem(redis_url)
        if problem:
            raise CommandError(f"{source}={redis_url!r}: {problem}, or point {source} at a running one.")
        asyncio.run(self.serve(name, redis_url, source, metrics_host, metrics_port))

    async def serve(self, name: str, redis_url: str, source: str, metrics_host: str, metrics_port: int | None) -> None:
        layer = self.layer
        transport = redis_transport(redis_url, maxlen=layer.stream_maxlen, wait=layer.redis_wait)
        try:
            await transport.ping()
        except TransportError as exc:
            await transport.close()
            reason = str(exc).rstrip(".")
            raise CommandError(f"{source}: {reason}. Start Redis there, or point {source} at a running one.") from None
        warn_if_development_key(logger)
        members = None if layer.configured_live_ring else list(layer.static_ring.members)
        server = TopicServer(
            name,
            transport,
            members=members,
            liveness_ttl=layer.liveness_ttl,
            presence_window=layer.presence_window,
            history_size=layer.history_size,
            history_ttl=layer.history_ttl,
        )
        if metrics_port is not None:
            start_http_server(metrics_port, addr=metrics_host, registry=topic_server_registry(server))
            logger.info("topic server %s: metrics on http://%s:%d/metrics", name, metrics_host, metrics_port)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        running = loop.create_task(server.run(), name=f"topic-server-{name}")
        stopping = loop.create_task(stop.wait())
        try:
            await asyncio.wait([running, stopping], return_when=asyncio.FIRST_COMPLETED)
            if stop.is_set() and server.live_ring and not running.done():
                await server.leave()  # hand over before stopping: no gap for subscribers
        finally:
            await stop_tasks([running, stopping])
            try:
                await transport.forget("topicserver", name)
            except TransportError as exc:
                logger.warning("could not unregister %s: %s", name, exc)
            await transport.close()
        if not running.cancelled() and running.exception() is not None:
            raise CommandError(f"topic server {name} failed: {running.exception()!r}")
        logger.info("topic server %s stopped (%s)", name, dict(server.stats))
