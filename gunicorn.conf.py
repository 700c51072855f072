"""gunicorn settings for this server, read automatically from the working directory (cf. example_config.py)."""

import logging
import os
import sys
import time

from gunicorn.glogging import Logger  # gunicorn itself, not the app: safe before patching

# stdlib (and orjson) only: safe before patching
from api.config import SettingError, app_setting, gunicorn_settings, load_dotenv_file
from api.edge.logs import JsonFormatter, json_line, timestamp

# .env first, so a PORT (or any setting) there counts here too, not only in the app that loads later.
load_dotenv_file()
try:
    _env = gunicorn_settings(os.environ)
    _json_logs = app_setting("LOG_FORMAT", os.environ) == "json"
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
#   keepalive - seconds to wait for the next request on a kept-alive connection, and (gunicorn's async workers
#       use the same timer) for a new connection's request line and headers. Default 65: above the 60 s idle
#       timeout of the balancers this runs behind (AWS ALB, nginx's upstream `keepalive_timeout`), so a balancer
#       never sends a request on a connection this side has just closed (a 502). Each idle or header-trickling
#       socket holds one of WORKER_CONNECTIONS slots for up to this long: behind a balancer those are the few
#       connections of its pool; exposed directly, 10,000 slots / 65 s means 154 new idle connections a second
#       fill a worker, so set 5 there (what uvicorn, Node and the openai SDK's connection pool use).
#       Request bodies have their own bounds (BODY_READ_TIMEOUT, BODY_TOTAL_TIMEOUT; api/edge/worker.py).
#   max_requests - 0: recycling a worker would cut every stream it holds.
#   worker_class - gunicorn's gevent worker (api/edge/worker.py) with bounded request-body reads, refused bodies
#       closed instead of drained, and OpenAI-shaped JSON for the requests gunicorn itself rejects.
worker_class = "api.edge.worker.GeventWorker"
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
#       ACCESS_LOG=false turns the access log off. With LOG_FORMAT=json each access record is one JSON object
#       (client, method, route, path, status, bytes, ms, time to first token, request id, key label, account),
#       and gunicorn's own lines (start-up, workers) are JSON too.
accesslog = "-" if _env["ACCESS_LOG"] else None
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").strip().lower()


class AccessLogger(Logger):
    """One access line per request: client, request line, status, bytes sent, milliseconds, request id, and the
    key's label when a key was used (never the key); one JSON object instead with LOG_FORMAT=json."""

    def setup(self, cfg):  # noqa: ANN001, ANN201 - gunicorn's signature
        super().setup(cfg)
        for handler in self.error_log.handlers:
            handler.addFilter(_RedactOnceLoaded())
            if _json_logs:  # gunicorn's own lines (booting, workers, errors) as JSON too
                handler.setFormatter(JsonFormatter())

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
        if _json_logs:
            self.access_log.info("%s", _access_json(environ, status, sent, request_time, request_id))
            return
        key = environ.get("pplx.key")  # the label api.edge.auth recorded
        self.access_log.info(
            '%s "%s %s %s" %s %s %dms rid=%s' + (" key=%s" if key else "%s"),
            environ.get("REMOTE_ADDR", "-"),
            environ["REQUEST_METHOD"],
            _redacted(environ["RAW_URI"]),
            environ["SERVER_PROTOCOL"],
            status,
            sent,
            request_time.total_seconds() * 1000,
            request_id,
            key or "",
        )


class _RedactOnceLoaded(logging.Filter):
    """The app's redaction on gunicorn's own lines: a malformed request line is logged whole ("Invalid request
    from ip=...: Invalid HTTP request line: 'GET /v1/models?api_key=...'"), key included. The secrets are known
    where the app is loaded (the workers; it registers them); the master, which never loads it, logs no request."""

    def filter(self, record):  # noqa: ANN001, ANN201 - logging's signature
        redact = sys.modules.get("api.edge.redact")  # never imported here: not before gevent patches the worker
        return redact.RedactFilter().filter(record) if redact is not None else True


