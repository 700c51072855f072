"""Serve the fake Perplexity upstream by hand: `python -m perplexity.testing --port 8765`."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from .script import REPLY_FORMATS, Reply
from .server import FakePerplexity


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m perplexity.testing", description=__doc__)
    parser.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (0 picks a free one)")
    parser.add_argument("--token", default="test-session-token", help="session cookie value to accept")
    parser.add_argument("--format", choices=REPLY_FORMATS, default="markdown", help="answer format")
    parser.add_argument("--frame-delay", type=float, default=0.05, help="seconds between frames")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Start the fake, say how to reach it, and serve until Ctrl-C (or SIGTERM)."""
    args = _parse_args(argv)
    fake = FakePerplexity(session_token=args.token, port=args.port)
    fake.default_reply = Reply(format=args.format, frame_delay=args.frame_delay)
    fake.start()
    # stdout, not logging: this is the whole user interface of the command.
    sys.stdout.write(
        f"Fake Perplexity upstream listening on {fake.url}\n"
        f"Session cookie __Secure-next-auth.session-token={fake.session_token}\n"
        f"Answer format: {args.format}. Press Ctrl-C to stop.\n"
    )
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
