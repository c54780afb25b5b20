"""One choice of one request as it moves through the engine."""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field

import torch

from .grammar import Constraint
from .lora import LoraWeights
from .tokenizer import IncrementalDetokenizer
from .types import FinishReason, SamplingParams

_ids = itertools.count()


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    request_id: str
    index: int  # which of the request's n choices
    token_ids: list[int]  # prompt, then generated tokens
    num_prompt_tokens: int
    params: SamplingParams
    stop_token_ids: frozenset[int]
    detokenizer: IncrementalDetokenizer
    generator: torch.Generator | None  # set when the request has a seed
    seed: int | None = None  # the choice's seed; each position draws from hash(seed, index, position)
    seq_id: int = field(default_factory=lambda: next(_ids))
    status: Status = Status.WAITING
    num_computed_tokens: int = 0  # tokens whose K/V are in the cache
    num_cached_tokens: int = 0  # prompt tokens the prefix cache supplied at admission
    block_table: list[int] = field(default_factory=list)
    text: str = ""  # generated text so far (stop strings removed)
    emitted_chars: int = 0  # text already handed to the caller
    finish_reason: FinishReason | None = None
    constraint: Constraint | None = None  # guided decoding: the grammar this output must follow
    adapter: str | None = None  # the LoRA adapter it asked for (None: the base model)
    lora: LoraWeights | None = None  # that adapter's weights, pinned while the sequence runs

    @property
    def cache_salt(self) -> bytes:
        """Where its prefix-cache hashes start: KV computed under one adapter is never another's."""
        return self.lora.key if self.lora is not None else b""

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def output_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def finished(self) -> bool:
        return self.status is Status.FINISHED
