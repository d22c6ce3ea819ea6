"""The page at / as a user drives it in headless Chromium (selenium), shared by the browser
tests of tests/web. Screenshots go to tests/artifacts/web/ (kept after the run, unlike tmp_path),
named after the test."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.browser import ARTIFACTS, browser

FINISHED = ("completed", "failed", "cancelled", "error", "rejected", "duplicate")
SHOTS = ARTIFACTS / "web"


class Page:
    """The page as a user drives it."""

    def __init__(self, driver: Any, test_name: str) -> None:
        from selenium.webdriver.support.wait import WebDriverWait

        self.driver = driver
        from selenium.common.exceptions import StaleElementReferenceException

        # The page re-renders lists as data arrives: an element read mid-render is read again.
        self.wait = WebDriverWait(driver, 60, poll_frequency=0.05,
                                  ignored_exceptions=[StaleElementReferenceException])
        self.test_name = test_name

    def find(self, css: str) -> Any:
        return self.driver.find_element("css selector", css)

    def find_all(self, css: str) -> list[Any]:
        return list(self.driver.find_elements("css selector", css))

    def fill(self, element_id: str, text: str) -> None:
        field = self.find(f"#{element_id}")
        field.clear()
        field.send_keys(text)

    def click(self, css: str) -> None:
        """Clicks, again if the element was re-rendered between finding and clicking."""
        self.wait.until(lambda _: self.find(css).click() or True)

    def shot(self, name: str) -> Path:
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = SHOTS / f"{self.test_name}-{name}.png"
        assert self.driver.save_screenshot(str(path))
        print(f"screenshot: {path}")
        return path

    def tab(self, name: str) -> None:
        self.find(f"#tab-{name}").click()

    def ask(self, question: str, collection: str = "handbook") -> Any:
        """Asks and returns the answer's turn once it is done; an error fails the test."""
        before = len(self.find_all(".turn"))
        self.fill("collection", collection)
        self.fill("question", question)
        self.find("#ask-button").click()
        self.wait.until(lambda _: (len(self.find_all(".turn")) > before and self.find_all(
            ".turn")[-1].get_attribute("data-state") != "streaming")
            or self.find("#ask-error").is_displayed())
        assert not self.find("#ask-error").is_displayed(), self.find("#ask-error").text
        return self.find_all(".turn")[-1]

    def upload_row(self, filename: str) -> Any:
        return next((row for row in self.find_all("#uploads li")
                     if row.find_element("css selector", ".filename").text == filename), None)

    def doc_names(self) -> list[str]:
        return list(self.driver.execute_script(
            "return [...document.querySelectorAll('#documents tbody .doc-name')]"
            ".map((e) => e.textContent)"))

    def doc_row_text(self, name: str) -> str:
        return str(self.driver.execute_script(
            "const r = [...document.querySelectorAll('#documents tbody tr')]"
            ".find((r) => r.querySelector('.doc-name').textContent === arguments[0]);"
            "return r ? r.innerText : '';", name))

    def doc_action(self, name: str, action: str) -> None:
        self.driver.execute_script(
            "[...document.querySelectorAll('#documents tbody tr')]"
            ".find((r) => r.querySelector('.doc-name').textContent === arguments[0])"
            ".querySelector(arguments[1]).click();", name, f".{action}")

    def answer_dialog(self, accept: bool = True, text: str | None = None) -> None:
        self.wait.until(lambda d: alert_of(d) is not None)
        alert = self.driver.switch_to.alert
        if text is not None:
            alert.send_keys(text)
        alert.accept() if accept else alert.dismiss()


def wait_tasks(c: httpx.Client, task_ids: list[str]) -> None:
    deadline = time.monotonic() + 120
    for task_id in task_ids:
        while (status := c.get(f"/api/tasks/{task_id}").json()["status"]) != "completed":
            assert status not in FINISHED and time.monotonic() < deadline, status
            time.sleep(0.1)


def alert_of(driver: Any) -> Any:
    from selenium.common.exceptions import NoAlertPresentException

    try:
        return driver.switch_to.alert
    except NoAlertPresentException:
        return None


def drop_files(driver: Any, files: dict[str, str]) -> None:
    """A drag and drop of files onto the drop zone, as the browser delivers it."""
    driver.execute_script("""
        const dt = new DataTransfer();
        for (const [name, text] of Object.entries(arguments[0]))
          dt.items.add(new File([text], name, { type: "text/markdown" }));
        const zone = document.getElementById("dropzone");
        zone.dispatchEvent(new DragEvent("dragover", { dataTransfer: dt, bubbles: true, cancelable: true }));
        zone.dispatchEvent(new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true }));
    """, files)


@contextmanager
def open_chat_page(url: str, profile: Path, name: str) -> Iterator[Page]:
    """The page at `url` in a fresh headless Chromium, signed in; on leaving, the page must
    have counted no script error."""
    driver = browser(profile)
    try:
        driver.get(url + "/")
        p = Page(driver, name)
        p.wait.until(lambda _: p.find("#whoami").text)
        yield p
        assert driver.execute_script("return window.metisChat.errors") == 0
    finally:
        driver.quit()
