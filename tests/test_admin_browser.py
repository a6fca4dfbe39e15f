"""The ownership page in real headless Chromium against a running cluster (Debian's chromium + chromedriver)."""

import asyncio
import json
import os
from pathlib import Path

import pytest
import websockets

from pubsub.core.ring import HashRing
from tests.browsers import needs_chromium
from tests.conftest import Cluster
from tests.processes import prepare_database

pytestmark = [pytest.mark.processes, needs_chromium]

TOPIC = "topics:matrix"
LOAD_TIMEOUT = 20


@pytest.fixture
def cluster_with_admin(tmp_path):
    cluster = Cluster(DPS_LIVENESS_TTL="1.5", **prepare_database(tmp_path / "admin.sqlite3", password="admin-pass"))
    yield cluster
    cluster.stop()


async def test_ownership_page_in_chromium(cluster_with_admin, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    cluster = cluster_with_admin
    async with (
        websockets.connect(cluster.nodes["ws-a"].url()) as a,
        websockets.connect(cluster.nodes["ws-b"].url()) as b,
    ):
        for ws in (a, b):
            await ws.send(json.dumps(["1", "1", TOPIC, "phx_join", {}]))
            await asyncio.wait_for(ws.recv(), 10)
        for n in range(3):
            await a.send(json.dumps(["1", str(n), TOPIC, "publish", ["event", {"message": "red pill or blue pill?"}]]))
        base = f"http://127.0.0.1:{cluster.nodes['ws-a'].port}"

        def log_in_and_find_row():
            browser.get(f"{base}/admin/login/?next=/admin/ownership/")
            browser.find_element(By.NAME, "username").send_keys("admin")
            browser.find_element(By.NAME, "password").send_keys("admin-pass")
            browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
            # The page refreshes itself every 5 s, so the row appears without a reload.
            seq_cell = f'tr.dps-topic[data-topic="{TOPIC}"] td:nth-child(4)'
            WebDriverWait(browser, LOAD_TIMEOUT).until(
                expected_conditions.text_to_be_present_in_element((By.CSS_SELECTOR, seq_cell), "3")
            )
            row = browser.find_element(By.CSS_SELECTOR, f'tr.dps-topic[data-topic="{TOPIC}"]')
            cells = [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
            counts = {c.get_attribute("data-node"): c.text for c in row.find_elements(By.CSS_SELECTOR, "td[data-node]")}
            shot = Path(os.environ.get("DPS_SCREENSHOT_TO", tmp_path / "ownership.png"))
            browser.save_screenshot(str(shot))
            return cells, counts, browser.title

        cells, counts, title = await asyncio.to_thread(log_in_and_find_row)
    assert "Topic ownership" in title
    assert cells[0] == TOPIC and cells[1] == HashRing(["ts-1", "ts-2"]).owner(TOPIC)
    assert cells[2] == "2" and cells[3] == "3"  # subscribers, last sequence number
    assert counts == {"ws-a": "1", "ws-b": "1"}
