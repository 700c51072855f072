"""Deployment files (Dockerfile, compose, .dockerignore: checked without Docker, health checks run), gunicorn, docs."""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from api.config import GUNICORN_SETTINGS, SETTINGS, defaults, gunicorn_settings, settings_from_env, validate

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
    health = next(arg for name, arg in instructions if name == "HEALTHCHECK")
    assert "/health" in health
    assert json.loads(next(arg for name, arg in instructions if name == "CMD")) == ["gunicorn", "app:app"]
    copied = " ".join(arg for name, arg in instructions if name == "COPY")
    for needed in ("requirements.txt", "app.py", "gunicorn.conf.py", "api/", "schemas/", "perplexity/"):
        assert needed in copied
    # Dependencies are installed before the code is copied, so code edits keep the layer cache.
    names = [name + " " + arg for name, arg in instructions]
    assert names.index("RUN pip install -r requirements.txt") < names.index("COPY api/ api/")


def test_dockerfile_user_is_numeric_and_not_root():
    """Kubernetes' runAsNonRoot can only verify a numeric user (it does not read the image's /etc/passwd)."""
    instructions = dockerfile_instructions()
    users = [arg for name, arg in instructions if name == "USER"]
    assert users, "no USER: the image would run as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, users[-1]
    assert not gid or (gid.isdigit() and int(gid) != 0), users[-1]
    # The user the image runs as is the one it creates, and the CMD runs after the last USER.
    created = " ".join(arg for name, arg in instructions if name == "RUN")
    assert re.search(rf"useradd\b[^&]*--uid {uid}\b", created)
    names = [name for name, _ in instructions]
    assert len(names) - 1 - names[::-1].index("USER") < names.index("CMD")


def _local_top_level_imports(paths: list[Path]) -> set[str]:
    """The repository's own top-level modules and packages that these Python files import."""
    local = {p.stem for p in ROOT.glob("*.py")} | {p.parent.name for p in ROOT.glob("*/__init__.py")}
    found: set[str] = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found & local


def test_dockerfile_copies_only_what_runs():
    copies = [shlex.split(arg) for name, arg in dockerfile_instructions() if name == "COPY"]
    sources = [source.rstrip("/") for args in copies for source in args[:-1] if not source.startswith("--")]
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such file"
        assert source not in ("tests", "scripts", "docs", ".env", ".git", "."), f"COPY {source}: not needed to run"
    # Everything the copied code imports from this repository is copied too (nothing missing at run time).
    code = [ROOT / s for s in sources if s.endswith(".py")]
    code += [p for s in sources if (ROOT / s).is_dir() for p in (ROOT / s).rglob("*.py")]
    missing = _local_top_level_imports(code) - {Path(s).stem for s in sources}
    assert not missing, f"imported but not copied: {sorted(missing)}"


def test_dockerignore_keeps_secrets_and_bulk_out_of_the_build_context():
    patterns = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    }
    for needed in (".env", ".git", "tests", "docs", ".venv", "**/__pycache__", ".pytest_cache", "scripts"):
        assert needed in patterns, needed
    # Nothing the Dockerfile copies is excluded.
    copied = {arg.split()[0].rstrip("/") for name, arg in dockerfile_instructions() if name == "COPY"}
    assert not copied & patterns


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def shared_state_settings() -> set[str]:
    """The settings that select where shared state lives: those that accept a redis:// URL."""
    return {s.name for s in SETTINGS if s.kind is str and s.check and s.check("redis://redis:6379/0") is None}


def test_shared_state_settings_are_the_two_stores():
    # Quotas and stream leases (RATELIMIT_STORAGE_URI); conversations, stored and background responses and the
    # account pool's state (CONVERSATION_STORE_URI). A new one must be wired in docker-compose.yml too (below).
    assert shared_state_settings() == {"RATELIMIT_STORAGE_URI", "CONVERSATION_STORE_URI"}


def test_compose_runs_the_server_with_redis():
    services = compose()["services"]
    server = services["server"]
    assert server["build"] == "." and server["env_file"] == ".env"
    assert "8000:8000" in server["ports"]
    assert server["environment"]["PORT"] == "8000"


