"""What the tests that drive a real `metis serve` in headless Chromium share: starting the
server on a free port, and the browser."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.spawn import free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"  # screenshots

needs_chromium = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Debian's chromium and chromium-driver "
           "(apt-get install chromium chromium-driver; ./scripts/test does it)")


@dataclass
class Server:
    url: str
    log: Path


@contextmanager
def metis_serve(prepared_models: Path, tmp_path: Path, **env: str) -> Iterator[Server]:
    """A real `metis serve` on a fresh data dir (with the tests' prepared model), up and
    healthy; stopped with SIGINT (as a user's Ctrl-C) afterwards."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "models").symlink_to(prepared_models, target_is_directory=True)
    port = free_port()
    full_env = {**os.environ, "METIS_DATA_DIR": str(data_dir), "METIS_PORT": str(port), **env}
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "metis_rag", "serve"], env=full_env,
                                stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 180
            while True:
                if proc.poll() is not None:
                    raise RuntimeError("metis serve exited:\n" + log_path.read_text())
                try:
                    if httpx.get(url + "/api/health", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("metis serve did not come up")
                time.sleep(0.2)
            yield Server(url, log_path)
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def browser(user_data_dir: Path) -> Any:
    """Headless Debian Chromium under selenium, with nothing that reaches the network."""
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
