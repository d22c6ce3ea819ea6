"""The page at /: its files are served from the package, and in headless Chromium against a real
`metis serve` (answers from a fake LLM that streams) a user uploads several files and watches
them finish, asks and sees the answer stream, opens a citation, continues, renames and deletes a
conversation, deletes a document and sees it leave the answers, and signs in with a key.
Screenshots are saved under tests/artifacts/web/ (their paths are printed with -s)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from metis_rag.devtools.fake_llm import FakeLLMServer
from tests.browser import browser, metis_serve, needs_chromium
from tests.web.pages import FINISHED, Page, drop_files, open_chat_page, wait_tasks

POLICY = (
    "# Refunds\n\nThe refund window is 30 days. Items must be unused and in their box.\n\n"
    "# Shipping\n\nShipping is free for orders over 50 euros. Parcels leave within 2 days.\n"
)
FAQ = "# Office\n\nThe office cat is called Pixel. It sleeps on the warm printer all afternoon.\n"
GARDEN = "# Garden\n\nThe garden gnome is named Gustav and guards the tomato beds.\n"

# -- the files, over ASGI ----------------------------------------------------------------------

SHIPPED = ["/web/app.js", "/web/chat.css", "/web/chat.js", "/web/docs.js"]


async def test_page_and_the_files_it_loads_are_served(client: httpx.AsyncClient) -> None:
    page = await client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert 'href="/dashboard"' in page.text and 'href="/docs"' in page.text
    loaded = re.findall(r'(?:src|href)="(/web/[^"]+)"', page.text)
    assert sorted(loaded) == SHIPPED
    assert "http://" not in page.text and "https://" not in page.text  # nothing from a CDN
    for path in [*SHIPPED, "/web/index.html"]:
        r = await client.get(path)
        assert r.status_code == 200, path
        kind = {"js": "text/javascript", "css": "text/css", "html": "text/html"}[path.rsplit(".", 1)[1]]
        assert r.headers["content-type"] == f"{kind}; charset=utf-8"
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
    for path in ["/", *SHIPPED, "/dashboard"]:
        assert (await client.get(path)).status_code == 200
    await client.get("/api/documents")
    summary = (await client.get("/api/metrics/summary")).json()
    assert summary["requests"]["requests"] == 1  # only the API call
    paths = set((await client.get("/openapi.json")).json()["paths"])
    assert not paths & {"/", "/web/{name}", "/dashboard", "/dashboard/{name}"}


# -- the page, in a browser --------------------------------------------------------------------

@pytest.fixture(scope="module")
def fake_llm() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(tokens_per_s=40) as server:  # slow enough to watch the answer grow
        yield server


@pytest.fixture(scope="module")
def metis_url(prepared_models: Path, tmp_path_factory: pytest.TempPathFactory,
              fake_llm: FakeLLMServer) -> Iterator[str]:
    with metis_serve(prepared_models, tmp_path_factory.mktemp("serve"),
                     METIS_LLM__PROVIDER="openai", METIS_LLM__URL=fake_llm.url,
                     METIS_LLM__MODEL="fake",
                     METIS_CHUNK__MAX_CHUNKS_PER_DOCUMENT="20",
                     # Pinned: derived from 20 chunks, the text limit would refuse the file
                     # that must fail in its task (and be retried) at upload instead.
                     METIS_PARSE__MAX_TEXT_CHARS="1000000") as server:
        yield server.url


@pytest.fixture
def page(metis_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Page]:
    with open_chat_page(metis_url, tmp_path / "chromium-profile", request.node.name) as p:
        yield p


@pytest.mark.slow
@needs_chromium
def test_documents_upload_browse_view_and_delete(page: Page, tmp_path: Path) -> None:
    page.tab("docs")
    page.fill("upload-collection", "handbook")
    page.fill("upload-tags", "policy")
    # several files chosen at once: each has its own row, progress and outcome
    paths = []
    for name, text in [("policy.md", POLICY), ("faq.md", FAQ)]:
        (tmp_path / name).write_text(text)
        paths.append(str(tmp_path / name))
    tool = tmp_path / "tool.exe"
    tool.write_bytes(b"MZ" + bytes(200))
    paths.append(str(tool))
    page.find("#files").send_keys("\n".join(paths))
    page.wait.until(lambda _: all((row := page.upload_row(n)) is not None
                                  and row.get_attribute("data-status") in FINISHED
                                  for n in ("policy.md", "faq.md", "tool.exe")))
    for name in ("policy.md", "faq.md"):
        row = page.upload_row(name)
        assert row.get_attribute("data-status") == "completed", row.text
        assert re.search(r"created: [1-9]\d* chunks? in handbook", row.text), row.text
        assert row.find_element("css selector", "progress").get_attribute("value") == "100"
    bad = page.upload_row("tool.exe")  # refused alone, with the API's message and code
    assert bad.get_attribute("data-status") == "rejected"
    assert "Cannot ingest files of type .exe" in bad.text and "unsupported_media_type" in bad.text

    # an ingestion that fails says why, and can be retried (it fails the same way again)
    (tmp_path / "huge.md").write_text("\n\n".join(
        f"# Part {i}\n\n" + " ".join(f"word{i}x{j}" for j in range(150)) for i in range(60)))
    page.find("#files").send_keys(str(tmp_path / "huge.md"))
    page.wait.until(lambda _: (row := page.upload_row("huge.md")) is not None
                    and row.get_attribute("data-status") == "failed")
    row = page.upload_row("huge.md")
    assert "too_many_chunks" in row.text, row.text
    row.find_element("css selector", ".retry").click()
    page.wait.until(lambda _: page.upload_row("huge.md").get_attribute("data-finishes") == "2")
    row = page.upload_row("huge.md")
    assert row.get_attribute("data-status") == "failed" and "too_many_chunks" in row.text
    assert row.find_element("css selector", ".retry").is_displayed()
    page.driver.refresh()  # after a reload the failure is still listed, with its Retry
    page.tab("docs")
    page.wait.until(lambda _: "huge.md" in page.find("#failed-tasks").text)
    failed = page.find("#failed-tasks li")
    assert "too_many_chunks" in failed.text and failed.find_element("css selector", ".retry")
    page.fill("upload-collection", "handbook")
    page.fill("upload-tags", "policy")

    # dropped files upload the same way
    page.fill("upload-folder", "outdoors")
    drop_files(page.driver, {"garden.md": GARDEN})
    page.wait.until(lambda _: (row := page.upload_row("garden.md")) is not None
                    and row.get_attribute("data-status") == "completed")

    # the collection's counts, and its table, filtered and searched on the server
    page.wait.until(lambda _: "3 docs" in page.find("#collection-list").text)
    page.click('#collection-list button[data-name="handbook"]')
    page.wait.until(lambda _: sorted(page.doc_names()) == ["faq.md", "outdoors/garden.md", "policy.md"])
    row = page.doc_row_text("policy.md")
    assert "ready" in row and "text/markdown" in row and "policy" in row
    page.fill("doc-search", "gard")
    page.wait.until(lambda _: page.doc_names() == ["outdoors/garden.md"])
    assert page.find("#page-info").text == "1–1 of 1"
    page.find("#doc-search").clear()
    page.find("#doc-search").send_keys(" ")
    page.wait.until(lambda _: len(page.doc_names()) == 3)
    from selenium.webdriver.support.ui import Select
    Select(page.find("#doc-folder")).select_by_value("outdoors")
    page.wait.until(lambda _: page.doc_names() == ["outdoors/garden.md"])
    Select(page.find("#doc-folder")).select_by_value("")
    page.wait.until(lambda _: len(page.doc_names()) == 3)

    # a document's view shows its chunks
    page.driver.execute_script(
        "[...document.querySelectorAll('.doc-name')].find((e) => e.textContent === 'policy.md').click()")
    page.wait.until(lambda _: page.find("#doc-view").is_displayed()
                    and page.find_all("#doc-view-chunks li"))
    assert "refund window is 30 days" in page.find("#doc-view-chunks").text
    assert "handbook" in page.find("#doc-view-meta").text
    page.shot("document-view")
    page.find("#doc-view-close").click()

    # replace a document's content: its row shows the new size, its view the new text
    size_before = page.doc_row_text("faq.md")
    page.doc_action("faq.md", "replace")
    new_faq = tmp_path / "faq-v2.md"
    new_faq.write_text(FAQ + "\nThe office dog is called Byte and naps under the desk.\n")
    page.find("#replace-file").send_keys(str(new_faq))
    page.wait.until(lambda _: page.doc_row_text("faq.md") not in ("", size_before))
    page.driver.execute_script(
        "[...document.querySelectorAll('.doc-name')].find((e) => e.textContent === 'faq.md').click()")
    page.wait.until(lambda _: "Byte" in page.find("#doc-view-chunks").text)
    page.find("#doc-view-close").click()

    # delete asks first; cancelled, nothing goes
    page.doc_action("outdoors/garden.md", "delete")
    page.answer_dialog(accept=False)
    assert len(page.doc_names()) == 3
    page.doc_action("outdoors/garden.md", "delete")
    page.answer_dialog(accept=True)
    page.wait.until(lambda _: sorted(page.doc_names()) == ["faq.md", "policy.md"])
    page.shot("documents")


@pytest.mark.slow
@needs_chromium
def test_chat_streams_cites_and_keeps_conversations(page: Page, metis_url: str,
                                                     fake_llm: FakeLLMServer) -> None:
    with httpx.Client(base_url=metis_url, timeout=30) as c:  # stored already, or now
        for name, text in [("policy.md", POLICY), ("faq.md", FAQ)]:
            r = c.post("/api/documents", data={"collection": "handbook"},
                       files={"files": (name, text.encode())})
            assert r.status_code in (200, 202), r.text
            wait_tasks(c, r.json()["task_ids"])
    # the answer grows on screen, token by token
    page.fill("collection", "handbook")
    page.fill("question", "How long is the refund window?")
    page.find("#ask-button").click()
    seen: list[str] = []
    page.wait.until(lambda _: (turns := page.find_all(".turn")) and (
        seen.append(turns[-1].find_element("css selector", ".answer").text) or
        turns[-1].get_attribute("data-state") == "done"))
    partial = [t for t in seen if t and t != seen[-1]]
    assert partial, seen  # seen part-way through
    first = page.find_all(".turn")[-1]
    answer = first.find_element("css selector", ".answer").text
    assert "30 days" in answer and answer.startswith("According to")
    assert page.driver.execute_script("return window.metisChat.firstToken") is not None

    # how it was served
    served = first.find_element("css selector", ".served")
    assert served.get_attribute("data-level") == "none" and "LLM answer (openai:fake)" in served.text
    timings = first.find_element("css selector", ".timings").text
    assert re.search(r"total \d+\.\d ms", timings) and "tokens: " in timings

    # a citation chip opens its passage with its document, section and score
    chip = first.find_element("css selector", ".answer .chip")
    chip.click()
    page.wait.until(lambda _: page.find("#passage").is_displayed())
    page.wait.until(lambda _: "Items must be unused" in page.find("#passage-text").text)
    assert page.find("#passage-title").text == "[1] policy.md"
    assert re.search(r"section “Refunds” · score \d\.\d{3}", page.find("#passage-where").text)
    page.shot("passage")
    page.find("#passage-document").click()  # ...and on to its document
    page.wait.until(lambda _: page.find("#doc-view").is_displayed())
    assert page.find("#doc-view-title").text == "policy.md"
    page.find("#doc-view-close").click()
    page.tab("chat")

    # the conversation is listed; a follow-up continues it
    conv_id = page.driver.execute_script("return window.metisChat.conversationId")
    page.wait.until(lambda _: page.find_all(f'#conversations li.current[data-id="{conv_id}"]'))
    page.ask("Is shipping free?")
    assert page.find("#conversation").text == f"conversation {conv_id} in handbook"

    # the exact cache answers the same question in a new conversation; bypass skips it
    page.find("#new-conversation").click()
    again = page.ask("How long is the refund window?")
    assert again.find_element("css selector", ".served").get_attribute("data-level") == "exact"
    page.find("#bypass-cache").click()
    page.find("#new-conversation").click()
    bypassed = page.ask("How long is the refund window?")
    assert bypassed.find_element("css selector", ".served").get_attribute("data-level") == "none"
    page.find("#bypass-cache").click()

    # continue the first conversation from the list
    page.click(f'#conversations li[data-id="{conv_id}"] .open')
    page.wait.until(lambda _: page.find("#conversation").text.startswith(f"conversation {conv_id}"))
    questions = [e.text for e in page.find_all(".turn .question")]
    assert questions == ["How long is the refund window?", "Is shipping free?"]
    page.ask("And what about the box?")
    assert page.find("#conversation").text == f"conversation {conv_id} in handbook"
    page.wait.until(lambda _: "6 messages" in page.find(f'#conversations li[data-id="{conv_id}"]').text)

    # rename, then delete
    page.click(f'#conversations li[data-id="{conv_id}"] .rename')
    page.answer_dialog(text="Refund questions")
    page.wait.until(lambda _: page.find(f'#conversations li[data-id="{conv_id}"] .open').text
                    == "Refund questions")
    page.shot("chat")
    page.click(f'#conversations li[data-id="{conv_id}"] .delete')
    page.answer_dialog()
    page.wait.until(lambda _: not page.find_all(f'#conversations li[data-id="{conv_id}"]'))
    assert page.find("#conversation").text == "new conversation"

    # stop generation: the answer stops where it was. The model streams slowly here, so the
    # answer is still growing when Stop is clicked (at 40 tokens/s a short answer could end
    # first, and Stop is hidden once it has).
    fake_llm.configure(tokens_per_s=4)
    try:
        page.find("#bypass-cache").click()
        page.fill("question", "What is the office cat called?")
        page.find("#ask-button").click()
        page.wait.until(lambda _: (t := page.find_all(".turn")) and
                        t[-1].find_element("css selector", ".answer").text)
        page.find("#stop-button").click()
        page.wait.until(lambda _: page.find_all(".turn")[-1].get_attribute("data-state")
                        == "stopped")
    finally:
        fake_llm.configure(tokens_per_s=40)
    assert page.find("#ask-status").text == "stopped"
    assert not page.find("#stop-button").is_displayed()

    # a deleted document leaves the answers
    cat = page.ask("What is the office cat called?")
    assert "faq.md" in [e.text for e in cat.find_elements("css selector", ".citations .filename")]
    page.tab("docs")
    page.wait.until(lambda _: "faq.md" in page.doc_names())
    page.doc_action("faq.md", "delete")
    page.answer_dialog()
    page.wait.until(lambda _: "faq.md" not in page.doc_names())
    page.tab("chat")
    page.find("#bypass-cache").click()  # the cache, too, forgets the document
    after = page.ask("What is the office cat called?")
    assert "faq.md" not in [e.text for e in after.find_elements("css selector", ".citations .filename")]


@pytest.mark.slow
@needs_chromium
def test_agent_mode_is_offered_only_when_the_server_has_it(page: Page) -> None:
    from selenium.webdriver.support.ui import Select

    with httpx.Client(base_url=page.driver.current_url.rstrip("/")) as c:
        spec = c.get("/openapi.json").json()
    schema = spec["paths"]["/api/chat/query"]["post"]["requestBody"]["content"][
        "application/json"]["schema"]
    if "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    has_agent = "agent" in json.dumps(schema.get("properties", {}).get("mode", {}))
    assert "properties" in schema and "message" in schema["properties"]
    Select(page.find("#mode")).select_by_value("agent")
    if has_agent:
        page.wait.until(lambda _: page.find("#steps-panel").is_displayed())
    else:
        page.wait.until(lambda _: page.find("#mode-note").is_displayed())
        assert page.find("#mode-note").text == "Agent mode is not available on this server."
        assert page.find("#mode").get_attribute("value") == "rag"
        assert page.find("#mode option[value=agent]").get_attribute("disabled") == "true"
        assert not page.find("#steps-panel").is_displayed()


@pytest.mark.slow
@needs_chromium
def test_keyboard_and_phone_width(page: Page) -> None:
    from selenium.webdriver.common.keys import Keys

    page.find("#tab-chat").send_keys(Keys.ARROW_RIGHT)
    assert page.driver.switch_to.active_element.get_attribute("id") == "tab-docs"
    assert page.find("#view-docs").is_displayed() and not page.find("#view-chat").is_displayed()
    unlabeled = page.driver.execute_script("""
        return [...document.querySelectorAll("input:not([type=hidden]), select, textarea")]
          .filter((e) => !e.labels.length && !e.getAttribute("aria-label") && !e.hidden)
          .map((e) => e.id);""")
    assert unlabeled == []
    page.driver.set_window_size(390, 844)
    for tab in ("docs", "chat"):
        page.tab(tab)
        width = page.driver.execute_script("return document.documentElement.scrollWidth")
        page.shot(f"phone-{tab}")
        assert width <= 390, tab  # nothing scrolls sideways at phone width


@pytest.fixture(scope="module")
def keyed_url(prepared_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    keys = {"acme-admin-key-123": {"tenant": "acme", "role": "admin"},
            "acme-reader-key-456": {"tenant": "acme", "role": "reader"}}
    with metis_serve(prepared_models, tmp_path_factory.mktemp("keyed"),
                     METIS_API_KEYS=json.dumps(keys)) as server:
        yield server.url


@pytest.mark.slow
@needs_chromium
def test_sign_in_with_a_key_shows_tenant_role_and_admin_views(keyed_url: str,
                                                              tmp_path: Path) -> None:
    driver = browser(tmp_path / "chromium-profile")
    try:
        driver.get(keyed_url + "/")
        page = Page(driver, "test_sign_in")
        page.wait.until(lambda _: page.find("#whoami").text == "not signed in")
        assert page.find("#auth-error").is_displayed()
        assert not page.find("#tab-admin").is_displayed()

        page.fill("api-key", "acme-reader-key-456")
        page.find("#signin-button").click()
        page.wait.until(lambda _: page.find("#whoami").text == "acme · reader")
        assert not page.find("#auth-error").is_displayed()
        assert not page.find("#tab-admin").is_displayed()

        page.fill("api-key", "acme-admin-key-123")
        page.find("#signin-button").click()
        page.wait.until(lambda _: page.find("#whoami").text == "acme · admin")
        assert driver.execute_script("return sessionStorage.getItem('metis.apiKey')") == \
            "acme-admin-key-123"
        page.tab("admin")
        page.fill("key-name", "ci robot")
        page.find("#key-form button").click()
        page.wait.until(lambda _: page.find("#new-key").is_displayed())
        assert "shown once" in page.find("#new-key").text
        page.wait.until(lambda _: "ci robot" in page.find("#keys").text)
        page.wait.until(lambda _: "key.create" in page.find("#audit").text)
        page.shot("admin")

        # the key lasts the browser session: a reload keeps it
        driver.refresh()
        page.wait.until(lambda _: page.find("#whoami").text == "acme · admin")
        page.find("#signout-button").click()
        page.wait.until(lambda _: page.find("#whoami").text == "not signed in")
        assert driver.execute_script("return sessionStorage.getItem('metis.apiKey')") is None
    finally:
        driver.quit()
