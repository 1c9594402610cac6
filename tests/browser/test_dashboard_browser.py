"""The dashboard in a real browser: Debian's headless Chromium, driven by Playwright, against the
dashboard served by uvicorn on a free loopback port over a seeded firm. Every page loads, the
forecast chart draws its bars, clicking Approve moves a milestone, and the forecast page is saved
as docs/screenshots/dashboard-forecast.png."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from connector.domain.model import MilestoneState
from tests.integration.test_dashboard import APPROVE, APPROVE_TOO, Firm, dashboard_app, seeded_firm

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "screenshots" / "dashboard-forecast.png"
# as the machine notes say: without the background-networking flags Chromium keeps trying to
# reach Google's hosts, which this closed network refuses
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PAGES = {
    "/": "Pipeline",
    "/attention": "Needs attention",
    "/clients": "Clients",
    "/aging": "AR aging",
    "/forecast": "Cash forecast",
    "/leakage": "Leakage",
    "/audit": "Audit log",
}


def _missing() -> str | None:
    if not CHROMIUM.exists():
        return f"no Chromium at {CHROMIUM}: apt-get install --no-install-recommends chromium"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed: pip install -e '.[test]'"
    return None


if (why := _missing()) is not None:
    if os.environ.get("CI"):  # .ci/run installs Chromium: CI never skips this test
        pytest.fail(f"CI must run the browser test: {why}", pytrace=False)
    pytest.skip(why, allow_module_level=True)

from playwright.sync_api import Browser, sync_playwright  # noqa: E402


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, Firm]]:
    """The dashboard on uvicorn, on a loopback port the OS picked, over a seeded firm."""
    firm = seeded_firm()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(dashboard_app(firm), log_level="warning", access_log=False, lifespan="off")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", firm
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        # never a browser of Playwright's own: Debian's Chromium, with the flags the probe used
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        try:
            yield launched
        finally:
            launched.close()


def test_pages_chart_and_approve_in_chromium(served: tuple[str, Firm], browser: Browser) -> None:
    base, firm = served
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(10_000)
    for path, title in PAGES.items():
        response = page.goto(base + path)
        assert response is not None and response.status == 200, path
        assert page.locator("h1").inner_text().startswith(title)

    page.goto(base + "/forecast")
    chart = page.locator("svg.chart").first
    assert chart.is_visible()
    box = chart.bounding_box()
    assert box is not None and box["width"] > 400 and box["height"] > 150
    assert page.locator("svg.chart rect.bar.collected").count() >= 2
    assert page.locator("svg.chart rect.bar.invoiced").count() >= 1
    assert page.locator("svg.chart rect.bar.planned").count() >= 1
    assert page.locator("svg.chart line.axis").count() == 1
    tallest = max(
        float(page.locator("svg.chart rect.bar").nth(i).get_attribute("height") or 0)
        for i in range(page.locator("svg.chart rect.bar").count())
    )
    assert tallest > 50  # drawn to scale, not a row of slivers
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert SCREENSHOT.stat().st_size > 10_000

    page.goto(base + "/attention")
    row = page.locator(f'tr[data-key="{APPROVE}"]')
    assert "awaiting approval" in row.inner_text()
    with page.expect_navigation():
        row.locator(".action-approve button").click()
    assert page.url.startswith(base + "/attention?note=")
    assert f"approved {APPROVE}" in page.locator("#note").inner_text()
    assert page.locator(f'tr[data-key="{APPROVE}"]').count() == 0  # no longer waiting
    assert page.locator(f'tr[data-key="{APPROVE_TOO}"]').count() == 1  # the other still is
    assert firm.milestone(APPROVE).state is MilestoneState.INVOICING

    page.goto(base + "/?state=invoicing")
    assert page.locator(f'#milestones tr[data-key="{APPROVE}"]').count() == 1
    page.close()
