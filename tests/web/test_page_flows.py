"""More of the page's flows in headless Chromium, against a real `metis serve` with no LLM
(extractive answers; agent mode planned by the offline rule planner): asking across several
collections, agent mode's live steps and its audit report, copying an answer, the keyboard
alone, and paging through a collection's documents. Screenshots go to tests/artifacts/web/."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.agent.passages import PROTOCOLS, SERVICES
from tests.browser import metis_serve, needs_chromium
from tests.web.pages import Page, open_chat_page, wait_tasks

pytestmark = [pytest.mark.slow, needs_chromium]

POLICY = "# Refunds\n\nThe refund window is 30 days. Items must be unused and in their box.\n"
GARDEN = "# Garden\n\nThe garden gnome is named Gustav and guards the tomato beds.\n"


def _upload(c: httpx.Client, collection: str, files: dict[str, str]) -> None:
    r = c.post("/api/documents", data={"collection": collection},
               files=[("files", (name, text.encode())) for name, text in files.items()])
    assert r.status_code in (200, 202), r.text
    wait_tasks(c, r.json()["task_ids"])


@pytest.fixture(scope="module")
def server_url(prepared_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with metis_serve(prepared_models, tmp_path_factory.mktemp("flows"),
                     METIS_AGENT__PLANNER="rules") as server:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            _upload(c, "handbook", {"policy.md": POLICY})
            _upload(c, "garden", {"garden.md": GARDEN})
            _upload(c, "net", {"services.txt": SERVICES, "protocols.txt": PROTOCOLS})
        yield server.url


@pytest.fixture
def page(server_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Page]:
    with open_chat_page(server_url, tmp_path / "chromium-profile", request.node.name) as p:
        yield p


def _cited(turn: object) -> list[str]:
    return [e.text for e in turn.find_elements("css selector", ".citations .filename")]  # type: ignore[attr-defined]


def test_one_question_across_several_collections(page: Page) -> None:
    from selenium.webdriver.support.ui import Select

    # the choices are the server's collections
    page.wait.until(lambda _: len(page.find_all("#more-collections option")) == 3)
    names = [o.get_attribute("value") for o in page.find_all("#more-collections option")]
    assert names == ["garden", "handbook", "net"]
    page.find("#bypass-cache").click()
    alone = page.ask("What is the garden gnome called?", collection="handbook")
    assert "garden.md" not in _cited(alone)  # handbook alone does not have it

    Select(page.find("#more-collections")).select_by_value("garden")
    both = page.ask("What is the garden gnome called?", collection="handbook")
    assert "garden.md" in _cited(both) and "Gustav" in both.find_element(
        "css selector", ".answer").text
    # the conversation belongs to the first collection, and continues across both
    conv_id = page.driver.execute_script("return window.metisChat.conversationId")
    assert page.find("#conversation").text == f"conversation {conv_id} in handbook"
    follow = page.ask("How long is the refund window?", collection="handbook")
    assert "policy.md" in _cited(follow)
    assert page.driver.execute_script("return window.metisChat.conversationId") == conv_id
    page.shot("several-collections")
    Select(page.find("#more-collections")).deselect_all()
    page.find("#new-conversation").click()
    again = page.ask("What is the garden gnome called?", collection="handbook")
    assert "garden.md" not in _cited(again)


# The test watches the steps panel from inside the page: each time it changes, whether the
# answer has any text yet. Steps shown only with the answer would be seen with text.
WATCH_STEPS = """
window.stepsSeen = [];
new MutationObserver(() => {
  const turns = document.querySelectorAll(".turn");
  const answer = turns.length ? turns[turns.length - 1].querySelector(".answer").textContent : "";
  window.stepsSeen.push({ steps: document.querySelectorAll("#steps > li").length,
                          answer: answer.length });
}).observe(document.getElementById("steps"), { childList: true, subtree: true, characterData: true });
"""


def test_agent_mode_shows_steps_live_and_opens_the_audit(page: Page) -> None:
    from selenium.webdriver.support.ui import Select

    Select(page.find("#mode")).select_by_value("agent")
    page.wait.until(lambda _: page.find("#steps-panel").is_displayed())
    assert not page.find("#mode-note").is_displayed()
    page.driver.execute_script(WATCH_STEPS)
    turn = page.ask("What is the port of ssh and what is the port of https?", collection="net")
    answer = turn.find_element("css selector", ".answer").text
    assert "22" in answer and "443" in answer, answer
    assert "services.txt" in _cited(turn)
    assert "compound question" in turn.find_element("css selector", ".agent-info").text

    # the steps arrived before the answer's first word
    seen = page.driver.execute_script("return window.stepsSeen")
    assert seen and seen[0]["answer"] == 0 and seen[0]["steps"] >= 1, seen
    assert any(s["steps"] >= 2 and s["answer"] == 0 for s in seen), seen
    # the plan, then each step with its end, tool calls and results
    heads = [e.text for e in page.find_all("#steps > li > .step-head")]
    assert re.match(r"Plan \(compound, by rules\): \d+ steps", heads[0]), heads
    steps = page.find_all("#steps > li[data-step^=s]")
    assert steps and all(s.get_attribute("data-status") == "ok" for s in steps), heads
    calls = page.find_all("#steps .tool-call")
    assert len(calls) >= 2 and all("rag_search" in c.text for c in calls[:2])
    assert '"query"' in calls[0].text
    assert len(page.find_all("#steps .tool-result")) == len(calls)
    assert re.match(r"\d+ steps done · \d+ tool calls", page.find("#steps-summary").text)
    page.shot("agent-steps")

    # the audit report is one click away
    page.find("#audit-link").click()
    page.wait.until(lambda _: page.find("#audit-view").is_displayed())
    query_id = page.find("#audit-link").get_attribute("data-query")
    assert query_id and query_id in page.find("#audit-view-meta").text
    page.driver.switch_to.frame(page.find("#audit-frame"))
    try:
        page.wait.until(lambda _: "tool_call" in page.find("body").text)
        report = page.find("body").text
        assert "rag_search" in report and "evaluation" in report
    finally:
        page.driver.switch_to.default_content()
    page.shot("agent-audit")
    page.find("#audit-close").click()
    assert not page.find("#audit-view").is_displayed()


def test_copy_answer_puts_the_answer_on_the_clipboard(page: Page, server_url: str) -> None:
    page.driver.execute_cdp_cmd("Browser.grantPermissions", {
        "origin": server_url, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]})
    turn = page.ask("How long is the refund window?")
    answer = turn.find_element("css selector", ".answer").text
    turn.find_element("css selector", ".copy").click()
    page.wait.until(lambda _: turn.find_element("css selector", ".copy").text == "Copied")
    copied = page.driver.execute_async_script(
        "navigator.clipboard.readText().then(arguments[0], (e) => arguments[0]('error: ' + e))")
    # the answer as written, its [n] marks included (the page shows them as chips)
    assert "[1]" in copied and "30 days" in copied
    assert re.sub(r"\[(\d+)\]", r"\1", copied).split() == answer.split()
    page.shot("copied")


def test_keyboard_alone_asks_opens_a_source_and_closes_it(page: Page) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    def focused() -> str:
        el = page.driver.switch_to.active_element
        return f"{el.tag_name}#{el.get_attribute('id')}.{el.get_attribute('class')}"

    page.fill("collection", "handbook")
    page.find("#question").click()
    page.find("#question").send_keys("How long is the refund window?", Keys.ENTER)
    page.wait.until(lambda _: page.find_all(".turn")
                    and page.find_all(".turn")[-1].get_attribute("data-state") == "done")
    assert focused() == "textarea#question."  # still in the question, ready for the next
    # Shift+Tab from the question goes back through the answer to a source chip
    for _ in range(10):
        ActionChains(page.driver).key_down(Keys.SHIFT).send_keys(Keys.TAB).key_up(Keys.SHIFT) \
            .perform()
        if "chip" in focused():
            break
    assert "chip" in focused(), focused()
    ActionChains(page.driver).send_keys(Keys.ENTER).perform()
    page.wait.until(lambda _: page.find("#passage").is_displayed())
    page.wait.until(lambda _: "refund window is 30 days" in page.find("#passage-text").text)
    page.shot("keyboard-passage")
    ActionChains(page.driver).send_keys(Keys.ESCAPE).perform()
    page.wait.until(lambda _: not page.find("#passage").is_displayed())
    # Shift+Enter is a new line, not a question
    asked = len(page.find_all(".turn"))
    page.find("#question").send_keys("first line")
    ActionChains(page.driver).key_down(Keys.SHIFT).send_keys(Keys.ENTER).key_up(Keys.SHIFT) \
        .send_keys("second").perform()
    assert page.find("#question").get_attribute("value") == "first line\nsecond"
    assert len(page.find_all(".turn")) == asked


def test_documents_page_through_a_collection(page: Page, server_url: str) -> None:
    with httpx.Client(base_url=server_url, timeout=60) as c:
        _upload(c, "many", {f"note-{i:02d}.md": f"# Note {i}\n\nNote number {i} of the pile.\n"
                            for i in range(30)})
    page.tab("docs")
    page.click('#collection-list button[data-name="many"]')
    page.wait.until(lambda _: page.find("#page-info").text == "1–25 of 30")
    first = page.doc_names()
    assert len(first) == 25 and page.find("#prev-page").get_attribute("disabled")
    page.find("#next-page").click()
    page.wait.until(lambda _: page.find("#page-info").text == "26–30 of 30")
    rest = page.doc_names()
    assert len(rest) == 5 and not set(rest) & set(first)
    assert sorted(first + rest) == [f"note-{i:02d}.md" for i in range(30)]
    assert page.find("#next-page").get_attribute("disabled")
    page.shot("documents-page-2")
    page.find("#prev-page").click()
    page.wait.until(lambda _: page.find("#page-info").text == "1–25 of 30")
    assert page.doc_names() == first
