"""Import direction: perplexity/ stands alone; schemas/ knows only marshmallow; nothing imports the app."""

from __future__ import annotations

import ast

import pytest

from .conftest import ROOT


def imports(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0]


def modules(package):
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", modules("perplexity"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_client_package_never_imports_the_web_layer(path):
    assert not {"flask", "marshmallow", "werkzeug", "api", "schemas", "app"} & set(imports(path))


@pytest.mark.parametrize("path", modules("schemas"), ids=lambda p: str(p.relative_to(ROOT)))
def test_schemas_import_only_marshmallow(path):
    assert not {"flask", "api", "perplexity", "app", "requests"} & set(imports(path))


@pytest.mark.parametrize("path", modules("api"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_api_never_imports_the_app_module(path):
    assert "app" not in set(imports(path))


@pytest.mark.parametrize("path", [*modules("perplexity"), *modules("api"), *modules("schemas")], ids=str)
def test_every_module_opens_with_a_docstring(path):
    assert ast.get_docstring(ast.parse(path.read_text())), path
