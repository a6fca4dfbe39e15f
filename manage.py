#!/usr/bin/env python
"""Django's command-line utility for DPS (runtopicserver, createsuperuser, ...)."""

import os
import sys


def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dps_site.settings")
    from django.core.management import execute_from_command_line

    from pubsub.exceptions import ConfigurationError

    try:
        execute_from_command_line(sys.argv)
    except ConfigurationError as exc:  # a wrong DPS_* setting: its message says which and how to fix it
        sys.exit(f"DPS configuration error: {exc}")


if __name__ == "__main__":
    main()
