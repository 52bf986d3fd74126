"""`sse-gateway demo` in a real browser: the dashboard fills with live prices and news, and is screenshotted.

Set SSE_GATEWAY_SCREENSHOT=docs/demo.png to regenerate the README's picture; otherwise it goes to a temp dir.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from gateway.demo import OPENING_PRICES
from tests.servers import GatewayProcess

WAIT_MS = 15_000


@pytest.mark.timeout(60)
def test_demo_dashboard_shows_live_prices_and_news_and_is_screenshotted(page, tmp_path):
    demo = GatewayProcess(None, command="demo").start()
    try:
        assert httpx.get(f"{demo.url}/demo", follow_redirects=False).headers["location"] == "/demo/"
        page.set_viewport_size({"width": 1280, "height": 800})
        page.goto(f"{demo.url}/demo/")
        page.wait_for_function(
            f"window.demoState && window.demoState.state === 'live' && window.demoState.events > 40"
            f" && Object.keys(window.demoState.prices).length === {len(OPENING_PRICES)} && window.demoState.news >= 1",
            timeout=WAIT_MS,
        )
        state = page.evaluate("window.demoState")
        assert set(state["prices"]) == set(OPENING_PRICES)
        assert all(price > 0 for price in state["prices"].values())
        assert state["lastEventId"].count("_") == 1  # a multi-channel cursor
        assert state["gaps"] == 0 and state["reconnects"] == 0
        assert page.locator("text=AAPL").first.is_visible()
        target = Path(os.environ.get("SSE_GATEWAY_SCREENSHOT") or tmp_path / "demo.png")
        target.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(target))
        assert target.stat().st_size > 10_000
    finally:
        demo.stop()
    assert "demo running: open http://127.0.0.1:" in demo.log()