def test_compose_sets_only_real_settings():
    known = {s.name for s in SETTINGS} | {s.name for s in GUNICORN_SETTINGS}
    environment = compose()["services"]["server"]["environment"]
    assert isinstance(environment, dict)
    assert set(environment) <= known, sorted(set(environment) - known)
    values = {**defaults(), **settings_from_env({k: str(v) for k, v in environment.items()})}
    validate(values)  # every value is one the server accepts at start
    gunicorn_settings({k: str(v) for k, v in environment.items()})


def test_compose_puts_every_shared_store_in_its_redis():
    services = compose()["services"]
    environment = services["server"]["environment"]
    for name in shared_state_settings():
        url = urlsplit(environment.get(name, ""))
        assert url.scheme == "redis" and url.hostname in services and url.port == 6379, (name, url)
        assert services[url.hostname]["image"].startswith("redis:")
    # One Redis holds every store: /health/ready pings the conversation store's, and that answers for all.
    assert len({environment[name] for name in shared_state_settings()}) == 1


def test_compose_health_is_readiness_and_waits_for_a_healthy_redis():
    services = compose()["services"]
    server, redis_service = services["server"], services["redis"]
    assert server["healthcheck"]["test"][0] == "CMD"
    assert "/health/ready" in " ".join(server["healthcheck"]["test"])
    assert server["depends_on"] == {"redis": {"condition": "service_healthy"}}
    assert redis_service["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    # The rotated cookie's file is on a volume the image's user owns (the Dockerfile makes /data its own).
    token_file = Path(server["environment"]["PERPLEXITY_TOKEN_FILE"])
    assert any(volume.endswith(f":{token_file.parent}") for volume in server["volumes"])
    assert "mkdir /data && chown 10001:10001 /data" in (ROOT / "Dockerfile").read_text()


def test_the_commented_second_instance_matches_the_first():
    """The commented `server-2` block, uncommented, is valid and shares the same Redis and settings."""
    text = (ROOT / "docker-compose.yml").read_text()
    block = re.search(r"^  # server-2:\n((?:  #   .*\n)+)", text, re.M)
    assert block
    second = yaml.safe_load("\n".join(line[6:] for line in block.group(1).splitlines()))
    first = compose()["services"]["server"]
    assert second["environment"] == first["environment"]
    assert second["depends_on"] == first["depends_on"] and second["healthcheck"] == first["healthcheck"]
    assert second["ports"] != first["ports"]


def _probe(argv: list[str], port: int) -> int:
    """Run a health check as Docker would, against the live server on `port`: its exit status (0: healthy)."""
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "PORT": str(port)}  # `python` is this one
    return subprocess.run(argv, env=env, capture_output=True, timeout=30).returncode


def test_compose_environment_starts_a_server_its_health_checks_judge_right(fake, live_server_factory, tmp_path):
    """The compose environment (its Redis at 127.0.0.1) starts a server; the compose readiness check passes, then
    fails on an expired session, while the image's liveness check passes throughout."""
    environment = {k: str(v) for k, v in compose()["services"]["server"]["environment"].items()}
    # Database 13 of the shared test Redis: every single-token server shares pplx:account:default on database 0.
    env = {k: v.replace("redis://redis:6379/0", "redis://127.0.0.1:6379/13") for k, v in environment.items()}
    env.pop("PORT")  # the live server takes a free port
    env["PERPLEXITY_TOKEN_FILE"] = str(tmp_path / "session-token.json")
    server = live_server_factory(**env, SESSION_CHECK_SECONDS="0")
    test = compose()["services"]["server"]["healthcheck"]["test"]
    assert test[:2] == ["CMD", "python"]
    readiness = [arg.replace(":8000/", f":{server.port}/") for arg in test[1:]]
    health = next(arg for name, arg in dockerfile_instructions() if name == "HEALTHCHECK")
    liveness = ["/bin/sh", "-c", health.split(" CMD ", 1)[1]]  # the shell form, reading PORT
    assert _probe(readiness, server.port) == 0, server.log()
    assert _probe(liveness, server.port) == 0
    fake.session_valid = False
    assert _probe(readiness, server.port) != 0
    assert _probe(liveness, server.port) == 0


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
