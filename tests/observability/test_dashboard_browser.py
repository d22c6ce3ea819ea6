"""The /dashboard page in headless Chromium against a real `metis serve` with real traffic: the
charts draw real data, and a screenshot is saved (its path is printed)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
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


@pytest.fixture
def metis_server(make_settings, tmp_path: Path) -> Iterator[str]:  # type: ignore[no-untyped-def]
    settings = make_settings()  # a data dir with the prepared model linked in
    port = _free_port()
    env = {**os.environ,
           "METIS_DATA_DIR": str(settings.data_dir), "METIS_PORT": str(port),
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
        yield url
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
        assert r.status_code == 201, r.text
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


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                    reason="needs Debian's chromium and chromium-driver "
                           "(apt-get install chromium chromium-driver; ./scripts/test does it)")
def test_dashboard_draws_live_data(metis_server: str, tmp_path: Path) -> None:
    from selenium.webdriver.support.wait import WebDriverWait

    _traffic(metis_server)
    driver = _browser(tmp_path / "chromium-profile")
    try:
        driver.get(metis_server + "/dashboard")
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
