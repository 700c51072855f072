"""The thread rule: which Perplexity thread a request continues, and what is remembered so the next one can.

Clients of every API resend their history each turn. Perplexity keeps the thread itself, so a turn that
continues an exchange this server answered must go upstream as a follow-up carrying only the newest message;
anything else starts a new thread from the flattened history. One rule for every endpoint family:

1. An explicit anchor wins: a chat request's `conversation_id`, or the conversation of the stored response a
   Responses request names as `previous_response_id`. An anchor that is unknown (expired, deleted, another
   caller's) starts a new thread under that id.
2. Otherwise the history is matched: a digest of the caller and every turn up to the last assistant turn,
   including the answers, names the conversation whose last turn produced exactly that history. What follows
   the last assistant turn is new: a user message, or an agent's tool results (tool calls are turns too, in
   the canonical text `core.tools` gives them, so a loop of calls and results stays on one thread).
3. A thread Perplexity no longer knows falls back to a new thread from the flattened history (`restart`).
4. After the answer, the conversation is saved with the digest of the history the client will send next.

Conversations are caller-scoped: a digest includes the caller, and the stores check the caller on every read.
Stored responses (`previous_response_id`) are scoped by the same caller, end user included.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace

from perplexity.types import ThreadIds

from ..stores.records import MAX_CHAIN, Conversation, ConversationStore, ResponseStore, StoredResponse

__all__ = ["MAX_CHAIN", "Continuity", "Placement", "history_key", "new_conversation_id"]

log = logging.getLogger(__name__)

# Conversations are kept in number (CONVERSATION_STORE_MAX_ITEMS): a title, which Perplexity writes, is the one
# field whose length this server does not choose, so it is clipped to keep each conversation small.
_MAX_TITLE = 200
# A request continues a known exchange only if it has at least user, assistant, user.
_MIN_FOLLOW_UP_TURNS = 3


def new_conversation_id() -> str:
    """A fresh, unguessable conversation id."""
    return "conv_" + secrets.token_urlsafe(18)


def _normalize(text: str) -> str:
    return " ".join(text.split())


def history_key(caller: str, turns: Iterable[tuple[str, str]]) -> str:
    """A digest of (role, text) turns; whitespace-insensitive, and scoped to the caller."""
    digest = hashlib.sha256(caller.encode())
    for role, text in turns:
        digest.update(b"\x00" + role.encode() + b"\x01" + _normalize(text).encode())
    return digest.hexdigest()


@dataclass(slots=True)
class Placement:
    """Where one turn goes: on `conversation`'s thread (a follow-up), or on a new thread named `conversation_id`."""

    caller: str
    conversation_id: str
    conversation: Conversation | None = None
    # How many of the request's last turns are new to the thread: one user message in a chat, but an agent's
    # turn may add several tool results (and a user message) after the assistant's calls.
    fresh: int = 1

    @property
    def thread(self) -> ThreadIds | None:
        """The thread to follow up on, or None for a new one."""
        return self.conversation.thread if self.conversation is not None else None


def _fresh_turns(turns: list[tuple[str, str]]) -> int:
    """The turns after the last assistant turn (at least one): what a follow-up sends."""
    for index in range(len(turns) - 1, -1, -1):
        if turns[index][0] == "assistant":
            return max(1, len(turns) - 1 - index)
    return 1


class Continuity:
    """Applies the thread rule over the conversation store (and, for `previous_response_id`, the response store)."""

    def __init__(self, conversations: ConversationStore, responses: ResponseStore | None = None) -> None:
        self.conversations = conversations
        self.responses = responses

    def place(self, caller: str, turns: list[tuple[str, str]], *, anchor: str | None = None) -> Placement:
        """Rules 1 and 2: the conversation `turns` continue (`turns` as `Transcript.keyed_turns()` gives them)."""
        fresh = _fresh_turns(turns)
        if anchor:
            return Placement(caller, anchor, self.conversations.get(caller, anchor), fresh)
        if sum(1 for role, _ in turns if role != "system") >= _MIN_FOLLOW_UP_TURNS and fresh < len(turns):
            found = self.conversations.find(caller, history_key(caller, turns[:-fresh]))
            if found is not None:
                return Placement(caller, found.id, found, fresh)
        return Placement(caller, new_conversation_id())

    def restart(self, placement: Placement) -> None:
        """Rule 3: the thread cannot go on (gone upstream, or its account set aside); the turn starts a new one
        under the same conversation id."""
        log.info("conversation %s: its thread cannot go on; starting a new one", placement.conversation_id)
        placement.conversation = None

    def remember(
        self, placement: Placement, turns: list[tuple[str, str]], model: str, thread: ThreadIds | None, answer: str,
        title: str | None, account: str | None = None,
    ) -> None:  # fmt: skip
        """Rule 4: save the thread under the digest of the history the client will send next (`turns` + answer)."""
        if thread is None:
            return
        title = title[:_MAX_TITLE] if title else title
        key = history_key(placement.caller, [*turns, ("assistant", answer)])
        if placement.conversation is not None:
            conversation = replace(placement.conversation.advanced(thread, key, title), account=account)
        else:
            now = time.time()
            conversation = Conversation(
                placement.conversation_id, placement.caller, thread, model, now, now, 1, title, (key,), account
            )
        try:
            self.conversations.save(conversation)
        except PermissionError:
            log.warning("conversation id collision for caller; not remembered")

    def response_chain(self, caller: str, latest: StoredResponse) -> list[StoredResponse]:
        """`latest` and the stored responses it continued, oldest first (at most MAX_CHAIN).

        The newest turn alone goes upstream while the thread is known; this chain is the history a new thread
        starts from when it is not (expired, deleted, or gone upstream).
        """
        records = [latest]
        while self.responses is not None and len(records) < MAX_CHAIN and records[-1].previous_id:
            found = self.responses.get(caller, records[-1].previous_id)
            if found is None:
                break
            records.append(found)
        return records[::-1]
