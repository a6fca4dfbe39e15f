"""MkDocs hook: renders the settings tables of pubsub/settings_reference.py into the configuration page.

The page (docs/configuration.md) holds the markers below; this hook replaces them, and what lies
between, with three tables:
DPS's own Django settings, the environment variables of dps_site, and the channel layer's options
(their defaults read from ``TopicRingLayer.__init__``'s signature). Nothing in the page is written
by hand that the code also says.
"""

from __future__ import annotations

import inspect
import os
import sys
from pathlib import Path

MARKER = "<!-- settings-reference -->"
END_MARKER = "<!-- /settings-reference -->"  # what lies between (a note for plain Markdown readers) is replaced
PAGE = "configuration.md"
ROOT = Path(__file__).resolve().parents[2]


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri != PAGE:
        return markdown
    start, end = markdown.find(MARKER), markdown.find(END_MARKER)
    if start < 0 or end < start:
        raise ValueError(f"{PAGE} lost its markers {MARKER} ... {END_MARKER}")
    return markdown[:start] + render() + markdown[end + len(END_MARKER) :]


def _setup_django():
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dps_site.settings")
    import django
    from django.apps import apps

    if not apps.ready:
        django.setup()


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _code(value) -> str:
    return f"`{value!r}`"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _site_value(value) -> str:
    """A default as it is written in the environment (no quotes)."""
    return f"`{value}`"


def render() -> str:
    """The three tables, as Markdown."""
    _setup_django()
    from pubsub import conf
    from pubsub.layer import TopicRingLayer

    dps_rows = []
    for entry in conf.SETTINGS:
        if entry.kind != conf.DPS:
            continue
        default = entry.shown_default or _code(entry.default)
        if entry.site_default:
            default += f"; dps_site: {entry.site_default}"
        name = f"`{entry.name}`" + ("" if entry.env else " (not read from the environment)")
        dps_rows.append([name, default, entry.type, entry.meaning])

    site_rows = []
    for entry in conf.SETTINGS:
        if entry.kind != conf.SITE:
            continue
        name = f"`{entry.name}`" + ("" if entry.env else " (derived, not read from the environment)")
        default = entry.shown_default or _site_value(entry.default)
        site_rows.append([name, default, entry.type, entry.meaning, entry.feeds or "-"])

    parameters = dict(inspect.signature(TopicRingLayer.__init__).parameters)
    parameters.pop("self")
    layer_rows = []
    for name, parameter in parameters.items():
        option = conf.LAYER_OPTIONS.get(name)
        if option is None:
            raise ValueError(f"TopicRingLayer.__init__ has a parameter {name!r} that pubsub.conf.LAYER_OPTIONS lacks")
        layer_rows.append(
            [
                f"`{name}`",
                _code(parameter.default),
                option.type,
                option.meaning,
                f"`{option.env}`" if option.env else "-",
            ]
        )

    return "\n\n".join(
        [
            "## DPS settings",
            "Django settings with DPS's defaults (`pubsub.conf.DEFAULTS`): a project that adds DPS sets only "
            "what it changes, as Python values. `dps_site` reads each from the environment variable of the "
            "same name (numbers as numbers, lists comma-separated).",
            _table(["setting", "default", "type", "meaning"], dps_rows),
            "## Environment variables of dps_site",
            "What `dps_site/settings.py` reads from the environment and hands on: to the channel layer's "
            "options (below), to Django's own settings, or to the management commands. A project of your "
            "own sets what the last column names instead.",
            _table(["variable", "default", "type", "meaning", "sets"], site_rows),
            "## Channel layer options",
            '`CHANNEL_LAYERS["default"]["CONFIG"]`: the keyword arguments of `pubsub.layer.TopicRingLayer`, '
            "with the defaults of its signature. `runtopicserver` reads them from there too.",
            _table(["option", "default", "type", "meaning", "dps_site sets it from"], layer_rows),
        ]
    )
