"""``manage.py dpstoken IDENTITY``: print one socket token for IDENTITY (for tools, tests, other services)."""

from django.core.management.base import BaseCommand

from pubsub.socket import tokens


class Command(BaseCommand):
    help = "Print a signed socket token for IDENTITY (valid DPS_TOKEN_MAX_AGE seconds; signed with DPS_SECRET_KEY)."

    def add_arguments(self, parser):
        parser.add_argument("identity", help="who the socket belongs to, e.g. a user id")

    def handle(self, *args, identity, **options):
        self.stdout.write(tokens.sign(identity))
