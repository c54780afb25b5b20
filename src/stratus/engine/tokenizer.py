"""Tokenizer, chat template and incremental detokenization for a checkpoint directory or a GGUF
file (whose metadata holds all three: gguf.py)."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

from jinja2 import TemplateError
from tokenizers import Tokenizer as HFTokenizer

from . import gguf
from .chat_template import ChatTemplate, ChatTemplateError
from .config import CheckpointError
from .types import ValidationError


def _token_text(value) -> str | None:
    """tokenizer_config.json stores special tokens as strings or as {"content": ...} objects."""
    if isinstance(value, dict):
        return value.get("content")
    return value


def _read_files(path: Path) -> tuple[HFTokenizer, dict]:
    """A checkpoint directory's tokenizer.json and tokenizer_config.json."""
    file = path / "tokenizer.json"
    if not file.is_file():
        raise CheckpointError(f"{file}: missing; stratus needs a fast tokenizer (tokenizer.json)")
    try:
        tok = HFTokenizer.from_file(str(file))
    except Exception as exc:
        raise CheckpointError(f"{file}: not a readable tokenizer ({exc})") from exc
    config_file = path / "tokenizer_config.json"
    config: dict = {}
    if config_file.is_file():
        try:
            config = json.loads(config_file.read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{config_file}: not valid JSON ({exc})") from exc
    return tok, config


class Tokenizer:
    def __init__(self, path: Path):
        if gguf.is_gguf(path):
            self._tok, config = gguf.tokenizer_parts(path)
        else:
            self._tok, config = _read_files(path)
        self.bos_token = _token_text(config.get("bos_token"))
        self.eos_token = _token_text(config.get("eos_token"))
        self.bos_token_id = self._tok.token_to_id(self.bos_token) if self.bos_token else None
        self.eos_token_id = self._tok.token_to_id(self.eos_token) if self.eos_token else None
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self._byte_level = '"ByteLevel"' in json.dumps(json.loads(self._tok.to_str()).get("decoder"))
        self.special_ids = {
            t.content and self._tok.token_to_id(t.content)
            for t in self._tok.get_added_tokens_decoder().values()
            if t.special
        } - {None}
        # transformers 5 writes the template next to the tokenizer; older files embed it.
        template_file = path / "chat_template.jinja"  # never there for a GGUF file
        template = template_file.read_text() if template_file.is_file() else config.get("chat_template")
        if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}]
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        self.chat_template: str | None = template
        self._compiled: ChatTemplate | None = None
        if template:
            try:
                self._compiled = ChatTemplate(template)
            except ChatTemplateError as exc:
                raise CheckpointError(f"{path}: chat template {exc}") from exc

    @functools.cached_property
    def max_token_chars(self) -> int:
        """The most characters one token can stand for (its longest vocabulary entry): a text
        of n characters is at least n / max_token_chars tokens, known without tokenizing it."""
        return max((len(t) for t in self._tok.get_vocab(with_added_tokens=True)), default=1) or 1

    def to_json(self) -> str:
        """The whole tokenizer as tokenizer.json text (for libraries that build their own)."""
        return self._tok.to_str()

    def added_token_id(self, text: str) -> int | None:
        """The id of an added token (a control or marker token) with this text, if there is one."""
        return self._tok.token_to_id(text) if text in self.special_texts else None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def id_to_token(self, token_id: int) -> str:
        return self._tok.id_to_token(token_id) or ""

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for, exact even when it holds part of a UTF-8 character
        (OpenAI's logprobs report them as `bytes`)."""
        piece = self.id_to_token(token_id)
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):  # byte fallback
            try:
                return bytes([int(piece[3:5], 16)])
            except ValueError:
                pass
        if (
            self._byte_level
            and token_id not in self.special_ids
            and all(ch in _UNICODE_TO_BYTE for ch in piece)
        ):
            return bytes(_UNICODE_TO_BYTE[ch] for ch in piece)
        return self._tok.decode([token_id], skip_special_tokens=False).encode()

    def token_text(self, token_id: int) -> str:
        """The text one token stands for (for logprobs), special tokens included. A token holding
        part of a UTF-8 character is written as OpenAI does: `bytes:\\xe2\\x80`."""
        raw = self.token_bytes(token_id)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True, **extra) -> str:
        """Render messages with the checkpoint's template in a sandbox, within a budget (the
        template is untrusted: chat_template.py)."""
        if self._compiled is None:
            raise ValidationError(
                "this model has no chat template; use /v1/completions with a plain prompt", "messages"
            )
        try:
            return self._compiled.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token or "",
                eos_token=self.eos_token or "",
                **extra,
            )
        except ChatTemplateError as exc:  # refused by its budget, or failed
            raise ValidationError(f"{exc} on these messages", "messages") from None
        except TemplateError as exc:  # raise_exception(...), an undefined value used, a sandbox refusal
            raise ValidationError(f"the chat template rejected these messages: {exc}", "messages") from None

    @functools.cached_property
    def special_texts(self) -> tuple[str, ...]:
        """The text of every added token ("<|im_start|>", "</s>", ...): in a message's content it
        must stay text, or a user could forge a turn of another role."""
        return tuple(t.content for t in self._tok.get_added_tokens_decoder().values() if t.content)

    @functools.cached_property
    def _literal(self) -> HFTokenizer:
        """The same tokenizer, reading added-token text as plain text."""
        literal = HFTokenizer.from_str(self._tok.to_str())
        literal.encode_special_tokens = True
        return literal

    def encode_chat(self, messages: list[dict], add_generation_prompt: bool = True, **extra) -> list[int]:
        """Token ids of the rendered conversation. Control tokens come only from the template:
        special-token text inside a message's content is encoded as the plain text it is, and is
        refused anywhere else a client wrote (tool definitions, tool calls, names)."""
        self._refuse_special_text(messages, extra)
        text = self.apply_chat_template(messages, add_generation_prompt, **extra)
        contents: list[str] = [c if isinstance(c := m.get("content"), str) else "" for m in messages]
        if not any(s in c for c in contents for s in self.special_texts):
            return self.encode(text, add_special_tokens=False)  # nothing to forge: the usual path
        # Render again with a marker for each content, then encode the template's own text with
        # its control tokens and each content literally.
        marked = [
            {**m, "content": f"{_MARK}{i}{_MARK}"} if contents[i] else m for i, m in enumerate(messages)
        ]
        pieces = re.split(
            f"{_MARK}(\\d+){_MARK}", self.apply_chat_template(marked, add_generation_prompt, **extra)
        )
        if "".join(p if k % 2 == 0 else contents[int(p)] for k, p in enumerate(pieces)) != text:
            raise ValidationError(
                "a message contains special-token text, and this model's chat template changes "
                "message content in a way that cannot keep it apart from its own control tokens; "
                "remove the special-token text",
                "messages",
            )
        ids: list[int] = []
        for k, piece in enumerate(pieces):
            if k % 2 == 0:
                ids += self._tok.encode(piece, add_special_tokens=False).ids if piece else []
            else:
                ids += self._literal.encode(contents[int(piece)], add_special_tokens=False).ids
        return ids

    def _refuse_special_text(self, messages: list[dict], extra: dict) -> None:
        """Client text outside message contents (tools, tool calls, names) has no safe literal
        encoding: a template may put it anywhere. It must not hold control-token text."""
        others = [extra] + [{k: v for k, v in m.items() if k != "content"} for m in messages]
        text = json.dumps(others, ensure_ascii=False)
        if any(s in text for s in self.special_texts):
            raise ValidationError(
                "tool definitions, tool calls and names may not contain this model's control-token text",
                "messages",
            )


_MARK = "\ue000"  # a private-use character: marks where a message's content goes in a rendering


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's printable stand-in character for each byte, reversed."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


_UNICODE_TO_BYTE = _byte_level_alphabet()


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas without splitting characters.

    Decoding a window that starts a few tokens back keeps the spacing a tokenizer derives from
    context (SentencePiece's leading "▁"), and a trailing U+FFFD means a UTF-8 sequence is still
    incomplete, so that text is held until the next token.
    """

    CONTEXT_TOKENS = 5

    def __init__(self, tokenizer: Tokenizer, prompt_ids: list[int], skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip = skip_special_tokens
        self.ids = list(prompt_ids[-self.CONTEXT_TOKENS :])
        self.prefix_offset = 0
        self.read_offset = len(self.ids)

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        prefix = self.tokenizer.decode(self.ids[self.prefix_offset : self.read_offset], self.skip)
        full = self.tokenizer.decode(self.ids[self.prefix_offset :], self.skip)
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            return full[len(prefix) :]
        return ""
