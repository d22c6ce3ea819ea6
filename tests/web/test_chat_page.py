"""The question page at /: its files are served from the package, and in headless Chromium
against a real `metis serve` it asks, shows the answer with its sources and how it was served,
shows API errors, and uploads a file it follows to the end (a screenshot is saved; its path is
printed)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser import ARTIFACTS, browser, metis_serve, needs_chromium

POLICY = (
    "# Refunds\n\nThe refund window is 30 days. Items must be unused and in their box.\n\n"
    "# Shipping\n\nShipping is free for orders over 50 euros. Parcels leave within 2 days.\n"
)
FAQ = "# Office\n\nThe office cat is called Pixel. It sleeps on the warm printer all afternoon.\n"
FINISHED = ("completed", "failed", "cancelled", "error")

# -- the files, over ASGI ----------------------------------------------------------------------

async def test_page_and_the_files_it_loads_are_served(client: httpx.AsyncClient) -> None:
    page = await client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert 'href="/dashboard"' in page.text and 'href="/docs"' in page.text
    loaded = re.findall(r'(?:src|href)="(/web/[^"]+)"', page.text)
    assert sorted(loaded) == ["/web/chat.css", "/web/chat.js"]
    for path, media_type in [("/web/chat.js", "text/javascript"), ("/web/chat.css", "text/css"),
                             ("/web/index.html", "text/html")]:
        r = await client.get(path)
        assert r.status_code == 200, path
        assert r.headers["content-type"] == f"{media_type}; charset=utf-8"
        assert len(r.content) > 500


async def test_only_shipped_page_files_are_served(client: httpx.AsyncClient) -> None:
    for path in ["/web/nope.js", "/web/..%2F__init__.py", "/web/%2e%2e", "/web/dashboard.js",
                 "/dashboard/chat.js", "/web/"]:
        r = await client.get(path)
        assert r.status_code == 404, path
        assert r.headers["content-type"] == "application/json"
        assert r.json()["code"] == "not_found" and r.json()["message"]


async def test_pages_stay_out_of_the_schema_and_the_dashboard_figures(
    client: httpx.AsyncClient,
) -> None:
    for path in ["/", "/web/chat.js", "/web/chat.css", "/dashboard"]:
        assert (await client.get(path)).status_code == 200
    await client.get("/api/documents")
    summary = (await client.get("/api/metrics/summary")).json()
    assert summary["requests"]["requests"] == 1  # only the API call
    paths = set((await client.get("/openapi.json")).json()["paths"])
    assert not paths & {"/", "/web/{name}", "/dashboard", "/dashboard/{name}"}


# -- the page, in a browser --------------------------------------------------------------------

def _wait_tasks(c: httpx.Client, task_ids: list[str]) -> None:
    deadline = time.monotonic() + 120
    for task_id in task_ids:
        while (status := c.get(f"/api/tasks/{task_id}").json()["status"]) != "completed":
            assert status not in FINISHED and time.monotonic() < deadline, status
            time.sleep(0.1)


@pytest.fixture(scope="module")
def metis_url(prepared_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `metis serve` whose "handbook" collection holds policy.md."""
    with metis_serve(prepared_models, tmp_path_factory.mktemp("serve")) as server:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            r = c.post("/api/documents", data={"collection": "handbook"},
                       files={"files": ("policy.md", POLICY.encode())})
            assert r.status_code == 202, r.text
            _wait_tasks(c, r.json()["task_ids"])
        yield server.url


class Page:
    """The question page as a user drives it."""

    def __init__(self, driver: Any) -> None:
        from selenium.webdriver.support.wait import WebDriverWait

        self.driver = driver
        self.wait = WebDriverWait(driver, 60)

    def find(self, css: str) -> Any:
        return self.driver.find_element("css selector", css)

    def find_all(self, css: str) -> list[Any]:
        return list(self.driver.find_elements("css selector", css))

    def fill(self, element_id: str, text: str) -> None:
        field = self.find(f"#{element_id}")
        field.clear()
        field.send_keys(text)

    def submit_question(self, question: str, collection: str) -> None:
        self.fill("collection", collection)
        self.fill("question", question)
        self.find("#ask-button").click()

    def ask(self, question: str, collection: str = "handbook") -> Any:
        """Asks and returns the answer's turn; an error shown instead fails the test."""
        before = len(self.find_all(".turn"))
        self.submit_question(question, collection)
        self.wait.until(lambda _: len(self.find_all(".turn")) > before
                        or self.find("#ask-error").is_displayed())
        assert not self.find("#ask-error").is_displayed(), self.find("#ask-error").text
        return self.find_all(".turn")[-1]

    def upload(self, path: Path, collection: str = "handbook") -> None:
        self.fill("upload-collection", collection)
        self.find("#files").send_keys(str(path))
        self.find("#upload-button").click()

    def upload_row(self, filename: str) -> Any:
        return next((row for row in self.find_all("#uploads li")
                     if row.find_element("css selector", ".filename").text == filename), None)


