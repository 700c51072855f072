"""Validate a file and describe its upload: presign request, S3 form fields, final attachment URL."""

from __future__ import annotations

import mimetypes
import re
import uuid
from dataclasses import dataclass
from typing import Any

from .errors import UploadError

__all__ = [
    "MAX_UPLOAD_BYTES",
    "Upload",
    "attachment_url",
    "presign_body",
    "presigned_target",
    "validate_upload",
]

MAX_UPLOAD_BYTES = 50 * 1024 * 1024  # the web app's per-file limit

# What the web app accepts as attachments: images, documents, text-like files.
_ALLOWED_PREFIXES = ("image/", "text/")
_ALLOWED_TYPES = {
    "application/pdf",
    "application/json",
    "application/xml",
    "application/msword",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "application/vnd.ms-excel",
    "application/rtf",
    "application/epub+zip",
}
_IMAGE_TYPES = {"image/png", "image/jpeg", "image/gif", "image/webp", "image/heic", "image/heif"}
_CLOUDINARY_SIGNED = re.compile(r"/private/s--[^/]+--/v\d+/user_uploads/")


@dataclass(frozen=True, slots=True)
class Upload:
    """A validated file ready to upload."""

    filename: str
    content: bytes
    content_type: str

    @property
    def is_image(self) -> bool:
        """Images go to Perplexity's image pipeline (`force_image`)."""
        return self.content_type in _IMAGE_TYPES


def validate_upload(
    filename: str, content: bytes, content_type: str | None = None, *, max_bytes: int = MAX_UPLOAD_BYTES
) -> Upload:
    """Check name, size and type before anything is sent; raise UploadError with the reason."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    if not name:
        raise UploadError("An attachment needs a file name.")
    if not content:
        raise UploadError(f"The attachment {name!r} is empty.")
    if len(content) > max_bytes:
        raise UploadError(f"The attachment {name!r} is {len(content)} bytes; the limit is {max_bytes} bytes.")
    kind = (content_type or mimetypes.guess_type(name)[0] or "").split(";")[0].strip().lower()
    if not kind:
        raise UploadError(f"Cannot tell the type of {name!r}; give a content type.")
    if not (kind.startswith(_ALLOWED_PREFIXES) or kind in _ALLOWED_TYPES):
        raise UploadError(f"Perplexity does not take {kind} attachments ({name!r}).")
    return Upload(filename=name, content=content, content_type=kind)


def presign_body(upload: Upload) -> tuple[str, dict[str, Any]]:
    """The client key and JSON body of `POST /rest/uploads/batch_create_upload_urls`."""
    key = str(uuid.uuid4())
    entry = {
        "filename": upload.filename,
        "content_type": upload.content_type,
        "source": "default",
        "file_size": len(upload.content),
        "force_image": upload.is_image,
        "skip_parsing": False,
    }
    return key, {"files": {key: entry}}


def presigned_target(answer: Any, key: str) -> tuple[str, dict[str, str], str]:
    """(bucket URL, form fields, object URL) from a presign answer, batch or legacy single form."""
    result = answer.get("results", {}).get(key) if isinstance(answer, dict) and "results" in answer else answer
    if not isinstance(result, dict):
        raise UploadError("Perplexity's upload presign answer had no entry for the file.")
    if result.get("rate_limited") or result.get("error"):
        reason = "rate limited" if result.get("rate_limited") else str(result.get("error"))[:200]
        raise UploadError(f"Perplexity refused the upload: {reason}.")
    bucket, obj, fields = result.get("s3_bucket_url"), result.get("s3_object_url"), result.get("fields")
    if not isinstance(bucket, str) or not isinstance(obj, str) or not isinstance(fields, dict):
        raise UploadError("Perplexity's upload presign answer is missing the bucket URL or form fields.")
    return bucket, {str(k): str(v) for k, v in fields.items()}, obj


def attachment_url(object_url: str, upload_answer: Any) -> str:
    """The URL to put in `attachments`: Cloudinary's unsigned `secure_url` for images, else the S3 URL."""
    if "image/upload" in object_url and isinstance(upload_answer, dict):
        secure = upload_answer.get("secure_url")
        if isinstance(secure, str) and secure:
            return _CLOUDINARY_SIGNED.sub("/private/user_uploads/", secure)
    return object_url
