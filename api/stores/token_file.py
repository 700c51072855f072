"""Keep Perplexity's rotated session cookie across restarts in a file, when the operator asks for it."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

__all__ = ["TokenFile"]

log = logging.getLogger(__name__)


class TokenFile:
    """A 0600 JSON file holding the latest rotated token and a digest of the configured one.

    The rotated token is used only while PERPLEXITY_SESSION_TOKEN is unchanged: after a new login the
    operator sets a new token, its digest no longer matches, and the file is ignored (then replaced).
    """

    def __init__(self, path: str, configured: str) -> None:
        self.path = Path(path)
        self._source = hashlib.sha256(configured.encode()).hexdigest()

    def load(self) -> str | None:
        """The rotated token saved for the configured one, if any."""
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            log.warning("ignoring unreadable token file %s", self.path)
            return None
        if isinstance(data, dict) and data.get("source") == self._source and isinstance(data.get("token"), str):
            return data["token"]
        return None

    def save(self, token: str) -> None:
        """Write the rotated token atomically, readable by the owner only."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".token-")
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump({"source": self._source, "token": token}, handle)
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except OSError:
            log.warning("could not write the token file %s", self.path)
            Path(tmp).unlink(missing_ok=True)