def _access_json(environ, status, sent, request_time, request_id):  # noqa: ANN001, ANN202
    """The access record as one JSON line: the fields the app recorded in the environ (api.edge.auth, app.py,
    api.steps) beside gunicorn's."""
    method, path = environ["REQUEST_METHOD"], _redacted(environ["RAW_URI"])
    status = int(status) if str(status).isdigit() else status
    fields = {
        "timestamp": timestamp(time.time()),
        "level": "INFO",
        "logger": "gunicorn.access",
        "message": f"{method} {path} {status}",
        "request_id": request_id if request_id != "-" else None,
        "key": environ.get("pplx.key"),
        "route": environ.get("pplx.route"),
        "method": method,
        "path": path,
        "status": status,
        "bytes": sent if sent != "-" else None,
        "duration_ms": round(request_time.total_seconds() * 1000, 1),
        "ttft_ms": environ.get("pplx.ttft_ms"),
        "account": environ.get("pplx.account"),
        "client": environ.get("REMOTE_ADDR"),
        "pid": os.getpid(),  # which worker
    }
    return json_line({name: value for name, value in fields.items() if value is not None})


def _redacted(uri: str) -> str:
    # A key in the query string (?api_key=..., ?key=...) must not reach the log: the app's one redaction
    # (loaded here lazily, in the worker, where the app is already imported).
    if "?" not in uri:
        return uri
    from api.edge.redact import redact

    return redact(uri)


logger_class = AccessLogger

# Server mechanics
#   forwarded_allow_ips - trust X-Forwarded-* only from these addresses (TRUST_PROXY sets a list).
forwarded_allow_ips = _env["FORWARDED_ALLOW_IPS"]


#   control_socket - gunicorn's `gunicornc` socket. Its default is one path per user ($XDG_RUNTIME_DIR or
#       ~/.gunicorn/gunicorn.ctl), so a second instance on the host unlinks the first one's socket and takes it
#       over, and the first to stop unlinks the other's. Here it is one per instance, named by port and master
#       pid (a USR2 upgrade re-reads this file in a new master, which gets its own), in a directory only this
#       user can enter; gunicorn logs the path at start ("Control socket listening at ..."). Kept rather than
#       disabled: it is how an operator sees the workers or changes their count without signals.
def _control_socket() -> str | None:
    import stat
    import tempfile
    from pathlib import Path

    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    private = Path(tempfile.gettempdir()) / f"gunicorn-{os.getuid()}"
    folder = Path(runtime) if runtime and os.path.isdir(runtime) else private
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        info = folder.lstat()
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        return None  # someone else's, or open to others: it could swap the socket for their own
    for stale in folder.glob("perplexity-api-*-*.ctl"):  # left by a master that was killed: it never unlinked
        try:
            os.kill(int(stale.stem.rsplit("-", 1)[1]), 0)
        except ProcessLookupError:
            stale.unlink(missing_ok=True)
        except (ValueError, OSError):
            pass
    return str(folder / f"perplexity-api-{_env['PORT']}-{os.getpid()}.ctl")


_control = _control_socket()
if _control is None:
    control_socket_disable = True
    sys.stderr.write("warning: no private directory for gunicorn's control socket; it is disabled\n")
else:
    control_socket = _control


# Graceful shutdown
#   On SIGTERM gunicorn stops accepting and gives open requests graceful_timeout to finish, then kills them.
#   post_worker_init chains the worker's SIGTERM handler so the app starts draining at once (readiness 503)
#   and ends the streams still open a little before that deadline with their family's closing event
#   (api/lifecycle.py), instead of letting the kill cut them with a bare TCP close.
def post_worker_init(worker):  # noqa: ANN001, ANN201 - gunicorn's hook signature
    import signal

    from api import lifecycle

    graceful = float(worker.cfg.graceful_timeout)
    grace = max(0.0, graceful - min(5.0, graceful / 4))  # time left to write the closing events and exit
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(sig, frame):  # noqa: ANN001, ANN202
        lifecycle.begin_drain(grace)
        if callable(previous):
            previous(sig, frame)

    signal.signal(signal.SIGTERM, on_term)
    signal.siginterrupt(signal.SIGTERM, False)
