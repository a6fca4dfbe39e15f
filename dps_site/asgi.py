"""ASGI entry point: ``daphne dps_site.asgi:application``.

HTTP goes to Django; websockets on ``/socket/websocket`` speak Phoenix V2 (pubsub/asgi.py).
"""

import os
import sys

from django.core.asgi import get_asgi_application
from django.core.exceptions import ImproperlyConfigured

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dps_site.settings")
# A wrong DPS_* setting fails at start with one clear line naming it, not daphne's traceback.
try:
    django_application = get_asgi_application()  # sets Django up before the consumers import models

    from pubsub.asgi import dps_application

    application = dps_application(django_application)
except ImproperlyConfigured as exc:
    sys.exit(f"DPS configuration error: {exc}")
