import pytest

from tests.processes import DaphneNode


@pytest.fixture
def daphne_node():
    """One embedded DPS node (no Redis) in a real daphne process."""
    node = DaphneNode()
    yield node
    node.stop()


@pytest.fixture
def daphne_factory():
    """Start daphne nodes with given DPS_* settings; all are stopped at teardown."""
    started = []

    def start(**settings):
        node = DaphneNode(**settings)
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()
