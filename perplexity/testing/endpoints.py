"""The fake's side endpoints: session, models, quotas, settings, threads, uploads and the S3 bucket."""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import quote, unquote

from .accounts import set_cookie_header
from .catalog import models_config, rate_limit_status, session_body, user_settings
from .handler import RouteHandler, route
from .script import RecordedRequest
from .uploads import S3_PREFIX, check_s3_post, parse_multipart, presign, presign_answer

__all__: list[str] = []

_XML = [("Content-Type", "application/xml")]
_HTML_SHELL = b"<!DOCTYPE html><html><head><title>Perplexity</title></head><body></body></html>"


@route("GET", r"/api/auth/session")
def session(h: RouteHandler, req: RecordedRequest, _: dict[str, str]) -> None:
    """The account's user when the cookie is valid, else `{}`; HTTP 200 either way (protocol 2.6).

    With `fake.rotate_on_session` or the account's `set_rotation(on_session=True)`, a valid call also
    rotates the account's token and hands the new one out with Set-Cookie.
    """
    account = h.account
    valid = h.logged_in() and account is not None
    headers = []
    if valid and (h.fake.rotate_on_session or account.rotate_on_session):
        headers.append(set_cookie_header(h.fake.rotate_token(account.label)))
    body = session_body(valid)
    if valid:
        body["user"] = dict(account.user)
    h.send_json(200, body, headers)


@route("GET", r"/rest/models/config")
def models(h: RouteHandler, req: RecordedRequest, _: dict[str, str]) -> None:
    """The public model catalogue; `fake.models_fault` makes every call fail while it is set."""
    fault = h.fake.models_fault
    if fault is not None and h.apply_endpoint_fault(fault):
        return
    h.send_json(200, models_config(h.fake.models_schema))


@route("GET", r"/rest/rate-limit/status")
def rate_limits(h: RouteHandler, req: RecordedRequest, _: dict[str, str]) -> None:
    """The account's quota table; a logged-out session looks exhausted, still with HTTP 200 (protocol 2.7)."""
    valid = h.logged_in()
    h.send_json(200, rate_limit_status(valid, h.fake.quota_of(h.label) if valid else None))


@route("GET", r"/rest/user/settings")
def settings(h: RouteHandler, req: RecordedRequest, _: dict[str, str]) -> None:
    if not h.logged_in():
        return h.not_logged_in()
    h.send_json(200, user_settings(len(h.fake.asks_of(h.label)), h.account.tier if h.account else "pro"))


@route("GET", r"/search/new")
def search_new(h: RouteHandler, req: RecordedRequest, _: dict[str, str]) -> None:
    """HC's "init" page load before an ask; the answer is an HTML shell that clients ignore."""
    h.send_bytes(200, _HTML_SHELL, [("Content-Type", "text/html; charset=utf-8")])


@route("DELETE", r"/rest/thread/delete_thread_by_entry_uuid")
def delete_thread(h: RouteHandler, req: RecordedRequest, _: dict[str, str]) -> None:
    """Delete the thread of `entry_uuid` if `read_write_token` matches; 403 `{}` otherwise."""
    if not h.logged_in():
        return h.not_logged_in()
    body = req.json if isinstance(req.json, dict) else {}
    thread = h.own_thread(str(body.get("entry_uuid") or ""))
    if thread is None or body.get("read_write_token") != thread.read_write_token:
        return h.send_json(403, {})
    h.fake.delete_thread(thread.context_uuid)
    h.send_json(200, {"status": "success"})


@route("POST", r"/rest/thread/export")
def export_thread(h: RouteHandler, req: RecordedRequest, _: dict[str, str]) -> None:
    """`{"file_content_64", "filename"}` for a known entry (a seeded `fake.exports` answer wins); 403 `{}` else."""
    if not h.logged_in():
        return h.not_logged_in()
    entry = str((req.json or {}).get("thread_uuid") or "")
    if entry in h.fake.exports:
        return h.send_json(200, h.fake.exports[entry])
    thread = h.own_thread(entry)
    if thread is None:
        return h.send_json(403, {})
    markdown = f"# {thread.title}\n\n" + "".join(f"Entry {uuid}\n\n" for uuid in thread.entries)
    encoded = base64.b64encode(markdown.encode()).decode()
    h.send_json(200, {"file_content_64": encoded, "filename": f"{thread.title}.md"})


