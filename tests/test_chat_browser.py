"""The browser chat (/chat/) in headless Chromium: two users, in two browsers, on two nodes.

Alice logs in, Bob signs up; each opens #lobby, sees the other online (phoenix.js Presence)
and the other's messages; when Bob leaves, Alice's list drops him.
"""

import pytest

from tests.browsers import needs_chromium
from tests.conftest import Cluster
from tests.processes import prepare_database

pytestmark = [pytest.mark.processes, needs_chromium]

WAIT = 20


@pytest.fixture
def chat_cluster(tmp_path):
    cluster = Cluster(DPS_LIVENESS_TTL="1.5", **prepare_database(tmp_path / "chat.sqlite3", "alice", "alice-pass-1"))
    yield cluster
    cluster.stop()


def online(browser) -> set[str]:
    from selenium.webdriver.common.by import By

    return {item.get_attribute("data-user") for item in browser.find_elements(By.CSS_SELECTOR, "#online li")}


def messages(browser) -> list[str]:
    from selenium.webdriver.common.by import By

    return [item.text for item in browser.find_elements(By.CSS_SELECTOR, "#messages li")]


def wait_until(browser, condition, what):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        WebDriverWait(browser, WAIT).until(lambda _: condition(browser))
    except TimeoutException:
        raise AssertionError(f"{what}; online {online(browser)}, messages {messages(browser)}") from None


def say(browser, text):
    from selenium.webdriver.common.by import By

    browser.find_element(By.ID, "body").send_keys(text)
    browser.find_element(By.CSS_SELECTOR, "#say button").click()


def log_in_alice(browser, base):
    from selenium.webdriver.common.by import By

    browser.get(f"{base}/chat/")  # -> the login page
    browser.find_element(By.CSS_SELECTOR, "#login input[name=username]").send_keys("alice")
    browser.find_element(By.CSS_SELECTOR, "#login input[name=password]").send_keys("alice-pass-1")
    browser.find_element(By.CSS_SELECTOR, "#login button").click()
    wait_until(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#rooms a"), "alice sees the rooms")


def sign_up_bob(browser, base):
    from selenium.webdriver.common.by import By

    browser.get(f"{base}/chat/login/")
    browser.find_element(By.CSS_SELECTOR, "#signup input[name=username]").send_keys("bob")
    browser.find_element(By.CSS_SELECTOR, "#signup input[name=password1]").send_keys("a-long-secret-42")
    browser.find_element(By.CSS_SELECTOR, "#signup input[name=password2]").send_keys("a-long-secret-42")
    browser.find_element(By.CSS_SELECTOR, "#signup button").click()
    wait_until(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#rooms a"), "bob signed up")


def test_two_users_chat_and_see_each_other_online(chat_cluster, browser_factory):
    from selenium.webdriver.common.by import By

    alice, bob = browser_factory(), browser_factory()
    base_a = f"http://127.0.0.1:{chat_cluster.nodes['ws-a'].port}"
    base_b = f"http://127.0.0.1:{chat_cluster.nodes['ws-b'].port}"

    log_in_alice(alice, base_a)
    alice.find_element(By.LINK_TEXT, "#lobby").click()
    wait_until(alice, lambda b: online(b) == {"alice"}, "alice sees herself online")

    sign_up_bob(bob, base_b)
    bob.get(f"{base_b}/chat/lobby/")

    wait_until(bob, lambda b: online(b) == {"alice", "bob"}, "bob sees both online")
    wait_until(alice, lambda b: online(b) == {"alice", "bob"}, "alice sees bob arrive")

    say(alice, "hello bob")
    wait_until(bob, lambda b: "alice hello bob" in messages(b), "bob gets alice's message")
    say(bob, "hi alice")
    wait_until(alice, lambda b: messages(b) == ["alice hello bob", "bob hi alice"], "alice gets both, in order")

    bob.get(f"{base_b}/chat/")  # bob leaves the room
    wait_until(alice, lambda b: online(b) == {"alice"}, "alice sees bob leave")


# A page whose websocket never opens (a proxy or an antivirus that kills upgrades): it errors at once.
BROKEN_WEBSOCKET = """
window.WebSocket = class {
  constructor() {
    this.readyState = 0;
    setTimeout(() => {
      this.readyState = 3;
      if (this.onerror) this.onerror(new Event("error"));
      if (this.onclose) this.onclose({ code: 1006, reason: "", wasClean: false });
    }, 20);
  }
  send() {}
  close() { this.readyState = 3; }
};
"""


def test_a_browser_whose_websocket_cannot_connect_falls_back_to_long_polling(chat_cluster, browser_factory):
    """The chat page's phoenix.js (longPollFallbackMs, as a new Phoenix project) moves to LongPoll
    and chats with a websocket user on the other node: presence and messages both ways."""

    alice, bob = browser_factory(), browser_factory()
    bob.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": BROKEN_WEBSOCKET})
    base_a = f"http://127.0.0.1:{chat_cluster.nodes['ws-a'].port}"
    base_b = f"http://127.0.0.1:{chat_cluster.nodes['ws-b'].port}"

    log_in_alice(alice, base_a)
    alice.get(f"{base_a}/chat/lobby/")
    wait_until(alice, lambda b: online(b) == {"alice"}, "alice sees herself online")

    sign_up_bob(bob, base_b)
    bob.get(f"{base_b}/chat/lobby/")

    wait_until(bob, lambda b: online(b) == {"alice", "bob"}, "bob, on long polling, sees both online")
    wait_until(alice, lambda b: online(b) == {"alice", "bob"}, "alice sees bob arrive")
    assert bob.execute_script("return sessionStorage.getItem('phx:fallback:LongPoll')") == "true"
    say(alice, "hello bob")
    wait_until(bob, lambda b: "alice hello bob" in messages(b), "bob gets alice's message over long polling")
    say(bob, "hi alice")
    wait_until(alice, lambda b: messages(b) == ["alice hello bob", "bob hi alice"], "alice gets bob's, in order")
