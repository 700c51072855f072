"""Public model ids (perplexity-auto, claude-4.8-opus, ...) and the upstream model each one selects."""

from __future__ import annotations

import fnmatch
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from perplexity.catalogue import Catalogue
from perplexity.types import ModelInfo

__all__ = ["BUILTIN_CATALOGUE", "ModelMap", "PublicModel", "readable_id"]

# Stable `created` values: a fixed epoch plus a per-id offset, the same on every call and restart.
_EPOCH = 1735689600  # 2025-01-01T00:00:00Z

# Public alias -> (default_models key, upstream id used when the catalogue does not say).
_ALIASES = {
    "perplexity-auto": ("search", "pplx_pro", "Perplexity Best: Perplexity picks the model"),
    "perplexity-sonar": (None, "experimental", "Perplexity Sonar"),
    "perplexity-research": ("research", "pplx_alpha", "Perplexity Deep Research"),
    "perplexity-labs": ("studio", "pplx_beta", "Perplexity Labs"),
}

# Perplexity's official API model names (api.perplexity.ai) -> the public id of the closest web-app model. Resolved
# but not listed: /v1/models shows what the account has; the response's `model` names the Sonar name asked for.
_SONAR = {
    "sonar": "perplexity-sonar",
    "sonar-pro": "perplexity-auto",
    "sonar-deep-research": "perplexity-research",
}
_SONAR_REASONING = ("sonar-reasoning", "sonar-reasoning-pro")

_PROVIDERS = {
    "claude": "anthropic",
    "gpt": "openai",
    "o": "openai",
    "gemini": "google",
    "grok": "xai",
    "kimi": "moonshot",
    "glm": "zhipu",
    "nv": "nvidia",
    "r": "perplexity",
}


def _model(upstream: str, label: str, provider: str, *, reasoning: bool = False, variant: str | None = None):
    return ModelInfo(upstream, label, provider, "search", "pro", reasoning, variant)


# Used until (or when) the account's catalogue cannot be loaded; the web app's model ids as of 2026-09.
BUILTIN_CATALOGUE = Catalogue(
    models=(
        _model("pplx_pro", "Best", "PERPLEXITY"),
        _model("experimental", "Sonar", "PERPLEXITY"),
        ModelInfo("pplx_alpha", "Deep Research", "PERPLEXITY", "research", "pro"),
        ModelInfo("pplx_beta", "Labs", "PERPLEXITY", "studio", "pro"),
        _model("gpt55", "GPT-5.5", "OPENAI", variant="gpt55_thinking"),
        _model("gpt55_thinking", "GPT-5.5 Thinking", "OPENAI", reasoning=True),
        _model("claude48opus", "Claude Opus 4.8", "ANTHROPIC", variant="claude48opusthinking"),
        _model("claude48opusthinking", "Claude Opus 4.8 Thinking", "ANTHROPIC", reasoning=True),
        _model("claude50sonnet", "Claude Sonnet 5", "ANTHROPIC", variant="claude50sonnetthinking"),
        _model("claude50sonnetthinking", "Claude Sonnet 5 Thinking", "ANTHROPIC", reasoning=True),
        _model("gemini31pro_high", "Gemini 3.1 Pro", "GOOGLE"),
        _model("kimik26thinking", "Kimi K2.6 Thinking", "MOONSHOT", reasoning=True),
    ),
    default_models={"search": "pplx_pro", "research": "pplx_alpha", "studio": "pplx_beta"},
    schema="builtin",
)

_ID = re.compile(r"^([a-z]+?)(\d+)(.*)$")


def readable_id(upstream: str) -> str:
    """claude48opusthinking -> claude-4.8-opus-thinking, gpt55_thinking -> gpt-5.5-thinking."""
    name = upstream.lower()
    thinking = name.endswith("thinking")
    if thinking:
        name = name[: -len("thinking")].rstrip("_")
    match = _ID.match(name)
    if match:
        family, digits, rest = match.groups()
        version = f"{digits[0]}.{digits[1:]}" if len(digits) == 2 else digits
        parts = [family, version, *[p for p in re.split(r"[_\W]+", rest) if p]]
        name = "-".join(parts)
    name = name.replace("_", "-")
    return f"{name}-thinking" if thinking else name