@route("POST", r"/rest/thread/list_ask_threads")
def list_threads(h: RouteHandler, req: RecordedRequest, _: dict[str, str]) -> None:
    if not h.logged_in():
        return h.not_logged_in()
    threads = h.fake.threads_of(h.label or "")
    h.send_json(
        200,
        [
            {
                "title": t.title,
                "slug": t.slug,
                "context_uuid": t.context_uuid,
                "uuid": t.entries[-1] if t.entries else None,
                "query_count": len(t.entries),
                "total_threads": len(threads),
                "has_next_page": False,
            }
            for t in reversed(threads)
        ],
    )


def _presign_one(h: RouteHandler, spec: Any) -> dict[str, Any] | None:
    """Presign one file spec `{filename, content_type, ...}`; None if the spec is unusable."""
    if not isinstance(spec, dict) or not spec.get("filename"):
        return None
    user_id = h.account.user_id if h.account is not None else h.fake.user["id"]
    grant = presign(h.fake.url, user_id, str(spec["filename"]), str(spec.get("content_type") or ""))
    h.fake.presigns[grant.fields["key"]] = grant
    return presign_answer(h.fake.url + S3_PREFIX, grant)


@route("POST", r"/rest/uploads/batch_create_upload_urls")
def batch_presign(h: RouteHandler, req: RecordedRequest, _: dict[str, str]) -> None:
    """`{"files": {id: spec}}` -> `{"results": {id: {s3_bucket_url, s3_object_url, fields}}}`."""
    if not h.logged_in():
        return h.not_logged_in()
    files = req.json.get("files") if isinstance(req.json, dict) else None
    if not isinstance(files, dict) or not files:
        return h.send_json(422, {"detail": [{"loc": ["body", "files"], "msg": "field required"}]})
    results = {key: _presign_one(h, spec) for key, spec in files.items()}
    if any(answer is None for answer in results.values()):
        return h.send_json(422, {"detail": [{"loc": ["body", "files"], "msg": "filename required"}]})
    h.send_json(200, {"results": results})


@route("POST", r"/rest/uploads/create_upload_url")
def single_presign(h: RouteHandler, req: RecordedRequest, _: dict[str, str]) -> None:
    """The legacy one-file presign call (HL, RS)."""
    if not h.logged_in():
        return h.not_logged_in()
    answer = _presign_one(h, req.json)
    if answer is None:
        return h.send_json(422, {"detail": [{"loc": ["body", "filename"], "msg": "field required"}]})
    h.send_json(200, answer)


@route("POST", r"/fake-s3/?")
def s3_post(h: RouteHandler, req: RecordedRequest, _: dict[str, str]) -> None:
    """A browser-style S3 POST upload: presigned fields, then `file`; 204 on success, no cookie."""
    content_type = req.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        return h.send_bytes(400, b"<Error><Code>InvalidRequest</Code></Error>", _XML)
    try:
        parts = parse_multipart(content_type, req.body)
    except ValueError:
        return h.send_bytes(400, b"<Error><Code>MalformedPOSTRequest</Code></Error>", _XML)
    result = check_s3_post(parts, h.fake.presigns, h.fake.max_upload_bytes)
    if result.stored is not None:
        object_url, stored = result.stored
        h.fake.uploads[object_url] = stored
    h.send_bytes(result.status, result.body, [] if result.status == 204 else _XML)


@route("GET", r"/fake-s3/(?P<key>.+)")
def s3_get(h: RouteHandler, req: RecordedRequest, args: dict[str, str]) -> None:
    """Serve an uploaded object back, so attachment URLs resolve."""
    stored = h.fake.uploads.get(h.fake.url + S3_PREFIX + quote(unquote(args["key"])))
    if stored is None:
        return h.send_bytes(404, b"<Error><Code>NoSuchKey</Code></Error>", _XML)
    h.send_bytes(200, stored[2], [("Content-Type", stored[1] or "application/octet-stream")])
