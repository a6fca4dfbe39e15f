"""The layout shows the design: folders by where code runs, imports that point one way, no circle,
no module too long to read, and the import paths the documentation gives still working."""

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pubsub", "topicserver", "bench")
MAX_LINES = 400

# What each folder may import of DPS, besides itself (and pubsub.exceptions, which everything may).
ALLOWED = {
    "pubsub.core": (),
    "pubsub.transport": ("pubsub.core",),
    "pubsub.node": ("pubsub.core", "pubsub.transport"),
    "pubsub.socket": ("pubsub.core", "pubsub.conf"),
    "pubsub.http": ("pubsub.core", "pubsub.conf", "pubsub.transport", "pubsub.presence"),
    "topicserver": ("pubsub.core", "pubsub.transport"),  # the owner itself (not its commands or runcluster)
}
COMMANDS = ("topicserver.management", "topicserver.localcluster")


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            found[name] = path
    return found


def imported(path: Path, known: set[str]) -> set[str]:
    """Every DPS module path imports, anywhere in it (functions and TYPE_CHECKING blocks too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                names.add(full if full in known else node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name in known}


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imported(path, known) - {name} for name, path in found.items()}


def test_no_import_circles():
    edges = graph()
    state: dict[str, int] = {}
    circles = []

    def visit(module, trail):
        state[module] = 1
        for target in sorted(edges[module]):
            if state.get(target) == 1:
                circles.append(" -> ".join([*trail[trail.index(target) :], target]))
            elif target not in state:
                visit(target, [*trail, target])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert not circles, "import circles:\n" + "\n".join(circles)


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_imports_point_one_way(folder):
    allowed = (folder, "pubsub.exceptions", *ALLOWED[folder])
    wrong = []
    for module, targets in graph().items():
        if module != folder and not module.startswith(folder + "."):
            continue
        if module.startswith(COMMANDS):
            continue
        for target in sorted(targets):
            if not any(target == a or target.startswith(a + ".") for a in allowed):
                wrong.append(f"{module} imports {target}")
    assert not wrong, f"{folder} may import only {allowed}:\n" + "\n".join(wrong)


def test_no_module_is_too_long_to_read():
    long = [
        f"{path.relative_to(ROOT)}: {n} lines"
        for path in modules().values()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    ]
    assert not long, f"over {MAX_LINES} lines (split by concept):\n" + "\n".join(long)


@pytest.mark.parametrize(
    "path, names",
    [
        ("pubsub.layer", ["TopicRingLayer"]),
        ("pubsub.channels", ["Channel", "PublishChannel", "Reply", "Stop"]),
        ("pubsub.asgi", ["dps_application", "websocket_application"]),
        ("pubsub.urls", ["urlpatterns"]),
        ("pubsub", ["publish", "apublish", "disconnect", "adisconnect"]),
        ("pubsub.presence", ["list", "alist", "stats"]),
        ("pubsub.tokens", ["sign", "verify"]),
        ("pubsub.socket_auth", ["Refused"]),
        ("pubsub.authorization", ["allow_all"]),
        ("pubsub.exceptions", ["ChannelFull", "ConfigurationError", "TransportError"]),
        ("pubsub.conf", ["DEFAULTS", "setting"]),
    ],
)
def test_the_documented_import_paths_still_work(path, names):
    module = importlib.import_module(path)
    assert [name for name in names if not hasattr(module, name)] == []
