"""The settings table in pubsub/settings_reference.py names every DPS_* setting and layer option the code uses, and nothing else.

The configuration page of the docs is rendered from that table (docs/hooks/settings_reference.py),
so a setting missing here is a setting missing from the docs.
"""

import importlib.util
import inspect
import re
from pathlib import Path

import pytest

from pubsub import conf
from pubsub.layer import TopicRingLayer

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("pubsub", "topicserver", "dps_site")
NAME = re.compile(r"\bDPS_[A-Z0-9_]*[A-Z0-9]\b")


def used_names() -> dict[str, list[str]]:
    """Every DPS_* name in the code, templates and messages of the scanned packages -> where it appears.
    pubsub/settings_reference.py is left out: it holds the table, so every entry would count as used."""
    found: dict[str, list[str]] = {}
    for package in SCANNED:
        for path in sorted((ROOT / package).rglob("*")):
            if not path.is_file() or "__pycache__" in path.parts or path == ROOT / "pubsub" / "settings_reference.py":
                continue
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue
            for name in set(NAME.findall(text)):
                found.setdefault(name, []).append(str(path.relative_to(ROOT)))
    return found


def layer_parameters() -> dict[str, inspect.Parameter]:
    parameters = dict(inspect.signature(TopicRingLayer.__init__).parameters)
    parameters.pop("self")
    return parameters


def test_the_scan_finds_the_settings_it_should():
    used = used_names()
    assert {"DPS_REDIS_URL", "DPS_RING", "DPS_LIVENESS_TTL", "DPS_HISTORY_SIZE", "DPS_CHANNELS"} <= set(used)


def test_every_dps_name_the_code_uses_has_an_entry_with_a_meaning():
    entries = {entry.name: entry for entry in conf.SETTINGS}
    missing = {name: where for name, where in used_names().items() if name not in entries}
    assert not missing, f"add these to pubsub.conf.SETTINGS: {missing}"
    for entry in conf.SETTINGS:
        assert entry.meaning.strip(), f"{entry.name} has no meaning"
        assert entry.type.strip(), f"{entry.name} has no type"
        assert "\n" not in entry.meaning, f"{entry.name}: the meaning is one line"


def test_every_entry_names_a_setting_something_uses():
    used = used_names()
    unused = [entry.name for entry in conf.SETTINGS if entry.name not in used]
    assert not unused, f"nothing in {', '.join(SCANNED)} uses {unused}: remove them from pubsub.conf.SETTINGS"


def test_no_setting_is_listed_twice():
    names = [entry.name for entry in conf.SETTINGS]
    assert len(names) == len(set(names))
    assert all(entry.kind in (conf.DPS, conf.SITE) for entry in conf.SETTINGS)


def test_defaults_are_the_dps_settings_of_the_table():
    assert conf.DEFAULTS == {entry.name: entry.default for entry in conf.SETTINGS if entry.kind == conf.DPS}
    for name, value in conf.DEFAULTS.items():
        assert conf.default(name) == value
    # what pubsub reads through setting() with no project value
    assert conf.DEFAULTS["DPS_CHANNELS"] == [("*", "pubsub.channels.PublishChannel")]
    assert conf.DEFAULTS["DPS_MAX_FRAME_BYTES"] == 65536 and conf.DEFAULTS["DPS_ALLOWED_ORIGINS"] is None


def test_every_layer_parameter_has_an_entry_with_a_meaning():
    parameters = layer_parameters()
    missing = sorted(set(parameters) - set(conf.LAYER_OPTIONS))
    assert not missing, f"add these TopicRingLayer.__init__ parameters to pubsub.conf.LAYER_OPTIONS: {missing}"
    extra = sorted(set(conf.LAYER_OPTIONS) - set(parameters))
    assert not extra, f"TopicRingLayer.__init__ has no parameter {extra}: remove them from pubsub.conf.LAYER_OPTIONS"
    for name, option in conf.LAYER_OPTIONS.items():
        assert option.meaning.strip() and option.type.strip(), name
        assert parameters[name].default is not inspect.Parameter.empty, f"{name} has no default"


def test_layer_options_and_environment_variables_point_at_each_other():
    entries = {entry.name: entry for entry in conf.SETTINGS}
    for name, option in conf.LAYER_OPTIONS.items():
        if option.env:
            assert option.env in entries, f"{name}: {option.env} is not in SETTINGS"
    for entry in conf.SETTINGS:
        if entry.layer_option:
            assert entry.layer_option in conf.LAYER_OPTIONS, entry.name


@pytest.mark.parametrize("entry", [e for e in conf.SETTINGS if e.layer_option], ids=lambda e: e.name)
def test_dps_site_defaults_agree_with_the_layer(entry):
    """With no variable set, dps_site passes the layer what the layer would default to anyway."""
    layer_default = layer_parameters()[entry.layer_option].default
    value = entry.default
    if entry.name == "DPS_TOPIC_SERVERS":
        value, layer_default = value.split(","), list(layer_default)
    assert value == layer_default and type(value) is type(layer_default)


def test_the_page_renders_every_entry():
    spec = importlib.util.spec_from_file_location(
        "settings_reference", ROOT / "docs" / "hooks" / "settings_reference.py"
    )
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    page = hook.render()
    for entry in conf.SETTINGS:
        assert f"`{entry.name}`" in page
    for name, parameter in layer_parameters().items():
        assert f"`{name}`" in page and f"`{parameter.default!r}`" in page