@pytest.mark.slow
@needs_chromium
def test_ask_follow_up_cache_hit_errors_and_upload(metis_url: str, tmp_path: Path) -> None:
    driver = browser(tmp_path / "chromium-profile")
    try:
        driver.get(metis_url + "/")
        page = Page(driver)
        # the collection field suggests the collections that hold documents
        page.wait.until(lambda d: "handbook" in d.execute_script("return window.metisChat.collections"))
        assert [o.get_attribute("value") for o in page.find_all("#collections option")] == ["handbook"]

        first = page.ask("How long is the refund window?")
        assert "30 days" in first.find_element("css selector", ".answer").text
        sources = first.find_elements("css selector", ".citations li")
        assert sources, first.text
        assert sources[0].find_element("css selector", ".filename").text == "policy.md"
        assert re.fullmatch(r"score \d\.\d{3}", sources[0].find_element("css selector", ".score").text)
        assert sources[0].find_element("css selector", ".snippet").text
        served = first.find_element("css selector", ".served")
        assert served.get_attribute("data-level") == "none" and "Full run" in served.text
        assert re.search(r"total \d+\.\d ms", first.find_element("css selector", ".timings").text)
        conversation = page.find("#conversation").text
        assert conversation.startswith("conversation ") and conversation.endswith(" in handbook")

        # a follow-up stays in the conversation
        page.ask("Is shipping free?")
        assert page.find("#conversation").text == conversation

        # a new conversation asking the same question again: the exact cache answers
        page.find("#new-conversation").click()
        assert page.find_all(".turn") == [] and page.find("#conversation").text == "new conversation"
        again = page.ask("How long is the refund window?")
        served = again.find_element("css selector", ".served")
        assert served.get_attribute("data-level") == "exact", served.text
        assert served.text.startswith("Served from the exact cache")
        assert again.find_element("css selector", ".citations .filename").text == "policy.md"
        assert page.find("#conversation").text not in (conversation, "new conversation")

        # bypassing the cache runs the whole pipeline again
        page.find("#new-conversation").click()
        page.find("#bypass-cache").click()
        bypassed = page.ask("How long is the refund window?")
        assert bypassed.find_element("css selector", ".served").get_attribute("data-level") == "none"
        page.find("#bypass-cache").click()

        # markup in data is shown as text, never run
        markup = '<img src=x onerror="window.injected=1"><b>bold</b> refund window?'
        shown = page.ask(markup).find_element("css selector", ".question")
        assert shown.text == markup and shown.find_elements("css selector", "*") == []
        assert driver.execute_script("return window.injected") is None

        # an API error is shown as its message and code; the page keeps working
        page.submit_question("How long is the refund window?", "no-such-collection")
        page.wait.until(lambda _: page.find("#ask-error").is_displayed())
        error = page.find("#ask-error").text
        assert "'no-such-collection' does not exist" in error and "collection_not_found" in error
        assert "HTTP 404" in error

        # an upload is followed until its task completes, and then answers questions
        faq = tmp_path / "faq.md"
        faq.write_text(FAQ)
        page.upload(faq)
        page.wait.until(lambda _: (row := page.upload_row("faq.md")) is not None
                        and row.get_attribute("data-status") in FINISHED)
        row = page.upload_row("faq.md")
        assert row.get_attribute("data-status") == "completed", row.text
        assert re.search(r"created: [1-9]\d* chunks? in handbook", row.text), row.text
        assert row.find_element("css selector", "progress").get_attribute("value") == "100"
        cat = page.ask("What is the office cat called?")
        assert "Pixel" in cat.find_element("css selector", ".answer").text
        assert "faq.md" in [e.text for e in cat.find_elements("css selector", ".citations .filename")]

        # the same bytes again: stored already, no task to follow
        page.upload(faq)
        page.wait.until(lambda _: len(page.find_all("#uploads li")) == 2)
        row = page.upload_row("faq.md")  # the newest row comes first
        assert row.get_attribute("data-status") == "duplicate"
        assert re.fullmatch(r"already stored in handbook \([1-9]\d* chunks?\)",
                            row.find_element("css selector", ".status").text)

        # a rejected upload shows the API's code and message
        tool = tmp_path / "tool.exe"
        tool.write_bytes(b"MZ" + bytes(200))
        page.upload(tool)
        page.wait.until(lambda _: page.find("#upload-error").is_displayed())
        error = page.find("#upload-error").text
        assert "Cannot ingest files of type .exe" in error and "unsupported_media_type" in error
        assert "HTTP 415" in error
        assert page.upload_row("tool.exe") is None

        assert driver.execute_script("return window.metisChat.errors") == 1
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "chat.png"
        assert driver.save_screenshot(str(shot))
        print(f"chat page screenshot: {shot}")
    finally:
        driver.quit()
