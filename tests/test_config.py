"""Settings: every value is checked at start-up with one line naming the variable, and `.env` feeds gunicorn too."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from api.config import GUNICORN_SETTINGS, SETTINGS, SettingError, gunicorn_settings, settings_from_env, validate
from app import create_app

from .conftest import ROOT, free_port


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("DEFAULT_CITATION_MODE", "markdwn", "DEFAULT_CITATION_MODE must be one of default, markdown, clean"),
        ("PERPLEXITY_IMPERSONATE", "chrom", "PERPLEXITY_IMPERSONATE must be auto, off or a curl_cffi browser"),
        ("PERPLEXITY_BASE_URL", "www.perplexity.ai", "PERPLEXITY_BASE_URL must be an http(s) URL"),
        ("HEARTBEAT_INTERVAL", 0, "HEARTBEAT_INTERVAL must be at least 0.05"),
        ("PERPLEXITY_POOL_SIZE", 0, "PERPLEXITY_POOL_SIZE must be at least 1"),
        ("PERPLEXITY_MAX_RETRIES", 50, "PERPLEXITY_MAX_RETRIES must be at most 10"),
        ("MAX_CONCURRENT_STREAMS", -1, "MAX_CONCURRENT_STREAMS must be at least 0"),
        ("CONVERSATION_STORE_URI", "redis//localhost", "CONVERSATION_STORE_URI must start with one of memory://"),
        ("LOG_LEVEL", "LOUD", "LOG_LEVEL must be one of CRITICAL"),
        ("ENABLE_RATE_LIMITING", "yes please", "ENABLE_RATE_LIMITING must be true or false"),
        ("REQUESTS_PER_MINUTE", "sixty", "REQUESTS_PER_MINUTE must be a number"),
        ("ANTHROPIC_MODEL_MAP", "claude-*haiku*", "ANTHROPIC_MODEL_MAP must be comma-separated pattern=model pairs"),
    ],
)
def test_create_app_refuses_an_unusable_setting_naming_it(name, value, expected):
    with pytest.raises(SettingError) as info:
        create_app({name: value})
    assert str(info.value).startswith(expected) and "\n" not in str(info.value)


@pytest.mark.parametrize("value", ["auto", "off", "OFF", "", "chrome", "chrome131", "safari", "firefox"])
def test_impersonation_targets_curl_cffi_knows_are_accepted(value):
    validate({"PERPLEXITY_IMPERSONATE": value})


def test_every_default_is_valid():
    validate({s.name: s.default for s in SETTINGS})
    validate({s.name: s.default for s in GUNICORN_SETTINGS}, GUNICORN_SETTINGS)


def test_environment_values_are_parsed_and_a_bad_one_is_named():
    values = settings_from_env({"HEARTBEAT_INTERVAL": "2.5", "ENABLE_RATE_LIMITING": "on", "PERPLEXITY_POOL_SIZE": "8"})
    assert values == {"HEARTBEAT_INTERVAL": 2.5, "ENABLE_RATE_LIMITING": True, "PERPLEXITY_POOL_SIZE": 8}
    with pytest.raises(SettingError, match="^PERPLEXITY_POOL_SIZE must be a whole number, not '8.5'$"):
        settings_from_env({"PERPLEXITY_POOL_SIZE": "8.5"})


def test_a_secret_is_never_echoed_in_the_error():
    with pytest.raises(SettingError) as info:
        validate({"OPENAI_API_KEY": 12345})
    assert "12345" not in str(info.value) and "<hidden>" in str(info.value)


def test_a_store_uri_is_never_echoed_since_it_may_carry_a_password():
    with pytest.raises(SettingError) as info:
        validate({"CONVERSATION_STORE_URI": "redis//user:s3cret@host"})
    assert "s3cret" not in str(info.value)


def test_gunicorn_settings_are_checked_too():
    assert gunicorn_settings({"PORT": "9001", "ACCESS_LOG": "false"})["PORT"] == 9001
    with pytest.raises(SettingError, match="^PORT must be at most 65535"):
        gunicorn_settings({"PORT": "70000"})


def _gunicorn_conf(cwd, monkeypatch):
    monkeypatch.chdir(cwd)
    spec = importlib.util.spec_from_file_location("gunicorn_conf_dotenv", ROOT / "gunicorn.conf.py")
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    return conf


def test_gunicorn_reads_port_and_workers_from_dotenv(tmp_path, monkeypatch):
    # load_dotenv writes into os.environ: give it a copy, so nothing leaks into later tests.
    environ = {k: v for k, v in os.environ.items() if k not in ("PORT", "WEB_CONCURRENCY", "KEEPALIVE")}
    monkeypatch.setattr(os, "environ", environ)
    environ["KEEPALIVE"] = "5"  # the environment still wins over .env
    (tmp_path / ".env").write_text("PORT=9123\nWEB_CONCURRENCY=3\nKEEPALIVE=99\n")
    conf = _gunicorn_conf(tmp_path, monkeypatch)
    assert conf.bind == "0.0.0.0:9123" and conf.workers == 3 and conf.keepalive == 5


def test_gunicorn_refuses_to_start_on_a_bad_setting_with_one_line(fake):
    """A typo stops the server at once, one line naming the variable, no traceback, no request sent upstream."""
    port = free_port()
    env = {
        "PATH": "/usr/bin:/bin",
        "PERPLEXITY_SESSION_TOKEN": "x",
        "PERPLEXITY_BASE_URL": fake.url,
        "DEFAULT_CITATION_MODE": "markdwn",
    }
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "app:app", "--bind", f"127.0.0.1:{port}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "error: DEFAULT_CITATION_MODE must be one of default, markdown, clean, footnotes, not 'markdwn'" in output
    assert "Traceback" not in output and fake.asks == []


def test_gunicorn_refuses_a_bad_port_before_any_worker(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "app:app"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "PORT": "eighty"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and "error: PORT must be a whole number, not 'eighty'" in result.stderr
    assert "Traceback" not in result.stderr