@dataclass(frozen=True, slots=True)
class PublicModel:
    """One entry of /v1/models and what it sends upstream."""

    id: str
    upstream: str
    owned_by: str
    label: str
    reasoning: bool = False
    mode: str = "search"

    @property
    def created(self) -> int:
        """Stable across calls and restarts."""
        return _EPOCH + zlib.crc32(self.id.encode()) % 86_400_000

    def openai(self) -> dict[str, object]:
        """The OpenAI `Model` object."""
        return {"id": self.id, "object": "model", "created": self.created, "owned_by": self.owned_by}

    def anthropic(self) -> dict[str, object]:
        """Anthropic's `ModelInfo` object."""
        created = datetime.fromtimestamp(self.created, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {"type": "model", "id": self.id, "display_name": self.label, "created_at": created}


def _owner(info: ModelInfo) -> str:
    if info.provider:
        return info.provider.lower()
    family = re.match(r"[a-z]+", info.id)
    return _PROVIDERS.get(family.group(0) if family else "", "perplexity")


class ModelMap:
    """The public ids for one catalogue; upstream ids are accepted as ids too."""

    def __init__(self, catalogue: Catalogue) -> None:
        self.catalogue = catalogue
        self._by_id: dict[str, PublicModel] = {}
        for alias, (default_key, fallback, label) in _ALIASES.items():
            upstream = catalogue.default_models.get(default_key, fallback) if default_key else fallback
            self._by_id[alias] = PublicModel(alias, upstream, "perplexity", label, mode=default_key or "search")
        for info in catalogue.models:
            if info.mode not in ("search", "research", "studio"):
                continue  # agentic/computer/browser modes need UI round-trips this API cannot make
            entry = PublicModel(readable_id(info.id), info.id, _owner(info), info.label, info.reasoning, info.mode)
            self._by_id.setdefault(entry.id, entry)
        self._upstream = {m.upstream: m for m in self._by_id.values() if not m.id.startswith("perplexity-")}
        self._sonar: dict[str, PublicModel] = {}
        for name, target in _SONAR.items():
            self._sonar[name] = self._sonar_alias(name, self._by_id[target])
        reasoning = self._sonar_reasoning()
        for name in _SONAR_REASONING:
            self._sonar[name] = self._sonar_alias(name, reasoning)

    def _sonar_reasoning(self) -> PublicModel:
        """What sonar-reasoning(-pro) asks: Best's thinking variant if the catalogue names one, else its first
        Perplexity-made thinking model, else its first thinking model, else Best itself."""
        auto = self._by_id["perplexity-auto"]
        info = self.catalogue.get(auto.upstream)
        if info is not None and info.reasoning_variant and (found := self.resolve(info.reasoning_variant)):
            return found
        thinking = [m for m in self._by_id.values() if m.reasoning and m.mode == "search"]
        own = [m for m in thinking if m.owned_by == "perplexity"]
        return (own or thinking or [auto])[0]

    @staticmethod
    def _sonar_alias(name: str, target: PublicModel) -> PublicModel:
        label = f"{name} ({target.label})"
        return PublicModel(name, target.upstream, "perplexity", label, target.reasoning, target.mode)

    def models(self) -> list[PublicModel]:
        """Every public model, aliases first."""
        return list(self._by_id.values())

    def resolve(self, model_id: str) -> PublicModel | None:
        """The model for a public id or a raw upstream id; None when unknown."""
        return self._by_id.get(model_id) or self._upstream.get(model_id) or self._sonar.get(model_id)

    def resolve_anthropic(self, name: str, overrides: Sequence[tuple[str, str]], default: str) -> PublicModel | None:
        """The model an Anthropic client's name (`claude-sonnet-4-5-20250929`, `claude-opus-4-1`, `sonnet`) selects.

        In order: the first `overrides` pattern (fnmatch, case-insensitive) the name matches; a public or upstream
        id of ours; the catalogue's newest non-thinking Claude model of the name's family (opus, sonnet, haiku,
        ...); `default` for any other Claude name. None for a name that is none of these (a 404).
        """
        key = _ONE_M.sub("", name.strip())  # Claude Code's 1M-context suffix is a client-side choice
        for pattern, target in overrides:
            if fnmatch.fnmatchcase(key.lower(), pattern.lower()) and (found := self.resolve(target)) is not None:
                return found
        found = self.resolve(key)
        if found is not None:
            return found
        lowered = key.lower()
        family = next((word for word in _CLAUDE_FAMILIES if word in lowered), None)
        if family is None and "claude" not in lowered:
            return None
        candidates = [
            m for m in self._by_id.values()
            if m.owned_by == "anthropic" and not m.reasoning and family is not None and family in m.id
        ]  # fmt: skip
        if candidates:
            return max(candidates, key=lambda m: _version(m.id))
        return self.resolve(default)


# Claude model families, as they appear in Anthropic's names and in the catalogue's readable ids.
_CLAUDE_FAMILIES = ("opus", "sonnet", "haiku", "fable", "mythos")
_ONE_M = re.compile(r"\[1m\]$", re.IGNORECASE)


def _version(model_id: str) -> tuple[float, ...]:
    """The version numbers in a readable id (claude-4.8-opus -> (4.8,)), for picking the newest."""
    return tuple(float(number) for number in re.findall(r"\d+(?:\.\d+)?", model_id))
