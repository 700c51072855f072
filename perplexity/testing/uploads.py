"""Upload presigning and the fake S3 bucket: multipart/form-data POSTs answered like S3 (protocol 2.4)."""

from __future__ import annotations

import base64
import email.policy
import hashlib
import json
import uuid
from dataclasses import dataclass, field
from email.parser import BytesParser
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import escape

__all__ = ["FormPart", "Presign", "S3Result", "check_s3_post", "parse_multipart", "presign"]

S3_PREFIX = "/fake-s3/"


@dataclass(frozen=True)
class Presign:
    """One presigned upload: where the object will live and the form fields S3 will demand."""

    object_url: str
    fields: dict[str, str] = field(repr=False)
    filename: str
    content_type: str


@dataclass(frozen=True)
class FormPart:
    """One multipart/form-data part."""

    name: str
    filename: str | None
    content_type: str
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class S3Result:
    """What the fake bucket answers; `stored` is set when an object was written."""

    status: int
    body: bytes = b""
    stored: tuple[str, tuple[str, str, bytes]] | None = field(default=None, repr=False)


def presign(base_url: str, user_id: str, filename: str, content_type: str) -> Presign:
    """Presign an upload of `filename` into `<base_url>/fake-s3/web/direct-files/attachments/...`."""
    key = f"web/direct-files/attachments/{user_id}/{uuid.uuid4()}/{filename}"
    policy = {"expiration": "2099-01-01T00:00:00Z", "conditions": [{"key": key}, {"acl": "private"}]}
    encoded = base64.b64encode(json.dumps(policy).encode()).decode()
    fields = {
        "acl": "private",
        "Content-Type": content_type,
        "tagging": "<Tagging><TagSet><Tag><Key>source</Key><Value>web</Value></Tag></TagSet></Tagging>",
        "x-amz-meta-is_text_only": "false",
        "key": key,
        "AWSAccessKeyId": "ASIAFAKEFAKEFAKEFAKE",
        "x-amz-security-token": "fake-security-token",
        "policy": encoded,
        "signature": base64.b64encode(hashlib.sha1(encoded.encode()).digest()).decode(),
    }
    return Presign(f"{base_url}{S3_PREFIX}{quote(key)}", fields, filename, content_type)


def presign_answer(bucket_url: str, item: Presign) -> dict[str, Any]:
    """Return the JSON answer of a presign call for one file."""
    return {"s3_bucket_url": bucket_url, "s3_object_url": item.object_url, "fields": dict(item.fields)}


def parse_multipart(content_type: str, body: bytes) -> list[FormPart]:
    """Parse a multipart/form-data body with the email package (the `cgi` module is gone)."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise ValueError("not a multipart body")
    parts = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        parts.append(
            FormPart(
                name=str(name or ""),
                filename=part.get_filename(),
                content_type=part.get_content_type(),
                data=payload if isinstance(payload, bytes) else b"",
            )
        )
    return parts


def _s3_error(code: str, message: str, **extra: object) -> bytes:
    """Return an S3-style XML error document."""
    details = "".join(f"<{k}>{escape(str(v))}</{k}>" for k, v in extra.items())
    text = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{escape(message)}</Message>{details}"
        "<RequestId>FAKE0000REQUEST</RequestId></Error>"
    )
    return text.encode()


def check_s3_post(parts: list[FormPart], pending: dict[str, Presign], max_bytes: int) -> S3Result:
    """Validate a browser-style S3 POST: every presigned field before the `file` part, size limit."""
    fields: dict[str, str] = {}
    upload = None
    for part in parts:
        if part.name == "file":
            upload = part
            break  # S3 ignores fields after the file
        fields[part.name] = part.data.decode("utf-8", "replace")
    if upload is None:
        return S3Result(400, _s3_error("InvalidArgument", "POST requires exactly one file upload per request."))
    grant = pending.get(fields.get("key", ""))
    if grant is None:
        return S3Result(403, _s3_error("AccessDenied", "Invalid according to Policy: unknown key"))
    wrong = sorted(k for k, v in grant.fields.items() if fields.get(k) != v)
    if wrong:
        message = f"Invalid according to Policy: Policy Condition failed: {', '.join(wrong)}"
        return S3Result(403, _s3_error("AccessDenied", message))
    if len(upload.data) > max_bytes:
        message = "Your proposed upload exceeds the maximum allowed size"
        body = _s3_error("EntityTooLarge", message, ProposedSize=len(upload.data), MaxSizeAllowed=max_bytes)
        return S3Result(400, body)
    content_type = grant.fields.get("Content-Type") or upload.content_type
    return S3Result(204, stored=(grant.object_url, (grant.filename, content_type, upload.data)))
