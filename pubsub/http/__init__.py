"""The HTTP side and its server-code counterparts: the publish/presence API, publishing and
presence from Python, the ownership report behind the admin page, Prometheus metrics."""
