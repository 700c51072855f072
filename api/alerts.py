"""Alerts on account state changes: one JSON POST per change to ALERT_WEBHOOK_URL, retried with backoff.

The body names the account by its label and says what changed, never a token:
`{"event": "account_state", "account": "work", "previous": "ready", "state": "expired", "reason": ..., "time": ...}`.
Sending happens in the background (a greenlet under gevent): a slow or dead webhook never holds a request.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any

import requests

from .edge.redact import redact

__all__ = ["Alerter"]

log = logging.getLogger(__name__)

ATTEMPTS = 5
FIRST_DELAY = 1.0  # then 2, 4, 8 seconds
TIMEOUT = 5.0


class Alerter:
    """Posts alert events to a webhook (none configured: only the log line and the counter happen elsewhere)."""

    def __init__(self, url: str | None, *, first_delay: float = FIRST_DELAY) -> None:
        self.url = url
        self.first_delay = first_delay
        self.sent = 0  # events delivered (tests, /stats)

    def account_changed(self, label: str, previous: str, state: str, reason: str | None) -> None:
        """Queue the alert of one account state change."""
        event = {
            "event": "account_state",
            "account": label,
            "previous": previous,
            "state": state,
            "reason": redact(reason or ""),
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        if self.url:
            threading.Thread(target=self._deliver, args=(event,), daemon=True, name="alert").start()

    def _deliver(self, event: dict[str, Any]) -> None:
        delay = self.first_delay
        for attempt in range(1, ATTEMPTS + 1):
            try:
                response = requests.post(self.url, json=event, timeout=TIMEOUT)  # type: ignore[arg-type]
                if response.status_code < 300:
                    self.sent += 1
                    return
                why = f"HTTP {response.status_code}"
            except requests.RequestException as exc:
                why = type(exc).__name__
            if attempt < ATTEMPTS:
                time.sleep(delay)
                delay *= 2
        log.warning("alert webhook: giving up on %s after %d attempts (%s)", event["event"], ATTEMPTS, why)
