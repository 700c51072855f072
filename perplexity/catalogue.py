"""Parse `/rest/models/config` (schema v1 and v2) into ModelInfo entries."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .types import ModelInfo

__all__ = ["Catalogue", "parse_catalogue"]


@dataclass(frozen=True, slots=True)
class Catalogue:
    """The account's usable models plus Perplexity's default model per mode."""

    models: tuple[ModelInfo, ...]
    default_models: dict[str, str] = field(default_factory=dict)
    compare_models: tuple[str, ...] = ()
    schema: str = "v1"

    def get(self, model_id: str) -> ModelInfo | None:
        """The entry for `model_id`, if the catalogue has it."""
        return next((m for m in self.models if m.id == model_id), None)


def _s(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _config_entries(data: dict[str, Any]) -> list[dict[str, Any]]:
    """v1 `config`, or v2 `search_config` + `computer_config`; hidden (internal) entries dropped."""
    entries: list[Any] = []
    for key in ("config", "search_config", "computer_config"):
        if isinstance(data.get(key), list):
            entries.extend(data[key])
    return [e for e in entries if isinstance(e, dict) and e.get("audience") != "internal"]


def _entry_ids(entry: dict[str, Any]) -> list[str]:
    keys = ("model", "non_reasoning_model", "fast_model", "reasoning_model", "text_only_model")
    return [entry[k] for k in keys if isinstance(entry.get(k), str) and entry[k]]


def parse_catalogue(data: Any) -> Catalogue:
    """Parse the catalogue JSON; unknown shapes give an empty catalogue rather than an error."""
    if not isinstance(data, dict):
        return Catalogue(models=())
    raw_models = data.get("models") if isinstance(data.get("models"), dict) else {}
    tiers: dict[str, str] = {}
    reasoning_ids: set[str] = set()
    variants: dict[str, str] = {}
    labels: dict[str, str] = {}
    for entry in _config_entries(data):
        tier = _s(entry.get("subscription_tier")) or _s(entry.get("min_tier"))
        for model_id in _entry_ids(entry):
            if tier:
                tiers.setdefault(model_id, tier)
            labels.setdefault(model_id, _s(entry.get("label")))
        reasoning = _s(entry.get("reasoning_model"))
        base = _s(entry.get("non_reasoning_model")) or _s(entry.get("model"))
        if reasoning:
            reasoning_ids.add(reasoning)
            if base and base != reasoning:
                variants[base] = reasoning
    models = []
    for model_id, info in raw_models.items():
        info = info if isinstance(info, dict) else {}
        models.append(
            ModelInfo(
                id=model_id,
                label=_s(info.get("label")) or labels.get(model_id) or model_id,
                provider=_s(info.get("provider")) or None,
                mode=_s(info.get("mode")) or "search",
                tier=tiers.get(model_id) or _s(info.get("subscription_tier")) or None,
                reasoning=model_id in reasoning_ids or bool(info.get("is_reasoning")),
                reasoning_variant=variants.get(model_id),
                description=_s(info.get("description")),
                extra=info,
            )
        )
    defaults = data.get("default_models") if isinstance(data.get("default_models"), dict) else {}
    compare = data.get("agentic_research_compare_models")
    return Catalogue(
        models=tuple(models),
        default_models={k: v for k, v in defaults.items() if isinstance(v, str)},
        compare_models=tuple(m for m in compare if isinstance(m, str)) if isinstance(compare, list) else (),
        schema=_s(data.get("config_schema")) or ("v2" if "search_config" in data else "v1"),
    )
