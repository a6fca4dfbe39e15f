"""Which web pages may open a socket: the Origin check, before the upgrade.

Without it, any page on any site could open a socket as its visitor (with the
visitor's cookies, once session auth is on). Channels' ``OriginValidator`` does
the matching (a pattern without a scheme matches that host, or with a leading
dot its subdomains, on any port and scheme); DPS differs in one way: a request
with no Origin header, which browsers always send, is a non-browser client and
is let through.
"""

from __future__ import annotations

import logging

from channels.security.websocket import OriginValidator

__all__ = ["BrowserOriginValidator"]

logger = logging.getLogger(__name__)


class BrowserOriginValidator(OriginValidator):
    """Refuses (HTTP 403) a websocket whose Origin is not allowed; no Origin is allowed."""

    def __init__(self, application, allowed_origins, on_refused=None):
        super().__init__(application, list(allowed_origins))
        self.on_refused = on_refused

    def valid_origin(self, parsed_origin) -> bool:
        if parsed_origin is None:
            return True
        if self.validate_origin(parsed_origin):
            return True
        logger.info("refused websocket from origin %s (DPS_ALLOWED_ORIGINS)", parsed_origin.geturl())
        if self.on_refused is not None:
            self.on_refused()
        return False
