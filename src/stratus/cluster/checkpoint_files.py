"""The small files of a checkpoint that define what a replica says (config, tokenizer, template),
and their digest: replicas of one model must agree on it, or a stream could move mid-answer
between different models.

    files = read_checkpoint_files(Path("models/demo"))    # {name: text}; a GGUF file's are
                                                           # written from its metadata
    checkpoint_digest(files)                               # "3f1c..." (24 hex digits)
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import orjson

from stratus.engine.gguf import checkpoint_files as gguf_checkpoint_files
from stratus.engine.gguf import is_gguf

CHECKPOINT_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
)


def read_checkpoint_files(path: Path) -> dict[str, str]:
    if is_gguf(path):  # the same files, written from the GGUF file's metadata
        return gguf_checkpoint_files(path)
    return {name: (path / name).read_text() for name in CHECKPOINT_FILES if (path / name).is_file()}


def checkpoint_digest(files: dict[str, str]) -> str:
    """The same for the same files wherever they are read (a worker's answer, a local folder)."""
    return hashlib.sha256(orjson.dumps(files, option=orjson.OPT_SORT_KEYS)).hexdigest()[:24]
