"""Client-side `stop` sequences for streamed text: cut the answer at the first stop string, across chunk edges."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["StopScanner"]


class StopScanner:
    """Pass streamed text through, dropping everything from the first occurrence of any stop string on.

    Text that might be the start of a stop string is held back until the next chunk decides it, so feeding
    a text in any chunking emits the same text as feeding it whole. The stop string itself is not emitted
    (OpenAI semantics).
    """

    def __init__(self, stops: Sequence[str]) -> None:
        # Empty strings would match everywhere; OpenAI clients send them by accident (e.g. stop=[""]).
        self._stops = tuple(dict.fromkeys(stop for stop in stops if stop))
        self._held = ""
        self._stopped = False
        self.matched: str | None = None  # the stop string that ended the text (Anthropic reports it)

    @property
    def stopped(self) -> bool:
        """True once a stop string was found; later feeds return ""."""
        return self._stopped

    def feed(self, text: str) -> str:
        """Take the next piece of text; return what can be emitted now."""
        if self._stopped:
            return ""
        if not self._stops:  # the common case: nothing to look for
            return text
        buffer = self._held + text
        hit = self._first_hit(buffer)
        start = len(buffer) - self._partial_suffix(buffer)
        if hit is not None and hit <= start:
            self._stopped, self._held = True, ""
            return buffer[:hit]
        # Hold back from the earliest place a stop string may still begin; a longer stop string that
        # starts before a complete shorter one can still win once the next chunk arrives.
        self._held = buffer[start:]
        return buffer[:start]

    def flush(self) -> str:
        """End of the text: release what was held back, up to any stop string it holds."""
        text, self._held = self._held, ""
        if self._stopped:
            return ""
        hit = self._first_hit(text)
        if hit is not None:
            self._stopped = True
            return text[:hit]
        return text

    def _first_hit(self, buffer: str) -> int | None:
        """Where the earliest stop string starts in `buffer` (None: nowhere); `matched` names it."""
        hits = [(index, stop) for stop in self._stops if (index := buffer.find(stop)) >= 0]
        if not hits:
            return None
        index, self.matched = min(hits, key=lambda hit: (hit[0], -len(hit[1])))
        return index

    def _partial_suffix(self, buffer: str) -> int:
        # Length of the longest proper prefix of some stop string that `buffer` ends with.
        longest = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(buffer)), longest, -1):
                if buffer.endswith(stop[:size]):
                    longest = size
                    break
        return longest
