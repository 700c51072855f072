"""Serve the fake Perplexity upstream by hand: `python -m perplexity.testing --port 8765` (add `--tls --http2`)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from .handler import COOKIE_NAME
from .script import REPLY_FORMATS, Reply
from .server import FakePerplexity


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m perplexity.testing", description=__doc__)
    parser.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (0 picks a free one)")
    parser.add_argument("--token", default="test-session-token", help="session cookie value to accept")
    parser.add_argument("--format", choices=REPLY_FORMATS, default="markdown", help="answer format")
    parser.add_argument("--frame-delay", type=float, default=0.05, help="seconds between frames")
    parser.add_argument("--tls", action="store_true", help="serve https with a throwaway CA (needs trustme)")
    parser.add_argument("--http2", action="store_true", help="offer HTTP/2 through ALPN; implies --tls (needs h2)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Start the fake, say how to reach it, and serve until Ctrl-C (or SIGTERM)."""
    args = _parse_args(argv)
    tls = args.tls or args.http2
    fake = FakePerplexity(session_token=args.token, port=args.port, tls=tls, http2=args.http2)
    fake.default_reply = Reply(format=args.format, frame_delay=args.frame_delay)
    fake.start()
    # stdout, not logging: this is the whole user interface of the command.
    # The first two lines keep their shape (URL last on line 1, cookie on line 2): scripts read them.
    lines = [f"Fake Perplexity upstream listening on {fake.url}", f"Session cookie {COOKIE_NAME}={fake.session_token}"]
    if fake.ca_path:
        protocols = "HTTP/2 and HTTP/1.1" if args.http2 else "HTTP/1.1"
        lines += [f"TLS, {protocols}; CA certificate to trust (e.g. PERPLEXITY_CA_BUNDLE): {fake.ca_path}"]
    lines += [f"Answer format: {args.format}. Press Ctrl-C to stop."]
    sys.stdout.write("".join(f"{line}\n" for line in lines))
    sys.stdout.flush()
    done = threading.Event()
    # SIGTERM too, so a supervisor (or a test harness) can stop it cleanly by pid.
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        while not done.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
