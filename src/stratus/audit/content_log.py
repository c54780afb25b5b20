"""Content logging per team (off by default): the prompt and completion text of audited requests,
redacted (audit/redact.py) before it is stored and AES-GCM encrypted under the master key.

    log = ContentLog(store, data_dir="data", ttl=2.0)
    log.set_enabled("ml", True, by="admin")          # an admin's change (audited as a request)
    text = content_text(body, completions)            # redacted JSON, or None (nothing to log)
    log.read(request_id="...")                        # decrypted, for admins and auditors

The text is written in the audit record's own transaction (audit/log.py) and bound to the
record's place in the chain: its ciphertext's associated data is `audit_content/<seq>`, so a
ciphertext moved to another record does not open. `stratus secrets rotate` re-encrypts it with
the other secrets. Only a key bound to a team (`principal.team`) can be logged: content logging
belongs to the team a request is charged to.
"""

from __future__ import annotations

import json
from typing import Any

from stratus.audit.redact import redact
from stratus.audit.ttl_set import TTLSet
from stratus.security.errors import NotFound
from stratus.security.secrets import Keyring, decrypt, load_keyring
from stratus.store import Store, review_tables
from stratus.store.directory import get_team
from stratus.store.review_tables import content_aad

# The routes whose prompts and completions are logged; /v1/responses logs its conversation as
# the chat request it is served as (api/routes/responses.py).
CONTENT_ROUTES = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/responses"})


def _message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: keep the text ones
        return "\n".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def content_text(body: dict | None, completions: list[str] | None) -> str | None:
    """The request's prompt and the generated text, redacted, as JSON (None: nothing to log)."""
    if not isinstance(body, dict):
        return None
    out: dict[str, Any] = {}
    if isinstance(body.get("messages"), list):
        out["messages"] = [
            {"role": str(m.get("role", ""))[:32], "content": redact(_message_text(m.get("content")))}
            for m in body["messages"]
            if isinstance(m, dict)
        ]
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        out["prompt"] = redact(prompt)
    elif isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        out["prompt"] = [redact(p) for p in prompt]
    if not out:
        return None
    out["completions"] = [redact(c) for c in completions or []]
    return json.dumps(out, ensure_ascii=False, separators=(",", ":"))


def completions_of(response: dict) -> list[str]:
    """The generated texts of a chat or text completion response, or of a Responses API
    response (its message items), as a response-cache hit returns them."""
    if response.get("object") == "response":
        return [
            "".join(p.get("text") or "" for p in item.get("content") or [] if isinstance(p, dict))
            for item in response.get("output") or []
            if isinstance(item, dict) and item.get("type") == "message"
        ]
    texts = []
    for choice in response.get("choices") or []:
        message = choice.get("message") if isinstance(choice, dict) else None
        text = message.get("content") if isinstance(message, dict) else choice.get("text")
        texts.append(text if isinstance(text, str) else "")
    return texts


class ContentLog:
    def __init__(self, store: Store, data_dir: str, ttl: float = 2.0, ring: Keyring | None = None):
        self.store = store
        self.data_dir = data_dir
        self._ring = ring
        self.teams = TTLSet(self._enabled_teams, ttl)

    @property
    def ring(self) -> Keyring:
        """The master keyring, loaded when content is first written or read (made if missing)."""
        if self._ring is None:
            self._ring = load_keyring(self.data_dir)
        return self._ring

    @property
    def ring_loaded(self) -> bool:
        return self._ring is not None

    def _enabled_teams(self) -> set[str]:
        with self.store.connect() as conn:
            return review_tables.content_logged_teams(conn)

    def enabled(self, team: str | None) -> bool:
        return team is not None and team in self.teams

    def set_enabled(self, team: str, enabled: bool, by: str | None, now: float) -> dict:
        with self.store.begin() as conn:
            found = get_team(conn, team)
            if found is None:
                raise NotFound(f"No team named '{team}'.", field="name")
            review_tables.set_content_logging(conn, found.id, enabled, by, now)
        (self.teams.add if enabled else self.teams.discard)(team)
        return {"team": team, "content_logging": enabled}

    def list_enabled(self) -> list[dict]:
        with self.store.connect() as conn:
            return review_tables.content_logging_list(conn)

    def read(self, *, request_id: str | None = None, seq: int | None = None, limit: int = 100) -> list[dict]:
        """Logged content, newest first, decrypted (the caller has checked audit.read)."""
        with self.store.connect() as conn:
            rows = review_tables.content_rows(conn, request_id=request_id, seq=seq, limit=limit)
        return [
            {
                "seq": r.seq,
                "request_id": r.request_id,
                "at": r.at,
                "team": r.team,
                "principal": r.principal,
                "content": json.loads(decrypt(self.ring, content_aad(r.seq), r.ciphertext)),
            }
            for r in rows
        ]
