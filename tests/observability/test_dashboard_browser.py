"""A real `metis serve` with real traffic: its logs are JSON lines with request ids, and the
/dashboard page in headless Chromium draws real data (a screenshot is saved; its path is
printed)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.browser import ARTIFACTS, Server, browser, metis_serve, needs_chromium
from tests.waiting import eventually_blocking

from .conftest import DOC

pytestmark = pytest.mark.slow

QUESTIONS = ["How long is the refund window?", "how long is the refund window",
             "Is shipping free?", "When do parcels leave?", "What condition must items be in?"]
CHARTS_WITH_DATA = ["c-latency", "c-rps", "c-cache", "c-tasks", "c-cpu", "c-memory"]

# Counts the pixels of a chart drawn in one colour (a series line), so an axis, a legend
# swatch or a "no data" caption alone cannot pass for a drawn series.
PIXELS_OF_COLOUR = """
const [id, r, g, b] = arguments;
const c = document.getElementById(id);
const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
let n = 0;
for (let i = 0; i < data.length; i += 4) {
  if (Math.abs(data[i] - r) < 30 && Math.abs(data[i + 1] - g) < 30 &&
      Math.abs(data[i + 2] - b) < 30 && data[i + 3] > 200) n++;
}
return n;
"""


@pytest.fixture(scope="module")
def metis_server(prepared_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with metis_serve(prepared_models, tmp_path_factory.mktemp("serve"),
                     METIS_LOG_FORMAT="json", METIS_OBSERVABILITY__SAMPLE_INTERVAL_S="1",
                     # low enough that this traffic fires the latency alert: "recent alerts"
                     # has data
                     METIS_OBSERVABILITY__ALERT_P95_MS="0.5") as server:
        _traffic(server.url)
        yield server


def _traffic(url: str) -> None:
    with httpx.Client(base_url=url, timeout=30) as c:
        r = c.post("/api/documents", data={"collection": "handbook"},
                   files={"files": ("policy.md", DOC.encode())})
        assert r.status_code == 202, r.text
        for task_id in r.json()["task_ids"]:  # ingestion runs as a task: wait for it
            while c.get(f"/api/tasks/{task_id}").json()["status"] != "completed":
                time.sleep(0.1)
        for _ in range(4):  # spread over a few sample steps so the series have several points
            for q in QUESTIONS:
                r = c.post("/api/chat/query", json={"message": q, "collection": "handbook"})
                assert r.status_code == 200, r.text
            assert c.get("/api/documents/424242").status_code == 404
            time.sleep(0.6)


def test_serve_logs_json_lines_with_request_ids(metis_server: Server) -> None:
    r = httpx.get(metis_server.url + "/api/documents", headers={"X-Request-ID": "probe-7"})
    assert r.headers["x-request-id"] == "probe-7"
    # The access line is written after the response: wait for it, then read every line.
    eventually_blocking(lambda: '"probe-7"' in metis_server.log.read_text(),
                        what="the probe's access line was never logged")
    lines = [orjson.loads(line) for line in metis_server.log.read_text().splitlines()]
    # uvicorn's own lines come through the same renderer
    assert any(ln["logger"].startswith("uvicorn") for ln in lines)
    access = [ln for ln in lines if ln["logger"] == "metis.access"]
    assert len(access) >= 25
    assert all(len(ln["request_id"]) == 16 or ln["request_id"] == "probe-7" for ln in access)
    assert len({ln["request_id"] for ln in access}) == len(access)
    probe = next(ln for ln in access if ln["request_id"] == "probe-7")
    assert probe["route"] == "/api/documents" and probe["status"] == 200


@needs_chromium
def test_dashboard_draws_live_data(metis_server: Server, tmp_path: Path) -> None:
    from selenium.webdriver.support.wait import WebDriverWait

    driver = browser(tmp_path / "chromium-profile")
    try:
        driver.get(metis_server.url + "/dashboard")
        state = "return window.metisDashboard"
        WebDriverWait(driver, 30).until(
            lambda d: (d.execute_script(state) or {}).get("updates", 0) >= 2)
        dash = driver.execute_script(state)
        assert dash["errors"] == 0
        for chart in CHARTS_WITH_DATA:
            assert dash["charts"][chart]["points"] > 0, (chart, dash["charts"][chart])
        summary = dash["summary"]
        assert summary["requests"]["requests"] >= 25
        assert summary["cache"]["levels"]["exact"]["hits"] >= 10
        # drawn, not just computed: the p95 line (#e4572e) and the CPU line (#805ad5)
        assert driver.execute_script(PIXELS_OF_COLOUR, "c-latency", 0xE4, 0x57, 0x2E) > 50
        assert driver.execute_script(PIXELS_OF_COLOUR, "c-memory", 0xD6, 0x9E, 0x2E) > 50
        assert driver.find_element("id", "t-rps").text not in ("", "–")
        alerts = driver.find_elements("css selector", "#alerts li:not(.none)")
        assert any("p95 latency" in a.text for a in alerts), [a.text for a in alerts]
        # the ingestion ran as a task: the chart shows it, from the task system itself
        assert summary["tasks"]["connected"] is True
        assert summary["tasks"]["by_status"]["completed"] >= 1
        assert int(driver.find_element("id", "c-tasks").get_attribute("data-points")) > 0
        cpu = [p["cpu_percent"] for p in summary["process"]["series"]]
        assert all(c is None or 0 <= c <= 100 for c in cpu), cpu
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "dashboard.png"
        assert driver.save_screenshot(str(shot))
        print(f"dashboard screenshot: {shot}")
    finally:
        driver.quit()


@needs_chromium
def test_dashboard_signs_in_when_its_data_needs_an_operator_key(
    prepared_models: Path, tmp_path: Path,
) -> None:
    from selenium.webdriver.support.wait import WebDriverWait

    keys = {"dash-operator-key": {"tenant": "acme", "role": "operator"},
            "dash-admin-key": {"tenant": "acme", "role": "admin"}}
    (tmp_path / "serve").mkdir()
    with metis_serve(prepared_models, tmp_path / "serve",
                     METIS_API_KEYS=orjson.dumps(keys).decode()) as server:
        driver = browser(tmp_path / "chromium-profile")
        state = "return window.metisDashboard"
        try:
            driver.get(server.url + "/dashboard")  # the page itself is public: no data in it
            WebDriverWait(driver, 30).until(lambda d: (d.execute_script(state) or {}).get("signIn"))
            form = driver.find_element("id", "sign-in")
            assert form.is_displayed() and driver.execute_script(state)["updates"] == 0
            assert "needs an API key" in driver.find_element("id", "sign-in-message").text
            assert "operator API key" in driver.find_element("id", "status").text

            def sign_in(key: str) -> None:
                field = driver.find_element("id", "api-key")
                field.clear()
                field.send_keys(key)
                driver.find_element("css selector", "#sign-in button").click()

            sign_in("dash-admin-key")  # a tenant's admin is refused, with the server's sentence
            WebDriverWait(driver, 30).until(lambda d: "this key is an admin" in d.find_element(
                "id", "sign-in-message").text)
            assert driver.execute_script(state)["updates"] == 0
            sign_in("dash-operator-key")
            WebDriverWait(driver, 30).until(
                lambda d: (d.execute_script(state) or {}).get("updates", 0) >= 2)
            assert not form.is_displayed() and driver.execute_script(state)["errors"] == 0
            # The key lasts the browser session: a reload draws at once, and the question page
            # has it too.
            driver.get(server.url + "/dashboard")
            WebDriverWait(driver, 30).until(
                lambda d: (d.execute_script(state) or {}).get("updates", 0) >= 1)
            assert not driver.find_element("id", "sign-in").is_displayed()
            driver.get(server.url + "/")
            assert driver.find_element("id", "api-key").get_attribute("value") == "dash-operator-key"
        finally:
            driver.quit()
