"""Prometheus metrics of one app: requests, latency, time to first token, streams, upstream errors, limits."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 13, 21, 34, 60)


class Metrics:
    """One registry per app, so several apps in one process (tests) do not collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "pplx_http_requests",
            "HTTP requests by route, status and key (API_KEYS_FILE's label; '-' for any other key or none)",
            ["method", "route", "status", "key"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "pplx_http_request_duration_seconds",
            "Time to the response headers (streams: until the stream is set up)",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ttft = Histogram(
            "pplx_time_to_first_token_seconds",
            "From request start to the first answer text sent (streams)",
            buckets=_TTFT_BUCKETS,
            registry=self.registry,
        )
        self.open_streams = Gauge("pplx_open_streams", "SSE streams currently open", registry=self.registry)
        self.upstream_errors = Counter(
            "pplx_upstream_errors", "Perplexity failures by kind", ["kind"], registry=self.registry
        )
        self.rate_limited = Counter(
            "pplx_rate_limited_requests", "Requests refused by quotas", ["reason"], registry=self.registry
        )

        self.account_state = Gauge(
            "pplx_account_state",
            "1 for each account's current state (ready, cooling, blocked, expired)",
            ["account", "state"],
            registry=self.registry,
        )
        self.account_quota = Gauge(
            "pplx_account_quota_remaining",
            "Uses left per account and mode, as Perplexity last reported them (absent when unmetered)",
            ["account", "mode"],
            registry=self.registry,
        )
        self.account_alerts = Counter(
            "pplx_account_alerts", "Account state changes alerted on", ["account", "state"], registry=self.registry
        )

    def set_accounts(self, accounts: list[dict[str, Any]]) -> None:
        """Refresh the account gauges from the accounts' public views (`Account.public`)."""
        self.account_state.clear()
        self.account_quota.clear()
        for account in accounts:
            for state in ("ready", "cooling", "blocked", "expired"):
                self.account_state.labels(account["label"], state).set(1 if account["state"] == state else 0)
            for mode, quota in (account.get("quota") or {}).items():
                if quota.get("remaining") is not None:
                    self.account_quota.labels(account["label"], mode).set(quota["remaining"])

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
