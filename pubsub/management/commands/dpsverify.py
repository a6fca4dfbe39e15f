"""``manage.py dpsverify --url ws://127.0.0.1:4000/socket ...``: check DPS's delivery promise
against a running DPS (pubsub/verification/). Exit 0: nothing lost, duplicated or reordered;
1: something was (or nothing was accepted); 2: bad arguments, or it could not connect."""

import argparse
import asyncio
import sys

from django.core.management.base import BaseCommand, CommandError

from pubsub.verification import report
from pubsub.verification.checker import check
from pubsub.verification.plan import socket_url
from pubsub.verification.workload import CannotConnect, Options, Workload

BAD_ARGUMENTS = 2


class Command(BaseCommand):
    help = (
        "Run subscribers and publishers against a running DPS, then report per topic what was accepted, "
        "lost, duplicated, reordered, refused and unanswered, and the latency. The last line is "
        "'verify: accepted N, lost L, duplicated D, reordered R, refused F, p99 X ms'. Exit 0 when nothing "
        "was lost, duplicated or reordered; 1 otherwise (or when nothing was accepted); 2 for bad arguments "
        "or when it cannot connect."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--url",
            action="append",
            required=True,
            help="a Phoenix socket endpoint, e.g. ws://127.0.0.1:4000/socket (/websocket?vsn=2.0.0 is added); "
            "repeat it for every node: subscribers are spread round robin over them",
        )
        parser.add_argument("--topics", type=int, default=20, help="topics (default 20)")
        parser.add_argument("--subscribers", type=int, default=100, help="subscribers, one socket each (default 100)")
        parser.add_argument("--rate", type=float, default=50.0, help="publishes per second in all (default 50)")
        parser.add_argument("--duration", type=float, default=20.0, help="seconds of publishing (default 20)")
        parser.add_argument(
            "--settle",
            type=float,
            default=10.0,
            help="seconds to wait at most after the last publish for replies and deliveries (default 10)",
        )
        parser.add_argument(
            "--recover",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="subscribers join with recover and rejoin with their last position after a reconnect "
            "(default); --no-recover: plain joins, and a subscriber that has to rejoin is not counted",
        )
        parser.add_argument(
            "--socket-rate",
            type=float,
            default=40.0,
            help="publishes per second per publisher socket, at most (default 40; keep it under the "
            "server's DPS_PUBLISH_RATE, 50 by default): the rate is spread over as many sockets as it needs",
        )
        parser.add_argument(
            "--connect-timeout", type=float, default=5.0, help="seconds to wait for a socket to open (default 5)"
        )

    def handle(self, *args, **options):
        settings = self._options(options)
        workload = Workload(settings, say=self.stdout.write)
        try:
            asyncio.run(workload.run())
        except CannotConnect as exc:
            raise CommandError(str(exc), returncode=BAD_ARGUMENTS) from None
        result = check(workload.publishes, workload.subscriber_records())
        for line in report.lines(result):
            self.stdout.write(line)
        self.stdout.flush()
        if not result.total.accepted:
            self.stderr.write("dpsverify: no publish was accepted, so nothing was verified")
        sys.exit(0 if result.passed and result.total.accepted else 1)

    @staticmethod
    def _options(options) -> Options:
        problems = []
        for name in ("topics", "subscribers"):
            if options[name] < 1:
                problems.append(f"--{name} must be at least 1")
        for name in ("rate", "duration", "socket_rate", "connect_timeout"):
            if not options[name] > 0:
                problems.append(f"--{name.replace('_', '-')} must be more than 0")
        if not options["settle"] >= 0:
            problems.append("--settle must be 0 or more")
        if options["subscribers"] < options["topics"]:
            problems.append("--subscribers must be at least --topics (every topic needs a subscriber)")
        for url in options["url"]:
            try:
                socket_url(url)
            except ValueError as exc:
                problems.append(f"--url: {exc}")
        if problems:
            raise CommandError("; ".join(problems), returncode=BAD_ARGUMENTS)
        return Options(
            urls=options["url"],
            topics=options["topics"],
            subscribers=options["subscribers"],
            rate=options["rate"],
            duration=options["duration"],
            settle=options["settle"],
            recover=options["recover"],
            socket_rate=options["socket_rate"],
            connect_timeout=options["connect_timeout"],
        )
