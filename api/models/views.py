"""Models endpoints: GET /v1/models, GET /v1/models/<id> and POST /v1/models/refresh, in the OpenAI shape."""

from __future__ import annotations

from flask import Blueprint, Response

from schemas import ModelListSchema, ModelSchema

from ..edge.errors import APIError
from ..state import state
from ..steps import json_response

__all__ = ["bp"]

bp = Blueprint("models", __name__)
_model_schema = ModelSchema()
_list_schema = ModelListSchema()


@bp.get("/v1/models")
def list_models() -> Response:
    """Every public model id: the aliases, then one per upstream model."""
    return json_response(_list_schema.dump({"object": "list", "data": [m.openai() for m in state().models.models()]}))


@bp.get("/v1/models/<path:model_id>")
def retrieve_model(model_id: str) -> Response:
    """One model, or a 404 error object."""
    model = state().models.resolve(model_id)
    if model is None:
        raise APIError(404, f"The model '{model_id}' does not exist.", code="model_not_found", param="model")
    return json_response(_model_schema.dump(model.openai()))


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
        "data": [m.openai() for m in server.models.models()],
    }
    return json_response(body)
