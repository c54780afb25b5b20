"""A small chat set with a rule to learn, for the training tests (one conversation a line)."""

from __future__ import annotations

import json
from pathlib import Path

WORDS = ["fox", "dog", "hello", "world", "models", "stratus", "simple", "flat"]


def write_chat_set(path: Path, count: int) -> Path:
    """Conversations with a rule to learn: "say W N" is answered "W W N is better than W"."""
    with path.open("w") as handle:
        for i in range(count):
            word, n = WORDS[i % len(WORDS)], (i * 7) % 10
            messages = [
                {"role": "user", "content": f"say {word} {n}"},
                {"role": "assistant", "content": f"{word} {word} {n} is better than {word}."},
            ]
            handle.write(json.dumps({"messages": messages}) + "\n")
    return path
