"""Import directions: views -> core -> client, one way.

- `perplexity/` (the client) stands alone: no Flask, marshmallow, werkzeug, and nothing of the server.
- `schemas/` knows only marshmallow.
- `api/core/` and `api/stores/` are Flask-free; core may use stores, stores never use core; neither reaches up
  into the edge, the view steps, the worker state or an endpoint package.
- `api/edge/` (errors, auth, quotas, metrics, SSE) knows the core, never an endpoint package or the view steps.
- No endpoint package (`chat`, `responses`, `completions`, `models`, `ops`, and the ones to come) imports another.
- Above the core, only `api/state.py` may import the client itself; views see `perplexity` through its errors,
  types and the `AskStream` they hand on.
- Nothing imports `app`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from .conftest import ROOT

ENDPOINT_PACKAGES = {"chat", "responses", "completions", "models", "ops", "messages", "docs", "console"}
WEB = {"flask", "werkzeug", "marshmallow", "flask_limiter", "schemas"}
# What a module above the core may import from the client package.
CLIENT_SURFACE = {"perplexity", "perplexity.errors", "perplexity.types", "perplexity.stream"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    """Every module `path` imports, relative imports resolved to absolute dotted names."""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            found.add(module)
            # `from . import chat` imports the submodule api.chat
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def tops(names: set[str]) -> set[str]:
    return {name.split(".")[0] for name in names}


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def ids(path: Path) -> str:
    return str(path.relative_to(ROOT))


def api_area(name: str) -> str | None:
    """The area of an `api.*` module name: core, stores, edge, steps, state, config, an endpoint package, or api."""
    parts = name.split(".")
    if parts[0] != "api":
        return None
    return parts[1] if len(parts) > 1 else "api"


@pytest.mark.parametrize("path", modules("perplexity"), ids=ids)
def test_the_client_package_never_imports_the_web_layer(path):
    assert not {"flask", "marshmallow", "werkzeug", "api", "schemas", "app"} & tops(imports(path))


@pytest.mark.parametrize("path", modules("schemas"), ids=ids)
def test_schemas_import_only_marshmallow(path):
    assert not {"flask", "api", "perplexity", "app", "requests"} & tops(imports(path))


@pytest.mark.parametrize("path", [*modules("api/core"), *modules("api/stores")], ids=ids)
def test_core_and_stores_never_import_flask_or_what_sits_above_them(path):
    found = imports(path)
    assert not WEB & tops(found), path
    above = {api_area(name) for name in found} & ({"edge", "steps", "state", "api"} | ENDPOINT_PACKAGES)
    assert not above, (path, above)


@pytest.mark.parametrize("path", modules("api/stores"), ids=ids)
def test_stores_never_import_the_core(path):
    assert "core" not in {api_area(name) for name in imports(path)}


@pytest.mark.parametrize("path", modules("api/edge"), ids=ids)
def test_the_edge_never_imports_views_or_view_steps(path):
    areas = {api_area(name) for name in imports(path)}
    assert not areas & (ENDPOINT_PACKAGES | {"steps", "state"}), (path, areas)


@pytest.mark.parametrize("path", [p for p in modules("api") if api_area(module_name(p)) in ENDPOINT_PACKAGES], ids=ids)
def test_no_endpoint_package_imports_another(path):
    own = api_area(module_name(path))
    others = {api_area(name) for name in imports(path)} & ENDPOINT_PACKAGES - {own}
    assert not others, (path, others)


@pytest.mark.parametrize(
    "path",
    [p for p in modules("api") if api_area(module_name(p)) not in ("core", "stores", "state")],
    ids=ids,
)
def test_only_the_core_and_the_worker_state_use_the_client_itself(path):
    client = {name for name in imports(path) if name.split(".")[0] == "perplexity"}
    beyond = {
        name
        for name in client
        if not any(name == m or name.startswith(m + ".") for m in CLIENT_SURFACE - {"perplexity"})
    }
    assert beyond <= {"perplexity"}, (path, beyond)


@pytest.mark.parametrize("path", [*modules("api"), *modules("schemas"), *modules("perplexity")], ids=ids)
def test_nothing_imports_the_app_module(path):
    assert "app" not in tops(imports(path))


@pytest.mark.parametrize("path", [*modules("perplexity"), *modules("api"), *modules("schemas")], ids=ids)
def test_every_module_opens_with_a_docstring(path):
    assert ast.get_docstring(ast.parse(path.read_text())), path


def test_the_rules_see_what_they_guard():
    """The import resolver finds relative imports, so the rules above cannot pass by seeing nothing."""
    found = imports(ROOT / "api" / "chat" / "views.py")
    assert {"api.core.turn", "api.steps", "api.state", "api.edge.auth"} <= found
    assert {"api.chat", "api.responses", "api.ops"} <= imports(ROOT / "api" / "__init__.py")
    assert "api.stores.records" in imports(ROOT / "api" / "core" / "continuity.py")
    assert "perplexity.client.PerplexityClient" in imports(ROOT / "api" / "state.py")
