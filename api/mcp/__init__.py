"""The MCP server: Perplexity's ask, search, Deep Research and quota as MCP tools, over stdio or streamable HTTP."""

from __future__ import annotations

from .server import build_server, run

__all__ = ["build_server", "run"]
