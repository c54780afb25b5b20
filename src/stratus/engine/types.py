"""Data that crosses the engine's boundary: what a caller asks for and what it gets back."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from typing import Literal

FinishReason = Literal["stop", "length", "abort"]

# Below this temperature a row is greedy: dividing float32 logits by a smaller value overflows
# (1e-300 even rounds to 0), and the result would be greedy anyway.
MIN_TEMPERATURE = 1e-5
# Repetition penalties divide logits; a smaller one is raised to this so they stay finite.
MIN_REPETITION_PENALTY = 1e-2
MAX_GRAMMAR_CHARS = 256 * 1024  # a guided-decoding grammar larger than this is a mistake or an attack


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and what was expected."""


class ValidationError(ValueError):
    """A request the engine refuses; `param` names the offending field."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class FatalEngineError(RuntimeError):
    """The replica cannot go on (one of its parallel ranks died or hung): the step loop stops,
    its requests fail, and an engine process is restarted (engine.py `Engine._restart`)."""


class RequestFailed(Exception):
    """The engine failed while computing this one request; the others, and the engine, go on.
    Not a replica failure: the same request would fail on any replica, so it is not retried."""


@dataclass
class SamplingParams:
    """How to pick tokens. Defaults are greedy-free sampling at temperature 1, like OpenAI's."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: disabled
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None  # None: none; k >= 0: the sampled token's logprob plus k top ones
    n: int = 1
    skip_special_tokens: bool = True
    # Guided decoding: an llguidance grammar (engine/grammar.py makes one from a JSON schema, a
    # regex, choices or Lark); every sampled token keeps the output valid under it.
    grammar: str | None = None

    def validate(self) -> None:
        """Raise ValidationError for any out-of-range value; a valid object is left unchanged."""

        def bad(param: str, rule: str) -> ValidationError:
            return ValidationError(f"{param} {rule}, got {getattr(self, param)!r}", param)

        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise bad("max_tokens", "must be an integer >= 1")
        if not _finite(self.temperature) or not 0.0 <= self.temperature <= 2.0:
            raise bad("temperature", "must be between 0 and 2")
        if not _finite(self.top_p) or not 0.0 < self.top_p <= 1.0:
            raise bad("top_p", "must be in (0, 1]")
        if not isinstance(self.top_k, int) or self.top_k < -1:
            raise bad("top_k", "must be -1, 0 (disabled) or a positive integer")
        if not _finite(self.min_p) or not 0.0 <= self.min_p <= 1.0:
            raise bad("min_p", "must be in [0, 1]")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not _finite(value) or not -2.0 <= value <= 2.0:
                raise bad(name, "must be between -2 and 2")
        if not _finite(self.repetition_penalty) or not 0.0 < self.repetition_penalty <= 10.0:
            raise bad("repetition_penalty", "must be in (0, 10]")
        if self.seed is not None and (not isinstance(self.seed, int) or self.seed < 0 or self.seed >= 2**63):
            raise bad("seed", "must be a non-negative 64-bit integer")
        if len(self.stop) > 16 or any(not isinstance(s, str) or not s or len(s) > 256 for s in self.stop):
            raise bad("stop", "must be at most 16 non-empty strings of at most 256 characters")
        if any(not isinstance(t, int) or t < 0 for t in self.stop_token_ids):
            raise bad("stop_token_ids", "must be non-negative token ids")
        if self.logprobs is not None and (not isinstance(self.logprobs, int) or not 0 <= self.logprobs <= 20):
            raise bad("logprobs", "must be between 0 and 20")
        if not isinstance(self.n, int) or not 1 <= self.n <= 16:
            raise bad("n", "must be between 1 and 16")
        # A grammar's own rules are checked when it is compiled (engine/grammar.py, at admission).
        if self.grammar is not None and (
            not isinstance(self.grammar, str) or not 0 < len(self.grammar) <= MAX_GRAMMAR_CHARS
        ):
            raise ValidationError(
                f"grammar must be text of at most {MAX_GRAMMAR_CHARS} characters", "grammar"
            )

    @property
    def penalised(self) -> bool:
        return bool(self.repetition_penalty != 1.0 or self.presence_penalty or self.frequency_penalty)

    @property
    def greedy(self) -> bool:
        return self.temperature < MIN_TEMPERATURE


def _finite(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass
class GenerateRequest:
    """One generation: a prompt as text or token ids (ids win when both are given)."""

    prompt: str | None = None
    prompt_token_ids: list[int] | None = None
    params: SamplingParams = field(default_factory=SamplingParams)
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    add_special_tokens: bool = True  # plain prompts get BOS; rendered chat templates do not
    # Choices are numbered from here (their seeds too), so one choice of an n > 1 request can
    # be resumed alone on another replica under its own index.
    first_index: int = 0
    # Resuming a generation another replica started: the tokens and text already delivered.
    # They count as generated (max_tokens, penalties, seeded positions) and are not sent again.
    resume_token_ids: list[int] = field(default_factory=list)
    resume_text: str = ""
    # A LoRA adapter loaded on the replica (EngineCore.load_adapter) to apply to this request;
    # None: the base model alone.
    adapter: str | None = None


@dataclass
class TokenLogprob:
    token_id: int
    token: str
    logprob: float
    top: list[tuple[int, str, float]]  # (token_id, token text, logprob), best first


@dataclass
class Delta:
    """What one choice produced since the last delta. `finish_reason` is set on its last delta."""

    request_id: str
    index: int  # which of the n choices
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None = None
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0  # tokens generated so far for this choice
    cached_tokens: int = 0  # prompt tokens served from the prefix cache


@dataclass
class EngineStats:
    running: int
    waiting: int
    kv_blocks_total: int
    kv_blocks_used: int
    kv_blocks_free: int
    prefix_cache_queries: int  # prompt tokens looked up in the prefix cache
    prefix_cache_hits: int  # of which found
    prefix_hit_rate: float
    tokens_per_second: float  # generated tokens over the last few seconds
    preemptions: int
    generated_tokens_total: int
    prompt_tokens_total: int

    @classmethod
    def empty(cls) -> EngineStats:
        """Before the step loop's first report."""
        return cls(0, 0, 0, 0, 0, 0, 0, 0.0, 0.0, 0, 0, 0)
