"""MCP server entry point: `python mcp_server.py` (stdio) or `python mcp_server.py --http --port 8001`."""

from __future__ import annotations

import argparse
import sys


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Perplexity as MCP tools (ask, search, research, quota), with the HTTP server's settings."
    )
    parser.add_argument("--http", action="store_true", help="serve streamable HTTP at /mcp instead of stdio")
    parser.add_argument("--host", default="127.0.0.1", help="HTTP mode: the address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8001, help="HTTP mode: the port (default 8001)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    # Importing `app` builds the Flask app with create_app() from the environment and .env (exit status 4, one
    # line, on a bad setting), so the tools share its accounts, stores and settings; no second app is built.
    from api.mcp import run
    from app import app

    run(app, http=args.http, host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
