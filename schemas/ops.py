"""Response schemas of the ops endpoints: `/health`, `/health/ready`, `/stats` and `/v1/quota` (this server's own)."""

from __future__ import annotations

from marshmallow import fields, validate

from schemas.common import ResponseSchema, constant

__all__ = [
    "AccountSchema",
    "HealthSchema",
    "ModeQuotaSchema",
    "QuotaListSchema",
    "ReadySchema",
    "StatsModelsSchema",
    "StatsSchema",
]

ACCOUNT_STATES = ("ready", "cooling", "expired", "blocked")


class HealthSchema(ResponseSchema):
    """`GET /health`: the process answers."""

    status = constant("ok")
    uptime = fields.Float(required=True, metadata={"description": "Seconds since the worker started."})


class ModeQuotaSchema(ResponseSchema):
    """One Perplexity mode's quota as Perplexity last reported it."""

    available = fields.Boolean(required=True)
    remaining = fields.Integer(required=True, strict=True, allow_none=True, metadata={"description": "null: unmetered"})
    resets_at = fields.Integer(strict=True, metadata={"description": "Unix seconds, when Perplexity said so."})


class AccountSchema(ResponseSchema):
    """One Perplexity account: its label (never its token), its state and quota."""

    label = fields.String(required=True)
    state = fields.String(required=True, validate=validate.OneOf(ACCOUNT_STATES))
    open_streams = fields.Integer(required=True, strict=True)
    until = fields.Integer(strict=True, metadata={"description": "Unix seconds a cooling or blocked state ends."})
    reason = fields.String()
    quota = fields.Dict(keys=fields.String(), values=fields.Nested(ModeQuotaSchema))  # by mode
    quota_checked = fields.Integer(strict=True, metadata={"description": "Unix seconds of the last quota check."})


class ReadySchema(ResponseSchema):
    """`GET /health/ready`: `ready` (200), or `not_ready` (503) with the reasons."""

    status = fields.String(required=True, validate=validate.OneOf(("ready", "not_ready")))
    models = fields.String(required=True, metadata={"description": "Which model list is in use."})
    accounts = fields.List(fields.Nested(AccountSchema), required=True)
    reasons = fields.List(fields.String())


class StatsModelsSchema(ResponseSchema):
    """`models` of `/stats`: which model list is in use."""

    source = fields.String(required=True)
    count = fields.Integer(required=True, strict=True)
    error = fields.String(required=True, allow_none=True)


class RecentErrorSchema(ResponseSchema):
    """One of `/stats`' latest upstream failures (newest first): when, what kind, on which account."""

    at = fields.Float(required=True, metadata={"description": "Unix time of the failure."})
    kind = fields.String(required=True, metadata={"description": "The failure's kind, as in `upstream_errors`."})
    account = fields.String(
        required=True, allow_none=True, metadata={"description": "The account's label; null before one was picked."}
    )


class StatsSchema(ResponseSchema):
    """`GET /stats`: counters for humans."""

    version = fields.String(required=True, metadata={"description": "The server's version."})
    uptime = fields.Float(required=True)
    requests = fields.Integer(required=True, strict=True)
    requests_by_route = fields.Dict(keys=fields.String(), values=fields.Integer(strict=True), required=True)
    open_streams = fields.Integer(required=True, strict=True)
    conversations = fields.Integer(required=True, strict=True)
    models = fields.Nested(StatsModelsSchema, required=True)
    upstream_errors = fields.Dict(keys=fields.String(), values=fields.Integer(strict=True), required=True)
    recent_upstream_errors = fields.List(fields.Nested(RecentErrorSchema), required=True)
    transport = fields.String(required=True, allow_none=True)
    accounts = fields.List(fields.Nested(AccountSchema), required=True)


class QuotaListSchema(ResponseSchema):
    """`GET /v1/quota`: every account's state and quota."""

    object = constant("list")
    data = fields.List(fields.Nested(AccountSchema), required=True)
