"""Training examples from text files and chat JSONL, tokenized with the model's own tokenizer.

- A plain-text file (any name not ending in .jsonl) is tokenized whole (with the tokenizer's
  special tokens, e.g. a leading BOS) and cut into windows of `seq_len` tokens; every token is
  learned.
- A .jsonl file holds one object per line: `{"messages": [...]}` is rendered with the model's
  chat template and only the assistant turns are learned (their content and the template's
  end-of-turn text after it); `{"text": "..."}` is a plain-text document, cut into windows.

An assistant turn is located in the rendering by rendering the conversation up to it (with the
generation prompt) and through it; the tokens whose characters fall between the two ends are
the ones learned. A template whose renderings of a conversation's beginnings are not
beginnings of the whole rendering is refused, naming the line.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer as FastTokenizer

from stratus.engine.tokenizer import Tokenizer


class DataError(ValueError):
    """Training data that cannot be used; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class Example:
    ids: tuple[int, ...]
    learn: tuple[bool, ...]  # learn[t]: token t is a target (predicted from the tokens before it)

    @property
    def targets(self) -> int:
        return sum(self.learn[1:])


@dataclass
class Dataset:
    examples: list[Example]
    truncated: int = 0  # conversations cut to seq_len


class ExampleReader:
    def __init__(self, tokenizer: Tokenizer, seq_len: int):
        if seq_len < 2:
            raise DataError("--seq-len must be at least 2")
        self.tokenizer = tokenizer
        self.fast = FastTokenizer.from_str(tokenizer.to_json())
        self.seq_len = seq_len

    def read(self, files: list[Path]) -> Dataset:
        data = Dataset([])
        for file in files:
            if not file.is_file():
                raise DataError(f"{file}: no such file")
            if file.suffix == ".jsonl":
                self._read_jsonl(file, data)
            else:
                data.examples += self.windows(file.read_text(encoding="utf-8", errors="replace"))
        if not data.examples:
            raise DataError(f"{', '.join(map(str, files))}: no examples with a token to learn")
        return data

    def windows(self, text: str) -> list[Example]:
        ids = self.fast.encode(text, add_special_tokens=True).ids
        out = []
        for start in range(0, len(ids), self.seq_len):
            piece = ids[start : start + self.seq_len]
            if len(piece) >= 2:
                out.append(Example(tuple(piece), (True,) * len(piece)))
        return out

    def _read_jsonl(self, file: Path, data: Dataset) -> None:
        with file.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                where = f"{file}:{number}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{where}: not JSON ({exc})") from None
                if isinstance(row, dict) and isinstance(row.get("messages"), list):
                    example, cut = self.conversation(row["messages"], where)
                    data.truncated += cut
                    if example.targets:
                        data.examples.append(example)
                elif isinstance(row, dict) and isinstance(row.get("text"), str):
                    data.examples += self.windows(row["text"])
                else:
                    raise DataError(f'{where}: expected {{"messages": [...]}} or {{"text": "..."}}')

    def conversation(self, messages: list[dict], where: str = "conversation") -> tuple[Example, bool]:
        """The rendered conversation, learning its assistant turns; and whether it was cut."""
        render = self.tokenizer.apply_chat_template
        try:
            text = render(messages, add_generation_prompt=False)
            spans = []
            for i, message in enumerate(messages):
                if not isinstance(message, dict) or "role" not in message:
                    raise DataError(f"{where}: message {i} has no role")
                if message["role"] != "assistant":
                    continue
                start = len(before := render(messages[:i], add_generation_prompt=True))
                through = render(messages[: i + 1], add_generation_prompt=False)
                if not (text.startswith(before) and text.startswith(through)):
                    raise DataError(
                        f"{where}: this chat template renders a conversation's beginning differently "
                        "from the whole conversation; the assistant turns cannot be located"
                    )
                spans.append((start, len(through)))
        except DataError:
            raise
        except Exception as exc:  # the template refused these messages
            raise DataError(f"{where}: {exc}") from None
        encoding = self.fast.encode(text, add_special_tokens=False)
        learn = [any(s <= a < e for s, e in spans) for a, _ in encoding.offsets]
        ids = encoding.ids
        cut = len(ids) > self.seq_len
        return Example(tuple(ids[: self.seq_len]), tuple(learn[: self.seq_len])), cut


def split_heldout(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """(train, held out): a seeded `fraction` of the examples (at least one when > 0) held out."""
    if fraction <= 0:
        return examples, []
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    count = max(1, round(len(examples) * fraction))
    if count >= len(examples):
        raise DataError(f"--eval-fraction {fraction} leaves no training example of {len(examples)}")
    held = set(order[:count])
    return [e for i, e in enumerate(examples) if i not in held], [examples[i] for i in sorted(held)]


def collate(examples: list[Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """input ids [B, T] right-padded, and the targets mask [B, T - 1] (True: learn ids[:, t+1])."""
    width = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    learn = torch.zeros((len(examples), width), dtype=torch.bool)
    for row, e in enumerate(examples):
        ids[row, : len(e.ids)] = torch.tensor(e.ids)
        learn[row, : len(e.learn)] = torch.tensor(e.learn)
    return ids, learn[:, 1:]


class Order:
    """Which examples global step s trains on: a seeded permutation of the training set per
    epoch, read `batch_size` at a time. It depends on the seed and the step only, never on the
    number of workers, so a job resumed on fewer workers trains on exactly the same batches."""

    def __init__(self, count: int, batch_size: int, seed: int):
        self.count, self.batch_size, self.seed = count, batch_size, seed
        self._perms: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._perms = {epoch: torch.randperm(self.count, generator=g).tolist()}
        return self._perms[epoch]

    def batch(self, step: int) -> list[int]:
        first = step * self.batch_size
        return [self._perm(k // self.count)[k % self.count] for k in range(first, first + self.batch_size)]
