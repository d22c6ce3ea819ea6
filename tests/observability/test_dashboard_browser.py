"""A real `metis serve` with real traffic: its logs are JSON lines with request ids, and the
/dashboard page in headless Chromium draws real data (a screenshot is saved; its path is
printed)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from .conftest import DOC

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
QUESTIONS = ["How long is the refund window?", "how long is the refund window",
             "Is shipping free?", "When do parcels leave?", "What condition must items be in?"]
CHARTS_WITH_DATA = ["c-latency", "c-rps", "c-cache", "c-cpu", "c-memory"]

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    log: Path


@pytest.fixture(scope="module")
def metis_server(prepared_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp_path = tmp_path_factory.mktemp("serve")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "models").symlink_to(prepared_models, target_is_directory=True)
    port = _free_port()
    env = {**os.environ,
           "METIS_DATA_DIR": str(data_dir), "METIS_PORT": str(port), "METIS_LOG_FORMAT": "json",
           "METIS_OBSERVABILITY__SAMPLE_INTERVAL_S": "1",
           # low enough that this traffic fires the latency alert: "recent alerts" has data
           "METIS_OBSERVABILITY__ALERT_P95_MS": "0.5"}
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "metis_rag", "serve"], env=env,
                            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise RuntimeError("metis serve exited:\n" + (tmp_path / "server.log").read_text())
            try:
                if httpx.get(url + "/api/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("metis serve did not come up")
            time.sleep(0.2)
        _traffic(url)
        yield Server(url, tmp_path / "server.log")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


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


def _browser(user_data_dir: Path) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # type: ignore[assignment]
    for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                 "--window-size=1400,1250", f"--user-data-dir={user_data_dir}"]:
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def test_serve_logs_json_lines_with_request_ids(metis_server: Server) -> None:
    r = httpx.get(metis_server.url + "/api/documents", headers={"X-Request-ID": "probe-7"})
    assert r.headers["x-request-id"] == "probe-7"
    time.sleep(0.2)
    lines = [orjson.loads(line) for line in metis_server.log.read_text().splitlines()]
    # uvicorn's own lines come through the same renderer
    assert any(ln["logger"].startswith("uvicorn") for ln in lines)
    access = [ln for ln in lines if ln["logger"] == "metis.access"]
    assert len(access) >= 25
    assert all(len(ln["request_id"]) == 16 or ln["request_id"] == "probe-7" for ln in access)
    assert len({ln["request_id"] for ln in access}) == len(access)
    probe = next(ln for ln in access if ln["request_id"] == "probe-7")
    assert probe["route"] == "/api/documents" and probe["status"] == 200


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                    reason="needs Debian's chromium and chromium-driver "
                           "(apt-get install chromium chromium-driver; ./scripts/test does it)")
def test_dashboard_draws_live_data(metis_server: Server, tmp_path: Path) -> None:
    from selenium.webdriver.support.wait import WebDriverWait

    driver = _browser(tmp_path / "chromium-profile")
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
        assert driver.find_element("id", "c-tasks").get_attribute("data-points") == "0"
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "dashboard.png"
        assert driver.save_screenshot(str(shot))
        print(f"dashboard screenshot: {shot}")
    finally:
        driver.quit()
