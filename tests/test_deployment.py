"""Deployment files: Dockerfile and compose parsed and checked (no Docker engine here), gunicorn config, docs."""

from __future__ import annotations

import importlib.util
import json
import re

import pytest
import yaml

from api.config import SETTINGS

from .conftest import ROOT


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text()
    joined = re.sub(r"\\\n\s*", " ", text)  # line continuations
    lines = [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def test_dockerfile_is_slim_non_root_with_a_healthcheck():
    instructions = dockerfile_instructions()
    known = {"FROM", "ENV", "WORKDIR", "COPY", "RUN", "USER", "EXPOSE", "HEALTHCHECK", "CMD", "ARG", "LABEL"}
    assert all(name in known for name, _ in instructions), instructions
    assert instructions[0][0] == "FROM" and re.fullmatch(r"python:3\.1[1-9]-slim", instructions[0][1])
    users = [arg for name, arg in instructions if name == "USER"]
    assert users and users[-1] not in ("root", "0")
    health = next(arg for name, arg in instructions if name == "HEALTHCHECK")
    assert "/health" in health
    assert json.loads(next(arg for name, arg in instructions if name == "CMD")) == ["gunicorn", "app:app"]
    copied = " ".join(arg for name, arg in instructions if name == "COPY")
    for needed in ("requirements.txt", "app.py", "gunicorn.conf.py", "api/", "schemas/", "perplexity/"):
        assert needed in copied
    # Dependencies are installed before the code is copied, so code edits keep the layer cache.
    names = [name + " " + arg for name, arg in instructions]
    assert names.index("RUN pip install -r requirements.txt") < names.index("COPY api/ api/")


def test_compose_runs_the_server_with_redis():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    server = compose["services"]["server"]
    assert server["build"] == "." and server["env_file"] == ".env"
    assert "8000:8000" in server["ports"]
    assert server["environment"]["RATELIMIT_STORAGE_URI"].startswith("redis://redis:6379")
    assert "redis" in compose["services"] and "redis" in server["depends_on"]
    assert "/health" in " ".join(server["healthcheck"]["test"])


def test_procfile_runs_gunicorn():
    assert (ROOT / "Procfile").read_text().strip() == "web: gunicorn app:app"


def test_gunicorn_config_is_right_for_long_streams(monkeypatch):
    monkeypatch.setenv("PORT", "9123")
    spec = importlib.util.spec_from_file_location("gunicorn_conf_under_test", ROOT / "gunicorn.conf.py")
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    from gunicorn.util import load_class
    from gunicorn.workers.ggevent import GeventWorker

    # The production worker: gunicorn's gevent worker with bounded body reads and JSON errors (api.edge.worker).
    assert issubclass(load_class(conf.worker_class), GeventWorker) and conf.workers == 1
    assert conf.preload_app is False and conf.max_requests == 0
    assert conf.bind == "0.0.0.0:9123"
    assert conf.accesslog == "-" and conf.graceful_timeout >= 30
    monkeypatch.setenv("ACCESS_LOG", "false")
    spec.loader.exec_module(conf)
    assert conf.accesslog is None


def test_access_line_has_the_fields_of_the_documented_format(monkeypatch, capsys):
    import datetime

    from .conftest import access_logger

    monkeypatch.delenv("ACCESS_LOG", raising=False)
    logger = access_logger("gunicorn_conf_access")

    class Resp:
        status, sent = "429 TOO MANY REQUESTS", 188
        headers = [("Content-Type", "application/json"), ("X-Request-ID", "req_1")]

    environ = {
        "REMOTE_ADDR": "10.0.0.7",
        "REQUEST_METHOD": "POST",
        "RAW_URI": "/v1/chat/completions?x=1",
        "SERVER_PROTOCOL": "HTTP/1.1",
    }
    logger.access(Resp, None, environ, datetime.timedelta(milliseconds=12, microseconds=600))
    line = capsys.readouterr().out.strip()
    assert line == '10.0.0.7 "POST /v1/chat/completions?x=1 HTTP/1.1" 429 188 12ms rid=req_1'


@pytest.mark.parametrize("setting", [s.name for s in SETTINGS])
def test_every_setting_is_documented(setting):
    assert re.search(rf"^{setting}=", (ROOT / ".env.example").read_text(), re.M)
    assert f"`{setting}`" in (ROOT / "README.md").read_text()


def test_gunicorn_variables_are_documented():
    readme, example = (ROOT / "README.md").read_text(), (ROOT / ".env.example").read_text()
    for name in re.findall(r"os\.environ\.get\(\"(\w+)\"", (ROOT / "gunicorn.conf.py").read_text()):
        assert f"`{name}`" in readme and f"{name}=" in example


def test_the_ci_script_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    command = "pip install -r requirements-dev.txt && python -m pytest"
    assert command in readme
    assert command in (ROOT / ".ci/run").read_text().splitlines()
