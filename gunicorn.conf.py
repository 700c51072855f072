"""gunicorn settings for this server, read automatically from the working directory (cf. example_config.py)."""

import os
import sys

from gunicorn.glogging import Logger  # gunicorn itself, not the app: safe before patching

from api.config import SettingError, gunicorn_settings, load_dotenv_file  # stdlib only: safe before patching

# .env first, so a PORT (or any setting) there counts here too, not only in the app that loads later.
load_dotenv_file()
try:
    _env = gunicorn_settings(os.environ)
except SettingError as exc:
    sys.stderr.write(f"error: {exc}\n")
    raise SystemExit(1) from None

# Server socket
#   bind - where to listen. PaaS platforms set PORT; 8000 otherwise.
bind = f"0.0.0.0:{_env['PORT']}"

#   backlog - connections queued while every worker is busy accepting.
backlog = 2048

# Worker processes
#   worker_class - gevent: one greenlet per connection, so one worker holds thousands of long SSE streams
#       while blocking `requests` calls to Perplexity cooperate (gevent patches the socket module).
#   workers - default 1: conversation state, quotas and the stream cap live in process memory unless a
#       Redis URL is configured, so more workers would each see only their own share.
#   worker_connections - open connections (streams) one worker accepts; each costs ~2 file descriptors.
#   timeout - for gevent workers this is a heartbeat of the worker's event loop, not a request limit:
#       a 10-minute Deep Research stream is fine; only a hub blocked for this long gets the worker killed.
#   graceful_timeout - on SIGTERM, how long in-flight streams may finish before the worker is stopped.
#   keepalive - seconds to wait for the next request on a kept-alive connection; keep it above a fronting
#       balancer's idle timeout so the two do not race.
#   max_requests - 0: recycling a worker would cut every stream it holds.
worker_class = "gevent"
workers = _env["WEB_CONCURRENCY"]
worker_connections = _env["WORKER_CONNECTIONS"]
timeout = _env["GUNICORN_TIMEOUT"]
graceful_timeout = _env["GRACEFUL_TIMEOUT"]
keepalive = _env["KEEPALIVE"]
max_requests = 0

#   preload_app - must stay False: gevent patches sockets and ssl in each worker after the fork, and
#       anything imported before that (the app, requests, urllib3) would keep unpatched, blocking sockets.
preload_app = False

# Logging
#   accesslog/errorlog - "-" is stdout/stderr, where PaaS platforms collect logs.
#   logger_class - gunicorn's logger with a leaner access line (below): the same fields as
#       '%(h)s "%(r)s" %(s)s %(b)s %(M)sms rid=%({x-request-id}o)s' without building gunicorn's
#       dict of every header per request (several times cheaper).
#       ACCESS_LOG=false turns the access log off.
accesslog = "-" if _env["ACCESS_LOG"] else None
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").strip().lower()


class AccessLogger(Logger):
    """One access line per request: client, request line, status, bytes sent, milliseconds, request id."""

    def access(self, resp, req, environ, request_time):  # noqa: ANN001, ANN201 - gunicorn's signature
        if not self.access_log_enabled:
            return
        request_id = "-"
        for name, value in resp.headers:
            if name.lower() == "x-request-id":
                request_id = value
                break
        status = resp.status.split(None, 1)[0] if isinstance(resp.status, str) else resp.status
        sent = resp.sent if getattr(resp, "sent", None) is not None else "-"
        self.access_log.info(
            '%s "%s %s %s" %s %s %dms rid=%s',
            environ.get("REMOTE_ADDR", "-"),
            environ["REQUEST_METHOD"],
            environ["RAW_URI"],
            environ["SERVER_PROTOCOL"],
            status,
            sent,
            request_time.total_seconds() * 1000,
            request_id,
        )


logger_class = AccessLogger

# Server mechanics
#   forwarded_allow_ips - trust X-Forwarded-* only from these addresses (TRUST_PROXY sets a list).
forwarded_allow_ips = _env["FORWARDED_ALLOW_IPS"]
