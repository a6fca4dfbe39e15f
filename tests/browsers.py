"""Headless Chromium for browser tests (Debian's chromium + chromedriver; scripts/test installs them)."""

import shutil

import pytest

NO_CHROMIUM = "needs Debian's chromium and chromium-driver on PATH (scripts/test installs them as root or with sudo)"
needs_chromium = pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("chromedriver")), reason=NO_CHROMIUM)

FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1100",
)


def start_chromium():
    """A new browser with a profile (cookies) of its own; the caller quits it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip(NO_CHROMIUM)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in FLAGS:
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)
