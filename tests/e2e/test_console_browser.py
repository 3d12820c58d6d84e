"""The console in a real browser: headless Chromium (Debian's) driven by Playwright.

A campaign is sent for real against the sandbox while the page is open; the page must show it
in Chinese by default, switch to English by its link, show the review state and the reviewer,
and reach 100 % by its own auto-refresh, without the test reloading it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import pytest
from playwright.sync_api import Browser, expect, sync_playwright

from qunfa.api.app import create_app
from qunfa.api.server import ServerThread
from qunfa.bootstrap import Container
from qunfa.sandbox.admin_client import SandboxAdmin
from qunfa.sandbox.server import EmbeddedSandbox
from tests.conftest import drain, make_oa

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; `make test` installs it if missing
T = TypeVar("T")


def off_loop(fn: Callable[[], T]) -> T:
    """Run qunfa's own asyncio work off this thread: Playwright's sync API owns its loop."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn).result()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert CHROMIUM.exists(), "Chromium is missing: `make test` installs the chromium package"
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


def test_console_shows_a_campaign_live_in_both_languages(
    browser: Browser, container: Container, admin: SandboxAdmin, sandbox: EmbeddedSandbox
) -> None:
    oa = off_loop(lambda: make_oa(admin, container, sandbox.url, followers=300, callback_url="x"))
    camp = container.campaigns.create(
        name="浏览器里的活动", channel="wechat_oa", account=oa.appid, audience="all",
        content={"msgtype": "text", "text": {"content": "会员日"}}, as_list=True,
        created_by="小李",
    )  # fmt: skip
    container.review.check(camp.id, "小李")
    container.review.submit(camp.id, "小李")
    server = ServerThread(create_app(container)).start()
    # The same account, now posting its job-finish callbacks to this server (as in production).
    admin.create_wechat_account(
        appid=oa.appid, secret=oa.secret, type="service", followers=300,
        tags={"VIP": 0.1, "上海": 0.3}, token=oa.token, encoding_aes_key=oa.aes_key,
        callback_url=f"{server.url}/callbacks/wechat/{oa.appid}", job_delay_seconds=0.05,
    )  # fmt: skip
    try:
        page = browser.new_page()
        page.goto(server.url + "/")
        expect(page).to_have_title("群发 · 活动")
        row = page.locator(f'tr[data-campaign="{camp.id}"]')
        expect(row).to_contain_text("浏览器里的活动")
        expect(row.locator("td.review")).to_have_text("待审核")
        expect(row).to_contain_text("草稿")

        container.review.approve(camp.id, "王审核")
        off_loop(lambda: (container.campaigns.start(camp.id), drain(container)))
        deadline = time.monotonic() + 10
        while container.campaigns.status(camp.id)["state"] != "done":  # the callback arrives
            assert time.monotonic() < deadline, container.campaigns.status(camp.id)
            off_loop(lambda: drain(container, rounds=1))
            time.sleep(0.05)
        # The page refreshes itself every 5 s: wait for it to show the finished campaign.
        expect(row.locator("td.review")).to_contain_text("王审核", timeout=12_000)
        expect(row).to_contain_text("已完成", timeout=12_000)
        expect(row.locator(".bar")).to_have_attribute("title", "100%")
        cells = row.locator("td.num")
        expect(cells.nth(0)).to_have_text("300")  # planned
        expect(cells.nth(1)).to_have_text("300")  # sent

        page.get_by_role("link", name="English").click()
        expect(page).to_have_title("qunfa · campaigns")
        expect(page.locator("html")).to_have_attribute("lang", "en")
        expect(page.locator(f'tr[data-campaign="{camp.id}"]')).to_contain_text("done")
        expect(page.get_by_role("link", name="中文")).to_be_visible()
    finally:
        server.stop()
