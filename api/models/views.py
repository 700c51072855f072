"""Models endpoints: GET /v1/models, GET /v1/models/<id> and POST /v1/models/refresh.

In the OpenAI shape, or in Anthropic's for an Anthropic client (`api.edge.errors.is_anthropic_request`): the
same path serves both families, as Claude Code's model discovery and `anthropic.Anthropic().models` call it.
A key restricted to some models (API_KEYS_FILE's `models`) sees only those: the list leaves the others out and
one of them is a 404 like an unknown id, as OpenAI answers for a project restricted to some models.
"""

from __future__ import annotations

from flask import Blueprint, Response, request

from schemas import ModelListSchema, ModelSchema

from ..core.modelmap import PublicModel
from ..edge.auth import key_entry
from ..edge.errors import APIError, is_anthropic_request
from ..state import state
from ..steps import json_response

__all__ = ["bp"]

bp = Blueprint("models", __name__)
_model_schema = ModelSchema()
_list_schema = ModelListSchema()
_MAX_LIMIT = 1000  # Anthropic's page size cap (Claude Code asks for limit=1000)


@bp.get("/v1/models")
def list_models() -> Response:
    """Every public model id the key may use: the aliases, then one per upstream model."""
    models = _visible(state().models.models())
    if is_anthropic_request():
        return json_response(_anthropic_page([m.anthropic() for m in models]))
    return json_response(_list_schema.dump({"object": "list", "data": [m.openai() for m in models]}))


@bp.get("/v1/models/<path:model_id>")
def retrieve_model(model_id: str) -> Response:
    """One model, or a 404 error object."""
    model = state().models.resolve(model_id)
    entry = key_entry()
    if model is None or (entry is not None and not entry.allows(model_id, model.id)):
        shown = model_id if len(model_id) <= 100 else model_id[:100] + "…"
        raise APIError(404, f"The model '{shown}' does not exist.", code="model_not_found", param="model")
    if is_anthropic_request():
        return json_response(model.anthropic())
    return json_response(_model_schema.dump(model.openai()))


def _visible(models: list[PublicModel]) -> list[PublicModel]:
    """The models the request's key may use (all of them without a key or a model list)."""
    entry = key_entry()
    return models if entry is None else [model for model in models if entry.allows(model.id)]


def _anthropic_page(items: list[dict[str, object]]) -> dict[str, object]:
    """One page of Anthropic's model list (`limit`, `after_id`, `before_id`)."""
    raw = request.args.get("limit", "20")
    if not raw.isdigit() or not 1 <= int(raw) <= _MAX_LIMIT:
        raise APIError(400, f"limit: must be an integer between 1 and {_MAX_LIMIT}.", param="limit")
    ids = [str(item["id"]) for item in items]
    after, before = request.args.get("after_id"), request.args.get("before_id")
    start, end = 0, len(items)
    if after:
        start = ids.index(after) + 1 if after in ids else len(items)
    if before:
        end = ids.index(before) if before in ids else 0
    window = items[start:end]
    page = window[-int(raw) :] if before and not after else window[: int(raw)]
    return {
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(page) < len(window),
    }


@bp.post("/v1/models/refresh")
def refresh_models() -> Response:
    """Reload the catalogue from Perplexity now; says which list is in use afterwards."""
    server = state()
    refreshed = server.refresh_models()
    body = {
        "object": "list",
        "refreshed": refreshed,
        "source": server.models_source,
        "error": server.models_error,
        "data": [m.openai() for m in _visible(server.models.models())],
    }
    return json_response(body)
